"""The ``caffepy`` command line: Caffe's ``caffe`` tool (tools/caffe.cpp), in Python.

    caffepy train --solver=examples/mnist/lenet_solver.prototxt
    caffepy train -solver solver.prototxt -weights a.caffemodel,b.caffemodel
    caffepy train -solver solver.prototxt -snapshot lenet_iter_5000.solverstate
    caffepy test -model lenet_train_test.prototxt -weights lenet_iter_10000.caffemodel \
        -iterations 100
    caffepy time -model lenet_train_test.prototxt -iterations 10
    caffepy device_query
    caffepy convert_mnist --bundled --split train examples/mnist/mnist_train_lmdb
    caffepy convert_cifar_data data/cifar10 examples/cifar10 lmdb
    caffepy convert_imageset --resize_height=256 --resize_width=256 --shuffle \
        data/train/ data/train.txt train_lmdb
    caffepy compute_image_mean -backend lmdb train_lmdb mean.binaryproto
    caffepy extract_features net.caffemodel feat.prototxt fc7 fc7_lmdb 10 lmdb GPU 0
    caffepy upgrade_net_proto_text old.prototxt new.prototxt

Flags are read the way gflags reads them, so existing Caffe shell scripts work unchanged:
``-flag value``, ``-flag=value``, ``--flag value``, ``--flag=value``; boolean flags also as
``-flag``/``-noflag``; flags may come before or after the command; ``--`` ends the flags.
Logging goes to stderr in glog's line format (``--log_dir DIR`` also writes a glog log file).
"""
import logging
import os
import platform
import sys
import time
from .errors import CaffepyError, CliError, FlagError  # noqa: F401

log = logging.getLogger("caffepy")

PROGRAM = "caffepy"


# -- flags (gflags) -----------------------------------------------------------------------

class Flag:
    def __init__(self, name, ftype, default, help, section="caffe"):
        self.name, self.type, self.default, self.help, self.section = \
            name, ftype, default, help, section

    def convert(self, text):
        if self.type is bool:
            v = str(text).strip().lower()
            if v in ("1", "t", "true", "y", "yes"):
                return True
            if v in ("0", "f", "false", "n", "no"):
                return False
            raise FlagError("ERROR: illegal value '%s' specified for bool flag '%s'"
                            % (text, self.name))
        if self.type is int:
            try:
                return int(str(text).strip(), 0) if str(text).strip().lower().startswith(
                    ("0x", "-0x")) else int(str(text).strip())
            except ValueError:
                raise FlagError("ERROR: illegal value '%s' specified for int32 flag '%s'"
                                % (text, self.name)) from None
        return str(text)

    def type_name(self):
        return {bool: "bool", int: "int32", str: "string"}[self.type]

    def default_repr(self):
        if self.type is bool:
            return "true" if self.default else "false"
        if self.type is str:
            return '"%s"' % self.default
        return str(self.default)


