"""The training loop, exactly as Caffe's Solver / SGDSolver run it.

``get_solver("solver.prototxt")`` builds the solver class named by the file's ``type``
(the deprecated ``solver_type`` enum is upgraded); ``SGDSolver(path)``, ``AdamSolver(path)``
and friends force the class.  Both accept a path or a ``caffe_pb2.SolverParameter``.

The pycaffe names are kept: ``net``, ``test_nets``, ``iter``, ``step(n)``,
``solve(resume_file=None)``, ``restore(path)``, ``snapshot()``,
``add_callback(on_start, on_gradients_ready)``, ``param`` (a copy), ``share_weights(net)``.

Order of operations (see the Caffe semantics reference, section 2):

* construction: random seed -> train net (+ ``weights``) -> test nets (+ ``weights``) ->
  history blobs;
* ``step``: clear param diffs -> test (every ``test_interval``) -> on_start callbacks ->
  ``iter_size`` forward/backward passes -> smoothed loss, display -> on_gradients_ready
  callbacks -> ``apply_update`` -> ``iter += 1`` -> snapshot / signal requests;
* ``apply_update``: learning rate -> clip gradients (global L2 norm) -> per param:
  1/iter_size normalisation -> weight decay -> regularizer chain -> update rule ->
  ``net.update()``.

Displayed numbers also go to listeners (``add_listener(fn)``; ``fn(event, record)``) so
tools and tests can read them without parsing the log.
"""
import logging
import os
import signal
import threading
import time

import numpy as np
from google.protobuf import text_format

from . import backend
from .atomic import atomic_path
from .lr_policies import SolverError, check_lr_policy, get_learning_rate
from .net import Net
from .proto import caffe_pb2
from .proto import blobproto_to_array, read_binary, set_blobproto, write_binary
from .regularizers import (Regularizer, RegularizeContext, apply_weight_decay,  # noqa: F401
                           create_regularizer, register_regularizer)
from .updaters import (AdaDeltaRule, AdaGradRule, AdamRule, NesterovRule, RMSPropRule,
                       SGDRule)

log = logging.getLogger("caffepy")

f32 = np.float32

__all__ = ["Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
           "AdaDeltaSolver", "AdamSolver", "get_solver", "register_solver", "SolverError",
           "SolverAction", "read_solver_file", "Regularizer", "register_regularizer"]


class SolverAction:
    """What a signal (or a custom action function) asks the solver to do."""
    NONE = "none"
    STOP = "stop"
    SNAPSHOT = "snapshot"

    ALL = (NONE, STOP, SNAPSHOT)


def _check_effect(value, what):
    v = str(value).lower()
    if v not in SolverAction.ALL:
        raise SolverError("Invalid %s '%s': it must be one of stop, snapshot, none"
                          % (what, value))
    return v


