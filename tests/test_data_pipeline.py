"""The data pipeline: Datum bytes, databases written like convert_mnist / convert_imageset read
back through the Data layer, the transform rules element by element, background prefetching
(its seeding, shutdown and error hand-over), ImageData, WindowData, OpenCV-style resizing, and
the errors bad input gets."""
import gc
import io
import os
import subprocess
import sys
import textwrap
import threading
import types

import numpy as np
import pytest

import caffepy
from caffepy import backend
from caffepy.data import (DataError, array_to_datum, datum_to_array, resize_bilinear,
                          write_lmdb)
from caffepy.data.window import parse_window_file, window_geometry
from caffepy.layer import LayerError
from caffepy.proto import caffe_pb2
from caffepy.proto import write_mean_binaryproto
from helpers import setup_layer

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools",
                    "caffe-proto-fields.tsv")


def forward(layer, top):
    layer.forward([], top)
    return [t.data.copy() for t in top]


def layer_rng(seed, skip_draws=0):
    """The generator a layer seeds from caffepy.backend.rng() after set_random_seed(seed)
    (``skip_draws`` main-stream draws made before it)."""
    main = np.random.default_rng(seed)
    for _ in range(skip_draws):
        main.integers(1 << 32)
    return np.random.default_rng(int(main.integers(1 << 32)))


def png_bytes(rgb):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def save_png(path, rgb):
    with open(path, "wb") as f:
        f.write(png_bytes(rgb))


def bgr_chw(rgb):
    """What OpenCV gives for an RGB image: BGR planes."""
    if rgb.ndim == 2:
        return rgb[None]
    return np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))


# -- Datum bytes are Caffe's -----------------------------------------------------------

def _schema(message):
    """{field number: (name, label, type, options)} for ``message`` from the spec's field table."""
    fields = {}
    with open(SPEC) as f:
        for line in f:
            row = line.rstrip("\n").split("\t")
            if row[0] == message and row[3] in ("optional", "required", "repeated"):
                fields[int(row[2])] = (row[1], row[3], row[4], row[7] if len(row) > 7 else "")
    return fields


def _varint(v):
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _encode(values, schema):
    """Protobuf wire bytes of ``values`` ({name: value}) from the schema alone, by field number."""
    out = b""
    for num in sorted(schema):
        name, label, typ, opts = schema[num]
        if name not in values:
            continue
        vals = values[name] if label == "repeated" else [values[name]]
        if typ in ("int32", "int64", "uint32", "uint64", "bool", "enum"):
            for v in vals:
                out += _varint(num << 3) + _varint(int(v))
        elif typ in ("bytes", "string"):
            for v in vals:
                out += _varint(num << 3 | 2) + _varint(len(v)) + v
        elif typ == "float":
            packed = np.asarray(vals, "<f4").tobytes()
            if "packed" in opts:
                out += _varint(num << 3 | 2) + _varint(len(packed)) + packed
            else:
                for i in range(len(vals)):
                    out += _varint(num << 3 | 5) + packed[4 * i:4 * i + 4]
        else:
            raise AssertionError(typ)
    return out


