"""Shapes too large to allocate are errors before the allocation (caffepy.size_limits): each
names the layer, the blob and the shape with its element count and bytes, and the process
that tried stays small (the huge cases run in a child process whose peak resident memory,
VmHWM, must stay below 200 MB)."""
import io
import os
import struct
import zlib

import numpy as np
import pytest

import caffepy
from caffepy import Blob
from caffepy.backend import to_numpy
from caffepy.data.datum import array_to_datum, encoded_datum
from caffepy.data.db import write_lmdb
from caffepy.errors import DataError, NetError
from caffepy.size_limits import (BlobSizeError, blob_limit, check_blob, max_blob_bytes,
                                 max_image_pixels, parse_bytes)

from robust_runner import clean_error, run_cases

PEAK_KB = 200 * 1024
INPUT = 'layer { name: "in" type: "Input" top: "data" input_param { shape { %s } } }\n'


def dims(*ds):
    return " ".join("dim: %d" % d for d in ds)


def png(width, height, grey=False):
    """A PNG whose header says width × height (its pixel data is that of a 1 × 1 image): Pillow
    reads the size from the header without decoding."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new("L" if grey else "RGB", (1, 1)).save(buf, format="PNG")
    raw = bytearray(buf.getvalue())
    assert raw[12:16] == b"IHDR"
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])) & 0xFFFFFFFF)
    return bytes(raw)


def real_png(width, height):
    from PIL import Image
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """The huge cases, in one child process."""
    tmp = tmp_path_factory.mktemp("size_limits")
    cases = []

    def net_case(name, text, env=None, **kw):
        path = str(tmp / (name + ".prototxt"))
        with open(path, "w") as f:
            f.write(text)
        args = "".join(", %s=%r" % kv for kv in kw.items())
        cases.append({"name": name, "code": "result = run_net(%r, 2%s)" % (path, args),
                      "env": env or {}})

    net_case("input_huge", INPUT % dims(100000, 100000, 100000))
    net_case("input_negative", INPUT % dims(2, -3))
    net_case("dummy_negative", 'layer { name: "d" type: "DummyData" top: "x" '
                               'dummy_data_param { shape { %s } } }' % dims(2, -3))
    net_case("dummy_huge", 'layer { name: "d" type: "DummyData" top: "x" dummy_data_param { '
                           'num: 1000000 channels: 1000 height: 1000 width: 1000 } }')
    net_case("num_output_huge", INPUT % dims(2, 10) + 'layer { name: "ip" type: "InnerProduct" '
             'bottom: "data" top: "ip" inner_product_param { num_output: 4000000000 } }')
    net_case("pad_huge", INPUT % dims(2, 3, 8, 8) + 'layer { name: "conv" type: "Convolution" '
             'bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 3 '
             'pad: 2000000000 } }')
    net_case("tiles_huge", INPUT % dims(2, 3, 8, 8) + 'layer { name: "tile" type: "Tile" '
             'bottom: "data" top: "t" tile_param { axis: 1 tiles: 2000000000 } }')
    net_case("env_limit", INPUT % dims(1000, 1000), {"CAFFEPY_MAX_BLOB_BYTES": "1M"})
    net_case("env_invalid", INPUT % dims(10), {"CAFFEPY_MAX_BLOB_BYTES": "lots"})
    net_case("net_keyword", INPUT % dims(100, 1000), max_blob_bytes=100000)

    # Data: batch_size × the first Datum's size; the prefetch buffers
    db = str(tmp / "datums")
    write_lmdb(db, [("%08d" % i, array_to_datum(np.full((3, 8, 8), i, np.uint8), i))
                    for i in range(20)])
    data = ('layer { name: "data" type: "Data" top: "data" top: "label" data_param { '
            'source: "%s" backend: LMDB batch_size: %d } }')
    net_case("data_batch_huge", data % (db, 1000000000))
    net_case("data_prefetch", data % (db, 16), {"CAFFEPY_MAX_BLOB_BYTES": "30000"})

    # an encoded Datum whose PNG header claims 12000 x 8000 pixels
    edb = str(tmp / "encoded")
    write_lmdb(edb, [("%08d" % i, encoded_datum(png(12000, 8000), i)) for i in range(2)])
    net_case("encoded_datum_huge", data % (edb, 2))

    # ImageData: a header of 30000 x 30000 (Pillow's bomb error), one of 12000 x 8000 (caffepy's
    # limit), and a real 200 x 100 image under CAFFEPY_MAX_IMAGE_PIXELS=10000, refused without
    # a resize and read when new_height x new_width asks for that many pixels
    for name, content in (("bomb.png", png(30000, 30000)), ("big.png", png(12000, 8000)),
                          ("real.png", real_png(200, 100))):
        with open(str(tmp / name), "wb") as f:
            f.write(content)
    image = ('layer { name: "img" type: "ImageData" top: "data" top: "label" image_data_param { '
             'source: "%s" root_folder: "%s/" batch_size: 2 %s } }')
    for name, img, extra, env in (
            ("image_bomb", "bomb.png", "", None),
            ("image_huge", "big.png", "", None),
            ("image_over_env", "real.png", "", {"CAFFEPY_MAX_IMAGE_PIXELS": "10000"}),
            ("image_resized", "real.png", "new_height: 100 new_width: 200",
             {"CAFFEPY_MAX_IMAGE_PIXELS": "10000"})):
        lst = str(tmp / (name + ".txt"))
        with open(lst, "w") as f:
            f.write("%s 3\n" % img)
        net_case(name, image % (lst, tmp, extra), env)

    # HDF5: a dataset of 2,000,000 rows of 100 float32 (800 MB, chunked, only the first rows
    # stored) is read a batch at a time
    import h5py
    h5 = str(tmp / "big.h5")
    with h5py.File(h5, "w") as f:
        d = f.create_dataset("data", shape=(2000000, 100), dtype="f4", chunks=(64, 100))
        d[:16] = np.arange(1600, dtype=np.float32).reshape(16, 100)
        lab = f.create_dataset("label", shape=(2000000,), dtype="f4", chunks=(4096,))
        lab[:16] = np.arange(16, dtype=np.float32) * 3
    with open(str(tmp / "h5.txt"), "w") as f:
        f.write(h5 + "\n")
    path = str(tmp / "h5.prototxt")
    with open(path, "w") as f:
        f.write('layer { name: "h5" type: "HDF5Data" top: "data" top: "label" hdf5_data_param '
                '{ source: "%s" batch_size: 8 } }' % (tmp / "h5.txt"))
    cases.append({"name": "hdf5_big", "code":
                  "import caffepy, numpy as np\n"
                  "net = caffepy.Net(%r, caffepy.TRAIN)\n"
                  "out = []\n"
                  "for _ in range(2):\n"
                  "    net.forward()\n"
                  "    out.append([net.blobs['data'].data.tolist(),\n"
                  "                net.blobs['label'].data.tolist()])\n"
                  "result = out\n" % path})
    return run_cases(cases, tmp), str(tmp)


def _small(report):
    assert report["vmhwm_kb"] < PEAK_KB, "peak memory %d kB" % report["vmhwm_kb"]


def _phys():
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("name,layer,blob,shape,count", [
    ("input_huge", "Layer 'in' (Input)", "blob 'data'", "100000 x 100000 x 100000",
     10 ** 15),
    ("dummy_huge", "Layer 'd' (DummyData)", "blob 'x'", "1000000 x 1000 x 1000 x 1000",
     10 ** 15),
    # the weights (num_output x K) are made before the top
    ("num_output_huge", "Layer 'ip' (InnerProduct)", "a new parameter or internal blob",
     "4000000000 x 10", 4 * 10 ** 10),
    # (8 + 2 * 2000000000 - 3) / 1 + 1 = 4000000006
    ("pad_huge", "Layer 'conv' (Convolution)", "blob 'c'", "2 x 4 x 4000000006 x 4000000006",
     2 * 4 * 4000000006 ** 2),
    ("tiles_huge", "Layer 'tile' (Tile)", "blob 't'", "2 x 6000000000 x 8 x 8",
     2 * 6000000000 * 64),
    ("data_batch_huge", "Layer 'data' (Data)", "blob 'data'", "1000000000 x 3 x 8 x 8",
     192 * 10 ** 9),
])
def test_huge_shapes_name_layer_blob_shape_count_and_bytes(reports, name, layer, blob, shape,
                                                           count):
    report = reports[0][name]
    msg = clean_error(report)
    assert "NetError" in report["mro"]
    assert msg.startswith(layer + ": cannot shape " + blob + ": ")
    assert ("blob shape %s (%d elements) needs %d bytes" % (shape, count, count * 8)) in msg
    assert "for its data and diff (float32), more than this machine's physical memory: " \
           "%d bytes" % _phys() in msg
    _small(report)


def test_negative_dimensions(reports):
    msg = clean_error(reports[0]["input_negative"])
    assert msg == ("Layer 'in' (Input): input shape dimensions must be non-negative, got "
                   "[2, -3] (top 'data')")
    msg = clean_error(reports[0]["dummy_negative"])
    assert msg == ("Layer 'd' (DummyData): cannot shape blob 'x': blob dimensions must be "
                   "non-negative, got (2, -3)")


def test_user_limits(reports):
    msg = clean_error(reports[0]["env_limit"])
    assert msg == ("Layer 'in' (Input): cannot shape blob 'data': blob shape 1000 x 1000 "
                   "(1000000 elements) needs 8000000 bytes (7.6 MiB) for its data and diff "
                   "(float32), more than the limit CAFFEPY_MAX_BLOB_BYTES=1M: 1048576 bytes "
                   "(1.0 MiB)")
    msg = clean_error(reports[0]["net_keyword"])
    assert msg.endswith("blob shape 100 x 1000 (100000 elements) needs 800000 bytes (781.2 KiB) "
                        "for its data and diff (float32), more than the Net's "
                        "max_blob_bytes=100000: 100000 bytes (97.7 KiB)")
    msg = clean_error(reports[0]["env_invalid"])
    assert "CAFFEPY_MAX_BLOB_BYTES must be a positive number of bytes (e.g. 4000000000 or 4G), " \
           "got 'lots'" in msg


def test_prefetch_buffers_are_checked(reports):
    msg = clean_error(reports[0]["data_prefetch"])
    # the top (16 x 3 x 8 x 8, 24576 bytes with its diff) fits 30000; 4 batches do not
    assert ("Layer 'data' (Data): data_param.prefetch 4 batches of shape 16 x 3 x 8 x 8 "
            "(float32, 12288 bytes (12.0 KiB) each) needs 49152 bytes (48.0 KiB), more than the "
            "limit CAFFEPY_MAX_BLOB_BYTES=30000: 30000 bytes (29.3 KiB)") == msg


def test_images_are_checked_from_their_header(reports):
    reps, tmp = reports
    msg = clean_error(reps["encoded_datum_huge"])
    assert ("Layer 'data' (Data): record '00000000' is 12000 x 8000 pixels (width x height), "
            "more than the 89478485 pixels caffepy decodes (set CAFFEPY_MAX_IMAGE_PIXELS to allow "
            "more) (database '%s/encoded')" % tmp) == msg
    _small(reps["encoded_datum_huge"])
    msg = clean_error(reps["image_bomb"])
    assert msg.startswith("Layer 'img' (ImageData): image '%s/bomb.png' (line 1 of '%s/"
                          "image_bomb.txt') is refused by Pillow as a possible decompression "
                          "bomb: " % (tmp, tmp))
    assert "900000000 pixels" in msg
    msg = clean_error(reps["image_huge"])
    assert ("image '%s/big.png' (line 1 of '%s/image_huge.txt') is 12000 x 8000 pixels (width x "
            "height), more than the 89478485 pixels caffepy decodes" % (tmp, tmp)) in msg
    msg = clean_error(reps["image_over_env"])
    assert "is 200 x 100 pixels (width x height), more than the 10000 pixels" in msg
    for name in ("image_bomb", "image_huge", "image_over_env"):
        _small(reps[name])
    # the resize target is 100 x 200 = 20000 pixels: the image is read
    assert reps["image_resized"]["ok"], reps["image_resized"]
    assert reps["image_resized"]["result"] == [[3, 3], [3, 3]]


def test_hdf5_is_read_a_batch_at_a_time(reports):
    report = reports[0]["hdf5_big"]
    assert report["ok"], report
    rows = np.arange(1600, dtype=np.float32).reshape(16, 100)
    (d0, l0), (d1, l1) = report["result"]
    np.testing.assert_array_equal(np.array(d0 + d1, np.float32), rows)
    assert l0 + l1 == [3.0 * i for i in range(16)]
    _small(report)          # Caffe reads the whole 800 MB dataset


# -- in-process -----------------------------------------------------------------------------

def test_parse_bytes_and_the_limit_order(monkeypatch):
    assert parse_bytes("4G", "x") == 4 << 30
    assert parse_bytes("3 KiB", "x") == 3072
    assert parse_bytes("100", "x") == 100
    for bad in ("0", "-5", "1.5G", "lots"):
        with pytest.raises(NetError, match=r"x must be a positive number of bytes"):
            parse_bytes(bad, "x")
    monkeypatch.delenv("CAFFEPY_MAX_BLOB_BYTES", raising=False)
    from caffepy import backend, size_limits
    if backend.xp() is np:
        assert size_limits.machine_memory() == (_phys(), "this machine's physical memory")
    assert max_blob_bytes() == size_limits.machine_memory()
    monkeypatch.setenv("CAFFEPY_MAX_BLOB_BYTES", "2M")
    assert max_blob_bytes() == (2 << 20, "the limit CAFFEPY_MAX_BLOB_BYTES=2M")
    with blob_limit(1000):
        assert max_blob_bytes() == (1000, "the Net's max_blob_bytes=1000")
        with blob_limit(None):                 # no limit of its own: the outer one holds
            assert max_blob_bytes()[0] == 1000
    assert max_blob_bytes()[0] == 2 << 20
    with blob_limit(4 << 20):                  # larger than the variable: the variable holds
        assert max_blob_bytes()[0] == 2 << 20
    with pytest.raises(NetError, match="max_blob_bytes must be a positive number of bytes, got "
                                       "-1"):
        with blob_limit(-1):
            pass


def test_blob_checks_before_allocating(monkeypatch):
    monkeypatch.setenv("CAFFEPY_MAX_BLOB_BYTES", "800")
    b = Blob(10, 10)                              # 100 elements: 800 bytes with the diff
    assert b.count == 100
    b.reshape(5, 5)                               # within capacity: nothing is allocated
    with pytest.raises(BlobSizeError) as info:
        b.reshape(101)
    e = info.value
    assert isinstance(e, ValueError) and isinstance(e, NetError)
    assert (e.shape, e.count, e.nbytes, e.blob) == ((101,), 101, 808, b)
    assert b.shape == (5, 5) and b.count == 25    # the blob is unchanged
    with pytest.raises(BlobSizeError, match=r"blob dimensions must be non-negative, got "
                                            r"\(3, -1\)"):
        Blob(3, -1)
    check_blob((10, 10), 100)
    monkeypatch.setenv("CAFFEPY_MAX_IMAGE_PIXELS", "5M")
    assert max_image_pixels() == 5 << 20
    monkeypatch.delenv("CAFFEPY_MAX_IMAGE_PIXELS")
    assert max_image_pixels() == 89478485


def test_net_keyword_accepts_text(tmp_path):
    net = caffepy.Net(INPUT % dims(100, 10), caffepy.TEST, max_blob_bytes="8K")
    assert net.blobs["data"].shape == (100, 10)   # 8000 bytes
    with pytest.raises(BlobSizeError, match=r"more than the Net's max_blob_bytes=7999"):
        caffepy.Net(INPUT % dims(100, 10), caffepy.TEST, max_blob_bytes=7999)


def test_a_larger_batch_later_in_the_database_is_checked(tmp_path, monkeypatch):
    # records 0-15: 3 x 8 x 8; records 16-31: 3 x 64 x 64 (each batch takes its first record's
    # shape, as in Caffe)
    recs = [("%08d" % i, array_to_datum(np.full((3, 8, 8), i, np.uint8), i)) for i in range(16)]
    recs += [("%08d" % i, array_to_datum(np.full((3, 64, 64), i, np.uint8), i))
             for i in range(16, 32)]
    db = str(tmp_path / "db")
    write_lmdb(db, recs)
    monkeypatch.setenv("CAFFEPY_MAX_BLOB_BYTES", "100000")
    net = caffepy.Net('layer { name: "data" type: "Data" top: "data" top: "label" data_param { '
                      'source: "%s" backend: LMDB batch_size: 16 prefetch: 2 } }' % db,
                      caffepy.TRAIN)
    net.forward()
    np.testing.assert_array_equal(to_numpy(net.blobs["label"].data), np.arange(16))
    # 16 x 3 x 64 x 64 = 196608 elements, 8 bytes each with the diff
    with pytest.raises(DataError) as info:
        net.forward()
    assert str(info.value) == (
        "Layer 'data' (Data): a batch of shape 16 x 3 x 64 x 64 (its first item is record "
        "'00000016') in the layer's top (float32 data and diff) needs 1572864 bytes (1.5 MiB), "
        "more than the limit CAFFEPY_MAX_BLOB_BYTES=100000: 100000 bytes (97.7 KiB) (database "
        "'%s')" % db)
    for layer in net.layers:
        layer.close()


def test_image_resize_target_is_checked_before_reading(tmp_path, monkeypatch):
    # a 4 x 4 image resized to 1000 x 1000 in colour: the resize works on 3 x 1000 x 1000
    # int64 values, 24000000 bytes, refused before the image is even opened
    (tmp_path / "a.png").write_bytes(real_png(4, 4))
    (tmp_path / "list.txt").write_text("a.png 5\n")
    text = ('layer { name: "img" type: "ImageData" top: "data" top: "label" image_data_param { '
            'source: "%s/list.txt" root_folder: "%s/" batch_size: 1 new_height: 1000 '
            'new_width: 1000 } }' % (tmp_path, tmp_path))
    monkeypatch.setenv("CAFFEPY_MAX_BLOB_BYTES", "1M")
    with pytest.raises(DataError) as info:
        caffepy.Net(text, caffepy.TRAIN)
    assert isinstance(info.value, NetError)
    assert str(info.value) == (
        "Layer 'img' (ImageData): image '%s/a.png' (line 1 of '%s/list.txt') resized to "
        "new_height x new_width = 1000 x 1000 (3 channels, 8 bytes a value while resizing) "
        "needs 24000000 bytes (22.9 MiB), more than the limit CAFFEPY_MAX_BLOB_BYTES=1M: "
        "1048576 bytes (1.0 MiB)" % (tmp_path, tmp_path))
    # within the limit (3 x 100 x 100 x 8 = 240000 bytes) the image is read and resized
    net = caffepy.Net(text.replace("1000", "100"), caffepy.TRAIN)
    try:
        net.forward()
        assert net.blobs["data"].shape == (1, 3, 100, 100)
        assert to_numpy(net.blobs["label"].data).tolist() == [5.0]
    finally:
        for layer in net.layers:
            layer.close()


def test_the_blobs_of_a_net_must_fit_the_machine_together(monkeypatch):
    from caffepy import size_limits
    monkeypatch.delenv("CAFFEPY_MAX_BLOB_BYTES", raising=False)
    monkeypatch.setattr(size_limits, "machine_memory",            # a machine of 1 MB
                        lambda: (1000000, "this machine's physical memory"))
    text = ('layer { name: "in" type: "Input" top: "a" top: "b" top: "c" input_param { '
            'shape { dim: 50000 } } }')
    # each top: 50000 x 8 = 400000 bytes; the third brings the net to 1200000
    with pytest.raises(BlobSizeError) as info:
        caffepy.Net(text, caffepy.TEST)
    assert str(info.value) == (
        "Layer 'in' (Input): cannot shape blob 'c': blob shape 50000 (50000 elements, 400000 "
        "bytes (390.6 KiB) for its data and diff) brings the blobs of the net being built to "
        "1200000 bytes (1.1 MiB), more than this machine's physical memory: 1000000 bytes "
        "(976.6 KiB)")
    net = caffepy.Net(text.replace("50000", "40000"), caffepy.TEST)   # 960000 bytes in all
    assert [net.blobs[n].count for n in "abc"] == [40000] * 3
    Blob(50000), Blob(50000), Blob(50000)       # blobs outside a net build are counted alone
