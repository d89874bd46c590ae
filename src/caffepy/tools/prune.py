"""``caffepy prune``: turn a structured-sparse net into a physically smaller one.

    caffepy prune -model IN.prototxt -weights IN.caffemodel \\
        -out_model OUT.prototxt -out_weights OUT.caffemodel [-threshold T]

Every Convolution filter and InnerProduct output whose weights are all zero (|w| <= T) is
removed, with the inputs it fed in every consumer: the next Convolution's input channels,
the InnerProduct columns after a Flatten/Reshape, the per-channel parameters of PReLU,
BatchNorm, Scale and Bias on the way, through ReLU-like layers, Pooling, LRN (WITHIN_CHANNEL),
Dropout, Split, Concat (channel offsets) and Eltwise (only channels removed from all its
inputs).  A removed unit whose bias is non-zero outputs a constant; caffepy folds that
constant, as it arrives after the layers in between, into the consumer's bias where that is
exact (an InnerProduct, a Convolution without padding) and keeps the unit otherwise.
Units whose removal some consumer could not follow are kept, and the report says why.

Python API::

    new_net, new_weights, report = prune_net(net_param, weights_net_param, threshold=0.0)
    print(report.table())

The graph analysis lives in :mod:`caffepy.tools.prune_graph`.
"""
import logging
import math
import sys

import numpy as np

from .. import backend
from ..errors import CliError, ProtoError, ToolError
from ..net import Net
from ..proto import (blobproto_to_array, caffe_pb2, read_binary, read_text, set_blobproto,
                     upgrade, write_binary, write_text)
from .prune_graph import ChannelGraph, conv_geometry, quiet_caffepy_log, shape_str

log = logging.getLogger("caffepy")

__all__ = ["prune_net", "prune_files", "PruneReport", "LayerStats", "prune_command"]


# -- report --------------------------------------------------------------------------------------

class LayerStats:
    """One row of the report: a layer with parameters, before and after pruning."""

    def __init__(self, name, type, shape_before, shape_after, params_before, params_after,
                 macs_before=None, macs_after=None, col_sparsity=None, row_sparsity=None,
                 removed=()):
        self.name, self.type = name, type
        self.shape_before, self.shape_after = tuple(shape_before), tuple(shape_after)
        self.params_before, self.params_after = int(params_before), int(params_after)
        self.macs_before, self.macs_after = macs_before, macs_after
        self.col_sparsity, self.row_sparsity = col_sparsity, row_sparsity
        self.removed = list(removed)

    @property
    def speedup(self):
        """The SSL analyzer's conv estimate 1/((1-col)(1-row)); None for non-conv layers."""
        if self.col_sparsity is None:
            return None
        d = (1.0 - self.col_sparsity) * (1.0 - self.row_sparsity)
        return math.inf if d <= 0 else 1.0 / d

    def __repr__(self):
        return "LayerStats(%s %s %s -> %s)" % (self.name, self.type, shape_str(self.shape_before),
                                               shape_str(self.shape_after))


