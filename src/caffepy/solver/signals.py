"""Caffe's SignalHandler: what SIGINT / SIGHUP ask a running solver to do.

``caffe train``'s ``-sigint_effect`` / ``-sighup_effect`` (stop | snapshot | none) become
``Solver(..., sigint_effect=, sighup_effect=)``.  While ``solve()`` runs, the handler turns a
signal into a flag; the solver polls it (``get_action``) once per iteration and once per test
iteration, as Caffe's ``GetRequestedAction`` does.
"""
import signal
import threading

from ..errors import SolverError


class SolverAction:
    """What a signal (or a custom action function) asks the solver to do."""
    NONE = "none"
    STOP = "stop"
    SNAPSHOT = "snapshot"

    ALL = (NONE, STOP, SNAPSHOT)


def check_action(value, what):
    """``value`` as a SolverAction string; SolverError naming ``what`` if it is not one."""
    v = str(value).lower()
    if v not in SolverAction.ALL:
        raise SolverError("Invalid %s '%s': it must be one of stop, snapshot, none"
                          % (what, value))
    return v


class SignalHandler:
    """SIGINT/SIGHUP set flags that the solver polls.

    Installed only while ``solve`` runs, and only in the main thread (Python can only
    set signal handlers there); the previous handlers are put back afterwards.
    """

    def __init__(self, sigint_effect, sighup_effect):
        self.sigint_effect = sigint_effect
        self.sighup_effect = sighup_effect
        self.got_sigint = False
        self.got_sighup = False
        self._old = {}

    def _on_signal(self, signum, frame):
        if signum == signal.SIGINT:
            self.got_sigint = True
        else:
            self.got_sighup = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            sigs = [signal.SIGINT]
            if hasattr(signal, "SIGHUP"):
                sigs.append(signal.SIGHUP)
            for s in sigs:
                try:
                    self._old[s] = signal.signal(s, self._on_signal)
                except (ValueError, OSError):  # pragma: no cover - exotic embedding
                    pass
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            try:
                signal.signal(s, old if old is not None else signal.SIG_DFL)
            except (ValueError, OSError):  # pragma: no cover
                pass
        self._old = {}
        return False

    def get_action(self):
        """SIGINT's effect if one came since the last call, else SIGHUP's, else NONE."""
        if self.got_sigint:
            self.got_sigint = False
            return self.sigint_effect
        if self.got_sighup:
            self.got_sighup = False
            return self.sighup_effect
        return SolverAction.NONE
