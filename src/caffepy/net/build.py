"""The building steps of Caffe's Net::Init, one function each.

``Net._init`` (net.py) calls them in Caffe's order:

1. :func:`filter_net` keeps the layers whose include/exclude rules the NetState meets;
2. :func:`insert_splits` adds a Split layer after every top consumed more than once,
   with Caffe's names (``{blob}_{layer}_{top index}_split[_{k}]``);
3. per layer: :func:`append_bottom`, :func:`append_top` (in-place when top j names
   bottom j), SetUp, :func:`param_need_backward`, :func:`append_param` (owners and
   sharers by ParamSpec name, STRICT/PERMISSIVE shape checks, lr/decay merge);
4. :func:`prune_backward` drops backward passes that reach no loss;
5. :func:`force_backward` when the net asks for it;
6. :func:`share_weights` points every sharer at its owner's memory.

The functions that take a ``net`` fill the tables ``Net._reset_tables`` creates
(``blob_names``, ``bottom_id_vecs``, ``param_owners``, ...), the names pycaffe and Caffe use.
"""
import collections
import logging
import os

from .. import security
from ..blob import Blob
from ..errors import CaffepyError, DataError, LayerError, NetError
from ..layer import create_layer
from ..proto import caffe_pb2

log = logging.getLogger("caffepy")

AUTOMATIC_TOP = "(automatic)"     # the name of a top a layer adds itself (LossLayer's loss)


# -- reading the definition ---------------------------------------------------------

def load_net_param(source):
    """A NetParameter from a path (text prototxt, upgraded), a NetParameter, or prototxt text."""
    from ..proto import parse_text, upgrade
    if isinstance(source, caffe_pb2.NetParameter):
        param = caffe_pb2.NetParameter()
        param.CopyFrom(source)
        upgrade.upgrade_net_as_needed(param, "<NetParameter>")
        return param
    if isinstance(source, (str, os.PathLike)) and os.path.exists(source):
        return upgrade.read_net_param(str(source))
    if isinstance(source, str) and ("{" in source or "\n" in source):
        param = parse_text(source, caffe_pb2.NetParameter(), "<string>")
        upgrade.upgrade_net_as_needed(param, "<string>")
        return param
    raise NetError("Net definition file '%s' does not exist" % (source,))


# -- NetState filtering ---------------------------------------------------------------

# Net::StateMeetsRule logs why a rule is not met at INFO. caffepy logs those lines at DEBUG:
# `caffepy test` without a stage must not mention the layers it filters out
# (tests/test_cli.py::test_test_command_without_stage_has_no_sum).
_rule_log = log.debug


def state_meets_rule(state, rule, layer_name=""):
    """Net::StateMeetsRule, with its messages (wording as in Caffe, "is above the min_level"
    included)."""
    if rule.HasField("phase") and rule.phase != state.phase:
        _rule_log("The NetState phase (%d) differed from the phase (%d) specified by a rule "
                  "in layer %s", state.phase, rule.phase, layer_name)
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        _rule_log("The NetState level (%d) is above the min_level (%d) specified by a rule in "
                  "layer %s", state.level, rule.min_level, layer_name)
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        _rule_log("The NetState level (%d) is above the max_level (%d) specified by a rule in "
                  "layer %s", state.level, rule.max_level, layer_name)
        return False
    stages = set(state.stage)
    for s in rule.stage:
        if s not in stages:
            _rule_log("The NetState did not contain stage '%s' specified by a rule in layer %s",
                      s, layer_name)
            return False
    for s in rule.not_stage:
        if s in stages:
            _rule_log("The NetState contained a not_stage '%s' specified by a rule in layer %s",
                      s, layer_name)
            return False
    return True


def _included(state, lp):
    """Net::FilterNet's decision for one layer: it stops at the first exclude rule met or the
    first include rule met."""
    if len(lp.include) and len(lp.exclude):
        raise NetError("Layer '%s': specify either include rules or exclude rules; not both."
                       % lp.name)
    if len(lp.include) == 0:
        return not any(state_meets_rule(state, rule, lp.name) for rule in lp.exclude)
    return any(state_meets_rule(state, rule, lp.name) for rule in lp.include)


