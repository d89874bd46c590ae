"""``caffepy gradcheck``: finite-difference checks of a layer's and a regularizer's gradients.

    caffepy gradcheck -layer conv.prototxt -shape 2,3,7,7
    caffepy gradcheck -layer 'type: "InnerProduct" inner_product_param { num_output: 4 }' \
        -shape 3,5
    caffepy gradcheck -layer my_losses:HuberLoss -shape 8,3 -shape 8,3
    caffepy gradcheck -regularizer GroupLasso -param_str "kind: shape" -coeff 0.01 \
        -shape 8,2,3,3 -conv_group 2
    caffepy gradcheck -regularizer my_regs:Orthogonal -param_str "coeff: 1e-3" -shape 16,32
    caffepy gradcheck -layer conv.prototxt -shape 2,4,7,7 -regularizer SSLGroupLasso \
        -param_str "breadth_decay: 0.01, kernel_shape_decay: 0.01"

``-layer``: a file holding one layer (``layer { ... }`` or the LayerParameter's fields), that
text itself, or ``module:Class`` of a user Layer (``-type`` sets its type name, default the
class name). Each ``-shape`` is one bottom's shape (``2,3,7,7`` or ``2x3x7x7``); the bottoms are
Gaussian (``-labels K``: the last bottom holds integer labels 0..K-1 and is not checked).
``-exhaustive`` checks every top element separately (Caffe's CheckGradientExhaustive).

``-regularizer``: a registered type (``L1``, ``L2``, ``ElasticNet``, ``GroupLasso``,
``SSLGroupLasso``, ``WeightDecay``, or your own) or ``module:Class``, built like a solver
prototxt's ``regularizer { type coeff param_str }`` (``-coeff``, ``-param_str``). Alone, it is
checked on random weights of ``-shape`` (first filter and last column zeroed, so all-zero
groups are covered) as param ``-blob_index`` of a ``-layer_type`` layer with ``-conv_group``,
``-param_spec`` (ParamSpec text, e.g. ``"breadth_decay_mult: 1"``) and ``-decay_mult``. With
``-layer``, it is checked on each of that layer's param blobs, with the layer's own ParamSpecs
and conv group.

Prints one table row per check; the exit status is 0 when every check passes, 1 when one
fails, 2 when the command line or a configuration is wrong.
"""
import importlib
import os
import re
import sys

import numpy as np

from .. import backend
from ..errors import CaffepyError, FlagError, GradientCheckError
from ..gradient_check import GradientChecker, check_regularizer
from ..layer import Layer, create_layer
from ..blob import Blob
from ..proto import caffe_pb2, parse_text
from ..regularizers import RegularizeContext, Regularizer, layer_conv_group, parse_param_str

USAGE = """usage: caffepy gradcheck [-layer FILE|TEXT|module:Class -shape N,C,H,W ...]
                         [-regularizer TYPE|module:Class [-param_str STR] [-coeff X]
                          [-shape N,C,H,W] [-conv_group G] [-param_spec TEXT]
                          [-layer_type TYPE] [-blob_index I] [-decay_mult X]]
                         [-labels K] [-exhaustive] [-type NAME] [-stepsize H]
                         [-threshold T] [-seed S] [-gpu ID]
  -shape may be repeated (one per bottom of -layer); exit status 0 = all checks pass,
  1 = a check failed, 2 = bad command line or configuration"""

_FLAGS = {"layer": str, "shape": list, "regularizer": str, "param_str": str, "coeff": float,
          "conv_group": int, "param_spec": str, "layer_type": str, "blob_index": int,
          "decay_mult": float, "labels": int, "exhaustive": bool, "type": str,
          "stepsize": float, "threshold": float, "seed": int, "gpu": int, "help": bool}
_CLASS_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


# a bad ``caffepy gradcheck`` command line: a flag error like any other command's
UsageError = FlagError


def parse_args(argv):
    """gflags-style ``-name value`` / ``-name=value`` / ``--name``; -shape repeats."""
    opts = {k: ([] if t is list else None) for k, t in _FLAGS.items()}
    i = 0
    argv = list(argv)
    while i < len(argv):
        a = argv[i]
        i += 1
        if not a.startswith("-") or a == "-":
            raise UsageError("unexpected argument '%s'" % a)
        body = a.lstrip("-")
        name, eq, value = body.partition("=")
        if name not in _FLAGS:
            raise UsageError("unknown flag '%s'" % a)
        kind = _FLAGS[name]
        if kind is bool:
            opts[name] = (value.lower() in ("1", "true", "yes", "t", "y")) if eq else True
            continue
        if not eq:
            if i >= len(argv):
                raise UsageError("flag '%s' needs a value" % a)
            value = argv[i]
            i += 1
        if kind is list:
            opts[name].append(parse_shape(value))
            continue
        try:
            opts[name] = kind(value)
        except ValueError:
            raise UsageError("flag '-%s': '%s' is not a%s %s"
                             % (name, value, "n" if kind is int else "",
                                kind.__name__)) from None
    return opts


