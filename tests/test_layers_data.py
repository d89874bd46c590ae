"""Data and input layers (Input, DummyData, MemoryData, HDF5Data, HDF5Output, Data) and the
DataTransformer: exact values against hand-computed expectations on small files made here."""
import io
import os

import h5py
import numpy as np
import pytest

from caffepy import Blob, backend
from caffepy.data import (DataError, DataTransformer, array_to_datum, datum_to_array,
                          write_lmdb)
from caffepy.layer import LayerError
from caffepy.proto import caffe_pb2
from caffepy.proto import parse_text, write_mean_binaryproto
from helpers import setup_layer

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def tparam(text):
    return parse_text(text, caffe_pb2.TransformationParameter())


# -- Input -----------------------------------------------------------------------------

def test_input_one_shape_for_all_tops_and_per_top():
    layer, _, top = setup_layer('name: "in" type: "Input" top: "a" top: "b" '
                                'input_param { shape { dim: 2 dim: 3 } }')
    assert [t.shape for t in top] == [(2, 3), (2, 3)]
    layer, _, top = setup_layer('name: "in" type: "Input" top: "a" top: "b" '
                                'input_param { shape { dim: 2 dim: 3 } shape { dim: 4 } }')
    assert [t.shape for t in top] == [(2, 3), (4,)]
    # Reshape does nothing: a user reshape of an input blob survives forward.
    top[1].reshape((7, 1))
    top[1].data[...] = 5
    layer.forward([], top)
    assert top[1].shape == (7, 1) and np.all(top[1].data == 5)
    layer.backward(top, [], [])


def test_input_shape_count_error():
    with pytest.raises(LayerError, match="once per top"):
        setup_layer('name: "in" type: "Input" top: "a" top: "b" top: "c" '
                    'input_param { shape { dim: 2 } shape { dim: 3 } }')


# -- DummyData -------------------------------------------------------------------------

def test_dummydata_constant_filled_once_and_random_refilled():
    backend.set_random_seed(3)
    layer, _, top = setup_layer(
        'name: "d" type: "DummyData" top: "a" top: "b" top: "c" dummy_data_param { '
        'data_filler { type: "constant" value: 1.5 } data_filler { type: "uniform" min: 2 max: 3 } '
        'data_filler { value: -2 } '
        'shape { dim: 2 dim: 3 } shape { dim: 4 } shape { dim: 1 dim: 2 } }')
    assert [t.shape for t in top] == [(2, 3), (4,), (1, 2)]
    np.testing.assert_array_equal(top[0].data, np.full((2, 3), 1.5, np.float32))
    np.testing.assert_array_equal(top[2].data, [[-2, -2]])
    top[0].data[0, 0] = 9.0                      # a constant top is not filled again
    layer.forward([], top)
    first = top[1].data.copy()
    assert np.all((first >= 2) & (first <= 3))
    layer.forward([], top)
    assert not np.array_equal(first, top[1].data)  # refilled every forward
    assert top[0].data[0, 0] == 9.0 and top[0].data[1, 2] == 1.5
    assert top[0].data.dtype == np.float32


def test_dummydata_legacy_dims_single_filler_default_zero():
    layer, _, top = setup_layer(
        'name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { '
        'num: 2 channels: 3 channels: 1 height: 4 width: 5 }')
    assert [t.shape for t in top] == [(2, 3, 4, 5), (2, 1, 4, 5)]
    assert not top[0].data.any() and not top[1].data.any()
    layer, _, top = setup_layer(
        'name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { '
        'data_filler { type: "gaussian" } shape { dim: 3 } }')
    layer.forward([], top)
    assert top[0].shape == (3,) and top[0].data.any() and top[1].data.any()


@pytest.mark.parametrize("text, msg", [
    ('data_filler {} data_filler {} shape { dim: 1 }', "data fillers"),
    ('shape { dim: 1 } num: 1 channels: 1 height: 1 width: 1', "legacy"),
    ('num: 1 channels: 1 height: 1', "width"),
    ('shape { dim: 1 } shape { dim: 2 }', "shape"),
])
def test_dummydata_errors(text, msg):
    with pytest.raises(LayerError, match=msg):
        setup_layer('name: "d" type: "DummyData" top: "a" top: "b" top: "c" '
                    'dummy_data_param { %s }' % text)


# -- MemoryData ------------------------------------------------------------------------

MEMDATA = ('name: "m" type: "MemoryData" top: "data" top: "label" '
           'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 }')