def filter_net(param):
    """Return a copy of ``param`` holding only the layers the net's state includes."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for lp in param.layer:
        if _included(param.state, lp):
            out.layer.add().CopyFrom(lp)
    return out


# -- Split insertion -------------------------------------------------------------------

def split_layer_name(layer_name, blob_name, blob_idx):
    return "%s_%s_%d_split" % (blob_name, layer_name, blob_idx)


def split_blob_name(layer_name, blob_name, blob_idx, split_idx):
    return "%s_%s_%d_split_%d" % (blob_name, layer_name, blob_idx, split_idx)


def insert_splits(param):
    """Caffe's InsertSplits: a Split layer after every top consumed more than once."""
    last_top = {}
    bottom_src = {}
    bottom_count = collections.Counter()
    loss_weight = {}
    split_idx = collections.Counter()
    names = {}
    for i, lp in enumerate(param.layer):
        names[i] = lp.name
        for j, b in enumerate(lp.bottom):
            if b not in last_top:
                raise NetError("Unknown bottom blob '%s' (layer '%s', bottom index %d)"
                               % (b, lp.name, j))
            bottom_src[(i, j)] = last_top[b]
            bottom_count[last_top[b]] += 1
        for j, t in enumerate(lp.top):
            last_top[t] = (i, j)
        for j in range(min(len(lp.loss_weight), len(lp.top))):
            tidx = last_top[lp.top[j]]
            loss_weight[tidx] = lp.loss_weight[j]
            if loss_weight[tidx]:
                bottom_count[tidx] += 1
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for i, src in enumerate(param.layer):
        lp = out.layer.add()
        lp.CopyFrom(src)
        for j in range(len(lp.bottom)):
            tidx = bottom_src[(i, j)]
            if bottom_count[tidx] > 1:
                lp.bottom[j] = split_blob_name(names[tidx[0]], lp.bottom[j], tidx[1], split_idx[tidx])
                split_idx[tidx] += 1
        for j in range(len(lp.top)):
            tidx = (i, j)
            n = bottom_count[tidx]
            if n > 1:
                w = loss_weight.get(tidx, 0.0)
                sp = out.layer.add()
                sp.name = split_layer_name(names[i], lp.top[j], j)
                sp.type = "Split"
                sp.bottom.append(lp.top[j])
                for k in range(n):
                    sp.top.append(split_blob_name(names[i], lp.top[j], j, k))
                    # ConfigureSplitLayer adds loss_weight entries only for a non-zero weight.
                    if w:
                        sp.loss_weight.append(w if k == 0 else 0.0)
                if w:
                    del lp.loss_weight[:]
                    split_idx[tidx] += 1
    return out


# -- what a net may hold ------------------------------------------------------------------

def check_policy(param, source=None):
    """Refuse, before any layer is built, what caffepy.security forbids: Python layers when
    they are not allowed (the error names the layer and the module it would import)."""
    if security.python_layers_allowed():
        return
    from ..layers.python_layer import refusal
    for lp in param.layer:
        if lp.type == "Python":
            raise refusal(lp, " in '%s'" % source if source else "")


# -- wiring one layer ----------------------------------------------------------------------

class Wiring:
    """What Net::Init keeps while it wires layers: the blobs not yet consumed (the net's outputs
    at the end) and the id of every named blob."""

    def __init__(self):
        self.available = set()
        self.blob_ids = {}


def check_propagate_down(lp):
    if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
        raise NetError("Layer '%s': propagate_down param must be specified either 0 or "
                       "bottom_size times (%d given, %d bottoms)"
                       % (lp.name, len(lp.propagate_down), len(lp.bottom)))


def append_bottom(net, lp, layer_id, bottom_id, wiring):
    """Net::AppendBottom: connect bottom ``bottom_id``; returns the blob id."""
    name = lp.bottom[bottom_id]
    if name not in wiring.available:
        raise NetError("Unknown bottom blob '%s' (layer '%s', bottom index %d)"
                       % (name, lp.name, bottom_id))
    blob_id = wiring.blob_ids[name]
    log.info("%s <- %s", lp.name, name)
    net.bottom_vecs[layer_id].append(net._blobs[blob_id])
    net.bottom_id_vecs[layer_id].append(blob_id)
    wiring.available.discard(name)
    need = net.blob_need_backward[blob_id]
    if len(lp.propagate_down):
        need = bool(lp.propagate_down[bottom_id])
    net.bottom_need_backward[layer_id].append(need)
    return blob_id


