"""caffepy plot: the chart types of Caffe's plot_training_log.py, drawn with matplotlib.

Each PNG is read back with Pillow: its size, a white background away from the curves, and
the line's colour at every data point of every log (the point's pixel found through the
axes' data-to-pixel transform).
"""
import os
import re
import sys

import numpy as np
import pytest

from caffepy import cli
from caffepy.errors import ToolError
from caffepy.tools.parse_log import parse_log
from caffepy.tools import plot_log
from caffepy.tools.plot_log import CHART_TYPES, chart_description, plot_logs

from PIL import Image

try:
    from matplotlib.colors import to_rgb
except ImportError:
    to_rgb = None

needs_matplotlib = pytest.mark.skipif(to_rgb is None, reason="caffepy plot needs matplotlib, "
                                      "not installed (pip install 'caffepy[plot]')")

HERE = os.path.dirname(os.path.abspath(__file__))
CAFFE_LOG = os.path.join(HERE, "logs", "caffe_lenet_new_year.log")
CAFFEPY_LOG = os.path.join(HERE, "logs", "caffepy_lenet.log")
LOGS = [CAFFEPY_LOG, CAFFE_LOG]

DESCRIPTIONS = ["Test accuracy  vs. Iters", "Test accuracy  vs. Seconds",
                "Test loss  vs. Iters", "Test loss  vs. Seconds",
                "Train learning rate  vs. Iters", "Train learning rate  vs. Seconds",
                "Train loss  vs. Iters", "Train loss  vs. Seconds"]


def read_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(int)


def expected_points(log, chart_type):
    """The (x, y) data of one log's line in a chart, from its parse_log tables."""
    table, field, x = CHART_TYPES[chart_type]
    train, test = parse_log(log)
    rows = train if table == "Train" else test
    y = {"learning rate": "LearningRate", "accuracy": "accuracy", "loss": "loss"}[field]
    return [(r["NumIters" if x == "Iters" else "Seconds"], r[y]) for r in rows]


def colour_near(pixels, ax, point, rgb, radius=2):
    """Whether the pixel of a data point (or one beside it) has the line's colour."""
    px, py = ax.transData.transform(point)
    col, row = int(round(px)), pixels.shape[0] - int(round(py))
    box = pixels[max(row - radius, 0):row + radius + 1, max(col - radius, 0):col + radius + 1]
    want = np.array([round(255 * c) for c in rgb])
    return bool((np.abs(box - want).max(axis=-1) <= 12).any())


def check_axes(pixels, ax, chart_type, logs):
    drawn = [expected_points(log, chart_type) for log in logs]
    for i, (log, points) in enumerate(zip(logs, drawn)):
        assert points
        # a later log's marker drawn over the same place hides this one's
        later = ax.transData.transform([p for ps in drawn[i + 1:] for p in ps] or [(0, 0)])
        if i + 1 == len(logs):
            later = np.empty((0, 2))
        for p in points:
            if (np.abs(later - ax.transData.transform(p)).max(axis=-1) < 8).any():
                continue
            assert colour_near(pixels, ax, p, to_rgb("C%d" % i)), (chart_type, log, p)
    assert ax.get_title() == DESCRIPTIONS[chart_type]
    table, field, x = CHART_TYPES[chart_type]
    assert ax.get_xlabel() == x and ax.get_ylabel() == "%s %s" % (table, field)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [os.path.basename(log)[:-len(".log")] for log in logs]
    assert ax.get_legend()._loc == (4 if field == "accuracy" else 1)   # lower / upper right


def test_chart_types_are_caffes_numbering():
    assert [chart_description(i) for i in range(8)] == DESCRIPTIONS


@needs_matplotlib
@pytest.mark.parametrize("chart_type", range(8))
def test_each_chart_type(tmp_path, chart_type):
    out = str(tmp_path / ("type%d.png" % chart_type))
    fig = plot_logs(LOGS, out, chart_type)
    pixels = read_png(out)
    assert pixels.shape == (480, 640, 3)
    assert (pixels[:5, :5] == 255).all()          # the white background in a corner
    (ax,) = fig.axes
    check_axes(pixels, ax, chart_type, LOGS)
    # the curve's colours cover more than a few pixels: lines between the points
    for i in range(2):
        want = np.array([round(255 * c) for c in to_rgb("C%d" % i)])
        assert (np.abs(pixels - want).max(axis=-1) <= 12).sum() > 150


