"""Packaging: the declared dependency floors are the tested pins, the license metadata, and
what a built wheel holds (the wheel build is slow: it runs pip)."""
import os
import re
import subprocess
import sys
import zipfile

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def lower_bounds(requirements):
    """{lower-cased name: version} of the ``name>=version`` requirements."""
    out = {}
    for r in requirements:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", r.replace(" ", ""))
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def pins():
    out = {}
    with open(os.path.join(ROOT, ".ci", "min-versions.txt")) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                name, version = line.split("==")
                out[name.lower()] = version
    return out


def _release(v):
    """'3.8' and '3.8.0' are the same release."""
    parts = [int(p) for p in v.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return parts


def test_min_version_pins_are_the_declared_lower_bounds():
    project = pyproject()["project"]
    declared = lower_bounds(project["dependencies"])
    declared.update(lower_bounds(project["optional-dependencies"]["test"]))
    pinned = pins()
    assert set(pinned) == {"numpy", "protobuf", "h5py", "lmdb", "threadpoolctl", "pillow",
                           "pydot", "pytest"}
    assert set(declared) == set(pinned)
    for name, version in pinned.items():
        assert _release(declared[name]) == _release(version), (name, declared[name], version)
    # the extras that name the same packages use the same floors
    extras = project["optional-dependencies"]
    assert lower_bounds(extras["draw"])["pydot"] == declared["pydot"]
    assert lower_bounds(extras["images"])["pillow"] == declared["pillow"]


def test_all_extra_is_every_cpu_feature_extra():
    """``caffepy[all]`` (what the README's test command installs) is the union of the feature
    extras that run on a CPU, with the same floors; gpu, leveldb, dev and test stay out."""
    extras = pyproject()["project"]["optional-dependencies"]
    features = set(extras) - {"all", "test", "gpu", "leveldb", "dev"}
    assert features == {"draw", "images", "progress", "tensorboard", "fast", "plot", "onnx",
                        "mpi"}
    union = {}
    for name in features:
        union.update(lower_bounds(extras[name]))
    assert lower_bounds(extras["all"]) == union
    assert len(extras["all"]) == len(union)


def test_license_metadata_and_file():
    data = pyproject()
    project = data["project"]
    assert project["license"] == "BSD-2-Clause"
    assert project["license-files"] == ["LICENSE"]
    setuptools_req = [r for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    assert _release(lower_bounds(setuptools_req)["setuptools"]) >= [77]
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        text = f.read()
    assert text.startswith("BSD 2-Clause License\n\nCopyright (c) 2026, the caffepy developers\n")
    for name in ("Yann LeCun", "Corinna Cortes", "Christopher J.C. Burges", "MNIST database",
                 "5,000"):
        assert name in text
    # both console scripts are the same entry point
    assert project["scripts"] == {"caffepy": "caffepy.cli:main", "caffe": "caffepy.cli:main"}


def test_package_data_globs_cover_the_files():
    globs = pyproject()["tool"]["setuptools"]["package-data"]["caffepy"]
    pkg = os.path.join(ROOT, "src", "caffepy")
    assert os.path.isfile(os.path.join(pkg, "py.typed"))
    import glob
    for pattern in globs:
        assert glob.glob(os.path.join(pkg, pattern)), pattern
    assert set(os.path.basename(p) for p in glob.glob(os.path.join(pkg, "examples_data/*/*"))) \
        >= {"lenet_solver.prototxt", "lenet_train_test.prototxt", "lenet.prototxt"}


def build_wheel(out_dir):
    """``pip wheel --no-deps .`` into ``out_dir``; returns the wheel's path."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                        str(out_dir), ROOT], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    wheels = [f for f in os.listdir(out_dir) if f.startswith("caffepy-") and
              f.endswith(".whl")]
    assert len(wheels) == 1, wheels
    return os.path.join(str(out_dir), wheels[0])


@pytest.mark.slow
def test_wheel_contents(tmp_path):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(dist_info + "/METADATA").decode()
        entry_points = z.read(dist_info + "/entry_points.txt").decode()
    for path in ("caffepy/py.typed", "caffepy/proto/caffe.proto", "caffepy/proto/caffe_pb2.py",
                 "caffepy/proto/caffe_pb2.pyi",
                 "caffepy/datasets/mnist-5k.npz",
                 "caffepy/examples_data/mnist/lenet_solver.prototxt",
                 "caffepy/examples_data/mnist/lenet_train_test.prototxt",
                 dist_info + "/licenses/LICENSE"):
        assert path in names, path
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n]
    assert not [n for n in names if n.startswith(("examples/", "benchmarks/", ".ci/"))]
    assert "License-Expression: BSD-2-Clause" in metadata
    assert "License-File: LICENSE" in metadata
    assert "caffe = caffepy.cli:main" in entry_points
    assert "caffepy = caffepy.cli:main" in entry_points