FLAGS = [
    # tools/caffe.cpp
    Flag("gpu", str, "",
         "Optional; run in GPU mode on given device IDs separated by ','. Use '-gpu all' to run "
         "on all available GPUs. The effective training batch size is multiplied by the number "
         "of devices. (caffepy's GPU mode needs CuPy and an NVIDIA GPU.)"),
    Flag("solver", str, "", "The solver definition protocol buffer text file."),
    Flag("model", str, "", "The model definition protocol buffer text file."),
    Flag("phase", str, "", "Optional; network phase (TRAIN or TEST). Only used for 'time'."),
    Flag("level", int, 0, "Optional; network level."),
    Flag("stage", str, "",
         "Optional; network stages (not to be confused with phase), separated by ','."),
    Flag("snapshot", str, "", "Optional; the snapshot solver state to resume training."),
    Flag("weights", str, "",
         "Optional; the pretrained weights to initialize finetuning, separated by ','. Cannot "
         "be set simultaneously with snapshot."),
    Flag("iterations", int, 50, "The number of iterations to run."),
    Flag("sigint_effect", str, "stop",
         "Optional; action to take when a SIGINT signal is received: snapshot, stop or none."),
    Flag("sighup_effect", str, "snapshot",
         "Optional; action to take when a SIGHUP signal is received: snapshot, stop or none."),
    # convert_mnist (examples/mnist/convert_mnist_data.cpp, plus .npz input)
    Flag("backend", str, "lmdb", "The backend {lmdb, leveldb} for storing the result "
         "(convert_mnist, convert_cifar_data, convert_imageset) or holding the images "
         "(compute_image_mean).",
         "convert_mnist"),
    Flag("npz", str, "", "convert_mnist: read {split}_images/{split}_labels from this .npz "
         "instead of idx files.", "convert_mnist"),
    Flag("bundled", bool, False, "convert_mnist: use the bundled 5,000-digit MNIST sample "
         "(4,000 train / 1,000 test).", "convert_mnist"),
    Flag("split", str, "", "convert_mnist with --npz/--bundled: 'train' or 'test'.",
         "convert_mnist"),
    # convert_imageset (tools/convert_imageset.cpp)
    Flag("gray", bool, False, "When this option is on, treat images as grayscale ones",
         "convert_imageset"),
    Flag("shuffle", bool, False, "Randomly shuffle the order of images and their labels",
         "convert_imageset"),
    Flag("shuffle_seed", int, 0, "caffepy: the seed of --shuffle (the same seed gives the same "
         "order; -1 draws a fresh one, as Caffe's unseeded shuffle does).", "convert_imageset"),
    Flag("resize_width", int, 0, "Width images are resized to", "convert_imageset"),
    Flag("resize_height", int, 0, "Height images are resized to", "convert_imageset"),
    Flag("check_size", bool, False, "When this option is on, check that all the datum have "
         "the same size", "convert_imageset"),
    Flag("encoded", bool, False, "When this option is on, the encoded image will be save in "
         "datum", "convert_imageset"),
    Flag("encode_type", str, "", "Optional: What type should we encode the image as "
         "('png','jpg',...).", "convert_imageset"),
    # glog
    Flag("log_dir", str, "", "If specified, logfiles are written into this directory as well "
         "as to stderr.", "glog"),
    Flag("logtostderr", bool, False, "log messages go to stderr only, no log file.", "glog"),
    Flag("alsologtostderr", bool, True, "log messages go to stderr in addition to logfiles "
         "(always on, as in caffe).", "glog"),
    Flag("minloglevel", int, 0, "Messages logged at a lower level than this don't actually get "
         "logged anywhere (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL).", "glog"),
    Flag("stderrthreshold", int, 2, "accepted for compatibility (caffepy logs everything at or "
         "above minloglevel to stderr).", "glog"),
    Flag("v", int, 0, "Show all VLOG(m) messages for m <= this (v > 0 shows debug records).",
         "glog"),
    # gflags
    Flag("help", bool, False, "show help on all flags", "gflags"),
    Flag("helpshort", bool, False, "show help on the caffe flags only", "gflags"),
    Flag("version", bool, False, "show version and build info and exit", "gflags"),
]
FLAG_INDEX = {f.name: f for f in FLAGS}


class Flags:
    """Parsed flag values as attributes (``flags.solver``), plus which ones were given."""

    def __init__(self, values, given):
        self.__dict__.update(values)
        self._given = set(given)

    def given(self, name):
        return name in self._given

    def replace(self, **changes):
        values = {f: v for f, v in self.__dict__.items() if not f.startswith("_")}
        values.update(changes)
        return Flags(values, self._given)

    def __repr__(self):
        return "Flags(%s)" % ", ".join("%s=%r" % (f.name, getattr(self, f.name)) for f in FLAGS)


def parse_flags(args, flag_index=None):
    """gflags-style parsing of ``args`` (without the program name).

    Returns (Flags, positional_args).  Raises FlagError like gflags would.
    """
    flag_index = FLAG_INDEX if flag_index is None else flag_index
    values = {f.name: f.default for f in flag_index.values()}
    given = []
    positional = []
    i = 0
    args = list(args)
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            positional.extend(args[i:])
            break
        if not a.startswith("-") or a == "-":
            positional.append(a)
            continue
        body = a[2:] if a.startswith("--") else a[1:]
        if "=" in body:
            name, value = body.split("=", 1)
            has_value = True
        else:
            name, value, has_value = body, None, False
        flag = flag_index.get(name)
        if flag is None and name.startswith("no") and not has_value:
            neg = flag_index.get(name[2:])
            if neg is not None and neg.type is bool:
                values[neg.name] = False
                given.append(neg.name)
                continue
        if flag is None:
            raise FlagError("ERROR: unknown command line flag '%s'" % name)
        if flag.type is bool:
            values[flag.name] = flag.convert(value) if has_value else True
        else:
            if not has_value:
                if i >= len(args):
                    raise FlagError("ERROR: flag '%s' is missing its argument; flag description: "
                                    "%s" % (a, flag.help))
                value = args[i]
                i += 1
            values[flag.name] = flag.convert(value)
        given.append(flag.name)
    return Flags(values, given), positional


