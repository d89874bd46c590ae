#!/usr/bin/env python
"""Create the CIFAR-10 LMDBs and mean file that examples/cifar10/*_train_test.prototxt read
(Caffe's examples/cifar10/create_cifar10.sh).

    python examples/cifar10/create_cifar10.py [--backend lmdb|leveldb] [--data_dir data/cifar10]

Reads the CIFAR-10 binary batches (data_batch_1.bin .. data_batch_5.bin, test_batch.bin, from
https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz) in data/cifar10 (or in its
cifar-10-batches-bin subfolder, where the archive unpacks), writes
examples/cifar10/cifar10_train_lmdb and examples/cifar10/cifar10_test_lmdb (replacing existing
ones, as the shell script does), then computes examples/cifar10/mean.binaryproto from the train
database with compute_image_mean.  Paths are relative to the repository root, as in Caffe (the
script changes there first).
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", "-backend", default="lmdb", choices=("lmdb", "leveldb"))
    ap.add_argument("--data_dir", "-data_dir", default="data/cifar10",
                    help="directory with the CIFAR-10 binary batch files (default data/cifar10)")
    ap.add_argument("--example_dir", "-example_dir", default="examples/cifar10",
                    help="where the databases and mean.binaryproto go (default examples/cifar10)")
    args = ap.parse_args(argv)

    import logging

    from caffepy.logging_setup import setup_logging
    from caffepy.tools import ToolError
    from caffepy.tools.convert_cifar import create_cifar10

    os.chdir(ROOT)
    cfg = setup_logging()
    try:
        create_cifar10(args.example_dir, args.data_dir, args.backend)
    except ToolError as e:
        logging.getLogger("caffepy").critical("%s", e)
        return 1
    finally:
        cfg.restore()
    return 0


if __name__ == "__main__":
    sys.exit(main())
