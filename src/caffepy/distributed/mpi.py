"""Data-parallel training over MPI (mpi4py): Caffe's multi-solver semantics.

One solver per process; rank 0 is Caffe's root solver.

- Start: rank 0 initialises the weights (or loads -weights, or restores -snapshot) and
  broadcasts the train net's learnable params, the solver history, ``iter`` and
  ``current_step``; every rank starts from rank 0's state.
- Each iteration: every rank runs forward/backward on its own share of the data (the Data and
  HDF5Data layers keep records rank, rank+N, ... of their source: caffepy.distributed), then
  :class:`GradientSync` (Caffe's NCCL callback, on_gradients_ready) packs the learnable params'
  diffs into one flat float32 buffer, sums it over the ranks with one Allreduce and scales it
  by 1/N; every rank then runs the same apply_update (clipping, normalization, weight decay,
  regularizers, the update rule), so the weights stay identical.
- The same Allreduce carries rank 0's signal action (none / stop / snapshot) in one extra
  slot, so SIGINT / SIGHUP effects reach every rank at the same iteration.
- Test nets, display lines and snapshots: rank 0 only (solver.py asks ``root_solver()``).
- Failure: an exception on any rank is logged, sent to rank 0 and the job is ended with
  MPI_Abort; rank 0 waits in non-blocking collectives that poll for that message, so it
  reports "rank r failed: ..." within milliseconds, and a rank whose message is not taken up
  (rank 0 busy testing) aborts the job itself after ``CAFFEPY_MPI_ABORT_WAIT`` seconds (5).

Importing this module initialises MPI; caffepy imports it only when an MPI launcher started
more than one process (caffepy.distributed.launched_world).
"""
import logging
import os
import sys
import time
import traceback

import numpy as np

try:
    from mpi4py import MPI
except ImportError as _e:      # pragma: no cover - depends on the installation
    from ..errors import CaffepyError
    raise CaffepyError("this process was started by an MPI launcher with several processes, but "
                       "mpi4py cannot be imported (%s): install caffepy's MPI support with "
                       "pip install 'caffepy[mpi]', or run without mpiexec" % _e) from None

from .. import backend
from ..errors import CaffepyError
from ..regularizers import chain_state_dict, load_chain_state_dict
from . import ACTION_CODES, ACTIONS, set_solver_count, set_solver_rank, _state

log = logging.getLogger("caffepy")

ABORT_TAG = 0x6361        # the tag of a failing rank's message to rank 0
f32 = np.float32


def abort_wait_seconds():
    try:
        return float(os.environ.get("CAFFEPY_MPI_ABORT_WAIT", "5"))
    except ValueError:
        return 5.0


