"""class Solver: Caffe's training loop (Solver + SGDSolver), top to bottom.

::

    solve(resume_file)                       restore -> step(max_iter - iter) -> final test
      step(iters), each iteration:
        net.clear_param_diffs()
        test_all()                           every test_interval
        loss = sum of iter_size net.forward_backward(); loss /= iter_size
        update_smoothed_loss(loss)           display every `display` iterations
        apply_update()
          get_learning_rate()                lr_policies.py
          clip_gradients()                   global L2 norm
          per learnable param:
            normalize(param_id)              1/iter_size
            regularize(param_id)             weight decay, then the regularizer chain
                                             (SSL group lasso first, then the plug-ins)
            compute_update_value(param_id, rate)   the update rule (updaters.py)
          net.update()                       data -= diff (masked: connectivity_mode)
            (where the rule has a fused step, e.g. SGD on the CPU with numba: regularize, the
            rule and data -= diff run as one pass per param, the same bits)
          zerout()                           |w| < zerout_threshold -> 0 (when set)
        iter += 1; snapshot / signal requests (state.py, signals.py)

Structured sparsity (regularizers/): on display iterations, when a group decay is set, the
solver prototxt has ``regularizer { }`` blocks or ``display_sparsity: true``, the log also
shows the SSL fork's sparsity block after the lr line and its "Total regularization terms"
line after the update; a plain Caffe solver's log is Caffe's.

The update rule comes from the registry in updaters.py, chosen by ``SolverParameter.type``
(see factory.py for ``get_solver`` and the pycaffe classes ``SGDSolver`` ...).

The pycaffe names are kept: ``net``, ``test_nets``, ``iter``, ``step(n)``,
``solve(resume_file=None)``, ``restore(path)``, ``snapshot()``,
``add_callback(on_start, on_gradients_ready)``, ``param`` (live; ``base_lr`` settable),
``lr``, ``share_weights(net)``.
Displayed numbers also go to listeners (``add_listener(fn)``; ``fn(event, record)``) so
tools and tests can read them without parsing the log.
"""
from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple, Union

import numpy as np

from .. import backend
from ..blob import Blob
from ..distributed import root_solver
from ..errors import RegularizerError, SolverError
from ..monitor.divergence import check_on_nan, gradient_sumsq, handle_divergence
from ..net import Net
from ..proto.files import message_text
from ..regularizers import (RegularizeContext, WeightDecay, chain_state_dict,
                            create_regularizer, load_chain_state_dict, regularizers_penalty,
                            run_regularizers, solver_regularizers)
from ..regularizers.masks import zerout
from ..regularizers.sparsity import net_sparsity, regularization_message, sparsity_messages
from . import config, state
from .listeners import ListenerSet, is_listener_object
from .lr_policies import check_lr_policy, get_learning_rate
from .param import SolverParameterView
from .signals import SignalHandler, SolverAction, check_action
from .updaters import get_update_rule

if TYPE_CHECKING:
    import os

    from ..proto import caffe_pb2

log = logging.getLogger("caffepy")

f32 = np.float32


