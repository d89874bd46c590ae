"""The commands of Caffe's ``caffe`` tool (tools/caffe.cpp): train, test, time, device_query.

Each command is a function ``(flags, args) -> exit status``; the command table in
:mod:`caffepy.cli` names them.
"""
import os
import platform
import time

import numpy as np

from .. import __version__, backend, distributed, security
from .. import solver as solver_mod
from ..errors import CliError
from ..logging_setup import CLI_LOG as log
from ..monitor.cli import attach_monitors
from ..monitor.progress import progress
from ..net import Net
from ..proto import caffe_pb2
from .devices import (GPU_BACKEND_HELP, get_gpus, gpu_device_count, gpu_name, gpu_properties,
                      synchronize, use_cpu, use_gpu)


def get_stages(flags):
    """get_stages_from_flags: the comma list of -stage (empty entries are dropped, as
    boost::split + Net's handling leaves nothing to match them)."""
    return [s for s in flags.stage.split(",") if s] if flags.stage else []


def get_phase(flags, default):
    """get_phase_from_flags: -phase as a Phase, ``default`` when it is not given."""
    if flags.phase == "":
        return default
    if flags.phase == "TRAIN":
        return caffe_pb2.TRAIN
    if flags.phase == "TEST":
        return caffe_pb2.TEST
    raise CliError("phase must be \"TRAIN\" or \"TEST\" (got \"%s\")" % flags.phase)


def python_layer_policy(flags):
    """--no_python_layers: the nets a command builds refuse Python layers (docs/security.md);
    without it, CAFFEPY_SAFE decides."""
    return security.policy(
        allow_python_layers=False if getattr(flags, "no_python_layers", False) else None)


# -- signal handling ---------------------------------------------------------------------
# Caffe's SignalHandler lives in the solver (caffepy.solver): Solver(..., sigint_effect,
# sighup_effect) installs it while solve() runs, and polls it every iteration.

SIGNAL_EFFECTS = ("stop", "snapshot", "none")


def get_requested_action(flag_value):
    """GetRequestedAction: "stop" | "snapshot" | "none" (anything else is fatal)."""
    if flag_value in SIGNAL_EFFECTS:
        return flag_value
    raise CliError("Invalid signal effect \"%s\" was specified (use stop, snapshot or none)"
                   % flag_value)


# -- train ---------------------------------------------------------------------------------

