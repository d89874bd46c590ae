"""Caffe's dataset and upgrade tools as caffepy commands: convert_imageset, compute_image_mean,
extract_features, upgrade_net_proto_text/binary, upgrade_solver_proto_text."""
import io
import re

import numpy as np
import pytest

from caffepy import cli
from caffepy.proto import caffe_pb2
from caffepy.proto import read_binary, read_text, write_binary
from helpers import messages, run_cli

lmdb = pytest.importorskip("lmdb")
Image = pytest.importorskip("PIL.Image")

H, W = 4, 6


def read_db(path):
    """[(key bytes, Datum)] of an LMDB, in key order."""
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            out = []
            for k, v in txn.cursor():
                d = caffe_pb2.Datum()
                d.ParseFromString(v)
                out.append((bytes(k), d))
            return out
    finally:
        env.close()


def bgr_chw(rgb):
    """What OpenCV gives for an RGB (H×W×3) or grey (H×W) picture, as Caffe stores it."""
    if rgb.ndim == 2:
        return np.repeat(rgb[None], 3, axis=0)
    return np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))


def cv_gray(rgb):
    """OpenCV's RGB -> grey: (R·4899 + G·9617 + B·1868 + 8192) >> 14."""
    if rgb.ndim == 2:
        return rgb
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 4899 + g * 9617 + b * 1868 + 8192) >> 14).astype(np.uint8)


def decode(data):
    img = Image.open(io.BytesIO(data))
    img.load()
    return np.asarray(img)


@pytest.fixture
def imageset(tmp_path):
    """ROOT/ with two colour PNGs (one in a folder with spaces), a grey PNG and a JPEG."""
    rng = np.random.default_rng(7)
    root = tmp_path / "images"
    (root / "sub dir").mkdir(parents=True)
    pics = {
        "a.png": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
        "sub dir/b c.png": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
        "g.png": rng.integers(0, 256, (H, W), dtype=np.uint8),
    }
    for rel, arr in pics.items():
        Image.fromarray(arr).save(root / rel)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "d.jpg",
                                                                          quality=90)
    lst = tmp_path / "list.txt"
    lst.write_text("a.png 0\nsub dir/b c.png 1\ng.png 2\n")
    return root, lst, pics


LABELS = {"a.png": 0, "sub dir/b c.png": 1, "g.png": 2}
ORDER = ["a.png", "sub dir/b c.png", "g.png"]


# -- convert_imageset --------------------------------------------------------------------------

def test_convert_imageset_raw(capsys, tmp_path, imageset):
    root, lst, pics = imageset
    db = tmp_path / "raw_lmdb"
    rc, _, err = run_cli(capsys, "convert_imageset", str(root) + "/", lst, db)
    assert rc == 0, err
    msgs = messages(err)
    assert "A total of 3 images." in msgs and msgs[-1] == "Processed 3 files."
    recs = read_db(db)
    assert [k for k, _ in recs] == [("%08d_%s" % (i, r)).encode() for i, r in enumerate(ORDER)]
    for (key, d), rel in zip(recs, ORDER):
        assert (d.channels, d.height, d.width) == (3, H, W)
        assert d.HasField("encoded") and not d.encoded
        assert d.label == LABELS[rel]
        assert d.data == bgr_chw(pics[rel]).tobytes()      # exact BGR CHW pixels
        assert len(d.float_data) == 0


def test_convert_imageset_gray_and_root_without_slash(capsys, tmp_path, imageset):
    root, lst, pics = imageset
    db = tmp_path / "gray_lmdb"
    rc, _, err = run_cli(capsys, "convert_imageset", "-gray", str(root), lst, db)
    assert rc == 0, err
    for (key, d), rel in zip(read_db(db), ORDER):
        assert (d.channels, d.height, d.width) == (1, H, W)
        assert d.data == cv_gray(pics[rel]).tobytes()


