"""``import caffe``: caffepy under pycaffe's names, as pycaffe code uses them.

The module identities (one module object per name, one caffe.proto registration), pycaffe's
top-level names, and pycaffe's own test scenarios written for caffepy: layer_type_list,
Python layers (with and without param_str), net_spec, NCCL; plus Timer and the logging calls.
"""
import importlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import caffe
import caffepy
from caffe import layers as L
from caffe import params as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")

# The names pycaffe's caffe/__init__.py gives.
PYCAFFE_NAMES = [
    "Net", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
    "AdamSolver", "NCCL", "Timer", "init_log", "log", "set_mode_cpu", "set_mode_gpu",
    "set_device", "Layer", "get_solver", "layer_type_list", "set_random_seed", "solver_count",
    "set_solver_count", "solver_rank", "set_solver_rank", "set_multiprocess", "has_nccl",
    "__version__", "TRAIN", "TEST", "Classifier", "Detector", "io", "layers", "params",
    "NetSpec", "to_proto"]


def _run(code, env_path=None):
    """Run ``code`` in a fresh interpreter; its last stdout line, parsed as JSON."""
    env = dict(os.environ)
    if env_path is not None:
        env["PYTHONPATH"] = env_path
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---- the package --------------------------------------------------------------------------

def test_pycaffe_names_are_all_there():
    missing = [name for name in PYCAFFE_NAMES if not hasattr(caffe, name)]
    assert missing == []
    assert set(PYCAFFE_NAMES) <= set(dir(caffe))


def test_names_are_caffepy_objects():
    for name in ["Net", "Blob", "Layer", "Solver", "SGDSolver", "NesterovSolver",
                 "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "get_solver",
                 "layer_type_list", "set_mode_cpu", "set_mode_gpu", "set_device",
                 "set_random_seed", "NetSpec", "to_proto", "Classifier", "Detector",
                 "CaffepyError", "NetError", "register_layer"]:
        assert getattr(caffe, name) is getattr(caffepy, name), name
    assert (caffe.TRAIN, caffe.TEST) == (caffepy.TRAIN, caffepy.TEST) == (0, 1)
    assert caffe.__version__ == caffepy.__version__
    # layers/params are net_spec's pseudo-modules, as in pycaffe (caffepy.layers is the
    # package of layer implementations)
    assert caffe.layers is caffepy.net_spec.layers
    assert caffe.params is caffepy.net_spec.params is caffepy.params
    assert L is caffe.layers and P is caffe.params
    assert P.Pooling.MAX == caffepy.proto.caffe_pb2.PoolingParameter.MAX == 0
    with pytest.raises(AttributeError, match="module 'caffe' has no attribute 'no_such_name'"):
        caffe.no_such_name


def test_submodules_are_caffepy_modules():
    for name in ["io", "draw", "net_spec", "classifier", "detector", "coord_map"]:
        module = importlib.import_module("caffe." + name)
        assert module is importlib.import_module("caffepy." + name), name
        assert getattr(caffe, name) is module
        assert sys.modules["caffe." + name] is module
    import caffe.io as caffe_io
    from caffe import io
    assert caffe_io is io is caffepy.io
    from caffe.proto import caffe_pb2
    import caffe.proto.caffe_pb2 as pb2
    assert caffe_pb2 is pb2 is caffe.proto.caffe_pb2 is caffepy.proto.caffe_pb2
    assert caffe.proto.caffe_pb2.NetParameter is caffepy.proto.caffe_pb2.NetParameter
    from caffe.coord_map import crop
    assert crop is caffepy.coord_map.crop
    from caffe.classifier import Classifier
    from caffe.detector import Detector
    assert (Classifier, Detector) == (caffepy.Classifier, caffepy.Detector)


