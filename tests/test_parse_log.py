"""caffepy parse_log: the train/test CSV tables of Caffe's tools/extra/parse_log.py.

Logs: tests/logs/caffe_lenet_new_year.log (Caffe's glog format, LeNet run over New Year's Eve),
tests/logs/caffepy_lenet.log (a ``caffepy train --log_dir`` file of LeNet on the bundled MNIST
sample, 200 iterations) and a short ``caffepy train`` run made here.  The expected tables are
worked out by hand from the log lines: Seconds = the row's first output stamp minus the
``Solving`` stamp; LearningRate = the last ``lr =`` before the row (the first row takes the
second row's).
"""
import datetime
import math
import os
import re
import shutil

import pytest

from caffepy import cli
from caffepy.tools.parse_log import parse_log, parse_lines, save_csv_files

HERE = os.path.dirname(os.path.abspath(__file__))
CAFFE_LOG = os.path.join(HERE, "logs", "caffe_lenet_new_year.log")
CAFFEPY_LOG = os.path.join(HERE, "logs", "caffepy_lenet.log")

TRAIN, TEST = ["NumIters", "Seconds", "LearningRate", "loss"], \
    ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]

# Caffe log: Solving at 12/31 23:59:31.020879; the test at 200 prints at 01/01 00:00:00.281990,
# 28.979121 s to midnight + 0.281990 s.
CAFFE_TRAIN = [
    [0.0, 0.894806, 0.01, 2.33614],              # 31.915685 - 31.020879; lr from the next row
    [100.0, 14.51019, 0.01, 0.198367],           # 45.531069 - 31.020879; iteration 0's lr
    [200.0, 29.272978, 0.00992565, 0.152651],    # 28.979121 + 0.293857
    [300.0, 42.947582, 0.00985258, 0.0837312],   # 28.979121 + 13.968461
]
CAFFE_TEST = [
    [0.0, 0.882498, 0.00992565, 0.0863, 2.37966],    # 31.903377 - 31.020879
    [200.0, 29.261111, 0.00992565, 0.9614, 0.122684],
    [400.0, 57.481265, 0.00978075, 0.9733, 0.0852937],  # 28.979121 + 28.502144
]
CAFFE_TRAIN_CSV = ("NumIters,Seconds,LearningRate,loss\r\n"
                   "0.0,0.894806,0.01,2.33614\r\n"
                   "100.0,14.51019,0.01,0.198367\r\n"
                   "200.0,29.272978,0.00992565,0.152651\r\n"
                   "300.0,42.947582,0.00985258,0.0837312\r\n")
CAFFE_TEST_CSV = ("NumIters,Seconds,LearningRate,accuracy,loss\r\n"
                  "0.0,0.882498,0.00992565,0.0863,2.37966\r\n"
                  "200.0,29.261111,0.00992565,0.9614,0.122684\r\n"
                  "400.0,57.481265,0.00978075,0.9733,0.0852937\r\n")

# caffepy log: Solving at 07:26:47.822521 (inv policy: 0.01, 0.00996266, 0.00992565,
# 0.00988896 at iterations 0, 50, 100, 150).
CAFFEPY_TRAIN = [
    [0.0, 0.635818, 0.01, 2.33419],              # 48.458339 - 47.822521
    [50.0, 5.247379, 0.01, 0.32727],             # 53.069900 - 47.822521
    [100.0, 10.730914, 0.00996266, 0.314263],    # 58.553435 - 47.822521
    [150.0, 14.285906, 0.00992565, 0.134884],    # 07:27:02.108427 - 07:26:47.822521
]
CAFFEPY_TEST = [
    [0.0, 0.534488, 0.00996266, 0.146, 2.33127],     # 48.357009 - 47.822521
    [100.0, 10.706721, 0.00996266, 0.921, 0.262903],  # 58.529242 - 47.822521
    [200.0, 18.314793, 0.00988896, 0.948, 0.199011],  # 07:27:06.137314 - 07:26:47.822521
]


def table(rows):
    """(column names, [[values]]) of parse_log's rows."""
    assert all(list(r) == list(rows[0]) for r in rows)
    return list(rows[0]), [list(r.values()) for r in rows]