def run_train(flags, solver_param=None, solver_overrides=None):
    """``caffe train``.  ``solver_param`` (a SolverParameter) replaces reading ``-solver``;
    ``solver_overrides`` ({field: value}) is applied after reading (the examples' --max_iter)."""
    if solver_param is None and not flags.solver:
        raise CliError("Need a solver definition to train (-solver).")
    if flags.snapshot and flags.weights:
        raise CliError("Give a snapshot to resume training or weights to finetune but not both.")
    sigint_effect = get_requested_action(flags.sigint_effect)
    sighup_effect = get_requested_action(flags.sighup_effect)
    stages = get_stages(flags)
    if solver_param is None:
        # ReadSolverParamsFromTextFileOrDie: text + upgrade + the snapshot_prefix rule.
        solver_param = solver_mod.read_solver_file(flags.solver)
    else:
        p = caffe_pb2.SolverParameter()
        p.CopyFrom(solver_param)
        solver_param = p
    for field, value in (solver_overrides or {}).items():
        setattr(solver_param, field, value)

    solver_param.train_state.level = flags.level
    for s in stages:
        solver_param.train_state.stage.append(s)

    # If -gpu is not given, the solver prototxt may ask for GPU mode and a device.
    gpu_flag = flags.gpu
    if (not gpu_flag and solver_param.HasField("solver_mode")
            and solver_param.solver_mode == caffe_pb2.SolverParameter.GPU):
        device_id = solver_param.device_id if solver_param.HasField("device_id") else 0
        if gpu_device_count():
            gpu_flag = str(device_id)
        else:
            log.info("The solver sets solver_mode: GPU, but no GPU backend is available (%s); "
                     "running on the CPU.", GPU_BACKEND_HELP)
    gpus = get_gpus(flags.replace(gpu=gpu_flag))
    world = distributed.mpi_world()         # None in a plain run (no MPI launcher)
    if gpus and world is not None:
        raise CliError("-gpu %s under an MPI launcher: caffepy's data-parallel training runs "
                       "on CPUs (docs/distributed.md); drop -gpu (and solver_mode: GPU)"
                       % gpu_flag)
    if not gpus:
        log.info("Use CPU.")
        use_cpu()
    else:
        if len(gpus) > 1:
            raise CliError("-gpu %s asks for multi-GPU training (Caffe uses NCCL for that); "
                           "caffepy trains on one GPU: pass a single device id" % gpu_flag)
        log.info("Using GPUs %s", ", ".join(str(g) for g in gpus))
        for g in gpus:
            log.info("GPU %d: %s", g, gpu_name(g))
        solver_param.device_id = gpus[0]
        use_gpu(gpus[0])

    # -snapshot drops the solver's own weights; -weights replaces them (the solver copies
    # them into the train net and every test net, in order, while it is built).
    if flags.snapshot:
        solver_param.ClearField("weights")
    elif flags.weights:
        solver_param.ClearField("weights")
        solver_param.weights.append(flags.weights)
    if world is not None and not world.is_root:
        solver_param.ClearField("weights")      # rank 0 loads them and broadcasts

    with python_layer_policy(flags):
        solver = solver_mod.get_solver(solver_param, sigint_effect=sigint_effect,
                                       sighup_effect=sighup_effect)
    if flags.strict_weights and solver_param.weights:
        solver.net.check_weights_loaded(solver_param.weights)
    if world is not None:
        if world.is_root:
            attach_monitors(solver, flags)
        else:
            solver.on_nan = flags.on_nan
        log.info("Starting Optimization")
        world.train(solver, restore=flags.snapshot)
        log.info("Optimization Done.")
        return 0
    attach_monitors(solver, flags)
    if flags.snapshot:
        log.info("Resuming from %s", flags.snapshot)
        solver.restore(flags.snapshot)
    log.info("Starting Optimization")
    solver.solve()
    log.info("Optimization Done.")
    return 0


def train(flags, args):
    """``caffepy train``: train or finetune a model (-solver, -weights or -snapshot); under an
    MPI launcher with N processes, one model data-parallel (caffepy.distributed)."""
    launched = distributed.launched_world()
    if launched is not None and launched[1] > 1:
        from ..distributed.mpi import start     # mpi4py only under a launcher
        world = start()
        if not world.is_root:   # Caffe's LOG_IF(INFO, root_solver()): rank 0 tells the story
            distributed.quiet_logging()
        return world.run_guarded(run_train, flags)
    return run_train(flags)


# -- test ----------------------------------------------------------------------------------

def _select_device_for_net(flags):
    """test/time run on the first -gpu device, or on the CPU."""
    gpus = get_gpus(flags)
    if gpus:
        log.info("Use GPU with device ID %d", gpus[0])
        use_gpu(gpus[0])
    else:
        log.info("Use CPU.")
        use_cpu()


def _fmt(x):
    """A float as C++'s ostream prints it (6 significant digits, %g)."""
    return "%g" % float(x)


