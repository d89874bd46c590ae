"""``caffepy parse_log``: a training log as two CSV tables, the ones Caffe's parse_log.py writes.

    caffepy parse_log LOG [OUTDIR] [--delimiter C] [--verbose]

writes ``OUTDIR/<basename of LOG>.train`` and ``OUTDIR/<basename of LOG>.test`` (OUTDIR
defaults to the folder of LOG).  The log is a glog-format log of ``caffepy train`` or of
Caffe's ``caffe train`` (stderr kept with ``2> train.log``, or the ``caffepy.INFO`` /
``caffe.INFO`` file written with ``--log_dir``).

The tables
----------
Columns: ``NumIters``, ``Seconds``, ``LearningRate``, then one column per net output in the
order the log prints them (``loss`` in the train table of LeNet; ``accuracy``, ``loss`` in its
test table).  One row per iteration that printed outputs:

- the train table reads the ``Train net output #i: NAME = VALUE`` lines (every ``display``
  iterations), the test table the ``Test net output #i: NAME = VALUE`` lines (every
  ``test_interval`` iterations, test net #0 and any other test net alike);
- ``NumIters``: the number of the last ``Iteration N`` line seen;
- ``Seconds``: the time of the row's first output line minus the time of the first line that
  contains ``Solving`` (glog's ``mmdd hh:mm:ss.uuuuuu`` stamps; a day change is a date change,
  and a month smaller than the previous line's month is the next year, so a run over New Year
  counts on);
- ``LearningRate``: the last ``lr = X`` value printed before the row began.  Caffe and caffepy
  print ``Iteration N, lr = X`` after the outputs of iteration N, so a row shows the rate of the
  previous display iteration; the first row, printed before any rate, takes the second row's.

The values are those Caffe's script gives for the same log; caffepy also keeps what that script
loses or trips on: ``nan``/``inf`` outputs (a diverged run) are values, not dropped columns; a
table with a single row is written; blank or wrapped lines (a traceback, a progress line) are
skipped; a log without a ``Solving`` line counts from its first timestamp.  The year, which
glog's stamps leave out and which matters for February 29, is the one in the header glog writes
at the top of a ``--log_dir`` file (``Log file created at: 2026/12/06 07:26:46``), else the year
of the file's last change, counted back over the New Years the log crosses.

Python API::

    from caffepy.tools.parse_log import parse_log, save_csv_files
    train_rows, test_rows = parse_log("caffepy.INFO")   # lists of dicts, keys in column order
    save_csv_files("caffepy.INFO", "out", train_rows, test_rows)
"""
import argparse
import csv
import datetime
import math
import os
import re
import sys

from ..errors import CaffepyError, CliError, ToolError

__all__ = ["parse_log", "parse_lines", "save_csv_files", "write_csv", "parse_log_command",
           "PARSE_LOG_USAGE", "log_year"]

PARSE_LOG_USAGE = "usage: caffepy parse_log LOG [OUTDIR] [--delimiter C] [--verbose]"

_ITERATION = re.compile(r"Iteration (\d+)")
_NUMBER = r"([-+]?(?i:nan|inf(?:inity)?)|[.\deE+-]+)"
_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = " + _NUMBER)
_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = " + _NUMBER)
_LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+(?:[eE]?[-+]?[0-9]+)?)")
_HEADER_YEAR = re.compile(r"^Log file created at: (\d{4})/\d\d/\d\d ")
# A glog line: severity letter, mmdd, hh:mm:ss.uuuuuu.
_STAMP = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{1,6})\s")


def _clean(line):
    """The text a terminal would show: the part after the last carriage return (a progress line
    overwritten by a log line), without erase-line codes."""
    line = line.rstrip()
    if "\r" in line:
        line = line.rsplit("\r", 1)[1]
    return line.replace("\x1b[K", "")