def test_pycaffe_module():
    import caffe.pycaffe as pycaffe
    assert pycaffe is caffe.pycaffe
    assert pycaffe.Net is caffepy.Net
    assert pycaffe.SGDSolver is caffepy.SGDSolver
    assert pycaffe.AdamSolver is caffepy.AdamSolver
    assert pycaffe.NCCL is caffe.NCCL and pycaffe.Timer is caffe.Timer


def test_caffe_pb2_is_registered_once_whatever_the_import_order():
    code = textwrap.dedent('''
        import json, sys
        import caffe.proto.caffe_pb2 as first          # before caffepy itself
        from caffe.proto import caffe_pb2
        import caffepy.proto.caffe_pb2 as own
        from google.protobuf import descriptor_pool
        pool_file = descriptor_pool.Default().FindFileByName(own.DESCRIPTOR.name)
        modules = {id(m) for name, m in list(sys.modules.items())
                   if name.endswith("caffe_pb2") and m is not None}
        print(json.dumps([first is caffe_pb2 is own, len(modules), own.DESCRIPTOR.name,
                          pool_file.name, own.NetParameter.DESCRIPTOR.full_name,
                          sorted(n for n in sys.modules if n.endswith("caffe_pb2"))]))
    ''')
    same, n_modules, file_name, pool_name, full_name, names = _run(code)
    assert same is True
    assert n_modules == 1
    assert file_name == pool_name == "caffe.proto"
    assert full_name == "caffe.NetParameter"
    assert names == ["caffe.proto.caffe_pb2", "caffepy.proto.caffe_pb2"]


def test_import_caffe_loads_no_helper_until_used():
    code = textwrap.dedent('''
        import json, sys
        import caffe
        before = sorted(m for m in sys.modules if m.startswith(("caffe.", "caffepy."))
                        and m.rsplit(".", 1)[1] in ("io", "net_spec", "draw", "classifier",
                                                      "detector", "coord_map"))
        caffe.NetSpec
        after = sorted(m for m in sys.modules if m.endswith("net_spec"))
        print(json.dumps([before, after]))
    ''')
    assert _run(code) == [[], ["caffe.net_spec", "caffepy.net_spec"]]


def test_a_real_pycaffe_earlier_on_the_path_wins(tmp_path):
    fake = tmp_path / "caffe"
    fake.mkdir()
    (fake / "__init__.py").write_text("BUILT_FROM = 'BVLC'\n")
    code = "import json, caffe; print(json.dumps([caffe.BUILT_FROM, caffe.__file__]))"
    built_from, path = _run(code, env_path=str(tmp_path))
    assert built_from == "BVLC"
    assert path == str(fake / "__init__.py")
    # without it, caffepy's package
    _, path = _run("import json, caffe; print(json.dumps([0, caffe.__file__]))")
    assert path == os.path.join(SRC, "caffe", "__init__.py")


def test_the_distribution_ships_the_caffe_package():
    import setuptools
    packages = setuptools.find_packages(where=SRC)
    assert {"caffe", "caffe.proto", "caffepy"} <= set(packages)


# ---- layer_type_list (pycaffe's test_layer_type_list) ---------------------------------------

def test_layer_type_list():
    types = caffe.layer_type_list()
    for type_name in ["Data", "Convolution", "InnerProduct", "Python"]:
        assert type_name in types
    assert types == sorted(types)
    assert len(types) == len(set(types))
    assert types == caffepy.layer_type_list()


# ---- Python layers (pycaffe's test_python_layer and test_python_layer_with_param_str) -----

class SimpleLayer(caffe.Layer):
    """Multiplies by ten."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class ExceptionLayer(caffe.Layer):
    """Fails in setup."""

    def setup(self, bottom, top):
        raise RuntimeError("ExceptionLayer refuses to set up")


class ParameterLayer(caffe.Layer):
    """One learnable blob of one value; backward sets its diff to 1."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] = 1