def parse_shape(text):
    parts = [p for p in re.split(r"[,x\s]+", text.strip()) if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = None
    if not shape or any(d < 0 for d in shape):
        raise UsageError("-shape '%s' is not a shape like 2,3,7,7" % text)
    return shape


def _import_ref(ref):
    mod_name, _, cls_name = ref.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise UsageError("cannot import module '%s' (of '%s'): %s" % (mod_name, ref, e)) from None
    cls = getattr(mod, cls_name, None)
    if cls is None:
        raise UsageError("module '%s' has no '%s'" % (mod_name, cls_name))
    return cls


def _layer_param_from_text(text, where):
    net = caffe_pb2.NetParameter()
    try:
        parse_text(text, net, where)
        if len(net.layer) == 1:
            return net.layer[0]
    except CaffepyError:
        pass
    return parse_text(text, caffe_pb2.LayerParameter(), where)


def build_checked_layer(spec, bottom_arrays, type_name=None):
    """(layer, bottom, top) from -layer's value: a file, prototxt text, or module:Class."""
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            lp = _layer_param_from_text(f.read(), spec)
        layer = create_layer(lp)
        ntop = max(len(lp.top), 1)
    elif _CLASS_REF.match(spec):
        cls = _import_ref(spec)
        if not (isinstance(cls, type) and issubclass(cls, Layer)):
            raise UsageError("'%s' is not a caffepy Layer class" % spec)
        lp = caffe_pb2.LayerParameter(name=cls.__name__,
                                      type=type_name or getattr(cls, "type_name", None)
                                      or cls.__name__)
        layer = cls(lp)
        n = getattr(cls, "exact_num_top_blobs", -1)
        ntop = n if n and n > 0 else 1
    else:
        lp = _layer_param_from_text(spec, "<-layer>")
        if not lp.name:
            lp.name = lp.type or "layer"
        layer = create_layer(lp)
        ntop = max(len(lp.top), 1)
    xp = backend.xp()
    bottom = []
    for a in bottom_arrays:
        b = Blob(a.shape)
        b.data[...] = xp.asarray(a)
        bottom.append(b)
    top = [Blob() for _ in range(ntop)]
    layer.setup(bottom, top)
    return layer, bottom, top


def build_regularizer(ref, coeff=None, param_str=None):
    rp = caffe_pb2.RegularizerParameter(type=ref)
    if coeff is not None:
        rp.coeff = coeff
    if param_str:
        rp.param_str = param_str
    if _CLASS_REF.match(ref):
        cls = _import_ref(ref)
        if isinstance(cls, type) and issubclass(cls, Regularizer):
            return cls.from_proto(rp)
        params = parse_param_str(param_str, ref)
        if coeff is not None:
            params["coeff"] = coeff
        return cls(**params)
    return Regularizer.from_proto(rp)


def _reg_name(r):
    return getattr(r, "name", None) or type(r).__name__


def _describe(r):
    """"GroupLasso kind=block 2x3 coeff=0.1" from the regularizer's repr."""
    text = repr(r)
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].replace(" regularizer", "", 1)
    return text


class Row:
    def __init__(self, check, shape, elements, err, result, detail=""):
        self.check, self.shape, self.elements, self.err = check, shape, elements, err
        self.result, self.detail = result, detail


def _shape_str(shape):
    return "x".join(str(d) for d in shape) if shape else "scalar"


