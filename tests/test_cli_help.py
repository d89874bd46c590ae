"""``caffepy COMMAND --help`` / ``-h``: the command's usage and exactly the flags it reads."""
import re
import subprocess
import sys

import pytest

from caffepy import cli
from caffepy.cli import flags as flagmod

FLAG_LINE = re.compile(r"^    -(\w+) \(.*\) type: (\w+) default: (.*)$")


def help_of(capsys, *argv):
    assert cli.run(list(argv)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def flag_lines(text):
    """{flag: (type, default)} of the flag lines in ``text``, in order."""
    found = {}
    for line in text.splitlines():
        m = FLAG_LINE.match(line)
        if m:
            found[m.group(1)] = (m.group(2), m.group(3))
    return found


TRAIN_FLAGS = ["solver", "snapshot", "weights", "gpu", "stage", "level", "sigint_effect",
               "sighup_effect"]
LOGGING = ["log_dir", "logtostderr", "minloglevel", "v"]


@pytest.mark.parametrize("spelling", ["--help", "-help", "-h", "--h", "-help=true"])
def test_train_help_lists_train_flags_in_gflags_format(capsys, spelling):
    out = help_of(capsys, "train", spelling)
    assert out.splitlines()[0] == "caffepy train: train or finetune a model"
    assert out.splitlines()[1].startswith("usage: caffepy train -solver SOLVER.prototxt")
    found = flag_lines(out)
    # Caffe's train flags, in the command table's order (caffepy's own ones among them)
    assert list(found) == list(cli.COMMANDS["train"].flags) + LOGGING
    assert [f for f in found if f in TRAIN_FLAGS] == TRAIN_FLAGS
    assert found["solver"] == ("string", '""')
    assert found["level"] == ("int32", "0")
    assert found["sigint_effect"] == ("string", '"stop"')
    assert found["sighup_effect"] == ("string", '"snapshot"')
    assert found["logtostderr"] == ("bool", "false")
    # not another command's flags
    assert "model" not in found and "iterations" not in found and "backend" not in found


def test_help_before_the_command_too(capsys):
    assert flag_lines(help_of(capsys, "--help", "test")) == flag_lines(
        help_of(capsys, "test", "--help"))


@pytest.mark.parametrize("name, expected", [
    ("test", ["model", "weights", "iterations", "gpu", "stage", "level"]),
    ("time", ["model", "iterations", "phase", "gpu", "stage", "level"]),
    ("device_query", ["gpu"]),
    ("convert_mnist", ["backend", "npz", "bundled", "split"]),
    ("convert_cifar_data", ["backend"]),
    ("convert_imageset", ["gray", "shuffle", "shuffle_seed", "backend", "resize_width",
                          "resize_height", "check_size", "encoded", "encode_type"]),
    ("compute_image_mean", ["backend"]),
    ("prune", ["model", "weights", "out_model", "out_weights", "threshold"]),
    ("example", ["list"]),
])
def test_each_command_lists_its_flags(capsys, name, expected):
    out = help_of(capsys, name, "-h")
    listed = list(flag_lines(out))
    assert listed == list(cli.COMMANDS[name].flags) + LOGGING
    assert [f for f in listed if f in expected] == expected
    # caffepy's own additions only: flags whose help says so
    for f in set(listed) - set(expected) - set(LOGGING):
        assert flagmod.FLAG_INDEX[f].help.startswith("caffepy:"), f
    assert out.splitlines()[0] == "caffepy %s: %s" % (name, cli.COMMANDS[name].help)
    # the defaults are the flag table's
    for f in expected:
        assert flag_lines(out)[f][1] == flagmod.FLAG_INDEX[f].default_repr()


def test_iterations_default_is_cafffes_50(capsys):
    assert flag_lines(help_of(capsys, "test", "--help"))["iterations"] == ("int32", "50")


def test_positional_commands_print_their_usage(capsys):
    out = help_of(capsys, "convert_cifar_data", "--help")
    assert "INPUT_FOLDER OUTPUT_FOLDER" in out
    out = help_of(capsys, "upgrade_net_proto_text", "-h")
    assert "usage: caffepy upgrade_net_proto_text IN.prototxt OUT.prototxt" in out
    assert "upgrade_net_proto_text takes no flags of its own." in out
    assert list(flag_lines(out)) == LOGGING


def test_every_command_flag_exists_and_every_flag_is_some_commands_or_global():
    used = set()
    for name, cmd in cli.COMMANDS.items():
        for f in cmd.flags:
            assert f in flagmod.FLAG_INDEX, (name, f)
        used.update(cmd.flags)
    global_flags = {f.name for f in flagmod.FLAGS if f.section in ("glog", "gflags")}
    assert {f.name for f in flagmod.FLAGS} - used - global_flags == set()


def test_gradcheck_h_is_its_own_help(capsys):
    assert cli.run(["gradcheck", "-h"]) == cli.run(["gradcheck", "--help"])
    out, _ = capsys.readouterr()
    assert out.count("usage: caffepy gradcheck") == 2


def test_help_without_command_still_lists_every_section(capsys):
    out = help_of(capsys, "--help")
    assert "Flags from tools/caffe.cpp:" in out and "Flags of example (caffepy):" in out
    assert "    -h (the same as -help) type: bool default: false" in out


def test_console_script_help_from_a_shell():
    r = subprocess.run([sys.executable, "-m", "caffepy", "time", "-h"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert list(flag_lines(r.stdout)) == list(cli.COMMANDS["time"].flags) + LOGGING
    assert {"model", "iterations", "phase", "gpu"} <= set(flag_lines(r.stdout))
