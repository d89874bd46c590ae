"""Data-parallel training over MPI: Caffe's multi-solver semantics, one solver per process.

``mpiexec -n N caffepy train -solver S`` trains one model with N processes (docs/distributed.md).
This module is what the rest of caffepy reads, and it never imports mpi4py:

- whether the process was started by an MPI launcher (``launched_world()``: the rank and size
  that mpiexec / srun / Open MPI's mpirun put in the environment);
- Caffe's ``solver_count()`` / ``solver_rank()`` / ``root_solver()``: the Data and HDF5Data
  layers read them to keep every N-th record (rank r keeps records r, r+N, r+2N, ...), the
  solver builds test nets, displays and snapshots on the root solver only.

The MPI side (mpi4py: the gradient allreduce, the broadcasts, the abort protocol) is in
:mod:`caffepy.distributed.mpi`, imported only when the launcher started more than one process.
"""
import logging
import os

__all__ = ["launched_world", "solver_count", "solver_rank", "root_solver", "set_solver_count",
           "set_solver_rank", "mpi_world", "ACTION_CODES", "ACTIONS"]

# the environment variables MPI launchers set for every process: (rank, size)
_LAUNCHER_VARIABLES = (
    ("PMI_RANK", "PMI_SIZE"),                               # MPICH's hydra, Intel MPI, srun (PMI-2)
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),       # Open MPI's mpirun
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"),         # MVAPICH2
    ("PMIX_RANK", "SLURM_NTASKS"),                          # srun --mpi=pmix
)

# the solver actions as the numbers the per-iteration allreduce carries
ACTIONS = ("none", "stop", "snapshot")
ACTION_CODES = {a: i for i, a in enumerate(ACTIONS)}


def launched_world(environ=None):
    """``(rank, size)`` from the variables an MPI launcher sets, or None when the process was
    not started by one (a plain run). Nothing is imported."""
    env = os.environ if environ is None else environ
    for rank_var, size_var in _LAUNCHER_VARIABLES:
        rank, size = env.get(rank_var), env.get(size_var)
        if rank is None or size is None:
            continue
        try:
            rank, size = int(rank), int(size)
        except ValueError:
            continue
        if size >= 1 and 0 <= rank < size:
            return rank, size
    return None


_rank, _count = launched_world() or (0, 1)
_state = {"rank": _rank, "count": _count}


def solver_count():
    """Caffe::solver_count(): the number of solvers training one model (the MPI world size
    under an MPI launcher, else 1)."""
    return _state["count"]


def solver_rank():
    """Caffe::solver_rank(): this process's solver (its MPI rank; 0 in a plain run)."""
    return _state["rank"]


def root_solver():
    """Caffe::root_solver(): rank 0, the solver that tests, displays and snapshots."""
    return _state["rank"] == 0


def mpi_world():
    """The :class:`caffepy.distributed.mpi.World` of this process once MPI is initialised
    (``caffepy.distributed.mpi.start()``), else None."""
    return _state.get("world")


def set_solver_count(count):
    _state["count"] = int(count)


def set_solver_rank(rank):
    _state["rank"] = int(rank)


def quiet_logging():
    """Only warnings and errors from this rank (Caffe logs INFO lines on the root solver)."""
    logging.getLogger("caffepy").setLevel(logging.WARNING)
