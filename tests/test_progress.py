"""The progress line: drawn on a terminal (a pseudo-terminal here) between the log lines of
caffepy train / test, never on a pipe, where the log stays exactly Caffe's lines."""
import io
import logging
import os
import pty
import re
import subprocess
import sys

import pytest

from caffepy.monitor import progress as progress_mod
from caffepy.monitor.progress import (ProgressBar, ProgressListener, format_duration,
                                      progress, progress_text)

NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 }
    data_filler { type: "constant" value: 0.5 }
    data_filler { type: "constant" value: -0.25 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" }
"""

WIPE = "\r\x1b[K"
PROGRESS = re.compile(r"\r(Iteration|Batch) (\d+)/(\d+)( \([^)\r\n]*\))?\x1b\[K")


def test_format_duration_and_text():
    assert format_duration(7.4) == "7s"
    assert format_duration(125) == "2m05s"
    assert format_duration(3723) == "1h02m03s"
    assert progress_text("Iteration", 120, 10000, 20.0) == \
        "Iteration 120/10000 (20 iter/s, ETA 8m14s)"     # 9880 / 20 = 494 s
    assert progress_text("Batch", 0, 10, 0.0) == "Batch 0/10"


def test_not_a_terminal_leaves_the_loop_untouched():
    r = range(5)
    stream = io.StringIO()
    assert progress(r, 5, "Batch", stream=stream) is r
    assert not ProgressListener(stream=stream).enabled
    assert stream.getvalue() == ""


def test_plain_bar_draws_and_wipes_before_log_records():
    stream = io.StringIO()
    logger = logging.getLogger("caffepy")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        bar = ProgressBar(4, "Batch", stream=stream, use_tqdm=False, min_interval=0)
        bar.update(1)
        logger.info("a log line")
        bar.update(4)
        bar.close()
        bar.close()
        logger.info("after")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    out = stream.getvalue()
    first, rest = out.split(WIPE + "a log line\n")
    assert re.fullmatch(r"\rBatch 1/4 \(\S+ iter/s, ETA \S+\)\x1b\[K", first)
    assert re.fullmatch(r"\rBatch 4/4 \(\S+ iter/s, ETA 0s\)\x1b\[K" + re.escape(WIPE)
                        + "after\n", rest)


def test_tqdm_bar_when_installed():
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    bar = ProgressBar(3, "Iteration", stream=stream, use_tqdm=True, min_interval=0)
    for i in range(3):
        bar.update(i + 1)
    bar.close()
    assert "Iteration" in stream.getvalue() and "3/3" in stream.getvalue()


def write_files(tmp_path, max_iter=400):
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "%s" base_lr: 0.01 lr_policy: "fixed" display: 200 '
                      'max_iter: %d random_seed: 3 snapshot_prefix: "%s"\n'
                      % (net, max_iter, tmp_path / "snap"))
    return net, solver


def run_with_stderr(args, terminal, mode="plain"):
    cmd = [sys.executable, "-m", "caffepy"] + args
    env = dict(os.environ, CAFFEPY_PROGRESS=mode)
    if not terminal:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=120, env=env)
        return r.returncode, r.stderr
    master, slave = pty.openpty()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL,
                         env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:               # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    p.stdout.read()
    p.wait(timeout=120)
    return p.returncode, b"".join(chunks).decode().replace("\r\n", "\n")


def log_messages(text):
    """The log lines' messages (after glog's prefix; a multi-line message's other lines as
    they are), timings blanked."""
    out = []
    for line in text.splitlines():
        m = re.match(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [^\]]+\] (.*)", line)
        msg = re.sub(r"\([^)]* iter/s, [^)]*\)", "(T)", m.group(1) if m else line)
        out.append(re.sub(r"/tmp/\S+", "PATH", msg))
    return out


def test_train_and_test_progress_on_a_terminal_not_on_a_pipe(tmp_path):
    net, solver = write_files(tmp_path)
    rc, tty = run_with_stderr(["train", "-solver", str(solver)], terminal=True)
    assert rc == 0, tty
    rc, piped = run_with_stderr(["train", "-solver", str(solver)], terminal=False)
    assert rc == 0, piped
    # the terminal shows Iteration i/400 lines (the last one at 400/400), each wiped
    # before the next log line
    shown = [(m.group(1), int(m.group(2)), int(m.group(3))) for m in PROGRESS.finditer(tty)]
    assert shown and shown[-1] == ("Iteration", 400, 400)
    assert all(total == 400 and 0 < done <= 400 for _, done, total in shown)
    assert "ETA" in tty and WIPE in tty
    # the pipe shows none of it, and the log lines are the same
    assert "\r" not in piped and "\x1b" not in piped and "ETA" not in piped
    cleaned = PROGRESS.sub("", tty).replace(WIPE, "")
    assert log_messages(cleaned) == log_messages(piped)
    # caffepy test: Batch i/N on the terminal only
    args = ["test", "-model", str(net), "-weights", str(tmp_path / "snap_iter_400.caffemodel"),
            "-iterations", "30"]
    rc, tty = run_with_stderr(args, terminal=True)
    assert rc == 0, tty
    rc, piped = run_with_stderr(args, terminal=False)
    assert rc == 0, piped
    shown = [(m.group(1), int(m.group(2)), int(m.group(3))) for m in PROGRESS.finditer(tty)]
    assert shown and shown[-1] == ("Batch", 30, 30)
    assert "\r" not in piped and "Batch 30/30" not in piped
    cleaned = PROGRESS.sub("", tty).replace(WIPE, "")
    assert log_messages(cleaned) == log_messages(piped)
    # extract_features: the same
    for terminal in (True, False):
        db = tmp_path / ("feat_tty" if terminal else "feat_pipe")
        rc, out = run_with_stderr(["extract_features", str(tmp_path / "snap_iter_400.caffemodel"),
                                   str(net), "ip", str(db), "12", "lmdb"], terminal=terminal)
        assert rc == 0, out
        shown = [(m.group(1), int(m.group(2)), int(m.group(3))) for m in PROGRESS.finditer(out)]
        if terminal:
            assert shown and shown[-1] == ("Batch", 12, 12)
        else:
            assert not shown and "\r" not in out


def test_listener_draws_iterations_of_a_solver(tmp_path):
    from google.protobuf import text_format

    from caffepy.proto import caffe_pb2
    from caffepy.solver import get_solver
    p = caffe_pb2.SolverParameter()
    text_format.Merge('base_lr: 0.01 lr_policy: "fixed" max_iter: 5 snapshot_after_train: '
                      'false test_iter: 3 test_interval: 2', p)
    text_format.Merge(NET, p.net_param)
    s = get_solver(p)
    stream = io.StringIO()
    listener = s.add_listener(ProgressListener(stream=stream, use_tqdm=False, force=True,
                                               min_interval=0))
    s.solve()
    out = stream.getvalue()
    assert [int(m.group(2)) for m in PROGRESS.finditer(out)] == [1, 2, 3, 4, 5]
    # each test pass (iterations 0, 2, 4) has its own line while it runs
    tests = re.findall(r"\rTesting net \(#0\) (\d)/3", out)
    assert tests == ["1", "2", "3"] * 3
    assert out.endswith(WIPE) and listener.bar is None
    assert progress_mod.stderr_is_terminal(stream) is False


def test_off_on_a_terminal_too(tmp_path):
    net, solver = write_files(tmp_path, max_iter=20)
    rc, tty = run_with_stderr(["train", "-solver", str(solver)], terminal=True, mode="off")
    assert rc == 0, tty
    assert "\r" not in tty and "ETA" not in tty and "Optimization Done." in tty