def assert_rows(rows, columns, expected):
    got_columns, values = table(rows)
    assert got_columns == columns
    assert len(values) == len(expected)
    for got, want in zip(values, expected):
        assert got == pytest.approx(want, rel=0, abs=5e-7, nan_ok=True), (got, want)


# -- Caffe's glog format -----------------------------------------------------------------------

def test_caffe_log_tables():
    train, test = parse_log(CAFFE_LOG)
    assert_rows(train, TRAIN, CAFFE_TRAIN)
    assert_rows(test, TEST, CAFFE_TEST)
    assert all(isinstance(v, float) for r in train + test for v in r.values())


def test_caffe_log_csv_files_are_caffes_bytes(tmp_path, capsys):
    rc = cli.main(["parse_log", CAFFE_LOG, str(tmp_path), "--verbose"])
    assert rc == 0
    with open(tmp_path / "caffe_lenet_new_year.log.train", newline="") as f:
        assert f.read() == CAFFE_TRAIN_CSV
    with open(tmp_path / "caffe_lenet_new_year.log.test", newline="") as f:
        assert f.read() == CAFFE_TEST_CSV
    out = capsys.readouterr().out
    assert out == "Wrote %s\nWrote %s\n" % (tmp_path / "caffe_lenet_new_year.log.train",
                                            tmp_path / "caffe_lenet_new_year.log.test")


def test_delimiter_and_default_output_folder(tmp_path, capsys):
    log = tmp_path / "run.log"
    shutil.copy(CAFFE_LOG, log)
    assert cli.main(["parse_log", str(log), "--delimiter", ";"]) == 0
    assert capsys.readouterr().out == ""           # quiet without --verbose
    text = (tmp_path / "run.log.test").read_text()
    assert text.splitlines()[0] == "NumIters;Seconds;LearningRate;accuracy;loss"
    assert text.splitlines()[2] == "200.0;29.261111;0.00992565;0.9614;0.122684"
    assert cli.main(["parse_log", str(log), "-delimiter=\\t"]) == 0      # gflags spelling, tab
    assert (tmp_path / "run.log.train").read_text().splitlines()[1] == \
        "0.0\t0.894806\t0.01\t2.33614"


