"""``caffepy example``: copy a ready-to-train example out of the installed package.

    caffepy example --list
    caffepy example mnist [DIR]          # DIR defaults to ./mnist

An installed wheel has no ``examples/`` folder, so the LeNet example ships as package data
(``caffepy/examples_data/mnist``: copies of the repository's ``examples/mnist`` prototxts,
kept identical by a test).  The command writes those files to DIR with their
``examples/mnist/`` paths made relative to DIR, builds the MNIST LMDBs there from the bundled
5,000-digit sample (as ``caffepy convert_mnist --bundled`` does), and prints the command that
trains the net: ``cd DIR && caffepy train --solver=lenet_solver.prototxt``.
"""
import os
import shlex
import shutil

from ..errors import CliError
from ..logging_setup import CLI_LOG as log

EXAMPLES_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "examples_data")


class Example:
    """One example: its package-data folder, the repository folder its paths name, a line of
    description and the command that runs it (in the copied folder)."""

    def __init__(self, name, repo_dir, description, run, mnist_dbs=False):
        self.name, self.repo_dir, self.description, self.run = name, repo_dir, description, run
        self.mnist_dbs = mnist_dbs

    @property
    def data_dir(self):
        return os.path.join(EXAMPLES_DATA, self.name)

    def files(self):
        """The example's file names, sorted."""
        return sorted(f for f in os.listdir(self.data_dir)
                      if os.path.isfile(os.path.join(self.data_dir, f)))


EXAMPLES = {
    "mnist": Example(
        "mnist", "examples/mnist",
        "LeNet on MNIST (Caffe's examples/mnist: lenet_train_test.prototxt, lenet_solver.prototxt "
        "and the other solvers), with LMDBs of the bundled 5,000-digit sample",
        "caffepy train --solver=lenet_solver.prototxt", mnist_dbs=True),
}

EXAMPLE_USAGE = ("usage: caffepy example --list\n"
                 "       caffepy example NAME [DIR]   (NAME: %s; DIR defaults to ./NAME)"
                 % ", ".join(EXAMPLES))


def rewrite_paths(text, repo_dir):
    """The example's text with its repository paths (``examples/mnist/x``) made relative to the
    folder the example is copied to (``x``)."""
    return text.replace(repo_dir.rstrip("/") + "/", "")


def list_examples():
    """The text of ``caffepy example --list``."""
    width = max(len(n) for n in EXAMPLES)
    return "\n".join("%-*s  %s" % (width, name, ex.description) for name, ex in EXAMPLES.items())


def copy_example(name, dest, make_data=True):
    """Write example ``name`` to the folder ``dest`` (created if needed; files already there are
    never overwritten).  Returns the list of paths written."""
    if name not in EXAMPLES:
        raise CliError("unknown example '%s' (known examples: %s)\n%s"
                       % (name, ", ".join(EXAMPLES), EXAMPLE_USAGE))
    ex = EXAMPLES[name]
    files = ex.files()
    targets = [os.path.join(dest, f) for f in files]
    if ex.mnist_dbs and make_data:
        targets += [os.path.join(dest, "mnist_%s_lmdb" % s) for s in ("train", "test")]
    clash = [t for t in targets if os.path.lexists(t)]
    if clash:
        raise CliError("example '%s': %s already exist%s in %s; choose another folder"
                       % (name, ", ".join(os.path.basename(t) for t in clash),
                          "s" if len(clash) == 1 else "", dest))
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise CliError("example '%s': %s exists and is not a folder" % (name, dest))
    os.makedirs(dest, exist_ok=True)
    written = []
    for f in files:
        src = os.path.join(ex.data_dir, f)
        if f.endswith((".prototxt", ".txt", ".py", ".sh")):
            with open(src, encoding="utf-8") as fh:
                text = rewrite_paths(fh.read(), ex.repo_dir)
            with open(os.path.join(dest, f), "w", encoding="utf-8") as fh:
                fh.write(text)
        else:
            shutil.copyfile(src, os.path.join(dest, f))
        written.append(os.path.join(dest, f))
    if ex.mnist_dbs and make_data:
        from ..tools.convert_mnist import bundled_npz, convert_mnist_npz
        for split in ("train", "test"):
            db = os.path.join(dest, "mnist_%s_lmdb" % split)
            convert_mnist_npz(bundled_npz(), split, db, "lmdb", progress=False)
            written.append(db)
    return written


def example(flags, args):
    """``caffepy example``: ``--list``, or ``NAME [DIR]``."""
    if flags.list:
        if args:
            raise CliError("example --list takes no arguments (got %s)\n%s"
                           % (" ".join(args), EXAMPLE_USAGE))
        print(list_examples())
        return 0
    if not 1 <= len(args) <= 2:
        raise CliError("example needs NAME [DIR] (got %d arguments)\n%s"
                       % (len(args), EXAMPLE_USAGE))
    name = args[0]
    dest = args[1] if len(args) == 2 else name
    written = copy_example(name, dest)
    log.info("Wrote the '%s' example to %s (%d files and databases)", name, dest, len(written))
    ex = EXAMPLES[name]
    print("The %s example is in %s. Train it with:\n\n    cd %s && %s\n"
          % (name, dest, shlex.quote(dest), ex.run))
    return 0
