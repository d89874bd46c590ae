"""The fuzz corpus (tests/fuzz_corpus.py): every generated case either runs and gives finite
numbers (valid) or raises a caffepy.CaffepyError naming the file, line, layer or blob at
fault (invalid). Cases that could kill the process run in a child, which must neither die
of a signal nor grow past MEMORY_LIMIT_MB. The long tail runs with ``-m slow``."""
import filecmp
import json
import math
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

import fuzz_corpus as fc
from caffepy import CaffepyError, backend
from caffepy.backend import to_numpy

CHILD_TIMEOUT_S = 120

# Cases whose behaviour is still missing: {case id: reason}. Each runs as xfail(strict=True),
# so the day the behaviour lands the case fails until its entry here is removed.
XFAIL = {}


def _params():
    out = []
    for c in fc.cases():
        marks = []
        if c.slow:
            marks.append(pytest.mark.slow)
        if c.id in XFAIL:
            marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[c.id]))
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


def _run_here(case, d):
    try:
        res = case.run(d)
    except Exception as e:
        return {"status": "error", "type": type(e).__name__, "message": str(e),
                "caffepy": isinstance(e, CaffepyError)}
    bad = [k for k, v in res.items()
           if np.asarray(v).size == 0 or not np.all(np.isfinite(np.asarray(v, np.float64)))]
    return {"status": "ok", "not_finite": bad, "keys": sorted(res)}


