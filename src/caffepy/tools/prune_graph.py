"""The channel graph behind ``caffepy prune``: which units can go, and what that costs.

A *unit* is one output of a Convolution (a filter) or of an InnerProduct layer.  Each unit
becomes a *class* of a union-find structure; blobs carry lists of *slots* (one per channel,
or per group of axis-1 entries after a Flatten), each slot naming the class it comes from,
or :data:`FIXED` for channels no prunable layer produced (data, a loss input, ...).  Layers
that must slice two inputs the same way (Eltwise, a consumer reached through several phases,
two layers sharing a caffemodel entry) merge the classes slot by slot.  A class is removed
when every unit in it has all-zero weights and nothing blocks it: a consumer that cannot be
sliced, a net output, a constant that cannot be folded into the consumer's bias exactly, a
group count that would become uneven.  Blocking always says why (the report prints it).

Blobs are identified by version: (name, index of the layer that wrote it), so in-place
chains and phase-dependent producers resolve as Caffe resolves them in each phase; the
graph is the union of the TRAIN and TEST views (and each stage named in a rule), so a
layer that runs in only one phase still has its inputs sliced.
"""
import logging
from collections import defaultdict
from contextlib import contextmanager

import numpy as np

from .. import backend
from ..errors import ToolError
from ..net import Net
from ..proto import caffe_pb2

FIXED = -1

NEURON_TYPES = frozenset({"ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power",
                          "Exp", "Log", "Threshold", "Dropout", "Clip", "Swish"})
# Per-channel layers whose constants caffepy evaluates by running the layer itself
# (TEST phase: BatchNorm with its global statistics, Dropout the identity).
ELEMENTWISE_TYPES = NEURON_TYPES | {"BatchNorm", "Scale", "Bias"}
PARAM_PASSTHROUGH_TYPES = frozenset({"PReLU", "BatchNorm", "Scale", "Bias"})
CLASS_SCORE_TYPES = frozenset({"Softmax", "Accuracy", "ArgMax"})
ACROSS_CHANNELS = caffe_pb2.LRNParameter.ACROSS_CHANNELS
STOCHASTIC = caffe_pb2.PoolingParameter.STOCHASTIC
AVE = caffe_pb2.PoolingParameter.AVE


def is_class_score_consumer(layer_type):
    return layer_type in CLASS_SCORE_TYPES or layer_type.endswith("Loss")


def shape_str(shape):
    return "x".join(str(int(d)) for d in shape) if len(shape) else "()"


@contextmanager
def quiet_caffepy_log():
    """Build helper nets without their INFO lines (Net::Init prints the whole net)."""
    logger = logging.getLogger("caffepy")
    old = logger.level
    if logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


# -- include/exclude rules ---------------------------------------------------------------------

def _rule_met(rule, phase, level, stages):
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def layer_included(lp, phase, level, stages):
    """Caffe's FilterNet test for one layer."""
    if len(lp.include):
        return any(_rule_met(r, phase, level, stages) for r in lp.include)
    return not any(_rule_met(r, phase, level, stages) for r in lp.exclude)


def net_views(net_param):
    """The (description, layer indices) of each state prune checks: TRAIN and TEST, with no
    stage and with each stage some rule names."""
    layers = net_param.layer
    level = net_param.state.level if net_param.HasField("state") else 0
    base = list(net_param.state.stage) if net_param.HasField("state") else []
    stages = []
    for lp in layers:
        for rule in list(lp.include) + list(lp.exclude):
            for s in list(rule.stage) + list(rule.not_stage):
                if s not in stages and s not in base:
                    stages.append(s)
    views, seen = [], set()
    for phase, pname in ((caffe_pb2.TRAIN, "TRAIN"), (caffe_pb2.TEST, "TEST")):
        for extra in [None] + stages:
            st = base + ([extra] if extra else [])
            idx = tuple(i for i, lp in enumerate(layers) if layer_included(lp, phase, level, st))
            if idx in seen:
                continue
            seen.add(idx)
            views.append(("phase %s%s" % (pname, ", stage %s" % extra if extra else ""), idx))
    if len(views) == 1:
        views[0] = (None, views[0][1])       # every state runs the same layers
    return views


# -- union-find over units ----------------------------------------------------------------------

class Classes:
    """Union-find over unit classes; a blocked class keeps the first reason given."""

    def __init__(self):
        self.parent = []
        self.reasons = {}
        self.ties = {}          # root -> why its units were merged (the first reason)

    def new(self):
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, a):
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a, b, why=None):
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        for table in (self.reasons, self.ties):
            if rb in table:
                table.setdefault(ra, table.pop(rb))
        if why is not None:
            self.ties.setdefault(ra, why)

    def block(self, a, reason):
        if a != FIXED:
            self.reasons.setdefault(self.find(a), reason)

    def blocked(self, a):
        return a == FIXED or self.find(a) in self.reasons

    def reason(self, a):
        return "not produced by a prunable layer" if a == FIXED else self.reasons.get(self.find(a))


class Node:
    """One blob version: its channel slots (class ids), the axis-1 entries of each slot, and
    (second pass) the constant each removable slot carries."""
    __slots__ = ("name", "producer", "slots", "widths", "exact", "shape", "vals")

    def __init__(self, name, producer, slots=None, widths=None, exact=True, shape=None):
        self.name, self.producer = name, producer
        self.slots = slots
        self.widths = widths if widths is not None or slots is None else [1] * len(slots)
        self.exact = exact
        self.shape = shape
        self.vals = None

    @property
    def tracked(self):
        return self.slots is not None