def test(flags, args):
    """``caffepy test``: score -model with -weights over -iterations batches; prints each
    batch's outputs and their means (with the loss each output contributes)."""
    if not flags.model:
        raise CliError("Need a model definition to score (-model).")
    if not flags.weights:
        raise CliError("Need model weights to score (-weights).")
    stages = get_stages(flags)
    _select_device_for_net(flags)
    if not os.path.isfile(flags.model):
        raise CliError("Model definition file '%s' does not exist" % flags.model)
    with python_layer_policy(flags):
        net = Net(flags.model, caffe_pb2.TEST, level=flags.level, stages=stages)
    for w in flags.weights.split(","):
        if w:
            net.copy_trained_layers_from(w)
    # a layer no weight file covers scores with its filler values
    if flags.strict_weights:
        net.check_weights_loaded([flags.weights])
    for name in net.layers_without_weights():
        log.warning("Layer %s got no weights from %s: it is scored with its initial (filler) "
                    "values", name, flags.weights)
    log.info("Running for %d iterations.", flags.iterations)
    f32 = np.float32
    test_score = []
    test_score_output_id = []
    loss = f32(0)
    out_ids = net.output_blob_indices
    for i in progress(range(flags.iterations), flags.iterations, "Batch"):
        iter_loss = f32(net.forward_prefilled())
        loss = f32(loss + iter_loss)
        idx = 0
        for j, blob_id in enumerate(out_ids):
            values = backend.to_numpy(net._blobs[blob_id].data).ravel()
            name = net.blob_names[blob_id]
            for k in range(values.size):
                score = f32(values[k])
                if i == 0:
                    test_score.append(score)
                    test_score_output_id.append(j)
                else:
                    test_score[idx] = f32(test_score[idx] + score)
                idx += 1
                log.info("Batch %d, %s = %s", i, name, _fmt(score))
    if flags.iterations > 0:
        loss = f32(loss / f32(flags.iterations))
    log.info("Loss: %s", _fmt(loss))
    for i, score in enumerate(test_score):
        blob_id = out_ids[test_score_output_id[i]]
        name = net.blob_names[blob_id]
        loss_weight = f32(net.blob_loss_weights[blob_id])
        mean_score = f32(score / f32(flags.iterations))
        msg = ""
        if loss_weight:
            msg = " (* %s = %s loss)" % (_fmt(loss_weight), _fmt(f32(loss_weight * mean_score)))
        log.info("%s = %s%s", name, _fmt(mean_score), msg)
    return 0


# -- time ----------------------------------------------------------------------------------

class _Timer:
    """Caffe's Timer: wall time that includes the GPU work queued before each reading."""

    def __init__(self):
        self.t0 = None

    def start(self):
        synchronize()
        self.t0 = time.perf_counter()

    def microseconds(self):
        synchronize()
        return (time.perf_counter() - self.t0) * 1e6

    def milliseconds(self):
        return self.microseconds() / 1e3


def time_cmd(flags, args):
    """``caffepy time``: forward and backward time, per layer and per pass, over -iterations."""
    if not flags.model:
        raise CliError("Need a model definition to time (-model).")
    phase = get_phase(flags, caffe_pb2.TRAIN)
    stages = get_stages(flags)
    _select_device_for_net(flags)
    if not os.path.isfile(flags.model):
        raise CliError("Model definition file '%s' does not exist" % flags.model)
    with python_layer_policy(flags):
        net = Net(flags.model, phase, level=flags.level, stages=stages)

    log.info("Performing Forward")
    initial_loss = net.forward_prefilled()
    log.info("Initial loss: %s", _fmt(initial_loss))
    log.info("Performing Backward")
    net.backward_from_to(len(net.layers) - 1, 0)

    layers = net.layers
    bottom_vecs, top_vecs = net.bottom_vecs, net.top_vecs
    bottom_need_backward = net.bottom_need_backward
    iterations = flags.iterations
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    total_timer, forward_timer, backward_timer, timer = _Timer(), _Timer(), _Timer(), _Timer()
    total_timer.start()
    fwd = [0.0] * len(layers)
    bwd = [0.0] * len(layers)
    forward_time = backward_time = 0.0
    iter_timer = _Timer()
    for j in range(iterations):
        iter_timer.start()
        forward_timer.start()
        for i, layer in enumerate(layers):
            timer.start()
            layer.forward(bottom_vecs[i], top_vecs[i])
            fwd[i] += timer.microseconds()
        forward_time += forward_timer.microseconds()
        backward_timer.start()
        for i in range(len(layers) - 1, -1, -1):
            timer.start()
            layers[i].backward(top_vecs[i], bottom_need_backward[i], bottom_vecs[i])
            bwd[i] += timer.microseconds()
        backward_time += backward_timer.microseconds()
        log.info("Iteration: %d forward-backward time: %s ms.", j + 1,
                 _fmt(iter_timer.milliseconds()))
    n = max(iterations, 1)
    log.info("Average time per layer: ")
    for i, layer in enumerate(layers):
        name = layer.layer_param.name
        log.info("%10s\tforward: %s ms.", name, _fmt(fwd[i] / 1000 / n))
        log.info("%10s\tbackward: %s ms.", name, _fmt(bwd[i] / 1000 / n))
    total_ms = total_timer.milliseconds()
    log.info("Average Forward pass: %s ms.", _fmt(forward_time / 1000 / n))
    log.info("Average Backward pass: %s ms.", _fmt(backward_time / 1000 / n))
    log.info("Average Forward-Backward: %s ms.", _fmt(total_ms / n))
    log.info("Total Time: %s ms.", _fmt(total_ms))
    log.info("*** Benchmark ends ***")
    return 0