def test_bad_arguments_are_errors(tmp_path, capsys):
    assert cli.main(["parse_log", CAFFE_LOG, str(tmp_path), "--delimiter", "::"]) == 1
    assert "--delimiter must be one character (got '::')" in capsys.readouterr().err
    assert cli.main(["parse_log", CAFFE_LOG, str(tmp_path / "missing")]) == 1
    assert "the output folder %s does not exist" % (tmp_path / "missing") in \
        capsys.readouterr().err
    assert cli.main(["parse_log", str(tmp_path / "none.log"), str(tmp_path)]) == 1
    assert "no log file %s" % (tmp_path / "none.log") in capsys.readouterr().err
    assert cli.main(["parse_log"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: parse_log:") and "usage: caffepy parse_log LOG" in err
    assert cli.main(["parse_log", "-h"]) == 0
    assert "--delimiter" in capsys.readouterr().out


def test_year_from_the_file_without_glogs_header(tmp_path):
    """No ``Log file created at`` line (stderr kept with 2>): the year is the file's last
    change, counted back over the New Year the log crosses; the tables are the same."""
    with open(CAFFE_LOG) as f:
        lines = f.readlines()[3:]
    log = tmp_path / "stderr.log"
    log.write_text("".join(lines))
    jan2 = datetime.datetime(2027, 1, 2, 10, 0).timestamp()
    os.utime(log, (jan2, jan2))
    train, test = parse_log(str(log))
    assert_rows(train, TRAIN, CAFFE_TRAIN)
    assert_rows(test, TEST, CAFFE_TEST)


LEAP_LOG = """\
I0228 23:59:50.000000 100 solver.cpp:289] Solving LeNet
I0228 23:59:50.500000 100 solver.cpp:239] Iteration 0 (0 iter/s, 0s/10 iters), loss = 2
I0228 23:59:50.500001 100 solver.cpp:258]     Train net output #0: loss = 2 (* 1 = 2 loss)
I0228 23:59:50.500002 100 sgd_solver.cpp:112] Iteration 0, lr = 0.01
I0229 12:00:00.000000 100 solver.cpp:239] Iteration 10 (0 iter/s, 0s/10 iters), loss = 1
I0229 12:00:00.000001 100 solver.cpp:258]     Train net output #0: loss = 1 (* 1 = 1 loss)
I0229 12:00:00.000002 100 sgd_solver.cpp:112] Iteration 10, lr = 0.009
I0301 00:00:10.000000 100 solver.cpp:239] Iteration 20 (0 iter/s, 0s/10 iters), loss = 0.5
I0301 00:00:10.000001 100 solver.cpp:258]     Train net output #0: loss = 0.5 (* 1 = 0.5 loss)
"""


def test_the_year_decides_february_29(tmp_path):
    # 2028 is a leap year: Feb 28 23:59:50 -> Mar 1 00:00:10 is one day and 20 s.
    train, _ = parse_lines(LEAP_LOG.splitlines(), 2028)[:2]
    assert [r["Seconds"] for r in train] == pytest.approx([0.500001, 43210.000001, 86420.000001])
    # In 2027 there is no Feb 29: that line is no stamp (skipped, as Caffe's script skips a
    # line it cannot read) and March 1 is 20 s after Feb 28's end.
    train, _ = parse_lines(LEAP_LOG.splitlines(), 2027)[:2]
    assert [r["NumIters"] for r in train] == [0.0, 20.0]
    assert [r["Seconds"] for r in train] == pytest.approx([0.500001, 20.000001])
    # from a file: glog's header gives the year, else the file's last change
    log = tmp_path / "leap.log"
    log.write_text("Log file created at: 2028/02/28 23:59:49\n" + LEAP_LOG)
    assert parse_log(str(log))[0][2]["Seconds"] == pytest.approx(86420.000001)
    log.write_text(LEAP_LOG)
    t = datetime.datetime(2028, 3, 1, 9, 0).timestamp()
    os.utime(log, (t, t))
    assert parse_log(str(log))[0][2]["Seconds"] == pytest.approx(86420.000001)
    assert parse_log(str(log), year=2027)[0][1]["Seconds"] == pytest.approx(20.000001)


def test_day_change_is_a_date_change():
    lines = ["I0630 23:59:59.250000 7 solver.cpp:289] Solving net",
             "I0630 23:59:59.500000 7 solver.cpp:347] Iteration 0, Testing net (#0)",
             "I0630 23:59:59.750000 7 solver.cpp:414]     Test net output #0: acc = 0.5",
             "I0701 00:00:01.000000 7 solver.cpp:347] Iteration 100, Testing net (#0)",
             "I0701 00:00:01.250000 7 solver.cpp:414]     Test net output #0: acc = 0.75"]
    _, test, new_years = parse_lines(lines, 2026)
    assert new_years == 0
    assert list(test[0]) == ["NumIters", "Seconds", "LearningRate", "acc"]
    # 23:59:59.25 -> 00:00:01.25 the next day: 2 s
    assert [(r["NumIters"], r["Seconds"], r["acc"]) for r in test] == [(0.0, 0.5, 0.5),
                                                                      (100.0, 2.0, 0.75)]
    assert all(math.isnan(r["LearningRate"]) for r in test)     # no lr line: NaN


# -- a caffepy log -------------------------------------------------------------------------

def test_caffepy_log_tables():
    train, test = parse_log(CAFFEPY_LOG)
    assert_rows(train, TRAIN, CAFFEPY_TRAIN)
    assert_rows(test, TEST, CAFFEPY_TEST)


NET = """name: "TwoScores"
layer { name: "a" type: "DummyData" top: "a"
  dummy_data_param { shape { dim: 4 dim: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "b" type: "DummyData" top: "b" top: "label"
  dummy_data_param { shape { dim: 4 dim: 1 } shape { dim: 4 }
    data_filler { type: "constant" value: 0 } data_filler { type: "constant" value: 0 } } }
layer { name: "scores" type: "Concat" bottom: "a" bottom: "b" top: "scores" }
layer { name: "accuracy" type: "Accuracy" bottom: "scores" bottom: "label" top: "accuracy" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "scores" bottom: "label" top: "loss" }
"""

_STAMP = re.compile(r"^I(\d\d)(\d\d) (\d\d:\d\d:\d\d\.\d{6}) ")


def _stamp(line):
    m = _STAMP.match(line)
    return datetime.datetime.strptime("2026%s%s %s" % m.groups(), "%Y%m%d %H:%M:%S.%f")


def test_a_caffepy_train_run(tmp_path, capsys):
    """Scores [1, 0] for label 0 in every batch: accuracy 1, loss log(1 + e^-1) = 0.313262;
    step policy: lr 0.01 until iteration 20, then 0.001."""
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(
        'net: "%s" test_iter: 2 test_interval: 20 base_lr: 0.01 lr_policy: "step" gamma: 0.1 '
        'stepsize: 20 display: 10 max_iter: 40 snapshot_prefix: "%s"\n'
        % (tmp_path / "net.prototxt", tmp_path / "snap"))
    logs = tmp_path / "logs"
    assert cli.main(["train", "-solver", str(tmp_path / "solver.prototxt"),
                     "-log_dir", str(logs)]) == 0
    capsys.readouterr()
    log = str(logs / "caffepy.INFO")
    train, test = parse_log(log)
    loss = math.log1p(math.exp(-1))
    assert round(loss, 6) == 0.313262
    columns = ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]
    # lr of each row: the previous display iteration's (rows 0 and 10: 0.01; 20: iteration
    # 10's 0.01; 30: iteration 20's 0.001)
    _, values = table(train)
    assert table(train)[0] == columns
    assert [(v[0], v[2], v[3], v[4]) for v in values] == [
        (0.0, 0.01, 1.0, 0.313262), (10.0, 0.01, 1.0, 0.313262),
        (20.0, 0.01, 1.0, 0.313262), (30.0, 0.001, 1.0, 0.313262)]
    _, values = table(test)
    assert table(test)[0] == columns
    assert [(v[0], v[2], v[3], v[4]) for v in values] == [
        (0.0, 0.01, 1.0, 0.313262), (20.0, 0.01, 1.0, 0.313262),
        (40.0, 0.001, 1.0, 0.313262)]
    # Seconds: the first output line of the row's iteration, from the Solving line
    with open(log) as f:
        lines = f.read().splitlines()
    start = _stamp(next(l for l in lines if "] Solving TwoScores" in l))
    for kind, rows in (("Train", train), ("Test", test)):
        firsts, it = {}, None
        for line in lines:
            m = re.search(r"\] Iteration (\d+)", line)
            if m:
                it = float(m.group(1))
            if "%s net output #0:" % kind in line:
                firsts[it] = (_stamp(line) - start).total_seconds()
        assert [r["Seconds"] for r in rows] == [firsts[r["NumIters"]] for r in rows]
        assert all(s >= 0 for s in firsts.values())


# -- what Caffe's script loses or trips on ---------------------------------------------------

HEAD = ["I1206 10:00:00.000000 9 solver.cpp:289] Solving net"]


def test_nan_and_inf_outputs_are_values():
    lines = HEAD + [
        "I1206 10:00:01.000000 9 solver.cpp:239] Iteration 0 (0 iter/s), loss = 2",
        "I1206 10:00:01.000001 9 solver.cpp:258]     Train net output #0: loss = 2.5",
        "I1206 10:00:02.000000 9 solver.cpp:239] Iteration 10 (1 iter/s), loss = nan",
        "I1206 10:00:02.000001 9 solver.cpp:258]     Train net output #0: loss = -nan",
        "I1206 10:00:03.000000 9 solver.cpp:239] Iteration 20 (1 iter/s), loss = inf",
        "I1206 10:00:03.000001 9 solver.cpp:258]     Train net output #0: loss = inf"]
    train = parse_lines(lines, 2026)[0]
    assert [r["NumIters"] for r in train] == [0.0, 10.0, 20.0]
    assert train[0]["loss"] == 2.5 and math.isnan(train[1]["loss"])
    assert train[2]["loss"] == math.inf
    assert [r["Seconds"] for r in train] == [1.000001, 2.000001, 3.000001]


def test_a_single_row_is_kept_a_short_row_written_an_unfinished_last_row_dropped():
    lines = HEAD + [
        "I1206 10:00:01.000000 9 solver.cpp:347] Iteration 0, Testing net (#0)",
        "I1206 10:00:01.500000 9 solver.cpp:414]     Test net output #0: accuracy = 0.25",
        "I1206 10:00:01.600000 9 solver.cpp:414]     Test net output #1: loss = 1.5 (* 1 = 1.5 "
        "loss)"]
    test = parse_lines(lines, 2026)[1]
    assert [list(r.values())[:2] + list(r.values())[3:] for r in test] == [[0.0, 1.5, 0.25, 1.5]]
    more = lines + [
        "I1206 10:00:05.000000 9 solver.cpp:347] Iteration 100, Testing net (#0)",
        "I1206 10:00:05.500000 9 solver.cpp:414]     Test net output #0: accuracy = 0.75",
        "I1206 10:00:06.000000 9 solver.cpp:347] Iteration 200, Testing net (#0)",
        "I1206 10:00:06.500000 9 solver.cpp:414]     Test net output #0: accuracy = 0.875",
        "I1206 10:00:06.600000 9 solver.cpp:414]     Test net output #1: loss = 0.5",
        "I1206 10:00:07.000000 9 solver.cpp:347] Iteration 300, Testing net (#0)",
        "I1206 10:00:07.500000 9 solver.cpp:414]     Test net output #0: accuracy = 0.9"]
    test = parse_lines(more, 2026)[1]
    # the row of 100 never got its loss: it is written without one when the next iteration's
    # outputs begin, as Caffe's script writes it; the unfinished row of 300 at the end is dropped
    assert [[r.get(c, "-") for c in ("NumIters", "accuracy", "loss")] for r in test] == [
        [0.0, 0.25, 1.5], [100.0, 0.75, "-"], [200.0, 0.875, 0.5]]


def test_blank_wrapped_and_overwritten_lines_are_skipped():
    lines = HEAD + [
        "I1206 10:00:01.000000 9 solver.cpp:239] Iteration 0 (0 iter/s), loss = 2",
        "",
        "Traceback (most recent call last): Train net output #0: loss = 99",
        "\rIteration 5/40  ETA 0:00:03\x1b[K\r\x1b[KI1206 10:00:01.500000 9 solver.cpp:258]"
        "     Train net output #0: loss = 2.25 (* 1 = 2.25 loss)",
        "I1206 10:00:01.600000 9 sgd_solver.cpp:112] Iteration 0, lr = 0.05"]
    train = parse_lines(lines, 2026)[0]
    assert [list(r.values()) for r in train][0][:2] == [0.0, 1.5]
    assert [r["loss"] for r in train] == [2.25]
    assert math.isnan(train[0]["LearningRate"])     # a single row: no second row to copy from


def test_nothing_before_the_first_iteration_and_no_solving_line():
    lines = [
        "I1206 09:59:00.000000 9 net.cpp:255] Network initialization done.",
        "I1206 09:59:30.000000 9 solver.cpp:414]     Test net output #0: early = 1",
        "I1206 10:00:01.000000 9 solver.cpp:347] Iteration 0, Testing net (#0)",
        "I1206 10:00:02.000000 9 solver.cpp:414]     Test net output #0: accuracy = 0.5"]
    test = parse_lines(lines, 2026)[1]
    # no Solving line: the times count from the first stamped line after the first iteration
    assert [list(r.items()) for r in test][0][:2] == [("NumIters", 0.0), ("Seconds", 1.0)]
    assert list(test[0]) == ["NumIters", "Seconds", "LearningRate", "accuracy"]


def test_empty_table_writes_no_file(tmp_path, capsys):
    lines = HEAD + ["I1206 10:00:01.000000 9 solver.cpp:239] Iteration 0 (0 iter/s), loss = 2",
                    "I1206 10:00:01.500000 9 solver.cpp:258]     Train net output #0: loss = 2"]
    train, test = parse_lines(lines, 2026)[:2]
    assert test == []
    written = save_csv_files(str(tmp_path / "x.log"), str(tmp_path), train, test, verbose=True)
    assert written == [str(tmp_path / "x.log.train")]
    assert not (tmp_path / "x.log.test").exists()
    assert capsys.readouterr().out.splitlines() == [
        "Wrote %s" % (tmp_path / "x.log.train"),
        "Not writing %s; no lines to write" % (tmp_path / "x.log.test")]