def test_memorydata_serves_batches_and_wraps():
    layer, _, top = setup_layer(MEMDATA)
    assert top[0].shape == (2, 1, 2, 3) and top[1].shape == (2,)
    with pytest.raises(LayerError, match="set_input_arrays"):
        layer.forward([], top)
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    labels = np.array([7, 8, 9, 10], dtype=np.float32)
    layer.set_input_arrays(data, labels)
    for expect in (0, 2, 0):
        layer.forward([], top)
        np.testing.assert_array_equal(top[0].data, data[expect:expect + 2])
        assert top[1].shape == (2, 1, 1, 1)
        np.testing.assert_array_equal(top[1].data.ravel(), labels[expect:expect + 2])
    # reset() rewinds; labels may be N×1×1×1 as pycaffe passes them
    layer.reset(data[::-1].copy(), labels[::-1].reshape(4, 1, 1, 1), 4)
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data, data[[3, 2]])
    np.testing.assert_array_equal(top[1].data.ravel(), [10, 9])


def test_memorydata_errors():
    layer, _, top = setup_layer(MEMDATA)
    with pytest.raises(LayerError, match="multiple of batch"):
        layer.set_input_arrays(np.zeros((3, 1, 2, 3), np.float32), np.zeros(3, np.float32))
    with pytest.raises(LayerError, match="wrong dimensions"):
        layer.set_input_arrays(np.zeros((2, 1, 3, 2), np.float32), np.zeros(2, np.float32))
    with pytest.raises(LayerError, match="same first dimension"):
        layer.set_input_arrays(np.zeros((2, 1, 2, 3), np.float32), np.zeros(4, np.float32))
    with pytest.raises(LayerError, match="must be specified"):
        setup_layer('name: "m" type: "MemoryData" top: "data" top: "label" '
                    'memory_data_param { batch_size: 2 channels: 1 height: 2 }')


def test_memorydata_add_datum_vector_is_transformed():
    layer, _, top = setup_layer(
        'name: "m" type: "MemoryData" top: "data" top: "label" transform_param { scale: 0.5 '
        'mean_value: 1 } memory_data_param { batch_size: 1 channels: 1 height: 1 width: 2 }')
    datums = [array_to_datum(np.array([[[3, 5]]], np.uint8), 4),
              array_to_datum(np.array([[[1.5, 9]]], np.float32), 6)]
    layer.add_datum_vector(datums)
    with pytest.raises(LayerError, match="consumed"):
        layer.add_datum_vector(datums)
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data.ravel(), [1, 2])
    assert top[1].data.ravel()[0] == 4
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data.ravel(), [0.25, 4])
    assert top[1].data.ravel()[0] == 6
    layer.add_datum_vector(datums[:1])        # consumed: new data may be added


MEM = ('name: "m" type: "MemoryData" top: "data" top: "label" '
       'memory_data_param { batch_size: 2 channels: 1 height: 1 width: 2 }')


def test_memorydata_shapes_and_reset_restarts():
    layer, _, top = setup_layer(MEM)
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


# -- HDF5Data --------------------------------------------------------------------------

def _write_h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)


@pytest.fixture
def h5files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkdir("sub")
    a = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    b = -np.arange(1, 3 * 2 * 3 + 1, dtype=np.float32).reshape(3, 2, 3)
    _write_h5("sub/a.h5", data=a, label=np.arange(5, dtype=np.int32))
    _write_h5("b.h5", data=b, label=np.array([10, 11, 12], np.float64))
    with open("list.txt", "w") as f:
        f.write("sub/a.h5\n\n  b.h5\n")
    return a, b


H5LAYER = ('name: "h" type: "HDF5Data" top: "data" top: "label" '
           'hdf5_data_param { source: "list.txt" batch_size: 3 %s }')


def test_hdf5data_batches_cross_files_and_wrap(h5files):
    a, b = h5files
    layer, _, top = setup_layer(H5LAYER % "")
    assert top[0].shape == (3, 2, 3) and top[1].shape == (3,)
    rows = np.concatenate([a, b])
    labels = np.array([0, 1, 2, 3, 4, 10, 11, 12], np.float32)
    for i in range(5):
        layer.forward([], top)
        idx = [(3 * i + j) % 8 for j in range(3)]
        np.testing.assert_array_equal(top[0].data, rows[idx])
        np.testing.assert_array_equal(top[1].data, labels[idx])
    assert top[0].data.dtype == np.float32