class World:
    """MPI_COMM_WORLD as caffepy's solvers see it: ``rank``, ``size``, ``is_root``; waiting
    on a request while watching for a failing rank's message; ending the job."""

    def __init__(self, comm=None):
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.is_root = self.rank == 0
        set_solver_count(self.size)
        set_solver_rank(self.rank)
        _state["world"] = self
        self._status = MPI.Status()

    # -- waiting without hanging ---------------------------------------------------------
    def wait(self, request):
        """Complete ``request``; on rank 0, a failing rank's message ends the job meanwhile.
        Spins briefly, then sleeps in short steps (the ranks share the CPU cores)."""
        spins = 0
        pause = 0.0
        while not request.Test():
            if self.is_root:
                self.check_failed_ranks()
            spins += 1
            if spins > 64:
                pause = min(2.5e-4, pause * 2 if pause else 2e-5)
                time.sleep(pause)

    def check_failed_ranks(self):
        st = self._status
        if self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=ABORT_TAG, status=st):
            source = st.Get_source()
            message = self.comm.recv(source=source, tag=ABORT_TAG)
            log.error("rank %d of %d failed: %s", source, self.size, message)
            log.error("ending the MPI job (all %d ranks)", self.size)
            self.abort(1)

    def bcast_array(self, arr):
        """Broadcast the contiguous array ``arr`` from rank 0 (in place)."""
        self.wait(self.comm.Ibcast(arr, root=0))

    def abort(self, code=1):
        for h in logging.getLogger("caffepy").handlers + logging.getLogger().handlers:
            try:
                h.flush()
            except Exception:
                pass
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(0.3)         # the launcher forwards the last lines before it ends the ranks
        self.comm.Abort(code)

    def fail(self, message):
        """End the job because this rank failed with ``message`` (never returns)."""
        if self.is_root or self.size == 1:
            log.error("rank %d of %d failed: %s", self.rank, self.size, message)
            log.error("ending the MPI job (all %d ranks)", self.size)
            self.abort(1)
        log.error("rank %d of %d failed: %s", self.rank, self.size, message)
        request = self.comm.isend(message, dest=0, tag=ABORT_TAG)
        deadline = time.monotonic() + abort_wait_seconds()
        while time.monotonic() < deadline:
            if request.Test():
                break
            time.sleep(1e-3)
        # rank 0 ends the job when it takes the message up; if it is busy (testing), do it here
        time.sleep(max(0.0, deadline - time.monotonic()))
        log.error("rank 0 did not end the job within %gs: ending it from rank %d",
                  abort_wait_seconds(), self.rank)
        self.abort(1)

    def run_guarded(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``; any exception ends the whole job (see :meth:`fail`)."""
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            self.fail("interrupted (KeyboardInterrupt)")
        except CaffepyError as e:
            self.fail("%s: %s" % (type(e).__name__, e))
        except Exception as e:
            self.fail("%s: %s\n%s" % (type(e).__name__, e, traceback.format_exc()))

    # -- the solver ----------------------------------------------------------------------
    def broadcast_solver(self, solver):
        """Give every rank rank 0's train-net params, solver history, iter, current_step and
        regularizer chain state (Caffe's NCCL broadcast of the root solver's weights)."""
        net = solver.net
        blobs = [p.flat_data for p in net.learnable_params] + [h.reshape(-1)
                                                               for h in solver.history]
        total = sum(int(b.size) for b in blobs)
        buf = np.empty(total, f32)
        meta = np.zeros(2, np.int64)
        if self.is_root:
            pack(blobs, buf)
            meta[:] = (solver.iter, solver.current_step)
        self.bcast_array(meta)
        self.bcast_array(buf)
        if not self.is_root:
            unpack(buf, blobs)
            solver.iter = int(meta[0])
            solver.current_step = int(meta[1])
        reg_state = self.comm.bcast(chain_state_dict(solver._regularizers)
                                    if self.is_root else None, root=0)
        if not self.is_root and reg_state:
            load_chain_state_dict(solver._regularizers, reg_state)

    def train(self, solver, restore=None):
        """Rank 0 restores ``restore`` (a .solverstate) when given; every rank gets rank 0's
        state, then trains with the gradients summed over the ranks."""
        if backend.mode() != backend.CPU:
            raise CaffepyError("data-parallel training over MPI runs on CPUs: call "
                               "caffepy.set_mode_cpu() (docs/distributed.md)")
        if restore and self.is_root:
            log.info("Resuming from %s", restore)
            solver.restore(restore)
        self.broadcast_solver(solver)
        sync = GradientSync(self, solver)
        if self.is_root:
            # rank 0 decides: its solve()'s signal flags (the other ranks' are never read)
            sync.poll_action = lambda: (solver.signal_handler.get_action()
                                        if solver.signal_handler is not None else "none")
            log.info("Training with %d MPI processes (solver_count %d): rank r reads the "
                     "train data's records r, r+%d, r+%d, ...; gradients are summed over the "
                     "ranks and scaled by 1/%d", self.size, self.size, self.size,
                     2 * self.size, self.size)
        solver.add_callback(None, sync.on_gradients_ready)
        solver.set_action_function(sync.action)
        solver.gradient_sync = sync
        solver.solve()
        return sync


def pack(arrays, buf):
    """Copy the flat arrays one after the other into ``buf``."""
    o = 0
    for a in arrays:
        n = int(a.size)
        buf[o:o + n] = backend.to_numpy(a)
        o += n


def unpack(buf, arrays):
    o = 0
    for a in arrays:
        n = int(a.size)
        a[...] = backend.xp().asarray(buf[o:o + n]) if not isinstance(a, np.ndarray) \
            else buf[o:o + n]
        o += n


class GradientSync:
    """Caffe's NCCL solver callback over MPI: after backward, the learnable params' diffs are
    summed over the ranks (one in-place Allreduce of one flat float32 buffer, plus one slot
    for rank 0's solver action) and scaled by 1/N.

    ``allreduce_seconds`` / ``allreduce_calls`` / ``bytes_per_iteration`` say what it cost
    (the wait includes the time the other ranks take to reach the exchange)."""

    def __init__(self, world, solver):
        self.world = world
        self.params = list(solver.net.learnable_params)
        self.sizes = [int(p.flat_diff.size) for p in self.params]
        total = sum(self.sizes)
        self.buffer = np.zeros(total + 1, f32)
        self.views = []
        o = 0
        for n in self.sizes:
            self.views.append(self.buffer[o:o + n])
            o += n
        self.scale = f32(1.0 / world.size)
        self.poll_action = None
        self.pending = ACTIONS[0]
        self.allreduce_seconds = 0.0
        self.pack_seconds = 0.0
        self.allreduce_calls = 0
        self.bytes_per_iteration = self.buffer.nbytes

    def on_gradients_ready(self):
        t0 = time.perf_counter()
        buf = self.buffer
        for view, p in zip(self.views, self.params):
            view[...] = p.flat_diff
        code = 0
        if self.poll_action is not None:
            code = ACTION_CODES[self.poll_action()]
        buf[-1] = code
        t1 = time.perf_counter()
        self.world.wait(self.world.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM))
        t2 = time.perf_counter()
        code = int(round(float(buf[-1])))
        for view, p in zip(self.views, self.params):
            np.multiply(view, self.scale, out=p.flat_diff)
        self.pending = ACTIONS[code] if 0 <= code < len(ACTIONS) else ACTIONS[0]
        self.allreduce_seconds += t2 - t1
        self.pack_seconds += (t1 - t0) + (time.perf_counter() - t2)
        self.allreduce_calls += 1

    def action(self):
        """This iteration's action, decided by rank 0 (once; "none" afterwards)."""
        a = self.pending
        self.pending = ACTIONS[0]
        return a


def start():
    """The MPI world of this process (MPI is initialised on the first call)."""
    world = _state.get("world")
    return world if world is not None else World()
