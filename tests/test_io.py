"""Tests of caffepy.io (pycaffe's caffe.io): proto/datum conversion, image loading and
resizing, oversampling and the Transformer, with hand-computed values; and of the codecs it
wraps (caffepy.proto.blobproto, caffepy.data.datum) and of reading proto files."""
import io as _stdio

import numpy as np
import pytest

from caffepy import io as cio
from caffepy.data import datum as dcodec
from caffepy.errors import DataError, ProtoError
from caffepy.proto import blobproto as bcodec
from caffepy.proto import caffe_pb2, files


@pytest.fixture
def Image():
    """PIL.Image (Pillow is the optional 'images' extra; image tests skip without it)."""
    return pytest.importorskip("PIL.Image")


# -- BlobProto -------------------------------------------------------------------------

def test_array_blobproto_round_trip_exact():
    rng = np.random.default_rng(0)
    arr = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    diff = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    bp = cio.array_to_blobproto(arr, diff)
    assert list(bp.shape.dim) == [2, 3, 4, 5]
    assert not bp.HasField("num")
    back = cio.blobproto_to_array(bp)
    assert back.dtype == np.float64                     # as pycaffe (np.array of floats)
    assert back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_array_equal(cio.blobproto_to_array(bp, return_diff=True), diff)
    # serialised and parsed again
    bp2 = caffe_pb2.BlobProto.FromString(bp.SerializeToString())
    np.testing.assert_array_equal(cio.blobproto_to_array(bp2), arr)


def test_blobproto_legacy_shape_wins():
    bp = caffe_pb2.BlobProto()
    bp.num, bp.channels, bp.height, bp.width = 1, 2, 1, 3
    bp.shape.dim.extend([6])                            # ignored: legacy fields are set
    bp.data.extend([1, 2, 3, 4, 5, 6])
    a = cio.blobproto_to_array(bp)
    assert a.shape == (1, 2, 1, 3)
    np.testing.assert_array_equal(a.ravel(), [1, 2, 3, 4, 5, 6])
    # no legacy field set: shape.dim
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([2, 2])
    bp.data.extend([0.5, -1.5, 2.25, 8])
    np.testing.assert_array_equal(cio.blobproto_to_array(bp), [[0.5, -1.5], [2.25, 8]])


def test_blobproto_wrong_count_is_an_error():
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([2, 2])
    bp.data.extend([1, 2, 3])
    with pytest.raises(ValueError):
        cio.blobproto_to_array(bp)


def test_blobprotovector_round_trip():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
              np.array([1e-30, -3.5, 65504.0], dtype=np.float32)]
    s = cio.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(s, bytes)
    back = cio.blobprotovector_str_to_arraylist(s)
    assert len(back) == 2
    for a, b in zip(arrays, back):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_mean_binaryproto_reads_with_blobproto_to_array(tmp_path):
    from caffepy.proto import write_mean_binaryproto
    mean = np.arange(12, dtype=np.float32).reshape(3, 2, 2) * 0.25
    path = str(tmp_path / "mean.binaryproto")
    write_mean_binaryproto(mean, path)
    bp = caffe_pb2.BlobProto()
    with open(path, "rb") as f:
        bp.ParseFromString(f.read())
    a = cio.blobproto_to_array(bp)
    assert a.shape == (1, 3, 2, 2)
    np.testing.assert_array_equal(a[0], mean)


# -- BlobProto: the caffepy codec and pycaffe's view of it ------------------------------

def _legacy_blob():
    bp = caffe_pb2.BlobProto(num=2, channels=1, height=1, width=2)
    bp.data.extend([0.1, -2.5, 3.0, 0.2])
    bp.diff.extend([1.5, 0.0, -0.25, 1e-3])
    return bp


def test_blobproto_legacy_shape_both_views():
    bp = _legacy_blob()
    inner = bcodec.blobproto_to_array(bp)
    assert inner.dtype == np.float32 and inner.shape == (2, 1, 1, 2)
    np.testing.assert_array_equal(inner.ravel(), np.float32([0.1, -2.5, 3.0, 0.2]))
    py = cio.blobproto_to_array(bp)
    assert py.dtype == np.float64 and py.shape == (2, 1, 1, 2)
    # pycaffe's float64 holds the stored float32 values exactly: 0.1 reads 0.10000000149...
    assert py[0, 0, 0, 0] == float(np.float32(0.1)) and py[0, 0, 0, 0] != 0.1
    np.testing.assert_array_equal(py, inner.astype(np.float64))
    d = cio.blobproto_to_array(bp, return_diff=True)
    assert d.dtype == np.float64 and d.shape == (2, 1, 1, 2)
    np.testing.assert_array_equal(d.ravel(), np.float32([1.5, 0.0, -0.25, 1e-3]))
    np.testing.assert_array_equal(bcodec.blobproto_to_array(bp, return_diff=True),
                                  d.astype(np.float32))


