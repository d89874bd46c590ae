"""Untrusted net definitions: Python layers refused in safe mode (before their module is
imported), HDF5Output confined to the working directory, `--no_python_layers` on the command
line, and CAFFEPY_SAFE."""
import os

import h5py
import numpy as np
import pytest

import caffepy
from caffepy import security
from caffepy.errors import NetError
from caffepy.proto import caffe_pb2
from helpers import messages, run_cli

MODULE = '''
import os
import caffe
open(os.path.join(os.path.dirname(__file__), "IMPORTED"), "w").close()


class Double(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 2 * top[0].diff
'''

NET = '''name: "n"
layer { name: "data" type: "DummyData" top: "x" top: "t"
  dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 }
    data_filler { type: "constant" value: 1.5 } data_filler { type: "constant" value: 1 } } }
layer { name: "double" type: "Python" bottom: "x" top: "y"
  python_param { module: "r3_trojan" layer: "Double" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
'''

REFUSED = ("Layer 'double' (Python){where}: Python layers are refused (safe mode: "
           "allow_python_layers=False, --no_python_layers or CAFFEPY_SAFE=1); it would import "
           "and run module 'r3_trojan' (class 'Double').")


@pytest.fixture
def trojan(tmp_path, monkeypatch):
    """A module that leaves a file IMPORTED behind when it is imported."""
    import sys
    mod = tmp_path / "mods"
    mod.mkdir()
    (mod / "r3_trojan.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(mod))
    monkeypatch.delitem(sys.modules, "r3_trojan", raising=False)
    monkeypatch.delenv(security.SAFE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(NET)
    return mod / "IMPORTED"


def test_net_refuses_python_layers_before_importing_them(trojan):
    with pytest.raises(NetError) as e:
        caffepy.Net("net.prototxt", caffepy.TRAIN, allow_python_layers=False)
    assert str(e.value).startswith(REFUSED.format(where=" in 'net.prototxt'"))
    assert not trojan.exists()


def test_python_layers_are_allowed_by_default(trojan):
    n = caffepy.Net("net.prototxt", caffepy.TRAIN)
    assert trojan.exists()
    out = n.forward()
    np.testing.assert_array_equal(n.blobs["y"].data, np.full((2, 3), 3.0, np.float32))
    # EuclideanLoss: sum((3 - 1)^2) / (2 * 2) = 24 / 4
    assert float(out["loss"]) == 6.0


def test_caffepy_safe_env_refuses_and_an_explicit_argument_wins(trojan, monkeypatch):
    monkeypatch.setenv(security.SAFE_ENV, "1")
    with pytest.raises(NetError, match=r"^Layer 'double' \(Python\) in 'net.prototxt': Python "
                                       r"layers are refused"):
        caffepy.Net("net.prototxt", caffepy.TRAIN)
    assert not trojan.exists()
    n = caffepy.Net("net.prototxt", caffepy.TRAIN, allow_python_layers=True)
    assert trojan.exists() and float(n.forward()["loss"]) == 6.0
    monkeypatch.setenv(security.SAFE_ENV, "0")
    assert security.python_layers_allowed()


def test_create_layer_outside_a_net_follows_the_policy(trojan):
    lp = caffepy.proto.parse_text('name: "double" type: "Python" python_param { module: '
                                  '"r3_trojan" layer: "Double" }', caffe_pb2.LayerParameter())
    with security.policy(allow_python_layers=False):
        with pytest.raises(NetError, match=r"^Layer 'double' \(Python\): Python layers are "
                                           r"refused"):
            caffepy.layer.create_layer(lp)
    assert not trojan.exists()


SOLVER = '''net: "net.prototxt"
base_lr: 0.1
lr_policy: "fixed"
max_iter: 1
solver_mode: CPU
'''


def test_get_solver_refuses_python_layers_in_safe_mode(trojan):
    (trojan.parent.parent / "solver.prototxt").write_text(SOLVER)
    with pytest.raises(NetError, match=r"^Layer 'double' \(Python\)"):
        caffepy.get_solver("solver.prototxt", allow_python_layers=False)
    assert not trojan.exists()
    s = caffepy.get_solver("solver.prototxt")
    s.step(1)
    # y = 2x = 3, dL/dy = (y - t) / N = 1, dL/dx = 2; no param: only the loss is checked
    assert float(s.net.blobs["loss"].data) == 6.0


def test_cli_no_python_layers(trojan, capsys):
    (trojan.parent.parent / "solver.prototxt").write_text(SOLVER)
    for argv in (["train", "-solver", "solver.prototxt"],
                 ["test", "-model", "net.prototxt", "-weights", "none.caffemodel"],
                 ["time", "-model", "net.prototxt", "-iterations", "1"]):
        rc, _, err = run_cli(capsys, *argv, "--no_python_layers")
        assert rc == 1, argv
        where = "" if argv[0] == "train" else " in 'net.prototxt'"   # the solver passes a param
        assert REFUSED.format(where=where) in messages(err)[-1], err
        assert not trojan.exists()
    rc, _, err = run_cli(capsys, "time", "-model", "net.prototxt", "-iterations", "1")
    assert rc == 0, err
    assert trojan.exists()


# -- HDF5Output ---------------------------------------------------------------------------

def out_net(file_name):
    return ('layer { name: "data" type: "DummyData" top: "d" top: "l" dummy_data_param { '
            'shape { dim: 2 dim: 3 } shape { dim: 2 } '
            'data_filler { type: "constant" value: 7 } } }\n'
            'layer { name: "save" type: "HDF5Output" bottom: "d" bottom: "l" '
            'hdf5_output_param { file_name: "%s" } }\n' % file_name)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.delenv(security.SAFE_ENV, raising=False)
    monkeypatch.delenv(security.HDF5_OUTPUT_DIRS_ENV, raising=False)
    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path


def _written(path):
    with h5py.File(path, "r") as f:
        return f["data"][()]


def test_hdf5output_inside_the_working_directory(workdir):
    os.mkdir("out")
    n = caffepy.Net(out_net("out/o.h5"), caffepy.TEST)
    n.forward()
    n.layers[n.layer_names.index("save")].close()
    np.testing.assert_array_equal(_written("out/o.h5"), np.full((2, 3, 1, 1), 7, np.float32))


@pytest.mark.parametrize("where", ["../elsewhere/o.h5", "ABS"])
def test_hdf5output_outside_the_working_directory_is_refused(workdir, where):
    target = str(workdir / "elsewhere" / "o.h5")
    name = target if where == "ABS" else where
    with pytest.raises(NetError) as e:
        caffepy.Net(out_net(name), caffepy.TEST)
    msg = str(e.value)
    assert msg.startswith("Layer 'save' (HDF5Output): hdf5_output_param.file_name '%s' "
                          "resolves to '%s', outside the folders HDF5Output may write under "
                          "('%s')" % (name, os.path.realpath(target),
                                      os.path.realpath(str(workdir / "work"))))
    assert "CAFFEPY_HDF5_OUTPUT_DIRS" in msg
    assert not os.path.exists(target)


def test_hdf5output_symlink_pointing_outside_is_refused(workdir):
    victim = workdir / "elsewhere" / "victim.h5"
    victim.write_bytes(b"keep me")
    os.symlink(str(victim), "o.h5")
    with pytest.raises(NetError, match="outside the folders HDF5Output may write under"):
        caffepy.Net(out_net("o.h5"), caffepy.TEST)
    assert victim.read_bytes() == b"keep me"


def test_hdf5output_allowed_folders(workdir, monkeypatch):
    target = str(workdir / "elsewhere" / "o.h5")
    monkeypatch.setenv(security.HDF5_OUTPUT_DIRS_ENV, str(workdir / "elsewhere"))
    n = caffepy.Net(out_net(target), caffepy.TEST)
    n.forward()
    n.layers[n.layer_names.index("save")].close()
    assert _written(target).shape == (2, 3, 1, 1) and float(_written(target).sum()) == 42.0
    monkeypatch.setenv(security.SAFE_ENV, "1")           # safe mode ignores the extra folders
    with pytest.raises(NetError, match="CAFFEPY_SAFE is set, so only the working directory"):
        caffepy.Net(out_net(target), caffepy.TEST)
    monkeypatch.delenv(security.HDF5_OUTPUT_DIRS_ENV)
    monkeypatch.delenv(security.SAFE_ENV)
    with security.policy(hdf5_output_dirs=[str(workdir / "elsewhere")]):
        n = caffepy.Net(out_net(target), caffepy.TEST)
        n.layers[n.layer_names.index("save")].close()
    with pytest.raises(NetError):
        caffepy.Net(out_net(target), caffepy.TEST)       # the block is over
