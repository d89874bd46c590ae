"""Runs Caffe's reference cases from ../shared/conformance (never copied into the repo)."""
import json
import os
import shutil
import sys

import numpy as np

from caffepy.backend import to_numpy

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("CAFFEPY_SHARED", os.path.join(HERE, "..", "..", "shared"))
CONFORMANCE = os.path.join(SHARED, "conformance")
LAYER_DIR = os.path.join(CONFORMANCE, "layers")
SOLVER_DIR = os.path.join(CONFORMANCE, "solvers")


def list_cases(kind_dir):
    if not os.path.isdir(kind_dir):
        return []
    return sorted(d for d in os.listdir(kind_dir)
                  if os.path.isfile(os.path.join(kind_dir, d, "meta.json")))


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
