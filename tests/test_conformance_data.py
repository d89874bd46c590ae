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


def test_a_relative_conformance_folder_is_the_one_where_pytest_started(tmp_path):
    """CAFFEPY_CONFORMANCE=../some/folder names a folder beside the directory pytest starts
    in, even though the solver cases then run in temporary folders of their own."""
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    case = tmp_path / "cases" / "layers" / "one"
    case.mkdir(parents=True)
    (case / "meta.json").write_text("{}")
    start = tmp_path / "start"
    start.mkdir()
    env = dict(os.environ, CAFFEPY_CONFORMANCE=os.path.join("..", "cases"),
               PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = ("import os, helpers; os.chdir('/'); "
            "print(helpers.ONLY_CONFORMANCE); print(sorted(helpers.LAYER_CASES.items()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(start), env=env,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == str(tmp_path / "cases")
    assert out[1] == str([("one", str(case))])
