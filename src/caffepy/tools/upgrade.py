"""Caffe's proto upgrade tools: rewrite old nets and solvers in the current format.

    caffepy upgrade_net_proto_text   OLD.prototxt    NEW.prototxt
    caffepy upgrade_net_proto_binary OLD.caffemodel  NEW.caffemodel
    caffepy upgrade_solver_proto_text OLD_solver.prototxt NEW_solver.prototxt

They apply the legacy upgrade paths of ``caffepy.proto.upgrade`` (V0 and V1 layers, data
transformation fields, net-level inputs, BatchNorm params; the solver_type enum) and write
the result, as tools/upgrade_net_proto_{text,binary}.cpp and upgrade_solver_proto_text.cpp
do: a file that is already current is written back unchanged (with an error line saying
so, as Caffe logs it); the exit status is 2 when the input cannot be parsed, 1 when the
upgrade reported problems (the output is written all the same), else 0.
"""
import logging

from ..proto import caffe_pb2, upgrade
from ..errors import ToolError
from ..proto import ProtoError, read_binary, read_text, write_binary, write_text

log = logging.getLogger("caffepy")

_PROBLEM = "Warning: had one or more problems"


class _ProblemCounter(logging.Handler):
    """Counts the 'had one or more problems' errors upgrade_net_as_needed logs (Caffe's
    UpgradeNetAsNeeded returns false for them)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.problems = 0

    def emit(self, record):
        try:
            if record.getMessage().startswith(_PROBLEM):
                self.problems += 1
        except Exception:
            pass


def _read(path, message, binary):
    kind = "binary" if binary else "text"
    try:
        return (read_binary if binary else read_text)(path, message)
    except ProtoError as e:
        log.error("%s", e)
        log.error("Failed to parse input %s file as %s: %s", kind, message.DESCRIPTOR.name, path)
        return None


def upgrade_net_proto(in_path, out_path, binary=False):
    """upgrade_net_proto_text / upgrade_net_proto_binary; returns the exit status."""
    net_param = _read(in_path, caffe_pb2.NetParameter(), binary)
    if net_param is None:
        return 2
    success = True
    if upgrade.net_needs_upgrade(net_param):
        counter = _ProblemCounter()
        log.addHandler(counter)
        try:
            upgrade.upgrade_net_as_needed(net_param, in_path)
        finally:
            log.removeHandler(counter)
        success = counter.problems == 0
        if not success:
            log.error("Encountered error(s) while upgrading prototxt; see details above.")
    else:
        log.error("File already in latest proto format: %s", in_path)
    if binary:
        _write(write_binary, net_param, out_path)
        log.info("Wrote upgraded NetParameter binary proto to %s", out_path)
    else:
        _write(write_text, net_param, out_path)
        log.info("Wrote upgraded NetParameter text proto to %s", out_path)
    return 0 if success else 1


def _write(write, message, path):
    try:
        write(message, path)
    except OSError as e:
        raise ToolError("cannot write '%s': %s (does its folder exist?)"
                        % (path, e.strerror or e)) from None


def upgrade_solver_proto_text(in_path, out_path):
    """upgrade_solver_proto_text; returns the exit status."""
    solver_param = _read(in_path, caffe_pb2.SolverParameter(), False)
    if solver_param is None:
        return 2
    if upgrade.solver_needs_type_upgrade(solver_param):
        upgrade.upgrade_solver_as_needed(solver_param, in_path)
    else:
        log.error("File already in latest proto format: %s", in_path)
    _write(write_text, solver_param, out_path)
    log.info("Wrote upgraded SolverParameter text proto to %s", out_path)
    return 0