def test_convert_imageset_resize(capsys, tmp_path, imageset):
    root, lst, pics = imageset
    db = tmp_path / "small_lmdb"
    # An exact 2x shrink: OpenCV (INTER_LINEAR) averages each 2x2 block, rounding half up.
    rc, _, err = run_cli(capsys, "convert_imageset", "--resize_height=2", "--resize_width", 3,
                         "--check_size", str(root) + "/", lst, db)
    assert rc == 0, err
    for (key, d), rel in zip(read_db(db), ORDER):
        x = bgr_chw(pics[rel]).astype(np.uint16)
        want = ((x[:, 0::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 0::2] + x[:, 1::2, 1::2] + 2)
                >> 2).astype(np.uint8)
        assert (d.channels, d.height, d.width) == (3, 2, 3)
        assert d.data == want.tobytes()


def test_convert_imageset_encoded(capsys, tmp_path, imageset):
    root, lst, pics = imageset
    lst.write_text("a.png 0\nsub dir/b c.png 1\ng.png 2\nd.jpg 3\n")
    db = tmp_path / "enc_lmdb"
    rc, _, err = run_cli(capsys, "convert_imageset", "--encoded", str(root) + "/", lst, db)
    assert rc == 0, err
    recs = read_db(db)
    assert [k for k, _ in recs][-1] == b"00000003_d.jpg"
    for (key, d), rel in zip(recs, ORDER + ["d.jpg"]):
        assert d.encoded
        # The files' own bytes (extension matches, no resize); no channels/height/width.
        assert d.data == (root / rel).read_bytes()
        assert not d.HasField("channels") and not d.HasField("height")
        assert d.label == (3 if rel == "d.jpg" else LABELS[rel])

    # encode_type png: the JPEG is decoded and re-encoded as PNG (encoded is implied).
    db2 = tmp_path / "png_lmdb"
    rc, _, err = run_cli(capsys, "convert_imageset", "--encode_type", "png", str(root) + "/", lst,
                         db2)
    assert rc == 0, err
    assert "encode_type specified, assuming encoded=true." in messages(err)
    recs = dict(read_db(db2))
    d = recs[b"00000003_d.jpg"]
    assert d.encoded and d.data[:8] == b"\x89PNG\r\n\x1a\n"
    jpg = Image.open(root / "d.jpg")
    jpg.load()
    np.testing.assert_array_equal(decode(d.data), np.asarray(jpg.convert("RGB")))
    assert recs[b"00000000_a.png"].data == (root / "a.png").read_bytes()

    # Resizing forces re-encoding; the decoded pixels are the resized ones.
    db3 = tmp_path / "enc_small_lmdb"
    rc, _, err = run_cli(capsys, "convert_imageset", "--encoded", "--resize_height", 2,
                         "--resize_width", 3, str(root) + "/", lst, db3)
    assert rc == 0, err
    d = dict(read_db(db3))[b"00000000_a.png"]
    x = pics["a.png"].astype(np.uint16)
    want = ((x[0::2, 0::2] + x[0::2, 1::2] + x[1::2, 0::2] + x[1::2, 1::2] + 2) >> 2)
    np.testing.assert_array_equal(decode(d.data), want.astype(np.uint8))


def test_convert_imageset_shuffle_is_seeded(capsys, tmp_path, imageset):
    root, lst, pics = imageset
    names = ["p%02d.png" % i for i in range(12)]
    for i, n in enumerate(names):
        Image.fromarray(np.full((2, 2), i, np.uint8)).save(root / n)
    lst.write_text("".join("%s %d\n" % (n, i) for i, n in enumerate(names)))
    dbs = []
    for name, seed in (("s1", 0), ("s2", 0), ("s3", 5)):
        db = tmp_path / name
        rc, _, err = run_cli(capsys, "convert_imageset", "--shuffle", "--shuffle_seed", seed,
                             "-gray", str(root) + "/", lst, db)
        assert rc == 0, err
        assert "Shuffling data" in messages(err)
        dbs.append(read_db(db))
    orders = []
    for recs in dbs:
        order = []
        for i, (key, d) in enumerate(recs):
            prefix, rel = key.decode().split("_", 1)
            assert prefix == "%08d" % i
            k = names.index(rel)
            assert d.label == k and d.data == bytes([k] * 4)   # label and image stay paired
            order.append(k)
        assert sorted(order) == list(range(12))
        orders.append(order)
    assert orders[0] == orders[1] and orders[0] != list(range(12))
    assert orders[0] == list(np.random.default_rng(0).permutation(12))
    assert orders[2] != orders[0]


