"""The solver prototxt and the nets it names (Caffe's ReadSolverParamsFromTextFileOrDie,
Solver::InitTrainNet and Solver::InitTestNets, less the building of the nets).

Paths in a solver file (``net``, ``train_net``, ``test_net``, ``weights``) are relative to the
current directory, as in Caffe.
"""
import logging
import os

from ..errors import SolverError
from ..proto import caffe_pb2, upgrade

log = logging.getLogger("caffepy")


def read_solver_file(path):
    """ReadSolverParamsFromTextFileOrDie (BVLC master): text + ``solver_type`` upgrade +
    the snapshot_prefix rule (unset -> the solver file's name without extension; an
    existing directory -> ``<dir>/<solver file stem>``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SolverError("Solver definition file '%s' does not exist (the path is relative "
                          "to the current directory %s)" % (path, os.getcwd()))
    param = upgrade.read_solver_param(path)
    if not param.HasField("snapshot_prefix"):
        param.snapshot_prefix = os.path.splitext(path)[0]
        log.info("snapshot_prefix was not specified and is set to %s", param.snapshot_prefix)
    elif os.path.isdir(param.snapshot_prefix):
        stem = os.path.splitext(os.path.basename(path))[0]
        param.snapshot_prefix = os.path.join(param.snapshot_prefix, stem)
        log.info("snapshot_prefix was a directory and is replaced to %s",
                 param.snapshot_prefix)
    return param


def solver_param(source):
    """The SolverParameter from a solver prototxt path or a SolverParameter (copied, upgraded)."""
    if isinstance(source, caffe_pb2.SolverParameter):
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(source)
        upgrade.upgrade_solver_as_needed(param, "<SolverParameter>")
        return param
    if isinstance(source, (str, os.PathLike)):
        return read_solver_file(source)
    raise SolverError("A solver is built from a solver prototxt path or a "
                      "caffe_pb2.SolverParameter, not %r" % type(source).__name__)


def _read_net_file(path, what):
    if not os.path.isfile(path):
        raise SolverError("Cannot read the %s '%s': no such file (paths in the solver are "
                          "relative to the current directory, %s)" % (what, path, os.getcwd()))
    return upgrade.read_net_param(path)


def _copied_net_param(message, source):
    """A copy of a NetParameter embedded in the solver, upgraded as needed."""
    net_param = caffe_pb2.NetParameter()
    net_param.CopyFrom(message)
    upgrade.upgrade_net_as_needed(net_param, source)
    return net_param


def _set_state(net_param, phase, solver_state=None):
    """The net's state: ``phase``, then the net's own state, then the solver's for this net."""
    state = caffe_pb2.NetState()
    state.phase = phase
    state.MergeFrom(net_param.state)
    if solver_state is not None:
        state.MergeFrom(solver_state)
    net_param.state.CopyFrom(state)


def train_net_param(p):
    """Solver::InitTrainNet's NetParameter: exactly one of net, net_param, train_net,
    train_net_param; phase TRAIN, merged with the net's state and ``train_state``."""
    fields = "net, net_param, train_net, train_net_param"
    n = (p.HasField("net") + p.HasField("net_param") + p.HasField("train_net")
         + p.HasField("train_net_param"))
    if n < 1:
        raise SolverError("SolverParameter must specify a train net using one of these "
                          "fields: " + fields)
    if n > 1:
        raise SolverError("SolverParameter must not contain more than one of these fields "
                          "specifying a train_net: " + fields)
    if p.HasField("train_net_param"):
        log.info("Creating training net specified in train_net_param.")
        net_param = _copied_net_param(p.train_net_param, "train_net_param")
    elif p.HasField("train_net"):
        log.info("Creating training net from train_net file: %s", p.train_net)
        net_param = _read_net_file(p.train_net, "train_net file")
    elif p.HasField("net_param"):
        log.info("Creating training net specified in net_param.")
        net_param = _copied_net_param(p.net_param, "net_param")
    else:
        log.info("Creating training net from net file: %s", p.net)
        net_param = _read_net_file(p.net, "net file")
    _set_state(net_param, caffe_pb2.TRAIN, p.train_state)
    return net_param


def test_net_params(p):
    """Solver::InitTestNets' NetParameters: [(where it came from, NetParameter)], one per
    test_iter entry: test_net_param, then test_net files, then copies of net_param / the net
    file; phase TEST, merged with the net's state and its ``test_state``."""
    has_net_param = p.HasField("net_param")
    has_net_file = p.HasField("net")
    num_generic = has_net_param + has_net_file
    if num_generic > 1:
        raise SolverError("Both net_param and net_file may not be specified.")
    num_test_net_params = len(p.test_net_param)
    num_test_net_files = len(p.test_net)
    num_test_nets = num_test_net_params + num_test_net_files
    # With a generic net (net / net_param), extra test_iter entries are copies of it.
    enough = (len(p.test_iter) >= num_test_nets if num_generic
              else len(p.test_iter) == num_test_nets)
    if not enough:
        raise SolverError("test_iter must be specified for each test network (%d test_iter "
                          "for %d test_net/test_net_param)" % (len(p.test_iter), num_test_nets))
    num_instances = len(p.test_iter)
    if len(p.test_state) and len(p.test_state) != num_instances:
        raise SolverError("test_state must be unspecified or specified once per test net "
                          "(%d test_state for %d test nets)" % (len(p.test_state),
                                                               num_instances))
    if num_instances and p.test_interval <= 0:
        raise SolverError("test_interval must be > 0 when there are test nets (%d test "
                          "net(s), test_interval %d)" % (num_instances, p.test_interval))
    nets = [("test_net_param", _copied_net_param(m, "test_net_param"))
            for m in p.test_net_param]
    nets += [("test_net file: " + f, _read_net_file(f, "test_net file")) for f in p.test_net]
    remaining = num_instances - len(nets)
    if has_net_param:
        nets += [("net_param", _copied_net_param(p.net_param, "net_param"))
                 for _ in range(remaining)]
    if has_net_file:
        nets += [("net file: " + p.net, _read_net_file(p.net, "net file"))
                 for _ in range(remaining)]
    for i, (_, net_param) in enumerate(nets):
        _set_state(net_param, caffe_pb2.TEST, p.test_state[i] if len(p.test_state) else None)
    return nets


def load_net_weights(net, weights):
    """Caffe's LoadNetWeights for each ``weights`` entry: a comma-separated list of
    caffemodels, copied in order."""
    for model_list in weights:
        for name in model_list.split(","):
            log.info("Finetuning from %s", name)
            net.copy_trained_layers_from(name)