class _Clock:
    """glog stamps (no year) -> datetimes, a year added whenever the month goes back."""

    def __init__(self, year):
        self.year = year
        self.last_month = None
        self.new_years = 0

    def stamp(self, line):
        """The datetime of a glog line, or None for a line without a valid stamp."""
        m = _STAMP.match(line)
        if m is None:
            return None
        month, day, hour, minute, second = (int(g) for g in m.groups()[:5])
        micro = int(m.group(6).ljust(6, "0"))
        year = self.year
        if self.last_month is not None and month < self.last_month:
            year += 1
        try:
            t = datetime.datetime(year, month, day, hour, minute, second, micro)
        except ValueError:     # February 29 of a common year, month 13: not a stamp
            return None
        if year != self.year:
            self.year = year
            self.new_years += 1
        self.last_month = month
        return t


def _value(text):
    try:
        return float(text)
    except ValueError:
        return None


class _Table:
    """The rows of one table, built as Caffe's script builds them: a row starts at the first
    output line of a new iteration and is complete once it has as many columns as the first
    row."""

    def __init__(self, regex):
        self.regex = regex
        self.rows = []
        self.row = None

    def feed(self, line, iteration, seconds, learning_rate):
        m = self.regex.search(line)
        if m is not None:
            value = _value(m.group(3))
            if value is not None:
                if self.row is None or self.row["NumIters"] != iteration:
                    if self.row is not None:
                        self.rows.append(self.row)
                    self.row = {"NumIters": iteration, "Seconds": seconds,
                                "LearningRate": learning_rate}
                self.row[m.group(2)] = value
        if self.row is not None and self.rows and len(self.row) == len(self.rows[0]):
            self.rows.append(self.row)
            self.row = None

    def finish(self):
        # Caffe's script drops a row still open at the end; a table's only row is kept.
        if self.row is not None and not self.rows:
            self.rows.append(self.row)
        self.row = None
        # The first row is printed before any learning rate: it takes the second row's.
        if len(self.rows) > 1:
            self.rows[0]["LearningRate"] = self.rows[1]["LearningRate"]
        return self.rows


def _start(lines, clock):
    """Consume ``lines`` up to the first timestamped line containing ``Solving``; its time,
    or None when there is none."""
    for raw in lines:
        line = _clean(raw)
        if "Solving" in line:
            t = clock.stamp(line)
            if t is not None:
                return t
    return None


def parse_lines(lines, year, restart=None):
    """Parse an iterable of log lines; ``year`` is the year of the first line.  Returns
    ``(train_rows, test_rows, new_years)``, new_years the number of New Years crossed.

    ``restart``, when given, is a callable returning a fresh iterator over the same lines, used
    when the log has no ``Solving`` line (the times then count from the first stamped line).
    """
    if restart is None:
        lines = list(lines)

        def restart():
            return iter(lines)
    clock = _Clock(year)
    it = iter(lines)
    start = _start(it, clock)
    if start is None:
        it = restart()
        clock = _Clock(year)
    train, test = _Table(_TRAIN_OUTPUT), _Table(_TEST_OUTPUT)
    iteration = -1
    learning_rate = math.nan
    for raw in it:
        line = _clean(raw)
        m = _ITERATION.search(line)
        if m is not None:
            iteration = float(m.group(1))
        if iteration == -1:
            continue          # nothing counts before the first iteration
        t = clock.stamp(line)
        if t is None:
            continue          # not a glog line (a wrapped message, a traceback, a blank line)
        if start is None:
            start = t
        seconds = (t - start).total_seconds()
        m = _LEARNING_RATE.search(line)
        if m is not None:
            learning_rate = float(m.group(1))
        train.feed(line, iteration, seconds, learning_rate)
        test.feed(line, iteration, seconds, learning_rate)
    return train.finish(), test.finish(), clock.new_years