def test_convert_imageset_skips_unreadable_images(capsys, tmp_path, imageset):
    root, lst, pics = imageset
    (root / "broken.png").write_bytes(b"not an image")
    lst.write_text("a.png 0\nmissing.png 1\n\nbroken.png 5\ng.png 2\n")
    db = tmp_path / "lmdb"
    rc, _, err = run_cli(capsys, "convert_imageset", str(root) + "/", lst, db)
    assert rc == 0, err
    warns = [m for m in re.findall(r"^W\d{4} .*?\] (.*)$", err, re.M)]
    assert any("missing.png" in w and "line 2 of %s" % lst in w for w in warns), warns
    assert any("broken.png" in w and "line 4 of %s" % lst in w for w in warns), warns
    assert any(w.startswith("Skipped 2 of 4 images") for w in warns), warns
    assert "Processed 2 files." in messages(err)
    # The key counts list positions, skipped ones included (as Caffe's line_id).
    assert [k for k, _ in read_db(db)] == [b"00000000_a.png", b"00000003_g.png"]


def test_convert_imageset_commits_in_chunks(caplog, tmp_path, imageset):
    from caffepy.tools.convert_imageset import convert_imageset
    root, lst, pics = imageset
    lst.write_text("a.png 0\nsub dir/b c.png 1\ng.png 2\na.png 3\ng.png 4\n")
    db = tmp_path / "lmdb"
    caplog.set_level("INFO", logger="caffepy")
    assert convert_imageset(str(root) + "/", str(lst), str(db), commit_every=2,
                            progress=False) == (5, 0)
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Processed")]
    assert done == ["Processed 2 files.", "Processed 4 files.", "Processed 5 files."]
    recs = read_db(db)
    assert [k for k, _ in recs][3:] == [b"00000003_a.png", b"00000004_g.png"]
    assert [d.label for _, d in recs] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("content,msg", [
    ("a.png 0\nb.png\n", r"list.txt:2: no label in 'b.png'"),
    ("a.png 0\n\nb.png x\n", r"list.txt:3: the label 'x' is not an integer"),
    ("\n\n", r"names no images"),
])
def test_convert_imageset_bad_list(capsys, tmp_path, imageset, content, msg):
    root, lst, _ = imageset
    lst.write_text(content)
    db = tmp_path / "lmdb"
    rc, _, err = run_cli(capsys, "convert_imageset", str(root) + "/", lst, db)
    assert rc == 1 and re.search(r"^F\d{4} .*" + msg, err, re.M), err
    assert "Traceback" not in err
    assert not db.exists()                       # nothing written


def test_convert_imageset_check_size(capsys, tmp_path, imageset):
    root, lst, _ = imageset
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(root / "small.png")
    lst.write_text("a.png 0\nsmall.png 1\n")
    db = tmp_path / "lmdb"
    rc, _, err = run_cli(capsys, "convert_imageset", "-check_size", str(root) + "/", lst, db)
    assert rc == 1 and "list.txt:2: image 'small.png' is 3 x 3 x 3" in err, err
    assert not db.exists()                       # the partial database is removed
    rc, _, err = run_cli(capsys, "convert_imageset", str(root) + "/", lst, db)
    assert rc == 0 and len(read_db(db)) == 2      # without the flag sizes may differ