class PruneReport:
    """What prune did: per-layer statistics, removed and kept units, folds, notes."""

    def __init__(self, threshold):
        self.threshold = float(threshold)
        self.layers = []          # LayerStats, in prototxt order
        self.removed = {}         # layer name -> removed unit indices
        self.kept = []            # (layer name, unit, reason) for zero-weight units that stay
        self.folded = []          # (consumer, producer-side description) lines
        self.notes = []

    def layer(self, name):
        return next(s for s in self.layers if s.name == name)

    @property
    def params_before(self):
        return sum(s.params_before for s in self.layers)

    @property
    def params_after(self):
        return sum(s.params_after for s in self.layers)

    def _macs(self, attr):
        vals = [getattr(s, attr) for s in self.layers if s.type in ("Convolution", "InnerProduct")]
        if any(v is None for v in vals):
            return None
        return sum(vals)

    @property
    def macs_before(self):
        return self._macs("macs_before")

    @property
    def macs_after(self):
        return self._macs("macs_after")

    def table(self):
        head = ("layer", "type", "weight before", "weight after", "params before",
                "params after", "MACs before", "MACs after", "col sparsity", "row sparsity",
                "speed-up")
        rows = []

        def num(v):
            return "?" if v is None else str(v)

        for s in self.layers:
            conv = s.col_sparsity is not None
            macs = s.type in ("Convolution", "InnerProduct")
            rows.append((s.name, s.type, shape_str(s.shape_before), shape_str(s.shape_after),
                         str(s.params_before), str(s.params_after),
                         num(s.macs_before) if macs else "-", num(s.macs_after) if macs else "-",
                         "%.2f%%" % (100 * s.col_sparsity) if conv else "",
                         "%.2f%%" % (100 * s.row_sparsity) if conv else "",
                         ("inf" if s.speedup == math.inf else "%.2fx" % s.speedup)
                         if conv else ""))
        rows.append(("total", "", "", "", str(self.params_before), str(self.params_after),
                     num(self.macs_before), num(self.macs_after), "", "", ""))
        widths = [max(len(r[k]) for r in [head] + rows) for k in range(len(head))]
        lines = []
        for n, r in enumerate([head] + rows):
            if n == len(rows):
                lines.append("  ".join("-" * w for w in widths))
            lines.append("  ".join(c.ljust(w) if k < 4 else c.rjust(w)
                                   for k, (c, w) in enumerate(zip(r, widths))).rstrip())
        return "\n".join(lines)

    def summary(self):
        lines = []
        for name, units in self.removed.items():
            if units:
                lines.append("removed %d unit%s of '%s': %s" % (
                    len(units), "" if len(units) == 1 else "s", name,
                    ", ".join(map(str, units))))
        for name, unit, reason in self.kept:
            lines.append("kept unit %d of '%s' (zero weights): %s" % (unit, name, reason))
        lines.extend(self.folded)
        lines.extend(self.notes)
        return lines

    def __str__(self):
        return "\n".join([self.table()] + self.summary())


# -- reading -------------------------------------------------------------------------------------

def _copy_upgraded(param, source):
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    if upgrade.net_needs_upgrade(out):
        with quiet_caffepy_log():
            upgrade.upgrade_net_as_needed(out, source)
    return out


def _read_weights(weights_param, weights_name):
    weights = {}
    for layer in weights_param.layer:   # Caffe copies entries in order: the last one wins
        if not len(layer.blobs):
            continue
        arrs = []
        for k, bp in enumerate(layer.blobs):
            try:
                arrs.append(np.array(blobproto_to_array(bp), dtype=np.float32))
            except ProtoError as e:
                raise ToolError("%s: layer '%s' blob %d: %s" % (weights_name, layer.name, k, e)) \
                    from None
        weights[layer.name] = arrs
    return weights


def _batch_one(param):
    """Shape inference needs one image: batch 1 in the Input and data layers."""
    for lp in param.layer:
        if lp.type == "Input":
            for s in lp.input_param.shape:
                if len(s.dim):
                    s.dim[0] = 1
        for field in ("data_param", "image_data_param", "hdf5_data_param", "window_data_param",
                      "memory_data_param"):
            if lp.HasField(field):
                getattr(lp, field).batch_size = 1