def test_blobproto_one_legacy_field_is_enough():
    # only width set: the legacy shape (0, 0, 0, 3) holds no values, shape.dim is ignored
    bp = caffe_pb2.BlobProto(width=3)
    bp.shape.dim.extend([3])
    assert bcodec.blobproto_shape(bp) == (0, 0, 0, 3)
    assert cio.blobproto_to_array(bp).shape == (0, 0, 0, 3)
    bp.data.extend([1, 2, 3])
    with pytest.raises(ProtoError, match=r"holds 3 data values but its shape 0 x 0 x 0 x 3 "
                                         r"needs 0"):
        cio.blobproto_to_array(bp)


def test_blobproto_shape_equals_as_caffe():
    legacy = caffe_pb2.BlobProto(num=1, channels=1, height=3, width=4)
    assert bcodec.blobproto_is_legacy(legacy)
    assert bcodec.blobproto_shape_equals((3, 4), legacy)            # right-aligned, 1-padded
    assert bcodec.blobproto_shape_equals((1, 1, 3, 4), legacy)
    assert not bcodec.blobproto_shape_equals((4, 3), legacy)
    assert not bcodec.blobproto_shape_equals((1, 1, 1, 3, 4), legacy)  # more than 4 axes
    nd = caffe_pb2.BlobProto()
    nd.shape.dim.extend([3, 4])
    assert not bcodec.blobproto_is_legacy(nd)
    assert bcodec.blobproto_shape_equals((3, 4), nd)
    assert not bcodec.blobproto_shape_equals((1, 3, 4), nd)


def test_blobproto_double_data_caffe_prefers_it_pycaffe_does_not():
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([3])
    bp.data.extend([0.5, 1.5, 2.5])
    bp.double_data.extend([0.1, 0.2, 0.3])
    # Blob::FromProto reads double_data when it has values (float32 inside caffepy) ...
    np.testing.assert_array_equal(bcodec.blobproto_to_array(bp), np.float32([0.1, 0.2, 0.3]))
    # ... pycaffe reads data
    py = cio.blobproto_to_array(bp)
    assert py.dtype == np.float64
    np.testing.assert_array_equal(py, [0.5, 1.5, 2.5])
    # a blob saved in double precision only: both read double_data, pycaffe keeps float64
    only = caffe_pb2.BlobProto()
    only.shape.dim.extend([1, 2])
    only.double_data.extend([0.1, -1e-40])
    assert cio.blobproto_to_array(only).tolist() == [[0.1, -1e-40]]
    inner = bcodec.blobproto_to_array(only)
    assert inner.dtype == np.float32 and inner.tolist() == [[float(np.float32(0.1)),
                                                              float(np.float32(-1e-40))]]


def test_blobproto_double_diff():
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([2])
    bp.data.extend([1, 2])
    bp.diff.extend([-1, -2])
    bp.double_diff.extend([0.25, 0.75])
    np.testing.assert_array_equal(bcodec.blobproto_to_array(bp, return_diff=True), [0.25, 0.75])
    np.testing.assert_array_equal(cio.blobproto_to_array(bp, return_diff=True), [-1, -2])
    # no diff at all: an empty field does not fit a shape of 2
    bp.ClearField("diff")
    bp.ClearField("double_diff")
    with pytest.raises(ProtoError, match="holds 0 diff values but its shape 2 needs 2"):
        cio.blobproto_to_array(bp, return_diff=True)


def test_array_to_blobproto_writes_shape_dim_float32():
    arr = np.array([[0.1, 2.0, -3.5]])                   # float64 in, float32 stored
    bp = cio.array_to_blobproto(arr, diff=np.array([1, 2, 3]))
    assert list(bp.shape.dim) == [1, 3]
    assert not any(bp.HasField(f) for f in ("num", "channels", "height", "width"))
    assert list(bp.data) == [float(np.float32(0.1)), 2.0, -3.5]
    assert list(bp.diff) == [1.0, 2.0, 3.0]
    assert len(bp.double_data) == 0 and len(bp.double_diff) == 0
    # filling a given BlobProto replaces what it held
    bcodec.array_to_blobproto(np.float32([7]), bp=bp)
    assert list(bp.shape.dim) == [1] and list(bp.data) == [7.0] and len(bp.diff) == 0
    assert bcodec.set_blobproto(bp, np.zeros((2, 2)), np.ones((2, 2))) is bp
    assert list(bp.shape.dim) == [2, 2] and list(bp.diff) == [1.0] * 4