# Layers whose top has another shape than their bottom and is computed from all of it: run
# in place, the top's reshape would overwrite the input they still read. Caffe builds such
# nets and computes garbage; caffepy refuses them while building. AbsVal's backward reads
# the input's sign, and Caffe's AbsVal refuses in-place computation itself, as do its
# Flatten and Reshape (their top is a view of the bottom with another shape).
NO_IN_PLACE = frozenset(("Convolution", "Deconvolution", "Pooling", "Im2col", "InnerProduct",
                         "SPP", "AbsVal", "Flatten", "Reshape"))


def append_top(net, lp, layer_id, top_id, wiring=None):
    """Net::AppendTop: top ``top_id`` is bottom ``top_id`` when they share a name (in-place),
    else a new blob. Without ``wiring``, an anonymous top the layer asked for (AutoTopBlobs)."""
    name = lp.top[top_id] if top_id < len(lp.top) else AUTOMATIC_TOP
    if wiring is not None and top_id < len(lp.bottom) and lp.bottom[top_id] == name:
        if lp.type in NO_IN_PLACE:
            raise NetError("Layer '%s' (%s) does not allow in-place computation: top %d '%s' "
                           "is its bottom %d; give the top its own name"
                           % (lp.name, lp.type, top_id, name, top_id))
        log.info("%s -> %s (in-place)", lp.name, name)
        blob_id = wiring.blob_ids[name]
        net.top_vecs[layer_id].append(net._blobs[blob_id])
        net.top_id_vecs[layer_id].append(blob_id)
    elif wiring is not None and name in wiring.blob_ids:
        raise NetError("Top blob '%s' produced by multiple sources (layer '%s')" % (name, lp.name))
    else:
        log.info("%s -> %s", lp.name, name)
        blob = Blob()
        blob_id = len(net._blobs)
        net._blobs.append(blob)
        net.blob_names.append(name)
        net.blob_need_backward.append(False)
        if wiring is not None:
            wiring.blob_ids[name] = blob_id
        net.top_id_vecs[layer_id].append(blob_id)
        net.top_vecs[layer_id].append(blob)
    if wiring is not None:
        wiring.available.add(name)


class NetDataError(NetError, DataError):
    """A data layer's unreadable source met while building a net: a NetError as every
    construction error, and still the DataError naming the file."""


def _net_error(e, msg):
    return (NetDataError if isinstance(e, DataError) else NetError)(msg)


def create_net_layer(lp):
    """create_layer for Net::Init: a configuration error is a NetError naming the layer; an
    error raised by a Python layer's own code passes unchanged (it keeps its cause)."""
    try:
        return create_layer(lp, lp.phase)
    except NetError:
        raise
    except LayerError as e:
        raise _net_error(e, str(e)) from None


def setup_layer(net, layer_id, layer):
    """Layer::SetUp inside Net::Init, its errors naming the layer and, where one is at fault,
    the blob: a bottom left without a shape by an Input layer, a top whose shape a reshape
    refused (more than 32 axes, a negative dimension, too many bytes: the error's ``blob``)."""
    bottom, top = net.bottom_vecs[layer_id], net.top_vecs[layer_id]
    try:
        layer.setup(bottom, top)
    except CaffepyError as e:
        blob = getattr(e, "blob", None)
        if isinstance(blob, Blob) and not getattr(e, "names_layer", False):
            e.args = (_shape_message(net, layer_id, layer, blob, e),) + e.args[1:]
            e.names_layer = True
            raise
        if isinstance(e, LayerError) and not isinstance(e, NetError):
            raise _net_error(e, str(e) + _unshaped_input_hint(net, layer_id)) from None
        raise
    except (ValueError, OverflowError, MemoryError) as e:
        blob = _reshaped_blob(e.__traceback__)
        if blob is None:
            raise
        raise NetError(_shape_message(net, layer_id, layer, blob, e)) from None


