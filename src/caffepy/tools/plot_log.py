"""``caffepy plot``: training curves from Caffe/caffepy logs (Caffe's plot_training_log.py).

    caffepy plot LOG [LOG ...] -o curves.png [--type N|all] [--column NAME] [--size WxH]
    caffepy plot TYPE OUT.png LOG [LOG ...]        (plot_training_log.py's argument order)
    caffepy plot --list                            (the chart types)

The chart types, numbered as Caffe's script numbers them::

    0: Test accuracy  vs. Iters        4: Train learning rate  vs. Iters
    1: Test accuracy  vs. Seconds      5: Train learning rate  vs. Seconds
    2: Test loss  vs. Iters            6: Train loss  vs. Iters
    3: Test loss  vs. Seconds          7: Train loss  vs. Seconds

``all`` (the default) draws train loss, test loss, test accuracy and learning rate against
iterations on one 2x2 figure.  Each log is read with :func:`caffepy.tools.parse_log.parse_log`
and is one line, labelled with its file name less ``.log``; several logs share a chart and a
legend (lower right for accuracy, upper right for loss and learning rate, as in Caffe's
script).  The y column: ``accuracy`` / ``loss`` when the table has one, else the first column
whose name contains ``acc`` / ``loss``, else the table's first output column (the net's output
#0, as Caffe's script reads); ``--column NAME`` picks another (``loss3/top-1``, ``acc@5``).

matplotlib draws them, headless (the Agg canvas, no display needed): ``pip install
'caffepy[plot]'``.

Python API::

    from caffepy.tools.plot_log import plot_logs
    fig = plot_logs(["run1.log", "run2.log"], "curves.png", chart_type=6)
"""
import argparse
import os

from ..errors import CliError, ToolError
from .parse_log import parse_log, run_tool

__all__ = ["CHART_TYPES", "chart_description", "plot_logs", "plot_command", "PLOT_USAGE"]

PLOT_USAGE = ("usage: caffepy plot LOG [LOG ...] -o OUT.png [--type 0-7|all] [--column NAME] "
              "[--size WxH] [--dpi N]\n"
              "       caffepy plot TYPE OUT.png LOG [LOG ...]   (plot_training_log.py's order)\n"
              "       caffepy plot --list")

# (table, y field, x field), in the order of Caffe's script: the fields sorted by name, each
# y field against Iters then Seconds.
CHART_TYPES = (
    ("Test", "accuracy", "Iters"), ("Test", "accuracy", "Seconds"),
    ("Test", "loss", "Iters"), ("Test", "loss", "Seconds"),
    ("Train", "learning rate", "Iters"), ("Train", "learning rate", "Seconds"),
    ("Train", "loss", "Iters"), ("Train", "loss", "Seconds"),
)
# The 2x2 figure of --type all: train loss, test loss / test accuracy, learning rate.
ALL_PANELS = (6, 2, 0, 4)
_X_COLUMN = {"Iters": "NumIters", "Seconds": "Seconds"}
_SEPARATOR = "  vs. "
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_MAX_POINTS_WITH_MARKERS = 60
DEFAULT_SIZE = {"one": (640, 480), "all": (960, 720)}


def chart_description(chart_type):
    """``"Test accuracy  vs. Iters"``: the title Caffe's script gives the chart."""
    table, field, x = CHART_TYPES[chart_type]
    return "%s %s%s%s" % (table, field, _SEPARATOR, x)


def _label(path):
    """The legend label: the file name without ``.log``, as Caffe's script labels a log."""
    name = os.path.basename(path)
    return name[:-4] if name.endswith(".log") else name


def _y_column(rows, field, column):
    """The table column the chart's y field reads (see the module docstring)."""
    outputs = [c for c in rows[0] if c not in ("NumIters", "Seconds", "LearningRate")]
    if field == "learning rate":
        return "LearningRate"
    if column is not None:
        return column if column in rows[0] else None
    key = "acc" if field == "accuracy" else "loss"
    if field in outputs:
        return field
    for c in outputs:
        if key in c.lower():
            return c
    return outputs[0] if outputs else None


def _series(tables, chart_type, column):
    """[(label, xs, ys)] for one chart, one per log with data; ToolError when none has."""
    table, field, x = CHART_TYPES[chart_type]
    series, missing = [], []
    for path, (train, test) in tables:
        rows = train if table == "Train" else test
        if not rows:
            missing.append("%s (no '%s net output' lines after the first iteration)"
                           % (path, table))
            continue
        y = _y_column(rows, field, column)
        if y is None:
            missing.append("%s (no column %r in its %s table: %s)"
                           % (path, column, table.lower(), ", ".join(rows[0])))
            continue
        series.append((path, [r[_X_COLUMN[x]] for r in rows if y in r],
                       [r[y] for r in rows if y in r]))
    if not series:
        raise ToolError("plot: nothing to draw for '%s' from %s"
                        % (chart_description(chart_type), "; ".join(missing)))
    labels = [_label(p) for p, _, _ in series]
    if len(set(labels)) < len(labels):      # the same file name in two folders
        labels = [p for p, _, _ in series]
    return [(lab, xs, ys) for lab, (_, xs, ys) in zip(labels, series)]


def _draw(ax, series, chart_type):
    table, field, x = CHART_TYPES[chart_type]
    for i, (label, xs, ys) in enumerate(series):
        marker = _MARKERS[i % len(_MARKERS)] if len(xs) <= _MAX_POINTS_WITH_MARKERS else None
        ax.plot(xs, ys, label=label, color="C%d" % (i % 10), marker=marker, markersize=4,
                linewidth=1.25)
    if x == "Iters":
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))     # no 2.5 iterations
    ax.set_title(chart_description(chart_type))
    ax.set_xlabel(x)
    ax.set_ylabel("%s %s" % (table, field))
    ax.grid(True, linewidth=0.5, alpha=0.4)
    ax.legend(loc="lower right" if field == "accuracy" else "upper right", ncol=1,
              fontsize="small")