# -- device_query --------------------------------------------------------------------------

def _numpy_blas_info():
    """Lines naming the BLAS/LAPACK and SIMD extensions NumPy was built with."""
    lines = []
    try:
        cfg = np.show_config(mode="dicts")
    except Exception:   # older NumPy: no mode= (TypeError), or no build information
        cfg = None
    if isinstance(cfg, dict):
        deps = cfg.get("Build Dependencies", {})
        for key in ("blas", "lapack"):
            d = deps.get(key)
            if d:
                extra = []
                if d.get("version"):
                    extra.append("version %s" % d["version"])
                if d.get("openblas configuration"):
                    extra.append(d["openblas configuration"])
                lines.append("%s: %s%s" % (key.upper(), d.get("name", "?"),
                                           (" (" + ", ".join(extra) + ")") if extra else ""))
        simd = cfg.get("SIMD Extensions", {})
        found = simd.get("found") if isinstance(simd, dict) else None
        if found:
            lines.append("SIMD extensions: %s" % ", ".join(found))
    if not lines:
        try:
            from numpy.distutils.system_info import get_info  # pragma: no cover
            info = get_info("blas_opt")
            lines.append("BLAS: %s" % (info.get("libraries") or "?"))
        except Exception:
            lines.append("BLAS: (numpy does not report its BLAS)")
    return lines


def _print_device_props(device_id):
    """The device facts Caffe's device_query prints, one ``Name: value`` line each."""
    p = gpu_properties(device_id)

    def g(k, default="?"):
        return p.get(k, default)
    rows = [
        ("Device id", device_id),
        ("Major revision number", g("major")),
        ("Minor revision number", g("minor")),
        ("Name", g("name")),
        ("Total global memory", g("totalGlobalMem")),
        ("Total shared memory per block", g("sharedMemPerBlock")),
        ("Total registers per block", g("regsPerBlock")),
        ("Warp size", g("warpSize")),
        ("Maximum memory pitch", g("memPitch")),
        ("Maximum threads per block", g("maxThreadsPerBlock")),
        ("Maximum dimension of block", ", ".join(str(x) for x in g("maxThreadsDim", ()))),
        ("Maximum dimension of grid", ", ".join(str(x) for x in g("maxGridSize", ()))),
        ("Clock rate", g("clockRate")),
        ("Total constant memory", g("totalConstMem")),
        ("Texture alignment", g("textureAlignment")),
        ("Concurrent copy and execution", "Yes" if g("deviceOverlap", 0) else "No"),
        ("Number of multiprocessors", g("multiProcessorCount")),
        ("Kernel execution timeout", "Yes" if g("kernelExecTimeoutEnabled", 0) else "No"),
    ]
    for k, v in rows:
        log.info("%-31s%s", k + ":", v)


def device_query(flags, args):
    """``caffepy device_query``: the CPU backend (NumPy, its BLAS) and each GPU's facts."""
    log.info("caffepy %s (Python %s, %s)", __version__, platform.python_version(),
             platform.platform())
    log.info("CPU backend: NumPy %s", np.__version__)
    for line in _numpy_blas_info():
        log.info("  %s", line)
    log.info("  CPU cores: %s", os.cpu_count())
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is None:
        if flags.gpu:
            raise CliError("-gpu %s was given, but %s; CuPy is not installed."
                           % (flags.gpu, GPU_BACKEND_HELP))
        log.info("GPU backend: not available (%s; CuPy is not installed)", GPU_BACKEND_HELP)
        return 0
    count = gpu_device_count() or 0
    try:
        cuda_ver = cupy.cuda.runtime.runtimeGetVersion()
    except Exception:
        cuda_ver = "?"
    log.info("GPU backend: CuPy %s (CUDA runtime %s), %d device%s", cupy.__version__, cuda_ver,
             count, "" if count == 1 else "s")
    if flags.gpu:
        gpus = get_gpus(flags)
        log.info("Querying GPUs %s", flags.gpu)
    else:
        gpus = list(range(count))
    for g in gpus:
        _print_device_props(g)
    return 0