def infer_shapes(net_param):
    """Per-image blob shapes and the param shapes of a Net built from `net_param` (TEST, then
    TRAIN for what TEST lacks).  Returns (shapes, param_shapes, notes); a phase whose net
    cannot be built (a data source that is not there) only adds a note."""
    shapes, param_shapes, notes = {}, {}, []
    phases = ((caffe_pb2.TEST, "TEST"), (caffe_pb2.TRAIN, "TRAIN"))
    if not any(len(lp.include) or len(lp.exclude) for lp in net_param.layer):
        phases = phases[:1]                  # one net: both phases build the same layers
    for phase, pname in phases:
        net, error = None, None
        for one in (True, False):
            q = caffe_pb2.NetParameter()
            q.CopyFrom(net_param)
            if one:
                _batch_one(q)
            try:
                with quiet_caffepy_log():
                    net = Net(q, phase)
                break
            except Exception as e:   # any layer that cannot be set up here: shapes unknown
                error = e
        if net is None:
            notes.append("blob shapes of phase %s unknown (the net cannot be set up: %s)"
                         % (pname, str(error).splitlines()[0] if str(error) else
                            type(error).__name__))
            continue
        for name, blob in net.blobs.items():
            shapes.setdefault(name, tuple(int(d) for d in blob.shape[1:]))
        for name, blobs in net.params.items():
            param_shapes.setdefault(name, [tuple(int(d) for d in b.shape) for b in blobs])
        close = getattr(net, "close", None)
        if close is not None:
            close()
    return shapes, param_shapes, notes


# -- applying the decisions ---------------------------------------------------------------------

def _first_live_input(graph, name, table):
    for (i, b) in table:
        inp = graph.inputs.get((i, b))
        if inp is not None:
            return inp
    return None


def _drop_removed_units(graph, name, w, bias):
    """The rows (output units) of ``w`` and ``bias`` that survive pruning ``name``; with a flag
    saying whether any were removed."""
    removed = graph.removed_units(name)
    if not removed:
        return w, bias, False
    rows = np.ones(w.shape[0], dtype=bool)
    rows[removed] = False
    return w[rows], (bias[rows] if bias is not None else None), True


def _prune_conv(graph, name, lp, blobs, report):
    num_output, group, bias_term, kernel, pads = conv_geometry(lp)
    w = blobs[0].astype(np.float64)
    bias = blobs[1].astype(np.float64) if bias_term else None
    changed = False
    c = graph.consumers.get(name)
    inp = _first_live_input(graph, name, c["inputs"]) if c else None
    if inp is not None:
        keep = graph.keep_mask(inp.slots, inp.widths)
        if not keep.all():
            changed = True
            vals = graph.consumer_vals(name)
            cg, mg = w.shape[1], num_output // group
            fold = np.zeros(num_output)
            for s in np.flatnonzero(~keep):
                if vals[s] != 0:
                    g, local = divmod(int(s), cg)
                    rows = slice(g * mg, (g + 1) * mg)
                    fold[rows] += vals[s] * w[rows, local].reshape(mg, -1).sum(axis=1)
            if np.any(fold != 0):
                bias = (bias if bias is not None else np.zeros(num_output)) + fold
                report.folded.append("folded the constant outputs of %d removed channel%s of "
                                     "blob '%s' into the bias of '%s'"
                                     % (int(np.sum(vals[~keep] != 0)),
                                        "" if np.sum(vals[~keep] != 0) == 1 else "s",
                                        inp.name, name))
            w = np.concatenate([w[g * mg:(g + 1) * mg][:, keep[g * cg:(g + 1) * cg]]
                                for g in range(group)], axis=0)
    w, bias, dropped = _drop_removed_units(graph, name, w, bias)
    changed = changed or dropped
    if not changed:
        return None
    out = [w.astype(np.float32)]
    if bias is not None:
        out.append(bias.astype(np.float32))
    return out


