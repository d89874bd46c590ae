"""The dataset and upgrade commands (Caffe's tools/*.cpp and examples/*/convert_*.cpp).

Each is a thin wrapper over its module in :mod:`caffepy.tools`: it checks the positional
arguments (printing the tool's usage when they are wrong), reads the flags it needs and calls
the tool.  Each is a function ``(flags, args) -> exit status``; the command table in
:mod:`caffepy.cli` names them.
"""
from ..errors import CliError
from ..logging_setup import CLI_LOG as log
from ..tools import compute_image_mean as mean_tool
from ..tools import convert_cifar as cifar_tool
from ..tools import convert_imageset as imageset_tool
from ..tools import convert_mnist as mnist_tool
from ..tools import extract_features as features_tool
from ..tools import upgrade as upgrade_tool
from .devices import get_gpus, use_cpu, use_gpu


def _arguments(n):
    """"1 argument", "3 arguments": the count in the usage errors."""
    return "%d argument%s" % (n, "" if n == 1 else "s")


# -- convert_mnist -------------------------------------------------------------------------

CONVERT_MNIST_USAGE = (
    "usage: caffepy convert_mnist IMAGES_IDX LABELS_IDX OUT_DB [--backend lmdb|leveldb]\n"
    "       caffepy convert_mnist (--npz FILE.npz | --bundled) --split train|test OUT_DB "
    "[--backend lmdb|leveldb]")


def convert_mnist(flags, args):
    """``caffepy convert_mnist``: MNIST idx files, an .npz or the bundled sample -> a DB."""
    if flags.npz or flags.bundled:
        if flags.npz and flags.bundled:
            raise CliError("give either --npz or --bundled, not both\n" + CONVERT_MNIST_USAGE)
        source = "npz" if flags.npz else "bundled"
        if len(args) != 1:
            raise CliError("convert_mnist with --%s takes exactly one argument, the output "
                           "database (got %d)\n%s" % (source, len(args), CONVERT_MNIST_USAGE))
        if not flags.split:
            raise CliError("convert_mnist with --%s needs --split train or --split test\n%s"
                           % (source, CONVERT_MNIST_USAGE))
        npz = flags.npz or mnist_tool.bundled_npz()
        log.info("Converting the %s split of %s", flags.split, npz)
        mnist_tool.convert_mnist_npz(npz, flags.split, args[0], flags.backend)
        return 0
    if len(args) != 3:
        raise CliError("convert_mnist needs IMAGES_IDX LABELS_IDX OUT_DB (got %s)\n%s"
                       % (_arguments(len(args)), CONVERT_MNIST_USAGE))
    mnist_tool.convert_mnist_data(args[0], args[1], args[2], flags.backend)
    return 0


# -- convert_cifar_data ----------------------------------------------------------------------

CONVERT_CIFAR_USAGE = (
    "usage: caffepy convert_cifar_data INPUT_FOLDER OUTPUT_FOLDER [--backend lmdb|leveldb]\n"
    "       caffepy convert_cifar_data INPUT_FOLDER OUTPUT_FOLDER lmdb|leveldb  "
    "(Caffe's spelling)")


def convert_cifar_data(flags, args):
    """``caffepy convert_cifar_data``: the CIFAR-10 binary batches -> train and test DBs (the
    backend as a third argument, Caffe's spelling, or as --backend)."""
    if len(args) not in (2, 3):
        raise CliError("convert_cifar_data needs INPUT_FOLDER OUTPUT_FOLDER (got %s)\n%s"
                       % (_arguments(len(args)), CONVERT_CIFAR_USAGE))
    backend = flags.backend
    if len(args) == 3:
        if flags.given("backend") and flags.backend.lower() != args[2].lower():
            raise CliError("convert_cifar_data: the backend '%s' contradicts --backend %s\n%s"
                           % (args[2], flags.backend, CONVERT_CIFAR_USAGE))
        backend = args[2]
    cifar_tool.convert_cifar_data(args[0], args[1], backend)
    return 0


# -- convert_imageset --------------------------------------------------------------------------

CONVERT_IMAGESET_USAGE = (
    "Convert a set of images to the leveldb/lmdb format used as input for Caffe.\n"
    "Usage:\n"
    "    caffepy convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME\n"
    "LISTFILE holds one 'relpath label' per line; images are read from ROOTFOLDER/relpath.\n"
    "Flags: --gray --shuffle [--shuffle_seed N] --backend lmdb|leveldb --resize_width W "
    "--resize_height H --check_size --encoded --encode_type png|jpg|...")