def test_blobprotovector_bytes_both_views():
    s = cio.arraylist_to_blobprotovector_str([np.float32([[0.1, 2]]), np.zeros((0, 3))])
    vec = caffe_pb2.BlobProtoVector.FromString(s)
    assert [list(b.shape.dim) for b in vec.blobs] == [[1, 2], [0, 3]]
    py = cio.blobprotovector_str_to_arraylist(s)
    assert [a.dtype for a in py] == [np.float64, np.float64]
    assert py[0].tolist() == [[float(np.float32(0.1)), 2.0]] and py[1].shape == (0, 3)
    inner = bcodec.blobprotovector_to_arrays(s)
    assert inner[0].dtype == np.float32 and inner[0].tolist() == py[0].tolist()
    with pytest.raises(ProtoError, match="not a valid binary BlobProtoVector"):
        cio.blobprotovector_str_to_arraylist(b"\x0a\x05\x01")


def test_write_mean_binaryproto_shape_errors(tmp_path):
    with pytest.raises(ProtoError, match=r"m\.binaryproto"):
        bcodec.write_mean_binaryproto(np.zeros((2, 2)), str(tmp_path / "m.binaryproto"))
    assert not (tmp_path / "m.binaryproto").exists()


# -- Datum -----------------------------------------------------------------------------

def test_datum_uint8_round_trip():
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    d = cio.array_to_datum(arr, label=7)
    assert (d.channels, d.height, d.width, d.label) == (2, 3, 4, 7)
    assert d.data == arr.tobytes() and len(d.float_data) == 0
    back = cio.datum_to_array(caffe_pb2.Datum.FromString(d.SerializeToString()))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, arr)
    back[0, 0, 0] = 1                                   # writable, as pycaffe's
    assert not d.HasField("encoded")


def test_datum_float_round_trip():
    arr = (np.arange(12, dtype=np.float32).reshape(3, 2, 2) - 5.5) / 3
    d = cio.array_to_datum(arr)
    assert not d.HasField("label") and d.data == b""
    assert len(d.float_data) == 12
    back = cio.datum_to_array(d)
    assert back.dtype == np.float64 and back.shape == (3, 2, 2)
    np.testing.assert_array_equal(back, arr)


def test_array_to_datum_needs_3d():
    with pytest.raises(ValueError, match="Incorrect array shape"):
        cio.array_to_datum(np.zeros((2, 2), np.uint8))