def test_convert_imageset_usage_errors(capsys, tmp_path, imageset):
    root, lst, _ = imageset
    rc, _, err = run_cli(capsys, "convert_imageset", str(root) + "/", lst)
    assert rc == 1 and "convert_imageset needs ROOTFOLDER/ LISTFILE DB_NAME" in err
    rc, _, err = run_cli(capsys, "convert_imageset", root, tmp_path / "nolist.txt",
                         tmp_path / "x")
    assert rc == 1 and "cannot open the list file" in err and "nolist.txt" in err
    (tmp_path / "exists").mkdir()
    rc, _, err = run_cli(capsys, "convert_imageset", root, lst, tmp_path / "exists")
    assert rc == 1 and "already exists" in err
    rc, _, err = run_cli(capsys, "convert_imageset", "--backend", "rocksdb", root, lst,
                         tmp_path / "y")
    assert rc == 1 and "Unknown database backend 'rocksdb'" in err
    rc, _, err = run_cli(capsys, "convert_imageset", "--encode_type", "xyz", root, lst,
                         tmp_path / "z")
    assert rc == 1 and "cannot encode images as '.xyz'" in err


def test_convert_imageset_leveldb_needs_plyvel(capsys, tmp_path, imageset):
    try:
        import plyvel  # noqa: F401
        pytest.skip("plyvel is installed")
    except ImportError:
        pass
    root, lst, _ = imageset
    rc, _, err = run_cli(capsys, "convert_imageset", "--backend", "leveldb", str(root) + "/", lst,
                         tmp_path / "ldb")
    assert rc == 1 and "plyvel" in err and "Traceback" not in err


# -- compute_image_mean -------------------------------------------------------------------------

def _mean_bp(path):
    return read_binary(str(path), caffe_pb2.BlobProto())


def test_compute_image_mean(capsys, tmp_path, imageset):
    root, lst, pics = imageset
    db = tmp_path / "raw_lmdb"
    assert run_cli(capsys, "convert_imageset", str(root) + "/", lst, db)[0] == 0
    out = tmp_path / "mean.binaryproto"
    rc, _, err = run_cli(capsys, "compute_image_mean", "-backend", "lmdb", db, out)
    assert rc == 0, err
    stack = np.stack([bgr_chw(pics[r]) for r in ORDER]).astype(np.float32)
    want = stack.sum(axis=0, dtype=np.float32) / np.float32(3)
    bp = _mean_bp(out)
    assert (bp.num, bp.channels, bp.height, bp.width) == (1, 3, H, W)
    assert not bp.HasField("shape")
    np.testing.assert_array_equal(np.asarray(bp.data, np.float32), want.ravel())
    np.testing.assert_allclose(np.asarray(bp.data), stack.mean(axis=0).ravel(), rtol=1e-6)
    msgs = messages(err)
    assert "Processed 3 files." in msgs and "Number of channels: 3" in msgs
    for c in range(3):
        assert "mean_value channel [%d]: %g" % (c, want[c].mean()) in msgs

    # Encoded records are decoded in their native channels (DecodeDatumNative): the grey PNG
    # gives 1 channel, the colour ones 3, so that database cannot be averaged ...
    db2 = tmp_path / "enc_lmdb"
    assert run_cli(capsys, "convert_imageset", "--encoded", str(root) + "/", lst, db2)[0] == 0
    rc, _, err = run_cli(capsys, "compute_image_mean", db2)
    assert rc == 1 and "record '00000002_g.png' holds 24 values (channels x height x width = " \
        "1 x 4 x 6)" in err, err
    # ... while the colour ones (lossless PNGs) give the raw mean; no output file is fine.
    lst.write_text("a.png 0\nsub dir/b c.png 1\n")
    db3 = tmp_path / "enc2_lmdb"
    assert run_cli(capsys, "convert_imageset", "--encoded", str(root) + "/", lst, db3)[0] == 0
    rc, _, err = run_cli(capsys, "compute_image_mean", db3)
    assert rc == 0 and "Decoding Datum" in messages(err)
    want2 = (stack[0] + stack[1]) / np.float32(2)
    for c in range(3):
        assert "mean_value channel [%d]: %g" % (c, want2[c].mean()) in messages(err)


def _write_lmdb(path, datums):
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for k, d in datums:
            txn.put(k, d.SerializeToString())
    env.close()