def test_hdf5data_nd_and_any_number_of_tops(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x = np.arange(4 * 2 * 2 * 2 * 2, dtype=np.float32).reshape(4, 2, 2, 2, 2)
    _write_h5("x.h5", x=x, y=np.arange(8, dtype=np.float32).reshape(4, 2), z=np.ones(4))
    with open("l.txt", "w") as f:
        f.write("x.h5")
    layer, _, top = setup_layer('name: "h" type: "HDF5Data" top: "x" top: "y" top: "z" '
                                'hdf5_data_param { source: "l.txt" batch_size: 3 }')
    assert [t.shape for t in top] == [(3, 2, 2, 2, 2), (3, 2), (3,)]
    layer.forward([], top)
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data, x[[3, 0, 1]])
    np.testing.assert_array_equal(top[1].data, [[6, 7], [0, 1], [2, 3]])


def test_hdf5data_shuffle_is_a_permutation_per_epoch(h5files):
    a, b = h5files
    backend.set_random_seed(5)
    layer, _, top = setup_layer(H5LAYER % "shuffle: true")
    labels = []
    for _ in range(8):                       # 24 rows = 3 epochs of 8
        layer.forward([], top)
        labels.extend(top[1].data.tolist())
    for e in range(3):
        assert sorted(labels[8 * e:8 * e + 8]) == [0, 1, 2, 3, 4, 10, 11, 12]
    assert labels[:8] != [0, 1, 2, 3, 4, 10, 11, 12] or labels[8:16] != labels[:8]


def test_hdf5data_errors(h5files, tmp_path):
    with open("missing.txt", "w") as f:
        f.write("nope.h5\n")
    with pytest.raises(LayerError, match="nope.h5"):
        setup_layer(H5LAYER.replace("list.txt", "missing.txt") % "")
    with pytest.raises(LayerError, match=r"sub/a.h5.*dataset 'other'"):
        setup_layer('name: "h" type: "HDF5Data" top: "data" top: "other" '
                    'hdf5_data_param { source: "list.txt" batch_size: 3 }')
    with pytest.raises(LayerError, match="source file 'absent.txt'"):
        setup_layer(H5LAYER.replace("list.txt", "absent.txt") % "")
    # transform_param is ignored, as in Caffe (with a warning)
    layer, _, top = setup_layer(H5LAYER % "" + ' transform_param { scale: 2 }')
    layer.forward([], top)
    np.testing.assert_array_equal(top[1].data, [0, 1, 2])
    # a file whose rows differ in shape from the first file's
    _write_h5("b.h5", data=np.zeros((3, 4), np.float32), label=np.zeros(3))
    layer, _, top = setup_layer(H5LAYER % "")
    layer.forward([], top)
    with pytest.raises(LayerError, match="same row shape"):
        layer.forward([], top)


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
    layer, _, top = setup_layer(H5 % "")
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
    layer, _, top = setup_layer(H5 % "shuffle: true")
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


# -- HDF5Output ------------------------------------------------------------------------

def test_hdf5output_writes_legacy_4d_datasets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = Blob((2, 3, 2))
    d.data[...] = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    l = Blob((2,))
    l.data[...] = [1, 0]
    layer, bottom, top = setup_layer('name: "o" type: "HDF5Output" bottom: "d" bottom: "l" '
                                     'hdf5_output_param { file_name: "out.h5" }', bottom=[d, l])
    layer.forward(bottom, top)
    layer.backward(top, [True, True], bottom)         # no-op
    with h5py.File("out.h5", "r") as f:               # readable while the layer holds it open
        assert f["data"].shape == (2, 3, 2, 1) and f["data"].dtype == np.float32
        np.testing.assert_array_equal(f["data"][()], d.data.reshape(2, 3, 2, 1))
        np.testing.assert_array_equal(f["label"][()], [[[[1]]], [[[0]]]])
    d.data[...] += 100
    layer.forward(bottom, top)                        # replaces the datasets
    layer.close()
    with h5py.File("out.h5", "r") as f:
        np.testing.assert_array_equal(f["data"][()], d.data.reshape(2, 3, 2, 1))
    with pytest.raises(LayerError, match="closed"):
        layer.forward(bottom, top)