def _prune_ip(graph, name, lp, blobs, report):
    p = lp.inner_product_param
    w = blobs[0].astype(np.float64)
    wv = w.T if p.transpose else w
    n = wv.shape[0]
    bias = blobs[1].astype(np.float64) if p.bias_term else None
    changed = False
    c = graph.consumers.get(name)
    inp = _first_live_input(graph, name, c["inputs"]) if c else None
    if inp is not None:
        keep = graph.keep_mask(inp.slots, inp.widths)
        if not keep.all():
            changed = True
            cpw = wv.shape[1] // keep.size
            vals = graph.consumer_vals(name)
            cols = np.repeat(keep, cpw)
            removed_vals = np.repeat(vals, cpw)[~cols]
            if np.any(removed_vals != 0):
                fold = wv[:, ~cols] @ removed_vals
                bias = (bias if bias is not None else np.zeros(n)) + fold
                nz = np.asarray([np.any(v != 0) for v in np.split(
                    vals, np.cumsum(inp.widths)[:-1])])
                nz = nz & ~np.asarray([not graph.removable(s) for s in inp.slots])
                report.folded.append("folded the constant outputs of %d removed channel%s of "
                                     "blob '%s' into the bias of '%s'"
                                     % (int(nz.sum()), "" if nz.sum() == 1 else "s",
                                        inp.name, name))
            wv = wv[:, cols]
    wv, bias, dropped = _drop_removed_units(graph, name, wv, bias)
    changed = changed or dropped
    if not changed:
        return None
    out = [(wv.T if p.transpose else wv).astype(np.float32)]
    if bias is not None:
        out.append(bias.astype(np.float32))
    return out


def _prune_passthrough(graph, name, lp, blobs):
    inp = _first_live_input(graph, name, graph.passthrough[name])
    if inp is None:
        return None
    keep = graph.keep_mask(inp.slots, inp.widths)
    if keep.all():
        return None
    if lp.type == "PReLU" and lp.prelu_param.channel_shared:
        return None
    out = [b.copy() for b in blobs]
    sliced = {"PReLU": (0,), "BatchNorm": (0, 1), "Scale": (0, 1), "Bias": (0,)}[lp.type]
    for k in sliced:
        if k < len(out):
            out[k] = out[k][keep]
    return out


def _macs_and_sparsity(graph, lp, w, w_after, threshold):
    """(MACs before, after, column sparsity, row sparsity) of a Conv/IP layer per image."""
    if lp.type == "InnerProduct":
        return int(w.size), int(w_after.size), None, None
    spatial = None
    shape = graph.shapes.get(lp.top[0]) if len(lp.top) else None
    if shape is not None and len(shape) >= 1:
        spatial = int(np.prod(shape[1:], dtype=np.int64))
    n_bottoms = max(1, len(lp.bottom))
    macs = None if spatial is None else spatial * int(w.size) * n_bottoms
    macs_after = None if spatial is None else spatial * int(w_after.size) * n_bottoms
    group = max(1, lp.convolution_param.group)
    m = w.shape[0]
    mg = m // group
    zero = np.abs(w.reshape(m, -1)) <= threshold
    zero_cols = zero_rows = 0
    for g in range(group):
        zg = zero[g * mg:(g + 1) * mg]
        zero_cols += int(np.all(zg, axis=0).sum())
        zero_rows += int(np.all(zg, axis=1).sum())
    cols = zero.shape[1] * group
    return macs, macs_after, zero_cols / cols if cols else 0.0, zero_rows / m if m else 0.0


def _set_layer_param(lp, new_blobs):
    if lp.type == "Convolution":
        lp.convolution_param.num_output = new_blobs[0].shape[0]
        if len(new_blobs) > 1:
            lp.convolution_param.bias_term = True
    elif lp.type == "InnerProduct":
        p = lp.inner_product_param
        p.num_output = new_blobs[0].shape[1 if p.transpose else 0]
        if len(new_blobs) > 1:
            p.bias_term = True