def test_compute_image_mean_float_data(capsys, tmp_path):
    vals = [np.arange(8, dtype=np.float32) * s + 0.25 for s in (1.0, -2.0, 0.5)]
    recs = []
    for i, v in enumerate(vals):
        d = caffe_pb2.Datum(channels=2, height=2, width=2)
        d.float_data.extend(v.tolist())
        recs.append((b"%02d" % i, d))
    db = tmp_path / "f_lmdb"
    _write_lmdb(db, recs)
    out = tmp_path / "m.binaryproto"
    rc, _, err = run_cli(capsys, "compute_image_mean", db, out)
    assert rc == 0, err
    want = ((vals[0] + vals[1]) + vals[2]) / np.float32(3)
    np.testing.assert_array_equal(np.asarray(_mean_bp(out).data, np.float32), want)


def test_compute_image_mean_errors(capsys, tmp_path):
    d1 = caffe_pb2.Datum(channels=1, height=2, width=2, data=bytes(4))
    d2 = caffe_pb2.Datum(channels=1, height=3, width=2, data=bytes(6))
    db = tmp_path / "mixed_lmdb"
    _write_lmdb(db, [(b"first", d1), (b"second_key", d2)])
    rc, _, err = run_cli(capsys, "compute_image_mean", db, tmp_path / "m")
    assert rc == 1 and "record 'second_key'" in err and "same size" in err, err
    assert not (tmp_path / "m").exists()
    rc, _, err = run_cli(capsys, "compute_image_mean", tmp_path / "nodb")
    assert rc == 1 and "nodb" in err and "no such file" in err and "Traceback" not in err
    empty = tmp_path / "empty_lmdb"
    _write_lmdb(empty, [])
    rc, _, err = run_cli(capsys, "compute_image_mean", empty)
    assert rc == 1 and "is empty" in err
    rc, _, err = run_cli(capsys, "compute_image_mean")
    assert rc == 1 and "INPUT_DB [OUTPUT_FILE]" in err


# -- extract_features ---------------------------------------------------------------------------

FEATURE_NET = """
name: "feat"
layer { name: "data" type: "Data" top: "data" top: "label"
  data_param { source: "%s" backend: LMDB batch_size: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 } }
"""


@pytest.fixture
def feature_setup(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 10, (4, 1, 2, 2)).astype(np.uint8)
    _write_lmdb(tmp_path / "in_lmdb",
                [(b"%08d" % i, caffe_pb2.Datum(channels=1, height=2, width=2,
                                               data=images[i].tobytes(), label=i))
                 for i in range(4)])
    (tmp_path / "feat.prototxt").write_text(FEATURE_NET % (tmp_path / "in_lmdb"))
    w = rng.integers(-3, 4, (3, 4)).astype(np.float32)
    b = np.array([0.5, -1.0, 2.0], np.float32)
    net = caffe_pb2.NetParameter(name="feat")
    layer = net.layer.add(name="ip", type="InnerProduct")
    for arr in (w, b):
        bp = layer.blobs.add()
        bp.shape.dim.extend(arr.shape)
        bp.data.extend(arr.ravel().tolist())
    write_binary(net, str(tmp_path / "w.caffemodel"))
    want_ip = images.reshape(4, 4).astype(np.float32) @ w.T + b    # small integers: exact
    return tmp_path, images, want_ip


def test_extract_features(capsys, feature_setup):
    d, images, want_ip = feature_setup
    rc, _, err = run_cli(capsys, "extract_features", d / "w.caffemodel", d / "feat.prototxt",
                         "ip,data", "%s,%s" % (d / "ip_lmdb", d / "data_lmdb"), 3, "lmdb", "CPU")
    assert rc == 0, err
    msgs = messages(err)
    assert "Successfully extracted the features!" in msgs
    assert "Extracted features of 6 query images for feature blob ip" in msgs
    ip = read_db(d / "ip_lmdb")
    assert [k for k, _ in ip] == [b"%010d" % i for i in range(6)]
    for i, (_, datum) in enumerate(ip):
        assert (datum.channels, datum.height, datum.width) == (3, 1, 1)
        assert not datum.data and not datum.HasField("label") and not datum.encoded
        # 3 batches of 2 from a 4-record database: the Data layer wraps around.
        np.testing.assert_array_equal(np.asarray(datum.float_data, np.float32),
                                      want_ip[i % 4])
    data = read_db(d / "data_lmdb")
    assert len(data) == 6
    for i, (_, datum) in enumerate(data):
        assert (datum.channels, datum.height, datum.width) == (1, 2, 2)
        np.testing.assert_array_equal(datum.float_data, images[i % 4].ravel().astype(np.float32))


