"""The conformance cases are part of the repository: a missing, altered or unlisted case file
is a failure (tests/conformance/MANIFEST.sha256), and the runners see every listed case."""
import os

import pytest

from helpers import (LAYER_CASES, MANIFEST, ONLY_CONFORMANCE, REPO_CONFORMANCE, SOLVER_CASES,
                     read_manifest, sha256_file)


def _listed():
    assert os.path.isfile(MANIFEST), ("the conformance cases are missing from the repository "
                                      "(%s not found)" % MANIFEST)
    return read_manifest()


def test_every_listed_case_file_is_present_and_unchanged():
    rows = _listed()
    assert len(rows) > 0
    bad = []
    for digest, rel in rows:
        path = os.path.join(REPO_CONFORMANCE, rel)
        if not os.path.isfile(path):
            bad.append("missing: " + rel)
        elif sha256_file(path) != digest:
            bad.append("altered: " + rel)
    assert not bad, "conformance data differs from MANIFEST.sha256 " \
                    "(python tools/sync_conformance.py --manifest after a deliberate change):\n" \
                    + "\n".join(bad[:20])


def test_no_unlisted_case_files():
    listed = {rel for _, rel in _listed()}
    extra = []
    for base, _dirs, files in os.walk(REPO_CONFORMANCE):
        for name in files:
            rel = os.path.relpath(os.path.join(base, name), REPO_CONFORMANCE).replace(os.sep, "/")
            if rel != "MANIFEST.sha256" and rel not in listed:
                extra.append(rel)
    assert not extra, "files not in MANIFEST.sha256: %s" % ", ".join(sorted(extra)[:20])


@pytest.mark.parametrize("kind,cases", [("layers", LAYER_CASES), ("solvers", SOLVER_CASES)])
def test_runners_see_every_listed_case(kind, cases):
    if ONLY_CONFORMANCE:
        pytest.skip("CAFFEPY_CONFORMANCE names another folder")
    listed = {rel.split("/")[1] for _, rel in _listed()
              if rel.startswith(kind + "/") and rel.endswith("/meta.json")}
    assert listed, "no %s cases listed" % kind
    assert listed <= set(cases), "listed but not run: %s" % sorted(listed - set(cases))