# -- commands ----------------------------------------------------------------------------

COMMANDS = {}        # name -> (function, one-line help), in usage order
TAKES_ARGS = set()   # commands that take positional arguments (the others reject them)


def command(name, help, takes_args=False):
    def deco(fn):
        COMMANDS[name] = (fn, help)
        if takes_args:
            TAKES_ARGS.add(name)
        return fn
    return deco


USAGE_ORDER = ("train", "test", "device_query", "time", "convert_mnist")   # caffe's order


def _command_names():
    return [n for n in USAGE_ORDER if n in COMMANDS] + \
        [n for n in COMMANDS if n not in USAGE_ORDER]


def usage_message():
    lines = ["%s: command line brew (Caffe's `caffe` tool, in Python)" % PROGRAM,
             "usage: %s <command> <args>" % PROGRAM, "", "commands:"]
    names = _command_names()
    width = max([15] + [len(n) for n in names])
    for name in names:
        lines.append("  %-*s %s" % (width, name, COMMANDS[name][1]))
    return "\n".join(lines)


HELP_SECTIONS = ("caffe", "convert_mnist", "convert_imageset", "glog")


def flags_help(sections=HELP_SECTIONS):
    out = []
    titles = {"caffe": "Flags from tools/caffe.cpp:", "convert_mnist":
              "Flags of convert_mnist (examples/mnist/convert_mnist_data.cpp):",
              "convert_imageset": "Flags of convert_imageset (tools/convert_imageset.cpp):",
              "glog": "Logging flags (glog):", "gflags": "Other flags (gflags):"}
    for sec in sections:
        out.append("")
        out.append("  " + titles[sec])
        for f in FLAGS:
            if f.section == sec:
                out.append("    -%s (%s) type: %s default: %s"
                           % (f.name, f.help, f.type_name(), f.default_repr()))
    return "\n".join(out)


def show_usage(stream=None, with_flags=True, sections=HELP_SECTIONS):
    stream = sys.stderr if stream is None else stream
    text = usage_message()
    if with_flags:
        text += "\n" + flags_help(sections)
    stream.write(text + "\n")


def get_stages(flags):
    """get_stages_from_flags: the comma list of -stage (empty entries are dropped, as
    boost::split + Net's handling leaves nothing to match them)."""
    return [s for s in flags.stage.split(",") if s] if flags.stage else []


def get_phase(flags, default):
    from .proto import caffe_pb2
    if flags.phase == "":
        return default
    if flags.phase == "TRAIN":
        return caffe_pb2.TRAIN
    if flags.phase == "TEST":
        return caffe_pb2.TEST
    raise CliError("phase must be \"TRAIN\" or \"TEST\" (got \"%s\")" % flags.phase)


# -- GPU selection (get_gpus) -------------------------------------------------------------

GPU_BACKEND_HELP = ("caffepy's GPU backend needs CuPy and an NVIDIA GPU (pip install "
                    "'caffepy[gpu]' on a machine with CUDA)")


def _gpu_device_count():
    try:
        import cupy
    except ImportError:
        return None
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def get_gpus(flags):
    """The device ids of -gpu ("0,1" or "all"); [] means CPU."""
    if not flags.gpu:
        return []
    count = _gpu_device_count()
    if count is None:
        raise CliError("-gpu %s was given, but %s; CuPy is not installed. Leave out -gpu to run "
                       "on the CPU." % (flags.gpu, GPU_BACKEND_HELP))
    if count == 0:
        raise CliError("-gpu %s was given, but no CUDA GPU is visible to CuPy (%s). Leave out "
                       "-gpu to run on the CPU." % (flags.gpu, GPU_BACKEND_HELP))
    if flags.gpu == "all":
        return list(range(count))
    gpus = []
    for s in flags.gpu.split(","):
        try:
            g = int(s)
        except ValueError:
            raise CliError("-gpu must be a comma-separated list of device ids or 'all' (got "
                           "'%s')" % flags.gpu) from None
        if not 0 <= g < count:
            raise CliError("-gpu %d: no such device (CuPy sees %d GPU%s: ids 0..%d)"
                           % (g, count, "" if count == 1 else "s", count - 1))
        gpus.append(g)
    return gpus