def test_encoded_datum_is_decoded_to_bgr(Image):
    rgb = np.array([[[255, 0, 0], [0, 255, 0]],
                    [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)       # H x W x RGB
    buf = _stdio.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    d = caffe_pb2.Datum(data=buf.getvalue(), encoded=True, label=3)
    a = cio.datum_to_array(d)
    assert a.shape == (3, 2, 2) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, rgb[:, :, ::-1].transpose(2, 0, 1))   # BGR planes


# -- Datum: the caffepy codec and pycaffe's view of it ----------------------------------

def test_datum_codec_raw_and_float_dtypes():
    d = caffe_pb2.Datum(channels=1, height=2, width=2, data=bytes([0, 7, 128, 255]), label=3)
    inner = dcodec.datum_to_array(d)
    assert inner.dtype == np.uint8 and inner.tolist() == [[[0, 7], [128, 255]]]
    assert not inner.flags.writeable                     # a view of the record's bytes
    py = cio.datum_to_array(d)
    assert py.tolist() == inner.tolist() and py.flags.writeable
    f = caffe_pb2.Datum(channels=2, height=1, width=1, float_data=[0.1, -4.0])
    inner = dcodec.datum_to_array(f)
    assert inner.dtype == np.float32 and inner.ravel().tolist() == [float(np.float32(0.1)), -4.0]
    py = cio.datum_to_array(f)
    assert py.dtype == np.float64 and py.shape == (2, 1, 1)
    assert py.ravel().tolist() == [float(np.float32(0.1)), -4.0]


def test_datum_raw_data_takes_priority_over_float_data():
    d = caffe_pb2.Datum(channels=1, height=1, width=2, data=bytes([5, 6]), float_data=[0.5, 9])
    assert dcodec.datum_to_array(d).tolist() == [[[5, 6]]]
    assert cio.datum_to_array(d).dtype == np.uint8
    np.testing.assert_array_equal(dcodec.datum_values(d), [5, 6])


def test_datum_size_errors_name_the_record():
    d = caffe_pb2.Datum(channels=1, height=2, width=3, data=bytes(5))
    with pytest.raises(DataError, match=r"record 'k7': Datum data holds 5 bytes but channels "
                                        r"x height x width = 1 x 2 x 3 = 6"):
        dcodec.datum_to_array(d, key=b"k7")
    f = caffe_pb2.Datum(channels=2, height=1, width=1, float_data=[1.0])
    with pytest.raises(DataError, match=r"float_data holds 1 values but .* = 2 x 1 x 1 = 2"):
        cio.datum_to_array(f)
    with pytest.raises(DataError, match="channels must be positive"):
        dcodec.datum_to_array(caffe_pb2.Datum())
    # pycaffe reshapes an empty Datum to an empty 0 x 0 x 0 array
    empty = cio.datum_to_array(caffe_pb2.Datum())
    assert empty.shape == (0, 0, 0) and empty.dtype == np.float64
    with pytest.raises(DataError, match=r"record 'x' is not a valid Datum"):
        dcodec.parse_datum(b"\x0a\x09", "x")


def test_array_to_datum_fills_and_reuses():
    d = dcodec.array_to_datum(np.arange(6, dtype=np.uint8).reshape(1, 2, 3), label=4)
    assert (d.channels, d.height, d.width, d.label) == (1, 2, 3, 4)
    assert d.data == bytes([0, 1, 2, 3, 4, 5]) and not d.HasField("encoded")
    # a reused Datum is cleared: the label and the raw data of the last record go
    same = dcodec.array_to_datum(np.float64([[[0.1]], [[2]]]), datum=d)
    assert same is d and (d.channels, d.height, d.width) == (2, 1, 1)
    assert not d.HasField("label") and d.data == b""
    assert list(d.float_data) == [float(np.float32(0.1)), 2.0]
    with pytest.raises(DataError, match=r"Incorrect array shape.*\(2, 3\)"):
        dcodec.array_to_datum(np.zeros((2, 3), np.uint8))


def test_encoded_datum_decodes_in_each_mode(Image):
    rgb = np.array([[[200, 100, 50], [0, 255, 10]]], dtype=np.uint8)      # 1 x 2 x RGB
    buf = _stdio.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    d = dcodec.encoded_datum(buf.getvalue(), label=9)
    assert d.encoded and d.label == 9 and not d.HasField("channels")
    bgr = dcodec.datum_to_array(d)
    assert bgr.tolist() == [[[50, 10]], [[100, 255]], [[200, 0]]]
    # OpenCV's grey: (R*4899 + G*9617 + B*1868 + 8192) >> 14
    grey = dcodec.datum_to_array(d, force_gray=True)
    assert grey.tolist() == [[[(200 * 4899 + 100 * 9617 + 50 * 1868 + 8192) >> 14,
                               (255 * 9617 + 10 * 1868 + 8192) >> 14]]]
    assert grey.tolist() == [[[124, 151]]]
    np.testing.assert_array_equal(cio.datum_to_array(d), bgr)
    with pytest.raises(DataError, match="cannot set both force_color and force_gray"):
        dcodec.datum_to_array(d, force_color=True, force_gray=True)


# -- load_image ------------------------------------------------------------------------

RGB = np.array([[[0, 51, 255], [255, 255, 255]],
                [[102, 0, 0], [1, 2, 3]],
                [[10, 200, 100], [0, 0, 0]]], dtype=np.uint8)          # 3 x 2 x RGB


def test_load_image_color(tmp_path, Image):
    path = str(tmp_path / "im.png")
    Image.fromarray(RGB, "RGB").save(path)
    im = cio.load_image(path)
    assert im.shape == (3, 2, 3) and im.dtype == np.float32
    np.testing.assert_array_equal(im, (RGB / 255.0).astype(np.float32))
    assert im[0, 0, 1] == np.float32(0.2) and im[0, 0, 2] == 1.0


def test_load_image_gray_from_color(tmp_path, Image):
    path = str(tmp_path / "im.png")
    Image.fromarray(RGB, "RGB").save(path)
    im = cio.load_image(path, color=False)
    assert im.shape == (3, 2, 1) and im.dtype == np.float32
    # skimage's rgb2gray: 0.2125 R + 0.7154 G + 0.0721 B of the [0, 1] image
    assert im[0, 0, 0] == pytest.approx(0.7154 * 0.2 + 0.0721, abs=1e-7)
    assert im[0, 1, 0] == pytest.approx(1.0, abs=1e-7)
    assert im[1, 0, 0] == pytest.approx(0.2125 * 0.4, abs=1e-7)


def test_load_image_grey_file_and_alpha(tmp_path, Image):
    g = np.array([[0, 128], [255, 64]], dtype=np.uint8)
    path = str(tmp_path / "g.png")
    Image.fromarray(g, "L").save(path)
    im = cio.load_image(path)                           # colour: the grey plane repeated
    assert im.shape == (2, 2, 3)
    for c in range(3):
        np.testing.assert_array_equal(im[:, :, c], (g / 255.0).astype(np.float32))
    im1 = cio.load_image(path, color=False)
    assert im1.shape == (2, 2, 1)
    np.testing.assert_array_equal(im1[:, :, 0], (g / 255.0).astype(np.float32))
    rgba = np.concatenate([RGB, np.full((3, 2, 1), 7, np.uint8)], axis=2)
    path = str(tmp_path / "a.png")
    Image.fromarray(rgba, "RGBA").save(path)
    np.testing.assert_array_equal(cio.load_image(path), (RGB / 255.0).astype(np.float32))


# -- resize_image ----------------------------------------------------------------------

def test_resize_bilinear_hand_values():
    im = np.array([[[-1.0], [3.0]]], dtype=np.float32)           # 1 x 2 x 1
    out = cio.resize_image(im, (1, 4))
    assert out.shape == (1, 4, 1) and out.dtype == np.float32
    # sample x = (d + 0.5)/2 - 0.5 = -0.25, 0.25, 0.75, 1.25 on the [0, 1]-normalised
    # image, with skimage's mode='constant' (0 outside): [0, .25, .75, .75] -> *4 - 1
    np.testing.assert_allclose(out[0, :, 0], [-1, 0, 2, 2], atol=1e-6)
    near = cio.resize_image(im, (1, 4), interp_order=0)
    np.testing.assert_array_equal(near[0, :, 0], [-1, -1, 3, 3])


def test_resize_2d_bilinear_and_shrink():
    im = np.array([[0, 2], [4, 6]], dtype=np.float32)[:, :, None]  # min 0, max 6
    out = cio.resize_image(im, (4, 4))[:, :, 0]
    # per axis the normalised weights are [.75 v0, .75 v0 + .25 v1, .25 v0 + .75 v1, .75 v1]
    w = np.array([[0.75, 0], [0.75, 0.25], [0.25, 0.75], [0, 0.75]])
    np.testing.assert_allclose(out, w @ im[:, :, 0] @ w.T, atol=1e-5)
    # a 2x shrink samples exactly between pixels
    big = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    small = cio.resize_image(big, (2, 2))[:, :, 0]
    np.testing.assert_allclose(small, [[2.5, 4.5], [10.5, 12.5]], atol=1e-5)


def test_resize_other_channel_counts_use_corner_aligned_zoom():
    im = np.zeros((1, 2, 4), np.float32)
    im[0, :, 0] = [-1, 3]
    im[0, :, 3] = [5, 5]
    out = cio.resize_image(im, (1, 4))
    assert out.shape == (1, 4, 4)
    np.testing.assert_allclose(out[0, :, 0], [-1, 1 / 3, 5 / 3, 3], atol=1e-6)
    np.testing.assert_allclose(out[0, :, 3], 5, atol=1e-6)


def test_resize_constant_image_and_errors():
    im = np.full((3, 3, 3), 0.5, np.float32)
    out = cio.resize_image(im, (5, 2))
    assert out.shape == (5, 2, 3) and out.dtype == np.float32
    assert np.all(out == 0.5)
    with pytest.raises(ValueError):
        cio.resize_image(im, (2, 2), interp_order=3)


# -- oversample ------------------------------------------------------------------------

def test_oversample_positions_and_order():
    im = np.arange(5 * 6, dtype=np.float32).reshape(5, 6, 1)
    im2 = -im
    crops = cio.oversample([im, im2], (3, 4))
    assert crops.shape == (20, 3, 4, 1) and crops.dtype == np.float32
    # corners (0,0), (0,2), (2,0), (2,2); centre: floor(2.5 - 1.5), floor(3 - 2) = (1, 1)
    starts = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
    for n, src in enumerate([im, im2]):
        for k, (y, x) in enumerate(starts):
            exp = src[y:y + 3, x:x + 4]
            np.testing.assert_array_equal(crops[10 * n + k], exp)
            np.testing.assert_array_equal(crops[10 * n + 5 + k], exp[:, ::-1])
    assert crops[4, 0, 0, 0] == 7.0                      # im[1, 1]


def test_oversample_odd_centre():
    im = np.arange(7 * 7 * 2, dtype=np.float32).reshape(7, 7, 2)
    crops = cio.oversample(np.array([im]), (4, 3))
    # centre: rows floor(3.5 - 2) = 1 .. 5, cols floor(3.5 - 1.5) = 2 .. 5
    np.testing.assert_array_equal(crops[4], im[1:5, 2:5])


# -- Transformer -----------------------------------------------------------------------

def _image():
    # 2 x 2 x RGB in [0, 1]
    return np.array([[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]],
                     [[0.7, 0.8, 0.9], [1.0, 0.0, 0.5]]], dtype=np.float32)