def test_hdf5output_batch_mismatch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    layer, bottom, top = setup_layer('name: "o" type: "HDF5Output" bottom: "d" bottom: "l" '
                                     'hdf5_output_param { file_name: "o.h5" }',
                                     bottom=[Blob((2, 3)), Blob((3,))])
    with pytest.raises(LayerError, match="same batch size"):
        layer.forward(bottom, top)
    layer.close()


# -- Data (LMDB) -----------------------------------------------------------------------

def _png_bytes(rgb):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def lmdb_raw(tmp_path, monkeypatch):
    """5 raw uint8 Datums 2×3×4 with values 10·i + position, labels 100 + i."""
    monkeypatch.chdir(tmp_path)
    items = [(np.arange(24).reshape(2, 3, 4) + 10 * i).astype(np.uint8) for i in range(5)]
    # keys written out of order: the layer reads in key order
    write_lmdb("db", [("%08d" % i, array_to_datum(items[i], 100 + i)) for i in (3, 0, 4, 1, 2)])
    return items


DATA = ('name: "d" type: "Data" top: "data" top: "label" %s '
        'data_param { source: "db" batch_size: 2 backend: LMDB %s }')


def test_data_lmdb_key_order_wrap_and_labels(lmdb_raw):
    items = lmdb_raw
    layer, _, top = setup_layer(DATA % ("transform_param { scale: 0.5 }", ""), TEST)
    assert top[0].shape == (2, 2, 3, 4) and top[1].shape == (2,)
    for idx in ([0, 1], [2, 3], [4, 0], [1, 2]):
        layer.forward([], top)
        np.testing.assert_array_equal(top[0].data,
                                      np.stack([items[i] for i in idx]).astype(np.float32) * 0.5)
        np.testing.assert_array_equal(top[1].data, [100 + i for i in idx])
    layer.close()


def test_data_two_layers_share_one_lmdb(lmdb_raw):
    # a train and a test net may read the same database (LMDB allows one open per process)
    l1, _, t1 = setup_layer(DATA % ("", ""), TRAIN)
    l2, _, t2 = setup_layer(DATA % ("", ""), TEST)
    l1.forward([], t1)
    l1.forward([], t1)
    l2.forward([], t2)
    np.testing.assert_array_equal(t1[1].data, [102, 103])
    np.testing.assert_array_equal(t2[1].data, [100, 101])
    l1.close()
    l2.forward([], t2)
    np.testing.assert_array_equal(t2[1].data, [102, 103])
    l2.close()


def test_data_label_top_optional_and_rand_skip_unused(lmdb_raw):
    # Caffe 1.0's DataLayer never reads the deprecated rand_skip: it always starts at key 0.
    for seed in (1, 11, 23):
        backend.set_random_seed(seed)
        layer, _, top = setup_layer('name: "d" type: "Data" top: "data" data_param { '
                                    'source: "db" batch_size: 1 backend: LMDB rand_skip: 3 }')
        assert len(top) == 1
        layer.forward([], top)
        np.testing.assert_array_equal(top[0].data[0], lmdb_raw[0])
        layer.close()


def test_data_mean_file_uncropped_index_centre_crop(lmdb_raw):
    mean = (np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4) * 0.25)
    write_mean_binaryproto(mean, "mean.binaryproto")
    layer, _, top = setup_layer(DATA % ('transform_param { scale: 2 crop_size: 2 mean_file: '
                                        '"mean.binaryproto" }', ""), TEST)
    assert top[0].shape == (2, 2, 2, 2)
    layer.forward([], top)
    # centre offsets: h_off = (3-2)//2 = 0, w_off = (4-2)//2 = 1
    for n in range(2):
        x = lmdb_raw[n].astype(np.float32)
        expect = (x - mean[0])[:, 0:2, 1:3] * 2
        np.testing.assert_array_equal(top[0].data[n], expect)
    # item 0, channel 1, out (1, 0) <- in (1, 1, 1): value 12+4+1 = 17, mean 17/4
    assert top[0].data[0, 1, 1, 0] == (17 - 4.25) * 2


