"""Solver listeners: objects that watch training as it runs (TensorBoard, a progress line).

``solver.add_listener(listener)`` with a :class:`SolverListener` (or any object with some of
its ``on_*`` methods) calls, while ``solve()`` / ``step()`` run:

- ``on_start(solver)``: once, before the first iteration (``solve()``, or the first ``step()``);
- ``on_gradients(iter)``: every iteration, after forward/backward (and the pycaffe
  ``on_gradients_ready`` callbacks), before the update: the train net's param diffs hold this
  iteration's gradient (summed over ``iter_size``, before clipping, normalization and
  regularization), its blobs this iteration's activations; ``solver.gradient_sumsq`` is the
  squared global L2 norm of the gradient;
- ``on_iteration(iter, smoothed_loss, outputs, lr)``: every iteration, after the update;
  ``iter`` is the iteration as Caffe's log numbers it (the updates done before it),
  ``smoothed_loss`` the ``average_loss`` mean the log shows, ``outputs`` the train net's
  outputs [(index, name, value, loss_weight)] as on the display lines, ``lr`` the rate of this
  update; ``solver.iteration_loss`` is this iteration's own (raw) loss;
- ``on_test_iteration(test_net_id, done, test_iter)``: after each forward pass of a test;
- ``on_test(iter, test_net_id, scores)``: after each test pass; ``scores`` as the "Test net
  output" lines [(index, name, mean value, loss_weight)];
- ``on_snapshot(iter, model_file, state_file)``: after each snapshot;
- ``on_divergence(report)``: when the loss or the gradient is NaN/Inf (a
  :class:`caffepy.monitor.divergence.Divergence`), before ``on_nan`` acts;
- ``on_event(event, record)``: every record the solver sends to listener functions (below);
  the base class turns "test" and "snapshot" into ``on_test`` / ``on_snapshot``;
- ``on_end(solver)``: when ``solve()`` ends (normally or not), or when the listener is removed.

A plain function ``fn(event, record)`` gets only the displayed numbers (``on_event``); see
``Solver.add_listener``.  With no listener registered the loop does nothing more than test
one empty list per iteration.
"""

__all__ = ["SolverListener", "is_listener_object"]

LISTENER_METHODS = ("on_start", "on_gradients", "on_iteration", "on_test_iteration", "on_test",
                    "on_snapshot", "on_divergence", "on_event", "on_end")


class SolverListener:
    """Base class of the objects ``Solver.add_listener`` accepts; override what you need.

    ``self.solver`` is the solver the listener was added to."""
    solver = None

    def attach(self, solver):
        """Called by ``add_listener``."""
        self.solver = solver

    def on_start(self, solver):
        pass

    def on_gradients(self, iter):
        pass

    def on_iteration(self, iter, smoothed_loss, outputs, lr):
        pass

    def on_test_iteration(self, test_net_id, done, test_iter):
        pass

    def on_test(self, iter, test_net_id, scores):
        pass

    def on_snapshot(self, iter, model_file, state_file):
        pass

    def on_divergence(self, report):
        pass

    def on_event(self, event, record):
        if event == "test":
            self.on_test(record["iter"], record["net"], record["scores"])
        elif event == "snapshot":
            self.on_snapshot(record["iter"], record["model"], record["state"])

    def on_end(self, solver):
        pass


def is_listener_object(obj):
    """True for a SolverListener, or an object with any ``on_*`` listener method (a plain
    function or callable without them is an ``fn(event, record)`` listener)."""
    if isinstance(obj, SolverListener):
        return True
    return any(callable(getattr(obj, m, None)) for m in LISTENER_METHODS)


class ListenerSet:
    """The listener objects of one solver, with each hook as a list of bound methods (so a
    hook nobody defines costs nothing)."""

    def __init__(self):
        self.objects = []
        self.started = []
        self._rebuild()

    def _rebuild(self):
        def hooks(name):
            # the base class's empty methods are left out: a hook nobody overrides costs
            # nothing per iteration
            base = getattr(SolverListener, name)
            return [getattr(o, name) for o in self.objects
                    if callable(getattr(o, name, None))
                    and getattr(getattr(o, name), "__func__", None) is not base]
        self.gradients = hooks("on_gradients")
        self.iteration = hooks("on_iteration")
        self.test_iteration = hooks("on_test_iteration")
        self.divergence = hooks("on_divergence")

    def add(self, obj, solver):
        attach = getattr(obj, "attach", None)
        if callable(attach):
            attach(solver)
        self.objects.append(obj)
        self._rebuild()

    def remove(self, obj, solver):
        self.objects.remove(obj)
        self._rebuild()
        if obj in self.started:
            self.started.remove(obj)
            end = getattr(obj, "on_end", None)
            if callable(end):
                end(solver)

    def start(self, solver):
        for o in self.objects:
            if o not in self.started:
                self.started.append(o)
                fn = getattr(o, "on_start", None)
                if callable(fn):
                    fn(solver)

    def end(self, solver):
        started, self.started = self.started, []
        for o in started:
            fn = getattr(o, "on_end", None)
            if callable(fn):
                fn(solver)

    def __bool__(self):
        return bool(self.objects)