def _shape_message(net, layer_id, layer, blob, e):
    names = [net.blob_names[i] for i, b in zip(net.top_id_vecs[layer_id], net.top_vecs[layer_id])
             if b is blob]
    names += [net.blob_names[i] for i, b in zip(net.bottom_id_vecs[layer_id],
                                                net.bottom_vecs[layer_id]) if b is blob]
    if names:
        what = "blob '%s'" % names[0]
    else:       # one of layer.blobs, or one the layer is making (a parameter, a buffer)
        index = next((i for i, b in enumerate(layer.blobs) if b is blob), None)
        what = ("parameter blob %d" % index if index is not None
                else "a new parameter or internal blob")
    return "Layer '%s' (%s): cannot shape %s: %s" % (layer.name, layer.type, what, e)


def _reshaped_blob(tb):
    """The Blob whose ``reshape`` raised the exception with traceback ``tb`` (or None)."""
    found = None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "reshape" and isinstance(frame.f_locals.get("self"), Blob):
            found = frame.f_locals["self"]
        tb = tb.tb_next
    return found


def _unshaped_input_hint(net, layer_id):
    """" (bottom 'x' has no shape: ...)" when a bottom of the layer was never shaped."""
    for blob_id, b in zip(net.bottom_id_vecs[layer_id], net.bottom_vecs[layer_id]):
        if b.shape == () and b.count == 0:
            name = net.blob_names[blob_id]
            producer = next((net.layers[i] for i in range(layer_id)
                             if blob_id in net.top_id_vecs[i]), None)
            if producer is not None and producer.type == "Input":
                return (" (bottom '%s' has no shape: Input layer '%s' gives no "
                        "input_param { shape { dim: ... } } for it)" % (name, producer.name))
            return " (bottom '%s' has no shape)" % name
    return ""


def param_need_backward(net_lp, layer):
    """Which param blobs of ``layer`` need a gradient: lr_mult != 0 in the net's own copy of the
    ParamSpecs (Caffe reads the net param here, the layer's own, possibly amended, param in
    AppendParam)."""
    n_blobs = len(layer.blobs)
    if len(net_lp.param) > n_blobs:
        raise NetError("Layer '%s': too many params specified for layer (%d ParamSpecs, "
                       "%d param blobs)" % (net_lp.name, len(net_lp.param), n_blobs))
    specs = list(net_lp.param) + [caffe_pb2.ParamSpec()] * (n_blobs - len(net_lp.param))
    return [spec.lr_mult != 0 for spec in specs]


# -- params and sharing ----------------------------------------------------------------------

# (ParamSpec field, has-flag table, value table) for the multipliers a sharer may set once.
_MULTIPLIERS = (("lr_mult", "has_params_lr", "params_lr"),
                ("decay_mult", "has_params_decay", "params_weight_decay"))


def append_param(net, layer_id, param_id):
    """Net::AppendParam: param ``param_id`` of layer ``layer_id`` is learnable (an owner) unless
    an earlier param has the same ParamSpec name; then it shares that owner's blob."""
    layer = net.layers[layer_id]
    lp = layer.layer_param
    spec = lp.param[param_id] if param_id < len(lp.param) else caffe_pb2.ParamSpec()
    pname = spec.name
    net.param_display_names.append(pname if pname else str(param_id))
    net_param_id = len(net._params)
    blob = layer.blobs[param_id]
    net._params.append(blob)
    net.param_id_vecs[layer_id].append(net_param_id)
    net.param_layer_indices.append((layer_id, param_id))
    if not pname or pname not in net.param_names_index:
        net.param_owners.append(-1)
        if pname:
            net.param_names_index[pname] = net_param_id
        net.learnable_param_ids.append(len(net.learnable_params))
        net.learnable_params.append(blob)
        for field, has, values in _MULTIPLIERS:
            getattr(net, has).append(spec.HasField(field))
            getattr(net, values).append(getattr(spec, field))
        return
    owner_id = net.param_names_index[pname]
    net.param_owners.append(owner_id)
    owner_layer_id, owner_param_id = net.param_layer_indices[owner_id]
    owner_name = net.layer_names[owner_layer_id]
    log.info("Sharing parameters '%s' owned by layer '%s', param index %d",
             pname, owner_name, owner_param_id)
    _check_share_shape(spec, pname, owner_name, net.layers[owner_layer_id].blobs[owner_param_id],
                       lp.name, blob)
    lid = net.learnable_param_ids[owner_id]
    net.learnable_param_ids.append(lid)
    _merge_multipliers(net, lid, spec, pname, lp.name)


