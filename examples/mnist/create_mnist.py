#!/usr/bin/env python
"""Create the MNIST LMDBs that examples/mnist/lenet_train_test.prototxt reads (Caffe's
examples/mnist/create_mnist.sh).

    python examples/mnist/create_mnist.py [--backend lmdb|leveldb] [--data_dir data/mnist]
                                          [--bundled]

Writes examples/mnist/mnist_train_lmdb and examples/mnist/mnist_test_lmdb (replacing existing
ones, as the shell script does).  The source is the original MNIST idx files in data/mnist
(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte, optionally .gz) when they are there; otherwise the 5,000-digit MNIST
sample bundled with caffepy (4,000 train / 1,000 test digits).  Paths are relative to the
repository root, as in Caffe (the script changes there first).
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", "-backend", default="lmdb", choices=("lmdb", "leveldb"))
    ap.add_argument("--data_dir", "-data_dir", default="data/mnist",
                    help="directory with the original MNIST idx files (default data/mnist)")
    ap.add_argument("--bundled", "-bundled", action="store_true",
                    help="use the bundled 5,000-digit sample even if data_dir has the idx files")
    args = ap.parse_args(argv)

    from caffepy.logging_setup import setup_logging
    from caffepy.tools import ToolError
    from caffepy.tools.convert_mnist import create_mnist

    os.chdir(ROOT)
    cfg = setup_logging()
    try:
        create_mnist("examples/mnist", args.data_dir, args.backend, overwrite=True,
                     bundled=args.bundled)
    except ToolError as e:
        import logging
        logging.getLogger("caffepy").critical("%s", e)
        return 1
    finally:
        cfg.restore()
    return 0


if __name__ == "__main__":
    sys.exit(main())
