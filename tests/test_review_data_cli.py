"""Semantic review against BVLC Caffe 1.0 of the data layers, the DataTransformer and the
`caffepy` train/test/time commands. Each expected value is hand-computed from the Caffe code
path cited in the comment next to it."""
import io
import os
import re

import h5py
import numpy as np
import pytest

import caffepy
from caffepy import Blob, backend, cli
from caffepy.data import DataTransformer, array_to_datum, write_lmdb
from caffepy.layer import LayerError, create_layer
from caffepy.proto import caffe_pb2
from caffepy.proto import parse_text, write_mean_binaryproto

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def setup_layer(text, phase=TRAIN):
    layer = create_layer(parse_text(text, caffe_pb2.LayerParameter()), phase)
    top = [Blob() for _ in layer.layer_param.top]
    layer.setup([], top)
    return layer, top


def tparam(text):
    return parse_text(text, caffe_pb2.TransformationParameter())


# -- DataTransformer (src/caffe/data_transformer.cpp, Transform(const Datum&, Dtype*)) ---------

X = np.arange(2 * 3 * 5, dtype=np.float32).reshape(1, 2, 3, 5)       # 1 item, C=2, H=3, W=5


def test_mean_value_single_is_broadcast_then_scaled():
    # one mean_value is replicated to every channel; out = (x - mean) * scale
    t = DataTransformer(tparam("mean_value: 4 scale: 0.5"), TEST)
    np.testing.assert_array_equal(t.transform(X), (X - 4) * np.float32(0.5))
    assert t.transform(X)[0, 1, 2, 4] == (29 - 4) * 0.5


def test_mean_value_per_channel_and_count_check():
    t = DataTransformer(tparam("mean_value: 1 mean_value: 10 scale: 2"), TEST)
    y = t.transform(X)
    assert y[0, 0, 0, 0] == (0 - 1) * 2 and y[0, 1, 0, 0] == (15 - 10) * 2
    # CHECK(mean_values_.size() == 1 || mean_values_.size() == datum_channels)
    t = DataTransformer(tparam("mean_value: 1 mean_value: 2 mean_value: 3"), TEST)
    with pytest.raises(ValueError, match="1 mean_value or as many as channels"):
        t.transform(X)


def test_mean_file_and_mean_value_are_exclusive(tmp_path):
    # DataTransformer ctor: CHECK(!(has_mean_file && mean_value_size > 0))
    write_mean_binaryproto(np.zeros((1, 2, 3, 5), np.float32), str(tmp_path / "m.binaryproto"))
    with pytest.raises(ValueError, match="mean_file and mean_value"):
        DataTransformer(tparam('mean_file: "%s" mean_value: 1' % (tmp_path / "m.binaryproto")))


def test_test_centre_crop_uses_integer_division(tmp_path):
    # TEST: h_off = (3 - 2) / 2 = 0, w_off = (5 - 2) / 2 = 1; the mean_file is indexed at the
    # uncropped position: mean[(c * H + h_off + h) * W + w_off + w]
    mean = (np.arange(30, dtype=np.float32) * 0.5).reshape(1, 2, 3, 5)
    write_mean_binaryproto(mean, str(tmp_path / "m.binaryproto"))
    t = DataTransformer(tparam('crop_size: 2 scale: 3 mean_file: "%s"'
                               % (tmp_path / "m.binaryproto")), TEST)
    y = t.transform(X)
    assert y.shape == (1, 2, 2, 2)
    # out[1, 1, 0] <- in[1, 1, 1] = 15 + 5 + 1 = 21, mean 10.5 -> (21 - 10.5) * 3 = 31.5
    assert y[0, 1, 1, 0] == 31.5
    np.testing.assert_array_equal(y[0], (X[0] - mean[0])[:, 0:2, 1:3] * 3)