def _spawn(argv, d):
    """Run argv in ``d`` under ``fuzz_corpus.py measure``; (exit status or -signal, the child's
    peak RSS in MB, stdout, stderr)."""
    out_path, err_path = os.path.join(d, ".child.out"), os.path.join(d, ".child.err")
    meter = os.path.join(d, ".child.meter.json")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    launcher = [sys.executable, os.path.abspath(fc.__file__), "measure", meter, "--"]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        p = subprocess.Popen(launcher + argv, cwd=d, stdout=out, stderr=err, env=env,
                             start_new_session=True)
        try:
            p.wait(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            pytest.fail("%s did not finish within %d s" % (argv, CHILD_TIMEOUT_S))
    with open(out_path, errors="replace") as f:
        stdout = f.read()
    with open(err_path, errors="replace") as f:
        stderr = f.read()
    assert p.returncode == 0 and os.path.isfile(meter), (
        "the measuring launcher failed (exit %s):\n%s" % (p.returncode, stderr[-3000:]))
    with open(meter) as f:
        m = json.load(f)
    return os.waitstatus_to_exitcode(m["status"]), m["maxrss_kb"] / 1024.0, stdout, stderr


def _check_child(argv, rc, peak_mb, stderr, result_path=None):
    assert rc >= 0, "%s was killed by signal %d; its stderr ends:\n%s" % (
        argv, -rc, stderr[-3000:])
    if peak_mb >= fc.MEMORY_LIMIT_MB:
        outcome = ""
        if result_path and os.path.isfile(result_path):
            with open(result_path) as f:
                outcome = "; it reported %s" % f.read()[:1000]
        pytest.fail("%s peaked at %.0f MB (limit %d MB)%s"
                    % (argv, peak_mb, fc.MEMORY_LIMIT_MB, outcome))


def _run_child(case, d):
    result_path = os.path.join(d, ".result.json")
    argv = [sys.executable, os.path.abspath(fc.__file__), "run", case.id, d, result_path]
    rc, peak_mb, _, stderr = _spawn(argv, d)
    _check_child(argv, rc, peak_mb, stderr, result_path)
    assert os.path.isfile(result_path), "the child wrote no result (exit %d):\n%s" % (
        rc, stderr[-3000:])
    with open(result_path) as f:
        return json.load(f)


_LOSS = re.compile(r"loss = (\S+)")


def _judge_cli(case, d):
    argv = [sys.executable, "-m", "caffepy"] + case.run(d)["argv"]
    rc, peak_mb, stdout, stderr = _spawn(argv, d)
    _check_child(argv, rc, peak_mb, stderr)
    text = stdout + stderr
    if case.valid:
        assert rc == 0, "valid: %s exited %d:\n%s" % (argv, rc, stderr[-3000:])
        losses = [float(v) for v in _LOSS.findall(text)]
        assert losses, "no 'loss = ' line in the output of %s" % argv
        assert all(math.isfinite(v) and v >= 0 for v in losses), losses
    else:
        assert rc > 0, "invalid: %s exited %d" % (argv, rc)
        assert "Traceback" not in stderr, "a traceback instead of an error:\n%s" % stderr[-3000:]
        for name in case.names:
            assert name in stderr, "%r is not named in the error output:\n%s" % (
                name, stderr[-3000:])


def _judge(case, result):
    if case.valid:
        assert result["status"] == "ok", "valid case raised %s: %s" % (
            result.get("type"), result.get("message"))
        assert result["keys"], "the entry point returned no arrays"
        assert not result["not_finite"], "empty or not finite: %s" % result["not_finite"]
    else:
        assert result["status"] == "error", "invalid case ran without an error (%s)" % (
            ", ".join(result["keys"][:8]))
        assert result["caffepy"], "raised %s, not a CaffepyError: %s" % (
            result["type"], result["message"])
        for name in case.names:
            assert name in result["message"], "%r is not named in the %s: %s" % (
                name, result["type"], result["message"])


@pytest.mark.parametrize("case", _params())
def test_fuzz_case(case, tmp_path):
    d = str(tmp_path)
    case.build(d)
    if case.cli:
        _judge_cli(case, d)
    elif case.subprocess:
        _judge(case, _run_child(case, d))
    else:
        _judge(case, _run_here(case, d))


def test_corpus_size_and_mix():
    cases = fc.cases()
    assert len(cases) >= 300
    assert len({c.id for c in cases}) == len(cases)
    default = [c for c in cases if not c.slow]
    assert len(default) >= 300
    cats = {}
    for c in cases:
        cats.setdefault(c.category, [0, 0])[c.valid] += 1
    for cat in ("net", "solver", "weights", "state", "data", "python", "cli"):
        assert cats[cat][0] > 0 and cats[cat][1] > 0, (cat, cats[cat])
    for c in cases:
        assert c.valid or c.names, "%s declares no name for its error message" % c.id


@pytest.mark.parametrize("case_id", ["net-valid-003", "net-truncated-005", "net-non-utf8-002",
                                     "solver-valid-004", "lmdb-valid-001"])
def test_corpus_is_deterministic(case_id, tmp_path):
    """The same case id builds the same bytes in two folders (paths inside aside)."""
    case = fc.case_by_id(case_id)
    a, b = tmp_path / "x", tmp_path / "y"
    a.mkdir()
    b.mkdir()
    case.build(str(a))
    case.build(str(b))
    for root, _, files in os.walk(str(a)):
        for name in files:
            pa = os.path.join(root, name)
            pb = os.path.join(str(b), os.path.relpath(pa, str(a)))
            if name.endswith(".mdb"):
                continue                # LMDB pages hold no paths, but free pages are noise
            da, db = open(pa, "rb").read(), open(pb, "rb").read()
            assert da.replace(str(a).encode(), b"D") == db.replace(str(b).encode(), b"D"), pa
    assert not filecmp.dircmp(str(a), str(b)).left_only


# Found by the corpus (net-geometry): Caffe's truncating output size lets a convolution window
# that starts inside the padded input end past it, where im2col reads zeros. Forward and both
# gradients against a float64 zero-padded reference.
@pytest.mark.parametrize("geo", [(2, 8, 6, 3, 1, 3, 4, 3), (7, 8, 10, 6, 1, 2, 2, 2),
                                 (3, 3, 4, 1, 0, 0, 2, 1), (5, 4, 3, 6, 0, 1, 3, 4)])
def test_conv_window_past_the_padded_input(geo):
    from helpers import bwd, fwd, make
    h, w, kh, kw, ph, pw, sh, sw = geo
    x = np.random.RandomState(3).randn(2, 3, h, w).astype(np.float32)
    wts = np.random.RandomState(4).randn(2, 3, kh, kw).astype(np.float32)
    text = ('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
            'num_output: 2 kernel_h: %d kernel_w: %d pad_h: %d pad_w: %d stride_h: %d '
            'stride_w: %d bias_term: false weight_filler { type: "gaussian" } }'
            % (kh, kw, ph, pw, sh, sw))
    layer, bottom, top = make(text, [x])
    layer.blobs[0].data[...] = backend.xp().asarray(wts)
    y = to_numpy(fwd(layer, bottom, top)[0])
    oh, ow = int((h + 2 * ph - kh) / sh) + 1, int((w + 2 * pw - kw) / sw) + 1
    assert y.shape == (2, 2, oh, ow)
    dy = np.random.RandomState(5).randn(*y.shape).astype(np.float32)
    bwd(layer, bottom, top, [dy])
    big = np.zeros((2, 3, h + 2 * ph + kh, w + 2 * pw + kw))
    big[:, :, ph:ph + h, pw:pw + w] = x
    ref, dbig, dw = np.zeros(y.shape), np.zeros_like(big), np.zeros(wts.shape)
    for i in range(oh):
        for j in range(ow):
            win = (slice(None), slice(None), slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw))
            ref[:, :, i, j] = np.einsum("nckl,ockl->no", big[win], wts)
            dbig[win] += np.einsum("no,ockl->nckl", dy[:, :, i, j], wts)
            dw += np.einsum("no,nckl->ockl", dy[:, :, i, j], big[win])
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_numpy(bottom[0].diff), dbig[:, :, ph:ph + h, pw:pw + w],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_numpy(layer.blobs[0].diff), dw, rtol=1e-5, atol=1e-5)
