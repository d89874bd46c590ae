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
    caffepy example mnist lenet && cd lenet && caffepy train -solver lenet_solver.prototxt
    caffepy train --help            # the flags of one command (-h too)

Flags are read the way gflags reads them, so existing Caffe shell scripts work unchanged:
``-flag value``, ``-flag=value``, ``--flag value``, ``--flag=value``; boolean flags also as
``-flag``/``-noflag``; flags may come before or after the command; ``--`` ends the flags.
``caffepy COMMAND --help`` (or ``-h``) lists the flags that command reads.
Logging goes to stderr in glog's line format (``--log_dir DIR`` also writes a glog log file).

The package: :mod:`.flags` (the gflags-style parser and the flag table), :mod:`.commands`
(train, test, time, device_query), :mod:`.tools` (the dataset and upgrade tools),
:mod:`.devices` (-gpu and the CPU/GPU switch), and here the command table, :func:`run` and
:func:`main`.  A new command is a function ``(flags, args) -> exit status`` plus one row of
:data:`COMMANDS` (and a :class:`~.flags.Flag` row in :data:`~.flags.FLAGS` for any new flag).
"""
import logging
import os
import sys
from typing import Callable, NamedTuple

from .. import __version__, backend
from ..errors import CaffepyError, CliError, FlagError  # noqa: F401
from ..logging_setup import CLI_LOG as log
from ..logging_setup import CLI_SOURCE, setup_logging
from . import commands, example, tools
from ..tools.prune import PRUNE_USAGE, prune_command
from ..tools.gradcheck import gradcheck_command
from ..export.command import EXPORT_USAGE, export_command
from ..tools.parse_log import PARSE_LOG_USAGE, parse_log_command
from ..tools.plot_log import PLOT_USAGE, plot_command
from .commands import get_phase, get_requested_action, get_stages, run_train  # noqa: F401
from .devices import GPU_BACKEND_HELP, get_gpus  # noqa: F401
from .devices import gpu_device_count as _gpu_device_count  # noqa: F401
from .flags import FLAG_INDEX, FLAGS, HELP_SECTIONS, Flag, Flags, flags_help  # noqa: F401
from .flags import named_flags_help
from .flags import parse_flags

PROGRAM = "caffepy"


class Command(NamedTuple):
    """A row of the command table."""
    function: Callable      # (flags, args) -> exit status (None counts as 0)
    help: str               # its line in the usage message
    takes_args: bool = False   # positional arguments after the name (else they are an error)
    own_flags: bool = False    # reads its own flags: gets (None, everything after the name)
    flags: tuple = ()          # the flags it reads (``caffepy COMMAND --help`` lists them)
    usage: str = ""            # its usage line(s), when it takes positional arguments


# Flags every command reads: the device for the net commands, logging for all.
_NET = ("stage", "level", "no_python_layers")
LOGGING_FLAGS = ("log_dir", "logtostderr", "minloglevel", "v")


# The command table, in the order the usage message and "Unknown action" list them (Caffe's
# own commands first, in Caffe's order).
COMMANDS = {
    "train": Command(commands.train, "train or finetune a model",
                     flags=("solver", "snapshot", "weights", "strict_weights", "gpu") + _NET
                     + ("sigint_effect", "sighup_effect", "tensorboard", "on_nan"),
                     usage="usage: caffepy train -solver SOLVER.prototxt [-weights "
                     "W.caffemodel[,...] | -snapshot S.solverstate] [-gpu IDS]"),
    "test": Command(commands.test, "score a model",
                    flags=("model", "weights", "strict_weights", "iterations", "gpu") + _NET,
                    usage="usage: caffepy test -model NET.prototxt -weights W.caffemodel "
                    "[-iterations N] [-gpu ID]"),
    "device_query": Command(commands.device_query,
                            "show the compute backends and GPU diagnostic information",
                            flags=("gpu",), usage="usage: caffepy device_query [-gpu IDS]"),
    "time": Command(commands.time_cmd, "benchmark model execution time",
                    flags=("model", "iterations", "phase", "gpu") + _NET,
                    usage="usage: caffepy time -model NET.prototxt [-iterations N] "
                    "[-phase TRAIN|TEST] [-gpu ID]"),
    "convert_mnist": Command(tools.convert_mnist, "convert MNIST (idx files, an .npz, or the "
                             "bundled sample) to an LMDB of Datums", takes_args=True,
                             flags=("backend", "npz", "bundled", "split"),
                             usage=tools.CONVERT_MNIST_USAGE),
    "convert_cifar_data": Command(tools.convert_cifar_data, "convert the CIFAR-10 binary "
                                  "batches to LMDBs of Datums (cifar10_train_lmdb, "
                                  "cifar10_test_lmdb)", takes_args=True, flags=("backend",),
                                  usage=tools.CONVERT_CIFAR_USAGE),
    "convert_imageset": Command(tools.convert_imageset, "convert a set of images and a list "
                                "file to an LMDB/LevelDB of Datums", takes_args=True,
                                flags=("gray", "shuffle", "shuffle_seed", "backend",
                                       "resize_width", "resize_height", "check_size",
                                       "encoded", "encode_type"),
                                usage=tools.CONVERT_IMAGESET_USAGE),
    "compute_image_mean": Command(tools.compute_image_mean, "compute the mean image of an "
                                  "LMDB/LevelDB of Datums (a mean .binaryproto)",
                                  takes_args=True, flags=("backend",),
                                  usage=tools.COMPUTE_IMAGE_MEAN_USAGE),
    "extract_features": Command(tools.extract_features, "run a trained net and store the "
                                "values of blobs in LMDB/LevelDB databases", takes_args=True,
                                usage=tools.EXTRACT_FEATURES_USAGE),
    "upgrade_net_proto_text": Command(tools.upgrade_net_proto_text, "upgrade a net prototxt "
                                      "(V0/V1 layers, input fields ...) to the current format",
                                      takes_args=True, usage="usage: caffepy "
                                      "upgrade_net_proto_text IN.prototxt OUT.prototxt"),
    "upgrade_net_proto_binary": Command(tools.upgrade_net_proto_binary, "upgrade a binary net "
                                        "(.caffemodel) to the current format", takes_args=True,
                                        usage="usage: caffepy upgrade_net_proto_binary "
                                        "IN.caffemodel OUT.caffemodel"),
    "upgrade_solver_proto_text": Command(tools.upgrade_solver_proto_text, "upgrade a solver "
                                         "prototxt (solver_type enum -> type) to the current "
                                         "format", takes_args=True, usage="usage: caffepy "
                                         "upgrade_solver_proto_text IN.prototxt OUT.prototxt"),
    "prune": Command(prune_command, "remove all-zero filters and outputs of a trained net "
                     "(a smaller prototxt and caffemodel)",
                     flags=("model", "weights", "out_model", "out_weights", "threshold"),
                     usage=PRUNE_USAGE),
    "gradcheck": Command(gradcheck_command, "check a layer's or a regularizer's gradients by "
                         "finite differences", takes_args=True, own_flags=True),
    "export": Command(export_command, "write a net (deploy or train_val, with its weights) as "
                      "an ONNX model", takes_args=True, own_flags=True, usage=EXPORT_USAGE),
    "parse_log": Command(parse_log_command, "write the train and test tables of a training log "
                         "as CSV files (LOG.train, LOG.test)", takes_args=True, own_flags=True,
                         usage=PARSE_LOG_USAGE),
    "plot": Command(plot_command, "draw training curves (loss, accuracy, learning rate) from "
                    "training logs as a PNG", takes_args=True, own_flags=True, usage=PLOT_USAGE),
    "example": Command(example.example, "copy a ready-to-train example (LeNet on MNIST) to a "
                       "folder", takes_args=True, flags=("list",), usage=example.EXAMPLE_USAGE),
}


# -- usage ---------------------------------------------------------------------------------

def usage_message():
    lines = ["%s: command line brew (Caffe's `caffe` tool, in Python)" % PROGRAM,
             "usage: %s <command> <args>" % PROGRAM, "", "commands:"]
    width = max([15] + [len(n) for n in COMMANDS])
    for name, cmd in COMMANDS.items():
        lines.append("  %-*s %s" % (width, name, cmd.help))
    return "\n".join(lines)


def command_help(name):
    """The text of ``caffepy NAME --help``: the command's line, its usage and its flags."""
    cmd = COMMANDS[name]
    lines = ["%s %s: %s" % (PROGRAM, name, cmd.help)]
    if cmd.usage:
        lines.append(cmd.usage)
    else:
        lines.append("usage: %s %s [flags]" % (PROGRAM, name))
    text = "\n".join(lines)
    if cmd.flags:
        text += "\n" + named_flags_help("Flags of %s:" % name, cmd.flags)
    else:
        text += "\n\n  %s takes no flags of its own." % name
    return text + "\n" + named_flags_help("Logging flags (glog):", LOGGING_FLAGS)