class _SignalHandler:
    """Caffe's SignalHandler: SIGINT/SIGHUP set flags that the solver polls.

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
        if self.got_sigint:
            self.got_sigint = False
            return self.sigint_effect
        if self.got_sighup:
            self.got_sighup = False
            return self.sighup_effect
        return SolverAction.NONE


# -- reading the solver prototxt ---------------------------------------------------------

def read_solver_file(path):
    """ReadSolverParamsFromTextFileOrDie (BVLC master): text + ``solver_type`` upgrade +
    the snapshot_prefix rule (unset -> the solver file's name without extension; an
    existing directory -> ``<dir>/<solver file stem>``)."""
    from .proto import upgrade
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SolverError("Solver definition file '%s' does not exist (the path is relative "
                          "to the current directory %s)" % (path, os.getcwd()))
    param = upgrade.read_solver_param(path)
    if not param.HasField("snapshot_prefix"):
        param.snapshot_prefix = os.path.splitext(path)[0]
        log.info("snapshot_prefix was not specified and is set to %s", param.snapshot_prefix)
    elif os.path.isdir(param.snapshot_prefix):
        stem = os.path.splitext(os.path.basename(path))[0]
        param.snapshot_prefix = os.path.join(param.snapshot_prefix, stem)
        log.info("snapshot_prefix was a directory and is replaced to %s",
                 param.snapshot_prefix)
    return param


def _solver_param(source):
    if isinstance(source, caffe_pb2.SolverParameter):
        from .proto import upgrade
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(source)
        upgrade.upgrade_solver_as_needed(param, "<SolverParameter>")
        return param
    if isinstance(source, (str, os.PathLike)):
        return read_solver_file(source)
    raise SolverError("A solver is built from a solver prototxt path or a "
                      "caffe_pb2.SolverParameter, not %r" % type(source).__name__)


def _read_net_file(path, what):
    from .proto import upgrade
    if not os.path.isfile(path):
        raise SolverError("Cannot read the %s '%s': no such file (paths in the solver are "
                          "relative to the current directory, %s)" % (what, path, os.getcwd()))
    return upgrade.read_net_param(path)


def _load_net_weights(net, model_list):
    """LoadNetWeights: a comma-separated list of caffemodels, copied in order."""
    for name in model_list.split(","):
        log.info("Finetuning from %s", name)
        net.copy_trained_layers_from(name)


# -- the solver ----------------------------------------------------------------------------

_SOLVERS = {}


def register_solver(type_name, cls=None):
    """Register a Solver subclass under a ``type`` name (usable as a decorator)."""
    def deco(c):
        _SOLVERS[type_name] = c
        c.type_name = type_name
        return c
    return deco(cls) if cls is not None else deco


def solver_type_list():
    return sorted(_SOLVERS)


class Solver:
    """Caffe's Solver + SGDSolver.  Subclasses choose the update rule (``rule_class``).

    ``Solver(path_or_param, sigint_effect="stop", sighup_effect="snapshot")``.
    ``sigint_effect``/``sighup_effect`` (stop | snapshot | none, as ``caffe train``'s
    flags) say what SIGINT / SIGHUP do while ``solve()`` runs.
    """
    type_name = None
    rule_class = None

    def __init__(self, source, sigint_effect=SolverAction.STOP,
                 sighup_effect=SolverAction.SNAPSHOT):
        if self.rule_class is None:
            raise SolverError("Solver is an abstract base; use get_solver(path) or one of "
                              "SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, "
                              "AdaDeltaSolver, AdamSolver")
        param = _solver_param(source)
        self.sigint_effect = _check_effect(sigint_effect, "sigint_effect")
        self.sighup_effect = _check_effect(sighup_effect, "sighup_effect")
        self._callbacks = []
        self._listeners = []
        self._regularizers = []
        self._action_function = None
        self.requested_early_exit = False
        self._init(param)

    # -- construction --------------------------------------------------------------
    def _init(self, param):
        log.info("Initializing solver from parameters: \n%s", text_format.MessageToString(param))
        self._param = param
        if param.average_loss < 1:
            raise SolverError("average_loss should be non-negative (>= 1; got %d)"
                              % param.average_loss)
        if param.iter_size < 1:
            raise SolverError("iter_size must be at least 1 (got %d)" % param.iter_size)
        check_lr_policy(param)
        self.rule = self.rule_class(param)       # AdaGrad/RMSProp sanity checks
        self.iter = 0
        self.current_step = 0
        self._check_snapshot_write_permissions()
        if param.random_seed >= 0:
            backend.set_random_seed(param.random_seed)
        self._init_train_net()
        self._init_test_nets()
        log.info("Solver scaffolding done.")
        self.iter = 0
        self.current_step = 0
        self.losses = []
        self.smoothed_loss = f32(0)
        self.learning_rate = 0.0
        self._iterations_last = 0
        self._timer = time.perf_counter()
        self._check_regularization_type()
        self._pre_solve()

    def _init_train_net(self):
        p = self._param
        fields = "net, net_param, train_net, train_net_param"
        n = (p.HasField("net") + p.HasField("net_param") + p.HasField("train_net")
             + p.HasField("train_net_param"))
        if n < 1:
            raise SolverError("SolverParameter must specify a train net using one of these "
                              "fields: " + fields)
        if n > 1:
            raise SolverError("SolverParameter must not contain more than one of these fields "
                              "specifying a train_net: " + fields)
        net_param = caffe_pb2.NetParameter()
        if p.HasField("train_net_param"):
            log.info("Creating training net specified in train_net_param.")
            net_param.CopyFrom(p.train_net_param)
            self._upgrade_net(net_param, "train_net_param")
        elif p.HasField("train_net"):
            log.info("Creating training net from train_net file: %s", p.train_net)
            net_param = _read_net_file(p.train_net, "train_net file")
        if p.HasField("net_param"):
            log.info("Creating training net specified in net_param.")
            net_param.CopyFrom(p.net_param)
            self._upgrade_net(net_param, "net_param")
        if p.HasField("net"):
            log.info("Creating training net from net file: %s", p.net)
            net_param = _read_net_file(p.net, "net file")
        state = caffe_pb2.NetState()
        state.phase = caffe_pb2.TRAIN
        state.MergeFrom(net_param.state)
        state.MergeFrom(p.train_state)
        net_param.state.CopyFrom(state)
        self.net = Net(net_param)
        for w in p.weights:
            _load_net_weights(self.net, w)

    @staticmethod
    def _upgrade_net(net_param, source):
        from .proto import upgrade
        upgrade.upgrade_net_as_needed(net_param, source)

    def _init_test_nets(self):
        p = self._param
        has_net_param = p.HasField("net_param")
        has_net_file = p.HasField("net")
        num_generic = has_net_param + has_net_file
        if num_generic > 1:
            raise SolverError("Both net_param and net_file may not be specified.")
        num_test_net_params = len(p.test_net_param)
        num_test_net_files = len(p.test_net)
        num_test_nets = num_test_net_params + num_test_net_files
        if num_generic:
            if len(p.test_iter) < num_test_nets:
                raise SolverError("test_iter must be specified for each test network (%d "
                                  "test_iter for %d test_net/test_net_param)"
                                  % (len(p.test_iter), num_test_nets))
        elif len(p.test_iter) != num_test_nets:
            raise SolverError("test_iter must be specified for each test network (%d test_iter "
                              "for %d test_net/test_net_param)" % (len(p.test_iter), num_test_nets))
        num_generic_instances = len(p.test_iter) - num_test_nets
        num_instances = num_test_nets + num_generic_instances
        if len(p.test_state) and len(p.test_state) != num_instances:
            raise SolverError("test_state must be unspecified or specified once per test net "
                              "(%d test_state for %d test nets)" % (len(p.test_state),
                                                                   num_instances))
        if num_instances and p.test_interval <= 0:
            raise SolverError("test_interval must be > 0 when there are test nets (%d test "
                              "net(s), test_interval %d)" % (num_instances, p.test_interval))
        sources, params = [], []
        for i in range(num_test_net_params):
            np_ = caffe_pb2.NetParameter()
            np_.CopyFrom(p.test_net_param[i])
            self._upgrade_net(np_, "test_net_param")
            sources.append("test_net_param")
            params.append(np_)
        for i in range(num_test_net_files):
            sources.append("test_net file: " + p.test_net[i])
            params.append(_read_net_file(p.test_net[i], "test_net file"))
        remaining = len(p.test_iter) - len(params)
        if has_net_param:
            for i in range(remaining):
                np_ = caffe_pb2.NetParameter()
                np_.CopyFrom(p.net_param)
                self._upgrade_net(np_, "net_param")
                sources.append("net_param")
                params.append(np_)
        if has_net_file:
            for i in range(remaining):
                sources.append("net file: " + p.net)
                params.append(_read_net_file(p.net, "net file"))
        self.test_nets = []
        for i, net_param in enumerate(params):
            state = caffe_pb2.NetState()
            state.phase = caffe_pb2.TEST
            state.MergeFrom(net_param.state)
            if len(p.test_state):
                state.MergeFrom(p.test_state[i])
            net_param.state.CopyFrom(state)
            log.info("Creating test net (#%d) specified by %s", i, sources[i])
            net = Net(net_param)
            net.debug_info = p.debug_info
            for w in p.weights:
                _load_net_weights(net, w)
            self.test_nets.append(net)
        self.mean_scores = [[] for _ in self.test_nets]

    def _pre_solve(self):
        """SGDSolver::PreSolve (+ AdaDelta/Adam's second history half)."""
        xp = backend.xp()
        params = self.net.learnable_params
        self.history = [xp.zeros(p.shape, dtype=xp.float32) for p in params]
        for _ in range(self.rule.history_blobs - 1):
            self.history += [xp.zeros(p.shape, dtype=xp.float32) for p in params]
        self._scratch = [dict() for _ in params]

    def _check_regularization_type(self):
        p = self._param
        if p.regularization_type in ("L2", "L1"):
            return
        decays = [f32(f32(p.weight_decay) * f32(d)) for d in self.net.params_weight_decay]
        if any(decays):
            raise SolverError("Unknown regularization type: '%s' (regularization_type must be "
                              "\"L2\" or \"L1\")" % p.regularization_type)

    def _check_snapshot_write_permissions(self):
        p = self._param
        if p.snapshot:
            if not p.HasField("snapshot_prefix"):
                raise SolverError("In solver params, snapshot is specified but snapshot_prefix "
                                  "is not")
            self._probe_snapshot_prefix()

    def _probe_snapshot_prefix(self):
        probe = self._snapshot_filename(".tempfile")
        try:
            with open(probe, "wb"):
                pass
            os.remove(probe)
        except OSError as e:
            raise SolverError("Cannot write to snapshot prefix '%s' (%s). Make sure that the "
                              "directory exists and is writeable."
                              % (self._param.snapshot_prefix, e.strerror or e)) from None

    # -- pycaffe-style API ----------------------------------------------------------
    @property
    def param(self):
        """A copy of the SolverParameter (editing it changes nothing)."""
        c = caffe_pb2.SolverParameter()
        c.CopyFrom(self._param)
        return c

    def share_weights(self, net):
        """pycaffe: make ``net`` share the train net's trained layers."""
        net.share_trained_layers_with(self.net)

    def add_callback(self, on_start, on_gradients_ready=None):
        """pycaffe's add_callback(on_start, on_gradients_ready); an object with
        ``on_start()`` / ``on_gradients_ready()`` methods (Caffe's Callback) works too."""
        if on_gradients_ready is None and not callable(on_start):
            obj = on_start
            on_start = getattr(obj, "on_start", None)
            on_gradients_ready = getattr(obj, "on_gradients_ready", None)
        self._callbacks.append((on_start, on_gradients_ready))

    def add_listener(self, fn):
        """``fn(event, record)`` for every displayed number.  Events: "train" (iter, loss,
        outputs = [(index, name, value, loss_weight)]), "lr" (iter, lr), "test" (iter,
        net, loss or None, scores = [(index, name, value, loss_weight)]), "final_loss"
        (iter, loss), "clip" (iter, norm, clip, scale), "snapshot" (iter, model, state)."""
        self._listeners.append(fn)
        return fn

    def remove_listener(self, fn):
        self._listeners.remove(fn)

    def _emit(self, event, **record):
        for fn in self._listeners:
            fn(event, record)

    def add_regularizer(self, regularizer, *args, **kwargs):
        """Append a Regularizer (an instance, or a registered name plus its arguments)
        to the chain run after weight decay on every learnable param."""
        if isinstance(regularizer, str):
            regularizer = create_regularizer(regularizer, *args, **kwargs)
        elif args or kwargs:
            raise TypeError("arguments are only taken with a regularizer name")
        if not callable(getattr(regularizer, "regularize", None)):
            raise SolverError("%r is not a Regularizer (it needs a regularize(param_id, blob, "
                              "ctx) method)" % (regularizer,))
        self._regularizers.append(regularizer)
        return regularizer

    def remove_regularizer(self, regularizer):
        self._regularizers.remove(regularizer)

    @property
    def regularizers(self):
        return list(self._regularizers)

    def set_action_function(self, fn):
        """Caffe's SetActionFunction: ``fn() -> "none" | "stop" | "snapshot"``, polled
        every iteration (and by every test iteration).  None restores the default."""
        self._action_function = fn

    def _requested_action(self):
        fn = self._action_function
        if fn is None:
            return SolverAction.NONE
        a = fn()
        if a is None:
            return SolverAction.NONE
        return _check_effect(a, "requested action")

    # -- training ----------------------------------------------------------------
    def step(self, iters):
        p = self._param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        average_loss = p.average_loss
        self.losses = []
        self.learning_rate = 0.0
        self.smoothed_loss = f32(0)
        self._timer = time.perf_counter()
        net = self.net
        while self.iter < stop_iter:
            net.clear_param_diffs()
            if (p.test_interval and self.iter % p.test_interval == 0
                    and (self.iter > 0 or p.test_initialization)):
                self.test_all()
                if self.requested_early_exit:
                    break
            for on_start, _ in self._callbacks:
                if on_start is not None:
                    on_start()
            display = bool(p.display) and self.iter % p.display == 0
            net.debug_info = display and p.debug_info
            loss = f32(0)
            for _ in range(p.iter_size):
                loss = f32(loss + f32(net.forward_backward()))
            loss = f32(loss / f32(p.iter_size))
            self._update_smoothed_loss(loss, start_iter, average_loss)
            if display:
                self._display(p)
            for _, on_gradients_ready in self._callbacks:
                if on_gradients_ready is not None:
                    on_gradients_ready()
            self.apply_update()
            self.iter += 1
            request = self._requested_action()
            if (p.snapshot and self.iter % p.snapshot == 0) or request == SolverAction.SNAPSHOT:
                self.snapshot()
            if request == SolverAction.STOP:
                self.requested_early_exit = True
                break

    def _display(self, p):
        now = time.perf_counter()
        lapse = now - self._timer
        per_s = (self.iter - self._iterations_last) / (lapse if lapse else 1)
        log.info("Iteration %d (%g iter/s, %gs/%d iters), loss = %g", self.iter, per_s, lapse,
                 p.display, self.smoothed_loss)
        self._timer = now
        self._iterations_last = self.iter
        outputs = []
        score_index = 0
        net = self.net
        for j, blob in enumerate(net.output_blobs):
            bid = net.output_blob_indices[j]
            name = net.blob_names[bid]
            w = f32(net.blob_loss_weights[bid])
            vals = backend.to_numpy(blob.data).ravel()
            for k in range(vals.size):
                v = f32(vals[k])
                if w:
                    log.info("    Train net output #%d: %s = %g (* %g = %g loss)", score_index,
                             name, v, w, f32(w * v))
                else:
                    log.info("    Train net output #%d: %s = %g", score_index, name, v)
                outputs.append((score_index, name, float(v), float(w)))
                score_index += 1
        self._emit("train", iter=self.iter, loss=float(self.smoothed_loss), outputs=outputs)

    def _update_smoothed_loss(self, loss, start_iter, average_loss):
        loss = f32(loss)
        if len(self.losses) < average_loss:
            self.losses.append(loss)
            size = len(self.losses)
            self.smoothed_loss = f32(f32(f32(self.smoothed_loss * f32(size - 1)) + loss)
                                     / f32(size))
        else:
            idx = (self.iter - start_iter) % average_loss
            self.smoothed_loss = f32(self.smoothed_loss
                                     + f32(f32(loss - self.losses[idx]) / f32(average_loss)))
            self.losses[idx] = loss

    def solve(self, resume_file=None):
        p = self._param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        handler = _SignalHandler(self.sigint_effect, self.sighup_effect)
        own_action = self._action_function is None
        if own_action:
            self._action_function = handler.get_action
        try:
            with handler:
                if resume_file:
                    log.info("Restoring previous solver status from %s", resume_file)
                    self.restore(resume_file)
                start_iter = self.iter
                self.step(p.max_iter - self.iter)
                if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
                    self.snapshot()
                if self.requested_early_exit:
                    log.info("Optimization stopped early.")
                    return
                if p.display and self.iter % p.display == 0:
                    loss = f32(self.net.forward_prefilled())
                    self._update_smoothed_loss(loss, start_iter, p.average_loss)
                    log.info("Iteration %d, loss = %g", self.iter, self.smoothed_loss)
                    self._emit("final_loss", iter=self.iter, loss=float(self.smoothed_loss))
                if p.test_interval and self.iter % p.test_interval == 0:
                    self.test_all()
                log.info("Optimization Done.")
        finally:
            if own_action:
                self._action_function = None

    # -- testing ---------------------------------------------------------------------
    def test_all(self):
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, test_net_id=0):
        p = self._param
        log.info("Iteration %d, Testing net (#%d)", self.iter, test_net_id)
        test_net = self.test_nets[test_net_id]
        test_net.share_trained_layers_with(self.net)
        test_iter = p.test_iter[test_net_id]
        scores = None
        output_ids = []
        loss = f32(0)
        for i in range(test_iter):
            request = self._requested_action()
            while request != SolverAction.NONE:
                if request == SolverAction.SNAPSHOT:
                    self.snapshot()
                elif request == SolverAction.STOP:
                    self.requested_early_exit = True
                request = self._requested_action()
            if self.requested_early_exit:
                break
            iter_loss = f32(test_net.forward_prefilled())
            if p.test_compute_loss:
                loss = f32(loss + iter_loss)
            vals = [backend.to_numpy(b.data).astype(np.float32).ravel()
                    for b in test_net.output_blobs]
            flat = np.concatenate(vals) if vals else np.zeros(0, np.float32)
            if scores is None:
                scores = flat.copy()
                output_ids = [j for j, v in enumerate(vals) for _ in range(v.size)]
            else:
                scores += flat
        if self.requested_early_exit:
            log.info("Test interrupted.")
            return
        test_loss = None
        if p.test_compute_loss:
            test_loss = f32(loss / f32(test_iter))
            log.info("Test loss: %g", test_loss)
        mean_scores = []
        records = []
        if scores is None:
            scores = np.zeros(0, np.float32)
        for i in range(scores.size):
            bid = test_net.output_blob_indices[output_ids[i]]
            name = test_net.blob_names[bid]
            w = f32(test_net.blob_loss_weights[bid])
            mean = f32(scores[i] / f32(test_iter))
            mean_scores.append(float(mean))
            if w:
                log.info("    Test net output #%d: %s = %g (* %g = %g loss)", i, name, mean, w,
                         f32(w * mean))
            else:
                log.info("    Test net output #%d: %s = %g", i, name, mean)
            records.append((i, name, float(mean), float(w)))
        self.mean_scores[test_net_id] = mean_scores
        self._emit("test", iter=self.iter, net=test_net_id,
                   loss=None if test_loss is None else float(test_loss), scores=records)

    # -- the update --------------------------------------------------------------------
    def get_learning_rate(self):
        rate, self.current_step = get_learning_rate(self._param, self.iter, self.current_step)
        return rate

    def apply_update(self):
        p = self._param
        rate = self.get_learning_rate()
        self.learning_rate = rate
        if p.display and self.iter % p.display == 0:
            log.info("Iteration %d, lr = %g", self.iter, rate)
            self._emit("lr", iter=self.iter, lr=rate)
        self.clip_gradients()
        for param_id in range(len(self.net.learnable_params)):
            self.normalize(param_id)
            self.regularize(param_id, rate)
            self.compute_update_value(param_id, rate)
        self.net.update()
        for r in self._regularizers:
            hook = getattr(r, "after_update", None)
            if hook is not None:
                hook(self)

    def clip_gradients(self):
        clip = f32(self._param.clip_gradients)
        if clip < 0:
            return
        params = self.net.learnable_params
        sumsq = f32(0)
        for b in params:
            sumsq = f32(sumsq + f32(b.sumsq_diff()))
        l2norm = f32(np.sqrt(sumsq))
        if l2norm > clip:
            scale = f32(clip / l2norm)
            log.info("Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale "
                     "factor %g", l2norm, clip, scale)
            self._emit("clip", iter=self.iter, norm=float(l2norm), clip=float(clip),
                       scale=float(scale))
            for b in params:
                b.flat_diff[...] *= scale

    def normalize(self, param_id):
        n = self._param.iter_size
        if n == 1:
            return
        self.net.learnable_params[param_id].flat_diff[...] *= f32(f32(1) / f32(n))

    def regularize(self, param_id, rate=None):
        p = self._param
        net = self.net
        blob = net.learnable_params[param_id]
        decay_mult = net.params_weight_decay[param_id]
        local_decay = f32(f32(p.weight_decay) * f32(decay_mult))
        if local_decay:
            scratch = self._scratch[param_id]
            temp = None
            if p.regularization_type == "L1":
                temp = scratch.get("temp")
                if temp is None or temp.shape != blob.flat_data.shape:
                    temp = backend.xp().zeros(blob.count, dtype=np.float32)
                    scratch["temp"] = temp
            apply_weight_decay(p.regularization_type, local_decay, blob.flat_data,
                               blob.flat_diff, temp)
        if self._regularizers:
            rate = self.learning_rate if rate is None else rate
            lr_mult = net.params_lr[param_id]
            layer_name, param_index = self._param_location(param_id)
            ctx = RegularizeContext(
                solver=self, net=net, param_id=param_id, layer_name=layer_name,
                param_index=param_index, rate=rate, lr_mult=lr_mult, decay_mult=decay_mult,
                local_rate=float(f32(f32(rate) * f32(lr_mult))), local_decay=float(local_decay),
                iter=self.iter, param=p, xp=backend.xp())
            for r in self._regularizers:
                r.regularize(param_id, blob, ctx)

    def _param_location(self, param_id):
        """(layer name, blob index) of learnable param ``param_id`` (its owner)."""
        cache = getattr(self, "_param_loc_cache", None)
        if cache is None:
            cache = {}
            net = self.net
            blobs = net.learnable_params
            for li, layer in enumerate(net.layers):
                for j, b in enumerate(layer.blobs):
                    for k, lb in enumerate(blobs):
                        if lb is b and k not in cache:
                            cache[k] = (net.layer_names[li], j)
            self._param_loc_cache = cache
        return cache.get(param_id, (None, None))

    def compute_update_value(self, param_id, rate):
        net = self.net
        blob = net.learnable_params[param_id]
        local_rate = f32(f32(rate) * f32(net.params_lr[param_id]))
        n = len(net.learnable_params)
        hist = [self.history[param_id + k * n].reshape(-1)
                for k in range(self.rule.history_blobs)]
        self.rule.update(blob.flat_diff, hist, local_rate, self.iter, self._scratch[param_id])

    # -- snapshots -----------------------------------------------------------------------
    def _snapshot_filename(self, extension):
        return "%s_iter_%d%s" % (self._param.snapshot_prefix, self.iter, extension)

    def snapshot(self):
        """Write the model, then the solver state; returns (model file, state file)."""
        p = self._param
        try:
            if p.snapshot_format == caffe_pb2.SolverParameter.HDF5:
                model_filename = self._snapshot_filename(".caffemodel.h5")
                log.info("Snapshotting to HDF5 file %s", model_filename)
                self.net.save_hdf5(model_filename, p.snapshot_diff)
                state_filename = self._snapshot_filename(".solverstate.h5")
                log.info("Snapshotting solver state to HDF5 file %s", state_filename)
                self._write_state_hdf5(state_filename, model_filename)
            else:
                model_filename = self._snapshot_filename(".caffemodel")
                log.info("Snapshotting to binary proto file %s", model_filename)
                self.net.save(model_filename, p.snapshot_diff)
                state_filename = self._snapshot_filename(".solverstate")
                log.info("Snapshotting solver state to binary proto file %s", state_filename)
                write_binary(self.solver_state(model_filename), state_filename)
        except OSError as e:
            raise SolverError("Cannot write snapshot '%s': %s. Make sure that the directory "
                              "of snapshot_prefix '%s' exists and is writeable."
                              % (getattr(e, "filename", None) or self._snapshot_filename(""),
                                 e.strerror or e, p.snapshot_prefix)) from None
        self._emit("snapshot", iter=self.iter, model=model_filename, state=state_filename)
        return model_filename, state_filename

    def solver_state(self, model_filename=""):
        """The SolverState message Caffe writes (iter, learned_net, current_step, history)."""
        state = caffe_pb2.SolverState()
        state.iter = self.iter
        state.learned_net = model_filename
        state.current_step = self.current_step
        for h in self.history:
            set_blobproto(state.history.add(), backend.to_numpy(h))
        return state

    def _write_state_hdf5(self, path, model_filename):
        import h5py
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("iter", data=np.array([self.iter], dtype=np.int32))
            _h5_save_string(f, "learned_net", model_filename)
            f.create_dataset("current_step", data=np.array([self.current_step],
                                                           dtype=np.int32))
            g = f.create_group("history")
            for i, h in enumerate(self.history):
                g.create_dataset(str(i), data=backend.to_numpy(h).astype(np.float32))

    def restore(self, state_file):
        """Restore iter, current_step, history and the learned_net weights (binary or .h5)."""
        state_file = os.fspath(state_file)
        if not os.path.isfile(state_file):
            raise SolverError("Cannot restore: solver state file '%s' does not exist"
                              % state_file)
        h5 = state_file.endswith(".h5")
        if h5:
            it, learned_net, current_step, history = self._read_state_hdf5(state_file)
        else:
            state = read_binary(state_file, caffe_pb2.SolverState())
            it = state.iter
            learned_net = state.learned_net if state.HasField("learned_net") else None
            current_step = state.current_step
            history = [blobproto_to_array(bp) for bp in state.history]
        self.iter = int(it)
        if learned_net:
            if not os.path.exists(learned_net):
                raise SolverError("Cannot restore from '%s': its learned_net '%s' does not exist "
                                  "(the path is relative to the current directory %s)"
                                  % (state_file, learned_net, os.getcwd()))
            self.net.copy_trained_layers_from(learned_net)
        self.current_step = int(current_step)
        if len(history) != len(self.history):
            raise SolverError("Incorrect length of history blobs: '%s' holds %d, the %s solver "
                              "needs %d" % (state_file, len(history), self.type_name,
                                            len(self.history)))
        log.info("%s: restoring history", type(self).__name__)
        xp = backend.xp()
        for i, arr in enumerate(history):
            arr = np.asarray(arr, dtype=np.float32)
            if h5 and tuple(arr.shape) != tuple(self.history[i].shape):
                # hdf5_load_nd_dataset(..., reshape=false) CHECKs the exact shape.
                raise SolverError("Cannot restore history blob %d from '%s': shape mismatch "
                                  "(source shape %s, target shape %s)"
                                  % (i, state_file, arr.shape, tuple(self.history[i].shape)))
            if arr.size != self.history[i].size:
                raise SolverError("Cannot restore history blob %d from '%s': it has %d values, "
                                  "the parameter has %d" % (i, state_file, arr.size,
                                                            self.history[i].size))
            self.history[i] = xp.asarray(arr.reshape(self.history[i].shape)).copy()

    @staticmethod
    def _read_state_hdf5(path):
        import h5py
        try:
            with h5py.File(path, "r") as f:
                it = int(np.asarray(f["iter"]).ravel()[0])
                learned_net = None
                if "learned_net" in f:
                    v = f["learned_net"][()]
                    if isinstance(v, np.ndarray):
                        v = v.ravel()[0]
                    if isinstance(v, bytes):
                        v = v.decode("utf-8")
                    learned_net = str(v).rstrip("\0")
                current_step = int(np.asarray(f["current_step"]).ravel()[0]) \
                    if "current_step" in f else 0
                g = f["history"]
                history = [np.asarray(g[str(i)], dtype=np.float32) for i in range(len(g))]
        except (OSError, KeyError) as e:
            raise SolverError("Cannot read solver state '%s': %s" % (path, e)) from None
        return it, learned_net, current_step, history


