"""Net: a DAG of layers built from a NetParameter, exactly as Caffe's Net::Init builds it,
and run as Caffe runs it.

Construction order (Caffe's, each step in build.py): filter layers by NetState rules ->
insert Split layers for blobs consumed more than once -> for each layer: append bottoms/tops
(in-place when top j == bottom j), SetUp, record loss weights, decide need_backward, append
params (owners and sharers by ParamSpec name) -> prune backward passes that do not reach a
loss -> force_backward -> outputs (alphabetical) -> share weights.

Weight I/O lives in weights.py, pycaffe's dictionaries and array calls in accessors.py; both
are mixed into :class:`Net`.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Iterable, Optional, Union

import numpy as np

from .. import security
from ..errors import NetError
from ..proto import caffe_pb2
from ..proto.files import message_text
from ..size_limits import blob_limit
from . import build
from .accessors import PycaffeAccessors
from .weights import NetWeights

log = logging.getLogger("caffepy")


class Net(NetWeights, PycaffeAccessors):
    """A Caffe net, as pycaffe builds it: ``Net(network, phase, level=0, stages=None,
    weights=None)``.

    ``network`` is a prototxt path, prototxt text or a ``caffe_pb2.NetParameter``; ``phase``
    is ``caffepy.TRAIN`` or ``caffepy.TEST`` (left out: the file's ``state.phase``, else
    TEST); ``level`` and ``stages`` complete the NetState the layers' include/exclude rules
    are matched against; ``weights`` is a .caffemodel (or .caffemodel.h5) to copy by layer
    name, or several separated by commas; with ``strict_weights=True`` a layer with params
    that none of them gives weights is a NetError (otherwise it is logged).

    The legacy pycaffe order ``Net(network, weights, phase)`` is accepted too (with a
    deprecation warning in the log).
    """

    def __init__(self, network: Union[str, "os.PathLike[str]", caffe_pb2.NetParameter],
                 phase: Optional[int] = None, level: int = 0,
                 stages: Optional[Iterable[str]] = None,
                 weights: Union[None, str, "os.PathLike[str]", Iterable[str]] = None, *,
                 allow_python_layers: Optional[bool] = None,
                 max_blob_bytes: Union[None, int, str] = None,
                 strict_weights: bool = False):
        if isinstance(phase, (str, os.PathLike)):
            # legacy pycaffe: Net(network_file, pretrained_param_file, phase)
            if level not in (caffe_pb2.TRAIN, caffe_pb2.TEST) or stages is not None \
                    or weights is not None:
                raise NetError("Net(%r, %r, ...): the legacy form is Net(network, weights, "
                               "phase) with phase caffepy.TRAIN or caffepy.TEST; the current "
                               "one is Net(network, phase, weights=...)" % (network, phase))
            log.warning("Deprecated use of the Python interface: Net(network, weights, phase)."
                        " Use Net(%r, %d, weights=%r) instead.", network, level, phase)
            weights, phase, level = phase, level, 0
        if phase is not None and phase not in (caffe_pb2.TRAIN, caffe_pb2.TEST):
            raise NetError("Net(%r, phase=%r): phase must be caffepy.TRAIN (0) or caffepy.TEST "
                           "(1)" % (network, phase))
        if isinstance(stages, str):
            stages = [stages]
        param = build.load_net_param(network)
        if not isinstance(network, caffe_pb2.NetParameter) or phase is not None:
            if phase is None:
                phase = param.state.phase if param.HasField("state") else caffe_pb2.TEST
            param.state.phase = phase
            param.state.level = int(level)
        elif level:
            param.state.level = int(level)     # a NetParameter keeps its own state otherwise
        if stages:
            param.state.stage.extend(list(stages))
        self._source = network if isinstance(network, (str, os.PathLike)) else None
        # allow_python_layers=False (or CAFFEPY_SAFE=1) refuses Python layers: caffepy.security
        # max_blob_bytes: no blob of the net may need more (caffepy.size_limits)
        with security.policy(allow_python_layers=allow_python_layers), \
                blob_limit(max_blob_bytes):
            self._init(param)
        if weights is not None:
            if isinstance(weights, os.PathLike):
                weights = [os.fspath(weights)]
            weights = weights.split(",") if isinstance(weights, str) else list(weights)
            for w in weights:
                self.copy_from(w)
            if strict_weights:       # every layer with params got weights from some file
                self.check_weights_loaded(weights)

    # -- construction (Net::Init) --------------------------------------------------------
    def _init(self, in_param):
        self.phase = in_param.state.phase
        filtered = build.filter_net(in_param)
        build.check_policy(filtered, self.__dict__.get("_source"))
        if log.isEnabledFor(logging.INFO):
            log.info("Initializing net from parameters: \n%s",
                     message_text(filtered))
        param = build.insert_splits(filtered)
        self.name = param.name
        self.param = param
        self.debug_info = param.debug_info
        self._reset_tables()
        wiring = build.Wiring()
        memory_used = 0
        for layer_id, net_lp in enumerate(param.layer):
            memory_used = self._add_layer(layer_id, net_lp, wiring, memory_used)
        build.prune_backward(self)
        if param.force_backward:
            build.force_backward(self)
        outputs = sorted(wiring.available)
        self.output_blob_indices = [wiring.blob_ids[n] for n in outputs]
        for n in outputs:
            log.info("This network produces output %s", n)
        build.index_names(self)
        build.share_weights(self)
        log.info("Network initialization done.")

    def _reset_tables(self):
        """The per-layer, per-blob and per-param tables Net::Init fills (Caffe's names)."""
        self.layers = []
        self.layer_names = []
        self._blobs = []              # every blob, by id
        self.blob_names = []
        self.blob_need_backward = []
        self.bottom_vecs, self.bottom_id_vecs, self.bottom_need_backward = [], [], []
        self.top_vecs, self.top_id_vecs = [], []
        self.layer_need_backward = []
        self._blob_loss_weights = []   # by blob id (pycaffe's _blob_loss_weights)
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
        self.before_forward, self.after_forward = _Hooks(), _Hooks()
        self.before_backward, self.after_backward = _Hooks(), _Hooks()

    def _add_layer(self, layer_id, net_lp, wiring, memory_used):
        """One iteration of Net::Init's layer loop; returns the data memory used so far."""
        build.check_propagate_down(net_lp)
        if not net_lp.HasField("phase"):
            net_lp.phase = self.phase
        lp = caffe_pb2.LayerParameter()
        lp.CopyFrom(net_lp)
        layer = build.create_net_layer(lp)
        self.layers.append(layer)
        self.layer_names.append(lp.name)
        log.info("Creating Layer %s", lp.name)
        for table in (self.bottom_vecs, self.bottom_id_vecs, self.bottom_need_backward,
                      self.top_vecs, self.top_id_vecs, self.param_id_vecs):
            table.append([])
        need_backward = False
        for bottom_id in range(len(lp.bottom)):
            blob_id = build.append_bottom(self, lp, layer_id, bottom_id, wiring)
            need_backward |= self.blob_need_backward[blob_id]
        for top_id in range(len(lp.top)):
            build.append_top(self, lp, layer_id, top_id, wiring)
            if lp.type == "Input":
                self.input_blob_indices.append(self.top_id_vecs[layer_id][-1])
        if layer.auto_top_blobs:
            needed = max(layer.min_top_blobs, layer.exact_num_top_blobs)
            for top_id in range(len(lp.top), needed):
                build.append_top(self, lp, layer_id, top_id)
        build.setup_layer(self, layer_id, layer)
        log.info("Setting up %s", lp.name)       # logged after SetUp, as in Net::Init
        for top_id, blob_id in enumerate(self.top_id_vecs[layer_id]):
            while len(self._blob_loss_weights) <= blob_id:
                self._blob_loss_weights.append(0.0)
            self._blob_loss_weights[blob_id] = layer.loss(top_id)
            t = self.top_vecs[layer_id][top_id]
            log.info("Top shape: %s", t.shape_string())
            if layer.loss(top_id):
                log.info("    with loss weight %g", layer.loss(top_id))
            memory_used += t.count
        log.info("Memory required for data: %d", memory_used * 4)
        for param_id, need in enumerate(build.param_need_backward(net_lp, layer)):
            layer.set_param_propagate_down(param_id, need)
            need_backward |= need
        for param_id in range(len(layer.blobs)):
            build.append_param(self, layer_id, param_id)
        self.layer_need_backward.append(need_backward)
        if need_backward:
            for blob_id in self.top_id_vecs[layer_id]:
                self.blob_need_backward[blob_id] = True
        return memory_used

    # -- running -------------------------------------------------------------------
    def forward_from_to(self, start: int, end: int) -> float:
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

    def forward_prefilled(self) -> float:
        return self.forward_from_to(0, len(self.layers) - 1)

    def backward_from_to(self, start: int, end: int) -> None:
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

    def forward_backward(self) -> float:
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

    def clear_param_diffs(self) -> None:
        for p in self.learnable_params:
            p.flat_diff[...] = 0

    def update(self) -> None:
        for p in self.learnable_params:
            p.update()

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

    def reshape(self) -> None:
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

    def close(self) -> None:
        """Release what layers hold open (prefetch threads, database handles, output files)."""
        for layer in self.layers:
            close = getattr(layer, "close", None)
            if close is not None:
                close()


class _Hooks(list):
    """Per-layer callbacks ``fn(layer_index)``. Register as pycaffe does, ``net.after_forward(fn)``,
    or as a list (``append``, ``remove``, ``clear``)."""

    def __call__(self, fn):
        self.append(fn)
        return fn
