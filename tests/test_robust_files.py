"""Bad nets, bad list files and interrupted writes: each is a caffepy error that names the
layer, blob or file (or, for writes, leaves the files as they were), never a raw exception."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import caffepy
from caffepy import atomic
from caffepy.errors import DataError, LayerError, NetError, SolverError
from caffepy.layers.python_layer import PythonLayerError
from caffepy.proto import caffe_pb2
from helpers import messages, run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(REPO, "src")

INPUT = ('layer { name: "in" type: "Input" top: "x" '
         'input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }\n')


def net(text, phase=caffepy.TEST, **kw):
    return caffepy.Net(text, phase, **kw)


# -- in-place layers that cannot run in place -----------------------------------------------

@pytest.mark.parametrize("layer", [
    'name: "conv1" type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }',
    'name: "pool1" type: "Pooling" pooling_param { kernel_size: 2 stride: 2 }',
    'name: "deconv1" type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 3 }',
    'name: "ip1" type: "InnerProduct" inner_product_param { num_output: 3 }',
    'name: "abs1" type: "AbsVal"',
])
def test_in_place_convolution_and_pooling_are_refused_at_construction(layer):
    name, ltype = layer.split('"')[1], layer.split('"')[3]
    with pytest.raises(NetError) as e:
        net(INPUT + 'layer { %s bottom: "x" top: "x" }' % layer)
    assert str(e.value) == ("Layer '%s' (%s) does not allow in-place computation: top 0 'x' "
                            "is its bottom 0; give the top its own name" % (name, ltype))


def test_in_place_relu_is_still_allowed():
    n = net(INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" top: "x" }')
    n.blobs["x"].data[...] = np.arange(-16, 16, dtype=np.float32).reshape(1, 2, 4, 4)
    out = n.forward()
    assert out["x"].min() == 0 and out["x"].max() == 15 and out["x"].sum() == 120


# -- Input without a shape ------------------------------------------------------------------

NO_SHAPE = 'layer { name: "in" type: "Input" top: "x" }\n'


def test_input_without_shape_names_the_input_when_a_layer_needs_the_shape():
    with pytest.raises(NetError) as e:
        net(NO_SHAPE + 'layer { name: "prob" type: "Softmax" bottom: "x" top: "p" }')
    msg = str(e.value)
    assert msg.startswith("Layer 'prob' (Softmax): axis 1 is out of range")
    assert msg.endswith("(bottom 'x' has no shape: Input layer 'in' gives no "
                        "input_param { shape { dim: ... } } for it)")


def test_input_without_shape_is_an_error_at_forward_until_reshaped():
    n = net(NO_SHAPE + 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }')
    with pytest.raises(LayerError, match=r"^Layer 'in' \(Input\): top 'x' has no shape: give "
                                         r"input_param \{ shape"):
        n.forward()
    n.blobs["x"].reshape(2, 3)                      # as pycaffe users do
    n.blobs["x"].data[...] = [[-1, 2, -3], [4, -5, 6]]
    np.testing.assert_array_equal(n.forward()["y"], [[0, 2, 0], [4, 0, 6]])


# -- more than 32 axes (Caffe's kMaxBlobAxes) ---------------------------------------------

def _dims(n):
    return " ".join(["dim: 1"] * n)


@pytest.mark.parametrize("ltype,param", [("Input", "input_param"),
                                         ("DummyData", "dummy_data_param")])
def test_more_than_32_axes_names_layer_and_blob(ltype, param):
    text = 'layer { name: "src" type: "%s" top: "big" %s { shape { %s } } }' % (
        ltype, param, _dims(33))
    with pytest.raises(NetError) as e:
        net(text)
    msg = str(e.value)
    assert msg.startswith("Layer 'src' (%s): cannot shape blob 'big': " % ltype)
    assert msg.endswith("has more than 32 axes")


def test_reshape_to_33_axes_names_the_reshape_layer_and_its_top():
    text = (INPUT + 'layer { name: "rs" type: "Reshape" bottom: "x" top: "y" '
            'reshape_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 %s } } }' % _dims(29))
    with pytest.raises(NetError, match=r"^Layer 'rs' \(Reshape\): cannot shape blob 'y': "):
        net(text)


def test_32_axes_are_allowed():
    n = net('layer { name: "src" type: "Input" top: "x" input_param { shape { %s dim: 3 } } }'
            % _dims(31))
    assert n.blobs["x"].shape == (1,) * 31 + (3,) and n.blobs["x"].count == 3


# -- Python layers: errors in the user's code ----------------------------------------------

BAD_LAYERS = '''
import caffe


class Boom(Exception):
    pass


class Fails(caffe.Layer):
    """Raises in the hook named by param_str."""
    def setup(self, bottom, top):
        if self.param_str == "setup":
            raise Boom("setup went wrong")

    def reshape(self, bottom, top):
        if self.param_str == "reshape":
            raise KeyError("no such key")
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        if self.param_str == "forward":
            raise ZeroDivisionError("division by zero in forward")
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if self.param_str == "backward":
            raise ValueError("bad gradient")
        bottom[0].diff[...] = 2 * top[0].diff


class NoInit(caffe.Layer):
    def __init__(self, layer_param):
        raise RuntimeError("constructor failed")

not_a_class = 3
'''


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    (tmp_path / "r3_bad_layers.py").write_text(BAD_LAYERS)
    (tmp_path / "r3_needs_dep.py").write_text("import r3_dependency_nobody_has\n")
    (tmp_path / "r3_raises_on_import.py").write_text("x = {}['missing']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for m in ("r3_bad_layers", "r3_needs_dep", "r3_raises_on_import"):
        sys.modules.pop(m, None)
    return tmp_path


def py_net(module, cls, param_str="", force_backward=False):
    return (("force_backward: true\n" if force_backward else "") +
            'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }\n'
            'layer { name: "user" type: "Python" bottom: "x" top: "y" python_param { '
            'module: "%s" layer: "%s" param_str: "%s" } }\n'
            'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "x" top: "l" }\n'
            % (module, cls, param_str))


def test_python_layer_setup_error_names_layer_and_class_and_keeps_the_cause(user_modules):
    with pytest.raises(LayerError) as e:
        net(py_net("r3_bad_layers", "Fails", "setup"))
    assert isinstance(e.value, PythonLayerError) and isinstance(e.value, NetError)
    assert str(e.value) == ("Layer 'user' (Python r3_bad_layers.Fails): setup() raised Boom: "
                            "setup went wrong")
    cause = e.value.__cause__
    assert type(cause).__name__ == "Boom" and str(cause) == "setup went wrong"


@pytest.mark.parametrize("hook,etype,text", [
    ("reshape", KeyError, "KeyError: 'no such key'"),
    ("forward", ZeroDivisionError, "ZeroDivisionError: division by zero in forward"),
])
def test_python_layer_runtime_errors_name_layer_and_class(user_modules, hook, etype, text):
    n = net(py_net("r3_bad_layers", "Fails"), caffepy.TRAIN)
    n.layers[n.layer_names.index("user")].impl.param_str = hook
    with pytest.raises(LayerError) as e:
        n.forward()
    assert str(e.value) == "Layer 'user' (Python r3_bad_layers.Fails): %s() raised %s" % (
        hook, text)
    assert isinstance(e.value.__cause__, etype)


def test_python_layer_backward_error_names_layer_and_class(user_modules):
    n = net(py_net("r3_bad_layers", "Fails", force_backward=True), caffepy.TRAIN)
    n.blobs["x"].data[...] = [1, 2]
    n.forward()
    np.testing.assert_array_equal(n.blobs["y"].data, [2, 4])
    n.layers[n.layer_names.index("user")].impl.param_str = "backward"
    with pytest.raises(LayerError) as e:
        n.backward()
    assert str(e.value) == ("Layer 'user' (Python r3_bad_layers.Fails): backward() raised "
                            "ValueError: bad gradient")
    assert isinstance(e.value.__cause__, ValueError)


def test_python_layer_constructor_error(user_modules):
    with pytest.raises(LayerError) as e:
        net(py_net("r3_bad_layers", "NoInit"))
    assert str(e.value) == ("Layer 'user' (Python r3_bad_layers.NoInit): __init__() raised "
                            "RuntimeError: constructor failed")
    assert isinstance(e.value.__cause__, RuntimeError)


def test_python_param_missing_module_names_layer_module_and_class(user_modules):
    with pytest.raises(LayerError) as e:
        net(py_net("r3_no_such_module", "Cls"))
    msg = str(e.value)
    assert msg.startswith("Layer 'user' (Python): cannot import python_param.module "
                          "'r3_no_such_module' (for class 'Cls'): ")
    assert isinstance(e.value.__cause__, ModuleNotFoundError)


def test_python_param_module_whose_dependency_is_missing(user_modules):
    with pytest.raises(LayerError) as e:
        net(py_net("r3_needs_dep", "Cls"))
    assert str(e.value) == ("Layer 'user' (Python): python_param.module 'r3_needs_dep' (class "
                            "'Cls') failed to import: it needs module "
                            "'r3_dependency_nobody_has', which cannot be imported")
    assert e.value.__cause__.name == "r3_dependency_nobody_has"


def test_python_param_module_raising_on_import(user_modules):
    with pytest.raises(LayerError) as e:
        net(py_net("r3_raises_on_import", "Cls"))
    assert str(e.value) == ("Layer 'user' (Python): python_param.module 'r3_raises_on_import' "
                            "(class 'Cls') raised while being imported: KeyError: 'missing'")
    assert isinstance(e.value.__cause__, KeyError)


def test_python_param_missing_class_names_layer_module_and_class(user_modules):
    with pytest.raises(LayerError) as e:
        net(py_net("r3_bad_layers", "Missing"))
    path = str(user_modules / "r3_bad_layers.py")
    assert str(e.value) == ("Layer 'user' (Python): module 'r3_bad_layers' (%s) has no class "
                            "'Missing' (python_param.layer)" % path)
    with pytest.raises(LayerError, match=r"^Layer 'user' \(Python\): python_param.layer "
                                         r"'not_a_class' in module 'r3_bad_layers' is a int, "):
        net(py_net("r3_bad_layers", "not_a_class"))


def test_python_layer_that_works_still_computes(user_modules):
    n = net(py_net("r3_bad_layers", "Fails", force_backward=True), caffepy.TRAIN)
    n.blobs["x"].data[...] = [1, -3]
    loss = n.forward()["l"]
    # y = 2x; loss = ||y - x||^2 / (2 N) = (1 + 9) / 4
    assert float(loss) == pytest.approx(2.5)
    n.backward()
    # dl/dy = (y - x) / N = x / 2; dl/dx through the layer 2 * x/2, plus -(y - x)/N = -x/2
    np.testing.assert_allclose(n.blobs["x"].diff, [0.5, -1.5])


# -- list files that are not UTF-8 ---------------------------------------------------------

LATIN1_LIST = b"img_a.png 0\nimg_\xe9t\xe9.png 1\n"      # 0xe9 at byte offset 16, line 2


def test_image_list_not_utf8_names_file_and_offset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.txt").write_bytes(LATIN1_LIST)
    text = ('layer { name: "images" type: "ImageData" top: "d" top: "l" '
            'image_data_param { source: "list.txt" batch_size: 1 } }')
    with pytest.raises(DataError) as e:
        net(text)
    assert str(e.value) == ("Layer 'images' (ImageData): the image list 'list.txt' is not "
                            "UTF-8 text: byte 0xe9 at byte offset 16 (line 2) cannot be "
                            "decoded")


def test_hdf5_source_list_not_utf8_names_file_and_offset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "h5list.txt").write_bytes(b"a.h5\n\xff\xfeb.h5\n")
    text = ('layer { name: "h5" type: "HDF5Data" top: "data" '
            'hdf5_data_param { source: "h5list.txt" batch_size: 1 } }')
    with pytest.raises(DataError) as e:
        net(text)
    assert "'h5list.txt' is not UTF-8 text: byte 0xff at byte offset 5 (line 2)" in str(e.value)
    assert str(e.value).startswith("Layer 'h5' (HDF5Data): ")


def test_window_file_not_utf8_names_file_and_offset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "windows.txt").write_bytes(b"# 0\n/img/\x80.jpg\n3\n10\n10\n0\n")
    text = ('layer { name: "win" type: "WindowData" top: "d" top: "l" '
            'window_data_param { source: "windows.txt" batch_size: 1 } '
            'transform_param { crop_size: 4 } }')
    with pytest.raises(DataError) as e:
        net(text, caffepy.TRAIN)
    assert "'windows.txt' is not UTF-8 text: byte 0x80 at byte offset 9 (line 2)" in \
        str(e.value)


# -- snapshot pairs ---------------------------------------------------------------------

SOLVER_NET = '''
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
    data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 0.5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2
    weight_filler { type: "constant" value: 0.1 } bias_filler { type: "constant" value: 0 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" }
'''


def _solver_param(prefix, max_iter=2):
    p = caffe_pb2.SolverParameter()
    p.net_param.CopyFrom(caffepy.proto.parse_text(SOLVER_NET, caffe_pb2.NetParameter()))
    p.base_lr, p.lr_policy, p.max_iter, p.momentum = 0.1, "fixed", max_iter, 0.9
    p.snapshot, p.snapshot_prefix, p.solver_mode = 2, prefix, caffe_pb2.SolverParameter.CPU
    return p


@pytest.fixture
def trained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkdir("snap")
    s = caffepy.get_solver(_solver_param("snap/tiny"))
    s.solve()
    assert os.path.isfile("snap/tiny_iter_2.caffemodel")
    assert os.path.isfile("snap/tiny_iter_2.solverstate")
    return s


def test_state_without_its_model_is_a_clear_error(trained):
    os.remove("snap/tiny_iter_2.caffemodel")        # a run killed between the two writes
    s = caffepy.get_solver(_solver_param("snap/tiny", 4))
    w = s.net.params["ip"][0].data.copy()
    with pytest.raises(SolverError) as e:
        s.restore("snap/tiny_iter_2.solverstate")
    assert str(e.value).startswith("Cannot restore from 'snap/tiny_iter_2.solverstate': its "
                                   "model file (learned_net) 'snap/tiny_iter_2.caffemodel' "
                                   "does not exist")
    assert s.iter == 0                              # nothing was changed
    np.testing.assert_array_equal(s.net.params["ip"][0].data, w)


def test_cli_snapshot_without_model_fails_with_the_file_names(trained, capsys):
    caffepy.proto.write_text(_solver_param("snap/tiny", 4), "solver.prototxt")
    os.remove("snap/tiny_iter_2.caffemodel")
    rc, _, err = run_cli(capsys, "train", "-solver", "solver.prototxt",
                         "--snapshot", "snap/tiny_iter_2.solverstate")
    assert rc == 1
    fatal = [m for m in messages(err) if "Cannot restore" in m]
    assert len(fatal) == 1 and "'snap/tiny_iter_2.caffemodel' does not exist" in fatal[0]
    assert not os.path.exists("snap/tiny_iter_4.solverstate")


def test_resume_from_another_directory_finds_the_model_beside_the_state(trained):
    saved = trained.net.params["ip"][0].data.copy()
    os.chdir("snap")              # learned_net says "snap/tiny_iter_2.caffemodel"
    s = caffepy.get_solver(_solver_param("tiny", 4))
    s.restore("tiny_iter_2.solverstate")
    assert s.iter == 2
    np.testing.assert_array_equal(s.net.params["ip"][0].data, saved)
    np.testing.assert_array_equal(s.history[0], trained.history[0])


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_snapshot_replaces_a_planted_symlink_and_leaves_its_target(trained, tmp_path, fmt):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    h5 = ".h5" if fmt == "HDF5" else ""
    for ext in (".caffemodel", ".solverstate"):
        os.symlink(str(victim), "snap/tiny_iter_4" + ext + h5)
    p = _solver_param("snap/tiny", 4)
    p.snapshot_format = getattr(caffe_pb2.SolverParameter, fmt)
    s = caffepy.get_solver(p)
    s.restore("snap/tiny_iter_2.solverstate")
    s.solve()
    assert victim.read_bytes() == b"precious"
    for ext in (".caffemodel", ".solverstate"):
        assert os.path.isfile("snap/tiny_iter_4" + ext + h5)
        assert not os.path.islink("snap/tiny_iter_4" + ext + h5)
    assert not [f for f in os.listdir("snap") if f.endswith(".tmp")]
    s2 = caffepy.get_solver(_solver_param("snap/tiny", 4))
    s2.restore("snap/tiny_iter_4.solverstate" + h5)
    assert s2.iter == 4
    np.testing.assert_array_equal(s2.net.params["ip"][0].data, s.net.params["ip"][0].data)
    np.testing.assert_array_equal(s2.history[0], s.history[0])


def test_snapshot_prefix_probe_does_not_truncate_through_a_planted_symlink(tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkdir("snap")
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    os.symlink(str(victim), "snap/tiny_iter_0.tempfile")   # the write-permission probe's name
    s = caffepy.get_solver(_solver_param("snap/tiny"))
    assert victim.read_bytes() == b"precious"
    assert sorted(os.listdir("snap")) == ["tiny_iter_0.tempfile"]
    s.solve()
    assert sorted(os.listdir("snap")) == ["tiny_iter_0.tempfile", "tiny_iter_2.caffemodel",
                                          "tiny_iter_2.solverstate"]
    assert victim.read_bytes() == b"precious"


# -- atomic writes --------------------------------------------------------------------------

def test_atomic_write_does_not_follow_a_symlink_planted_at_the_temporary_name(tmp_path,
                                                                                monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    target = tmp_path / "out.bin"
    tokens = iter(["deadbeef", "0badf00d"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: next(tokens))
    planted = tmp_path / (".out.bin.caffepy-%d-deadbeef.tmp" % os.getpid())
    os.symlink(str(victim), str(planted))
    atomic.atomic_write(str(target), b"new bytes")
    assert target.read_bytes() == b"new bytes"
    assert victim.read_bytes() == b"precious"
    assert os.path.islink(str(planted))                  # left alone, not written through
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["victim.txt", "out.bin", planted.name])


def test_an_exception_mid_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.caffemodel"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(str(target)) as f:
            f.write(b"half")
            raise RuntimeError("disk gone")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.caffemodel"]


WRITER = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from caffepy import atomic
    with atomic.atomic_path(sys.argv[1]) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"x" * 1000)
            f.flush()
            print(tmp, flush=True)
            time.sleep(60)
''')

NEXT_SNAPSHOT = textwrap.dedent('''
    import logging, os, sys
    sys.path.insert(0, sys.argv[2])
    import caffepy
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.chdir(sys.argv[1])
    caffepy.get_solver("solver.prototxt").solve()
''')


def test_a_killed_writer_leaves_the_old_file_and_the_next_snapshot_removes_its_temporary(
        tmp_path):
    target = tmp_path / "net_iter_10.caffemodel"
    target.write_bytes(b"first")
    other = tmp_path / ".notes.txt.tmp"                  # not caffepy's naming: kept
    other.write_bytes(b"mine")
    w = subprocess.Popen([sys.executable, "-c", WRITER, str(target), SRC],
                         stdout=subprocess.PIPE, text=True)
    tmp = w.stdout.readline().strip()
    assert os.path.getsize(tmp) == 1000
    w.kill()
    assert w.wait() == -signal.SIGKILL
    w.stdout.close()
    assert target.read_bytes() == b"first" and os.path.exists(tmp)
    os.utime(tmp, (os.path.getmtime(tmp) - 5,) * 2)       # older than the next process
    (tmp_path / "net.prototxt").write_text(SOLVER_NET)
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 2 snapshot: 2 '
        'snapshot_prefix: "net" solver_mode: CPU')
    nxt = subprocess.run([sys.executable, "-c", NEXT_SNAPSHOT, str(tmp_path), SRC],
                         capture_output=True, text=True, timeout=300)
    assert nxt.returncode == 0, nxt.stderr               # exited, no signal death
    assert not os.path.exists(tmp)
    assert "Removed %s, a temporary file left by an interrupted write" % tmp in nxt.stderr
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".notes.txt.tmp", "net.prototxt", "net_iter_10.caffemodel", "net_iter_2.caffemodel",
        "net_iter_2.solverstate", "solver.prototxt"]


def test_stale_temporaries_of_live_or_recent_writers_are_kept(tmp_path):
    live = tmp_path / (".a.caffepy-%d-0123abcd.tmp" % os.getpid())
    live.write_bytes(b"")
    parent = tmp_path / (".b.caffepy-%d-0123abcd.tmp" % os.getppid())   # running
    parent.write_bytes(b"")
    dead_recent = tmp_path / ".c.caffepy-999999999-0123abcd.tmp"
    dead_recent.write_bytes(b"")
    dead_old = tmp_path / ".d.caffepy-999999999-0123abcd.tmp"
    dead_old.write_bytes(b"")
    old_naming = tmp_path / ".e.caffemodel.tmp-999999999"
    old_naming.write_bytes(b"")
    t = os.path.getmtime(str(dead_old))
    for p in (live, parent, dead_old, old_naming):
        os.utime(str(p), (t - 100, t - 100))
    removed = atomic.clean_stale_temps(str(tmp_path), older_than=t - 50)
    assert sorted(os.path.basename(p) for p in removed) == [dead_old.name, old_naming.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, parent.name, dead_recent.name])


# -- writes into a folder that does not exist -------------------------------------------------

@pytest.mark.parametrize("h5", [False, True])
def test_net_save_into_a_missing_folder_is_a_net_error_naming_the_target(tmp_path, h5):
    n = net(INPUT + 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                    'inner_product_param { num_output: 3 } }\n')
    folder = str(tmp_path / "nodir")
    target = os.path.join(folder, "saved.caffemodel" + (".h5" if h5 else ""))
    with pytest.raises(NetError) as e:
        (n.save_hdf5 if h5 else n.save)(target)
    assert str(e.value) == ("Cannot save weights to '%s': No such file or directory (the "
                            "folder '%s' does not exist)" % (target, folder))
    assert isinstance(e.value.__cause__, FileNotFoundError)
    assert e.value.__cause__.filename == target          # the target, not a temporary file
    # a regular file where the folder should be
    (tmp_path / "afile").write_bytes(b"x")
    target = str(tmp_path / "afile" / "saved.caffemodel")
    with pytest.raises(NetError) as e:
        (n.save_hdf5 if h5 else n.save)(target)
    assert str(e.value) == ("Cannot save weights to '%s': Not a directory ('%s' is not a "
                            "folder)" % (target, str(tmp_path / "afile")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    assert (tmp_path / "afile").read_bytes() == b"x"


def test_atomic_write_into_a_missing_folder_names_the_target(tmp_path):
    target = str(tmp_path / "gone" / "mean.binaryproto")
    with pytest.raises(FileNotFoundError) as e:
        atomic.atomic_write(target, b"bytes")
    assert e.value.filename == target
    assert e.value.strerror == ("No such file or directory (the folder '%s' does not exist)"
                                % str(tmp_path / "gone"))
    assert ".tmp" not in str(e.value)


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_snapshot_into_a_folder_removed_after_setup_names_the_snapshot_file(trained, fmt):
    p = _solver_param("snap/tiny", 4)
    p.snapshot_format = getattr(caffe_pb2.SolverParameter, fmt)
    s = caffepy.get_solver(p)              # the prefix probe passes: snap/ exists here
    for name in os.listdir("snap"):
        os.remove(os.path.join("snap", name))
    os.rmdir("snap")
    s.step(1)
    with pytest.raises(SolverError) as e:
        s.snapshot()
    model = "snap/tiny_iter_1.caffemodel" + (".h5" if fmt == "HDF5" else "")
    assert str(e.value) == (
        "Cannot write snapshot '%s': No such file or directory (the folder '%s' does not "
        "exist). Make sure that the directory of snapshot_prefix 'snap/tiny' exists and is "
        "writeable." % (model, os.path.abspath("snap")))
    assert not os.path.exists("snap")