def show_usage(stream=None, with_flags=True, sections=HELP_SECTIONS):
    stream = sys.stderr if stream is None else stream
    text = usage_message()
    if with_flags:
        text += "\n" + flags_help(sections)
    stream.write(text + "\n")


# -- run -----------------------------------------------------------------------------------

_CLI_DIR = os.path.dirname(os.path.abspath(__file__))


def _log_fatal(exc, with_traceback):
    """LOG(FATAL): an F line naming where the error was raised."""
    tb = exc.__traceback__
    filename, lineno = CLI_SOURCE, 0
    while tb is not None:
        filename, lineno = tb.tb_frame.f_code.co_filename, tb.tb_lineno
        tb = tb.tb_next
    msg = str(exc) or type(exc).__name__
    if with_traceback:
        msg = "%s: %s" % (type(exc).__name__, msg)
    # Raised by the command line itself: the line names cli.py, as its other lines do.
    extra = log.extra if os.path.dirname(os.path.abspath(filename)) == _CLI_DIR else None
    logger = log.logger
    record = logger.makeRecord(logger.name, logging.CRITICAL, filename, lineno, msg, (),
                               (type(exc), exc, exc.__traceback__) if with_traceback else None,
                               extra=extra)
    logger.handle(record)


def run(argv, solver_overrides=None, solver_param=None):
    """Run the command line ``argv`` (without the program name); returns the exit status."""
    argv = list(argv)
    if argv and argv[0] in COMMANDS and COMMANDS[argv[0]].own_flags:
        return COMMANDS[argv[0]].function(
            None, ["--help" if a in ("-h", "--h") else a for a in argv[1:]]) or 0
    try:
        flags, positional = parse_flags(argv)
    except FlagError as e:
        sys.stderr.write(str(e) + "\n")
        return 1
    if flags.version:
        sys.stdout.write("%s version %s (Caffe 1.0 semantics)\n" % (PROGRAM, __version__))
        return 0
    if (flags.help or flags.h) and positional and positional[0] in COMMANDS:
        sys.stdout.write(command_help(positional[0]) + "\n")
        return 0
    if flags.help or flags.h or flags.helpshort:
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
            for n in COMMANDS:
                log.error("\t%s", n)
            log.critical("Unknown action: %s", name)
        finally:
            cfg.restore()
        return 1
    command = COMMANDS[name]
    if args and not command.takes_args:
        sys.stderr.write("ERROR: unexpected argument%s after '%s': %s\n"
                         % ("s" if len(args) > 1 else "", name, " ".join(args)))
        show_usage()
        return 1
    old_mode = backend.mode()
    cfg = _setup_logging(flags)
    with_tb = bool(os.environ.get("CAFFEPY_TRACEBACK"))
    try:
        if cfg.log_file:
            log.info("Log file: %s", cfg.log_file)
        if name == "train" and (solver_overrides or solver_param is not None):
            return run_train(flags, solver_param=solver_param, solver_overrides=solver_overrides)
        return command.function(flags, args) or 0
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
    return setup_logging(log_dir=flags.log_dir or None, minloglevel=flags.minloglevel,
                         logtostderr=flags.logtostderr, verbose=flags.v, program=PROGRAM)


def main(argv=None):
    """Console entry point: ``caffepy <command> <args>``; returns the exit status."""
    if argv is None:
        argv = sys.argv[1:]
    return run(argv)