def test_test_crop_with_mirror_draws_only_the_coin():
    # phase TEST, crop_size and mirror: do_mirror = mirror && Rand(2) (the only draw, since
    # the offsets are the centre at TEST); a mirrored item is out[c,h,crop-1-w].
    x = np.repeat(X, 6, axis=0) + np.arange(6, dtype=np.float32)[:, None, None, None] * 100
    t = DataTransformer(tparam("crop_size: 2 mirror: true mean_value: 1"), TEST)
    t.rng = np.random.default_rng(5)
    y = t.transform(x)
    ref = np.random.default_rng(5)
    coins = [bool(ref.integers(2)) for _ in range(6)]
    assert any(coins) and not all(coins)
    for i in range(6):
        crop = x[i, :, 0:2, 1:3] - 1
        np.testing.assert_array_equal(y[i], crop[:, :, ::-1] if coins[i] else crop)


def test_train_crop_draws_coin_then_offsets():
    # TRAIN: coin first (if mirror), then h_off = Rand(H - crop + 1), w_off = Rand(W - crop + 1)
    t = DataTransformer(tparam("crop_size: 2 mirror: true"), TRAIN)
    t.rng = np.random.default_rng(3)
    y = t.transform(X)
    ref = np.random.default_rng(3)
    m, h, w = bool(ref.integers(2)), int(ref.integers(2)), int(ref.integers(4))
    crop = X[0, :, h:h + 2, w:w + 2]
    np.testing.assert_array_equal(y[0], crop[:, :, ::-1] if m else crop)


def test_transformer_draws_only_when_caffe_does():
    # InitRand: rng only if mirror || (TRAIN && crop_size)
    assert not DataTransformer(tparam("crop_size: 2"), TEST).needs_rand
    assert DataTransformer(tparam("crop_size: 2"), TRAIN).needs_rand
    assert DataTransformer(tparam("mirror: true"), TEST).needs_rand
    assert not DataTransformer(tparam("scale: 2"), TRAIN).needs_rand


def _png_bytes(rgb):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_force_color_and_gray_for_encoded_datums():
    pytest.importorskip("PIL")
    grey = np.array([[0, 50, 100]], dtype=np.uint8)
    d = caffe_pb2.Datum(encoded=True, data=_png_bytes(grey))
    # DecodeDatumToCVMatNative keeps 1 channel; force_color -> 3 (grey replicated, BGR)
    assert DataTransformer(tparam("")).decode(d).shape == (1, 1, 3)
    c = DataTransformer(tparam("force_color: true")).decode(d)
    assert c.shape == (3, 1, 3) and (c == grey[None]).all()
    rgb = np.array([[[255, 0, 0]]], dtype=np.uint8)
    d = caffe_pb2.Datum(encoded=True, data=_png_bytes(rgb))
    assert DataTransformer(tparam("")).decode(d)[:, 0, 0].tolist() == [0, 0, 255]   # BGR
    assert DataTransformer(tparam("force_gray: true")).decode(d).shape == (1, 1, 1)
    with pytest.raises(ValueError, match="force_color and force_gray"):
        DataTransformer(tparam("force_color: true force_gray: true"))


# -- Data layer (src/caffe/layers/data_layer.cpp) ------------------------------------------

