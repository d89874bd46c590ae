"""Runs cases (snippets of Python that build and run nets) in one child process each batch,
so that a case that kills its process (SIGBUS, SIGABRT, the kernel's OOM killer) fails its
test instead of the test run. Used by test_robust_data.py and test_size_limits.py.

Each case is ``{"name", "code", "env"}``; ``code`` runs with ``run_net(path, iters, phase)``
(build the net, forward ``iters`` times, return the label batches) and ``tmp`` in scope and
sets ``result``. The child reports, per case: ok and result, or the exception's class, its
classes (MRO) and message, and the process's peak resident memory (VmHWM) after the case.
"""
import json
import os
import subprocess
import sys

CHILD = r'''
import json, os, sys

def vmhwm_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1

import caffepy
from caffepy.errors import CaffepyError

def run_net(path, iters=1, phase=caffepy.TRAIN, **kw):
    net = caffepy.Net(path, phase, **kw)
    out = []
    try:
        for _ in range(iters):
            net.forward()
            if "label" in net.blobs:
                out.append([int(v) for v in net.blobs["label"].data.ravel()])
    finally:
        for layer in net.layers:
            close = getattr(layer, "close", None)
            if close is not None:
                close()
    return out

cases = json.loads(open(sys.argv[1]).read())
print("BASE " + json.dumps({"vmhwm_kb": vmhwm_kb()}), flush=True)
for case in cases:
    print("START " + case["name"], flush=True)
    saved = dict(os.environ)
    os.environ.update(case.get("env", {}))
    ns = {"run_net": run_net, "tmp": case.get("tmp"), "result": None}
    try:
        exec(case["code"], ns)
        out = {"ok": True, "result": ns["result"]}
    except CaffepyError as e:
        out = {"ok": False, "type": type(e).__name__,
               "mro": [c.__name__ for c in type(e).__mro__], "message": str(e)}
    except BaseException as e:
        out = {"ok": False, "raw": True, "type": type(e).__name__,
               "mro": [c.__name__ for c in type(e).__mro__], "message": str(e)}
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out["name"] = case["name"]
    out["vmhwm_kb"] = vmhwm_kb()
    print("RESULT " + json.dumps(out), flush=True)
'''


def run_cases(cases, workdir, timeout=240):
    """Run ``cases`` in one child; returns {name: report}. A case the child did not finish gets
    ``{"died": returncode, "stderr": ...}`` (the one it was running is where it died)."""
    spec = os.path.join(str(workdir), "cases.json")
    with open(spec, "w") as f:
        json.dump(cases, f)
    env = dict(os.environ)
    env.setdefault("GLOG_minloglevel", "2")
    proc = subprocess.run([sys.executable, "-c", CHILD, spec], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(workdir))
    reports = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            r["returncode"] = proc.returncode
            reports[r["name"]] = r
        elif line.startswith("BASE "):
            reports["__base__"] = json.loads(line[5:])
    for case in cases:
        if case["name"] not in reports:
            reports[case["name"]] = {"died": proc.returncode, "stderr": proc.stderr[-3000:],
                                     "returncode": proc.returncode}
    return reports


def clean_error(report):
    """Assert the case ended in one of caffepy's own exceptions (not a signal, not a raw
    Python error); returns its message."""
    assert "died" not in report, "the child process died (returncode %s):\n%s" % (
        report["returncode"], report["stderr"])
    assert report["returncode"] >= 0
    assert not report["ok"], "no error: %r" % (report.get("result"),)
    assert not report.get("raw"), "a raw %s, not a caffepy error: %s" % (
        report["type"], report["message"])
    assert "CaffepyError" in report["mro"]
    return report["message"]