def test_data_float_and_encoded_datums(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    monkeypatch.chdir(tmp_path)
    rgb = np.array([[[255, 0, 10], [1, 2, 3]]], dtype=np.uint8)          # 1×2 RGB image
    enc = caffe_pb2.Datum(encoded=True, data=_png_bytes(rgb), label=3)
    flt = array_to_datum(np.array([[[0.5, -1.5]], [[2, 3]], [[4, 5]]], np.float32), 4)
    write_lmdb("db", [("a", enc), ("b", flt)])
    layer, _, top = setup_layer(DATA % ("transform_param { mean_value: 1 }", ""), TEST)
    assert top[0].shape == (2, 3, 1, 2)
    layer.forward([], top)
    bgr = rgb[0, :, ::-1].T.reshape(3, 1, 2).astype(np.float32)        # channels B, G, R
    np.testing.assert_array_equal(top[0].data[0], bgr - 1)
    np.testing.assert_array_equal(top[0].data[1],
                                  np.array([[[-0.5, -2.5]], [[1, 2]], [[3, 4]]], np.float32))
    np.testing.assert_array_equal(top[1].data, [3, 4])
    # force_gray gives one channel
    gray = datum_to_array(enc, force_gray=True)
    assert gray.shape == (1, 1, 2) and gray.dtype == np.uint8


def test_data_deprecated_data_param_fields_are_ignored_with_a_warning(lmdb_raw, caplog):
    # Caffe 1.0's DataLayer reads only transform_param; upgrade_proto moves data_param.scale &
    # co. into it for old `layers { }` nets only (NetNeedsDataUpgrade looks at V1 layers).
    import logging
    with caplog.at_level(logging.WARNING, logger="caffepy"):
        layer, _, top = setup_layer(DATA % ("", "scale: 0.25 crop_size: 2"), TEST)
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data[1], lmdb_raw[1].astype(np.float32))
    assert "data_param.scale is deprecated and ignored" in caplog.text
    assert "data_param.crop_size is deprecated and ignored" in caplog.text


def test_data_errors(lmdb_raw, tmp_path):
    with pytest.raises(LayerError, match="no_such_db"):
        setup_layer(DATA.replace('"db"', '"no_such_db"') % ("", ""))
    with pytest.raises(LayerError, match="crop_size 5"):
        setup_layer(DATA % ("transform_param { crop_size: 5 }", ""))
    with pytest.raises(LayerError, match="mean_value"):
        setup_layer(DATA % ("transform_param { mean_value: 1 mean_value: 2 mean_value: 3 }", ""))
    try:
        import plyvel  # noqa: F401
    except ImportError:
        with pytest.raises(LayerError, match="plyvel.*backend: LMDB"):
            setup_layer('name: "d" type: "Data" top: "data" data_param { source: "db" '
                        'batch_size: 1 }')
    write_lmdb("empty", [])
    with pytest.raises(LayerError, match="empty"):
        setup_layer(DATA.replace('"db"', '"empty"') % ("", ""))


