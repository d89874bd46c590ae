"""TensorBoard event files of a training run (``caffepy train -tensorboard DIR``, or
``solver.add_listener(TensorBoardListener(DIR))``); needs tensorboardX
(``pip install caffepy[tensorboard]``).

Scalars written (tag: step = the iteration as Caffe's log numbers it):

- ``loss/smoothed`` (the log's ``loss =``, the ``average_loss`` mean) and ``loss/raw`` (the
  iteration's own loss): every iteration;
- ``train/<output>``: every train net output, every iteration (a blob with several values:
  ``train/<output>/<k>``);
- ``lr``: the learning rate of the update, every iteration;
- ``grad/global_norm``: the global L2 norm of the gradient (before clipping and
  regularization; the number ``clip_gradients`` compares), every iteration;
- ``weight_norm/<layer>/<i>`` and ``grad_norm/<layer>/<i>``: the L2 norm of each learnable
  param's data and diff, every display iteration;
- ``speed/iter_per_s``: iterations per second since the previous display;
- ``test<k>/<output>``: every test score of test net k, at the iteration it was tested (and
  ``test_loss/<k>``, the log's "Test loss", with ``test_compute_loss``);
- with the SSL sparsity display on: ``sparsity/<layer>/<i>/{element,column,row}`` and
  ``regularization/total``; ``loss/final`` is the loss ``solve()`` shows after the last update.

:func:`read_scalars` reads the event files back ({tag: [(step, value)]}).
"""
import glob
import math
import os
import struct
import time

from ..errors import CaffepyError
from ..solver.listeners import SolverListener

INSTALL_HINT = ("TensorBoard event files need tensorboardX: pip install tensorboardX "
                "(or caffepy[tensorboard])")


def _summary_writer():
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise CaffepyError(INSTALL_HINT) from None
    return SummaryWriter


def _l2(arr):
    """The L2 norm of a NumPy/CuPy array, as a Python float (float32 dot, as Caffe)."""
    flat = arr.reshape(-1)
    return math.sqrt(float(flat.dot(flat)))


def output_tags(prefix, outputs):
    """The tag of each output (index, name, value, weight): ``prefix/name`` when the name
    has one value, else ``prefix/name/k``."""
    per_name = {}
    for _, name, _, _ in outputs:
        per_name[name] = per_name.get(name, 0) + 1
    seen = {}
    tags = []
    for _, name, _, _ in outputs:
        if per_name[name] == 1:
            tags.append("%s/%s" % (prefix, name))
        else:
            k = seen.get(name, 0)
            seen[name] = k + 1
            tags.append("%s/%s/%d" % (prefix, name, k))
    return tags


class TensorBoardListener(SolverListener):
    """Writes the scalars listed in the module doc to ``logdir`` with tensorboardX.

    ``norms_every``: the interval of the per-param norms and iterations/s (default: the
    solver's ``display``, or 1 without one).  ``flush_secs`` as tensorboardX's."""

    def __init__(self, logdir, norms_every=None, flush_secs=10):
        self.logdir = os.fspath(logdir)
        self.norms_every = norms_every
        self._writer_class = _summary_writer()
        self.flush_secs = flush_secs
        self.writer = None
        self._tags = None
        self._param_tags = None

    def on_start(self, solver):
        if self.writer is None:
            self.writer = self._writer_class(logdir=self.logdir, flush_secs=self.flush_secs)
        every = self.norms_every
        if every is None:
            every = solver.param.display or 1
        self._every = max(int(every), 1)
        self._param_tags = ["%s/%d" % (name, blob_index)
                            for _, name, blob_index, _ in solver.net.learnable_param_info()]
        self._last_time = time.perf_counter()
        self._last_iter = solver.iter

    def _scalar(self, tag, value, step):
        self.writer.add_scalar(tag, float(value), int(step))

    def on_gradients(self, it):
        solver = self.solver
        w = self.writer
        self._scalar("grad/global_norm", math.sqrt(solver.gradient_sumsq), it)
        if it % self._every:
            return
        for tag, b in zip(self._param_tags, solver.net.learnable_params):
            w.add_scalar("weight_norm/" + tag, _l2(b.data), it)
            w.add_scalar("grad_norm/" + tag, _l2(b.diff), it)

    def on_iteration(self, it, smoothed_loss, outputs, lr):
        solver = self.solver
        self._scalar("loss/smoothed", smoothed_loss, it)
        self._scalar("loss/raw", solver.iteration_loss, it)
        if self._tags is None or len(self._tags) != len(outputs):
            self._tags = output_tags("train", outputs)
        for tag, (_, _, value, _) in zip(self._tags, outputs):
            self._scalar(tag, value, it)
        self._scalar("lr", lr, it)
        if it % self._every == 0:
            now = time.perf_counter()
            done = solver.iter - self._last_iter
            if done > 0 and now > self._last_time:
                self._scalar("speed/iter_per_s", done / (now - self._last_time), it)
            self._last_time, self._last_iter = now, solver.iter

    def on_test(self, it, test_net_id, scores):
        prefix = "test%d" % test_net_id
        for tag, (_, _, value, _) in zip(output_tags(prefix, scores), scores):
            self._scalar(tag, value, it)

    def on_event(self, event, record):
        if self.writer is None:
            return
        if event == "test":
            if record.get("loss") is not None:
                self._scalar("test_loss/%d" % record["net"], record["loss"], record["iter"])
        elif event == "sparsity":
            it = record["iter"]
            for tag, st in zip(self._param_tags, record["stats"]):
                self._scalar("sparsity/%s/element" % tag, st.element, it)
                self._scalar("sparsity/%s/column" % tag, st.column, it)
                self._scalar("sparsity/%s/row" % tag, st.row, it)
        elif event == "regularization":
            self._scalar("regularization/total", record["total"], record["iter"])
        elif event == "final_loss":
            self._scalar("loss/final", record["loss"], record["iter"])
        elif event == "divergence":
            self.writer.add_text("divergence", record["message"], record["iter"])
        super().on_event(event, record)

    def on_snapshot(self, it, model_file, state_file):
        self.writer.flush()

    def on_end(self, solver):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def close(self):
        self.on_end(self.solver)


# -- reading event files back ---------------------------------------------------------------

def _records(path):
    """The records of a TFRecord file (length, masked CRC, data, masked CRC); the CRCs are not
    checked."""
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if len(head) < 12:
                return
            (length,) = struct.unpack("<Q", head[:8])
            data = f.read(length)
            f.read(4)
            if len(data) < length:
                return
            yield data


def read_scalars(logdir):
    """{tag: [(step, value), ...]} of every scalar in the event files under ``logdir`` (in
    file, then write order)."""
    try:
        from tensorboardX.proto import event_pb2
    except ImportError:
        raise CaffepyError(INSTALL_HINT) from None
    out = {}
    files = sorted(glob.glob(os.path.join(os.fspath(logdir), "**", "events.out.tfevents.*"),
                             recursive=True))
    for path in files:
        for data in _records(path):
            ev = event_pb2.Event.FromString(data)
            if not ev.HasField("summary"):
                continue
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append((int(ev.step), float(v.simple_value)))
    return out