def test_extract_features_errors(capsys, feature_setup):
    d, _, _ = feature_setup
    w, net = d / "w.caffemodel", d / "feat.prototxt"
    rc, _, err = run_cli(capsys, "extract_features", w, net, "ip,data", d / "one_lmdb", 1, "lmdb")
    assert rc == 1 and "number of blob names (2" in err and "must be equal" in err
    rc, _, err = run_cli(capsys, "extract_features", w, net, "fc7", d / "x_lmdb", 1, "lmdb")
    assert rc == 1 and "Unknown feature blob name fc7" in err
    assert not (d / "x_lmdb").exists()
    rc, _, err = run_cli(capsys, "extract_features", w, net, "ip", d / "in_lmdb", 1, "lmdb")
    assert rc == 1 and "already exists" in err
    rc, _, err = run_cli(capsys, "extract_features", w, net, "ip", d / "y_lmdb", 1, "rocksdb")
    assert rc == 1 and "Unknown database backend 'rocksdb'" in err
    rc, _, err = run_cli(capsys, "extract_features", d / "nope.caffemodel", net, "ip",
                         d / "z_lmdb", 1, "lmdb")
    assert rc == 1 and "nope.caffemodel" in err and "does not exist" in err
    rc, _, err = run_cli(capsys, "extract_features", w, net, "ip", d / "z_lmdb")
    assert rc == 1 and "extract_features needs 6 to 8 arguments" in err
    if not cli._gpu_device_count():
        rc, _, err = run_cli(capsys, "extract_features", w, net, "ip", d / "g_lmdb", 1, "lmdb",
                             "GPU", 0)
        assert rc == 1 and "CuPy" in err and not (d / "g_lmdb").exists()


# -- upgrade tools ------------------------------------------------------------------------------

V1_NET = """
name: "old"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "conv1" bottom: "conv1" top: "loss" }
"""


def _check_v2(net):
    assert len(net.layers) == 0 and not net.input and not net.input_dim
    assert [l.type for l in net.layer] == ["Input", "Convolution", "ReLU", "SoftmaxWithLoss"]
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]
    conv = net.layer[1]
    assert conv.name == "conv1" and list(conv.bottom) == ["data"]
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert conv.convolution_param.num_output == 4
    assert list(conv.convolution_param.kernel_size) == [3]


def test_upgrade_net_proto_text(capsys, tmp_path):
    src, dst = tmp_path / "old.prototxt", tmp_path / "new.prototxt"
    src.write_text(V1_NET)
    rc, _, err = run_cli(capsys, "upgrade_net_proto_text", src, dst)
    assert rc == 0, err
    assert "Wrote upgraded NetParameter text proto to %s" % dst in messages(err)
    text = dst.read_text()
    assert "layers {" not in text and 'type: "Convolution"' in text
    _check_v2(read_text(str(dst), caffe_pb2.NetParameter()))
    # Upgrading again: already current, written back unchanged (Caffe logs it as an error).
    dst2 = tmp_path / "again.prototxt"
    rc, _, err = run_cli(capsys, "upgrade_net_proto_text", dst, dst2)
    assert rc == 0 and re.search(r"^E\d{4} .*File already in latest proto format", err, re.M)
    assert dst2.read_text() == text