@pytest.fixture
def lmdb5(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    items = [(np.arange(12).reshape(1, 3, 4) + 20 * i).astype(np.uint8) for i in range(5)]
    write_lmdb("db", [("%08d" % i, array_to_datum(items[i], 7 + i)) for i in (4, 2, 0, 3, 1)])
    return items


DATA = ('name: "d" type: "Data" top: "data" top: "label" '
        'data_param { source: "db" batch_size: 3 backend: LMDB %s } %s')


def test_data_label_shape_and_wrap_order(lmdb5):
    # DataLayerSetUp: label_shape(1, batch_size); records in key order, wrapping (Next()).
    layer, top = setup_layer(DATA % ("", ""), TEST)
    assert top[0].shape == (3, 1, 3, 4) and top[1].shape == (3,)
    for idx in ([0, 1, 2], [3, 4, 0], [1, 2, 3]):
        layer.forward([], top)
        assert top[1].shape == (3,)
        np.testing.assert_array_equal(top[1].data, [7 + i for i in idx])
        np.testing.assert_array_equal(top[0].data, np.stack([lmdb5[i] for i in idx]))
    layer.close()


def test_data_rand_skip_is_ignored_as_in_caffe_1_0(lmdb5):
    # Caffe 1.0's DataLayer never reads data_param.rand_skip ("DEPRECATED. Each solver accesses
    # a different subset of the database."): DataLayerSetUp reads cursor_->value() at the first
    # key and load_batch only skips for other solver ranks (Skip()). So reading starts at key 0.
    for seed in range(4):
        backend.set_random_seed(seed)
        layer, top = setup_layer(DATA % ("rand_skip: 4", ""), TRAIN)
        layer.forward([], top)
        np.testing.assert_array_equal(top[1].data, [7, 8, 9])
        layer.close()


def test_data_mean_value_per_channel_count_is_checked(lmdb5):
    with pytest.raises(LayerError, match="1 mean_value or as many as channels"):
        setup_layer(DATA % ("", "transform_param { mean_value: 1 mean_value: 2 }"), TEST)


# -- HDF5Data (src/caffe/layers/hdf5_data_layer.cpp) ----------------------------------------

@pytest.fixture
def h5two(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with h5py.File("a.h5", "w") as f:
        f["data"] = np.arange(3, dtype=np.float32).reshape(3, 1)
        f["label"] = np.arange(3, dtype=np.float32)
    with h5py.File("b.h5", "w") as f:
        f["data"] = np.arange(10, 12, dtype=np.float32).reshape(2, 1)
        f["label"] = np.arange(10, 12, dtype=np.float32)
    with open("list.txt", "w") as f:
        f.write("a.h5 b.h5\n")


H5 = ('name: "h" type: "HDF5Data" top: "data" top: "label" '
      'hdf5_data_param { source: "list.txt" batch_size: 4 %s }')


def test_hdf5_batches_span_files(h5two):
    # Forward_cpu copies row by row and Next() moves to the next file at a file's end.
    layer, top = setup_layer(H5 % "")
    assert top[0].shape == (4, 1) and top[1].shape == (4,)
    layer.forward([], top)
    np.testing.assert_array_equal(top[1].data, [0, 1, 2, 10])
    layer.forward([], top)
    np.testing.assert_array_equal(top[1].data, [11, 0, 1, 2])
    np.testing.assert_array_equal(top[0].data[:, 0], [11, 0, 1, 2])


def test_hdf5_shuffle_keeps_rows_of_one_file_together(h5two):
    # shuffle: the file order is shuffled (at setup and at each wrap) and the rows of each
    # loaded file are permuted, but a file is read completely before the next one.
    backend.set_random_seed(2)
    layer, top = setup_layer(H5 % "shuffle: true")
    seen = []
    for _ in range(10):                                    # 40 rows = 8 epochs of 5
        layer.forward([], top)
        seen.extend(top[1].data.tolist())
    np.testing.assert_array_equal(top[0].data[:, 0], top[1].data)   # rows stay aligned
    for e in range(8):
        epoch = seen[5 * e:5 * e + 5]
        blocks = [epoch[:3], epoch[3:]] if epoch[0] < 10 else [epoch[:2], epoch[2:]]
        assert sorted(blocks[0] + blocks[1]) == [0, 1, 2, 10, 11]
        assert len({v < 10 for v in blocks[0]}) == 1 and len({v < 10 for v in blocks[1]}) == 1


# -- MemoryData (src/caffe/layers/memory_data_layer.cpp) -----------------------------------

MEM = ('name: "m" type: "MemoryData" top: "data" top: "label" '
       'memory_data_param { batch_size: 2 channels: 1 height: 1 width: 2 }')


def test_memorydata_shapes_and_reset_restarts():
    layer, top = setup_layer(MEM)
    # LayerSetUp: label_shape(1, batch_size); Forward_cpu: top[1]->Reshape(batch_size, 1, 1, 1)
    assert top[1].shape == (2,)
    data = np.arange(12, dtype=np.float32).reshape(6, 1, 1, 2)
    layer.reset(data, np.arange(6, dtype=np.float32), 6)
    layer.forward([], top)
    layer.forward([], top)
    assert top[1].shape == (2, 1, 1, 1)
    np.testing.assert_array_equal(top[1].data.ravel(), [2, 3])
    # Reset(): pos_ = 0
    layer.reset(data, np.arange(6, dtype=np.float32), 6)
    layer.forward([], top)
    np.testing.assert_array_equal(top[1].data.ravel(), [0, 1])
    # CHECK_EQ(n % batch_size_, 0)
    with pytest.raises(LayerError, match="multiple of batch_size"):
        layer.reset(data[:3], np.arange(3, dtype=np.float32), 3)


# -- ImageData (src/caffe/layers/image_data_layer.cpp) -------------------------------------

def test_imagedata_gray_resize_and_label_shape(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    from PIL import Image
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((4, 6, 3), 90, np.uint8)).save("a b.png")     # space in the name
    Image.fromarray(np.full((5, 3, 3), 30, np.uint8)).save("c.png")
    with open("list.txt", "w") as f:
        f.write("a b.png 3\nc.png 5\n")                  # split at the last space
    layer, top = setup_layer('name: "i" type: "ImageData" top: "data" top: "label" '
                             'image_data_param { source: "list.txt" batch_size: 3 '
                             'new_height: 2 new_width: 3 is_color: false }', TEST)
    assert top[0].shape == (3, 1, 2, 3) and top[1].shape == (3,)
    layer.forward([], top)
    np.testing.assert_array_equal(top[1].data, [3, 5, 3])
    np.testing.assert_array_equal(top[0].data[:, 0, 0, 0], [90, 30, 90])
    layer.close()
    # CHECK((new_height == 0 && new_width == 0) || (new_height > 0 && new_width > 0))
    with pytest.raises(LayerError, match="new_height and new_width"):
        setup_layer('name: "i" type: "ImageData" top: "data" top: "label" '
                    'image_data_param { source: "list.txt" batch_size: 1 new_height: 2 }')


# -- CLI (tools/caffe.cpp) -----------------------------------------------------------------

NET = """
name: "n"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 }
    data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 0 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 1 weight_filler { type: "constant" value: 0 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss"
  loss_weight: 3 }
layer { name: "lvl" type: "Reduction" bottom: "ip" top: "lvl" include { min_level: 2 } }
"""

SOLVER = """
net: "net.prototxt"
base_lr: 0
lr_policy: "fixed"
max_iter: 0
test_iter: 1
test_interval: 100
test_net: "net.prototxt"
"""


def messages(err):
    return [m.group(1) for m in re.finditer(r"^[IWEF]\d{4} [\d:.]+ +\d+ [^\]]+\] (.*)$", err,
                                            re.M)]


@pytest.fixture
def clidir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    for name, w in (("a.caffemodel", 1.0), ("b.caffemodel", 2.0)):
        net = caffepy.Net("net.prototxt", caffepy.TEST)
        net.params["ip"][0].data[...] = w
        net.params["ip"][1].data[...] = 0.5
        net.save(name)
    return tmp_path


def _capture_solver(monkeypatch):
    from caffepy import solver as solver_mod
    seen = {}
    orig = solver_mod.get_solver

    def get_solver(param, **kw):
        s = orig(param, **kw)
        seen["solver"] = s
        return s
    monkeypatch.setattr(solver_mod, "get_solver", get_solver)
    return seen


def test_train_weights_list_copied_into_train_and_test_nets_in_order(clidir, capsys,
                                                                         monkeypatch):
    # CopyLayers: for each model in order, CopyTrainedLayersFrom into net() and every test net;
    # the later model wins for a layer both hold.
    seen = _capture_solver(monkeypatch)
    assert cli.main(["train", "-solver", "solver.prototxt",
                     "-weights", "a.caffemodel,b.caffemodel"]) == 0
    s = seen["solver"]
    for net in [s.net] + list(s.test_nets):
        np.testing.assert_array_equal(net.params["ip"][0].data, [[2, 2, 2]])
    capsys.readouterr()


def test_train_snapshot_with_weights_is_an_error(clidir, capsys):
    assert cli.main(["train", "-solver", "solver.prototxt", "-weights", "a.caffemodel",
                     "-snapshot", "x.solverstate"]) == 1
    assert "not both" in capsys.readouterr().err


def test_train_level_affects_only_the_train_net(clidir, capsys, monkeypatch):
    seen = _capture_solver(monkeypatch)
    assert cli.main(["train", "-solver", "solver.prototxt", "-level", "2"]) == 0
    assert "lvl" in seen["solver"].net.outputs
    assert "lvl" not in seen["solver"].test_nets[0].outputs
    capsys.readouterr()


def test_test_command_level_batches_and_loss_weight_suffix(clidir, capsys):
    # Net(model, TEST, level, stages); per batch "Batch i, out = v"; then "Loss: " and the means
    # with " (* w = w*mean loss)". ip = 3 * 2 + 0.5 = 6.5 per item, Euclidean = 2*6.5^2/(2*2).
    rc = cli.main(["test", "-model", "net.prototxt", "-weights", "b.caffemodel", "-level", "2",
                   "-iterations", "2"])
    m = messages(capsys.readouterr().err)
    assert rc == 0
    assert "Running for 2 iterations." in m
    for i in range(2):
        assert "Batch %d, loss = 21.125" % i in m
        assert "Batch %d, lvl = 13" % i in m          # Reduction SUM of [6.5, 6.5]
    assert "Loss: 63.375" in m                         # 3 * 21.125
    assert "loss = 21.125 (* 3 = 63.375 loss)" in m
    assert "lvl = 13" in m
    # outputs are reported in output-blob order (alphabetical: loss, lvl)
    assert m.index("Batch 0, loss = 21.125") < m.index("Batch 0, lvl = 13")


def test_test_command_default_iterations_is_50(clidir, capsys):
    assert cli.main(["test", "-model", "net.prototxt", "-weights", "a.caffemodel"]) == 0
    m = messages(capsys.readouterr().err)
    assert "Running for 50 iterations." in m
    assert "Batch 49, loss = 6.125" in m and "Batch 50, loss = 6.125" not in m


def test_time_backward_runs_every_layer_with_bottom_need_backward(clidir, capsys, monkeypatch):
    # time(): layers[i]->Backward(top_vecs[i], bottom_need_backward[i], bottom_vecs[i]) for
    # every layer, regardless of layer_need_backward; -level reaches the net.
    from caffepy.net import Net
    calls = []
    orig_init = Net.__init__

    def init(self, *a, **kw):
        orig_init(self, *a, **kw)
        for i, layer in enumerate(self.layers):
            orig = layer.backward

            def spy(top, pd, bottom, _orig=orig, _i=i):
                calls.append((_i, list(pd)))
                return _orig(top, pd, bottom)
            layer.backward = spy
        self._spied = True
        seen_nets.append(self)
    seen_nets = []
    monkeypatch.setattr(Net, "__init__", init)
    rc = cli.main(["time", "-model", "net.prototxt", "-iterations", "2", "-level", "2"])
    capsys.readouterr()
    assert rc == 0
    net = seen_nets[0]
    names = [l.layer_param.name for l in net.layers]
    assert "lvl" in names
    timed = calls[-2 * len(names):]
    assert [i for i, _ in timed] == list(range(len(names)))[::-1] * 2
    for i, pd in timed[:len(names)]:
        assert pd == list(net.bottom_need_backward[i])
