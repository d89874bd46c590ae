"""gflags-style command-line flags for ``caffepy``.

Flags are read the way gflags reads them, so existing Caffe shell scripts work unchanged:
``-flag value``, ``-flag=value``, ``--flag value``, ``--flag=value``; boolean flags also as
``-flag``/``-noflag``; flags may come before or after the command; ``--`` ends the flags.
Every flag is global (as in gflags): :data:`FLAGS` lists them all, grouped into help sections.
"""
from ..errors import FlagError


class Flag:
    """One gflags flag: its name, type (bool, int or str), default, help and help section."""

    def __init__(self, name, ftype, default, help, section="caffe"):
        self.name, self.type, self.default, self.help, self.section = \
            name, ftype, default, help, section

    def convert(self, text):
        if self.type is bool:
            v = str(text).strip().lower()
            if v in ("1", "t", "true", "y", "yes"):
                return True
            if v in ("0", "f", "false", "n", "no"):
                return False
            raise FlagError("ERROR: illegal value '%s' specified for bool flag '%s'"
                            % (text, self.name))
        if self.type is int:
            try:
                return int(str(text).strip(), 0) if str(text).strip().lower().startswith(
                    ("0x", "-0x")) else int(str(text).strip())
            except ValueError:
                raise FlagError("ERROR: illegal value '%s' specified for int32 flag '%s'"
                                % (text, self.name)) from None
        return str(text)

    def type_name(self):
        return {bool: "bool", int: "int32", str: "string"}[self.type]

    def default_repr(self):
        if self.type is bool:
            return "true" if self.default else "false"
        if self.type is str:
            return '"%s"' % self.default
        return str(self.default)


FLAGS = [
    # tools/caffe.cpp
    Flag("gpu", str, "",
         "Optional; run in GPU mode on given device IDs separated by ','. Use '-gpu all' to run "
         "on all available GPUs. The effective training batch size is multiplied by the number "
         "of devices. (caffepy's GPU mode needs CuPy and an NVIDIA GPU.)"),
    Flag("solver", str, "", "The solver definition protocol buffer text file."),
    Flag("model", str, "", "The model definition protocol buffer text file."),
    Flag("phase", str, "", "Optional; network phase (TRAIN or TEST). Only used for 'time'."),
    Flag("level", int, 0, "Optional; network level."),
    Flag("stage", str, "",
         "Optional; network stages (not to be confused with phase), separated by ','."),
    Flag("snapshot", str, "", "Optional; the snapshot solver state to resume training."),
    Flag("weights", str, "",
         "Optional; the pretrained weights to initialize finetuning, separated by ','. Cannot "
         "be set simultaneously with snapshot."),
    Flag("strict_weights", bool, False,
         "caffepy: with -weights, a layer with params that gets no weights from any of the "
         "files is an error (without it, each such layer is logged)."),
    Flag("iterations", int, 50, "The number of iterations to run."),
    Flag("no_python_layers", bool, False,
         "caffepy: refuse Python layers (they import and run any module; docs/security.md)."),
    Flag("sigint_effect", str, "stop",
         "Optional; action to take when a SIGINT signal is received: snapshot, stop or none."),
    Flag("sighup_effect", str, "snapshot",
         "Optional; action to take when a SIGHUP signal is received: snapshot, stop or none."),
    Flag("tensorboard", str, "",
         "caffepy: write TensorBoard event files (loss, outputs, lr, test scores, norms) to "
         "this directory (needs tensorboardX; docs/monitoring.md)."),
    Flag("on_nan", str, "stop",
         "caffepy: when the loss or a gradient is NaN/Inf: stop (snapshot the last finite "
         "weights, exit 1), snapshot (the same snapshot, then go on) or continue (as Caffe)."),
    # convert_mnist (examples/mnist/convert_mnist_data.cpp, plus .npz input)
    Flag("backend", str, "lmdb", "The backend {lmdb, leveldb} for storing the result "
         "(convert_mnist, convert_cifar_data, convert_imageset) or holding the images "
         "(compute_image_mean).",
         "convert_mnist"),
    Flag("npz", str, "", "convert_mnist: read {split}_images/{split}_labels from this .npz "
         "instead of idx files.", "convert_mnist"),
    Flag("bundled", bool, False, "convert_mnist: use the bundled 5,000-digit MNIST sample "
         "(4,000 train / 1,000 test).", "convert_mnist"),
    Flag("split", str, "", "convert_mnist with --npz/--bundled: 'train' or 'test'.",
         "convert_mnist"),
    # convert_imageset (tools/convert_imageset.cpp)
    Flag("gray", bool, False, "When this option is on, treat images as grayscale ones",
         "convert_imageset"),
    Flag("shuffle", bool, False, "Randomly shuffle the order of images and their labels",
         "convert_imageset"),
    Flag("shuffle_seed", int, 0, "caffepy: the seed of --shuffle (the same seed gives the same "
         "order; -1 draws a fresh one, as Caffe's unseeded shuffle does).", "convert_imageset"),
    Flag("resize_width", int, 0, "Width images are resized to", "convert_imageset"),
    Flag("resize_height", int, 0, "Height images are resized to", "convert_imageset"),
    Flag("check_size", bool, False, "When this option is on, check that all the datum have "
         "the same size", "convert_imageset"),
    Flag("encoded", bool, False, "When this option is on, the encoded image will be save in "
         "datum", "convert_imageset"),
    Flag("encode_type", str, "", "Optional: What type should we encode the image as "
         "('png','jpg',...).", "convert_imageset"),
    # prune (caffepy's tools/prune.py)
    Flag("out_model", str, "", "prune: the pruned net prototxt to write.", "prune"),
    Flag("out_weights", str, "", "prune: the pruned .caffemodel to write.", "prune"),
    Flag("threshold", str, "0", "prune: a weight counts as zero when |w| <= this.", "prune"),
    # example (caffepy)
    Flag("list", bool, False, "example: list the examples caffepy can copy.", "example"),
    # glog
    Flag("log_dir", str, "", "If specified, logfiles are written into this directory as well "
         "as to stderr.", "glog"),
    Flag("logtostderr", bool, False, "log messages go to stderr only, no log file.", "glog"),
    Flag("alsologtostderr", bool, True, "log messages go to stderr in addition to logfiles "
         "(always on, as in caffe).", "glog"),
    Flag("minloglevel", int, 0, "Messages logged at a lower level than this don't actually get "
         "logged anywhere (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL).", "glog"),
    Flag("stderrthreshold", int, 2, "accepted for compatibility (caffepy logs everything at or "
         "above minloglevel to stderr).", "glog"),
    Flag("v", int, 0, "Show all VLOG(m) messages for m <= this (v > 0 shows debug records).",
         "glog"),
    # gflags
    Flag("help", bool, False, "show help on all flags (after a command: that command's "
         "flags)", "gflags"),
    Flag("h", bool, False, "the same as -help", "gflags"),
    Flag("helpshort", bool, False, "show help on the caffe flags only", "gflags"),
    Flag("version", bool, False, "show version and build info and exit", "gflags"),
]
FLAG_INDEX = {f.name: f for f in FLAGS}