def _use_gpu(device_id):
    from . import backend
    backend.set_device(device_id)
    backend.set_mode_gpu()


def _use_cpu():
    from . import backend
    backend.set_mode_cpu()


def _gpu_name(device_id):
    try:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(device_id)
        name = props.get("name", b"")
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return "?"


def _synchronize():
    from . import backend
    if backend.mode() == backend.GPU:
        import cupy
        cupy.cuda.Device().synchronize()


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
    from . import solver as solver_mod
    from .proto import caffe_pb2
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
        if _gpu_device_count():
            gpu_flag = str(device_id)
        else:
            log.info("The solver sets solver_mode: GPU, but no GPU backend is available (%s); "
                     "running on the CPU.", GPU_BACKEND_HELP)
    gpus = get_gpus(flags.replace(gpu=gpu_flag))
    if not gpus:
        log.info("Use CPU.")
        _use_cpu()
    else:
        if len(gpus) > 1:
            raise CliError("-gpu %s asks for multi-GPU training (Caffe uses NCCL for that); "
                           "caffepy trains on one GPU: pass a single device id" % gpu_flag)
        log.info("Using GPUs %s", ", ".join(str(g) for g in gpus))
        for g in gpus:
            log.info("GPU %d: %s", g, _gpu_name(g))
        solver_param.device_id = gpus[0]
        _use_gpu(gpus[0])

    # -snapshot drops the solver's own weights; -weights replaces them (the solver copies
    # them into the train net and every test net, in order, while it is built).
    if flags.snapshot:
        solver_param.ClearField("weights")
    elif flags.weights:
        solver_param.ClearField("weights")
        solver_param.weights.append(flags.weights)

    solver = solver_mod.get_solver(solver_param, sigint_effect=sigint_effect,
                                   sighup_effect=sighup_effect)
    if flags.snapshot:
        log.info("Resuming from %s", flags.snapshot)
        solver.restore(flags.snapshot)
    log.info("Starting Optimization")
    solver.solve()
    log.info("Optimization Done.")
    return 0


@command("train", "train or finetune a model")
def train(flags, args):
    return run_train(flags)


# -- test ----------------------------------------------------------------------------------

def _select_device_for_net(flags):
    gpus = get_gpus(flags)
    if gpus:
        log.info("Use GPU with device ID %d", gpus[0])
        _use_gpu(gpus[0])
    else:
        log.info("Use CPU.")
        _use_cpu()


def _fmt(x):
    """A float as C++'s ostream prints it (6 significant digits, %g)."""
    return "%g" % float(x)


@command("test", "score a model")
def test(flags, args):
    import numpy as np
    from . import backend
    from .net import Net
    from .proto import caffe_pb2
    if not flags.model:
        raise CliError("Need a model definition to score (-model).")
    if not flags.weights:
        raise CliError("Need model weights to score (-weights).")
    stages = get_stages(flags)
    _select_device_for_net(flags)
    if not os.path.isfile(flags.model):
        raise CliError("Model definition file '%s' does not exist" % flags.model)
    net = Net(flags.model, caffe_pb2.TEST, level=flags.level, stages=stages)
    for w in flags.weights.split(","):
        if w:
            net.copy_trained_layers_from(w)
    log.info("Running for %d iterations.", flags.iterations)
    f32 = np.float32
    test_score = []
    test_score_output_id = []
    loss = f32(0)
    out_ids = net.output_blob_indices
    for i in range(flags.iterations):
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
    def __init__(self):
        self.t0 = None

    def start(self):
        _synchronize()
        self.t0 = time.perf_counter()

    def microseconds(self):
        _synchronize()
        return (time.perf_counter() - self.t0) * 1e6

    def milliseconds(self):
        return self.microseconds() / 1e3