def convert_imageset(flags, args):
    """``caffepy convert_imageset``: images named in a list file -> a DB of Datums."""
    if len(args) != 3:
        raise CliError("convert_imageset needs ROOTFOLDER/ LISTFILE DB_NAME (got %s)\n%s"
                       % (_arguments(len(args)), CONVERT_IMAGESET_USAGE))
    imageset_tool.convert_imageset(
        args[0], args[1], args[2], gray=flags.gray, shuffle=flags.shuffle,
        backend=flags.backend, resize_width=flags.resize_width,
        resize_height=flags.resize_height, check_size=flags.check_size, encoded=flags.encoded,
        encode_type=flags.encode_type, shuffle_seed=flags.shuffle_seed)
    return 0


# -- compute_image_mean ------------------------------------------------------------------------

COMPUTE_IMAGE_MEAN_USAGE = (
    "Compute the mean_image of a set of images given by a leveldb/lmdb\n"
    "Usage:\n"
    "    caffepy compute_image_mean [-backend lmdb|leveldb] INPUT_DB [OUTPUT_FILE]")


def compute_image_mean(flags, args):
    """``caffepy compute_image_mean``: the mean image of a DB, optionally saved as a
    .binaryproto."""
    if not 1 <= len(args) <= 2:
        raise CliError("compute_image_mean needs INPUT_DB [OUTPUT_FILE] (got %d arguments)\n%s"
                       % (len(args), COMPUTE_IMAGE_MEAN_USAGE))
    mean_tool.compute_image_mean(args[0], args[1] if len(args) == 2 else None,
                                 backend=flags.backend)
    return 0


# -- extract_features --------------------------------------------------------------------------

EXTRACT_FEATURES_USAGE = (
    "This program takes in a trained network and an input data layer, and then extract "
    "features of the input data produced by the net.\n"
    "Usage: caffepy extract_features pretrained_net_param feature_extraction_proto_file "
    "extract_feature_blob_name1[,name2,...] save_feature_dataset_name1[,name2,...] "
    "num_mini_batches db_type [CPU/GPU] [DEVICE_ID=0]\n"
    "Note: you can extract multiple features in one pass by specifying multiple feature blob "
    "names and dataset names separated by ','. The names cannot contain white space characters "
    "and the number of blobs and datasets must be equal.")


def extract_features(flags, args):
    """``caffepy extract_features``: run a trained net and store blobs' values in DBs (the
    device as Caffe's tool takes it: positional CPU/GPU and DEVICE_ID)."""
    if not 6 <= len(args) <= 8:
        raise CliError("extract_features needs 6 to 8 arguments (got %d)\n%s"
                       % (len(args), EXTRACT_FEATURES_USAGE))
    if len(args) > 6 and args[6] == "GPU":
        device_id = 0
        if len(args) > 7:
            try:
                device_id = int(args[7])
            except ValueError:
                raise CliError("DEVICE_ID must be a non-negative integer (got '%s')"
                               % args[7]) from None
            if device_id < 0:
                raise CliError("DEVICE_ID must be a non-negative integer (got %d)" % device_id)
        log.info("Using GPU")
        log.info("Using Device_id=%d", device_id)
        gpus = get_gpus(flags.replace(gpu=str(device_id)))
        use_gpu(gpus[0])
    else:
        if len(args) > 6 and args[6] != "CPU":
            log.warning("'%s' is neither CPU nor GPU: running on the CPU", args[6])
        log.info("Using CPU")
        use_cpu()
    features_tool.extract_features(args[0], args[1], args[2], args[3], args[4], args[5])
    return 0


# -- upgrade_* ---------------------------------------------------------------------------------

def _in_out(name, args, what):
    """The two arguments of an upgrade tool: the file to read and the file to write."""
    if len(args) != 2:
        raise CliError("Usage: caffepy %s %s OUT (got %s)" % (name, what, _arguments(len(args))))
    return args


def upgrade_net_proto_text(flags, args):
    """``caffepy upgrade_net_proto_text``: a net prototxt in any old format -> the current one."""
    src, dst = _in_out("upgrade_net_proto_text", args, "v0_net_proto_file_in")
    return upgrade_tool.upgrade_net_proto(src, dst, binary=False)


def upgrade_net_proto_binary(flags, args):
    """``caffepy upgrade_net_proto_binary``: a binary net in any old format -> the current one."""
    src, dst = _in_out("upgrade_net_proto_binary", args, "v0_net_proto_file_in")
    return upgrade_tool.upgrade_net_proto(src, dst, binary=True)


def upgrade_solver_proto_text(flags, args):
    """``caffepy upgrade_solver_proto_text``: a solver prototxt (solver_type) -> the current
    format (type)."""
    src, dst = _in_out("upgrade_solver_proto_text", args, "solver_proto_file_in")
    return upgrade_tool.upgrade_solver_proto_text(src, dst)