@needs_matplotlib
def test_all_draws_four_panels(tmp_path):
    out = str(tmp_path / "all.png")
    fig = plot_logs(LOGS, out)
    pixels = read_png(out)
    assert pixels.shape == (720, 960, 3)
    assert [ax.get_title() for ax in fig.axes] == [DESCRIPTIONS[6], DESCRIPTIONS[2],
                                                   DESCRIPTIONS[0], DESCRIPTIONS[4]]
    for ax, t in zip(fig.axes, (6, 2, 0, 4)):
        check_axes(pixels, ax, t, LOGS)


@needs_matplotlib
def test_command_line_both_argument_orders(tmp_path, capsys):
    a, b = str(tmp_path / "a.png"), str(tmp_path / "b.png")
    assert cli.main(["plot", CAFFE_LOG, "-o", a, "--type", "3", "--size", "500x400"]) == 0
    assert cli.main(["plot", "3", b, CAFFE_LOG, "--size=500x400"]) == 0   # Caffe's order
    pa, pb = read_png(a), read_png(b)
    assert pa.shape == (400, 500, 3)
    assert (pa == pb).all()
    # a single log: one line, in the first colour, its values where they belong
    fig = plot_logs(CAFFE_LOG, str(tmp_path / "c.png"), 3, size=(500, 400))
    check_axes(read_png(str(tmp_path / "c.png")), fig.axes[0], 3, [CAFFE_LOG])
    assert (read_png(str(tmp_path / "c.png")) == pa).all()
    assert cli.main(["plot", "--list"]) == 0
    assert capsys.readouterr().out.splitlines()[1:9] == [
        "  %d: %s" % (i, d) for i, d in enumerate(DESCRIPTIONS)]


@needs_matplotlib
def test_column_picks_another_output(tmp_path):
    log = tmp_path / "top5.log"
    top5 = iter(["0.5", "0.99", "0.995"])
    text = re.sub(r"(\n(I\d{4} [\d:.]+) 20615 solver.cpp:414]     Test net output #1: .*)",
                  lambda m: m.group(1) + "\n%s 20615 solver.cpp:414]     Test net output #2: "
                  "acc@5 = %s" % (m.group(2), next(top5)), open(CAFFE_LOG).read())
    log.write_text(text)
    fig = plot_logs([str(log)], str(tmp_path / "p.png"), 1, column="acc@5")
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_ydata()) == [0.5, 0.99, 0.995]
    assert list(line.get_xdata()) == [0.882498, 29.261111, 57.481265]


@needs_matplotlib
def test_errors(tmp_path, capsys, monkeypatch):
    only_train = tmp_path / "train_only.log"
    only_train.write_text(
        "I1206 10:00:00.000000 9 solver.cpp:289] Solving net\n"
        "I1206 10:00:01.000000 9 solver.cpp:239] Iteration 0 (0 iter/s), loss = 2\n"
        "I1206 10:00:01.500000 9 solver.cpp:258]     Train net output #0: loss = 2\n")
    with pytest.raises(ToolError, match="no 'Test net output' lines after the first iteration"):
        plot_logs([str(only_train)], str(tmp_path / "x.png"), 0)
    assert cli.main(["plot", str(only_train), "-o", str(tmp_path / "x.png"), "--type", "8"]) == 1
    assert "'8' is not a chart type: 0 to 7, or all" in capsys.readouterr().err
    assert cli.main(["plot", CAFFE_LOG, "-o", str(tmp_path / "x.jpg")]) == 1
    assert "the output must be a .png file" in capsys.readouterr().err
    assert cli.main(["plot", CAFFE_LOG]) == 1
    assert "give the PNG to write with -o OUT.png" in capsys.readouterr().err
    assert cli.main(["plot", CAFFE_LOG, "-o", str(tmp_path / "no" / "x.png")]) == 1
    assert "cannot write %s" % (tmp_path / "no" / "x.png") in capsys.readouterr().err
    # all: a panel without data says so; the others are drawn
    fig = plot_logs([str(only_train)], str(tmp_path / "all.png"))
    assert [ax.get_title() for ax in fig.axes] == [DESCRIPTIONS[6], "", "", DESCRIPTIONS[4]]


def test_without_matplotlib_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ToolError, match=r"caffepy plot needs matplotlib: pip install "
                       r"'caffepy\[plot\]'"):
        plot_log.plot_logs([CAFFE_LOG], str(tmp_path / "y.png"), 0)
    assert not (tmp_path / "y.png").exists()