@command("time", "benchmark model execution time")
def time_cmd(flags, args):
    from .net import Net
    from .proto import caffe_pb2
    if not flags.model:
        raise CliError("Need a model definition to time (-model).")
    phase = get_phase(flags, caffe_pb2.TRAIN)
    stages = get_stages(flags)
    _select_device_for_net(flags)
    if not os.path.isfile(flags.model):
        raise CliError("Model definition file '%s' does not exist" % flags.model)
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
    for j in range(iterations):
        iter_timer = _Timer()
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
    import numpy as np
    lines = []
    try:
        cfg = np.show_config(mode="dicts")
    except TypeError:
        cfg = None
    except Exception:
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
    import cupy
    p = cupy.cuda.runtime.getDeviceProperties(device_id)

    def g(k, default="?"):
        v = p.get(k, default)
        return v.decode() if isinstance(v, bytes) else v
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


@command("device_query", "show the compute backends and GPU diagnostic information")
def device_query(flags, args):
    import numpy as np
    from . import __version__
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
    count = _gpu_device_count() or 0
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


# -- convert_mnist -------------------------------------------------------------------------

@command("convert_mnist", "convert MNIST (idx files, an .npz, or the bundled sample) to an "
         "LMDB of Datums", takes_args=True)
def convert_mnist(flags, args):
    from .tools import convert_mnist as cm
    usage = ("usage: caffepy convert_mnist IMAGES_IDX LABELS_IDX OUT_DB [--backend lmdb|leveldb]\n"
             "       caffepy convert_mnist (--npz FILE.npz | --bundled) --split train|test OUT_DB "
             "[--backend lmdb|leveldb]")
    if flags.npz or flags.bundled:
        if flags.npz and flags.bundled:
            raise CliError("give either --npz or --bundled, not both\n" + usage)
        if len(args) != 1:
            raise CliError("convert_mnist with --%s takes exactly one argument, the output "
                           "database (got %d)\n%s"
                           % ("npz" if flags.npz else "bundled", len(args), usage))
        if not flags.split:
            raise CliError("convert_mnist with --%s needs --split train or --split test\n%s"
                           % ("npz" if flags.npz else "bundled", usage))
        npz = flags.npz or cm.bundled_npz()
        log.info("Converting the %s split of %s", flags.split, npz)
        cm.convert_mnist_npz(npz, flags.split, args[0], flags.backend)
        return 0
    if len(args) != 3:
        raise CliError("convert_mnist needs IMAGES_IDX LABELS_IDX OUT_DB (got %d argument%s)\n%s"
                       % (len(args), "" if len(args) == 1 else "s", usage))
    cm.convert_mnist_data(args[0], args[1], args[2], flags.backend)
    return 0


# -- convert_cifar_data ----------------------------------------------------------------------

@command("convert_cifar_data", "convert the CIFAR-10 binary batches to LMDBs of Datums "
         "(cifar10_train_lmdb, cifar10_test_lmdb)", takes_args=True)
def convert_cifar_data(flags, args):
    from .tools.convert_cifar import convert_cifar_data as run_convert
    usage = ("usage: caffepy convert_cifar_data INPUT_FOLDER OUTPUT_FOLDER "
             "[--backend lmdb|leveldb]\n"
             "       caffepy convert_cifar_data INPUT_FOLDER OUTPUT_FOLDER lmdb|leveldb  "
             "(Caffe's spelling)")
    if len(args) not in (2, 3):
        raise CliError("convert_cifar_data needs INPUT_FOLDER OUTPUT_FOLDER (got %d argument%s)"
                       "\n%s" % (len(args), "" if len(args) == 1 else "s", usage))
    backend = flags.backend
    if len(args) == 3:
        if flags.given("backend") and flags.backend.lower() != args[2].lower():
            raise CliError("convert_cifar_data: the backend '%s' contradicts --backend %s\n%s"
                           % (args[2], flags.backend, usage))
        backend = args[2]
    run_convert(args[0], args[1], backend)
    return 0


# -- dataset and upgrade tools (tools/*.cpp) --------------------------------------------------

CONVERT_IMAGESET_USAGE = (
    "Convert a set of images to the leveldb/lmdb format used as input for Caffe.\n"
    "Usage:\n"
    "    caffepy convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME\n"
    "LISTFILE holds one 'relpath label' per line; images are read from ROOTFOLDER/relpath.\n"
    "Flags: --gray --shuffle [--shuffle_seed N] --backend lmdb|leveldb --resize_width W "
    "--resize_height H --check_size --encoded --encode_type png|jpg|...")