def _check_share_shape(spec, pname, owner_name, owner_blob, sharer_name, blob):
    """STRICT sharing needs equal shapes, PERMISSIVE only equal counts."""
    if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
        if blob.count == owner_blob.count:
            return
        what, expects = "count", "shape is"
    elif blob.shape == owner_blob.shape:
        return
    else:
        what, expects = "shape", "expects shape"
    raise NetError("Cannot share param '%s' owned by layer '%s' with layer '%s'; %s mismatch. "
                   "Owner layer param shape is %s; sharing layer %s %s"
                   % (pname, owner_name, sharer_name, what, owner_blob.shape_string(), expects,
                      blob.shape_string()))


def _merge_multipliers(net, lid, spec, pname, layer_name):
    """A sharer's lr_mult/decay_mult: set on the owner when the owner left it unset, else it
    must equal the owner's."""
    for field, has, values in _MULTIPLIERS:
        if not spec.HasField(field):
            continue
        value = getattr(spec, field)
        if getattr(net, has)[lid]:
            if value != getattr(net, values)[lid]:
                raise NetError("Shared param '%s' has mismatched %s (layer '%s')"
                               % (pname, field, layer_name))
        else:
            getattr(net, has)[lid] = True
            getattr(net, values)[lid] = value


def share_weights(net):
    """Net::ShareWeights: every sharer uses its owner's data and diff."""
    for i, owner in enumerate(net.param_owners):
        if owner >= 0:
            net._params[i].share_data(net._params[owner])
            net._params[i].share_diff(net._params[owner])


# -- which layers run backward -------------------------------------------------------------

def prune_backward(net):
    """Walk the layers backwards; a layer needs backward only when one of its tops reaches a
    loss and some top still needs a gradient. Logs Caffe's "needs backward computation" lines."""
    under_loss, skip_backp = set(), set()
    for layer_id in range(len(net.layers) - 1, -1, -1):
        contributes = False
        skip_propagate = True
        layer = net.layers[layer_id]
        for top_id, blob_id in enumerate(net.top_id_vecs[layer_id]):
            name = net.blob_names[blob_id]
            if layer.loss(top_id) or name in under_loss:
                contributes = True
            if name not in skip_backp:
                skip_propagate = False
            if contributes and not skip_propagate:
                break
        if net.layer_need_backward[layer_id] and skip_propagate:
            net.layer_need_backward[layer_id] = False
            net.bottom_need_backward[layer_id] = [False] * len(net.bottom_vecs[layer_id])
        if not contributes:
            net.layer_need_backward[layer_id] = False
        log.info("%s %s backward computation.", net.layer_names[layer_id],
                 "needs" if net.layer_need_backward[layer_id] else "does not need")
        for bottom_id, blob_id in enumerate(net.bottom_id_vecs[layer_id]):
            name = net.blob_names[blob_id]
            if contributes:
                under_loss.add(name)
            else:
                net.bottom_need_backward[layer_id][bottom_id] = False
            if not net.bottom_need_backward[layer_id][bottom_id]:
                skip_backp.add(name)


def force_backward(net):
    """NetParameter.force_backward: every layer runs backward, every bottom its layer allows
    (AllowForceBackward) gets a gradient, every param propagates."""
    for layer_id, layer in enumerate(net.layers):
        net.layer_need_backward[layer_id] = True
        for bottom_id, blob_id in enumerate(net.bottom_id_vecs[layer_id]):
            nb = net.bottom_need_backward[layer_id][bottom_id] or \
                layer.allow_force_backward(bottom_id)
            net.bottom_need_backward[layer_id][bottom_id] = nb
            net.blob_need_backward[blob_id] = net.blob_need_backward[blob_id] or nb
        for param_id in range(len(layer.blobs)):
            layer.set_param_propagate_down(param_id, True)


def index_names(net):
    """blob and layer name -> index. As std::map assignment in Net::Init, with duplicate layer
    names the last one wins (layer_by_name, HDF5 weight loading); CopyTrainedLayersFrom(proto)
    and ShareTrainedLayersWith search layer_names linearly and take the first."""
    net.blob_names_index = {n: i for i, n in enumerate(net.blob_names) if n != AUTOMATIC_TOP}
    net.layer_names_index = {n: i for i, n in enumerate(net.layer_names)}
