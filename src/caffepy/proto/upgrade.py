"""Caffe's legacy upgrade paths (util/upgrade_proto.cpp), spec section 5.6.

``upgrade_net_as_needed`` rewrites a NetParameter in place, in Caffe's order:

1. V0 -> V1: ``layers { layer { type: "conv" ... } }`` (V0LayerParameter inside a
   V1LayerParameter).  Standalone "padding" layers are folded into the following
   conv/pool layer's ``pad``; the flat V0 fields go to the typed params.
2. Data-transform upgrade: scale/mean_file/crop_size/mirror inside the data params of
   V1 DATA / IMAGE_DATA / WINDOW_DATA layers move to ``transform_param``.
3. V1 -> V2: ``layers { type: CONVOLUTION }`` -> ``layer { type: "Convolution" }``.
4. Net input upgrade: net-level ``input`` + ``input_shape``/``input_dim`` -> a leading
   ``Input`` layer named "input" (inputs without any shape are just dropped).
5. BatchNorm upgrade: a BatchNorm layer with exactly 3 ParamSpecs gets lr_mult 0 and
   decay_mult 0 on all of them.

``upgrade_solver_as_needed`` turns the deprecated ``solver_type`` enum into ``type``.

Problems that Caffe reports with LOG(ERROR) and continues past are logged as errors;
those that are LOG(FATAL)/CHECK failures in Caffe raise :class:`ProtoError` naming the
file.
"""
import logging

from . import caffe_pb2
from ..errors import ProtoError
from .files import read_binary, read_text

log = logging.getLogger("caffepy")

V1 = caffe_pb2.V1LayerParameter
V0 = caffe_pb2.V0LayerParameter

# -- V0 layer type strings -> V1LayerType (UpgradeV0LayerType) ----------------------

V0_TO_V1_TYPE = {
    "accuracy": V1.ACCURACY,
    "bnll": V1.BNLL,
    "concat": V1.CONCAT,
    "conv": V1.CONVOLUTION,
    "data": V1.DATA,
    "dropout": V1.DROPOUT,
    "euclidean_loss": V1.EUCLIDEAN_LOSS,
    "flatten": V1.FLATTEN,
    "hdf5_data": V1.HDF5_DATA,
    "hdf5_output": V1.HDF5_OUTPUT,
    "im2col": V1.IM2COL,
    "images": V1.IMAGE_DATA,
    "infogain_loss": V1.INFOGAIN_LOSS,
    "innerproduct": V1.INNER_PRODUCT,
    "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS,
    "pool": V1.POOLING,
    "relu": V1.RELU,
    "sigmoid": V1.SIGMOID,
    "softmax": V1.SOFTMAX,
    "softmax_loss": V1.SOFTMAX_LOSS,
    "split": V1.SPLIT,
    "tanh": V1.TANH,
    "window_data": V1.WINDOW_DATA,
}

# -- V1LayerType -> V2 type string (UpgradeV1LayerType) ------------------------------

V1_TO_V2_TYPE = {
    V1.NONE: "",
    V1.ABSVAL: "AbsVal",
    V1.ACCURACY: "Accuracy",
    V1.ARGMAX: "ArgMax",
    V1.BNLL: "BNLL",
    V1.CONCAT: "Concat",
    V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    V1.CONVOLUTION: "Convolution",
    V1.DECONVOLUTION: "Deconvolution",
    V1.DATA: "Data",
    V1.DROPOUT: "Dropout",
    V1.DUMMY_DATA: "DummyData",
    V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    V1.ELTWISE: "Eltwise",
    V1.EXP: "Exp",
    V1.FLATTEN: "Flatten",
    V1.HDF5_DATA: "HDF5Data",
    V1.HDF5_OUTPUT: "HDF5Output",
    V1.HINGE_LOSS: "HingeLoss",
    V1.IM2COL: "Im2col",
    V1.IMAGE_DATA: "ImageData",
    V1.INFOGAIN_LOSS: "InfogainLoss",
    V1.INNER_PRODUCT: "InnerProduct",
    V1.LRN: "LRN",
    V1.MEMORY_DATA: "MemoryData",
    V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    V1.MVN: "MVN",
    V1.POOLING: "Pooling",
    V1.POWER: "Power",
    V1.RELU: "ReLU",
    V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss",
    V1.SILENCE: "Silence",
    V1.SOFTMAX: "Softmax",
    V1.SOFTMAX_LOSS: "SoftmaxWithLoss",
    V1.SPLIT: "Split",
    V1.SLICE: "Slice",
    V1.TANH: "TanH",
    V1.WINDOW_DATA: "WindowData",
    V1.THRESHOLD: "Threshold",
}

