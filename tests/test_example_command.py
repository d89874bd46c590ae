"""``caffepy example``: the LeNet example copied out of the package data, its paths made
relative to the folder, its LMDBs built from the bundled sample; and (slow) the whole way a
wheel user goes: build the wheel, install it in a fresh venv, copy the example, train."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import caffepy
from caffepy import cli
from caffepy.cli import example
from caffepy.datasets import mnist_5k
from caffepy.errors import CliError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_MNIST = os.path.join(ROOT, "examples", "mnist")


def test_package_data_is_the_repository_example_byte_for_byte():
    files = example.EXAMPLES["mnist"].files()
    assert {"lenet.prototxt", "lenet_train_test.prototxt", "lenet_solver.prototxt",
            "lenet_solver_adam.prototxt"} <= set(files)
    for f in files:
        with open(os.path.join(example.EXAMPLES["mnist"].data_dir, f), "rb") as a, \
                open(os.path.join(REPO_MNIST, f), "rb") as b:
            assert a.read() == b.read(), "src/caffepy/examples_data/mnist/%s differs from " \
                "examples/mnist/%s: copy it again" % (f, f)


def test_rewrite_paths():
    assert example.rewrite_paths('net: "examples/mnist/lenet_train_test.prototxt"\n'
                                 'snapshot_prefix: "examples/mnist/lenet"',
                                 "examples/mnist") == \
        'net: "lenet_train_test.prototxt"\nsnapshot_prefix: "lenet"'


def test_example_mnist_copies_rewrites_and_builds_the_lmdbs(tmp_path, capsys, monkeypatch):
    dest = tmp_path / "lenet"
    assert cli.run(["example", "mnist", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "cd %s && caffepy train --solver=lenet_solver.prototxt" % dest in out
    names = set(os.listdir(dest))
    assert names == set(example.EXAMPLES["mnist"].files()) | {"mnist_train_lmdb",
                                                              "mnist_test_lmdb"}
    for f in names:
        if f.endswith(".prototxt"):
            text = (dest / f).read_text()
            assert "examples/mnist" not in text, f
    solver = (dest / "lenet_solver.prototxt").read_text()
    assert 'net: "lenet_train_test.prototxt"' in solver
    assert 'snapshot_prefix: "lenet"' in solver
    net_text = (dest / "lenet_train_test.prototxt").read_text()
    assert 'source: "mnist_train_lmdb"' in net_text and 'source: "mnist_test_lmdb"' in net_text
    # the rest of each file is the repository's, unchanged
    with open(os.path.join(REPO_MNIST, "lenet_solver.prototxt")) as f:
        assert solver == f.read().replace("examples/mnist/", "")

    # From the folder, the net reads the bundled digits: the first TRAIN batch is the first 64
    # training digits, scaled by 1/256 as the prototxt says; TEST holds the 1,000 test digits.
    monkeypatch.chdir(dest)
    mnist = mnist_5k()
    net = caffepy.Net("lenet_train_test.prototxt", caffepy.TRAIN)
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, mnist["train_labels"][:64])
    np.testing.assert_array_equal(net.blobs["data"].data[:, 0],
                                  mnist["train_images"][:64] * np.float32(0.00390625))
    test_net = caffepy.Net("lenet_train_test.prototxt", caffepy.TEST)
    test_net.forward()
    np.testing.assert_array_equal(test_net.blobs["label"].data, mnist["test_labels"][:100])


def test_example_default_folder_and_refusals(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.run(["example", "mnist"]) == 0
    assert os.path.isfile(tmp_path / "mnist" / "lenet_solver.prototxt")
    # never overwrites
    with pytest.raises(CliError, match="lenet.prototxt.*already exist"):
        example.copy_example("mnist", str(tmp_path / "mnist"))
    with pytest.raises(CliError, match="unknown example 'cifar99'.*mnist"):
        example.copy_example("cifar99", str(tmp_path / "x"))
    capsys.readouterr()
    assert cli.run(["example"]) == 1
    assert cli.run(["example", "mnist", "a", "b"]) == 1
    assert "example needs NAME [DIR] (got 3 arguments)" in capsys.readouterr().err


def test_example_list(capsys):
    assert cli.run(["example", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("mnist  LeNet on MNIST")
    assert len(out.splitlines()) == len(example.EXAMPLES)


ACCURACY = re.compile(r"Test net output #0: accuracy = ([0-9.]+)")


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_trains_the_example(tmp_path):
    """The README's promise for wheel users: pip install the wheel (dependencies from the
    package index), caffepy example mnist DIR, cd DIR && caffepy train."""
    from test_packaging import build_wheel
    wheel = build_wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    bin_dir = venv / "bin"
    r = subprocess.run([str(bin_dir / "pip"), "install", "-q", wheel], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    env = dict(os.environ, PATH=str(bin_dir) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("PYTHONPATH", None)
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run(["caffepy", "example", "mnist", "lenet"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "cd lenet && caffepy train --solver=lenet_solver.prototxt" in r.stdout
    dest = work / "lenet"
    # a shorter run than Caffe's 10,000 iterations: 300, tested before and at the end
    solver = (dest / "lenet_solver.prototxt").read_text()
    assert "max_iter: 10000" in solver and "test_interval: 500" in solver
    (dest / "lenet_solver.prototxt").write_text(
        solver.replace("max_iter: 10000", "max_iter: 300").replace("test_interval: 500",
                                                                   "test_interval: 300"))
    r = subprocess.run(["caffepy", "train", "--solver=lenet_solver.prototxt"], cwd=dest,
                       env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    accuracies = [float(a) for a in ACCURACY.findall(r.stderr)]
    assert len(accuracies) == 2                   # iteration 0 and the end (300)
    assert accuracies[0] < 0.3                    # untrained
    assert accuracies[-1] > 0.9, r.stderr[-3000:]
    assert "Optimization Done." in r.stderr
    assert os.path.isfile(dest / "lenet_iter_300.caffemodel")
    assert os.path.isfile(dest / "lenet_iter_300.solverstate")
    # the caffe console script is the same program
    r = subprocess.run(["caffe", "--version"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("caffepy version ")
