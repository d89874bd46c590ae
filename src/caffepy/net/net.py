"""Net: a DAG of layers built from a NetParameter, exactly as Caffe's Net::Init builds it.

Construction order (Caffe's): filter layers by NetState rules -> insert Split layers
for blobs consumed more than once -> for each layer: append bottoms/tops (in-place
when top j == bottom j), SetUp, record loss weights, decide need_backward, append
params (owners and sharers by ParamSpec name) -> prune backward passes that do not
reach a loss -> force_backward -> outputs (alphabetical) -> share weights.
"""
import collections
import logging
import math
import os

import numpy as np

from . import backend
from .blob import Blob
from .layer import LayerError, create_layer
from .proto import caffe_pb2
from .proto import ProtoError, blobproto_shape, blobproto_to_array, read_binary, read_text, \
    set_blobproto, write_binary

from .atomic import atomic_path
from .errors import NetError  # noqa: F401

log = logging.getLogger("caffepy")


# -- NetState filtering and split insertion (free functions, as in Caffe) ----------

_rule_log = log.debug


def state_meets_rule(state, rule, layer_name=""):
    # Net::StateMeetsRule, with its log lines (wording, including "is above the min_level",
    # as in Caffe). Caffe logs them at INFO; they are DEBUG here for now because
    # tests/test_cli.py::test_test_command_without_stage_has_no_sum asserts that no log
    # message of `caffe test` mentions the filtered-out layer.
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