def _decode(data, schema):
    """Parse wire bytes with the schema alone -> {name: value}."""
    pos, res = 0, {}

    def varint():
        nonlocal pos
        shift = v = 0
        while True:
            b = data[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return v
    while pos < len(data):
        key = varint()
        num, wire = key >> 3, key & 7
        name, label, typ, _ = schema[num]
        if wire == 0:
            v = varint()
            if typ == "int32" and v >= 1 << 63:
                v -= 1 << 64
            v = bool(v) if typ == "bool" else v
            vals = [v]
        elif wire == 2:
            n = varint()
            chunk = data[pos:pos + n]
            pos += n
            vals = np.frombuffer(chunk, "<f4").tolist() if typ == "float" else [chunk]
        elif wire == 5:
            vals = np.frombuffer(data[pos:pos + 4], "<f4").tolist()
            pos += 4
        else:
            raise AssertionError(wire)
        if label == "repeated":
            res.setdefault(name, []).extend(vals)
        else:
            res[name] = vals[0]
    return res


def test_datum_wire_bytes_match_the_spec_schema_both_ways():
    schema = _schema("Datum")
    assert {v[0]: k for k, v in schema.items()} == {
        "channels": 1, "height": 2, "width": 3, "data": 4, "label": 5, "float_data": 6,
        "encoded": 7}
    raw = np.arange(6, dtype=np.uint8).reshape(2, 1, 3)
    d = array_to_datum(raw, label=-5)
    mine = d.SerializeToString()
    hand = _encode({"channels": 2, "height": 1, "width": 3, "data": raw.tobytes(),
                    "label": -5}, schema)
    assert mine == hand
    assert mine[:2] == b"\x08\x02"                     # field 1, varint 2
    flt = array_to_datum(np.array([[[0.5, -2.0]]], np.float32), label=7)
    hand = _encode({"channels": 1, "height": 1, "width": 2, "label": 7,
                    "float_data": [0.5, -2.0]}, schema)
    assert flt.SerializeToString() == hand
    enc = caffe_pb2.Datum(encoded=True, data=b"\x89PNG", label=1)
    assert enc.SerializeToString() == _encode({"data": b"\x89PNG", "label": 1,
                                               "encoded": True}, schema)
    # and the other way: hand-made bytes parse with caffepy's schema, caffepy's with the spec
    parsed = caffe_pb2.Datum.FromString(_encode({"channels": 3, "height": 2, "width": 1,
                                                 "data": bytes(range(6)), "label": 9}, schema))
    assert (parsed.channels, parsed.height, parsed.width, parsed.label) == (3, 2, 1, 9)
    np.testing.assert_array_equal(datum_to_array(parsed).ravel(), np.arange(6))
    assert _decode(flt.SerializeToString(), schema) == {
        "channels": 1, "height": 1, "width": 2, "label": 7, "float_data": [0.5, -2.0]}
    # a packed float_data (as other writers may emit) is read too
    packed = _varint(6 << 3 | 2) + _varint(8) + np.array([1, 2], "<f4").tobytes()
    assert list(caffe_pb2.Datum.FromString(packed).float_data) == [1, 2]


# -- databases written like Caffe's converters read back exactly ------------------------

def mnist_lmdb(path, n=10):
    """What convert_mnist_data writes: 1×28×28 raw Datums under keys %08d."""
    from caffepy.datasets import mnist_5k
    d = mnist_5k()
    images, labels = d["test_images"][:n], d["test_labels"][:n]
    write_lmdb(path, [("%08d" % i, array_to_datum(images[i][None], int(labels[i])))
                      for i in range(n)])
    return images, labels


def test_mnist_lmdb_reads_back_exactly_in_key_order_with_wrap(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images, labels = mnist_lmdb("mnist_lmdb", 10)
    layer, _, top = setup_layer('name: "mnist" type: "Data" top: "data" top: "label" '
                                'data_param { source: "mnist_lmdb" batch_size: 4 backend: LMDB }')
    assert top[0].shape == (4, 1, 28, 28) and top[1].shape == (4,)
    order = list(range(10)) * 2
    for b in range(4):                               # 16 items: wraps after 10
        data, lab = forward(layer, top)
        idx = order[4 * b:4 * b + 4]
        np.testing.assert_array_equal(data, images[idx][:, None].astype(np.float32))
        np.testing.assert_array_equal(lab, labels[idx].astype(np.float32))
        assert data.dtype == np.float32
    layer.close()


def imageset_lmdb(path, rgbs, labels, encoded):
    """What convert_imageset writes: keys %08d_{filename}; raw BGR CHW Datums, or the PNG
    bytes with encoded: true (shape fields left unset, as Caffe's encoded Datums)."""
    records = []
    for i, (rgb, lab) in enumerate(zip(rgbs, labels)):
        name = "img%d.png" % i
        if encoded:
            d = caffe_pb2.Datum(data=png_bytes(rgb), label=lab, encoded=True)
        else:
            d = array_to_datum(bgr_chw(rgb), lab)
        records.append(("%08d_%s" % (i, name), d))
    write_lmdb(path, records)


@pytest.mark.parametrize("gray", [False, True])
def test_imageset_encoded_and_raw_give_the_same_batch(tmp_path, monkeypatch, gray):
    pytest.importorskip("PIL")
    monkeypatch.chdir(tmp_path)
    r = np.random.default_rng(0)
    shape = (5, 7) if gray else (5, 7, 3)
    rgbs = [r.integers(0, 256, shape, dtype=np.uint8) for _ in range(6)]
    labels = [3, 1, 4, 1, 5, 9]
    imageset_lmdb("raw", rgbs, labels, encoded=False)
    imageset_lmdb("enc", rgbs, labels, encoded=True)
    out = {}
    for db in ("raw", "enc"):
        backend.set_random_seed(7)
        layer, _, top = setup_layer(
            'name: "d" type: "Data" top: "data" top: "label" transform_param { mirror: true '
            'crop_size: 4 mean_value: 100 scale: 0.5 } data_param { source: "%s" batch_size: 3 '
            'backend: LMDB }' % db)
        out[db] = [forward(layer, top) for _ in range(3)]
        layer.close()
    for (d1, l1), (d2, l2) in zip(out["raw"], out["enc"]):
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_array_equal(l1, l2)
    # and the raw values are the images in BGR order, exactly
    backend.set_random_seed(7)
    layer, _, top = setup_layer('name: "d" type: "Data" top: "data" top: "label" '
                                'data_param { source: "enc" batch_size: 6 backend: LMDB }', TEST)
    data, lab = forward(layer, top)
    np.testing.assert_array_equal(data, np.stack([bgr_chw(x) for x in rgbs]).astype(np.float32))
    np.testing.assert_array_equal(lab, labels)
    layer.close()


def test_encoded_datum_channel_rules():
    pytest.importorskip("PIL")
    rgb = np.array([[[10, 20, 30], [200, 100, 0]]], np.uint8)
    rgba = np.concatenate([rgb, np.full((1, 2, 1), 7, np.uint8)], axis=2)
    gray = np.array([[0, 255, 77]], np.uint8)
    d = lambda img: caffe_pb2.Datum(encoded=True, data=png_bytes(img))  # noqa: E731
    # native (IMREAD_ANYCOLOR): colour -> 3 BGR channels (alpha dropped), grey -> 1
    np.testing.assert_array_equal(datum_to_array(d(rgb)), bgr_chw(rgb))
    np.testing.assert_array_equal(datum_to_array(d(rgba)), bgr_chw(rgb))
    np.testing.assert_array_equal(datum_to_array(d(gray)), gray[None])
    # force_color replicates grey; force_gray uses OpenCV's (R·4899 + G·9617 + B·1868 + 2^13) >> 14
    np.testing.assert_array_equal(datum_to_array(d(gray), force_color=True),
                                  np.repeat(gray[None], 3, axis=0))
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    expect = (r * 4899 + g * 9617 + b * 1868 + 8192) >> 14
    np.testing.assert_array_equal(datum_to_array(d(rgb), force_gray=True), expect[None])
    with pytest.raises(DataError, match="record 'k'.*cannot decode"):
        datum_to_array(caffe_pb2.Datum(encoded=True, data=b"not an image"), key=b"k")


# -- the transform rules, element by element, through the Data layer --------------------

@pytest.fixture
def ramp_lmdb(tmp_path, monkeypatch):
    """4 raw Datums 2×4×5 holding distinct values, labels 0..3."""
    monkeypatch.chdir(tmp_path)
    items = [((np.arange(40).reshape(2, 4, 5) * 3 + 17 * i) % 256).astype(np.uint8)
             for i in range(4)]
    write_lmdb("db", [("%08d" % i, array_to_datum(items[i], i)) for i in range(4)])
    return [x.astype(np.float32) for x in items]


def data_layer(transform, phase=TRAIN, batch=4, extra=""):
    layer, _, top = setup_layer('name: "d" type: "Data" top: "data" top: "label" '
                                'transform_param { %s } '
                                'data_param { source: "db" batch_size: %d backend: LMDB %s }'
                                % (transform, batch, extra), phase)
    return layer, top


def test_train_crop_offsets_and_mirror_follow_the_layer_generator(ramp_lmdb):
    items = ramp_lmdb
    mean = np.arange(40, dtype=np.float32).reshape(1, 2, 4, 5) / 4
    write_mean_binaryproto(mean, "mean.binaryproto")
    backend.set_random_seed(123)
    layer, top = data_layer('crop_size: 3 mirror: true scale: 0.25 '
                            'mean_file: "mean.binaryproto"')
    assert top[0].shape == (4, 2, 3, 3)
    r = layer_rng(123)                      # the transformer's own generator
    for _ in range(2):
        data, _ = forward(layer, top)
        for n in range(4):
            m = int(r.integers(2))
            h = int(r.integers(4 - 3 + 1))
            w = int(r.integers(5 - 3 + 1))
            # mean at the uncropped position, subtract then scale, then mirror the crop
            expect = ((items[n] - mean[0]) * np.float32(0.25))[:, h:h + 3, w:w + 3]
            if m:
                expect = expect[:, :, ::-1]
            np.testing.assert_array_equal(data[n], expect)
    layer.close()


def test_test_phase_centre_crop_mirror_still_random(ramp_lmdb):
    items = ramp_lmdb
    backend.set_random_seed(5)
    layer, top = data_layer("crop_size: 2 mirror: true", TEST)
    r = layer_rng(5)
    data, _ = forward(layer, top)
    coins = [int(r.integers(2)) for _ in range(4)]          # no offset draws at TEST
    for n in range(4):
        crop = items[n][:, 1:3, 1:3]                         # (4-2)//2 = 1, (5-2)//2 = 1
        np.testing.assert_array_equal(data[n], crop[:, :, ::-1] if coins[n] else crop)
    layer.close()


def test_mean_file_equals_per_channel_mean_value_and_scale_after_subtract(ramp_lmdb):
    items = ramp_lmdb
    write_mean_binaryproto(np.stack([np.full((4, 5), 10, np.float32),
                                     np.full((4, 5), 20.5, np.float32)])[None], "mean.binaryproto")
    outs = []
    for tp in ('mean_file: "mean.binaryproto" scale: 2', "mean_value: 10 mean_value: 20.5 "
               "scale: 2"):
        layer, top = data_layer(tp, TEST)
        outs.append(forward(layer, top)[0])
        layer.close()
    np.testing.assert_array_equal(outs[0], outs[1])
    # subtract, then scale: (x - mean)·scale, not x·scale - mean
    np.testing.assert_array_equal(outs[0][2, 1], (items[2][1] - np.float32(20.5)) * 2)
    # one mean_value applies to every channel
    layer, top = data_layer("mean_value: 3", TEST)
    np.testing.assert_array_equal(forward(layer, top)[0], np.stack(items) - 3)
    layer.close()


# -- prefetching -----------------------------------------------------------------------

def test_prefetch_runs_are_reproducible_and_leave_the_main_stream_alone(ramp_lmdb):
    runs = []
    for prefetch in (4, 1, 0):
        backend.set_random_seed(9)
        layer, top = data_layer("crop_size: 3 mirror: true", TRAIN, batch=3,
                                extra="prefetch: %d" % prefetch)
        state = backend.get_rng_state()
        assert (layer.prefetch_thread is None) == (prefetch == 0)
        runs.append([forward(layer, top) for _ in range(5)])
        assert backend.get_rng_state() == state          # forward draws nothing from it
        layer.close()
    for other in runs[1:]:
        for (d1, l1), (d2, l2) in zip(runs[0], other):
            np.testing.assert_array_equal(d1, d2)
            np.testing.assert_array_equal(l1, l2)


NET = """name: "n"
layer { name: "d" type: "Data" top: "data" top: "label"
        data_param { source: "db" batch_size: 2 backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 4 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("caffepy-prefetch")]


def test_prefetch_thread_stops_when_the_net_is_deleted(ramp_lmdb):
    before = len(_prefetch_threads())
    net = caffepy.Net(NET, caffepy.TRAIN)
    thread = net.layers[0].prefetch_thread
    assert thread.is_alive() and thread.daemon
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 1])
    del net
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()
    assert len(_prefetch_threads()) == before
    # close() stops it too, and is idempotent; a closed layer refuses to serve
    layer, top = data_layer("", TEST)
    t = layer.prefetch_thread
    layer.close()
    assert not t.is_alive()
    layer.close()
    with pytest.raises(RuntimeError, match="closed"):
        layer.forward([], top)


def test_prefetch_thread_exits_on_interrupt_and_at_exit(ramp_lmdb):
    script = textwrap.dedent("""
        import os, signal, sys, caffepy
        from caffepy.layer import create_layer
        from caffepy.proto import caffe_pb2
        from caffepy.proto import parse_text
        lp = parse_text('name: "d" type: "Data" top: "data" top: "label" '
                        'data_param { source: "db" batch_size: 2 backend: LMDB }',
                        caffe_pb2.LayerParameter())
        keep = create_layer(lp, caffe_pb2.TRAIN)          # never closed: exit must not hang
        keep.setup([], [caffepy.Blob(), caffepy.Blob()])
        layer = create_layer(lp, caffe_pb2.TRAIN)
        top = [caffepy.Blob(), caffepy.Blob()]
        layer.setup([], top)
        for i in range(1000):
            layer.forward([], top)
            if i == 3:
                os.kill(os.getpid(), signal.SIGINT)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode != 0 and "KeyboardInterrupt" in p.stderr, p.stderr


def test_errors_in_the_prefetch_thread_reach_the_forward_that_needs_the_batch(tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = np.zeros((1, 2, 2), np.uint8)
    write_lmdb("db", [("%08d" % i, array_to_datum(good if i != 3 else np.zeros((1, 3, 2),
                                                                               np.uint8), i))
                      for i in range(6)])
    layer, _, top = setup_layer('name: "mnist" type: "Data" top: "data" top: "label" '
                                'data_param { source: "db" batch_size: 2 backend: LMDB }')
    layer.forward([], top)                                     # records 0, 1
    with pytest.raises(LayerError, match=r"Layer 'mnist' \(Data\): record '00000003' is "
                                         r"1 x 3 x 2 but the first record of its batch "
                                         r"\('00000002'\) is 1 x 2 x 2"):
        layer.forward([], top)
    with pytest.raises(LayerError, match="00000003"):          # and stays failed
        layer.forward([], top)
    assert not layer.prefetch_thread.is_alive()
    layer.close()


# -- bad input -------------------------------------------------------------------------

def test_data_layer_errors(ramp_lmdb, tmp_path):
    with pytest.raises(LayerError, match=r"Layer 'd' \(Data\): cannot open LMDB 'nowhere'"):
        setup_layer('name: "d" type: "Data" top: "data" data_param { source: "nowhere" '
                    'batch_size: 1 backend: LMDB }')
    write_lmdb("empty", [])
    with pytest.raises(LayerError, match="database 'empty' is empty"):
        setup_layer('name: "d" type: "Data" top: "data" data_param { source: "empty" '
                    'batch_size: 1 backend: LMDB }')
    write_mean_binaryproto(np.zeros((1, 2, 3, 5), np.float32), "bad_mean.binaryproto")
    with pytest.raises(LayerError, match=r"mean_file 'bad_mean.binaryproto' has shape "
                                         r"2 x 3 x 5 but the data items are 2 x 4 x 5"):
        data_layer('mean_file: "bad_mean.binaryproto"')
    with pytest.raises(LayerError, match="cannot load transform_param.mean_file 'none'"):
        data_layer('mean_file: "none"')


def test_leveldb_backend_needs_the_extra_and_reads_through_plyvel(ramp_lmdb, monkeypatch):
    monkeypatch.setitem(sys.modules, "plyvel", None)              # not installed
    with pytest.raises(LayerError, match=r"'leveldb' extra.*caffepy\[leveldb\].*backend: LMDB"):
        setup_layer('name: "d" type: "Data" top: "data" data_param { source: "db" '
                    'batch_size: 1 }')
    # with a plyvel stand-in the LevelDB path reads in key order and wraps
    records = {("%08d" % i).encode(): array_to_datum(np.full((1, 1, 1), i, np.uint8), i)
               .SerializeToString() for i in (2, 0, 1)}

    class FakeDB:
        def __init__(self, path, create_if_missing=False):
            assert path == "ldb" and not create_if_missing

        def iterator(self):
            return iter(sorted(records.items()))

        def close(self):
            pass
    os.mkdir("ldb")
    monkeypatch.setitem(sys.modules, "plyvel", types.SimpleNamespace(DB=FakeDB))
    layer, _, top = setup_layer('name: "d" type: "Data" top: "data" top: "label" '
                                'data_param { source: "ldb" batch_size: 2 prefetch: 0 }')
    labels = [forward(layer, top)[1].tolist() for _ in range(3)]
    assert labels == [[0, 1], [2, 0], [1, 2]]
    layer.close()


# -- OpenCV's bilinear resize ------------------------------------------------------------

def test_resize_bilinear_matches_opencv_arithmetic():
    # cv2.resize(np.array([[0, 255]], np.uint8), (4, 1)) == [[0, 64, 191, 255]]
    x = np.array([[[0, 255]]], np.uint8)
    np.testing.assert_array_equal(resize_bilinear(x, 1, 4), [[[0, 64, 191, 255]]])
    # 2x2 -> 3x3: centre samples at 0.5 between pixels (weights 1024/1024)
    y = resize_bilinear(np.array([[[0, 100], [200, 40]]], np.uint8), 3, 3)
    np.testing.assert_array_equal(y[0], [[0, 50, 100], [100, 85, 70], [200, 120, 40]])
    # an exact 2x shrink is OpenCV's INTER_AREA: rounded 2x2 means
    z = np.array([[[1, 2, 10, 11], [3, 5, 12, 14]]], np.uint8)
    np.testing.assert_array_equal(resize_bilinear(z, 1, 2), [[[3, 12]]])
    # same size: a copy; channels are independent
    rgb = np.random.default_rng(1).integers(0, 256, (3, 5, 6), dtype=np.uint8)
    np.testing.assert_array_equal(resize_bilinear(rgb, 5, 6), rgb)
    big = resize_bilinear(rgb, 7, 9)
    for c in range(3):
        np.testing.assert_array_equal(big[c], resize_bilinear(rgb[c:c + 1], 7, 9)[0])
    # a constant image stays constant when resized either way
    const = np.full((1, 6, 9), 77, np.uint8)
    assert np.all(resize_bilinear(const, 4, 4) == 77) and np.all(resize_bilinear(const, 11, 13)
                                                                  == 77)


# -- ImageData -------------------------------------------------------------------------

@pytest.fixture
def image_list(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    monkeypatch.chdir(tmp_path)
    os.makedirs("imgs/sub dir")
    r = np.random.default_rng(3)
    rgbs = [r.integers(0, 256, (6, 8, 3), dtype=np.uint8) for _ in range(5)]
    names = ["a.png", "sub dir/b 1.png", "c.png", "d.png", "e.png"]
    for name, rgb in zip(names, rgbs):
        save_png(os.path.join("imgs", name), rgb)
    with open("list.txt", "w") as f:
        f.write("a.png 0\nsub dir/b 1.png 11\n\nc.png 2\nd.png 3\r\ne.png 4\n")
    return rgbs, [0, 11, 2, 3, 4]


IMAGEDATA = ('name: "img" type: "ImageData" top: "data" top: "label" transform_param { %s } '
             'image_data_param { source: "list.txt" root_folder: "imgs/" batch_size: %d %s }')


def test_imagedata_reads_list_in_order_bgr_and_wraps(image_list):
    rgbs, labels = image_list
    layer, _, top = setup_layer(IMAGEDATA % ("scale: 0.5", 2, ""))
    assert top[0].shape == (2, 3, 6, 8) and top[1].shape == (2,)
    order = [0, 1, 2, 3, 4] * 2
    for b in range(4):
        data, lab = forward(layer, top)
        idx = order[2 * b:2 * b + 2]
        np.testing.assert_array_equal(data, np.stack([bgr_chw(rgbs[i]) for i in idx])
                                      .astype(np.float32) * 0.5)
        np.testing.assert_array_equal(lab, [labels[i] for i in idx])
    layer.close()


@pytest.mark.parametrize("rank,extra,warned", [(1, "", True), (0, "", False),
                                               (1, "shuffle: true", False),
                                               (1, "rand_skip: 2", False)])
def test_imagedata_warns_other_ranks_that_read_the_same_order(image_list, monkeypatch, caplog,
                                                              rank, extra, warned):
    """As Caffe's ImageData: a TRAIN solver other than the first, reading the list unshuffled
    and unskipped, is told that every process reads the same images in the same order; the
    batch itself is the whole list's (ImageData is not split among the processes)."""
    from caffepy import distributed
    monkeypatch.setitem(distributed._state, "count", 2)
    monkeypatch.setitem(distributed._state, "rank", rank)
    rgbs, labels = image_list
    with caplog.at_level("WARNING", logger="caffepy"):
        layer, _, top = setup_layer(IMAGEDATA % ("", 2, extra))
    hits = [r.getMessage() for r in caplog.records if "recommended" in r.getMessage()]
    assert hits == (["Layer 'img' (ImageData): shuffle or rand_skip recommended when 2 "
                     "processes train together: each reads the same images in the same "
                     "order"] if warned else [])
    if not extra:
        data, lab = forward(layer, top)
        np.testing.assert_array_equal(lab, labels[:2])
    layer.close()


def test_imagedata_gray_resize_and_transform(image_list):
    from caffepy.data.image import rgb_to_gray
    rgbs, labels = image_list
    backend.set_random_seed(4)
    layer, _, top = setup_layer(IMAGEDATA % ("crop_size: 3 mirror: true mean_value: 8", 5,
                                             "is_color: false new_height: 4 new_width: 5"))
    assert top[0].shape == (5, 1, 3, 3)
    r = layer_rng(4)
    data, lab = forward(layer, top)
    for n in range(5):
        img = resize_bilinear(rgb_to_gray(rgbs[n])[None], 4, 5).astype(np.float32)
        m, h, w = int(r.integers(2)), int(r.integers(2)), int(r.integers(3))
        expect = (img - 8)[:, h:h + 3, w:w + 3]
        np.testing.assert_array_equal(data[n], expect[:, :, ::-1] if m else expect)
    np.testing.assert_array_equal(lab, labels)
    layer.close()


def test_imagedata_gray_resize_and_label_shape(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    from PIL import Image
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((4, 6, 3), 90, np.uint8)).save("a b.png")     # space in the name
    Image.fromarray(np.full((5, 3, 3), 30, np.uint8)).save("c.png")
    with open("list.txt", "w") as f:
        f.write("a b.png 3\nc.png 5\n")                  # split at the last space
    layer, _, top = setup_layer('name: "i" type: "ImageData" top: "data" top: "label" '
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


def test_imagedata_shuffle_is_a_new_permutation_each_epoch(image_list):
    rgbs, labels = image_list
    backend.set_random_seed(8)
    layer, _, top = setup_layer(IMAGEDATA % ("", 5, "shuffle: true"), TEST)
    r = layer_rng(8)                  # no transformer draws: the shuffle generator is first
    lines = list(range(5))
    epochs = []
    for _ in range(3):
        r.shuffle(lines)
        epochs.append([labels[i] for i in lines])
        data, lab = forward(layer, top)
        np.testing.assert_array_equal(lab, epochs[-1])
        np.testing.assert_array_equal(data[0], bgr_chw(rgbs[lines[0]]))
    assert sorted(epochs[0]) == sorted(labels) and len({tuple(e) for e in epochs}) > 1
    layer.close()


def test_imagedata_errors(image_list):
    with open("nolabel.txt", "w") as f:
        f.write("a.png 0\nc.png\n")
    with pytest.raises(LayerError, match=r"line 2 of 'nolabel.txt' has no label: 'c.png'"):
        setup_layer(IMAGEDATA.replace("list.txt", "nolabel.txt") % ("", 1, ""))
    with open("badlabel.txt", "w") as f:
        f.write("a.png zero\n")
    with pytest.raises(LayerError, match="line 1 of 'badlabel.txt': the label 'zero'"):
        setup_layer(IMAGEDATA.replace("list.txt", "badlabel.txt") % ("", 1, ""))
    with open("imgs/broken.png", "wb") as f:
        f.write(b"this is not a png")
    with open("missing.txt", "w") as f:
        f.write("a.png 0\nc.png 1\n\nnot_there.png 5\nbroken.png 6\n")
    layer, _, top = setup_layer(IMAGEDATA.replace("list.txt", "missing.txt") % ("", 2, ""))
    layer.forward([], top)
    with pytest.raises(LayerError, match=r"could not load image 'imgs/not_there.png' \(line 4 of "
                                         r"'missing.txt'\): no such file"):
        layer.forward([], top)
    layer.close()
    with open("broken.txt", "w") as f:
        f.write("broken.png 6\n")
    with pytest.raises(LayerError, match=r"could not load image 'imgs/broken.png' \(line 1 of "
                                         r"'broken.txt'\)"):
        setup_layer(IMAGEDATA.replace("list.txt", "broken.txt") % ("", 1, ""))
    with pytest.raises(LayerError, match="failed to open the image list 'absent.txt'"):
        setup_layer(IMAGEDATA.replace("list.txt", "absent.txt") % ("", 1, ""))
    with pytest.raises(LayerError, match="new_height and new_width"):
        setup_layer(IMAGEDATA % ("", 1, "new_height: 4"))


def test_imagedata_without_pillow_names_the_extra(image_list, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(LayerError, match=r"needs Pillow, the optional 'images' extra: "
                                         r"pip install 'caffepy\[images\]'"):
        setup_layer(IMAGEDATA % ("", 1, ""))


# -- WindowData ------------------------------------------------------------------------

def test_window_geometry_context_pad_square_and_clipping():
    # context_pad 1, crop 10: scale 10/8; box 10x10 centred at (7, 8) grows to 13x13
    assert window_geometry((2, 3, 11, 12), 20, 30, 10, 1, False, False) == (
        (1, 2, 13, 14), (10, 10), (0, 0))
    # near the corner the grown box (-1..11) is clipped; the cut part becomes padding
    assert window_geometry((0, 0, 9, 9), 20, 30, 10, 1, False, False) == (
        (0, 0, 11, 11), (9, 9), (1, 1))
    # mirrored: the horizontal padding is mirrored too (right side: none)
    assert window_geometry((0, 0, 9, 9), 20, 30, 10, 1, False, True) == (
        (0, 0, 11, 11), (9, 9), (1, 0))
    # square: the short side grows to the long one
    assert window_geometry((2, 3, 11, 6), 20, 30, 10, 0, True, False) == (
        (2, 0, 12, 10), (10, 10), (0, 0))
    # plain warp: the window as it is
    assert window_geometry((2, 3, 11, 6), 20, 30, 10, 0, False, False) == (
        (2, 3, 11, 6), (10, 10), (0, 0))


@pytest.fixture
def window_file(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    monkeypatch.chdir(tmp_path)
    rgb = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    save_png("im0.png", rgb)
    with open("windows.txt", "w") as f:
        f.write("# 0\nim0.png\n3\n20\n30\n4\n"
                "2 0.8 2 3 11 12\n"        # foreground, class 2
                "1 0.3 0 0 4 4\n"          # background (label forced to 0)
                "3 0.45 5 5 9 9\n"         # between the thresholds: dropped
                "1 0.9 0 0 9 9\n")         # foreground, class 1
    return rgb


def test_window_file_parsing(window_file):
    images, fg, bg = parse_window_file("windows.txt", "", 0.5, 0.4)
    assert images == [("im0.png", (3, 20, 30))]
    np.testing.assert_array_equal(fg, [[0, 2, np.float32(0.8), 2, 3, 11, 12],
                                       [0, 1, np.float32(0.9), 0, 0, 9, 9]])
    np.testing.assert_array_equal(bg, [[0, 0, 0, 0, 0, 4, 4]])


def test_windowdata_batches(window_file):
    img = bgr_chw(window_file).astype(np.float32)
    backend.set_random_seed(6)
    layer, _, top = setup_layer(
        'name: "w" type: "WindowData" top: "data" top: "label" transform_param { crop_size: 10 '
        'mirror: true mean_value: 1 mean_value: 2 mean_value: 3 } window_data_param { '
        'source: "windows.txt" batch_size: 6 fg_fraction: 0.5 fg_threshold: 0.5 '
        'bg_threshold: 0.4 scale: 0.5 }')
    assert top[0].shape == (6, 3, 10, 10)
    r = layer_rng(6)
    fg = [(2, (2, 3, 11, 12)), (1, (0, 0, 9, 9))]
    data, lab = forward(layer, top)
    mean = np.array([1, 2, 3], np.float32)[:, None, None]
    for n in range(6):
        is_fg = n >= 3
        k = int(r.integers(1 << 32))
        m = int(r.integers(1 << 32)) % 2
        if is_fg:
            label, (x1, y1, x2, y2) = fg[k % 2]
        else:
            label, (x1, y1, x2, y2) = 0, (0, 0, 4, 4)
        crop = bgr_chw(window_file)[:, y1:y2 + 1, x1:x2 + 1]
        warped = resize_bilinear(crop, 10, 10).astype(np.float32)
        if m:
            warped = warped[:, :, ::-1]
        np.testing.assert_array_equal(data[n], (warped - mean) * np.float32(0.5))
        assert lab[n] == label
    # the 10x10 foreground window is copied as it is (no resampling)
    assert np.array_equal(resize_bilinear(bgr_chw(window_file)[:, 3:13, 2:12], 10, 10),
                          img[:, 3:13, 2:12])
    layer.close()


def test_windowdata_context_pad_leaves_zero_padding(window_file):
    with open("corner.txt", "w") as f:
        f.write("# 0\nim0.png\n3\n20\n30\n2\n1 0.9 0 0 9 9\n1 0.1 0 0 9 9\n")
    layer, _, top = setup_layer(
        'name: "w" type: "WindowData" top: "data" top: "label" transform_param { crop_size: 10 } '
        'window_data_param { source: "corner.txt" batch_size: 2 context_pad: 1 '
        'fg_fraction: 0.5 }', TEST)
    data, lab = forward(layer, top)
    np.testing.assert_array_equal(lab, [0, 1])
    warped = resize_bilinear(bgr_chw(window_file)[:, 0:12, 0:12], 9, 9).astype(np.float32)
    for n in range(2):
        assert not data[n][:, 0, :].any() and not data[n][:, :, 0].any()
        np.testing.assert_array_equal(data[n][:, 1:, 1:], warped)
    layer.close()


def test_windowdata_errors(window_file):
    base = ('name: "w" type: "WindowData" top: "data" top: "label" transform_param { %s } '
            'window_data_param { source: "%s" batch_size: 2 %s }')
    with pytest.raises(LayerError, match="crop_size must be positive"):
        setup_layer(base % ("", "windows.txt", ""))
    with pytest.raises(LayerError, match="failed to open window file 'nope.txt'"):
        setup_layer(base % ("crop_size: 4", "nope.txt", ""))
    with open("bad.txt", "w") as f:
        f.write("# 0\nim0.png\n3\n20\n30\n1\n1 high 0 0 4 4\n")
    with pytest.raises(LayerError, match=r"'bad.txt', line 7: expected a window's overlap, "
                                         r"got 'high'"):
        setup_layer(base % ("crop_size: 4", "bad.txt", ""))
    with open("nofg.txt", "w") as f:
        f.write("# 0\nim0.png\n3\n20\n30\n1\n1 0.1 0 0 4 4\n")
    with pytest.raises(LayerError, match="no foreground windows"):
        setup_layer(base % ("crop_size: 4", "nofg.txt", "fg_fraction: 0.5"))
    with open("missing.txt", "w") as f:
        f.write("# 0\nnot_there.png\n3\n20\n30\n2\n1 0.9 0 0 4 4\n1 0.1 0 0 4 4\n")
    layer, _, top = setup_layer(base % ("crop_size: 4", "missing.txt", ""))
    with pytest.raises(LayerError, match="could not load image 'not_there.png'"):
        layer.forward([], top)
    layer.close()


# -- MemoryData with cv::Mat-like images -----------------------------------------------

def test_memorydata_add_mat_vector_transforms_hwc_images():
    backend.set_random_seed(0)
    layer, _, top = setup_layer(
        'name: "m" type: "MemoryData" top: "data" top: "label" transform_param { scale: 2 '
        'mean_value: 1 mean_value: 2 } memory_data_param { batch_size: 2 channels: 2 height: 1 '
        'width: 3 }')
    mats = [np.arange(6, dtype=np.uint8).reshape(1, 3, 2) + 10 * i for i in range(4)]
    layer.add_mat_vector(mats, [5, 6, 7, 8])
    data, lab = forward(layer, top)
    for n in range(2):
        chw = mats[n].transpose(2, 0, 1).astype(np.float32)
        np.testing.assert_array_equal(data[n], (chw - np.array([1, 2], np.float32)[:, None, None])
                                      * 2)
    np.testing.assert_array_equal(lab.ravel(), [5, 6])
    with pytest.raises(LayerError, match="consumed"):
        layer.add_mat_vector(mats, [5, 6, 7, 8])