def run_checks(opts, out):
    """Run what ``opts`` asks; returns the table rows."""
    rows = []
    rng = np.random.default_rng(opts["seed"] if opts["seed"] is not None else 1701)
    stepsize = opts["stepsize"]
    threshold = opts["threshold"] if opts["threshold"] is not None else 1e-3
    regularizer = None
    if opts["regularizer"]:
        regularizer = build_regularizer(opts["regularizer"], opts["coeff"], opts["param_str"])
    seed = opts["seed"] if opts["seed"] is not None else 1701
    if opts["layer"]:
        shapes = opts["shape"]
        arrays = [rng.normal(0, 1, s).astype(np.float32) for s in shapes]
        labels = opts["labels"]
        if labels:
            if not arrays:
                raise UsageError("-labels needs a -shape for the label bottom")
            arrays[-1] = rng.integers(0, labels, arrays[-1].shape).astype(np.float32)
        backend.set_random_seed(seed)
        layer, bottom, top = build_checked_layer(opts["layer"], arrays, opts["type"])
        name = "layer %s (%s)" % (layer.layer_param.name, layer.layer_param.type)
        checker = GradientChecker(stepsize if stepsize is not None else 1e-2, threshold,
                                  seed=seed)
        check_bottom = 0 if labels else None
        if labels and len(bottom) == 1:
            check_bottom = -1          # nothing but labels: params only
        try:
            if opts["exhaustive"]:
                checker.check_exhaustive(layer, bottom, top, check_bottom)
            else:
                checker.check(layer, bottom, top, check_bottom)
            rows.append(Row(name, " ".join(_shape_str(b.shape) for b in bottom),
                            sum(b.count for b in bottom) + sum(b.count for b in layer.blobs),
                            None, "PASS"))
        except GradientCheckError as e:
            rows.append(Row(name, " ".join(_shape_str(b.shape) for b in bottom),
                            sum(b.count for b in bottom) + sum(b.count for b in layer.blobs),
                            None, "FAIL", str(e)))
        if regularizer is not None:
            lp = layer.layer_param
            for j, blob in enumerate(layer.blobs):
                spec = lp.param[j] if j < len(lp.param) else None
                ctx = RegularizeContext(layer_name=lp.name, layer_type=lp.type, blob_index=j,
                                        param_spec=spec, conv_group=layer_conv_group(lp))
                label = "regularizer %s on %s blob %d" % (_reg_name(regularizer), lp.name, j)
                if hasattr(regularizer, "selects") and not regularizer.selects(ctx):
                    rows.append(Row(label, _shape_str(blob.shape), blob.count, None, "SKIP",
                                    "not selected"))
                    continue
                rows.append(_regularizer_row(
                    label, regularizer, dict(weights=backend.to_numpy(blob.data),
                                             layer_name=lp.name, layer_type=lp.type,
                                             param_spec=spec, conv_group=layer_conv_group(lp),
                                             blob_index=j, decay_mult=(spec.decay_mult if spec
                                                                       is not None else 1.0)),
                    stepsize, threshold, seed))
    elif regularizer is not None:
        if len(opts["shape"]) != 1:
            raise UsageError("-regularizer without -layer needs exactly one -shape (the "
                             "weights' shape), got %d" % len(opts["shape"]))
        shape = opts["shape"][0]
        spec = opts["param_spec"]
        label = "regularizer %s" % _describe(regularizer)
        rows.append(_regularizer_row(
            label, regularizer, dict(shape=shape, layer_type=opts["layer_type"],
                                     param_spec=spec, conv_group=opts["conv_group"] or 1,
                                     blob_index=opts["blob_index"] or 0,
                                     decay_mult=(opts["decay_mult"]
                                                 if opts["decay_mult"] is not None else 1.0)),
            stepsize, threshold, seed))
    else:
        raise UsageError("give -layer and/or -regularizer")
    return rows


def _regularizer_row(label, regularizer, kw, stepsize, threshold, seed):
    res = check_regularizer(regularizer, stepsize=stepsize if stepsize is not None else 1e-3,
                            threshold=threshold, seed=seed, raise_on_failure=False, **kw)
    return Row(label, _shape_str(res.shape), res.count, res.max_rel_error,
               "PASS" if res.passed else "FAIL", "" if res.passed else res.message)


def format_table(rows):
    head = ("check", "shape", "elements", "max rel err", "result")
    cells = [head] + [(r.check, r.shape, str(r.elements),
                       "-" if r.err is None else "%.2e" % r.err, r.result) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(head))).rstrip()
             for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in rows:
        if r.result == "FAIL":
            lines.append("FAIL %s: %s" % (r.check, r.detail))
    return "\n".join(lines)


def main(argv=None, out=None, err=None):
    """``caffepy gradcheck ARGS``; returns the exit status (0 pass, 1 fail, 2 bad usage)."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    argv = sys.argv[1:] if argv is None else argv
    old_mode = backend.mode()
    try:
        opts = parse_args(argv)
        if opts["help"]:
            out.write(USAGE + "\n" + __doc__)
            return 0
        if opts["gpu"] is not None:
            backend.set_device(opts["gpu"])
            backend.set_mode_gpu()
        rows = run_checks(opts, out)
    except UsageError as e:
        err.write("ERROR: %s\n%s\n" % (e, USAGE))
        return 2
    except (CaffepyError, RuntimeError) as e:
        err.write("ERROR: %s\n" % e)
        return 2
    finally:
        if old_mode == backend.CPU:
            backend.set_mode_cpu()
    out.write(format_table(rows) + "\n")
    return 1 if any(r.result == "FAIL" for r in rows) else 0


def gradcheck_command(flags, args):
    """The ``caffepy gradcheck`` row of the command table: ``args`` is everything after the
    command name (the tool reads its own flags, as -shape repeats)."""
    return main(args)


if __name__ == "__main__":
    sys.exit(main())
