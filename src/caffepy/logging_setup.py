"""glog-style logging for the ``caffepy`` command line (Caffe logs through Google glog).

Only the command line (and the example scripts) call :func:`setup_logging`; importing the
library never configures logging.  Lines look like glog's::

    I1128 16:58:03.123456 12345 solver.py:123] Iteration 100, loss = 0.2

(severity letter I/W/E/F, month+day, time with microseconds, thread id, file:line).
The command line's own lines name ``cli.py`` whichever module of ``caffepy.cli`` wrote them
(see :data:`CLI_LOG`), as Caffe's tool lines name caffe.cpp.
With ``log_dir`` a glog-style file ``caffepy.<host>.<user>.log.INFO.<date>-<time>.<pid>``
is written there too, with a ``caffepy.INFO`` symlink to the newest one.
"""
import datetime
import getpass
import logging
import os
import socket
import sys
import threading

LOGGER_NAME = "caffepy"

# glog's --minloglevel: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL.
_MINLOGLEVEL = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}


# The logger of the command line's own lines (caffepy.cli): records carry the source name
# ``cli.py``, so the lines read the same whichever module of the package logged them.
CLI_SOURCE = "cli.py"
CLI_LOG = logging.LoggerAdapter(logging.getLogger(LOGGER_NAME), {"glog_source": CLI_SOURCE})


def severity_letter(levelno):
    if levelno >= logging.CRITICAL:
        return "F"
    if levelno >= logging.ERROR:
        return "E"
    if levelno >= logging.WARNING:
        return "W"
    return "I"


class GlogFormatter(logging.Formatter):
    """``I1128 16:58:03.123456 12345 file.py:123] message`` (multi-line messages keep the prefix
    on their first line only, as glog does).  A record's ``glog_source`` attribute, when set,
    replaces the file name."""

    def format(self, record):
        t = datetime.datetime.fromtimestamp(record.created)
        tid = getattr(record, "thread_native_id", None)
        if tid is None:
            tid = (os.getpid() if record.threadName == "MainThread"
                   else (record.thread or 0) % 100000)
        source = getattr(record, "glog_source", None) or record.filename
        prefix = "%s%s %s %5d %s:%d] " % (severity_letter(record.levelno), t.strftime("%m%d"),
                                          t.strftime("%H:%M:%S.%f"), tid, source, record.lineno)
        msg = record.getMessage()
        if record.exc_info:
            msg = msg + "\n" + self.formatException(record.exc_info)
        return prefix + msg


class _NativeThreadIdFilter(logging.Filter):
    """Record the OS thread id (glog prints it; it equals the pid for the main thread)."""

    def filter(self, record):
        if not hasattr(record, "thread_native_id"):
            try:
                record.thread_native_id = threading.get_native_id()
            except Exception:  # pragma: no cover
                record.thread_native_id = os.getpid()
        return True


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (so redirection/capture works)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _log_file_name(program, now):
    try:
        user = getpass.getuser()
    except Exception:
        user = "invalid-user"
    host = socket.gethostname() or "unknown"
    return "%s.%s.%s.log.INFO.%s.%d" % (program, host, user, now.strftime("%Y%m%d-%H%M%S"),
                                        os.getpid())


class GlogFileHandler(logging.FileHandler):
    """A glog log file with glog's three header lines and a ``<program>.INFO`` symlink."""

    def __init__(self, log_dir, program="caffepy"):
        os.makedirs(log_dir, exist_ok=True)
        now = datetime.datetime.now()
        self.path = os.path.join(log_dir, _log_file_name(program, now))
        super().__init__(self.path, mode="w", encoding="utf-8")
        self.stream.write("Log file created at: %s\nRunning on machine: %s\n"
                          "Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg\n"
                          % (now.strftime("%Y/%m/%d %H:%M:%S"), socket.gethostname()))
        self.stream.flush()
        link = os.path.join(log_dir, program + ".INFO")
        try:
            if os.path.islink(link) or os.path.exists(link):
                os.remove(link)
            os.symlink(os.path.basename(self.path), link)
        except (OSError, NotImplementedError):
            pass


class LoggingConfig:
    """What :func:`setup_logging` changed, so that :meth:`restore` can undo it (the CLI is
    also called in-process, e.g. by tests and the example scripts)."""

    def __init__(self, logger, handlers, old_level, old_propagate, old_filters):
        self.logger = logger
        self.handlers = handlers
        self.old_level = old_level
        self.old_propagate = old_propagate
        self.old_filters = old_filters

    @property
    def log_file(self):
        for h in self.handlers:
            if isinstance(h, GlogFileHandler):
                return h.path
        return None

    def restore(self):
        for h in self.handlers:
            self.logger.removeHandler(h)
            try:
                h.flush()
                if isinstance(h, logging.FileHandler):
                    h.close()
            except Exception:
                pass
        self.logger.setLevel(self.old_level)
        self.logger.propagate = self.old_propagate
        self.logger.filters[:] = self.old_filters


def setup_logging(log_dir=None, minloglevel=0, logtostderr=False, verbose=0, program="caffepy"):
    """Send the ``caffepy`` logger to stderr in glog format (and to a file in ``log_dir``).

    ``minloglevel`` is glog's (0 INFO .. 3 FATAL); ``verbose > 0`` also shows DEBUG records.
    ``logtostderr`` (glog) means no log file even if ``log_dir`` is given.
    Returns a :class:`LoggingConfig`; call ``.restore()`` to undo.
    """
    logger = logging.getLogger(LOGGER_NAME)
    # Remove handlers of an earlier in-process setup that was not restored.
    for h in list(logger.handlers):
        if getattr(h, "_caffepy_cli", False):
            logger.removeHandler(h)
    cfg = LoggingConfig(logger, [], logger.level, logger.propagate, list(logger.filters))
    level = _MINLOGLEVEL.get(int(minloglevel), logging.CRITICAL if int(minloglevel) > 3
                             else logging.INFO)
    if verbose and level <= logging.INFO:
        level = logging.DEBUG
    fmt = GlogFormatter()
    handlers = [StderrHandler()]
    if log_dir and not logtostderr:
        handlers.append(GlogFileHandler(log_dir, program))
    for h in handlers:
        h._caffepy_cli = True
        h.setFormatter(fmt)
        h.addFilter(_NativeThreadIdFilter())
        logger.addHandler(h)
    cfg.handlers = handlers
    logger.setLevel(level)
    logger.propagate = False
    return cfg