SOLVER_TYPES = {
    caffe_pb2.SolverParameter.SGD: "SGD",
    caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad",
    caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta",
    caffe_pb2.SolverParameter.ADAM: "Adam",
}

# The typed *_param sub-messages that V1LayerParameter and LayerParameter share (all
# of V1's; UpgradeV1LayerParameter copies each one that is set).
_V1_TYPED_PARAMS = tuple(
    f.name for f in V1.DESCRIPTOR.fields
    if f.name.endswith("_param") and f.message_type is not None
    and f.name in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name)

_DATA_PARAM_OF = {
    V1.DATA: "data_param",
    V1.IMAGE_DATA: "image_data_param",
    V1.WINDOW_DATA: "window_data_param",
}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def _fatal(source, msg):
    raise ProtoError("%s: %s" % (source, msg))


def is_repeated(field):
    """Whether a FieldDescriptor is a repeated field, on every supported protobuf: newer
    releases deprecate ``label`` in favour of ``is_repeated``, which older ones lack."""
    try:
        return field.is_repeated
    except AttributeError:
        return field.label == field.LABEL_REPEATED


def _set(msg, field, value):
    """set_X for optional fields, add_X for repeated ones (the schema decides)."""
    if is_repeated(msg.DESCRIPTOR.fields_by_name[field]):
        getattr(msg, field).append(value)
    else:
        setattr(msg, field, value)


# -- detection -----------------------------------------------------------------------

def net_needs_v0_to_v1_upgrade(net_param):
    return any(l.HasField("layer") for l in net_param.layers)


def net_needs_v1_to_v2_upgrade(net_param):
    return len(net_param.layers) > 0


def net_needs_data_upgrade(net_param):
    for l in net_param.layers:
        name = _DATA_PARAM_OF.get(l.type)
        if name is None:
            continue
        p = getattr(l, name)
        if any(p.HasField(f) for f in _TRANSFORM_FIELDS):
            return True
    return False


def net_needs_input_upgrade(net_param):
    return len(net_param.input) > 0


def net_needs_batchnorm_upgrade(net_param):
    return any(l.type == "BatchNorm" and len(l.param) == 3 for l in net_param.layer)


def net_needs_upgrade(net_param):
    """NetNeedsUpgrade as the upgrade tools use it (any of the deprecated formats)."""
    return (net_needs_v0_to_v1_upgrade(net_param) or net_needs_v1_to_v2_upgrade(net_param)
            or net_needs_data_upgrade(net_param) or net_needs_input_upgrade(net_param)
            or net_needs_batchnorm_upgrade(net_param))


def solver_needs_type_upgrade(solver_param):
    return solver_param.HasField("solver_type")


# -- V0 -> V1 --------------------------------------------------------------------------