def _h5_save_string(f, name, s):
    """Caffe's hdf5_save_string (H5LTmake_dataset_string): a scalar dataset of a fixed-length
    NUL-terminated string whose size counts the terminator, which hdf5_load_string needs."""
    import h5py
    raw = s.encode("utf-8") + b"\0"
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(raw))
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    dset = h5py.h5d.create(f.id, name.encode("utf-8"), tid, space)
    dset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw, dtype="S%d" % len(raw)), mtype=tid)


@register_solver("SGD")
class SGDSolver(Solver):
    rule_class = SGDRule


@register_solver("Nesterov")
class NesterovSolver(Solver):
    rule_class = NesterovRule


@register_solver("AdaGrad")
class AdaGradSolver(Solver):
    rule_class = AdaGradRule


@register_solver("RMSProp")
class RMSPropSolver(Solver):
    rule_class = RMSPropRule


@register_solver("AdaDelta")
class AdaDeltaSolver(Solver):
    rule_class = AdaDeltaRule


@register_solver("Adam")
class AdamSolver(Solver):
    rule_class = AdamRule


def get_solver(source, **kwargs):
    """The solver class named by the file's ``type`` (default "SGD"), built from a path or
    a SolverParameter.  Keyword arguments go to the solver (sigint_effect, sighup_effect)."""
    param = _solver_param(source)
    cls = _SOLVERS.get(param.type)
    if cls is None:
        raise SolverError("Unknown solver type: '%s' (known types: %s)"
                          % (param.type, ", ".join(solver_type_list())))
    return cls(param, **kwargs)