def _adjust_ssl_specs(lp, old_w, new_w, group, notes):
    """Group-lasso block specs (SSL ParamSpec fields) sized to the whole old weight matrix
    follow its new size; blocks that no longer tile the pruned matrix get a note."""
    if not len(lp.param) or old_w.shape == new_w.shape:
        return
    rows0, rows1 = old_w.shape[0], new_w.shape[0]
    cols0, cols1 = old_w.size // max(rows0, 1), new_w.size // max(rows1, 1)
    ps = lp.param[0]
    for spec in ps.block_group_lasso:
        if spec.xdimen == cols0:
            spec.xdimen = cols1
        if spec.ydimen == rows0:
            spec.ydimen = rows1
        elif group > 1 and spec.ydimen == rows0 // group:
            spec.ydimen = rows1 // group
        if rows1 % spec.ydimen or cols1 % spec.xdimen:
            notes.append("layer '%s': block_group_lasso {xdimen: %d ydimen: %d} does not tile "
                         "the pruned %dx%d weight matrix; change it before training the pruned "
                         "net" % (lp.name, spec.xdimen, spec.ydimen, rows1, cols1))
    if ps.decay_proto:
        notes.append("layer '%s': decay_proto '%s' holds multipliers for the %s weight; the "
                     "pruned weight is %s" % (lp.name, ps.decay_proto, shape_str(old_w.shape),
                                              shape_str(new_w.shape)))


def _apply(graph, net_param, weights_param, report):
    new_net = caffe_pb2.NetParameter()
    new_net.CopyFrom(net_param)
    new_weights = caffe_pb2.NetParameter()
    new_weights.CopyFrom(weights_param)
    first_lp = {}
    for lp in net_param.layer:
        first_lp.setdefault(lp.name, lp)
    new_blobs = {}
    for name, lp in first_lp.items():
        blobs = graph.weights.get(name)
        if blobs is None:
            continue
        out = None
        if lp.type == "Convolution" and (name in graph.unit_classes or name in graph.consumers):
            out = _prune_conv(graph, name, lp, blobs, report)
        elif lp.type == "InnerProduct" and (name in graph.unit_classes
                                            or name in graph.consumers):
            out = _prune_ip(graph, name, lp, blobs, report)
        elif name in graph.passthrough:
            out = _prune_passthrough(graph, name, lp, blobs)
        if out is not None:
            new_blobs[name] = out
    # prototxt: num_output / bias_term of every layer of that name, Reshape dims
    ssl_notes = []
    for lp in new_net.layer:
        if lp.name in new_blobs:
            _set_layer_param(lp, new_blobs[lp.name])
            if lp.type in ("Convolution", "InnerProduct"):
                _adjust_ssl_specs(lp, graph.weights[lp.name][0], new_blobs[lp.name][0],
                                  lp.convolution_param.group if lp.type == "Convolution" else 1,
                                  ssl_notes)
    report.notes.extend(dict.fromkeys(ssl_notes))
    for i, inp in graph.reshapes.items():
        lp = new_net.layer[i]
        top = graph.nodes[(lp.top[0], i)]
        keep = graph.keep_mask(top.slots, top.widths)
        if not keep.all() and lp.reshape_param.shape.dim[1] > 0:
            lp.reshape_param.shape.dim[1] = int(keep.sum())
    for layer in new_weights.layer:
        if layer.name in new_blobs and len(layer.blobs):
            del layer.blobs[:]
            for arr in new_blobs[layer.name]:
                set_blobproto(layer.blobs.add(), arr)
            if layer.type in ("Convolution", "InnerProduct"):
                _set_layer_param(layer, new_blobs[layer.name])
    # report rows
    for name, lp in first_lp.items():
        blobs = graph.weights.get(name)
        if blobs is None:
            continue
        after = new_blobs.get(name, blobs)
        macs = macs_after = col = row = None
        if lp.type in ("Convolution", "InnerProduct"):
            macs, macs_after, col, row = _macs_and_sparsity(graph, lp, blobs[0], after[0],
                                                            graph.threshold)
        report.layers.append(LayerStats(
            name, lp.type, blobs[0].shape, after[0].shape, sum(b.size for b in blobs),
            sum(b.size for b in after), macs, macs_after, col, row,
            graph.removed_units(name)))
        if name in graph.unit_classes:
            report.removed[name] = graph.removed_units(name)
            for unit, reason in graph.kept_units(name):
                report.kept.append((name, unit, reason))
    return new_net, new_weights


