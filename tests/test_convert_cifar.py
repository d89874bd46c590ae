"""caffepy convert_cifar_data (examples/cifar10/convert_cifar_data.cpp) and
examples/cifar10/create_cifar10.py, on tiny synthetic CIFAR-10 binary batch files."""
import importlib.util
import os
import re

import numpy as np
import pytest

import caffepy
from caffepy.proto import caffe_pb2
from caffepy.proto import read_binary
from helpers import run_cli

lmdb = pytest.importorskip("lmdb")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_COUNTS = (3, 2, 3, 1, 3)      # records per data_batch_{1..5}.bin (Caffe's: 10000 each)
TEST_COUNT = 4


def make_batches(folder, seed=0):
    """Write data_batch_1..5.bin and test_batch.bin; returns (train, test) as lists of
    (label, 3072 pixel bytes) in file order."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def write(name, n):
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        raw = np.concatenate([labels[:, None], pixels], axis=1)
        (folder / name).write_bytes(raw.tobytes())
        return [(int(labels[i]), pixels[i].tobytes()) for i in range(n)]

    train = []
    for i, n in enumerate(TRAIN_COUNTS):
        train += write("data_batch_%d.bin" % (i + 1), n)
    test = write("test_batch.bin", TEST_COUNT)
    return train, test


def read_db(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            out = []
            for k, v in txn.cursor():
                d = caffe_pb2.Datum()
                d.ParseFromString(v)
                out.append((bytes(k), d, bytes(v)))
    finally:
        env.close()
    return out


def check_db(path, records):
    got = read_db(path)
    assert [k for k, _, _ in got] == [b"%05d" % i for i in range(len(records))]
    for (_, d, raw), (label, pixels) in zip(got, records):
        assert (d.channels, d.height, d.width) == (3, 32, 32)
        assert d.data == pixels            # the file's bytes: R, G, B planes, not BGR
        assert d.label == label
        assert not d.encoded and len(d.float_data) == 0
        # Caffe's serialisation: channels, height, width, data, label (field order)
        ref = caffe_pb2.Datum(channels=3, height=32, width=32, data=pixels, label=label)
        assert raw == ref.SerializeToString()


def test_convert_writes_caffes_records(tmp_path, capsys):
    train, test = make_batches(tmp_path / "in")
    (tmp_path / "out").mkdir()
    rc, _, err = run_cli(capsys, "convert_cifar_data", tmp_path / "in", tmp_path / "out")
    assert rc == 0, err
    check_db(tmp_path / "out" / "cifar10_train_lmdb", train)      # keys run on across files
    check_db(tmp_path / "out" / "cifar10_test_lmdb", test)
    assert "Writing Training data" in err and "Training Batch 5" in err
    assert "Writing Testing data" in err
    assert re.search(r"Wrote 12 training images to .*cifar10_train_lmdb and 4 test images to "
                     r".*cifar10_test_lmdb", err)


def test_caffes_positional_backend_and_the_flag(tmp_path, capsys):
    make_batches(tmp_path / "in")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert run_cli(capsys, "convert_cifar_data", tmp_path / "in", tmp_path / "a", "lmdb")[0] == 0
    assert run_cli(capsys, "convert_cifar_data", "--backend=lmdb", tmp_path / "in",
                   tmp_path / "b")[0] == 0
    assert read_db(tmp_path / "a" / "cifar10_train_lmdb") == \
        read_db(tmp_path / "b" / "cifar10_train_lmdb")
    rc, _, err = run_cli(capsys, "convert_cifar_data", "--backend", "leveldb", tmp_path / "in",
                         tmp_path / "b", "lmdb")
    assert rc == 1 and "contradicts --backend leveldb" in err
    rc, _, err = run_cli(capsys, "convert_cifar_data", tmp_path / "in")
    assert rc == 1 and "needs INPUT_FOLDER OUTPUT_FOLDER (got 1 argument)" in err
    rc, _, err = run_cli(capsys, "convert_cifar_data", tmp_path / "in", tmp_path / "b", "rocksdb")
    assert rc == 1 and "Unknown database backend 'rocksdb'" in err


def test_errors_name_the_file_and_write_nothing(tmp_path, capsys):
    make_batches(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    missing = tmp_path / "in" / "data_batch_3.bin"
    saved = missing.read_bytes()
    missing.unlink()
    rc, _, err = run_cli(capsys, "convert_cifar_data", tmp_path / "in", out)
    assert rc == 1 and "'%s' is missing" % missing in err
    assert os.listdir(out) == []
    missing.write_bytes(saved)

    bad = tmp_path / "in" / "test_batch.bin"
    bad.write_bytes(bad.read_bytes()[:-7])
    rc, _, err = run_cli(capsys, "convert_cifar_data", tmp_path / "in", out)
    assert rc == 1 and "'%s' is not a CIFAR-10 binary batch file" % bad in err
    assert "(12285 bytes) is not a positive multiple of 3073" in err
    assert os.listdir(out) == []
    bad.write_bytes(b"")
    rc, _, err = run_cli(capsys, "convert_cifar_data", tmp_path / "in", out)
    assert rc == 1 and "(0 bytes)" in err and os.listdir(out) == []

    make_batches(tmp_path / "in")
    (out / "cifar10_test_lmdb").mkdir()
    rc, _, err = run_cli(capsys, "convert_cifar_data", tmp_path / "in", out)
    assert rc == 1 and "cifar10_test_lmdb' already exists" in err
    assert os.listdir(out) == ["cifar10_test_lmdb"]       # the train db was not written

    rc, _, err = run_cli(capsys, "convert_cifar_data", tmp_path / "nowhere", out)
    assert rc == 1 and "input folder" in err and "does not exist" in err
    rc, _, err = run_cli(capsys, "convert_cifar_data", tmp_path / "in", tmp_path / "nowhere")
    assert rc == 1 and "output folder" in err and "does not exist" in err


def load_example_script():
    path = os.path.join(ROOT, "examples", "cifar10", "create_cifar10.py")
    spec = importlib.util.spec_from_file_location("create_cifar10", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


NET = """
name: "cifar_read"
layer {
  name: "cifar" type: "Data" top: "data" top: "label"
  include { phase: TEST }
  transform_param { mean_file: "%(mean)s" }
  data_param { source: "%(source)s" batch_size: 5 backend: LMDB }
}
"""


def test_create_cifar10_then_a_data_layer_reads_pixels_minus_mean(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                  # main() changes to the repo root; undone after
    train, _ = make_batches(tmp_path / "data" / "cifar-10-batches-bin")
    example = tmp_path / "example"
    example.mkdir()
    (example / "cifar10_train_lmdb").mkdir()     # replaced, as create_cifar10.sh's rm -rf does
    rc = load_example_script().main(["--data_dir", str(tmp_path / "data"),
                                     "--example_dir", str(example)])
    assert rc == 0
    check_db(example / "cifar10_train_lmdb", train)

    pixels = np.stack([np.frombuffer(p, np.uint8) for _, p in train]).reshape(-1, 3, 32, 32)
    total = np.zeros((3, 32, 32), np.float32)
    for img in pixels:                           # compute_image_mean: float32, record by record
        total += img.astype(np.float32)
    expect_mean = total / np.float32(len(pixels))
    blob = read_binary(str(example / "mean.binaryproto"), caffe_pb2.BlobProto())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 32, 32)
    mean = np.asarray(blob.data, np.float32).reshape(3, 32, 32)
    np.testing.assert_array_equal(mean, expect_mean)

    (tmp_path / "net.prototxt").write_text(NET % {
        "mean": example / "mean.binaryproto", "source": example / "cifar10_train_lmdb"})
    net = caffepy.Net(str(tmp_path / "net.prototxt"), caffepy.TEST)
    net.forward()
    data = net.blobs["data"].data
    assert data.dtype == np.float32 and data.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(data, pixels[:5].astype(np.float32) - mean)
    np.testing.assert_array_equal(net.blobs["label"].data, [lab for lab, _ in train[:5]])


def test_create_cifar10_reports_missing_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "example").mkdir()
    rc = load_example_script().main(["--data_dir", str(tmp_path / "nodata"),
                                     "--example_dir", str(tmp_path / "example")])
    assert rc == 1
    assert "does not exist" in capsys.readouterr().err
