"""Shared test helpers: Caffe's conformance cases (where they live, how to load them).

The cases are copied into the repository under tests/conformance/ (MANIFEST.sha256 lists every
file with its hash, so a missing or altered case is a test failure, never a silent skip). When a
newer set sits beside the checkout in ../shared/conformance (or wherever CAFFEPY_SHARED points),
its cases are run too: a case only there is added, a case whose files differ there replaces the
repository's copy. ``tools/sync_conformance.py`` takes such cases into the repository.
CAFFEPY_CONFORMANCE=/some/folder runs exactly the cases in that folder instead.

Below the cases: one layer built from prototxt text and run outside a net (make, setup_layer,
fwd, bwd), and the command line run in this process (run_cli, messages).
"""
import filecmp
import hashlib
import json
import os
import re
import shutil


import numpy as np

from caffepy import Blob, backend, cli
from caffepy.backend import to_numpy
from caffepy.layer import build_layer, create_layer
from caffepy.proto import caffe_pb2, parse_text

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_CONFORMANCE = os.path.join(HERE, "conformance")
MANIFEST = os.path.join(REPO_CONFORMANCE, "MANIFEST.sha256")
SHARED = os.environ.get("CAFFEPY_SHARED", os.path.join(HERE, "..", "..", "shared"))
SHARED_CONFORMANCE = os.path.abspath(os.path.join(SHARED, "conformance"))
# a relative folder is the one beside where pytest was started (solver cases run in their own
# temporary folder, so it is resolved now)
ONLY_CONFORMANCE = (os.path.abspath(os.environ["CAFFEPY_CONFORMANCE"])
                    if os.environ.get("CAFFEPY_CONFORMANCE") else None)


def _case_names(root, kind):
    kind_dir = os.path.join(root, kind)
    if not os.path.isdir(kind_dir):
        return []
    return sorted(d for d in os.listdir(kind_dir)
                  if os.path.isfile(os.path.join(kind_dir, d, "meta.json")))


def _same_tree(a, b):
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(_same_tree(os.path.join(a, d), os.path.join(b, d)) for d in cmp.common_dirs)


def resolve_cases(kind):
    """{case name: folder} for ``kind`` ("layers" or "solvers"), as described above."""
    if ONLY_CONFORMANCE:
        return {n: os.path.join(ONLY_CONFORMANCE, kind, n)
                for n in _case_names(ONLY_CONFORMANCE, kind)}
    cases = {n: os.path.join(REPO_CONFORMANCE, kind, n)
             for n in _case_names(REPO_CONFORMANCE, kind)}
    if os.path.isdir(SHARED_CONFORMANCE):
        for n in _case_names(SHARED_CONFORMANCE, kind):
            shared = os.path.join(SHARED_CONFORMANCE, kind, n)
            if n not in cases or not _same_tree(shared, cases[n]):
                cases[n] = shared
    return cases


def read_manifest():
    """[(sha256, path relative to tests/conformance)] from MANIFEST.sha256."""
    with open(MANIFEST) as f:
        return [tuple(line.rstrip("\n").split("  ", 1)) for line in f if line.strip()]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


LAYER_CASES = resolve_cases("layers")
SOLVER_CASES = resolve_cases("solvers")


def load_meta(case_dir):
    with open(os.path.join(case_dir, "meta.json")) as f:
        return json.load(f)


def copy_case(case_dir, tmp_path):
    dst = os.path.join(str(tmp_path), os.path.basename(case_dir))
    shutil.copytree(case_dir, dst)
    for root, dirs, files in os.walk(dst):
        for n in dirs + files:
            os.chmod(os.path.join(root, n), 0o755 if n in dirs else 0o644)
    os.chmod(dst, 0o755)
    return dst


def put(dst, host):
    """dst[...] = host, where dst is a blob's array: in GPU mode (a device array) the host
    values are moved to the device first, as CuPy requires."""
    xp = backend.array_module(dst)
    dst[...] = host if xp is np else xp.asarray(np.asarray(host, dtype=dst.dtype))


def assert_close(actual, expected, tol, what):
    # to_numpy: in GPU mode (CAFFEPY_TEST_MODE=gpu) blob arrays are CuPy arrays
    actual = np.asarray(to_numpy(actual), dtype=np.float64)
    expected = np.asarray(to_numpy(expected), dtype=np.float64)
    if actual.size != expected.size:
        raise AssertionError("%s: size %d (shape %s), expected %d (shape %s)"
                             % (what, actual.size, actual.shape, expected.size, expected.shape))
    actual = actual.reshape(expected.shape)
    rtol, atol = tol.get("rtol", 1e-4), tol.get("atol", 1e-5)
    err = np.abs(actual - expected)
    bad = err > atol + rtol * np.abs(expected)
    if bad.any():
        idx = np.argwhere(bad)[0]
        i = tuple(idx)
        raise AssertionError("%s: %d of %d elements differ (rtol %g, atol %g); first at %s: "
                             "got %r, expected %r; max abs err %g"
                             % (what, int(bad.sum()), bad.size, rtol, atol, i,
                                float(actual[i]), float(expected[i]), float(err.max())))


# -- one layer outside a net -----------------------------------------------------------------

def make(text, bottoms=(), ntop=None, phase=None):
    """Build a layer from LayerParameter text and set it up on fresh blobs holding the arrays
    ``bottoms``; ``ntop`` defaults to the number of tops the text names (at least 1).
    Returns ``(layer, bottom, top)``."""
    return build_layer(text, bottoms, ntop, phase)


def setup_layer(text, phase=caffe_pb2.TRAIN, bottom=()):
    """Build a layer from LayerParameter text and set it up on the Blobs ``bottom`` (none for a
    data layer) with exactly one top per top the text names. Returns ``(layer, bottom, top)``."""
    lp = parse_text(text, caffe_pb2.LayerParameter())
    layer = create_layer(lp, phase)
    top = [Blob() for _ in lp.top]
    bottom = list(bottom)
    layer.setup(bottom, top)
    return layer, bottom, top


def fwd(layer, bottom, top):
    """Forward; returns a host copy of every top's data (NumPy arrays in GPU mode too)."""
    layer.forward(bottom, top)
    return [np.array(to_numpy(t.data), copy=True) for t in top]


def bwd(layer, bottom, top, top_diffs, propagate=None):
    """Backward from the top diffs ``top_diffs`` with the param diffs cleared first;
    ``propagate`` defaults to every bottom."""
    for b in layer.blobs:
        b.diff[...] = 0
    for t, d in zip(top, top_diffs):
        put(t.diff, d)
    if propagate is None:
        propagate = [True] * len(bottom)
    layer.backward(top, propagate, bottom)


# -- the command line ------------------------------------------------------------------------

def run_cli(capsys, *argv):
    """Run ``caffepy <argv>`` in this process; returns (exit status, stdout, stderr)."""
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def messages(err):
    """The message part of every glog line."""
    return [m.group(1) for m in re.finditer(r"^[IWEF]\d{4} [\d:.]+ +\d+ [^\]]+\] (.*)$", err,
                                            re.M)]


def standin_env(**extra):
    """os.environ with tests/standin (the strict NumPy-backed CuPy) first on PYTHONPATH, so
    that a child process's ``import cupy`` finds it; ``extra`` variables set as well."""
    standin = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standin")
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([standin] + path), **extra)