def log_year(path):
    """The year of the log's first line: from glog's file header when it has one (returns
    (year, True)), else the year of the file's last change (returns (year, False))."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for _ in range(3):
            m = _HEADER_YEAR.match(f.readline())
            if m is not None:
                return int(m.group(1)), True
    return datetime.datetime.fromtimestamp(os.path.getmtime(path)).year, False


def parse_log(path, year=None):
    """Parse a Caffe/caffepy training log: ``(train_rows, test_rows)``, lists of dicts whose
    keys are the table's columns in order (``NumIters``, ``Seconds``, ``LearningRate``, then the
    net's outputs); all values are floats.  ``year``: the year of the log's start (default:
    glog's header, else the file's last change minus the New Years the log crosses)."""
    if not os.path.isfile(path):
        raise ToolError("parse_log: no log file %s" % path)
    known = year is not None
    if not known:
        year, known = log_year(path)

    def run(y):
        with open(path, encoding="utf-8", errors="replace") as f:
            def restart():
                f.seek(0)
                return iter(f)
            return parse_lines(f, y, restart)

    train, test, new_years = run(year)
    if not known and new_years:
        # The file's last change is in the log's last year: its first line is years before.
        train, test, _ = run(year - new_years)
    return train, test


def _format(value):
    return repr(value) if isinstance(value, float) else str(value)


def write_csv(filename, rows, delimiter=",", verbose=False):
    """Write one table (Excel's CSV dialect, as Caffe's script: CRLF line ends, floats as
    Python writes them: ``100.0``, ``0.00992565``, ``nan``).  An empty table writes no file."""
    if not rows:
        if verbose:
            print("Not writing %s; no lines to write" % filename)
        return False
    columns = list(rows[0])
    try:
        with open(filename, "w", newline="") as f:
            w = csv.writer(f, dialect="excel", delimiter=delimiter)
            w.writerow(columns)
            for row in rows:
                w.writerow([_format(row[c]) if c in row else "" for c in columns])
    except OSError as e:
        raise ToolError("parse_log: cannot write %s: %s" % (filename, e.strerror or e)) from None
    if verbose:
        print("Wrote %s" % filename)
    return True


def save_csv_files(log_path, output_dir, train_rows, test_rows, delimiter=",", verbose=False):
    """Write ``<output_dir>/<basename>.train`` and ``.test``; returns the paths written."""
    base = os.path.join(output_dir, os.path.basename(log_path))
    written = []
    for suffix, rows in ((".train", train_rows), (".test", test_rows)):
        if write_csv(base + suffix, rows, delimiter, verbose):
            written.append(base + suffix)
    return written


def _delimiter(text):
    text = {"\\t": "\t", "tab": "\t"}.get(text, text)
    if len(text) != 1:
        raise CliError("parse_log: --delimiter must be one character (got %r); '\\t' for a "
                       "tab\n%s" % (text, PARSE_LOG_USAGE))
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CliError("parse_log: %s\n%s" % (message, PARSE_LOG_USAGE))


def _argument_parser():
    p = _Parser(prog="caffepy parse_log", description="Parse a Caffe or caffepy training log "
                "into two CSV files, LOG.train and LOG.test (Caffe's tools/extra/parse_log.py).")
    p.add_argument("logfile_path", help="the log (glog format)")
    p.add_argument("output_dir", nargs="?", default=None,
                   help="the folder for the CSV files (default: the log's folder)")
    p.add_argument("--verbose", "-verbose", action="store_true",
                   help="print the names of the files written")
    p.add_argument("--delimiter", "-delimiter", default=",",
                   help="column delimiter in the CSV files (default: ','; '\\t' for a tab)")
    return p


def run_tool(argument_parser, body, args):
    """A tool command that reads its own flags: ``--help`` prints ``argument_parser()``'s
    help; else ``body(options)``'s status, or 1 with an ``ERROR:`` line on stderr for a
    caffepy or OS error."""
    try:
        parser = argument_parser()
        if "--help" in args:
            parser.print_help(sys.stdout)
            return 0
        return body(parser.parse_args(args))
    except (CaffepyError, OSError) as e:
        sys.stderr.write("ERROR: %s\n" % e)
        return 1


def parse_log_command(flags, args):
    """The ``caffepy parse_log`` row of the command table: 0 when done, 1 with an ``ERROR:``
    line on stderr otherwise."""
    return run_tool(_argument_parser, _run, args)


def _run(opts):
    delimiter = _delimiter(opts.delimiter)
    out = opts.output_dir
    if out is None:
        out = os.path.dirname(os.path.abspath(opts.logfile_path))
    if not os.path.isdir(out):
        raise CliError("parse_log: the output folder %s does not exist" % out)
    train, test = parse_log(opts.logfile_path)
    save_csv_files(opts.logfile_path, out, train, test, delimiter, opts.verbose)
    return 0