class Solver:
    """Caffe's Solver + SGDSolver with the update rule named by ``type_name`` (or given as
    ``rule_class``); see factory.py for the classes that set them.

    ``Solver(path_or_param, sigint_effect="stop", sighup_effect="snapshot")``.
    ``sigint_effect``/``sighup_effect`` (stop | snapshot | none, as ``caffe train``'s
    flags) say what SIGINT / SIGHUP do while ``solve()`` runs.
    """
    type_name = None
    rule_class = None
    net: Net                    # the train net
    test_nets: List[Net]        # the test nets, in the order of the solver file
    iter: int                   # Caffe's iter_: the number of updates done

    def __init__(self, source: Union[str, "os.PathLike[str]", "caffe_pb2.SolverParameter"],
                 sigint_effect: str = SolverAction.STOP,
                 sighup_effect: str = SolverAction.SNAPSHOT):
        if self.rule_class is None and self.type_name is None:
            raise SolverError("Solver is an abstract base; use get_solver(path) or one of "
                              "SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, "
                              "AdaDeltaSolver, AdamSolver")
        rule_class = self.rule_class or get_update_rule(self.type_name)
        param = config.solver_param(source)
        self.sigint_effect = check_action(sigint_effect, "sigint_effect")
        self.sighup_effect = check_action(sighup_effect, "sighup_effect")
        self._callbacks = []
        self._listeners = []
        self._monitors = ListenerSet()      # listener objects (listeners.py)
        self._on_nan = "stop"
        self._last_divergence = -2
        self.gradient_sumsq = None          # this iteration's squared global gradient norm
        self._sumsq_iter = -1
        self.iteration_loss = None
        self._regularizers = []
        self._action_function = None
        self.requested_early_exit = False
        self.signal_handler = None          # the SignalHandler of the running solve()
        self._init(param, rule_class)

    # -- construction: Solver::Init ----------------------------------------------------
    def _init(self, param, rule_class):
        if log.isEnabledFor(logging.INFO):
            log.info("Initializing solver from parameters: \n%s", message_text(param))
        self._param = param
        if param.average_loss < 1:
            raise SolverError("average_loss should be non-negative (>= 1; got %d)"
                              % param.average_loss)
        if param.iter_size < 1:
            raise SolverError("iter_size must be at least 1 (got %d)" % param.iter_size)
        check_lr_policy(param)
        self.rule = rule_class(param)            # AdaGrad/RMSProp sanity checks
        self.iter = 0
        self.current_step = 0
        state.check_snapshot_prefix(param, self.iter)
        if param.random_seed >= 0:
            backend.set_random_seed(param.random_seed)
        self._init_train_net()
        self._init_test_nets()
        log.info("Solver scaffolding done.")
        self.losses = []
        self.smoothed_loss = f32(0)
        self.learning_rate = 0.0
        self._iterations_last = 0
        self._timer = time.perf_counter()
        self._check_regularization_type()
        self._pre_solve()
        self._init_regularization()

    def _init_train_net(self):
        self.net = Net(config.train_net_param(self._param))
        config.load_net_weights(self.net, self._param.weights)
        # which layer blob (and ParamSpec) each learnable param is, for the regularizers
        self._param_info = self.net.learnable_param_info()

    def _init_test_nets(self):
        p = self._param
        self.test_nets = []
        if not root_solver():       # data-parallel training: rank 0 tests (caffepy.distributed)
            self.mean_scores = []
            return
        for i, (source, net_param) in enumerate(config.test_net_params(p)):
            log.info("Creating test net (#%d) specified by %s", i, source)
            net = Net(net_param)
            net.debug_info = p.debug_info
            config.load_net_weights(net, p.weights)
            self.test_nets.append(net)
        self.mean_scores = [[] for _ in self.test_nets]

    def _check_regularization_type(self):
        p = self._param
        if p.regularization_type in ("L2", "L1"):
            return
        decays = [f32(f32(p.weight_decay) * f32(d)) for d in self.net.params_weight_decay]
        if any(decays):
            raise SolverError("Unknown regularization type: '%s' (regularization_type must be "
                              "\"L2\" or \"L1\")" % p.regularization_type)

    def _init_regularization(self):
        """Weight decay (with the ParamSpecs' regularization_type and decay_proto), the chain
        the solver prototxt configures (SSL group lasso, ``regularizer { }`` blocks), one
        RegularizeContext per learnable param, and what the display shows."""
        p = self._param
        net = self.net
        self._weight_decay = None
        if p.regularization_type in ("L2", "L1"):
            self._weight_decay = WeightDecay.from_solver_param(p)
            self._weight_decay.setup(net)
        self._regularizers = []
        for r in solver_regularizers(p):
            self.add_regularizer(r)
        xp = backend.xp()
        self._contexts = []
        for param_id, (layer_id, layer_name, blob_index, spec) in enumerate(self._param_info):
            layer = net.layers[layer_id]
            lp = layer.layer_param
            self._contexts.append(RegularizeContext(
                solver=self, net=net, param_id=param_id, layer=layer, layer_name=layer_name,
                layer_type=lp.type, blob_index=blob_index, param_spec=spec,
                conv_group=(lp.convolution_param.group
                            if lp.HasField("convolution_param") else 1),
                history=self._flat_history[param_id], lr_mult=net.params_lr[param_id],
                decay_mult=net.params_weight_decay[param_id],
                local_decay=float(f32(f32(p.weight_decay)
                                      * f32(net.params_weight_decay[param_id]))),
                param=p, xp=xp))
        # the SSL fork's sparsity block and total line: with group lasso, regularizer { }
        # blocks or display_sparsity; a plain Caffe solver's log stays Caffe's
        self._show_sparsity = bool(p.display_sparsity or p.breadth_decay or p.kernel_shape_decay
                                   or p.block_group_decay or len(p.regularizer))
        self.regularization_term = 0.0

    def _pre_solve(self):
        """SGDSolver::PreSolve: zeroed history blobs, ``rule.history_blobs`` per param (the
        second set of AdaDelta/Adam at ``history[N + param_id]``)."""
        xp = backend.xp()
        params = self.net.learnable_params
        n = len(params)
        self.history = [xp.zeros(p.shape, dtype=xp.float32)
                        for _ in range(self.rule.history_blobs) for p in params]
        # per param: its history blobs as flat views, and the rule's work buffers
        self._flat_history = [[self.history[param_id + k * n].reshape(-1)
                               for k in range(self.rule.history_blobs)]
                              for param_id in range(n)]
        self._scratch = [dict() for _ in params]

    # -- Solve -------------------------------------------------------------------------
    def solve(self, resume_file: Optional[str] = None) -> None:
        p = self._param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        handler = self.signal_handler = SignalHandler(self.sigint_effect, self.sighup_effect)
        own_action = self._action_function is None
        if own_action:
            self._action_function = handler.get_action
        try:
            with handler:
                if self._monitors:
                    self._monitors.start(self)
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
                    self.update_smoothed_loss(loss, start_iter, p.average_loss)
                    log.info("Iteration %d, loss = %g", self.iter, self.smoothed_loss)
                    self._emit("final_loss", iter=self.iter, loss=float(self.smoothed_loss))
                if p.test_interval and self.iter % p.test_interval == 0:
                    self.test_all()
                log.info("Optimization Done.")
        finally:
            if own_action:
                self._action_function = None
            if self._monitors:
                self._monitors.end(self)

    # -- Step ----------------------------------------------------------------------------
    def step(self, iters: int) -> None:
        p = self._param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        average_loss = p.average_loss
        self.losses = []
        self.learning_rate = 0.0
        self.smoothed_loss = f32(0)
        self._timer = time.perf_counter()
        net = self.net
        monitors = self._monitors
        if monitors:
            monitors.start(self)
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
            self.update_smoothed_loss(loss, start_iter, average_loss)
            if display:
                self._display()
            for _, on_gradients_ready in self._callbacks:
                if on_gradients_ready is not None:
                    on_gradients_ready()
            # the divergence guard (monitor/divergence.py): one finiteness test per iteration
            sumsq = self.gradient_sumsq = gradient_sumsq(net.learnable_params)
            self._sumsq_iter = self.iter
            if not (math.isfinite(loss) and math.isfinite(sumsq)):
                handle_divergence(self, loss, sumsq)
            if monitors.gradients:
                self.iteration_loss = float(loss)
                for fn in monitors.gradients:
                    fn(self.iter)
            self.apply_update()
            if display and (self._show_sparsity or self._regularizers):
                self._display_regularization()
            self.iter += 1
            if monitors.iteration:
                self._notify_iteration(loss)
            request = self._requested_action()
            if (p.snapshot and self.iter % p.snapshot == 0) or request == SolverAction.SNAPSHOT:
                self.snapshot()
            if request == SolverAction.STOP:
                self.requested_early_exit = True
                break

    def update_smoothed_loss(self, loss, start_iter, average_loss):
        """Caffe's UpdateSmoothedLoss: the mean of the last ``average_loss`` losses."""
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

    # -- ApplyUpdate ---------------------------------------------------------------------
    def apply_update(self) -> None:
        p = self._param
        rate = self.get_learning_rate()
        self.learning_rate = rate
        display = bool(p.display) and self.iter % p.display == 0
        if display:
            log.info("Iteration %d, lr = %g", self.iter, rate)
            self._emit("lr", iter=self.iter, lr=rate)
            if self._show_sparsity:
                self._display_sparsity()
        self.clip_gradients()
        for ctx in self._contexts:
            ctx.rate = rate
            ctx.iter = self.iter
            ctx.local_rate = float(f32(f32(rate) * f32(ctx.lr_mult)))
        if display and (self._show_sparsity or self._regularizers):
            self.regularization_term = self.regularization_penalty()
        fuse = self._may_fuse_update()
        done = set()
        for param_id in range(len(self.net.learnable_params)):
            self.normalize(param_id)
            if fuse and self._fused_step(param_id, rate):
                done.add(param_id)
                continue
            self.regularize(param_id)
            self.compute_update_value(param_id, rate)
        if not done:
            self.net.update()
        else:
            for param_id, blob in enumerate(self.net.learnable_params):
                if param_id not in done:
                    blob.update()
        if p.zerout_threshold > 0:
            self.zerout()
        for r in self._regularizers:
            hook = getattr(r, "after_update", None)
            if hook is not None:
                hook(self)

    def _may_fuse_update(self):
        """Whether this iteration's update may run fused (_fused_step): no regularizer chain
        beyond weight decay, and none of the steps replaced in a subclass."""
        return not (self._regularizers
                    or type(self).regularize is not Solver.regularize
                    or type(self).compute_update_value is not Solver.compute_update_value
                    or type(self.net).update is not Net.update)

    def _fused_step(self, param_id, rate):
        """regularize, compute_update_value and the param's data -= diff in one pass, where the
        update rule has one (UpdateRule.fused_step: the same operations in the same order, the
        same bits), for a param without a connectivity mask whose weight decay, if any, is
        plain L2. Returns False, doing nothing, otherwise."""
        blob = self.net.learnable_params[param_id]
        if blob.mask is not None or type(blob).update is not Blob.update:
            return False
        decay = f32(0)
        if self._weight_decay is not None:
            ctx = self._contexts[param_id]
            decay = self._weight_decay.local_decay(ctx)
            if decay and (self._weight_decay.param_type(ctx) != "L2"
                          or self._weight_decay.decay_multipliers(param_id, blob, ctx)
                          is not None):
                return False
        local_rate = f32(f32(rate) * f32(self.net.params_lr[param_id]))
        return self.rule.fused_step(blob.flat_data, blob.flat_diff, self._flat_history[param_id],
                                    decay, local_rate)

    def get_learning_rate(self) -> float:
        """This iteration's rate under ``lr_policy`` (advances ``current_step``)."""
        rate, self.current_step = get_learning_rate(self._param, self.iter, self.current_step)
        return rate

    def clip_gradients(self):
        """Scale all diffs down when their global L2 norm exceeds ``clip_gradients``."""
        clip = f32(self._param.clip_gradients)
        if clip < 0:
            return
        params = self.net.learnable_params
        if self._sumsq_iter == self.iter:
            sumsq = f32(self.gradient_sumsq)     # computed by step() for the guard
        else:
            sumsq = f32(gradient_sumsq(params))
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
        """Divide the accumulated diff by ``iter_size``."""
        n = self._param.iter_size
        if n == 1:
            return
        self.net.learnable_params[param_id].flat_diff[...] *= f32(f32(1) / f32(n))

    def regularize(self, param_id):
        """Caffe's weight decay (``weight_decay * decay_mult``, L2 or L1; a ParamSpec's
        ``regularization_type`` and ``decay_proto`` as the SSL fork), then each regularizer of
        the chain adds its penalty's gradient: the SSL group lasso (columns, rows, blocks)
        when the solver sets a group decay, then the plug-ins (``regularizer { }`` blocks and
        ``add_regularizer``), in order."""
        blob = self.net.learnable_params[param_id]
        ctx = self._contexts[param_id]
        if self._weight_decay is not None:
            self._weight_decay.regularize(param_id, blob, ctx)
        if self._regularizers:
            run_regularizers(self._regularizers, param_id, blob, ctx)

    def regularization_penalty(self):
        """The penalty of weight decay and of every regularizer on the current weights (the
        fork's "Total regularization terms")."""
        total = 0.0
        for param_id, blob in enumerate(self.net.learnable_params):
            ctx = self._contexts[param_id]
            if self._weight_decay is not None:
                total += self._weight_decay.penalty(param_id, blob, ctx)
            total += regularizers_penalty(self._regularizers, param_id, blob, ctx)
        return total

    def zerout(self):
        """Zero every learnable value with |w| < ``zerout_threshold`` (the SSL fork does
        this after every update with 1e-4)."""
        thr = self._param.zerout_threshold
        for param_id, blob in enumerate(self.net.learnable_params):
            scratch = self._scratch[param_id]
            bufs = scratch.get("zerout")
            if bufs is None or bufs[0].shape != blob.flat_data.shape:
                xp = backend.array_module(blob.flat_data)
                bufs = scratch["zerout"] = (xp.empty_like(blob.flat_data),
                                            xp.empty(blob.flat_data.shape, dtype=bool))
            zerout(blob.flat_data, thr, bufs)

    def compute_update_value(self, param_id, rate):
        """The update rule turns the diff into the step ``net.update()`` subtracts."""
        net = self.net
        local_rate = f32(f32(rate) * f32(net.params_lr[param_id]))
        self.rule.update(net.learnable_params[param_id].flat_diff, self._flat_history[param_id],
                         local_rate, self.iter, self._scratch[param_id])

    def _display_sparsity(self):
        """The SSL fork's sparsity block, on the weights before this update."""
        stats = net_sparsity(self.net)
        for message in sparsity_messages(stats):
            log.info(message)
        self._emit("sparsity", iter=self.iter, stats=stats)

    def _display_regularization(self):
        """The total penalty of this update's weights: logged with the sparsity block, and sent
        to listeners whenever a regularizer runs."""
        total = self.regularization_term
        if self._show_sparsity:
            log.info(regularization_message(total, self.smoothed_loss))
        self._emit("regularization", iter=self.iter, total=float(total),
                   loss=float(self.smoothed_loss))

    # -- TestAll / Test --------------------------------------------------------------------
    def test_all(self) -> None:
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, test_net_id: int = 0) -> None:
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
            for fn in self._monitors.test_iteration:
                fn(test_net_id, i + 1, test_iter)
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
        if scores is None:
            scores = np.zeros(0, np.float32)
        records = []
        for i in range(scores.size):
            bid = test_net.output_blob_indices[output_ids[i]]
            records.append((i, test_net.blob_names[bid], f32(scores[i] / f32(test_iter)),
                            f32(test_net._blob_loss_weights[bid])))
        self._log_outputs("Test", records)
        self.mean_scores[test_net_id] = [mean for _, _, mean, _ in records]
        self._emit("test", iter=self.iter, net=test_net_id,
                   loss=None if test_loss is None else float(test_loss), scores=records)

    # -- the displayed numbers ---------------------------------------------------------
    def _display(self):
        if not root_solver():
            return
        p = self._param
        now = time.perf_counter()
        lapse = now - self._timer
        per_s = (self.iter - self._iterations_last) / (lapse if lapse else 1)
        log.info("Iteration %d (%g iter/s, %gs/%d iters), loss = %g", self.iter, per_s, lapse,
                 p.display, self.smoothed_loss)
        self._timer = now
        self._iterations_last = self.iter
        outputs = self._train_outputs(f32)
        self._log_outputs("Train", outputs)
        self._emit("train", iter=self.iter, loss=float(self.smoothed_loss), outputs=outputs)

    @staticmethod
    def _log_outputs(which, outputs):
        """Log Caffe's "<which> net output #i: name = v (* w = v*w loss)" lines and turn
        ``outputs`` (index, name, f32 value, f32 weight) into Python floats, in place."""
        for k, (i, name, v, w) in enumerate(outputs):
            if w:
                log.info("    %s net output #%d: %s = %g (* %g = %g loss)", which, i, name, v,
                         w, f32(w * v))
            else:
                log.info("    %s net output #%d: %s = %g", which, i, name, v)
            outputs[k] = (i, name, float(v), float(w))

    # -- Snapshot / Restore (state.py) ---------------------------------------------------
    def snapshot(self) -> Tuple[str, str]:
        """Write the model, then the solver state; returns (model file, state file).
        In data-parallel training only rank 0 writes (other ranks return None)."""
        if not root_solver():
            return None
        model_filename, state_filename = state.write_snapshot(
            self.net, self._param, self.iter, self.current_step, self.history,
            chain_state_dict(self._regularizers))
        self._emit("snapshot", iter=self.iter, model=model_filename, state=state_filename)
        return model_filename, state_filename

    def solver_state(self, model_filename=""):
        """The SolverState message Caffe writes (iter, learned_net, current_step, history)."""
        return state.solver_state(self.iter, model_filename, self.current_step, self.history,
                                  chain_state_dict(self._regularizers))

    def restore(self, state_file: str) -> None:
        """Restore iter, current_step, history and the learned_net weights (binary or .h5)."""
        it, learned_net, current_step, history, reg_state = \
            state.read_solver_state(state_file)
        # check the pair (a state without its model is half a snapshot) and the history
        # before anything changes
        learned_net = state.check_learned_net(state_file, learned_net)
        weights = state.check_learned_weights(self.net, state_file, learned_net)
        state.check_history(self.history, history, state_file, self.type_name, self.net)
        if reg_state:
            load_chain_state_dict(self._regularizers, reg_state)
        weights.apply()
        self.iter = int(it)
        self.current_step = int(current_step)
        log.info("%s: restoring history", type(self).__name__)
        xp = backend.xp()
        for h, arr in zip(self.history, history):
            h[...] = xp.asarray(np.asarray(arr, dtype=np.float32).reshape(h.shape))

    # -- pycaffe-style API -----------------------------------------------------------------
    @property
    def param(self) -> SolverParameterView:
        """pycaffe's solver.param: the SolverParameter this solver runs with (live). Every
        field reads the value in use; ``base_lr`` can be set and changes the rate from the
        next update on; other fields are read-only (``solver.param.copy()`` gives an editable
        ``caffe_pb2.SolverParameter``)."""
        return SolverParameterView(self._param)

    @property
    def lr(self) -> float:
        """pycaffe's SGDSolver.lr: the learning rate the next update would use (this
        iteration's rate under ``lr_policy``)."""
        rate, _ = get_learning_rate(self._param, self.iter, self.current_step)
        return rate

    def share_weights(self, net: Net) -> None:
        """pycaffe: make ``net`` share the train net's trained layers."""
        net.share_trained_layers_with(self.net)

    def add_callback(self, on_start: Any,
                     on_gradients_ready: Optional[Callable[[], Any]] = None) -> None:
        """pycaffe's add_callback(on_start, on_gradients_ready); an object with
        ``on_start()`` / ``on_gradients_ready()`` methods (Caffe's Callback) works too."""
        if on_gradients_ready is None and not callable(on_start):
            obj = on_start
            on_start = getattr(obj, "on_start", None)
            on_gradients_ready = getattr(obj, "on_gradients_ready", None)
        self._callbacks.append((on_start, on_gradients_ready))

    def add_listener(self, fn: Any) -> Any:
        """A listener object (a ``SolverListener`` of listeners.py, or any object with its
        ``on_start`` / ``on_iteration`` / ``on_test`` / ``on_snapshot`` / ``on_end`` ...
        methods; its ``on_event`` gets the records below), or a function
        ``fn(event, record)`` for every displayed number.  Events: "train" (iter, loss,
        outputs = [(index, name, value, loss_weight)]), "lr" (iter, lr), "test" (iter,
        net, loss or None, scores = [(index, name, value, loss_weight)]), "final_loss"
        (iter, loss), "clip" (iter, norm, clip, scale), "snapshot" (iter, model, state), and
        with the sparsity display on: "sparsity" (iter, stats = [ParamSparsity] per learnable
        param), "regularization" (iter, total penalty, smoothed loss)."""
        if is_listener_object(fn):
            self._monitors.add(fn, self)
            on_event = getattr(fn, "on_event", None)
            if callable(on_event):
                self._listeners.append(on_event)
            return fn
        self._listeners.append(fn)
        return fn

    def remove_listener(self, fn):
        if fn in self._monitors.objects:
            on_event = getattr(fn, "on_event", None)
            if on_event in self._listeners:
                self._listeners.remove(on_event)
            self._monitors.remove(fn, self)
            return
        self._listeners.remove(fn)

    @property
    def listeners(self):
        """The listener objects and functions added with ``add_listener``."""
        return list(self._monitors.objects) + [
            fn for fn in self._listeners
            if getattr(fn, "__self__", None) not in self._monitors.objects]

    def _train_outputs(self, cast):
        """The train net's outputs as (index, blob name, value, loss weight) rows, one per
        value in Caffe's display order; ``cast`` converts the numbers (f32 or float)."""
        net = self.net
        outputs = []
        for j, blob in enumerate(net.output_blobs):
            bid = net.output_blob_indices[j]
            name = net.blob_names[bid]
            w = cast(net._blob_loss_weights[bid])
            for v in backend.to_numpy(blob.data).ravel():
                outputs.append((len(outputs), name, cast(v), w))
        return outputs

    def _notify_iteration(self, loss):
        """on_iteration(iter, smoothed loss, train outputs, lr) of the listener objects."""
        self.iteration_loss = float(loss)
        outputs = self._train_outputs(float)
        it, smoothed, rate = self.iter - 1, float(self.smoothed_loss), self.learning_rate
        for fn in self._monitors.iteration:
            fn(it, smoothed, outputs, rate)

    @property
    def on_nan(self) -> str:
        """What a NaN/Inf loss or gradient does (monitor/divergence.py): "stop" (the
        default: snapshot the last finite weights, raise DivergenceError), "snapshot" (the
        same snapshot, then go on) or "continue" (Caffe's behaviour, with the message)."""
        return self._on_nan

    @on_nan.setter
    def on_nan(self, value: str) -> None:
        self._on_nan = check_on_nan(value)

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
            raise RegularizerError("%r is not a Regularizer (it needs a regularize(param_id, "
                                   "blob, ctx) method)" % (regularizer,))
        setup = getattr(regularizer, "setup", None)
        if setup is not None:
            setup(self.net)
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
        return check_action(a, "requested action")
