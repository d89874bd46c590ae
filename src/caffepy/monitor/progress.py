"""A progress line (iterations/s and the time left) while training, testing or extracting
features runs silently between log lines, on a terminal only.

The line is drawn on stderr only when stderr is a terminal, with tqdm when it is installed
and a plain ``\\r`` line otherwise; before each log record the line is wiped, so the log keeps
Caffe's lines.  A log file, a pipe or a redirect never sees it: when stderr is not a terminal
nothing is installed at all and the loops run exactly as before.

The environment variable ``CAFFEPY_PROGRESS`` chooses: ``off`` (no line even on a terminal),
``plain`` (the plain line even with tqdm installed); unset or anything else: as above.
"""
import logging
import os
import sys
import time

from ..solver.listeners import SolverListener

try:                                      # optional
    import tqdm as _tqdm
except ImportError:                       # pragma: no cover - depends on the environment
    _tqdm = None

LOGGER_NAME = "caffepy"


def _env_mode():
    return os.environ.get("CAFFEPY_PROGRESS", "").strip().lower()


def stderr_is_terminal(stream=None):
    """Whether the progress line goes on ``stream`` (stderr): a terminal, unless
    CAFFEPY_PROGRESS=off."""
    stream = sys.stderr if stream is None else stream
    if _env_mode() == "off":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def format_duration(seconds):
    """``1h02m03s``, ``2m05s``, ``7s``."""
    s = int(round(max(seconds, 0)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return "%dh%02dm%02ds" % (h, m, sec)
    if m:
        return "%dm%02ds" % (m, sec)
    return "%ds" % sec


def progress_text(desc, done, total, rate):
    """``desc 120/10000 (35.2 iter/s, ETA 4m41s)``."""
    text = "%s %d/%d" % (desc, done, total)
    if rate > 0:
        text += " (%.3g iter/s, ETA %s)" % (rate, format_duration((total - done) / rate))
    return text


class _WipeFilter(logging.Filter):
    """A handler filter that wipes the progress line before each record is written."""

    def __init__(self, bar):
        super().__init__()
        self.bar = bar

    def filter(self, record):
        self.bar.wipe()
        return True


class ProgressBar:
    """One progress line on ``stream`` (stderr).  ``update(done)`` redraws at most every
    ``min_interval`` seconds; ``close()`` wipes it.  ``use_tqdm``: None picks tqdm when it is
    installed."""

    def __init__(self, total, desc="Iteration", initial=0, stream=None, use_tqdm=None,
                 min_interval=0.2):
        self.stream = sys.stderr if stream is None else stream
        self.total, self.desc, self.min_interval = int(total), desc, min_interval
        self.done = self._start = int(initial)
        self._t0 = self._last_draw = time.perf_counter()
        self._shown = False
        self._tqdm = None
        if use_tqdm is None:
            use_tqdm = _tqdm is not None and _env_mode() != "plain"
        if use_tqdm and _tqdm is not None:
            self._tqdm = _tqdm.tqdm(total=self.total, initial=self.done, desc=desc,
                                    file=self.stream, leave=False, dynamic_ncols=True,
                                    unit="iter", mininterval=min_interval)
        self._filters = []
        for handler in _handlers():
            f = _WipeFilter(self)
            handler.addFilter(f)
            self._filters.append((handler, f))

    def rate(self):
        elapsed = time.perf_counter() - self._t0
        return (self.done - self._start) / elapsed if elapsed > 0 else 0.0

    def text(self):
        return progress_text(self.desc, self.done, self.total, self.rate())

    def update(self, done):
        if self._tqdm is not None:
            self._tqdm.update(done - self.done)
            self.done = done
            return
        self.done = done
        now = time.perf_counter()
        if now - self._last_draw < self.min_interval and done < self.total:
            return
        self._last_draw = now
        self.stream.write("\r" + self.text() + "\x1b[K")
        self.stream.flush()
        self._shown = True

    def wipe(self):
        if self._tqdm is not None:
            self._tqdm.clear()
            return
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    def close(self):
        for handler, f in self._filters:
            handler.removeFilter(f)
        self._filters = []
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        else:
            self.wipe()


def _handlers():
    """The handlers caffepy's log records go through (the caffepy logger's, then the
    root's when it propagates)."""
    out = []
    logger = logging.getLogger(LOGGER_NAME)
    while logger is not None:
        out.extend(logger.handlers)
        if not logger.propagate:
            break
        logger = logger.parent
    return out


def progress(iterable, total, desc, stream=None, use_tqdm=None, force=False):
    """``iterable`` with a progress line when stderr is a terminal (or ``force``); else the
    iterable itself, untouched."""
    stream = sys.stderr if stream is None else stream
    if not (force or stderr_is_terminal(stream)) or total <= 0:
        return iterable
    return _iterate(iterable, total, desc, stream, use_tqdm)


def _iterate(iterable, total, desc, stream, use_tqdm):
    bar = ProgressBar(total, desc, stream=stream, use_tqdm=use_tqdm)
    try:
        for i, item in enumerate(iterable):
            yield item
            bar.update(i + 1)
    finally:
        bar.close()


class ProgressListener(SolverListener):
    """The training progress line: ``Iteration i/max_iter (r iter/s, ETA t)``, redrawn as
    iterations finish and wiped before every log line.  Added by ``caffepy train`` when stderr
    is a terminal; ``force`` draws it on any ``stream``."""

    def __init__(self, stream=None, use_tqdm=None, force=False, min_interval=0.2):
        self.stream = sys.stderr if stream is None else stream
        self.use_tqdm, self.min_interval = use_tqdm, min_interval
        self.enabled = force or stderr_is_terminal(self.stream)
        self.bar = None
        self.test_bar = None

    def on_start(self, solver):
        if self.enabled and self.bar is None:
            self.bar = ProgressBar(solver.param.max_iter, "Iteration", initial=solver.iter,
                                   stream=self.stream, use_tqdm=self.use_tqdm,
                                   min_interval=self.min_interval)

    def on_iteration(self, it, smoothed_loss, outputs, lr):
        if self.bar is not None:
            self.bar.update(it + 1)

    def on_test_iteration(self, test_net_id, done, total):
        """A test pass gets its own line, ``Testing net (#k) i/N ...``, while it runs."""
        if not self.enabled:
            return
        if self.test_bar is None:
            if self.bar is not None:
                self.bar.wipe()
            self.test_bar = ProgressBar(total, "Testing net (#%d)" % test_net_id,
                                        stream=self.stream, use_tqdm=self.use_tqdm,
                                        min_interval=self.min_interval)
        self.test_bar.update(done)
        if done >= total:
            self.test_bar.close()
            self.test_bar = None

    def on_test(self, it, test_net_id, scores):
        if self.test_bar is not None:            # a test cut short (a stop request)
            self.test_bar.close()
            self.test_bar = None

    def on_end(self, solver):
        self.on_test(None, None, None)
        if self.bar is not None:
            self.bar.close()
            self.bar = None