def _figure(width, height, dpi):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ToolError("caffepy plot needs matplotlib: pip install 'caffepy[plot]'") from None
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def plot_logs(logs, out_png, chart_type="all", column=None, size=None, dpi=100):
    """Draw ``chart_type`` (0-7 or ``"all"``) for the logs into ``out_png``.  ``size``:
    (width, height) in pixels (default 640x480, 960x720 for all).  Returns the matplotlib
    Figure (already saved; its axes' ``transData`` maps data to the PNG's pixels, y up)."""
    if isinstance(logs, (str, os.PathLike)):
        logs = [logs]
    if not logs:
        raise ToolError("plot: no log given")
    if chart_type != "all" and not (isinstance(chart_type, int)
                                    and 0 <= chart_type < len(CHART_TYPES)):
        raise ToolError("plot: %r is not a chart type (0 to %d, or all)"
                        % (chart_type, len(CHART_TYPES) - 1))
    if chart_type == "all" and column is not None:
        raise ToolError("plot: a column (%r) is for one chart: give its type (0 to %d) too"
                        % (column, len(CHART_TYPES) - 1))
    width, height = size or DEFAULT_SIZE["all" if chart_type == "all" else "one"]
    if width < 100 or height < 100 or dpi <= 0:
        raise ToolError("plot: the image must be at least 100x100 pixels (got %dx%d)"
                        % (width, height))
    tables = [(p, parse_log(p)) for p in logs]
    fig = _figure(width, height, dpi)
    if chart_type == "all":
        axes = fig.subplots(2, 2).ravel()
        drawn = 0
        for ax, t in zip(axes, ALL_PANELS):
            try:
                _draw(ax, _series(tables, t, None), t)
                drawn += 1
            except ToolError as e:
                ax.set_axis_off()
                ax.text(0.5, 0.5, "%s:\nno data" % chart_description(t), ha="center",
                        va="center", transform=ax.transAxes)
                last_error = e
        if not drawn:
            raise last_error
        fig.tight_layout()
    else:
        _draw(fig.add_subplot(1, 1, 1), _series(tables, chart_type, column), chart_type)
        fig.tight_layout()
    try:
        fig.savefig(out_png, format="png", dpi=dpi)
    except OSError as e:
        raise ToolError("plot: cannot write %s: %s" % (out_png, e.strerror or e)) from None
    return fig


# -- the command -----------------------------------------------------------------------------

def _chart_type(text):
    if text == "all":
        return "all"
    try:
        t = int(text)
    except ValueError:
        t = -1
    if not 0 <= t < len(CHART_TYPES):
        raise CliError("plot: '%s' is not a chart type: 0 to %d, or all (caffepy plot --list)"
                       % (text, len(CHART_TYPES) - 1))
    return t


def _size(text):
    w, sep, h = text.lower().partition("x")
    try:
        size = (int(w), int(h))
    except ValueError:
        raise CliError("plot: --size must be WIDTHxHEIGHT in pixels (got '%s')" % text) from None
    return size


def chart_list():
    lines = ["Chart types (--type):"]
    lines += ["  %d: %s" % (i, chart_description(i)) for i in range(len(CHART_TYPES))]
    lines.append("  all: train loss, test loss, test accuracy and learning rate vs. iterations "
                 "(2x2)")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CliError("plot: %s\n%s" % (message, PLOT_USAGE))


def _argument_parser():
    p = _Parser(prog="caffepy plot", usage=PLOT_USAGE[len("usage: "):],
                description="Draw training curves from Caffe or caffepy logs (Caffe's "
                "tools/extra/plot_training_log.py).", epilog=chart_list(),
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="*", help="the logs (or TYPE OUT.png LOG ..., Caffe's order)")
    p.add_argument("-o", "--output", "-output", help="the PNG to write")
    p.add_argument("--type", "-type", default=None, help="the chart: 0 to 7, or all (default)")
    p.add_argument("--column", "-column", default=None,
                   help="the table column to draw for accuracy/loss (default: accuracy/loss)")
    p.add_argument("--size", "-size", default=None,
                   help="WIDTHxHEIGHT in pixels (default 640x480; 960x720 for all)")
    p.add_argument("--dpi", "-dpi", type=int, default=100, help="dots per inch (default 100)")
    p.add_argument("--list", "-list", action="store_true", help="list the chart types")
    return p


def plot_command(flags, args):
    """The ``caffepy plot`` row of the command table: 0 when done, 1 with an ``ERROR:`` line
    on stderr otherwise."""
    return run_tool(_argument_parser, _run, args)


def _run(opts):
    if opts.list:
        print(chart_list())
        return 0
    logs, out, chart = list(opts.args), opts.output, opts.type
    if (out is None and len(logs) >= 3 and logs[1].lower().endswith(".png")
            and logs[0].lstrip("-").isdigit()):
        chart, out, logs = logs[0], logs[1], logs[2:]     # plot_training_log.py's order
    if out is None:
        raise CliError("plot: give the PNG to write with -o OUT.png\n%s" % PLOT_USAGE)
    if not logs:
        raise CliError("plot: give at least one log\n%s" % PLOT_USAGE)
    if not out.lower().endswith(".png"):
        raise CliError("plot: the output must be a .png file (got '%s')" % out)
    for log in logs:
        if not os.path.isfile(log):
            raise CliError("plot: no log file %s" % log)
    plot_logs(logs, out, _chart_type(chart or "all"), column=opts.column,
              size=_size(opts.size) if opts.size else None, dpi=opts.dpi)
    return 0