class Input:
    """What a layer sees at one bottom: the bound blob versions, merged slot by slot."""
    __slots__ = ("name", "nodes", "slots", "widths", "exact")

    def __init__(self, name, nodes, slots, widths, exact):
        self.name, self.nodes, self.slots, self.widths, self.exact = \
            name, nodes, slots, widths, exact

    @property
    def entries(self):
        return int(sum(self.widths))

    def offsets(self):
        return np.concatenate([[0], np.cumsum(self.widths)]).astype(np.int64)


# -- layer geometry ----------------------------------------------------------------------------

def conv_geometry(lp):
    """(num_output, group, bias_term, kernel list (maybe one value for all axes), pads)."""
    p = lp.convolution_param
    if p.kernel_h or p.kernel_w:
        kernel = [p.kernel_h, p.kernel_w]
    else:
        kernel = list(p.kernel_size)
    if p.pad_h or p.pad_w:
        pads = [p.pad_h, p.pad_w]
    else:
        pads = list(p.pad)
    return int(p.num_output), int(p.group), bool(p.bias_term), kernel, pads


def canonical_axis(axis, ndim):
    return axis + ndim if axis < 0 and ndim is not None else axis


# -- the graph ---------------------------------------------------------------------------------

class ChannelGraph:
    """The analysis: ``ChannelGraph(net_param, weights, shapes, threshold, ...).run()``.

    ``weights``: layer name -> list of float32 arrays (normalised in place: 1-D biases and
    per-channel params, 2-D InnerProduct weights).  ``shapes``: blob name -> per-image shape
    (without the batch axis), possibly empty.  ``param_shapes``: layer name -> the blob shapes
    a Net built from the prototxt holds (to check the caffemodel against), possibly empty.
    """

    def __init__(self, net_param, weights, shapes, threshold, model_name="<net>",
                 weights_name="<weights>", param_shapes=None):
        self.net_param = net_param
        self.layers = list(net_param.layer)
        self.weights = weights
        self.shapes = shapes or {}
        self.param_shapes = param_shapes or {}
        self.threshold = float(threshold)
        self.model_name, self.weights_name = model_name, weights_name
        self.cls = Classes()
        self.nodes = {}                       # (name, layer idx) -> Node
        self.bindings = defaultdict(list)     # (layer idx, bottom idx) -> [node keys]
        self.outputs = {}                     # node key -> view description
        self.inputs = {}                      # (layer idx, bottom idx) -> Input or None
        self.unit_classes = {}                # producer name -> [class id per unit]
        self.zero_units = {}                  # producer name -> bool array (weights all zero)
        self.unit_consts = {}                 # producer name -> float64 array (bias or 0)
        self.producer_info = {}               # producer name -> dict
        self.consumers = {}                   # Conv/IP name -> dict(kind, inputs=[(i, b)])
        self.passthrough = {}                 # param layer name -> [(i, b)]
        self.reshapes = {}                    # layer idx -> (Input, out node)
        self.group_constraints = []           # (description, [[class ids] per group])
        self.shared_param_layers = self._shared_param_layers()
        self.inexact_at = {}                  # class root -> where its constant stops being exact

    # -- errors --------------------------------------------------------------------------------
    def _missing(self, lp, expect):
        raise ToolError("%s: weights file '%s' has no blobs for layer '%s' (type %s); the net "
                        "needs %s" % (self.model_name, self.weights_name, lp.name, lp.type,
                                      expect))

    def _mismatch(self, lp, what, got, expect):
        raise ToolError("%s: layer '%s' (type %s): %s in weights file '%s' is %s, but the "
                        "prototxt needs %s" % (self.model_name, lp.name, lp.type, what,
                                               self.weights_name, got, expect))

    def _shared_param_layers(self):
        owners = defaultdict(set)
        for lp in self.layers:
            for ps in lp.param:
                if ps.name:
                    owners[ps.name].add(lp.name)
        return {n for names in owners.values() if len(names) > 1 for n in names}

    # -- views and bindings --------------------------------------------------------------------
    def _bind(self):
        covered = set()
        for desc, idx in net_views(self.net_param):
            last, available = {}, []
            for i in idx:
                covered.add(i)
                lp = self.layers[i]
                for b, name in enumerate(lp.bottom):
                    if name in last and last[name] not in self.bindings[(i, b)]:
                        self.bindings[(i, b)].append(last[name])
                    if name in available:
                        available.remove(name)
                for name in lp.top:
                    last[name] = (name, i)
                    if name not in available:
                        available.append(name)
            for name in available:
                self.outputs.setdefault(last[name], desc)
        # layers no phase view includes (a level or stage combination): bind in file order
        last = {}
        for i, lp in enumerate(self.layers):
            for b, name in enumerate(lp.bottom):
                if i not in covered and name in last and not self.bindings[(i, b)]:
                    self.bindings[(i, b)].append(last[name])
            for name in lp.top:
                last[name] = (name, i)

    # -- helpers for the first pass ------------------------------------------------------------
    def _merge(self, a, b, why, tie=None):
        """Slot by slot: the same removal for both; a FIXED slot blocks the other (`why`);
        two units are tied (`tie` says how, for the report)."""
        for x, y in zip(a, b):
            if x == FIXED and y == FIXED:
                continue
            if x == FIXED:
                self.cls.block(y, why)
            elif y == FIXED:
                self.cls.block(x, why)
            else:
                self.cls.union(x, y, tie)

    def _block_all(self, slots, why):
        for s in slots or ():
            self.cls.block(s, why)

    def _input(self, i, b):
        lp = self.layers[i]
        keys = self.bindings.get((i, b), [])
        nodes = [self.nodes[k] for k in keys if k in self.nodes]
        name = lp.bottom[b]
        if not nodes:
            return None
        if any(not n.tracked for n in nodes):
            for n in nodes:
                self._block_all(n.slots, "layer '%s' reads blob '%s' from several producers "
                                "(phases) whose channels cannot be matched" % (lp.name, name))
            return None
        first = nodes[0]
        for n in nodes[1:]:
            if len(n.slots) != len(first.slots) or list(n.widths) != list(first.widths) \
                    or n.exact != first.exact:
                for m in nodes:
                    self._block_all(m.slots, "layer '%s' reads blob '%s' with different channel "
                                    "layouts in different phases" % (lp.name, name))
                return None
            self._merge(first.slots, n.slots, "layer '%s' reads blob '%s' in several phases, "
                        "and the channel is not removable in all of them" % (lp.name, name),
                        "layer '%s' reads them as blob '%s' in different phases"
                        % (lp.name, name))
        return Input(name, nodes, list(first.slots), list(first.widths), first.exact)

    def _shape(self, name):
        return self.shapes.get(name)

    def _fixed_node(self, name, i, channels=None):
        shape = self._shape(name)
        if channels is None and shape is not None and len(shape) >= 1:
            channels = int(shape[0])
        slots = None if channels is None else [FIXED] * channels
        return Node(name, i, slots, None, True, shape)

    def _set_tops(self, i, lp, slots_widths_exact=None):
        """Tops of layer i: the given (slots, widths, exact) for every top, or FIXED/opaque."""
        for name in lp.top:
            if slots_widths_exact is None:
                node = self._fixed_node(name, i)
            else:
                slots, widths, exact = slots_widths_exact
                node = Node(name, i, list(slots), list(widths), exact, self._shape(name))
            self.nodes[(name, i)] = node

    def _unsupported(self, i, lp, ins, detail=None):
        for b, inp in enumerate(ins):
            if inp is None:
                continue
            if is_class_score_consumer(lp.type):
                why = ("layer '%s' (type %s) consumes blob '%s': class scores feeding a loss, "
                       "Accuracy, ArgMax or Softmax keep their size"
                       % (lp.name, lp.type, lp.bottom[b]))
            else:
                why = ("layer '%s' (type %s) consumes pruned blob '%s'; caffepy prune cannot "
                       "slice %s layers" % (lp.name, lp.type, lp.bottom[b], lp.type))
                if detail:
                    why += " (%s)" % detail
            self._block_all(inp.slots, why)
        self._set_tops(i, lp)

    # -- weights -------------------------------------------------------------------------------
    def _blobs(self, lp, expect):
        blobs = self.weights.get(lp.name)
        if blobs is None or not len(blobs):
            self._missing(lp, expect)
        return blobs

    def _check_param_shapes(self):
        """The caffemodel against the blob shapes a Net built from the prototxt holds."""
        for name, shapes in self.param_shapes.items():
            blobs = self.weights.get(name)
            if blobs is None:
                continue
            lp = next(lp for lp in self.layers if lp.name == name)
            if len(blobs) != len(shapes):
                self._mismatch(lp, "the number of blobs", len(blobs),
                               "%d (%s)" % (len(shapes), ", ".join(shape_str(s) for s in shapes)))
            for k, (arr, want) in enumerate(zip(blobs, shapes)):
                if arr.size != int(np.prod(want, dtype=np.int64)):
                    self._mismatch(lp, "blob %d" % k, shape_str(arr.shape), shape_str(want))

    def _conv_blobs(self, i, lp, ins):
        num_output, group, bias_term, kernel, pads = conv_geometry(lp)
        cin = None
        if ins and ins[0] is not None:
            cin = ins[0].entries
        elif len(lp.bottom) and self._shape(lp.bottom[0]) is not None:
            cin = int(self._shape(lp.bottom[0])[0])
        nsp = len(kernel) if len(kernel) > 1 else 2
        if len(kernel) <= 1 and len(lp.bottom) and self._shape(lp.bottom[0]) is not None:
            nsp = max(1, len(self._shape(lp.bottom[0])) - 1)
        ksz = "x".join(map(str, kernel * nsp if len(kernel) == 1 else kernel)) if kernel else "?"
        per_group = "%d" % (cin // max(group, 1)) if cin is not None else "C/%d" % group
        expect = "weight %dx%sx%s%s" % (num_output, per_group, ksz,
                                        " and bias %d" % num_output if bias_term else "")
        blobs = self._blobs(lp, expect)
        w = blobs[0]
        desc = ("num_output %d, kernel %s, group %d%s" %
                (num_output, ksz, group, ", %d input channels" % cin if cin is not None else ""))
        if w.ndim < 3 or w.shape[0] != num_output:
            self._mismatch(lp, "the weight", shape_str(w.shape), "%s (%s)" % (expect, desc))
        if kernel and (list(w.shape[2:]) != (kernel * (w.ndim - 2) if len(kernel) == 1
                                              else kernel)):
            self._mismatch(lp, "the weight", shape_str(w.shape), "%s (%s)" % (expect, desc))
        if cin is not None and w.shape[1] * group != cin:
            self._mismatch(lp, "the weight", shape_str(w.shape), "%s (%s)" % (expect, desc))
        if len(blobs) != 1 + bias_term:
            self._mismatch(lp, "the number of blobs", len(blobs),
                           "%d (%s)" % (1 + bias_term, expect))
        if bias_term:
            if blobs[1].size != num_output:
                self._mismatch(lp, "the bias", shape_str(blobs[1].shape), "%d" % num_output)
            blobs[1] = blobs[1].reshape(num_output)
        return blobs, num_output, group, bias_term, pads

    def _ip_blobs(self, i, lp, ins):
        p = lp.inner_product_param
        n = int(p.num_output)
        k = None
        if len(lp.bottom) and self._shape(lp.bottom[0]) is not None and p.axis in (1, -1) \
                and len(self._shape(lp.bottom[0])) >= 1:
            shape = self._shape(lp.bottom[0])
            k = int(np.prod(shape, dtype=np.int64)) if p.axis == 1 else int(shape[-1])
        expect = "weight %s%s" % ((("%dx%s" % (n, k if k is not None else "K")) if not p.transpose
                                   else "%sx%d" % (k if k is not None else "K", n)),
                                  " and bias %d" % n if p.bias_term else "")
        blobs = self._blobs(lp, expect)
        w = blobs[0]
        if w.ndim == 4 and w.shape[0] == 1 and w.shape[1] == 1:     # legacy 1x1xNxK
            w = w.reshape(w.shape[2], w.shape[3])
        if w.ndim != 2 or w.shape[1 if p.transpose else 0] != n or \
                (k is not None and w.shape[0 if p.transpose else 1] != k):
            self._mismatch(lp, "the weight", shape_str(blobs[0].shape),
                           "%s (num_output %d%s)" % (expect, n, ", %d inputs" % k
                                                      if k is not None else ""))
        blobs[0] = w
        if len(blobs) != 1 + bool(p.bias_term):
            self._mismatch(lp, "the number of blobs", len(blobs),
                           "%d (%s)" % (1 + bool(p.bias_term), expect))
        if p.bias_term:
            if blobs[1].size != n:
                self._mismatch(lp, "the bias", shape_str(blobs[1].shape), "%d" % n)
            blobs[1] = blobs[1].reshape(n)
        return blobs, n, bool(p.bias_term)

    # -- first pass: structure -----------------------------------------------------------------
    def _producer(self, lp, num_output, weight_rows, bias, group):
        """Register a prunable layer's units (the same name in two phases shares them)."""
        name = lp.name
        if name not in self.unit_classes:
            self.unit_classes[name] = [self.cls.new() for _ in range(num_output)]
            rows = weight_rows.reshape(num_output, -1)
            self.zero_units[name] = np.all(np.abs(rows) <= self.threshold, axis=1)
            consts = np.zeros(num_output, dtype=np.float64)
            if bias is not None:
                b = bias.astype(np.float64)
                consts = np.where(np.abs(b) > self.threshold, b, 0.0)
            self.unit_consts[name] = consts
            self.producer_info[name] = {"type": lp.type, "group": group}
            if group > 1:
                units = self.unit_classes[name]
                size = num_output // group
                self.group_constraints.append(
                    ("layer '%s' (type %s) has group %d: its filter groups must keep equal sizes"
                     % (name, lp.type, group),
                     [units[g * size:(g + 1) * size] for g in range(group)]))
        return self.unit_classes[name]

    def _consumer(self, i, lp, ins, kind):
        c = self.consumers.setdefault(lp.name, {"kind": kind, "inputs": []})
        for b, inp in enumerate(ins):
            if inp is None:
                continue
            if c["inputs"]:
                i0, b0 = c["inputs"][0]
                first = self.inputs[(i0, b0)]
                if len(first.slots) != len(inp.slots) or first.widths != inp.widths:
                    self._block_all(first.slots, "layer '%s' reads inputs of different "
                                    "layouts with one set of weights" % lp.name)
                    self._block_all(inp.slots, "layer '%s' reads inputs of different "
                                    "layouts with one set of weights" % lp.name)
                    continue
                self._merge(first.slots, inp.slots, "layer '%s' reads several inputs with "
                            "one set of weights" % lp.name,
                            "layer '%s' reads them with one set of weights" % lp.name)
            c["inputs"].append((i, b))

    def _conv(self, i, lp, ins):
        blobs, num_output, group, bias_term, pads = self._conv_blobs(i, lp, ins)
        p = lp.convolution_param
        eligible = None
        if p.axis != 1:
            eligible = "its axis is %d" % p.axis
        elif lp.name in self.shared_param_layers:
            eligible = "it shares its parameters with another layer"
        for b, inp in enumerate(ins):
            if inp is None:
                continue
            if eligible is not None:
                self._block_all(inp.slots, "layer '%s' (type Convolution) consumes blob '%s', "
                                "but %s" % (lp.name, lp.bottom[b], eligible))
                ins[b] = None
            elif any(w != 1 for w in inp.widths) or not inp.exact:
                self._block_all(inp.slots, "layer '%s' (type Convolution) consumes blob '%s' "
                                "after a Flatten/Reshape" % (lp.name, lp.bottom[b]))
                ins[b] = None
            elif group > 1:
                size = len(inp.slots) // group
                self.group_constraints.append(
                    ("layer '%s' (type Convolution) has group %d: its %d input channels must "
                     "stay divisible into equal groups" % (lp.name, group, len(inp.slots)),
                     [inp.slots[g * size:(g + 1) * size] for g in range(group)]))
        for b, inp in enumerate(ins):
            self.inputs[(i, b)] = inp
        self._consumer(i, lp, ins, "conv")
        self.consumers[lp.name].update(group=group, pads=pads)
        if eligible is None:
            units = self._producer(lp, num_output, blobs[0], blobs[1] if bias_term else None,
                                   group)
            self._set_tops(i, lp, (units, [1] * num_output, True))
        else:
            for name in lp.top:
                self.nodes[(name, i)] = self._fixed_node(name, i, num_output)

    def _ip(self, i, lp, ins):
        blobs, n, bias_term = self._ip_blobs(i, lp, ins)
        p = lp.inner_product_param
        eligible = None
        if p.axis != 1:
            eligible = "its axis is %d" % p.axis
        elif lp.name in self.shared_param_layers:
            eligible = "it shares its parameters with another layer"
        k = blobs[0].shape[0 if p.transpose else 1]
        for b, inp in enumerate(ins):
            if inp is None:
                continue
            if eligible is not None:
                self._block_all(inp.slots, "layer '%s' (type InnerProduct) consumes blob '%s', "
                                "but %s" % (lp.name, lp.bottom[b], eligible))
                ins[b] = None
            elif inp.entries == 0 or k % inp.entries:
                self._mismatch(lp, "the weight", shape_str(blobs[0].shape),
                               "a multiple of %d inputs (the %d channels of blob '%s')"
                               % (inp.entries, inp.entries, lp.bottom[b]))
        for b, inp in enumerate(ins):
            self.inputs[(i, b)] = inp
        self._consumer(i, lp, ins, "ip")
        if eligible is None:
            rows = blobs[0].T if p.transpose else blobs[0]
            units = self._producer(lp, n, rows, blobs[1] if bias_term else None, 1)
            self._set_tops(i, lp, (units, [1] * n, True))
        else:
            for name in lp.top:
                self.nodes[(name, i)] = self._fixed_node(name, i, n)

    def _param_passthrough(self, i, lp, inp):
        """PReLU / BatchNorm / Scale / Bias on a tracked input: check and normalise blobs.
        Returns a reason when the layer cannot be sliced, else None."""
        n = inp.entries
        if lp.type in ("Scale", "Bias"):
            if len(lp.bottom) != 1:
                return "its %s comes from a second bottom" % lp.type.lower()
            pp = lp.scale_param if lp.type == "Scale" else lp.bias_param
            ndim = None
            if self._shape(lp.bottom[0]) is not None:
                ndim = len(self._shape(lp.bottom[0])) + 1
            if canonical_axis(pp.axis, ndim) != 1:
                return "its axis is %d" % pp.axis
        if not inp.exact:
            return "blob shapes are unknown after the Flatten"
        want = {"PReLU": "slope %d" % n, "BatchNorm": "mean %d, variance %d, factor 1" % (n, n),
                "Scale": "scale %d" % n, "Bias": "bias %d" % n}[lp.type]
        blobs = self._blobs(lp, want)
        if lp.type == "PReLU":
            if lp.prelu_param.channel_shared:
                return None
            sizes = [n]
        elif lp.type == "BatchNorm":
            sizes = [n, n, 1]
        elif lp.type == "Scale":
            sizes = [n] * (1 + bool(lp.scale_param.bias_term))
        else:
            sizes = [n]
        if len(blobs) != len(sizes):
            self._mismatch(lp, "the number of blobs", len(blobs), "%d (%s)" % (len(sizes), want))
        for k, (arr, size) in enumerate(zip(blobs, sizes)):
            if lp.type in ("Scale", "Bias") and arr.ndim > 1 and arr.shape[0] == n \
                    and arr.size != n:
                return "its parameter spans more than the channel axis (shape %s)" % \
                    shape_str(arr.shape)
            if arr.size != size:
                self._mismatch(lp, "blob %d" % k, shape_str(arr.shape), want)
            blobs[k] = arr.reshape(size)
        return None

    def _flatten(self, i, lp, inp):
        p = lp.flatten_param
        shape = self._shape(lp.bottom[0])
        ndim = len(shape) + 1 if shape is not None else None
        axis = canonical_axis(p.axis, ndim)
        end = canonical_axis(p.end_axis, ndim)
        if axis >= 2:
            return list(inp.widths), inp.exact
        if axis != 1:
            return None
        if p.end_axis == -1 or (ndim is not None and end == ndim - 1):
            if shape is None:
                return list(inp.widths), False
            inner = int(np.prod(shape[1:], dtype=np.int64))
            return [w * inner for w in inp.widths], inp.exact
        if shape is None or end < 1:
            return None
        inner = int(np.prod(shape[1:end], dtype=np.int64))
        return [w * inner for w in inp.widths], inp.exact

    def _reshape(self, i, lp, inp):
        in_shape = self._shape(lp.bottom[0])
        out_shape = self._shape(lp.top[0])
        p = lp.reshape_param
        if in_shape is None or out_shape is None:
            return None, "blob shapes are unknown"
        if p.axis != 0 or p.num_axes != -1:
            return None, "only reshape_param with axis 0 and num_axes -1 is supported"
        if len(p.shape.dim) < 2 or len(out_shape) < 1 or not inp.exact:
            return None, "the reshape does not keep a channel axis"
        inner_in = int(np.prod(in_shape[1:], dtype=np.int64))
        inner_out = int(np.prod(out_shape[1:], dtype=np.int64))
        if inner_out == 0:
            return None, "empty blob"
        widths = []
        for w in inp.widths:
            if (w * inner_in) % inner_out:
                return None, ("a channel of %d values does not map onto whole entries of axis 1 "
                              "(%d values each)" % (w * inner_in, inner_out))
            widths.append(w * inner_in // inner_out)
        if sum(widths) != out_shape[0]:
            return None, "the batch axis changes size"
        d1 = p.shape.dim[1]
        if d1 == 0 and (inp.entries != out_shape[0] or widths != list(inp.widths)):
            return None, "its dim 1 copies a different axis"
        return widths, None

    def _structure(self):
        for i, lp in enumerate(self.layers):
            ins = [self._input(i, b) for b in range(len(lp.bottom))]
            t = lp.type
            if t == "Convolution":
                self._conv(i, lp, ins)
                continue
            if t == "InnerProduct":
                self._ip(i, lp, ins)
                continue
            tracked = [inp for inp in ins if inp is not None]
            if not tracked:
                for b in range(len(lp.bottom)):
                    self.inputs[(i, b)] = None
                self._set_tops(i, lp)
                continue
            for b, inp in enumerate(ins):
                self.inputs[(i, b)] = inp
            if t in NEURON_TYPES or t in ("BatchNorm", "Scale", "Bias", "Pooling", "LRN",
                                           "Split"):
                inp = ins[0]
                if inp is None or len(ins) != 1:
                    self._unsupported(i, lp, ins, "more than one bottom")
                    continue
                if t in PARAM_PASSTHROUGH_TYPES:
                    why = self._param_passthrough(i, lp, inp)
                    if why is not None:
                        self._unsupported(i, lp, ins, why)
                        continue
                    self.passthrough.setdefault(lp.name, []).append((i, 0))
                if t == "LRN" and lp.lrn_param.norm_region == ACROSS_CHANNELS:
                    self._block_all(inp.slots, "layer '%s' (LRN, ACROSS_CHANNELS) normalises "
                                    "blob '%s' over windows of neighbouring channels; removing "
                                    "a channel would shift those windows" % (lp.name, inp.name))
                if t == "Pooling" and (any(w != 1 for w in inp.widths) or not inp.exact):
                    self._unsupported(i, lp, ins, "a Flatten/Reshape comes before it")
                    continue
                self._set_tops(i, lp, (inp.slots, inp.widths, inp.exact))
            elif t == "Flatten":
                got = self._flatten(i, lp, ins[0])
                if got is None:
                    self._unsupported(i, lp, ins, "only axis 1 (or later) is supported")
                    continue
                self._set_tops(i, lp, (ins[0].slots, got[0], got[1]))
            elif t == "Reshape":
                widths, why = self._reshape(i, lp, ins[0])
                if widths is None:
                    self._unsupported(i, lp, ins, why)
                    continue
                self._set_tops(i, lp, (ins[0].slots, widths, True))
                self.reshapes[i] = ins[0]
            elif t == "Concat":
                self._concat(i, lp, ins)
            elif t == "Eltwise":
                self._eltwise(i, lp, ins)
            elif t == "Silence":
                pass
            else:
                self._unsupported(i, lp, ins)
        for key, desc in self.outputs.items():
            node = self.nodes.get(key)
            if node is not None and node.tracked:
                self._block_all(node.slots, "blob '%s' is a net output%s"
                                % (key[0], " (%s)" % desc if desc else ""))

    def _concat(self, i, lp, ins):
        p = lp.concat_param
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        shape = self._shape(lp.bottom[0])
        if canonical_axis(axis, len(shape) + 1 if shape is not None else None) != 1:
            self._unsupported(i, lp, ins, "it concatenates along axis %d" % axis)
            return
        parts = []
        for b, inp in enumerate(ins):
            if inp is None:
                node = self._fixed_node(lp.bottom[b], i)
                if node.slots is None:
                    self._unsupported(i, lp, ins, "the shape of bottom '%s' is unknown"
                                      % lp.bottom[b])
                    return
                parts.append((node.slots, node.widths, True))
            else:
                parts.append((inp.slots, inp.widths, inp.exact))
        if len(parts) > 1 and not all(pt[2] for pt in parts):
            self._unsupported(i, lp, ins, "blob shapes are unknown after a Flatten")
            return
        slots = [s for pt in parts for s in pt[0]]
        widths = [w for pt in parts for w in pt[1]]
        self._set_tops(i, lp, (slots, widths, all(pt[2] for pt in parts)))

    def _eltwise(self, i, lp, ins):
        if any(inp is None for inp in ins):
            why = ("layer '%s' (Eltwise) combines it with blob '%s', whose channels are not "
                   "removable" % (lp.name, lp.bottom[[inp is None for inp in ins].index(True)]))
            for inp in ins:
                self._block_all(inp.slots if inp is not None else None, why)
            self._set_tops(i, lp, (next(inp for inp in ins if inp is not None).slots,
                                   next(inp for inp in ins if inp is not None).widths, True))
            return
        first = ins[0]
        for inp in ins[1:]:
            if len(inp.slots) != len(first.slots) or inp.widths != first.widths \
                    or inp.exact != first.exact:
                self._unsupported(i, lp, ins, "its inputs have different channel layouts")
                return
            self._merge(first.slots, inp.slots, "layer '%s' (Eltwise) combines it with a "
                        "channel that is not removable" % lp.name,
                        "layer '%s' (Eltwise) combines them" % lp.name)
        self._set_tops(i, lp, (first.slots, first.widths, first.exact))

    # -- candidates ------------------------------------------------------------------------------
    def _members(self):
        members = defaultdict(list)
        for name, units in self.unit_classes.items():
            for j, c in enumerate(units):
                members[self.cls.find(c)].append((name, j))
        return members

    def _candidates(self):
        members = self._members()
        cand = set()
        for root, mem in members.items():
            if all(self.zero_units[n][j] for n, j in mem):
                cand.add(root)
        self.members = members
        return cand

    def candidate(self, c):
        return c != FIXED and self.cls.find(c) in self.cand

    def removable(self, c):
        return self.candidate(c) and not self.cls.blocked(c)

    # -- second pass: constants -----------------------------------------------------------------
    def _input_vals(self, i, b):
        inp = self.inputs.get((i, b))
        if inp is None:
            return None
        arrs = [n.vals for n in inp.nodes]
        v = arrs[0].copy()
        for a in arrs[1:]:
            v[~(a == v)] = np.nan
        return v

    def _entry_classes(self, slots, widths):
        return np.repeat(np.asarray([self.cls.find(s) if s != FIXED else FIXED for s in slots],
                                    dtype=np.int64), widths)

    def _mark_inexact(self, before, after, slots, widths, where):
        bad = np.isfinite(before) & ~np.isfinite(after)
        if bad.any():
            for c in set(self._entry_classes(slots, widths)[bad].tolist()):
                if c != FIXED:
                    self.inexact_at.setdefault(c, where)

    def _constants(self):
        for i, lp in enumerate(self.layers):
            tops = [self.nodes.get((name, i)) for name in lp.top]
            if not any(n is not None and n.tracked for n in tops):
                continue
            t = lp.type
            if t in ("Convolution", "InnerProduct") and lp.name in self.unit_classes:
                units = self.unit_classes[lp.name]
                vals = np.full(len(units), np.nan)
                for j, c in enumerate(units):
                    if self.candidate(c):
                        vals[j] = self.unit_consts[lp.name][j]
                for n in tops:
                    n.vals = vals
                continue
            ins = [self._input_vals(i, b) for b in range(len(lp.bottom))]
            inps = [self.inputs.get((i, b)) for b in range(len(lp.bottom))]
            out = None
            if t in ELEMENTWISE_TYPES and ins and ins[0] is not None:
                v = ins[0]
                if t == "Dropout" or not np.isfinite(v).any():
                    out = v.copy()
                else:
                    out = eval_elementwise(lp, self.weights.get(lp.name, []), v)
                    self._mark_inexact(v, out, inps[0].slots, inps[0].widths,
                                       "layer '%s' (type %s) maps it to a non-finite value"
                                       % (lp.name, t))
            elif t == "Pooling" and ins[0] is not None:
                v = ins[0]
                pp = lp.pooling_param
                pad = pp.pad or pp.pad_h or pp.pad_w
                out = v.copy()
                if pp.pool == STOCHASTIC or (pp.pool == AVE and pad):
                    out[out != 0] = np.nan
                    kind = "STOCHASTIC" if pp.pool == STOCHASTIC else "AVE"
                    self._mark_inexact(v, out, inps[0].slots, inps[0].widths,
                                       "layer '%s' (%s pooling%s) does not pass a constant "
                                       "unchanged" % (lp.name, kind, " with pad %d" % pad
                                                      if pad else ""))
            elif t == "LRN" and ins[0] is not None:
                v = ins[0]
                out = v.copy()
                out[out != 0] = np.nan
                self._mark_inexact(v, out, inps[0].slots, inps[0].widths,
                                   "layer '%s' (LRN) does not pass a non-zero constant unchanged"
                                   % lp.name)
            elif t == "Split" and ins[0] is not None:
                out = ins[0]
            elif t == "Flatten" and ins[0] is not None:
                reps = [w2 // w1 if w1 else 1 for w1, w2 in zip(inps[0].widths, tops[0].widths)]
                out = self._rechunk(ins[0], inps[0].widths, reps)
            elif t == "Reshape" and ins[0] is not None:
                out = self._reshape_vals(i, lp, ins[0], inps[0], tops[0])
            elif t == "Concat":
                parts = []
                for b, v in enumerate(ins):
                    if v is None:
                        v = np.full(len(self._fixed_node(lp.bottom[b], i).slots), np.nan)
                    parts.append(v)
                out = np.concatenate(parts)
            elif t == "Eltwise" and all(v is not None for v in ins):
                out = self._eltwise_vals(lp, ins)
            for n in tops:
                if n is not None and n.tracked:
                    n.vals = out if out is not None else np.full(sum(n.widths), np.nan)

    def _rechunk(self, v, widths, reps):
        """Flatten: each entry of a slot repeats `rep` times (its spatial positions)."""
        if all(r == 1 for r in reps):
            return v.copy()
        out, off = [], 0
        for w, r in zip(widths, reps):
            out.append(np.repeat(v[off:off + w], r))
            off += w
        return np.concatenate(out) if out else v.copy()

    def _reshape_vals(self, i, lp, v, inp, top):
        in_shape = self._shape(lp.bottom[0])
        out_shape = self._shape(lp.top[0])
        inner_in = int(np.prod(in_shape[1:], dtype=np.int64))
        inner_out = int(np.prod(out_shape[1:], dtype=np.int64))
        elems = np.repeat(v, inner_in)
        chunks = elems.reshape(-1, inner_out)
        out = chunks[:, 0].copy()
        uniform = np.all(chunks == chunks[:, :1], axis=1)
        out[~uniform] = np.nan
        return out

    def _eltwise_vals(self, lp, ins):
        p = lp.eltwise_param
        op = p.operation
        if op == caffe_pb2.EltwiseParameter.PROD:
            out = ins[0].copy()
            for v in ins[1:]:
                out = out * v
        elif op == caffe_pb2.EltwiseParameter.MAX:
            out = ins[0].copy()
            for v in ins[1:]:
                out = np.maximum(out, v)
        else:
            coeff = list(p.coeff) or [1.0] * len(ins)
            out = sum(float(k) * v for k, v in zip(coeff, ins))
        return out

    # -- consumer checks -------------------------------------------------------------------------
    def consumer_vals(self, name):
        """The constants a Conv/IP consumer sees (NaN where its instances disagree)."""
        c = self.consumers[name]
        vals = None
        for (i, b) in c["inputs"]:
            if self.inputs.get((i, b)) is None:
                continue
            v = self._input_vals(i, b)
            if vals is None:
                vals = v.copy()
            else:
                vals[~(v == vals)] = np.nan
        return vals

    def _check_folds(self):
        for name, c in self.consumers.items():
            live = [(i, b) for (i, b) in c["inputs"] if self.inputs.get((i, b)) is not None]
            if not live:
                continue
            inp = self.inputs[live[0]]
            vals = self.consumer_vals(name)
            offs = inp.offsets()
            pads = c.get("pads") or []
            has_pad = any(p for p in pads)
            for s, cl in enumerate(inp.slots):
                if not self.candidate(cl) or self.cls.blocked(cl):
                    continue
                v = vals[offs[s]:offs[s + 1]]
                if np.all(v == 0):
                    continue
                root = self.cls.find(cl)
                if not np.all(np.isfinite(v)):
                    where = self.inexact_at.get(root, "it differs between the phases or "
                                                "inputs that reach the layer")
                    self.cls.block(cl, "its constant output (non-zero bias) cannot be folded "
                                   "into layer '%s': %s" % (name, where))
                elif c["kind"] == "conv" and has_pad:
                    self.cls.block(cl, "its constant output (non-zero bias, %s at blob '%s') "
                                   "cannot be folded into layer '%s' (Convolution with pad %s): "
                                   "border outputs see zero padding instead"
                                   % (_fmt_vals(v), inp.name, name,
                                      "x".join(str(p) for p in pads)))

    # -- group balance ---------------------------------------------------------------------------
    def _balance(self):
        changed = True
        while changed:
            changed = False
            for desc, groups in self.group_constraints:
                counts = [sum(1 for s in g if self.removable(s)) for g in groups]
                if len(set(counts)) <= 1:
                    continue
                k = min(counts)
                for g in groups:
                    seen = 0
                    for s in g:
                        if self.removable(s):
                            seen += 1
                            if seen > k:
                                self.cls.block(s, "%s (removable per group: %s)"
                                               % (desc, ", ".join(map(str, counts))))
                                changed = True

    # -- driver -----------------------------------------------------------------------------------
    def run(self):
        self._check_param_shapes()
        self._bind()
        self._structure()
        self.cand = self._candidates()
        self._constants()
        self._check_folds()
        self._balance()
        for name, units in self.unit_classes.items():
            removed = [j for j, c in enumerate(units) if self.removable(c)]
            if units and len(removed) == len(units):
                info = self.producer_info[name]
                what = "filters" if info["type"] == "Convolution" else "outputs"
                w = self.weights[name][0]
                raise ToolError("%s: pruning would remove all %d %s of layer '%s' (type %s, "
                                "weight %s; every one has |w| <= %g), which disconnects the "
                                "net; weights from '%s'"
                                % (self.model_name, len(units), what, name, info["type"],
                                   shape_str(w.shape), self.threshold, self.weights_name))
        return self

    # -- results -----------------------------------------------------------------------------------
    def removed_units(self, name):
        return [j for j, c in enumerate(self.unit_classes.get(name, ())) if self.removable(c)]

    def kept_units(self, name):
        """(unit, reason) for every zero-weight unit of `name` that stays."""
        out = []
        for j, c in enumerate(self.unit_classes.get(name, ())):
            if self.zero_units[name][j] and not self.removable(c):
                reason = self.cls.reason(c)
                if reason is None:
                    others = [m for m in self.members[self.cls.find(c)]
                              if not self.zero_units[m[0]][m[1]]]
                    root = self.cls.find(c)
                    reason = ("it is tied to %s, which ha%s non-zero weights%s"
                              % (", ".join("unit %d of '%s'" % (u, n) for n, u in others[:3]),
                                 "s" if len(others) == 1 else "ve",
                                 ": " + self.cls.ties[root] if root in self.cls.ties else ""))
                out.append((j, reason))
        return out

    def keep_mask(self, slots, widths):
        """Per axis-1 entry: True where the entry stays."""
        keep = np.asarray([not self.removable(s) for s in slots], dtype=bool)
        return np.repeat(keep, widths)


def eval_elementwise(lp, blobs, vals):
    """Run the per-channel layer `lp` (TEST phase, its caffemodel blobs) on one constant per
    axis-1 entry; returns the constants it outputs (NaN stays NaN)."""
    n = int(vals.size)
    param = caffe_pb2.NetParameter()
    inp = param.layer.add()
    inp.name, inp.type = "constants", "Input"
    inp.top.append("x")
    inp.input_param.shape.add().dim.extend([1, n, 1, 1])
    layer = param.layer.add()
    layer.CopyFrom(lp)
    for field in ("bottom", "top", "include", "exclude", "loss_weight", "propagate_down"):
        layer.ClearField(field)
    layer.bottom.append("x")
    layer.top.append("y")
    known = np.isfinite(vals)
    with quiet_caffepy_log():
        net = Net(param, caffe_pb2.TEST)
        xp = backend.xp()
        for dst, src in zip(net.params.get(lp.name, []), blobs):
            dst.data[...] = xp.asarray(np.asarray(src, dtype=np.float32).reshape(dst.shape))
        net.blobs["x"].data[...] = xp.asarray(np.where(known, vals, 0).astype(np.float32)
                                              .reshape(1, n, 1, 1))
        net.forward()
        out = backend.to_numpy(net.blobs["y"].data).astype(np.float64).reshape(n)
    out[~known] = np.nan
    return out


def _fmt_vals(v):
    v = np.asarray(v)
    if v.size and np.all(v == v.flat[0]):
        return "%.6g" % v.flat[0]
    return "[%s]" % ", ".join("%.4g" % x for x in v.flat[:4])