@command("convert_imageset", "convert a set of images and a list file to an LMDB/LevelDB of "
         "Datums", takes_args=True)
def convert_imageset(flags, args):
    from .tools.convert_imageset import convert_imageset as run_convert
    if len(args) != 3:
        raise CliError("convert_imageset needs ROOTFOLDER/ LISTFILE DB_NAME (got %d argument%s)"
                       "\n%s" % (len(args), "" if len(args) == 1 else "s",
                                 CONVERT_IMAGESET_USAGE))
    run_convert(args[0], args[1], args[2], gray=flags.gray, shuffle=flags.shuffle,
                backend=flags.backend, resize_width=flags.resize_width,
                resize_height=flags.resize_height, check_size=flags.check_size,
                encoded=flags.encoded, encode_type=flags.encode_type,
                shuffle_seed=flags.shuffle_seed)
    return 0


@command("compute_image_mean", "compute the mean image of an LMDB/LevelDB of Datums (a mean "
         ".binaryproto)", takes_args=True)
def compute_image_mean(flags, args):
    from .tools.compute_image_mean import compute_image_mean as run_mean
    if not 1 <= len(args) <= 2:
        raise CliError("compute_image_mean needs INPUT_DB [OUTPUT_FILE] (got %d arguments)\n"
                       "Compute the mean_image of a set of images given by a leveldb/lmdb\n"
                       "Usage:\n    caffepy compute_image_mean [-backend lmdb|leveldb] INPUT_DB "
                       "[OUTPUT_FILE]" % len(args))
    run_mean(args[0], args[1] if len(args) == 2 else None, backend=flags.backend)
    return 0


EXTRACT_FEATURES_USAGE = (
    "This program takes in a trained network and an input data layer, and then extract "
    "features of the input data produced by the net.\n"
    "Usage: caffepy extract_features pretrained_net_param feature_extraction_proto_file "
    "extract_feature_blob_name1[,name2,...] save_feature_dataset_name1[,name2,...] "
    "num_mini_batches db_type [CPU/GPU] [DEVICE_ID=0]\n"
    "Note: you can extract multiple features in one pass by specifying multiple feature blob "
    "names and dataset names separated by ','. The names cannot contain white space characters "
    "and the number of blobs and datasets must be equal.")


@command("extract_features", "run a trained net and store the values of blobs in "
         "LMDB/LevelDB databases", takes_args=True)
def extract_features(flags, args):
    from .tools.extract_features import extract_features as run_extract
    if not 6 <= len(args) <= 8:
        raise CliError("extract_features needs 6 to 8 arguments (got %d)\n%s"
                       % (len(args), EXTRACT_FEATURES_USAGE))
    if len(args) > 6 and args[6] == "GPU":
        device_id = 0
        if len(args) > 7:
            try:
                device_id = int(args[7])
            except ValueError:
                raise CliError("DEVICE_ID must be a non-negative integer (got '%s')"
                               % args[7]) from None
            if device_id < 0:
                raise CliError("DEVICE_ID must be a non-negative integer (got %d)" % device_id)
        log.info("Using GPU")
        log.info("Using Device_id=%d", device_id)
        gpus = get_gpus(flags.replace(gpu=str(device_id)))
        _use_gpu(gpus[0])
    else:
        if len(args) > 6 and args[6] != "CPU":
            log.warning("'%s' is neither CPU nor GPU: running on the CPU", args[6])
        log.info("Using CPU")
        _use_cpu()
    run_extract(args[0], args[1], args[2], args[3], args[4], args[5])
    return 0


def _upgrade_args(name, args, what):
    if len(args) != 2:
        raise CliError("Usage: caffepy %s %s OUT (got %d argument%s)"
                       % (name, what, len(args), "" if len(args) == 1 else "s"))
    return args


@command("upgrade_net_proto_text", "upgrade a net prototxt (V0/V1 layers, input fields ...) to "
         "the current format", takes_args=True)
def upgrade_net_proto_text(flags, args):
    from .tools.upgrade import upgrade_net_proto
    src, dst = _upgrade_args("upgrade_net_proto_text", args, "v0_net_proto_file_in")
    return upgrade_net_proto(src, dst, binary=False)


