"""Caffe's LeNet recipe (lenet_train_test.prototxt + lenet_solver.prototxt, unchanged but for
max_iter) on the bundled 5,000-digit MNIST sample reaches ≥ 95% test accuracy in 2,000
iterations. Slow: about a minute on a quiet 2-core machine (python -m pytest -m slow)."""
import os
import shutil

import pytest

import caffepy
from caffepy.tools.convert_mnist import create_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_lenet_reaches_95_percent_in_2000_iterations(tmp_path, monkeypatch):
    os.makedirs(os.path.join(str(tmp_path), "examples", "mnist"))
    for name in ("lenet_train_test.prototxt", "lenet_solver.prototxt"):
        shutil.copy(os.path.join(ROOT, "examples", "mnist", name),
                    os.path.join(str(tmp_path), "examples", "mnist", name))
    monkeypatch.chdir(tmp_path)
    create_mnist("examples/mnist", "data/mnist", "lmdb", bundled=True, progress=False)
    from caffepy.solver import read_solver_file
    param = read_solver_file("examples/mnist/lenet_solver.prototxt")
    param.max_iter = 2000
    param.snapshot = 0
    solver = caffepy.get_solver(param)
    scores = []
    solver.add_listener(lambda event, rec: scores.append(rec) if event == "test" else None)
    solver.solve()
    assert solver.iter == 2000
    assert os.path.exists("examples/mnist/lenet_iter_2000.caffemodel")
    final = scores[-1]
    assert final["iter"] == 2000
    acc = {name: value for _, name, value, _ in final["scores"]}["accuracy"]
    assert acc >= 0.95, "final test accuracy %.4f" % acc