def _caffenet_transformer(shape=(1, 3, 2, 2)):
    t = cio.Transformer({"data": shape})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    return t


def test_transformer_preprocess_hand_values():
    t = _caffenet_transformer()
    im = _image()
    before = im.copy()
    out = t.preprocess("data", im)
    assert out.shape == (3, 2, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(im, before)            # the caller's image is untouched
    # out[c, h, w] = (im[h, w, 2 - c] * 255 - mean[c]) * 0.5
    assert out[0, 0, 0] == pytest.approx((0.3 * 255 - 10) * 0.5, rel=1e-6)   # 33.25
    assert out[1, 0, 1] == pytest.approx((0.5 * 255 - 20) * 0.5, rel=1e-6)   # 53.75
    assert out[2, 1, 0] == pytest.approx((0.7 * 255 - 30) * 0.5, rel=1e-6)   # 74.25
    assert out[0, 1, 1] == pytest.approx((0.5 * 255 - 10) * 0.5, rel=1e-6)   # 58.75
    exp = (im[:, :, ::-1].transpose(2, 0, 1) * np.float32(255)
           - np.array([10, 20, 30.0])[:, None, None]) * 0.5
    np.testing.assert_allclose(out, exp, rtol=1e-6)


def test_transformer_deprocess_inverts():
    t = _caffenet_transformer()
    im = _image()
    out = t.preprocess("data", im)
    back = t.deprocess("data", out[None])                # batch axis squeezed
    assert back.shape == (2, 2, 3)
    np.testing.assert_allclose(back, im, atol=1e-6)


def test_transformer_resizes_to_blob_dims():
    t = cio.Transformer({"data": (1, 3, 2, 2)})
    t.set_transpose("data", (2, 0, 1))
    im = np.tile(np.arange(16, dtype=np.float32).reshape(4, 4, 1), (1, 1, 3))
    out = t.preprocess("data", im)
    assert out.shape == (3, 2, 2)
    np.testing.assert_allclose(out[0], [[2.5, 4.5], [10.5, 12.5]], atol=1e-5)
    # same size: no resize, values unchanged
    t2 = cio.Transformer({"data": (1, 3, 4, 4)})
    np.testing.assert_array_equal(t2.preprocess("data", im), im)


def test_transformer_elementwise_mean_and_errors():
    t = cio.Transformer({"data": (1, 3, 2, 2)})
    mean = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    t.set_mean("data", mean)
    t.set_transpose("data", (2, 0, 1))
    out = t.preprocess("data", np.ones((2, 2, 3), np.float32))
    np.testing.assert_array_equal(out, 1 - mean)
    with pytest.raises(Exception, match="is not one of the net inputs"):
        t.preprocess("image", np.ones((2, 2, 3)))
    with pytest.raises(ValueError, match="Mean channels incompatible with input."):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(ValueError, match=r"Mean shape incompatible with input shape. The mean "
                       r"of 'data' has shape \(4, 2, 2\) \(4 channel\(s\)\) but the input is "
                       r"\(3, 2, 2\): the mean needs 3 channels"):
        t.set_mean("data", np.zeros((4, 2, 2)))
    with pytest.raises(ValueError, match=r"has shape \(2, 5, 5\)"):
        t.set_mean("data", np.zeros((2, 5, 5)))                   # resizing fixes no channels
    with pytest.raises(ValueError, match="Mean shape invalid"):
        t.set_mean("data", np.zeros((1, 3, 2, 2)))
    with pytest.raises(ValueError, match="Mean shape incompatible with input shape."):
        t.set_mean("data", np.zeros((2, 2)))             # H x W is a 1-channel input's mean
    with pytest.raises(ValueError, match=r"Mean channels incompatible with input. The mean of "
                       r"'data' has 4 values but the input shape \(3, 2, 2\) has 3 channels"):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(Exception, match="Transpose order needs"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(Exception, match="Channel swap needs"):
        t.set_channel_swap("data", (1, 0))


def test_transformer_grey_image():
    t = cio.Transformer({"data": (2, 1, 3, 2)})
    t.set_transpose("data", (2, 0, 1))
    t.set_raw_scale("data", 255.0)
    t.set_mean("data", np.array([100.0]))
    im = np.array([[0.0, 0.5], [1.0, 0.25], [0.75, 0.125]], np.float32)[:, :, None]
    out = t.preprocess("data", im)
    assert out.shape == (1, 3, 2)
    np.testing.assert_allclose(out[0], im[:, :, 0] * 255 - 100, rtol=1e-6)
    t.set_mean("data", np.full((3, 2), 50.0))            # H x W mean for a 1-channel input
    np.testing.assert_allclose(t.preprocess("data", im)[0], im[:, :, 0] * 255 - 50, rtol=1e-6)


# -- Transformer.set_mean: a mean image of another size is resized to the input ----------

def test_set_mean_resizes_hand_values():
    """3 x 1 x 2 mean for a 3 x 1 x 4 input: normalised by the overall min/max (-1, 3), each
    row resized at x = (d + 0.5)/2 - 0.5 = -.25, .25, .75, 1.25 with 0 (the minimum) outside,
    scaled back."""
    t = cio.Transformer({"data": (1, 3, 1, 4)})
    mean = np.array([[[-1.0, 3.0]], [[0.0, 1.0]], [[2.0, 2.0]]])
    t.set_mean("data", mean)
    m = t.mean["data"]
    assert m.shape == (3, 1, 4)
    # normalised rows [0, 1], [.25, .5], [.75, .75] -> [0, .25, .75, .75],
    # [.1875, .3125, .4375, .375], [.5625, .75, .75, .5625]; times 4, minus 1:
    np.testing.assert_allclose(m[:, 0], [[-1, 0, 2, 2], [-0.25, 0.25, 0.75, 0.5],
                                         [1.25, 2, 2, 1.25]], atol=1e-6)
    t.set_transpose("data", (2, 0, 1))
    out = t.preprocess("data", np.full((1, 4, 3), 10.0, np.float32))
    np.testing.assert_allclose(out, 10 - m, atol=1e-6)


def test_set_mean_imagenet_size_to_227():
    """classify.py's 3 x 256 x 256 mean for a 227 x 227 input: a ramp stays the ramp sampled
    at the shrunk pixel centres p(d) = (d + 0.5)·256/227 − 0.5 (all inside: no border)."""
    t = cio.Transformer({"data": (10, 3, 227, 227)})
    c, y, x = np.meshgrid(np.arange(3), np.arange(256), np.arange(256), indexing="ij")
    mean = 100.0 * c + 0.25 * y + 0.5 * x + 20
    t.set_mean("data", mean)
    m = t.mean["data"]
    assert m.shape == (3, 227, 227)
    p = (np.arange(227) + 0.5) * 256 / 227 - 0.5
    exp = (100.0 * np.arange(3)[:, None, None] + 0.25 * p[None, :, None]
           + 0.5 * p[None, None, :] + 20)
    np.testing.assert_allclose(m, exp, atol=3e-4)             # float32 interpolation
    assert m[1, 0, 0] == pytest.approx(120 + 0.75 * (0.5 * 256 / 227 - 0.5), abs=3e-4)
    # the per-channel constant mean detect.py derives stays exactly that constant
    t.set_mean("data", np.broadcast_to(np.array([104.0, 117.0, 123.0])[:, None, None],
                                       (3, 256, 256)))
    np.testing.assert_allclose(t.mean["data"][:, 100, 7], [104, 117, 123], atol=1e-4)
    np.testing.assert_allclose(t.mean["data"].std(axis=(1, 2)), 0, atol=1e-4)


def test_set_mean_one_channel_and_constant_and_other_channel_counts():
    # a 1 x H' x W' mean is resized and subtracted from every channel of a 3-channel input
    t = cio.Transformer({"data": (1, 3, 2, 2)})
    big = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    t.set_mean("data", big)
    np.testing.assert_allclose(t.mean["data"], [[[2.5, 4.5], [10.5, 12.5]]], atol=1e-5)
    t.set_transpose("data", (2, 0, 1))
    out = t.preprocess("data", np.zeros((2, 2, 3), np.float32))
    np.testing.assert_allclose(out, -np.tile(t.mean["data"], (3, 1, 1)), atol=1e-5)
    # an H' x W' mean for a 1-channel input
    t1 = cio.Transformer({"data": (1, 1, 2, 2)})
    t1.set_mean("data", big[0])
    np.testing.assert_allclose(t1.mean["data"], [[[2.5, 4.5], [10.5, 12.5]]], atol=1e-5)
    # C x 1 x 1: channel means, broadcast as they are (not resized)
    t.set_mean("data", np.array([1.0, 2.0, 3.0])[:, None, None])
    assert t.mean["data"].shape == (3, 1, 1)
    np.testing.assert_array_equal(t.preprocess("data", np.zeros((2, 2, 3), np.float32)),
                                  -np.array([1.0, 2.0, 3.0])[:, None, None] * np.ones((3, 2, 2)))
    # a constant mean image (pycaffe would divide 0 by 0): the constant
    t.set_mean("data", np.full((3, 5, 7), 7.5))
    assert t.mean["data"].shape == (3, 2, 2) and np.all(t.mean["data"] == 7.5)
    # 4 channels: the corner-aligned zoom of resize_image, x = d·(2 − 1)/(4 − 1)
    t4 = cio.Transformer({"data": (1, 4, 1, 4)})
    mean4 = np.zeros((4, 1, 2))
    mean4[0, 0] = [-1, 3]
    t4.set_mean("data", mean4)
    np.testing.assert_allclose(t4.mean["data"][0, 0], [-1, 1 / 3, 5 / 3, 3], atol=1e-6)
    np.testing.assert_allclose(t4.mean["data"][1:], 0, atol=1e-6)


# -- pycaffe's test_io cases ----------------------------------------------------------

def test_pycaffe_blobproto_formats():
    data = np.zeros((10, 10))
    old = caffe_pb2.BlobProto()
    old.data.extend(list(data.flatten()))
    old.num, old.channels, old.height, old.width = (1, 1, 10, 10)
    assert cio.blobproto_to_array(old).shape == (1, 1, 10, 10)
    new = caffe_pb2.BlobProto()
    new.data.extend(list(data.flatten()))
    new.shape.dim.extend([10, 10])
    assert cio.blobproto_to_array(new).shape == (10, 10)
    no_shape = caffe_pb2.BlobProto()
    no_shape.data.extend(list(data.flatten()))
    with pytest.raises(ValueError, match="holds 100 data values but its shape"):
        cio.blobproto_to_array(no_shape)
    scalar = caffe_pb2.BlobProto()
    scalar.data.extend([123.0])
    arr = cio.blobproto_to_array(scalar)
    assert arr.shape == () and arr == 123


def test_pycaffe_array_to_datum_label():
    d1 = cio.array_to_datum(np.ones((10, 10, 3)), label=1)
    d2 = cio.array_to_datum(np.ones((10, 10, 3)))
    assert d1.label == 1 and not d2.HasField("label")
    # the label field (tag 5, varint 1) is the two bytes of difference
    assert len(d1.SerializeToString()) == len(d2.SerializeToString()) + 2
    assert (d2.channels, d2.height, d2.width) == (10, 10, 3)
    assert list(d2.float_data) == [1.0] * 300 and d2.data == b""
    back = cio.datum_to_array(d1)
    assert back.dtype == np.float64 and back.shape == (10, 10, 3) and np.all(back == 1)
    with pytest.raises(ValueError, match="Incorrect array shape"):
        cio.array_to_datum(np.ones((2, 2)))


# -- proto files: text or binary, decided once -------------------------------------------

def test_read_proto_text_and_binary(tmp_path):
    txt = tmp_path / "net"                                # no extension: by content
    txt.write_text('name: "n"\nlayer { name: "a" type: "ReLU" }\n')
    assert files.read_proto(str(txt), caffe_pb2.NetParameter()).layer[0].type == "ReLU"
    binf = tmp_path / "net.bin"
    ref = caffe_pb2.NetParameter(name="m")
    ref.layer.add(name="b", type="TanH")
    binf.write_bytes(ref.SerializeToString())
    assert files.read_proto(str(binf), caffe_pb2.NetParameter()) == ref
    assert files.is_text_proto(b"x: 1\t\r\n") and not files.is_text_proto(b"\x08\x01")
    assert not files.is_text_proto("é".encode("latin-1"))              # not UTF-8
    assert files.is_text_proto(b"\x08", "a.prototxt")                  # extension first
    assert not files.is_text_proto(b"name: 1", "a.caffemodel")


def test_read_proto_binary_error_is_not_retried_as_text(tmp_path):
    bad = tmp_path / "w.caffemodel"
    bad.write_bytes(b'name: "text in a binary file"\n')
    with pytest.raises(ProtoError, match=r"w\.caffemodel: not a valid binary NetParameter"):
        files.read_proto(str(bad), caffe_pb2.NetParameter())
    trunc = tmp_path / "w2"
    trunc.write_bytes(caffe_pb2.NetParameter(name="abc").SerializeToString()[:-1])
    with pytest.raises(ProtoError, match=r"w2: not a valid binary NetParameter"):
        files.read_proto(str(trunc), caffe_pb2.NetParameter())


def test_read_proto_text_error_names_line_and_column(tmp_path):
    p = tmp_path / "t.prototxt"
    p.write_text('name: "n"\nlayer {\n  nme: "a"\n}\n')
    with pytest.raises(ProtoError, match=r"t\.prototxt:3:\d+: cannot parse NetParameter: .*nme"):
        files.read_proto(str(p), caffe_pb2.NetParameter())
    p.write_bytes(b"name: \"\xff\"\n")
    with pytest.raises(ProtoError, match=r"t\.prototxt: not a text NetParameter: byte 7 is "
                                         r"not UTF-8"):
        files.read_proto(str(p), caffe_pb2.NetParameter())
    with pytest.raises(ProtoError, match=r"cannot read NetParameter file '.*missing'"):
        files.read_proto(str(tmp_path / "missing"), caffe_pb2.NetParameter())