class PhaseLayer(caffe.Layer):
    """Outputs its phase."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[()] = self.phase


class SimpleParamLayer(caffe.Layer):
    """Multiplies by the number in its param_str."""

    def setup(self, bottom, top):
        try:
            self.value = float(self.param_str)
        except ValueError:
            raise ValueError("Parameter string must be a legible float")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.value * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.value * top[0].diff


MODULE = __name__      # this module, as python_param.module names it


def _python_layer(name, bottom, top, cls, param_str=None):
    param = " param_str: '%s'" % param_str if param_str is not None else ""
    bottom = " bottom: '%s'" % bottom if bottom else ""
    return ("layer { type: 'Python' name: '%s'%s top: '%s'\n"
            "  python_param { module: '%s' layer: '%s'%s } }\n"
            % (name, bottom, top, MODULE, cls, param))


HEADER = ("name: 'pythonnet' force_backward: true\n"
          "input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }\n")


def _net_file(tmp_path, text):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return str(path)


@pytest.fixture
def python_net(tmp_path):
    text = HEADER + "".join(_python_layer(n, b, n, "SimpleLayer")
                            for b, n in [("data", "one"), ("one", "two"), ("two", "three")])
    return caffe.Net(_net_file(tmp_path, text), caffe.TRAIN)


def test_python_layer_forward(python_net):
    python_net.blobs["data"].data[...] = 8
    python_net.forward()
    np.testing.assert_array_equal(python_net.blobs["three"].data,
                                  np.full((10, 9, 8), 10 ** 3 * 8, np.float32))


def test_python_layer_backward(python_net):
    python_net.blobs["three"].diff[...] = 7
    python_net.backward()
    np.testing.assert_array_equal(python_net.blobs["data"].diff,
                                  np.full((10, 9, 8), 10 ** 3 * 7, np.float32))


def test_python_layer_reshape(python_net):
    python_net.blobs["data"].reshape(4, 4, 4, 4)
    python_net.blobs["data"].data[...] = np.arange(256, dtype=np.float32).reshape(4, 4, 4, 4)
    python_net.forward()
    for name, blob in python_net.blobs.items():
        assert blob.data.shape == (4, 4, 4, 4), name
    np.testing.assert_array_equal(python_net.blobs["three"].data.ravel(),
                                  1000 * np.arange(256, dtype=np.float32))


def test_python_layer_exception(tmp_path):
    """pycaffe's test_exception: a Python layer failing in setup makes caffe.Net raise a
    RuntimeError; caffepy's error also names the layer and keeps the layer's own error."""
    path = _net_file(tmp_path, HEADER + _python_layer("layer", "data", "top", "ExceptionLayer"))
    with pytest.raises(RuntimeError) as info:
        caffe.Net(path, caffe.TEST)
    assert isinstance(info.value, caffe.CaffepyError)
    assert "'layer'" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "ExceptionLayer refuses to set up" in str(info.value.__cause__)


def test_python_layer_parameter(tmp_path):
    path = _net_file(tmp_path, HEADER + _python_layer("layer", "data", "top", "ParameterLayer"))
    net = caffe.Net(path, caffe.TRAIN)
    net.forward()
    net.backward()
    layer = net.layers[list(net._layer_names).index("layer")]
    assert layer.blobs[0].data[0] == 0
    assert layer.blobs[0].diff[0] == 1
    layer.blobs[0].data[0] += layer.blobs[0].diff[0]
    assert layer.blobs[0].data[0] == 1

    # saving and loading
    weights = str(tmp_path / "python.caffemodel")
    net.save(weights)
    layer.blobs[0].data[0] = -1
    assert layer.blobs[0].data[0] == -1
    net.copy_from(weights)
    assert layer.blobs[0].data[0] == 1

    # weight sharing
    net2 = caffe.Net(path, caffe.TRAIN)
    layer2 = net2.layers[list(net2._layer_names).index("layer")]
    assert layer2.blobs[0].data[0] == 0
    net2.share_with(net)
    assert layer2.blobs[0].data[0] == 1
    layer.blobs[0].data[0] = 5
    assert layer2.blobs[0].data[0] == 5


def test_python_layer_phase(tmp_path):
    path = _net_file(tmp_path, "name: 'pythonnet' force_backward: true\n"
                     + _python_layer("layer", None, "phase", "PhaseLayer"))
    for phase in caffe.TRAIN, caffe.TEST:
        net = caffe.Net(path, phase)
        assert net.forward()["phase"] == phase


@pytest.fixture
def param_str_net(tmp_path):
    text = (HEADER + _python_layer("mul10", "data", "mul10", "SimpleParamLayer", "10")
            + _python_layer("mul2", "mul10", "mul2", "SimpleParamLayer", "2"))
    return caffe.Net(_net_file(tmp_path, text), caffe.TRAIN)


def test_python_layer_with_param_str_forward(param_str_net):
    param_str_net.blobs["data"].data[...] = 8
    param_str_net.forward()
    np.testing.assert_array_equal(param_str_net.blobs["mul10"].data, np.full((10, 9, 8), 80.0))
    np.testing.assert_array_equal(param_str_net.blobs["mul2"].data, np.full((10, 9, 8), 160.0))


def test_python_layer_with_param_str_backward(param_str_net):
    param_str_net.blobs["mul2"].diff[...] = 7
    param_str_net.backward()
    np.testing.assert_array_equal(param_str_net.blobs["data"].diff, np.full((10, 9, 8), 140.0))


# ---- net_spec (pycaffe's test_net_spec) ---------------------------------------------------

def lenet(batch_size):
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]),
                                         dict(dim=[batch_size, 1, 1, 1])],
                                  transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50,
                            weight_filler=dict(type="xavier"))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    return n.to_proto()


def anon_lenet(batch_size):
    data, label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]),
                                     dict(dim=[batch_size, 1, 1, 1])],
                              transform_param=dict(scale=1. / 255), ntop=2)
    conv1 = L.Convolution(data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    pool1 = L.Pooling(conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    conv2 = L.Convolution(pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier"))
    pool2 = L.Pooling(conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    ip1 = L.InnerProduct(pool2, num_output=500, weight_filler=dict(type="xavier"))
    relu1 = L.ReLU(ip1, in_place=True)
    ip2 = L.InnerProduct(relu1, num_output=10, weight_filler=dict(type="xavier"))
    loss = L.SoftmaxWithLoss(ip2, label)
    return caffe.to_proto(loss)


def silent_net():
    n = caffe.NetSpec()
    n.data, n.data2 = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    n.silence_data2 = L.Silence(n.data2, ntop=0)
    return n.to_proto()


def _load(tmp_path, net_proto):
    path = tmp_path / "spec.prototxt"
    path.write_text(str(net_proto))
    return caffe.Net(str(path), caffe.TEST)


@pytest.mark.parametrize("make, names", [
    (lenet, ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "loss"]),
    (anon_lenet, ["DummyData1", "Convolution1", "Pooling1", "Convolution2", "Pooling2",
                  "InnerProduct1", "ReLU1", "InnerProduct2", "SoftmaxWithLoss1"])])
def test_net_spec_lenet(tmp_path, make, names):
    net_proto = make(50)
    assert net_proto.layer[6].bottom == net_proto.layer[6].top        # the in-place ReLU
    assert [layer.name for layer in net_proto.layer] == names
    assert net_proto.layer[1].convolution_param.num_output == 20
    assert net_proto.layer[1].convolution_param.kernel_size == [5]
    assert net_proto.layer[2].pooling_param.pool == P.Pooling.MAX
    assert net_proto.layer[0].transform_param.scale == pytest.approx(1 / 255)
    net = _load(tmp_path, net_proto)
    assert len(net.layers) == 9
    assert list(net._layer_names) == names
    # DummyData fills zeros and biases start at 0: every logit is 0, the loss is ln 10
    out = net.forward()
    loss_name = names[-1]
    assert float(out[loss_name]) == pytest.approx(np.log(10), rel=1e-6)
    assert net.blobs[net_proto.layer[7].top[0]].data.shape == (50, 10)


def test_net_spec_zero_tops(tmp_path):
    net_proto = silent_net()
    assert [layer.name for layer in net_proto.layer] == ["data", "silence_data",
                                                         "silence_data2"]
    assert [list(layer.top) for layer in net_proto.layer] == [["data", "data2"], [], []]
    net = _load(tmp_path, net_proto)
    assert len(net.forward()) == 0


def test_net_spec_type_error():
    data = L.DummyData(ntop=2)          # a tuple of two Tops
    with pytest.raises(TypeError,
                       match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(data, ntop=0)
    fn = L.Silence(*data, ntop=0)       # each element is a Top
    assert fn.type_name == "Silence" and len(fn.inputs) == 2


# ---- NCCL and the multi-solver settings (pycaffe's test_nccl) -----------------------------

def test_nccl_is_absent_and_says_so():
    assert caffe.has_nccl() is False
    # pycaffe's test only asks for a uid when has_nccl(); caffepy says why there is none
    with pytest.raises(caffe.NCCLUnavailableError, match="no NCCL"):
        caffe.NCCL.new_uid()
    with pytest.raises(caffepy.CaffepyError, match=r"caffe.NCCL\(solver, uid\)"):
        caffe.NCCL(None, b"uid")
    assert issubclass(caffe.NCCLUnavailableError, RuntimeError)


def test_solver_count_rank_and_multiprocess():
    assert caffe.solver_count() == 1
    assert caffe.solver_rank() == 0
    caffe.set_solver_count(1)
    caffe.set_solver_rank(0)
    with pytest.raises(caffe.NCCLUnavailableError, match=r"set_solver_count\(2\)"):
        caffe.set_solver_count(2)
    with pytest.raises(caffe.NCCLUnavailableError, match=r"set_solver_rank\(1\)"):
        caffe.set_solver_rank(1)
    assert (caffe.solver_count(), caffe.solver_rank()) == (1, 0)
    from caffe import _caffe
    try:
        caffe.set_multiprocess(True)
        assert _caffe.multiprocess() is True
    finally:
        caffe.set_multiprocess(False)
    assert _caffe.multiprocess() is False


# ---- Timer and logging ------------------------------------------------------------------

class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def caffepy_records():
    logger = logging.getLogger("caffepy")
    handler = _Records()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_timer(caffepy_records):
    timer = caffe.Timer()
    assert timer.ms == 0.0                         # never started: 0, with Caffe's warning
    assert [r.getMessage() for r in caffepy_records] == [
        "Timer has never been run before reading time."]
    timer.start()
    time.sleep(0.02)
    timer.stop()
    first = timer.ms
    assert 20.0 <= first < 5000.0
    time.sleep(0.01)
    assert timer.ms == first                       # stopped: the reading stays
    timer.start()
    assert timer.running
    elapsed = timer.ms                             # reading a running timer stops it
    assert not timer.running and timer.ms == elapsed and 0.0 <= elapsed < first


def test_init_log_and_log(capsys):
    config = caffe.init_log(0)
    try:
        caffe.log("message from pycaffe code")
        caffe.log("second line")
    finally:
        config.restore()
    err = capsys.readouterr().err.splitlines()
    lines = [line for line in err if "pycaffe code" in line or "second line" in line]
    assert len(lines) == 2
    assert lines[0].startswith("I") and lines[0].endswith("] message from pycaffe code")
    assert lines[1].endswith("] second line")
    config = caffe.init_log(2)                     # ERROR and up only
    try:
        caffe.log("not shown")
    finally:
        config.restore()
    assert "not shown" not in capsys.readouterr().err