class Flags:
    """Parsed flag values as attributes (``flags.solver``), plus which ones were given."""

    def __init__(self, values, given):
        self.__dict__.update(values)
        self._given = set(given)

    def given(self, name):
        return name in self._given

    def replace(self, **changes):
        values = {f: v for f, v in self.__dict__.items() if not f.startswith("_")}
        values.update(changes)
        return Flags(values, self._given)

    def __repr__(self):
        return "Flags(%s)" % ", ".join("%s=%r" % (f.name, getattr(self, f.name)) for f in FLAGS)


def parse_flags(args, flag_index=None):
    """gflags-style parsing of ``args`` (without the program name).

    Returns (Flags, positional_args).  Raises FlagError like gflags would.
    """
    flag_index = FLAG_INDEX if flag_index is None else flag_index
    values = {f.name: f.default for f in flag_index.values()}
    given = []
    positional = []
    i = 0
    args = list(args)
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            positional.extend(args[i:])
            break
        if not a.startswith("-") or a == "-":
            positional.append(a)
            continue
        body = a[2:] if a.startswith("--") else a[1:]
        if "=" in body:
            name, value = body.split("=", 1)
            has_value = True
        else:
            name, value, has_value = body, None, False
        flag = flag_index.get(name)
        if flag is None and name.startswith("no") and not has_value:
            neg = flag_index.get(name[2:])
            if neg is not None and neg.type is bool:
                values[neg.name] = False
                given.append(neg.name)
                continue
        if flag is None:
            raise FlagError("ERROR: unknown command line flag '%s'" % name)
        if flag.type is bool:
            values[flag.name] = flag.convert(value) if has_value else True
        else:
            if not has_value:
                if i >= len(args):
                    raise FlagError("ERROR: flag '%s' is missing its argument; flag description: "
                                    "%s" % (a, flag.help))
                value = args[i]
                i += 1
            values[flag.name] = flag.convert(value)
        given.append(flag.name)
    return Flags(values, given), positional


# The help sections (a Flag's ``section``), in the order ``--help`` prints them.  The usage
# message after a mistake shows all but gflags' own flags.
SECTION_TITLES = {
    "caffe": "Flags from tools/caffe.cpp:",
    "convert_mnist": "Flags of convert_mnist (examples/mnist/convert_mnist_data.cpp):",
    "convert_imageset": "Flags of convert_imageset (tools/convert_imageset.cpp):",
    "prune": "Flags of prune (caffepy):",
    "example": "Flags of example (caffepy):",
    "glog": "Logging flags (glog):",
    "gflags": "Other flags (gflags):",
}
HELP_SECTIONS = tuple(s for s in SECTION_TITLES if s != "gflags")


def flag_line(flag):
    """One flag's line of ``--help``, in gflags' format."""
    return "    -%s (%s) type: %s default: %s" % (flag.name, flag.help, flag.type_name(),
                                                  flag.default_repr())


def flags_help(sections=HELP_SECTIONS):
    """The flag list of ``--help``: one line per flag, in gflags' format."""
    out = []
    for sec in sections:
        out.append("")
        out.append("  " + SECTION_TITLES[sec])
        for f in FLAGS:
            if f.section == sec:
                out.append(flag_line(f))
    return "\n".join(out)


def named_flags_help(title, names):
    """A titled list of the flags ``names`` (in that order), in ``--help``'s format."""
    return "\n".join(["", "  " + title] + [flag_line(FLAG_INDEX[n]) for n in names])
