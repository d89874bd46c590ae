"""``caffepy export``: write a net as an ONNX model.

    caffepy export -model deploy.prototxt -weights w.caffemodel -onnx out.onnx
    caffepy export -model train_val.prototxt -weights w.caffemodel -onnx out.onnx \\
        -input_shape data=1,3,227,227
    caffepy export -model deploy.prototxt -onnx out.onnx -opset 17 -output fc7 -output prob

-weights left out: the fillers' random values (a graph to inspect, not to use).
-input_shape BLOB=D,D,...: the shape of a graph input (repeatable); needed for a data layer
whose source cannot be read here, and overrides an Input layer's shape (its batch size).
-output BLOB: a graph output (repeatable; default: the blobs no exported layer reads).
-opset N: the ONNX opset (13 to 17; default 13).
-stage S, -level N: the NetState the layers' include/exclude rules see (phase TEST).
"""
import logging
import sys

from ..errors import CaffepyError, CliError
from .onnx import DEFAULT_OPSET, export_onnx

log = logging.getLogger("caffepy")

EXPORT_USAGE = ("usage: caffepy export -model NET.prototxt [-weights W.caffemodel] -onnx "
                "OUT.onnx [-input_shape BLOB=N,C,H,W ...] [-output BLOB ...] [-opset 13..17] "
                "[-stage S] [-level N]")

_VALUE_FLAGS = ("model", "weights", "onnx", "input_shape", "output", "opset", "stage", "level")
_REPEATED = ("input_shape", "output", "stage")


def parse_args(args):
    """gflags-style ``-flag value`` / ``-flag=value`` / ``--flag value``; returns a dict."""
    opts = {f: [] if f in _REPEATED else None for f in _VALUE_FLAGS}
    opts["help"] = False
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a in ("-h", "--h", "-help", "--help"):
            opts["help"] = True
            continue
        if not a.startswith("-") or a == "-":
            raise CliError("export takes no positional arguments (got '%s')\n%s"
                           % (a, EXPORT_USAGE))
        body = a.lstrip("-")
        name, eq, value = body.partition("=")
        if name not in _VALUE_FLAGS:
            raise CliError("export: unknown flag '%s'\n%s" % (a, EXPORT_USAGE))
        if not eq:
            if i >= len(args):
                raise CliError("export: flag '-%s' is missing its value\n%s"
                               % (name, EXPORT_USAGE))
            value = args[i]
            i += 1
        if name in _REPEATED:
            opts[name].append(value)
        else:
            opts[name] = value
    return opts


def _input_shapes(values):
    shapes = {}
    for v in values:
        blob, eq, dims = v.partition("=")
        try:
            if not eq or not blob:
                raise ValueError
            shapes[blob] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise CliError("export: -input_shape takes BLOB=D,D,... (e.g. data=1,3,227,227), "
                           "got '%s'" % v) from None
    return shapes


def export_command(flags, args):
    """The ``caffepy export`` row of the command table (reads its own flags)."""
    try:
        opts = parse_args(args)
        if opts["help"]:
            sys.stdout.write(EXPORT_USAGE + "\n" + __doc__)
            return 0
        missing = [f for f in ("model", "onnx") if not opts[f]]
        if missing:
            raise CliError("export needs %s\n%s" % (", ".join("-" + f for f in missing),
                                                    EXPORT_USAGE))
        try:
            opset = int(opts["opset"]) if opts["opset"] is not None else DEFAULT_OPSET
            level = int(opts["level"]) if opts["level"] is not None else 0
        except ValueError:
            raise CliError("export: -opset and -level take integers (got %r, %r)"
                           % (opts["opset"], opts["level"])) from None
        stages = [s for v in opts["stage"] for s in v.split(",") if s]
        model = export_onnx(opts["model"], opts["onnx"], opts["weights"] or None,
                            input_shapes=_input_shapes(opts["input_shape"]), opset=opset,
                            outputs=opts["output"] or None, level=level, stages=stages)
    except CaffepyError as e:
        sys.stderr.write("ERROR: %s\n" % e)
        return 1
    g = model.graph
    sys.stdout.write("Wrote %s (opset %d): inputs %s; outputs %s; %d nodes\n" % (
        opts["onnx"], opset,
        ", ".join("%s%s" % (i.name, _dims(i)) for i in g.input),
        ", ".join("%s%s" % (o.name, _dims(o)) for o in g.output), len(g.node)))
    return 0


def _dims(info):
    return "(%s)" % ",".join(str(d.dim_value) for d in info.type.tensor_type.shape.dim)