def test_upgrade_net_proto_binary(capsys, tmp_path):
    from google.protobuf import text_format
    old = text_format.Parse(V1_NET, caffe_pb2.NetParameter())
    bp = old.layers[0].blobs.add()
    bp.num, bp.channels, bp.height, bp.width = 1, 1, 1, 2
    bp.data.extend([1.5, -2.5])
    src, dst = tmp_path / "old.caffemodel", tmp_path / "new.caffemodel"
    write_binary(old, str(src))
    rc, _, err = run_cli(capsys, "upgrade_net_proto_binary", src, dst)
    assert rc == 0, err
    assert "Wrote upgraded NetParameter binary proto to %s" % dst in messages(err)
    new = read_binary(str(dst), caffe_pb2.NetParameter())
    _check_v2(new)
    assert list(new.layer[1].blobs[0].data) == [1.5, -2.5]


def test_upgrade_solver_proto_text(capsys, tmp_path):
    src, dst = tmp_path / "solver.prototxt", tmp_path / "new_solver.prototxt"
    src.write_text('net: "net.prototxt"\nbase_lr: 0.01\nsolver_type: NESTEROV\nmomentum: 0.9\n')
    rc, _, err = run_cli(capsys, "upgrade_solver_proto_text", src, dst)
    assert rc == 0, err
    assert "Wrote upgraded SolverParameter text proto to %s" % dst in messages(err)
    new = read_text(str(dst), caffe_pb2.SolverParameter())
    assert new.type == "Nesterov" and not new.HasField("solver_type")
    assert new.net == "net.prototxt" and new.momentum == pytest.approx(0.9)
    assert "solver_type" not in dst.read_text()


def test_upgrade_errors(capsys, tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { name: 'x' bogus_field: 1 }\n")
    rc, _, err = run_cli(capsys, "upgrade_net_proto_text", bad, tmp_path / "out")
    assert rc == 2 and "Failed to parse input text file as NetParameter" in err
    assert "bogus_field" in err and not (tmp_path / "out").exists()
    rc, _, err = run_cli(capsys, "upgrade_solver_proto_text", tmp_path / "none", tmp_path / "o")
    assert rc == 2 and "Failed to parse input text file as SolverParameter" in err
    rc, _, err = run_cli(capsys, "upgrade_net_proto_binary", tmp_path / "x")
    assert rc == 1 and "upgrade_net_proto_binary" in err and "OUT" in err
    both = tmp_path / "both.prototxt"
    both.write_text('layer { name: "a" type: "ReLU" }\nlayers { name: "b" type: RELU }\n')
    rc, _, err = run_cli(capsys, "upgrade_net_proto_text", both, tmp_path / "o2")
    assert rc == 1 and re.search(r"^F\d{4} ", err, re.M)


def test_upgrade_with_problems_exits_1(capsys, tmp_path):
    src = tmp_path / "v0.prototxt"
    src.write_text('name: "v0"\ninput: "data"\nlayers { layer { name: "conv1" type: "conv" '
                   'num_output: 4 kernelsize: 3 dropout_ratio: 0.5 } bottom: "data" '
                   'top: "conv1" }\n')
    dst = tmp_path / "new.prototxt"
    rc, _, err = run_cli(capsys, "upgrade_net_proto_text", src, dst)
    assert rc == 1 and "Unknown parameter dropout_ratio for layer type conv" in err
    assert "Encountered error(s) while upgrading prototxt; see details above." in err
    net = read_text(str(dst), caffe_pb2.NetParameter())     # written all the same
    assert [l.type for l in net.layer] == ["Convolution"]
    assert net.layer[0].convolution_param.num_output == 4


def test_usage_lists_the_tools(capsys):
    rc, _, err = run_cli(capsys)
    assert rc == 1
    for name in ("convert_mnist", "convert_imageset", "compute_image_mean", "extract_features",
                 "upgrade_net_proto_text", "upgrade_net_proto_binary",
                 "upgrade_solver_proto_text"):
        assert re.search(r"^  %s +\S" % name, err, re.M), name
    rc, out, _ = run_cli(capsys, "--help")
    assert rc == 0 and "-resize_height" in out and "-encode_type" in out