def filter_net(param):
    """Return a copy of ``param`` holding only the layers the net's state includes."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    state = param.state
    for lp in param.layer:
        if len(lp.include) and len(lp.exclude):
            raise NetError("Layer '%s': specify either include rules or exclude rules; not both."
                           % lp.name)
        # Net::FilterNet stops at the first exclude rule met / include rule met.
        included = len(lp.include) == 0
        for rule in lp.exclude:
            if not included:
                break
            if state_meets_rule(state, rule, lp.name):
                included = False
        for rule in lp.include:
            if included:
                break
            if state_meets_rule(state, rule, lp.name):
                included = True
        if included:
            out.layer.add().CopyFrom(lp)
    return out


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


def load_net_param(source):
    """A NetParameter from a path (text prototxt, upgraded), a NetParameter, or prototxt text."""
    from .proto import upgrade
    if isinstance(source, caffe_pb2.NetParameter):
        param = caffe_pb2.NetParameter()
        param.CopyFrom(source)
        upgrade.upgrade_net_as_needed(param, "<NetParameter>")
        return param
    if isinstance(source, (str, os.PathLike)) and os.path.exists(source):
        return upgrade.read_net_param(str(source))
    if isinstance(source, str) and ("{" in source or "\n" in source):
        from .proto import parse_text
        param = parse_text(source, caffe_pb2.NetParameter(), "<string>")
        upgrade.upgrade_net_as_needed(param, "<string>")
        return param
    raise NetError("Net definition file '%s' does not exist" % (source,))


class Net:
    """A Caffe net. ``Net(prototxt, phase, level=0, stages=None, weights=None)``.

    The legacy pycaffe order ``Net(prototxt, weights, phase)`` is accepted too.
    """

    def __init__(self, network, phase=None, level=0, stages=None, weights=None, *args):
        # Legacy pycaffe: Net(file, weights_file, phase)
        if isinstance(phase, str) and (isinstance(level, int) and level in (0, 1) and args == ()
                                       and not isinstance(network, caffe_pb2.NetParameter)):
            weights, phase, level = phase, level, 0
        param = load_net_param(network)
        if not isinstance(network, caffe_pb2.NetParameter) or phase is not None:
            if phase is None:
                phase = param.state.phase if param.HasField("state") else caffe_pb2.TEST
            param.state.phase = phase
            if stages:
                param.state.stage.extend(list(stages))
            param.state.level = int(level)
        self._source = network if isinstance(network, (str, os.PathLike)) else None
        self._init(param)
        if weights is not None:
            for w in (weights.split(",") if isinstance(weights, str) else weights):
                self.copy_from(w)

    # -- construction ------------------------------------------------------------
    def _init(self, in_param):
        self.phase = in_param.state.phase
        filtered = filter_net(in_param)
        if log.isEnabledFor(logging.INFO):
            from google.protobuf import text_format
            log.info("Initializing net from parameters: \n%s",
                     text_format.MessageToString(filtered))
        param = insert_splits(filtered)
        self.name = param.name
        self.param = param
        self.layers = []
        self.layer_names = []
        self._blobs = []              # every blob, by id
        self.blob_names = []
        self.blob_need_backward = []
        self.bottom_vecs, self.bottom_id_vecs, self.bottom_need_backward = [], [], []
        self.top_vecs, self.top_id_vecs = [], []
        self.layer_need_backward = []
        self.blob_loss_weights = []
        self._params = []              # every param blob (owners and sharers)
        self.param_id_vecs = []
        self.param_layer_indices = []
        self.param_owners = []
        self.param_display_names = []
        self.param_names_index = {}
        self.learnable_params = []
        self.learnable_param_ids = []
        self.params_lr = []
        self.params_weight_decay = []
        self.has_params_lr = []
        self.has_params_decay = []
        self.input_blob_indices = []
        self.debug_info = param.debug_info
        self.before_forward, self.after_forward = _Hooks(), _Hooks()
        self.before_backward, self.after_backward = _Hooks(), _Hooks()

        blob_name_to_idx = {}
        available = set()
        memory_used = 0
        for layer_id, net_lp in enumerate(param.layer):
            if len(net_lp.propagate_down) and len(net_lp.propagate_down) != len(net_lp.bottom):
                raise NetError("Layer '%s': propagate_down param must be specified either 0 or "
                               "bottom_size times (%d given, %d bottoms)"
                               % (net_lp.name, len(net_lp.propagate_down), len(net_lp.bottom)))
            if not net_lp.HasField("phase"):
                net_lp.phase = self.phase
            lp = caffe_pb2.LayerParameter()
            lp.CopyFrom(net_lp)
            try:
                layer = create_layer(lp, lp.phase)
            except LayerError as e:
                raise NetError(str(e)) from None
            self.layers.append(layer)
            self.layer_names.append(lp.name)
            log.info("Creating Layer %s", lp.name)
            self.bottom_vecs.append([])
            self.bottom_id_vecs.append([])
            self.bottom_need_backward.append([])
            self.top_vecs.append([])
            self.top_id_vecs.append([])
            self.param_id_vecs.append([])
            need_backward = False
            for bottom_id in range(len(lp.bottom)):
                blob_id = self._append_bottom(lp, layer_id, bottom_id, available, blob_name_to_idx)
                need_backward |= self.blob_need_backward[blob_id]
            for top_id in range(len(lp.top)):
                self._append_top(lp, layer_id, top_id, available, blob_name_to_idx)
                if lp.type == "Input":
                    self.input_blob_indices.append(self.top_id_vecs[layer_id][-1])
            if layer.auto_top_blobs:
                needed = max(layer.min_top_blobs, layer.exact_num_top_blobs)
                for top_id in range(len(lp.top), needed):
                    self._append_top(lp, layer_id, top_id, None, None)
            try:
                layer.setup(self.bottom_vecs[layer_id], self.top_vecs[layer_id])
            except LayerError as e:
                raise NetError(str(e)) from None
            log.info("Setting up %s", lp.name)       # logged after SetUp, as in Net::Init
            for top_id, blob_id in enumerate(self.top_id_vecs[layer_id]):
                while len(self.blob_loss_weights) <= blob_id:
                    self.blob_loss_weights.append(0.0)
                self.blob_loss_weights[blob_id] = layer.loss(top_id)
                t = self.top_vecs[layer_id][top_id]
                log.info("Top shape: %s", t.shape_string())
                if layer.loss(top_id):
                    log.info("    with loss weight %g", layer.loss(top_id))
                memory_used += t.count
            log.info("Memory required for data: %d", memory_used * 4)
            # need_backward from the net's copy of the ParamSpecs (Caffe reads the net param
            # here and the layer's own, possibly amended, param in AppendParam).
            n_blobs = len(layer.blobs)
            if len(net_lp.param) > n_blobs:
                raise NetError("Layer '%s': too many params specified for layer (%d ParamSpecs, "
                               "%d param blobs)" % (lp.name, len(net_lp.param), n_blobs))
            layer.param_propagate_down = [False] * n_blobs
            for param_id in range(n_blobs):
                spec = net_lp.param[param_id] if param_id < len(net_lp.param) else caffe_pb2.ParamSpec()
                pnb = spec.lr_mult != 0
                need_backward |= pnb
                layer.param_propagate_down[param_id] = pnb
            for param_id in range(n_blobs):
                self._append_param(layer_id, param_id)
            self.layer_need_backward.append(need_backward)
            if need_backward:
                for blob_id in self.top_id_vecs[layer_id]:
                    self.blob_need_backward[blob_id] = True

        # Prune backward passes that do not reach a loss.
        under_loss, skip_backp = set(), set()
        for layer_id in range(len(self.layers) - 1, -1, -1):
            contributes = False
            skip_propagate = True
            layer = self.layers[layer_id]
            for top_id, blob_id in enumerate(self.top_id_vecs[layer_id]):
                name = self.blob_names[blob_id]
                if layer.loss(top_id) or name in under_loss:
                    contributes = True
                if name not in skip_backp:
                    skip_propagate = False
                if contributes and not skip_propagate:
                    break
            if self.layer_need_backward[layer_id] and skip_propagate:
                self.layer_need_backward[layer_id] = False
                self.bottom_need_backward[layer_id] = [False] * len(self.bottom_vecs[layer_id])
            if not contributes:
                self.layer_need_backward[layer_id] = False
            log.info("%s %s backward computation.", self.layer_names[layer_id],
                     "needs" if self.layer_need_backward[layer_id] else "does not need")
            for bottom_id, blob_id in enumerate(self.bottom_id_vecs[layer_id]):
                name = self.blob_names[blob_id]
                if contributes:
                    under_loss.add(name)
                else:
                    self.bottom_need_backward[layer_id][bottom_id] = False
                if not self.bottom_need_backward[layer_id][bottom_id]:
                    skip_backp.add(name)
        if param.force_backward:
            for layer_id, layer in enumerate(self.layers):
                self.layer_need_backward[layer_id] = True
                for bottom_id, blob_id in enumerate(self.bottom_id_vecs[layer_id]):
                    nb = self.bottom_need_backward[layer_id][bottom_id] or \
                        layer.allow_force_backward(bottom_id)
                    self.bottom_need_backward[layer_id][bottom_id] = nb
                    self.blob_need_backward[blob_id] = self.blob_need_backward[blob_id] or nb
                layer.param_propagate_down = [True] * len(layer.blobs)
        self.output_blob_indices = [blob_name_to_idx[n] for n in sorted(available)]
        for n in sorted(available):
            log.info("This network produces output %s", n)
        self.blob_names_index = {}
        for i, n in enumerate(self.blob_names):
            if n != "(automatic)":
                self.blob_names_index[n] = i
        # std::map assignment in Net::Init: with duplicate layer names the last one wins
        # (layer_by_name, HDF5 weight loading); CopyTrainedLayersFrom(proto) and
        # ShareTrainedLayersWith search layer_names_ linearly and take the first.
        self.layer_names_index = {}
        for i, n in enumerate(self.layer_names):
            self.layer_names_index[n] = i
        self._share_weights()
        log.info("Network initialization done.")

    def _append_top(self, lp, layer_id, top_id, available, name_to_idx):
        name = lp.top[top_id] if top_id < len(lp.top) else "(automatic)"
        if name_to_idx is not None and top_id < len(lp.bottom) and lp.bottom[top_id] == name:
            log.info("%s -> %s (in-place)", lp.name, name)
            blob_id = name_to_idx[name]
            self.top_vecs[layer_id].append(self._blobs[blob_id])
            self.top_id_vecs[layer_id].append(blob_id)
        elif name_to_idx is not None and name in name_to_idx:
            raise NetError("Top blob '%s' produced by multiple sources (layer '%s')" % (name, lp.name))
        else:
            log.info("%s -> %s", lp.name, name)
            blob = Blob()
            blob_id = len(self._blobs)
            self._blobs.append(blob)
            self.blob_names.append(name)
            self.blob_need_backward.append(False)
            if name_to_idx is not None:
                name_to_idx[name] = blob_id
            self.top_id_vecs[layer_id].append(blob_id)
            self.top_vecs[layer_id].append(blob)
        if available is not None:
            available.add(name)

    def _append_bottom(self, lp, layer_id, bottom_id, available, name_to_idx):
        name = lp.bottom[bottom_id]
        if name not in available:
            raise NetError("Unknown bottom blob '%s' (layer '%s', bottom index %d)"
                           % (name, lp.name, bottom_id))
        blob_id = name_to_idx[name]
        log.info("%s <- %s", lp.name, name)
        self.bottom_vecs[layer_id].append(self._blobs[blob_id])
        self.bottom_id_vecs[layer_id].append(blob_id)
        available.discard(name)
        need = self.blob_need_backward[blob_id]
        if len(lp.propagate_down):
            need = bool(lp.propagate_down[bottom_id])
        self.bottom_need_backward[layer_id].append(need)
        return blob_id

    def _append_param(self, layer_id, param_id):
        layer = self.layers[layer_id]
        lp = layer.layer_param
        spec = lp.param[param_id] if param_id < len(lp.param) else caffe_pb2.ParamSpec()
        pname = spec.name
        self.param_display_names.append(pname if pname else str(param_id))
        net_param_id = len(self._params)
        blob = layer.blobs[param_id]
        self._params.append(blob)
        self.param_id_vecs[layer_id].append(net_param_id)
        self.param_layer_indices.append((layer_id, param_id))
        if not pname or pname not in self.param_names_index:
            self.param_owners.append(-1)
            if pname:
                self.param_names_index[pname] = net_param_id
            self.learnable_param_ids.append(len(self.learnable_params))
            self.learnable_params.append(blob)
            self.has_params_lr.append(spec.HasField("lr_mult"))
            self.has_params_decay.append(spec.HasField("decay_mult"))
            self.params_lr.append(spec.lr_mult)
            self.params_weight_decay.append(spec.decay_mult)
            return
        owner_id = self.param_names_index[pname]
        self.param_owners.append(owner_id)
        owner_layer_id, owner_param_id = self.param_layer_indices[owner_id]
        log.info("Sharing parameters '%s' owned by layer '%s', param index %d",
                 pname, self.layer_names[owner_layer_id], owner_param_id)
        owner_blob = self.layers[owner_layer_id].blobs[owner_param_id]
        if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
            if blob.count != owner_blob.count:
                raise NetError("Cannot share param '%s' owned by layer '%s' with layer '%s'; count "
                               "mismatch. Owner layer param shape is %s; sharing layer shape is %s"
                               % (pname, self.layer_names[owner_layer_id], lp.name,
                                  owner_blob.shape_string(), blob.shape_string()))
        elif blob.shape != owner_blob.shape:
            raise NetError("Cannot share param '%s' owned by layer '%s' with layer '%s'; shape "
                           "mismatch. Owner layer param shape is %s; sharing layer expects shape %s"
                           % (pname, self.layer_names[owner_layer_id], lp.name,
                              owner_blob.shape_string(), blob.shape_string()))
        lid = self.learnable_param_ids[owner_id]
        self.learnable_param_ids.append(lid)
        if spec.HasField("lr_mult"):
            if self.has_params_lr[lid]:
                if spec.lr_mult != self.params_lr[lid]:
                    raise NetError("Shared param '%s' has mismatched lr_mult (layer '%s')"
                                   % (pname, lp.name))
            else:
                self.has_params_lr[lid] = True
                self.params_lr[lid] = spec.lr_mult
        if spec.HasField("decay_mult"):
            if self.has_params_decay[lid]:
                if spec.decay_mult != self.params_weight_decay[lid]:
                    raise NetError("Shared param '%s' has mismatched decay_mult (layer '%s')"
                                   % (pname, lp.name))
            else:
                self.has_params_decay[lid] = True
                self.params_weight_decay[lid] = spec.decay_mult

    def learnable_param_info(self):
        """For each learnable param id, where its owner blob lives: a tuple (layer index,
        layer name, blob index, the layer's ParamSpec for that blob or None)."""
        info = []
        for net_param_id, owner in enumerate(self.param_owners):
            if owner == -1:
                layer_id, blob_id = self.param_layer_indices[net_param_id]
                specs = self.layers[layer_id].layer_param.param
                spec = specs[blob_id] if blob_id < len(specs) else None
                info.append((layer_id, self.layer_names[layer_id], blob_id, spec))
        return info

    def _share_weights(self):
        for i, owner in enumerate(self.param_owners):
            if owner < 0:
                continue
            self._params[i].share_data(self._params[owner])
            self._params[i].share_diff(self._params[owner])

    # -- running -------------------------------------------------------------------
    def forward_from_to(self, start, end):
        if start < 0 or end >= len(self.layers):
            raise IndexError("layer range [%d, %d] outside [0, %d)" % (start, end, len(self.layers)))
        loss = 0.0
        for i in range(start, end + 1):
            for cb in self.before_forward:
                cb(i)
            # Net::ForwardFromTo sums the layer losses in Dtype (float32).
            loss = float(np.float32(loss + self.layers[i].forward(self.bottom_vecs[i],
                                                                  self.top_vecs[i])))
            if self.debug_info:
                self._forward_debug_info(i)
            for cb in self.after_forward:
                cb(i)
        return loss

    def forward_prefilled(self):
        return self.forward_from_to(0, len(self.layers) - 1)

    def backward_from_to(self, start, end):
        if end < 0 or start >= len(self.layers):
            raise IndexError("layer range [%d, %d] outside [0, %d)" % (start, end, len(self.layers)))
        for i in range(start, end - 1, -1):
            for cb in self.before_backward:
                cb(i)
            if self.layer_need_backward[i]:
                self.layers[i].backward(self.top_vecs[i], self.bottom_need_backward[i],
                                        self.bottom_vecs[i])
                if self.debug_info:
                    self._backward_debug_info(i)
            for cb in self.after_backward:
                cb(i)

    def forward_backward(self):
        loss = self.forward_prefilled()
        self._backward_all()
        return loss

    def _backward_all(self):
        self.backward_from_to(len(self.layers) - 1, 0)
        if self.debug_info:
            asum_data = asum_diff = sumsq_data = sumsq_diff = 0.0
            for p in self.learnable_params:
                asum_data += p.asum_data()
                asum_diff += p.asum_diff()
                sumsq_data += p.sumsq_data()
                sumsq_diff += p.sumsq_diff()
            log.error("    [Backward] All net params (data, diff): L1 norm = (%g, %g); "
                      "L2 norm = (%g, %g)", asum_data, asum_diff, math.sqrt(sumsq_data),
                      math.sqrt(sumsq_diff))

    def clear_param_diffs(self):
        for p in self.learnable_params:
            p.flat_diff[...] = 0

    def update(self):
        for p in self.learnable_params:
            p.update()

    def reshape(self):
        for i, layer in enumerate(self.layers):
            layer.reshape(self.bottom_vecs[i], self.top_vecs[i])

    def _forward_debug_info(self, i):
        for top_id, blob_id in enumerate(self.top_id_vecs[i]):
            b = self._blobs[blob_id]
            log.info("    [Forward] Layer %s, top blob %s data: %g", self.layer_names[i],
                     self.blob_names[blob_id], b.asum_data() / max(b.count, 1))
        for j, net_param_id in enumerate(self.param_id_vecs[i]):
            b = self.layers[i].blobs[j]
            log.info("    [Forward] Layer %s, param blob %s data: %g", self.layer_names[i],
                     self.param_display_names[net_param_id], b.asum_data() / max(b.count, 1))

    def _backward_debug_info(self, i):
        for bottom_id, blob_id in enumerate(self.bottom_id_vecs[i]):
            if not self.bottom_need_backward[i][bottom_id]:
                continue
            b = self._blobs[blob_id]
            log.info("    [Backward] Layer %s, bottom blob %s diff: %g", self.layer_names[i],
                     self.blob_names[blob_id], b.asum_diff() / max(b.count, 1))
        for j, b in enumerate(self.layers[i].blobs):
            if not self.layers[i].param_propagate(j):
                continue
            log.info("    [Backward] Layer %s, param blob %d diff: %g", self.layer_names[i], j,
                     b.asum_diff() / max(b.count, 1))

    # -- weights ---------------------------------------------------------------------
    def copy_trained_layers_from(self, source):
        """Copy weights by layer name from a NetParameter, a .caffemodel or a .caffemodel.h5."""
        if isinstance(source, caffe_pb2.NetParameter):
            return self._copy_from_proto(source, "<NetParameter>")
        path = str(source)
        if not os.path.exists(path):
            raise NetError("Cannot copy weights: file '%s' does not exist" % path)
        if _is_hdf5(path):
            return self._copy_from_hdf5(path)
        from .proto import upgrade
        param = upgrade.read_net_param_binary(path)
        return self._copy_from_proto(param, path)

    copy_from = copy_trained_layers_from

    def _copy_from_proto(self, param, source):
        for src in param.layer:
            name = src.name
            if name not in self.layer_names_index:
                log.info("Ignoring source layer %s", name)
                continue
            tid = self.layer_names.index(name)       # linear search: the first such layer
            targets = self.layers[tid].blobs
            if len(targets) != len(src.blobs):
                raise NetError("%s: incompatible number of blobs for layer '%s' (source has %d, "
                               "net has %d)" % (source, name, len(src.blobs), len(targets)))
            for j, (t, bp) in enumerate(zip(targets, src.blobs)):
                sshape = blobproto_shape(bp)
                if not _shape_equals(t.shape, bp):
                    raise NetError("%s: cannot copy param %d weights from layer '%s'; shape "
                                   "mismatch. Source param shape is %s; target param shape is %s. "
                                   "To learn this layer's parameters from scratch rather than "
                                   "copying from a saved net, rename the layer."
                                   % (source, j, name, " ".join(map(str, sshape)),
                                      " ".join(map(str, t.shape))))
                t.data[...] = backend.xp().asarray(blobproto_to_array(bp).reshape(t.shape))
                # Blob::FromProto(proto, reshape=false) also copies a stored diff.
                if len(bp.double_diff) or len(bp.diff):
                    t.diff[...] = backend.xp().asarray(
                        blobproto_to_array(bp, return_diff=True).reshape(t.shape))

    def _copy_from_hdf5(self, path):
        import h5py
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise NetError("%s: not a caffemodel.h5 (no /data group)" % path)
            data = f["data"]
            for name in data:
                if name not in self.layer_names_index:
                    log.info("Ignoring source layer %s", name)
                    continue
                tid = self.layer_names_index[name]
                targets = self.layers[tid].blobs
                grp = data[name]
                if len(grp) > len(targets):
                    raise NetError("%s: incompatible number of blobs for layer '%s'" % (path, name))
                for j, t in enumerate(targets):
                    key = str(j)
                    if key not in grp:
                        if self.param_owners[self.param_id_vecs[tid][j]] != -1:
                            continue
                        raise NetError("%s: incompatible number of blobs for layer '%s' "
                                       "(param %d missing)" % (path, name, j))
                    arr = np.asarray(grp[key], dtype=np.float32)
                    # hdf5_load_nd_dataset(..., reshape=false): the dims must equal the shape.
                    if tuple(arr.shape) != tuple(t.shape):
                        raise NetError("%s: cannot load param %d of layer '%s' from hdf5; shape "
                                       "mismatch. Source shape is %s; target shape is %s"
                                       % (path, j, name, " ".join(map(str, arr.shape)),
                                          t.shape_string()))
                    t.data[...] = backend.xp().asarray(arr)

    def share_trained_layers_with(self, other):
        for i, src_layer in enumerate(other.layers):
            name = other.layer_names[i]
            if name not in self.layer_names_index:
                log.info("Ignoring source layer %s", name)
                continue
            targets = self.layers[self.layer_names.index(name)].blobs
            if len(targets) != len(src_layer.blobs):
                raise NetError("Incompatible number of blobs for layer '%s'" % name)
            for t, s in zip(targets, src_layer.blobs):
                if t.shape != s.shape:
                    raise NetError("Cannot share param weights from layer '%s'; shape mismatch. "
                                   "Source param shape is %s; target param shape is %s"
                                   % (name, s.shape_string(), t.shape_string()))
                t.share_data(s)

    share_with = share_trained_layers_with

    def to_proto(self, write_diff=False):
        param = caffe_pb2.NetParameter()
        param.name = self.name
        for layer in self.layers:
            lp = param.layer.add()
            lp.CopyFrom(layer.layer_param)
            del lp.blobs[:]
            for b in layer.blobs:
                set_blobproto(lp.blobs.add(), backend.to_numpy(b.data),
                              backend.to_numpy(b.diff) if write_diff else None)
        return param

    def save(self, path, write_diff=False):
        """Write a binary .caffemodel (atomically)."""
        write_binary(self.to_proto(write_diff), path)

    def save_hdf5(self, path, write_diff=False):
        """Write the HDF5 form (/data/{layer}/{j}, owners only; /diff for all), atomically."""
        import h5py
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            diff = f.create_group("diff") if write_diff else None
            for i, layer in enumerate(self.layers):
                name = self.layer_names[i]
                gd = data.create_group(name)
                gf = diff.create_group(name) if write_diff else None
                for j, b in enumerate(layer.blobs):
                    if self.param_owners[self.param_id_vecs[i][j]] == -1:
                        gd.create_dataset(str(j), data=backend.to_numpy(b.data))
                    if write_diff:
                        gf.create_dataset(str(j), data=backend.to_numpy(b.diff))

    def load_hdf5(self, path):
        self._copy_from_hdf5(path)

    # -- pycaffe-style accessors ---------------------------------------------------------
    # Built once, on first use, as pycaffe does (the net's structure is fixed after Init).
    @property
    def blobs(self):
        """pycaffe: blob name -> Blob, in creation order (in-place tops add no entry)."""
        if "_blobs_dict" not in self.__dict__:
            self._blobs_dict = collections.OrderedDict(
                (n, self._blobs[i]) for i, n in enumerate(self.blob_names) if n != "(automatic)")
        return self._blobs_dict

    @property
    def layer_dict(self):
        if "_layer_dict" not in self.__dict__:
            self._layer_dict = collections.OrderedDict(zip(self.layer_names, self.layers))
        return self._layer_dict

    @property
    def params(self):
        """pycaffe: layer name -> list of param Blobs, for layers that have params."""
        if "_params_dict" not in self.__dict__:
            self._params_dict = collections.OrderedDict(
                (self.layer_names[i], list(l.blobs)) for i, l in enumerate(self.layers)
                if len(l.blobs))
        return self._params_dict

    @property
    def _layer_names(self):
        return list(self.layer_names)

    @property
    def _blob_names(self):
        return list(self.blob_names)

    @property
    def inputs(self):
        return [self.blob_names[i] for i in self.input_blob_indices]

    @property
    def outputs(self):
        return [self.blob_names[i] for i in self.output_blob_indices]

    @property
    def output_blobs(self):
        return [self._blobs[i] for i in self.output_blob_indices]

    @property
    def input_blobs(self):
        return [self._blobs[i] for i in self.input_blob_indices]

    @property
    def top_names(self):
        return collections.OrderedDict((self.layer_names[i], [self.blob_names[b] for b in ids])
                                       for i, ids in enumerate(self.top_id_vecs))

    @property
    def bottom_names(self):
        return collections.OrderedDict((self.layer_names[i], [self.blob_names[b] for b in ids])
                                       for i, ids in enumerate(self.bottom_id_vecs))

    def blob_by_name(self, name):
        if name not in self.blob_names_index:
            raise KeyError("Unknown blob name '%s'" % name)
        return self._blobs[self.blob_names_index[name]]

    def layer_by_name(self, name):
        if name not in self.layer_names_index:
            raise KeyError("Unknown layer name '%s'" % name)
        return self.layers[self.layer_names_index[name]]

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """pycaffe's Net.forward: copy kwargs into the inputs, run [start..end], return outputs."""
        blobs = list(blobs or [])
        start_ind = self.layer_names.index(start) if start is not None else 0
        if end is not None:
            end_ind = self.layer_names.index(end)
            outputs = set(self.top_names[end] + blobs)
        else:
            end_ind = len(self.layers) - 1
            outputs = set(self.outputs + blobs)
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise NetError("Input blob arguments %s do not match net inputs %s"
                               % (sorted(kwargs), self.inputs))
            for name, arr in kwargs.items():
                b = self.blob_by_name(name)
                if np.shape(arr)[0] != b.shape[0]:
                    raise NetError("Input '%s' is not batch sized (%d vs %d)"
                                   % (name, np.shape(arr)[0], b.shape[0]))
                b.data[...] = backend.xp().asarray(arr)
        self.forward_from_to(start_ind, end_ind)
        return {o: self.blob_by_name(o).data for o in outputs}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """pycaffe's Net.backward: copy kwargs into output diffs, run [start..end] backwards."""
        diffs = list(diffs or [])
        start_ind = self.layer_names.index(start) if start is not None else len(self.layers) - 1
        if end is not None:
            end_ind = self.layer_names.index(end)
            outputs = set(self.bottom_names[end] + diffs)
        else:
            end_ind = 0
            outputs = set(self.inputs + diffs)
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise NetError("Top diff arguments %s do not match net outputs %s"
                               % (sorted(kwargs), self.outputs))
            for name, arr in kwargs.items():
                b = self.blob_by_name(name)
                if np.shape(arr)[0] != b.shape[0]:
                    raise NetError("Diff '%s' is not batch sized" % name)
                b.diff[...] = backend.xp().asarray(arr)
        self.backward_from_to(start_ind, end_ind)
        return {o: self.blob_by_name(o).diff for o in outputs}

    def _batches(self, arrays):
        """pycaffe's Net._batch: split ``arrays`` into batch-sized dicts, zero-padding the last."""
        num = len(next(iter(arrays.values())))
        batch_size = next(iter(self.blobs.values())).shape[0]
        full, remainder = divmod(num, batch_size)
        for b in range(full):
            i = b * batch_size
            yield {name: a[i:i + batch_size] for name, a in arrays.items()}
        if remainder:
            yield {name: np.concatenate([a[-remainder:],
                                         np.zeros((batch_size - remainder,) + a.shape[1:],
                                                  dtype=np.float32)])
                   for name, a in arrays.items()}

    @staticmethod
    def _collect(store, results):
        for name, arr in results.items():
            arr = backend.to_numpy(arr)
            if arr.ndim == 0:
                store[name].append(arr.copy())
            else:
                store[name].extend(arr.copy())

    def forward_all(self, blobs=None, **kwargs):
        """pycaffe: forward ``kwargs`` (whole data sets, any length) batch by batch; returns
        {output: array} with the padding of the last batch removed."""
        outs = {o: [] for o in set(self.outputs + list(blobs or []))}
        for batch in self._batches(kwargs):
            self._collect(outs, self.forward(blobs=blobs, **batch))
        outs = {o: np.asarray(v) for o, v in outs.items()}
        pad = len(next(iter(outs.values()))) - len(next(iter(kwargs.values())))
        if pad > 0:
            outs = {o: v[:-pad] for o, v in outs.items()}
        return outs

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """pycaffe: forward the inputs and backward the output diffs given in ``kwargs``, batch
        by batch; returns ({output: array}, {input diff: array}) without the padding."""
        import itertools
        outs = {o: [] for o in set(self.outputs + list(blobs or []))}
        grads = {d: [] for d in set(self.inputs + list(diffs or []))}
        fwd = self._batches({k: kwargs[k] for k in self.inputs if k in kwargs})
        bwd = self._batches({k: kwargs[k] for k in self.outputs if k in kwargs}) \
            if any(k in kwargs for k in self.outputs) else iter(())
        for fb, bb in itertools.zip_longest(fwd, bwd, fillvalue={}):
            self._collect(outs, self.forward(blobs=blobs, **fb))
            self._collect(grads, self.backward(diffs=diffs, **bb))
        outs = {o: np.asarray(v) for o, v in outs.items()}
        grads = {d: np.asarray(v) for d, v in grads.items()}
        pad = len(next(iter(outs.values()))) - len(next(iter(kwargs.values())))
        if pad > 0:
            outs = {o: v[:-pad] for o, v in outs.items()}
            grads = {d: v[:-pad] for d, v in grads.items()}
        return outs, grads

    def close(self):
        """Release what layers hold open (prefetch threads, database handles, output files)."""
        for layer in self.layers:
            close = getattr(layer, "close", None)
            if close is not None:
                close()

    def set_input_arrays(self, data, labels):
        layer = self.layers[0] if self.layers else None
        if layer is None or layer.type != "MemoryData":
            raise NetError("set_input_arrays needs the first layer to be MemoryData")
        layer.set_input_arrays(data, labels)


class _Hooks(list):
    """Per-layer callbacks ``fn(layer_index)``. Register as pycaffe does, ``net.after_forward(fn)``,
    or as a list (``append``, ``remove``, ``clear``)."""

    def __call__(self, fn):
        self.append(fn)
        return fn


def _shape_equals(shape, bp):
    """Caffe's Blob::ShapeEquals: legacy 4-D protos match by right-aligned LegacyShape."""
    if bp.HasField("num") or bp.HasField("channels") or bp.HasField("height") or bp.HasField("width"):
        if len(shape) > 4:
            return False
        legacy = (1,) * (4 - len(shape)) + tuple(shape)
        return legacy == (bp.num, bp.channels, bp.height, bp.width)
    return tuple(shape) == tuple(int(d) for d in bp.shape.dim)


def _is_hdf5(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"
