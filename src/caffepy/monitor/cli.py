"""What ``caffepy train``'s -tensorboard and -on_nan flags (and a terminal) add to a solver."""
from ..errors import CliError
from .divergence import ON_NAN_ACTIONS
from .progress import ProgressListener, stderr_is_terminal


def attach_monitors(solver, flags):
    """-on_nan sets ``solver.on_nan``; -tensorboard DIR adds a TensorBoardListener; a terminal
    on stderr gets the progress line."""
    on_nan = getattr(flags, "on_nan", "stop")
    if on_nan not in ON_NAN_ACTIONS:
        raise CliError("Invalid -on_nan \"%s\" (use %s)" % (on_nan, ", ".join(ON_NAN_ACTIONS)))
    solver.on_nan = on_nan
    logdir = getattr(flags, "tensorboard", "")
    if logdir:
        from .tensorboard import TensorBoardListener   # tensorboardX only when asked for
        solver.add_listener(TensorBoardListener(logdir))
    if stderr_is_terminal():
        solver.add_listener(ProgressListener())
    return solver
