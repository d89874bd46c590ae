#!/usr/bin/env python
"""Train LeNet on MNIST: Caffe's examples/mnist/train_lenet.sh, with the data step included.

    python examples/mnist/train_lenet.py [--max_iter N] [caffepy train flags...]

1. If examples/mnist/mnist_train_lmdb or mnist_test_lmdb is missing, it is created (from the
   original idx files in data/mnist if they are there, else from the 5,000-digit MNIST sample
   bundled with caffepy: 4,000 train / 1,000 test), as examples/mnist/create_mnist.py does.
2. It runs exactly what ``caffepy train --solver=examples/mnist/lenet_solver.prototxt`` runs
   (the solver's solver_mode: GPU falls back to the CPU when no GPU backend is available).

``--max_iter N`` overrides the solver's max_iter (10000), e.g. ``--max_iter 500`` for a quick
run.  Every other argument is passed to ``caffepy train`` unchanged (``--gpu 0``,
``--solver examples/mnist/lenet_solver_adam.prototxt``, ``--snapshot
examples/mnist/lenet_iter_5000.solverstate``, ``--log_dir logs`` ...).  Paths are relative to
the repository root, as in Caffe (the script changes there first).
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOLVER = "examples/mnist/lenet_solver.prototxt"


def _pop_max_iter(args):
    """Remove -max_iter/--max_iter (N or =N) from ``args``; returns (max_iter or None, rest)."""
    rest, max_iter = [], None
    i = 0
    while i < len(args):
        a = args[i]
        name, sep, value = a.lstrip("-").partition("=")
        if a.startswith("-") and name == "max_iter":
            if not sep:
                if i + 1 >= len(args):
                    raise SystemExit("ERROR: flag '%s' is missing its argument" % a)
                value = args[i + 1]
                i += 1
            try:
                max_iter = int(value)
            except ValueError:
                raise SystemExit("ERROR: illegal value '%s' specified for int32 flag 'max_iter'"
                                 % value) from None
            if max_iter < 0:
                raise SystemExit("ERROR: max_iter must be >= 0 (got %d)" % max_iter)
        else:
            rest.append(a)
        i += 1
    return max_iter, rest


def main(argv=None):
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "-help") for a in args):
        print(__doc__)
        return 0
    max_iter, rest = _pop_max_iter(args)

    from caffepy import cli
    from caffepy.logging_setup import setup_logging
    from caffepy.tools import ToolError
    from caffepy.tools.convert_mnist import create_mnist

    os.chdir(ROOT)
    try:
        flags, _ = cli.parse_flags(rest)
    except cli.FlagError as e:
        sys.stderr.write(str(e) + "\n")
        return 1
    dbs = ("examples/mnist/mnist_train_lmdb", "examples/mnist/mnist_test_lmdb")
    if not all(os.path.exists(d) for d in dbs):
        cfg = setup_logging()
        try:
            create_mnist("examples/mnist", "data/mnist", "lmdb", overwrite=False)
        except ToolError as e:
            import logging
            logging.getLogger("caffepy").critical("%s", e)
            return 1
        finally:
            cfg.restore()
    train_args = ["train"] + rest
    if not flags.given("solver"):
        train_args.append("--solver=" + SOLVER)
    overrides = {"max_iter": max_iter} if max_iter is not None else None
    return cli.run(train_args, solver_overrides=overrides)


if __name__ == "__main__":
    sys.exit(main())