# -- public API ----------------------------------------------------------------------------------

def prune_net(net_param, weights_net_param, threshold=0.0, model_name="<net>",
              weights_name="<weights>"):
    """Prune the net `net_param` (a NetParameter, train_val or deploy) whose trained weights
    are `weights_net_param` (the caffemodel's NetParameter).

    Returns ``(new_net_param, new_weights_net_param, report)``: the smaller net (include and
    exclude rules kept), its weights, and a :class:`PruneReport`.  Raises ToolError for weights
    that are missing or do not fit the prototxt, and for a prune that would remove every unit
    of a layer.  ``model_name``/``weights_name`` name the files in messages.
    """
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise ToolError("prune: the threshold must be a number (got %r)" % (threshold,)) from None
    if not threshold >= 0 or math.isinf(threshold):
        raise ToolError("prune: the threshold must be a finite number >= 0 (got %g)" % threshold)
    net = _copy_upgraded(net_param, model_name)
    weights_param = _copy_upgraded(weights_net_param, weights_name)
    weights = _read_weights(weights_param, weights_name)
    rng = backend.get_rng_state()
    try:
        shapes, param_shapes, notes = infer_shapes(net)
        graph = ChannelGraph(net, weights, shapes, threshold, model_name, weights_name,
                             param_shapes).run()
        report = PruneReport(threshold)
        report.notes.extend(notes)
        if notes and not shapes:
            report.notes.append("multiply-adds of Convolution layers need blob shapes; they "
                                "show as '?'")
        new_net, new_weights = _apply(graph, net, weights_param, report)
    finally:
        backend.set_rng_state(rng)
    return new_net, new_weights, report


def prune_files(model, weights, out_model, out_weights, threshold=0.0):
    """Read IN.prototxt and IN.caffemodel, prune, write OUT.prototxt and OUT.caffemodel;
    returns the report."""
    net_param = read_text(model, caffe_pb2.NetParameter())
    weights_param = read_binary(weights, caffe_pb2.NetParameter())
    new_net, new_weights, report = prune_net(net_param, weights_param, threshold,
                                             model_name=model, weights_name=weights)
    for write, message, path in ((write_text, new_net, out_model),
                                 (write_binary, new_weights, out_weights)):
        try:
            write(message, path)
        except OSError as e:
            raise ToolError("prune: cannot write '%s': %s (does its folder exist?)"
                            % (path, e.strerror or e)) from None
    return report


PRUNE_USAGE = ("usage: caffepy prune -model IN.prototxt -weights IN.caffemodel "
               "-out_model OUT.prototxt -out_weights OUT.caffemodel [-threshold T]")


def prune_command(flags, args):
    """``caffepy prune``: the command-line entry (flags: model, weights, out_model,
    out_weights, threshold).  Prints the table to stdout; returns the exit status."""
    if args:
        raise CliError("prune takes no positional arguments (got %s)\n%s"
                       % (" ".join(args), PRUNE_USAGE))
    missing = [f for f in ("model", "weights", "out_model", "out_weights")
               if not getattr(flags, f)]
    if missing:
        raise CliError("prune needs %s\n%s" % (", ".join("-" + f for f in missing), PRUNE_USAGE))
    text = str(flags.threshold).strip() if flags.threshold is not None else "0"
    try:
        threshold = float(text or "0")
    except ValueError:
        raise CliError("prune: -threshold must be a number (got '%s')" % text) from None
    log.info("Pruning %s with weights %s (threshold %g)", flags.model, flags.weights, threshold)
    report = prune_files(flags.model, flags.weights, flags.out_model, flags.out_weights,
                         threshold)
    sys.stdout.write(report.table() + "\n")
    sys.stdout.flush()
    for line in report.summary():
        log.info("%s", line)
    log.info("Wrote the pruned net to %s and its weights to %s", flags.out_model,
             flags.out_weights)
    return 0