def upgrade_v0_padding_layers(param, source="<net>"):
    """UpgradeV0PaddingLayers: a copy of ``param`` without the "padding" layers, whose
    pad goes to the conv/pool layer that consumes them."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    out.ClearField("layers")
    last_top = {name: -1 for name in param.input}
    for i, conn in enumerate(param.layers):
        v0 = conn.layer
        if v0.type != "padding":
            out.layers.add().CopyFrom(conn)
        for j, blob in enumerate(conn.bottom):
            if blob not in last_top:
                _fatal(source, "Unknown blob input %s to layer %d (%s)"
                       % (blob, i, v0.name or conn.name))
            top_idx = last_top[blob]
            if top_idx == -1:
                continue
            src = param.layers[top_idx]
            if src.layer.type == "padding":
                # Only a single-input conv/pool fed by a 1-in/1-out padding layer is
                # defined in Caffe.
                if v0.type not in ("conv", "pool"):
                    _fatal(source, "Padding layer input to non-convolutional / "
                           "non-pooling layer type %s" % v0.type)
                if len(conn.bottom) != 1:
                    _fatal(source, "Conv Layer takes a single blob as input.")
                if len(src.bottom) != 1:
                    _fatal(source, "Padding Layer takes a single blob as input.")
                if len(src.top) != 1:
                    _fatal(source, "Padding Layer produces a single blob as output.")
                target = out.layers[len(out.layers) - 1]
                target.layer.pad = src.layer.pad
                target.bottom[j] = src.bottom[0]
        for blob in conn.top:
            last_top[blob] = i
    return out


def upgrade_v0_layer_type(type_name, source="<net>"):
    try:
        return V0_TO_V1_TYPE[type_name]
    except KeyError:
        _fatal(source, "Unknown layer name: %s" % type_name)


# (V0 field, {V0 type: (typed param, field)}) in UpgradeV0LayerParameter's order.
# A field set on a layer type not listed is an "Unknown parameter" error (not fatal).
_V0_FIELD_MAP = (
    ("num_output", {"conv": ("convolution_param", "num_output"),
                    "innerproduct": ("inner_product_param", "num_output")}),
    ("biasterm", {"conv": ("convolution_param", "bias_term"),
                  "innerproduct": ("inner_product_param", "bias_term")}),
    ("weight_filler", {"conv": ("convolution_param", "weight_filler"),
                       "innerproduct": ("inner_product_param", "weight_filler")}),
    ("bias_filler", {"conv": ("convolution_param", "bias_filler"),
                     "innerproduct": ("inner_product_param", "bias_filler")}),
    ("pad", {"conv": ("convolution_param", "pad"),
             "pool": ("pooling_param", "pad")}),
    ("kernelsize", {"conv": ("convolution_param", "kernel_size"),
                    "pool": ("pooling_param", "kernel_size")}),
    ("group", {"conv": ("convolution_param", "group")}),
    ("stride", {"conv": ("convolution_param", "stride"),
                "pool": ("pooling_param", "stride")}),
    ("pool", {"pool": ("pooling_param", "pool")}),
    ("dropout_ratio", {"dropout": ("dropout_param", "dropout_ratio")}),
    ("local_size", {"lrn": ("lrn_param", "local_size")}),
    ("alpha", {"lrn": ("lrn_param", "alpha")}),
    ("beta", {"lrn": ("lrn_param", "beta")}),
    ("k", {"lrn": ("lrn_param", "k")}),
    ("source", {"data": ("data_param", "source"),
                "hdf5_data": ("hdf5_data_param", "source"),
                "images": ("image_data_param", "source"),
                "window_data": ("window_data_param", "source"),
                "infogain_loss": ("infogain_loss_param", "source")}),
    ("scale", None),       # -> transform_param, whatever the type
    ("meanfile", None),
    ("batchsize", {"data": ("data_param", "batch_size"),
                   "hdf5_data": ("hdf5_data_param", "batch_size"),
                   "images": ("image_data_param", "batch_size"),
                   "window_data": ("window_data_param", "batch_size")}),
    ("cropsize", None),
    ("mirror", None),
    ("rand_skip", {"data": ("data_param", "rand_skip"),
                   "images": ("image_data_param", "rand_skip")}),
    ("shuffle_images", {"images": ("image_data_param", "shuffle")}),
    ("new_height", {"images": ("image_data_param", "new_height")}),
    ("new_width", {"images": ("image_data_param", "new_width")}),
    ("concat_dim", {"concat": ("concat_param", "concat_dim")}),
    ("det_fg_threshold", {"window_data": ("window_data_param", "fg_threshold")}),
    ("det_bg_threshold", {"window_data": ("window_data_param", "bg_threshold")}),
    ("det_fg_fraction", {"window_data": ("window_data_param", "fg_fraction")}),
    ("det_context_pad", {"window_data": ("window_data_param", "context_pad")}),
    ("det_crop_mode", {"window_data": ("window_data_param", "crop_mode")}),
    ("hdf5_output_param", {"hdf5_output": ("hdf5_output_param", None)}),
)
_V0_TRANSFORM = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size",
                 "mirror": "mirror"}
# Caffe's error text calls shuffle_images "shuffle".
_V0_ERROR_NAME = {"shuffle_images": "shuffle"}


def upgrade_v0_layer_parameter(conn, out, source="<net>"):
    """UpgradeV0LayerParameter: V1LayerParameter ``conn`` holding a V0 ``layer`` ->
    V1LayerParameter ``out``.  Returns False if some field could not be mapped."""
    ok = True
    out.Clear()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    if not conn.HasField("layer"):
        return ok
    v0 = conn.layer
    if v0.HasField("name"):
        out.name = v0.name
    t = v0.type
    if v0.HasField("type"):
        out.type = upgrade_v0_layer_type(t, source)
    for b in v0.blobs:
        out.blobs.add().CopyFrom(b)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, targets in _V0_FIELD_MAP:
        if not v0.HasField(field):
            continue
        value = getattr(v0, field)
        if targets is None:
            setattr(out.transform_param, _V0_TRANSFORM[field], value)
            continue
        target = targets.get(t)
        if target is None:
            log.error("Unknown parameter %s for layer type %s",
                      _V0_ERROR_NAME.get(field, field), t)
            ok = False
            continue
        pname, fname = target
        sub = getattr(out, pname)
        if fname is None:                       # a whole sub-message
            sub.CopyFrom(value)
        elif field == "pool":
            # V0 and PoolingParameter share the enum's numbers (MAX, AVE, STOCHASTIC).
            name = V0.PoolMethod.Name(value)
            sub.pool = caffe_pb2.PoolingParameter.PoolMethod.Value(name)
        elif sub.DESCRIPTOR.fields_by_name[fname].message_type is not None:
            getattr(sub, fname).CopyFrom(value)
        else:
            _set(sub, fname, value)
    return ok


def upgrade_v0_net(net_param, source="<net>"):
    """UpgradeV0Net, in place.  Only name, layers, input, input_dim and force_backward
    survive (as in Caffe).  Returns False if some field could not be mapped."""
    padded = upgrade_v0_padding_layers(net_param, source)
    ok = True
    upgraded = caffe_pb2.NetParameter()
    if padded.HasField("name"):
        upgraded.name = padded.name
    for conn in padded.layers:
        ok &= upgrade_v0_layer_parameter(conn, upgraded.layers.add(), source)
    upgraded.input.extend(padded.input)
    upgraded.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        upgraded.force_backward = padded.force_backward
    net_param.CopyFrom(upgraded)
    return ok


# -- data transformation -------------------------------------------------------------

def upgrade_net_data_transformation(net_param):
    for l in net_param.layers:
        name = _DATA_PARAM_OF.get(l.type)
        if name is None:
            continue
        p = getattr(l, name)
        for f in _TRANSFORM_FIELDS:
            if p.HasField(f):
                setattr(l.transform_param, f, getattr(p, f))
                p.ClearField(f)


# -- V1 -> V2 --------------------------------------------------------------------------

def upgrade_v1_layer_type(value, source="<net>"):
    try:
        return V1_TO_V2_TYPE[value]
    except KeyError:
        _fatal(source, "Unknown V1LayerParameter layer type: %s" % value)


def upgrade_v1_layer_parameter(v1, out, source="<net>"):
    """UpgradeV1LayerParameter: V1LayerParameter ``v1`` -> LayerParameter ``out``."""
    ok = True
    out.Clear()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    for r in v1.include:
        out.include.add().CopyFrom(r)
    for r in v1.exclude:
        out.exclude.add().CopyFrom(r)
    if v1.HasField("type"):
        out.type = upgrade_v1_layer_type(v1.type, source)
    for b in v1.blobs:
        out.blobs.add().CopyFrom(b)

    def spec(i):
        while len(out.param) <= i:
            out.param.add()
        return out.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        if mode == V1.STRICT:
            spec(i).share_mode = caffe_pb2.ParamSpec.STRICT
        elif mode == V1.PERMISSIVE:
            spec(i).share_mode = caffe_pb2.ParamSpec.PERMISSIVE
        else:
            _fatal(source, "Unknown blob_share_mode: %s" % mode)
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    out.loss_weight.extend(v1.loss_weight)
    for name in _V1_TYPED_PARAMS:
        if v1.HasField(name):
            getattr(out, name).CopyFrom(getattr(v1, name))
    if v1.HasField("layer"):
        log.error("Input NetParameter has V0 layer -- ignoring.")
        ok = False
    return ok


def upgrade_v1_net(net_param, source="<net>"):
    """UpgradeV1Net, in place: ``layers`` -> ``layer``."""
    if len(net_param.layer) > 0:
        _fatal(source, "Refusing to upgrade inconsistent NetParameter input; the "
               "definition includes both 'layer' and 'layers' fields. The current "
               "format defines 'layer' fields with string type like layer { type: "
               "'Layer' ... } and not layers { type: LAYER ... }. Manually switch the "
               "definition to 'layer' format to continue.")
    ok = True
    for i, v1 in enumerate(net_param.layers):
        if not upgrade_v1_layer_parameter(v1, net_param.layer.add(), source):
            log.error("Upgrade of input layer %d failed.", i)
            ok = False
    net_param.ClearField("layers")
    return ok


# -- net inputs ----------------------------------------------------------------------

def _prepend_layer(net_param, layer):
    try:
        net_param.layer.insert(0, layer)
    except (AttributeError, NotImplementedError):   # older protobuf runtimes
        rest = caffe_pb2.NetParameter()
        rest.layer.extend(net_param.layer)
        net_param.ClearField("layer")
        net_param.layer.add().CopyFrom(layer)
        net_param.layer.extend(rest.layer)


def upgrade_net_input(net_param, source="<net>"):
    """UpgradeNetInput: input + input_shape/input_dim -> a leading Input layer."""
    n = len(net_param.input)
    has_shape = len(net_param.input_shape) > 0
    has_dim = len(net_param.input_dim) > 0
    if has_shape or has_dim:
        if has_shape and len(net_param.input_shape) < n:
            _fatal(source, "%d inputs but only %d input_shape entries"
                   % (n, len(net_param.input_shape)))
        if not has_shape and len(net_param.input_dim) < 4 * n:
            _fatal(source, "%d inputs need %d input_dim values (4 per input), got %d"
                   % (n, 4 * n, len(net_param.input_dim)))
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, name in enumerate(net_param.input):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net_param.input_shape[i])
            else:
                shape.dim.extend(net_param.input_dim[4 * i:4 * i + 4])
        _prepend_layer(net_param, layer)
    net_param.ClearField("input")
    net_param.ClearField("input_shape")
    net_param.ClearField("input_dim")


# -- BatchNorm -----------------------------------------------------------------------

def upgrade_net_batchnorm(net_param):
    """UpgradeNetBatchNorm: lr_mult = decay_mult = 0 on BatchNorm layers with 3 specs.
    Returns True if a value actually changed."""
    changed = False
    for l in net_param.layer:
        if l.type == "BatchNorm" and len(l.param) == 3:
            for p in l.param:
                for f in ("lr_mult", "decay_mult"):
                    if not (p.HasField(f) and getattr(p, f) == 0):
                        changed = True
                    setattr(p, f, 0.0)
    return changed


# -- entry points ----------------------------------------------------------------------

_DEPRECATED = "Attempting to upgrade input file specified using deprecated "
_UPGRADED = "Successfully upgraded file specified using deprecated "

# UpgradeNetAsNeeded's steps, in its order: (is the step needed, the step (net, source), what
# is logged before it, after success, after a problem, and the closing note). A step with a
# problem message returns False when some field could not be upgraded (the net has changed
# either way); a step without one returns whether it changed the net.
_NET_STEPS = (
    (net_needs_v0_to_v1_upgrade, upgrade_v0_net,
     _DEPRECATED + "V0LayerParameter: %s", _UPGRADED + "V0LayerParameter",
     "Warning: had one or more problems upgrading V0NetParameter to NetParameter (see above); "
     "continuing anyway.",
     "Note that future Caffe releases will not support V0NetParameter; use "
     "./build/tools/upgrade_net_proto_text for prototxt and "
     "./build/tools/upgrade_net_proto_binary for model weights upgrade this and any other net "
     "protos to the new format."),
    (net_needs_data_upgrade, lambda net, source: upgrade_net_data_transformation(net) or True,
     _DEPRECATED + "transformation parameters: %s",
     _UPGRADED + "data transformation parameters.", None,
     "Note that future Caffe releases will only support transform_param messages for "
     "transformation fields."),
    (net_needs_v1_to_v2_upgrade, upgrade_v1_net,
     _DEPRECATED + "V1LayerParameter: %s", _UPGRADED + "V1LayerParameter",
     "Warning: had one or more problems upgrading V1LayerParameter (see above); continuing "
     "anyway.", None),
    (net_needs_input_upgrade, lambda net, source: upgrade_net_input(net, source) or True,
     _DEPRECATED + "input fields: %s", _UPGRADED + "input fields.", None,
     "Note that future Caffe releases will only support input layers and not input fields."),
    (net_needs_batchnorm_upgrade, lambda net, source: upgrade_net_batchnorm(net),
     "Attempting to upgrade batch norm layers using deprecated params: %s",
     "Successfully upgraded batch norm layers using deprecated params.", None, None),
)


def upgrade_net_as_needed(net_param, source="<net>"):
    """UpgradeNetAsNeeded, in place.  Returns True if anything changed."""
    changed = False
    for needs, step, attempt, success, problem, note in _NET_STEPS:
        if not needs(net_param):
            continue
        log.info(attempt, source)
        ok = step(net_param, source)
        if problem is not None and not ok:
            log.error(problem)
        else:
            log.info(success)
        if note is not None:
            log.warning(note)
        changed |= True if problem is not None else bool(ok)
    return changed


def upgrade_solver_type(solver_param, source="<solver>"):
    if solver_param.HasField("solver_type") and solver_param.HasField("type"):
        _fatal(source, "Failed to upgrade solver: old solver_type field (enum) and new "
               "type field (string) cannot be both specified in solver proto text.")
    if not solver_param.HasField("solver_type"):
        log.error("Warning: solver type already up to date. ")
        return False
    value = solver_param.solver_type
    if value not in SOLVER_TYPES:
        _fatal(source, "Unknown SolverParameter solver_type: %s" % value)
    solver_param.type = SOLVER_TYPES[value]
    solver_param.ClearField("solver_type")
    return True


def upgrade_solver_as_needed(solver_param, source="<solver>"):
    """UpgradeSolverAsNeeded, in place.  Returns True if anything changed."""
    if not solver_needs_type_upgrade(solver_param):
        return False
    log.info("Attempting to upgrade input file specified using deprecated "
             "'solver_type' field (enum)': %s", source)
    upgrade_solver_type(solver_param, source)
    log.info("Successfully upgraded file specified using deprecated 'solver_type' "
             "field (enum) to 'type' field (string).")
    log.warning("Note that future Caffe releases will only support 'type' field "
                "(string) for a solver's type.")
    return True


def read_net_param(path):
    """ReadNetParamsFromTextFileOrDie: a text NetParameter, upgraded."""
    param = read_text(path, caffe_pb2.NetParameter())
    upgrade_net_as_needed(param, path)
    return param


def read_net_param_binary(path):
    """ReadNetParamsFromBinaryFileOrDie: a binary NetParameter (caffemodel), upgraded."""
    param = read_binary(path, caffe_pb2.NetParameter())
    upgrade_net_as_needed(param, path)
    return param


def read_solver_param(path):
    """ReadSolverParamsFromTextFileOrDie: a text SolverParameter, upgraded."""
    param = read_text(path, caffe_pb2.SolverParameter())
    upgrade_solver_as_needed(param, path)
    return param