@pytest.fixture
def lmdb5(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    items = [(np.arange(12).reshape(1, 3, 4) + 20 * i).astype(np.uint8) for i in range(5)]
    write_lmdb("db", [("%08d" % i, array_to_datum(items[i], 7 + i)) for i in (4, 2, 0, 3, 1)])
    return items


LMDB5_DATA = ('name: "d" type: "Data" top: "data" top: "label" '
              'data_param { source: "db" batch_size: 3 backend: LMDB %s } %s')


def test_data_label_shape_and_wrap_order(lmdb5):
    # DataLayerSetUp: label_shape(1, batch_size); records in key order, wrapping (Next()).
    layer, _, top = setup_layer(LMDB5_DATA % ("", ""), TEST)
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
        layer, _, top = setup_layer(LMDB5_DATA % ("rand_skip: 4", ""), TRAIN)
        layer.forward([], top)
        np.testing.assert_array_equal(top[1].data, [7, 8, 9])
        layer.close()


def test_data_mean_value_per_channel_count_is_checked(lmdb5):
    with pytest.raises(LayerError, match="1 mean_value or as many as channels"):
        setup_layer(LMDB5_DATA % ("", "transform_param { mean_value: 1 mean_value: 2 }"), TEST)


# -- DataTransformer -------------------------------------------------------------------

def test_transformer_mean_value_per_channel_then_scale():
    t = DataTransformer(tparam("scale: 0.5 mean_value: 1 mean_value: 2"), TEST)
    x = np.array([[[[3, 5]], [[4, 10]]]], dtype=np.uint8)               # 1×2×1×2
    np.testing.assert_array_equal(t.transform(x), [[[[1, 2]], [[1, 4]]]])
    t1 = DataTransformer(tparam("mean_value: 3"), TEST)                 # one value for all
    np.testing.assert_array_equal(t1.transform(x), [[[[0, 2]], [[1, 7]]]])


def test_transformer_mirror_at_test_follows_the_coin():
    backend.set_random_seed(0)
    r = np.random.default_rng(0)
    coins = [int(r.integers(2)) for _ in range(6)]
    t = DataTransformer(tparam("mirror: true crop_size: 2"), TEST)
    x = np.arange(6 * 1 * 2 * 4, dtype=np.float32).reshape(6, 1, 2, 4)
    y = t.transform(x)
    for n in range(6):
        crop = x[n, :, 0:2, 1:3]                                        # centre crop
        np.testing.assert_array_equal(y[n], crop[..., ::-1] if coins[n] else crop)
    assert 0 < sum(coins) < 6


def test_transformer_random_crop_at_train_draw_order():
    backend.set_random_seed(21)
    r = np.random.default_rng(21)
    draws = []
    for _ in range(4):
        m = int(r.integers(2))
        h = int(r.integers(3 - 2 + 1))
        w = int(r.integers(5 - 2 + 1))
        draws.append((m, h, w))
    mean = np.arange(15, dtype=np.float32).reshape(1, 3, 5) / 8
    t = DataTransformer(tparam("mirror: true crop_size: 2 scale: 3"), TRAIN)
    t.mean = mean                                  # as if loaded from a mean_file
    x = (np.arange(4 * 15) % 256).astype(np.uint8).reshape(4, 1, 3, 5)
    y = t.transform(x)
    assert y.shape == (4, 1, 2, 2) and y.dtype == np.float32
    for n, (m, h, w) in enumerate(draws):
        expect = ((x[n].astype(np.float32) - mean) * np.float32(3))[:, h:h + 2, w:w + 2]
        if m:
            expect = expect[..., ::-1]
        np.testing.assert_array_equal(y[n], expect)
    # mean at the uncropped position: the hand-computed corner of item 0
    m, h, w = draws[0]
    col = w + (1 if m else 0)
    assert y[0, 0, 0, 0] == (float(x[0, 0, h, col]) - mean[0, h, col]) * 3


def test_transformer_no_random_draw_without_mirror_or_train_crop():
    backend.set_random_seed(2)
    before = backend.get_rng_state()
    t = DataTransformer(tparam("crop_size: 1"), TEST)
    t.transform(np.zeros((3, 1, 2, 2), np.uint8))
    DataTransformer(tparam("scale: 2"), TRAIN).transform(np.zeros((3, 1, 2, 2), np.uint8))
    assert backend.get_rng_state() == before
    assert not t.needs_rand and DataTransformer(tparam("crop_size: 1"), TRAIN).needs_rand


def test_transformer_items_of_different_sizes_with_crop():
    t = DataTransformer(tparam("crop_size: 2"), TEST)
    a = np.arange(9, dtype=np.uint8).reshape(1, 3, 3)
    b = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    y = t.transform_items([a, b])
    np.testing.assert_array_equal(y[0], a[:, 0:2, 0:2])
    np.testing.assert_array_equal(y[1], b[:, 1:3, 1:3])
    with pytest.raises(DataError, match="same size"):
        DataTransformer(tparam(""), TEST).transform_items([a, b])


def test_transformer_errors(tmp_path):
    write_mean_binaryproto(np.zeros((1, 1, 2, 2), np.float32), str(tmp_path / "m.binaryproto"))
    with pytest.raises(DataError, match="at the same time"):
        DataTransformer(tparam('mean_file: "%s" mean_value: 1' % (tmp_path / "m.binaryproto")))
    t = DataTransformer(tparam('mean_file: "%s"' % (tmp_path / "m.binaryproto")))
    with pytest.raises(DataError, match="uncropped"):
        t.transform(np.zeros((1, 1, 3, 3), np.uint8))
    with pytest.raises(DataError, match="mean_file"):
        DataTransformer(tparam('mean_file: "%s"' % (tmp_path / "none.binaryproto")))
    with pytest.raises(DataError, match="as many as channels"):
        DataTransformer(tparam("mean_value: 1 mean_value: 2")).transform(
            np.zeros((1, 3, 1, 1), np.uint8))


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


def test_datum_roundtrip_and_size_check():
    x = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    d = array_to_datum(x, 5)
    assert d.label == 5 and datum_to_array(d).dtype == np.uint8
    np.testing.assert_array_equal(datum_to_array(d), x)
    d.channels = 2
    with pytest.raises(DataError, match="6 bytes"):
        datum_to_array(d)