@command("upgrade_net_proto_binary", "upgrade a binary net (.caffemodel) to the current format",
         takes_args=True)
def upgrade_net_proto_binary(flags, args):
    from .tools.upgrade import upgrade_net_proto
    src, dst = _upgrade_args("upgrade_net_proto_binary", args, "v0_net_proto_file_in")
    return upgrade_net_proto(src, dst, binary=True)


@command("upgrade_solver_proto_text", "upgrade a solver prototxt (solver_type enum -> type) to "
         "the current format", takes_args=True)
def upgrade_solver_proto_text(flags, args):
    from .tools.upgrade import upgrade_solver_proto_text as run_upgrade
    src, dst = _upgrade_args("upgrade_solver_proto_text", args, "solver_proto_file_in")
    return run_upgrade(src, dst)


# -- main ----------------------------------------------------------------------------------

def _log_fatal(exc, with_traceback):
    """LOG(FATAL): an F line naming where the error was raised."""
    tb = exc.__traceback__
    filename, lineno = "cli.py", 0
    while tb is not None:
        filename, lineno = tb.tb_frame.f_code.co_filename, tb.tb_lineno
        tb = tb.tb_next
    msg = str(exc) or type(exc).__name__
    if with_traceback:
        msg = "%s: %s" % (type(exc).__name__, msg)
    record = log.makeRecord(log.name, logging.CRITICAL, filename, lineno, msg, (),
                            (type(exc), exc, exc.__traceback__) if with_traceback else None)
    log.handle(record)


def run(argv, solver_overrides=None, solver_param=None):
    """Run the command line ``argv`` (without the program name); returns the exit status."""
    argv = list(argv)
    try:
        flags, positional = parse_flags(argv)
    except FlagError as e:
        sys.stderr.write(str(e) + "\n")
        return 1
    if flags.version:
        from . import __version__
        sys.stdout.write("%s version %s (Caffe 1.0 semantics)\n" % (PROGRAM, __version__))
        return 0
    if flags.help or flags.helpshort:
        show_usage(sys.stdout, sections=("caffe",) if flags.helpshort else
                   HELP_SECTIONS + ("gflags",))
        return 0
    if not positional:
        show_usage()
        return 1
    name, args = positional[0], positional[1:]
    if name not in COMMANDS:
        # Caffe: LOG(ERROR) the available actions, then LOG(FATAL) "Unknown action".
        cfg = _setup_logging(flags)
        try:
            log.error("Available caffepy actions:")
            for n in _command_names():
                log.error("\t%s", n)
            log.critical("Unknown action: %s", name)
        finally:
            cfg.restore()
        return 1
    fn = COMMANDS[name][0]
    if args and name not in TAKES_ARGS:
        sys.stderr.write("ERROR: unexpected argument%s after '%s': %s\n"
                         % ("s" if len(args) > 1 else "", name, " ".join(args)))
        show_usage()
        return 1
    from . import backend
    old_mode = backend.mode()
    cfg = _setup_logging(flags)
    with_tb = bool(os.environ.get("CAFFEPY_TRACEBACK"))
    try:
        if cfg.log_file:
            log.info("Log file: %s", cfg.log_file)
        if name == "train" and (solver_overrides or solver_param is not None):
            return run_train(flags, solver_param=solver_param, solver_overrides=solver_overrides)
        return fn(flags, args) or 0
    except KeyboardInterrupt:
        log.error("Interrupted.")
        return 130
    except CaffepyError as e:
        _log_fatal(e, with_tb)
        return 1
    except Exception as e:   # a bug, or an error type caffepy does not know: show where
        _log_fatal(e, True)
        return 1
    finally:
        try:
            if old_mode == backend.CPU:
                backend.set_mode_cpu()
        finally:
            cfg.restore()


def _setup_logging(flags):
    from .logging_setup import setup_logging
    return setup_logging(log_dir=flags.log_dir or None, minloglevel=flags.minloglevel,
                         logtostderr=flags.logtostderr, verbose=flags.v, program=PROGRAM)


def main(argv=None):
    """Console entry point: ``caffepy <command> <args>``; returns the exit status."""
    if argv is None:
        argv = sys.argv[1:]
    return run(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
