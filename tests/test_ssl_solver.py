"""Structured sparsity in the training loop: the SSL fork's group lasso step against a
hand-computed update, the sparsity log block, zerout_threshold, connectivity masks through
momentum SGD, regularizer { } blocks, regularizer state in snapshots, SSL-trained binary
files, and the example SSL prototxt pairs."""
import logging
import os

import numpy as np
import pytest

import caffepy
from caffepy.proto import caffe_pb2, parse_text, read_text, write_binary
from caffepy.regularizers import Regularizer, register_regularizer
from caffepy.regularizers.sparsity import parse_sparsity_log
from caffepy.solver import read_solver_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

CONV_NET = '''
name: "t"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 dim: 3 dim: 3 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "y"
  param { lr_mult: 1 breadth_decay_mult: 1 kernel_shape_decay_mult: 2
          block_group_lasso { xdimen: 9 ydimen: 2 block_decay_mult: 1.5 } }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 group: 2 kernel_size: 3 } }
'''

SOLVER = ('base_lr: 0.1 momentum: 0.9 weight_decay: 0.01 lr_policy: "fixed" max_iter: 1 '
          'display: 1 breadth_decay: 0.02 kernel_shape_decay: 0.03 block_group_decay: 0.04 '
          'snapshot_after_train: false')


def _solver(solver_text=SOLVER, net_text=CONV_NET):
    sp = parse_text(solver_text, caffe_pb2.SolverParameter())
    sp.net_param.CopyFrom(parse_text(net_text, caffe_pb2.NetParameter()))
    return caffepy.get_solver(sp)


def _weights_with_zero_groups():
    w = np.random.RandomState(3).uniform(-1, 1, (4, 2, 3, 3)).astype(np.float32)
    w[1] = 0                      # an all-zero row (filter 1)
    w[2:, 0, 1, 1] = 0            # a column zero within conv group 1 only
    return w


def _group_grad(w, lam, groups):
    """λ·w/‖g‖ for each group (a list of index arrays into the flat weights), 0 for a zero
    group; float64."""
    flat = w.ravel().astype(np.float64)
    out = np.zeros_like(flat)
    for idx in groups:
        n = np.sqrt((flat[idx] ** 2).sum())
        if n > 0:
            out[idx] += lam * flat[idx] / n
    return out.reshape(w.shape)


def _ssl_groups(m, c, g, ydim, xdim):
    ids = np.arange(m * c).reshape(m, c)
    cols = [ids[k * m // g:(k + 1) * m // g, j].ravel() for k in range(g) for j in range(c)]
    rows = [ids[i].ravel() for i in range(m)]
    blocks = [ids[i:i + ydim, j:j + xdim].ravel() for i in range(0, m, ydim)
              for j in range(0, c, xdim)]
    return cols, rows, blocks


def test_one_step_with_all_three_ssl_decays_matches_the_hand_computed_update():
    s = _solver()
    w0 = _weights_with_zero_groups()
    b0 = np.array([0.5, -0.25, 0.0, 1.0], np.float32)
    conv = s.net.layer_by_name("conv")
    conv.blobs[0].data[...] = w0
    conv.blobs[1].data[...] = b0
    s.step(1)
    cols, rows, blocks = _ssl_groups(4, 18, 2, 2, 9)
    # the data gradient is 0 (no loss); regularization alone moves the weights
    grad = (0.01 * w0.astype(np.float64)                    # weight decay, L2, decay_mult 1
            + _group_grad(w0, 0.03 * 2, cols)               # columns per conv group
            + _group_grad(w0, 0.02 * 1, rows)               # rows
            + _group_grad(w0, 0.04 * 1.5, blocks))          # 2x9 blocks over the whole matrix
    expected_w = w0 - 0.1 * 1 * grad                        # first momentum step: lr·lr_mult·g
    np.testing.assert_allclose(conv.blobs[0].data, expected_w, rtol=1e-5, atol=1e-7)
    assert np.all(conv.blobs[0].data[1] == 0)               # the zero filter stays exactly 0
    # bias: decay_mult 0 and no group multipliers -> untouched
    np.testing.assert_array_equal(conv.blobs[1].data, b0)
    # the momentum history holds the update
    np.testing.assert_allclose(s.history[0], 0.1 * grad, rtol=1e-5, atol=1e-8)


def _log_records(fn):
    records = []

    class H(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())
    h = H(level=logging.INFO)
    logger = logging.getLogger("caffepy")
    old = logger.level
    logger.addHandler(h)
    logger.setLevel(logging.INFO)
    try:
        fn()
    finally:
        logger.removeHandler(h)
        logger.setLevel(old)
    return records


def test_the_sparsity_block_is_logged_and_parses_back_to_the_weights_numbers():
    s = _solver()
    w0 = _weights_with_zero_groups()
    w0[3, 1, 0, 0] = 5e-5                                   # |w| < 1e-4: element-sparse, not 0
    conv = s.net.layer_by_name("conv")
    conv.blobs[0].data[...] = w0
    conv.blobs[1].data[...] = [0.5, 0, 0, 1]
    events = []
    s.add_listener(lambda ev, rec: events.append((ev, rec)))
    records = _log_records(lambda: s.step(1))
    text = "\n".join(records)
    parsed = parse_sparsity_log(text)
    assert len(parsed) == 1
    it = parsed[0]
    m = w0.reshape(4, 18)
    element = 100.0 * np.mean(np.abs(w0) < 1e-4)
    column = 100.0 * np.mean(~m.any(axis=0))               # over the whole matrix
    row = 100.0 * np.mean(~m.any(axis=1))
    assert it["iteration"] == 0
    np.testing.assert_allclose(it["element"], [element, 50.0], rtol=1e-5)
    np.testing.assert_allclose(it["column"], [column, 0.0])
    np.testing.assert_allclose(it["row"], [row, 50.0])
    assert row == 25.0 and column == 0.0                    # the half-zero column is not counted
    # one block spec on the weights, none on the bias; 2x9 blocks: none is all-zero
    assert it["block"] == [[(9, 2, 0.0)], []]
    # the lines keep the fork's layout: header, newline, values each followed by a tab
    assert "     Column Sparsity %: \n0\t0\t" in records
    total_lines = [r for r in records if r.startswith("    Total regularization terms: ")]
    assert len(total_lines) == 1
    reg = [rec for ev, rec in events if ev == "regularization"][0]
    cols, rows, blocks = _ssl_groups(4, 18, 2, 2, 9)

    def pen(groups, lam):
        f = w0.ravel().astype(np.float64)
        return lam * sum(np.sqrt((f[i] ** 2).sum()) for i in groups)
    expected = (0.01 / 2 * float((w0.astype(np.float64) ** 2).sum())
                + pen(cols, 0.06) + pen(rows, 0.02) + pen(blocks, 0.06))
    assert reg["total"] == pytest.approx(expected, rel=1e-5)
    assert it["regularization"] == pytest.approx(expected, rel=1e-5)
    assert it["loss_plus_regular"] == pytest.approx(expected + reg["loss"], rel=1e-5)


def test_a_plain_caffe_solver_logs_no_sparsity_block_and_display_sparsity_turns_it_on():
    plain = ('base_lr: 0.1 lr_policy: "fixed" max_iter: 1 display: 1 '
             'snapshot_after_train: false')
    records = _log_records(lambda: _solver(plain).step(1))
    assert not any("Sparsity %" in r or "regularization terms" in r for r in records)
    records = _log_records(lambda: _solver(plain + " display_sparsity: true").step(1))
    assert sum("Sparsity %" in r for r in records) == 4
    assert sum(r.startswith("    Total regularization terms: 0 loss+regular. : ")
               for r in records) == 1


def test_zerout_threshold_zeroes_small_values_after_the_update_and_is_off_by_default():
    plain = 'base_lr: 0.1 lr_policy: "fixed" max_iter: 1 snapshot_after_train: false'
    w = np.array([[1e-5, -9e-5, 1e-4, -2e-4, 0.5]] * 4 + [[0.0] * 5] * 0, np.float32)
    net = CONV_NET
    for zt, expect_zero in ((0, False), (0.0001, True)):
        s = _solver(plain + " zerout_threshold: %g" % zt, net)
        conv = s.net.layer_by_name("conv")
        flat = conv.blobs[0].data.reshape(-1)
        flat[...] = 0.5
        flat[:5] = w[0]
        s.step(1)
        got = conv.blobs[0].data.reshape(-1)[:5]
        if expect_zero:
            # strictly inside (-1e-4, 1e-4) -> 0; 1e-4 itself and larger stay
            np.testing.assert_array_equal(got, np.float32([0, 0, 1e-4, -2e-4, 0.5]))
        else:
            np.testing.assert_array_equal(got, w[0])


MASK_NET = '''
name: "m"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 8 dim: 6 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 8 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" connectivity_mode: MODE
  inner_product_param { num_output: 4 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
'''


@pytest.mark.parametrize("mode", ["DISCONNECTED_ELTWISE", "DISCONNECTED_GRPWISE"])
def test_connectivity_masks_keep_zeros_through_100_iterations_of_momentum_sgd(tmp_path, mode):
    net_text = MASK_NET.replace("MODE", mode)
    w = np.random.RandomState(0).uniform(-1, 1, (4, 6)).astype(np.float32)
    w[0, 2] = 0.0            # a lone zero
    w[1, 4] = 5e-5           # below 1e-4: zeroed when the mask is made
    w[3, :] = 0.0            # a zero row
    w[:, 5] = 0.0            # a zero column
    src = caffepy.Net(net_text, caffepy.TRAIN)
    src.params["ip"][0].data[...] = w
    model = str(tmp_path / "m.caffemodel")
    src.save(model)
    sp = parse_text('base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" max_iter: 100 '
                    'snapshot_after_train: false', caffe_pb2.SolverParameter())
    sp.net_param.CopyFrom(parse_text(net_text, caffe_pb2.NetParameter()))
    sp.weights.append(model)
    messages = []
    records = _log_records(lambda: messages.append(caffepy.get_solver(sp)))
    solver = messages[0]
    frozen = {"DISCONNECTED_ELTWISE": "all zero weights of ip are frozen",
              "DISCONNECTED_GRPWISE": "weights lying in all-zero groups of ip are frozen"}[mode]
    assert frozen in records
    rng = np.random.RandomState(1)
    for _ in range(100):
        solver.net.blobs["x"].data[...] = rng.randn(8, 6)
        solver.net.blobs["t"].data[...] = rng.randn(8, 4)
        solver.step(1)
    got = solver.net.params["ip"][0].data
    zero = np.zeros_like(w, dtype=bool)
    zero[3, :] = zero[:, 5] = True
    if mode == "DISCONNECTED_ELTWISE":
        zero[0, 2] = zero[1, 4] = True
    assert np.all(got[zero] == 0)
    assert np.all(got[~zero] != w[~zero])                  # everything else trained
    # the momentum history is not masked: Caffe masks only the step itself
    assert np.any(solver.history[0][zero] != 0)


def test_ssl_fields_in_a_binary_caffemodel_read_and_make_masks(tmp_path):
    # A .caffemodel as the SSL fork writes it: ParamSpec 5-9 and LayerParameter 12 on the wire
    net = caffe_pb2.NetParameter()
    lp = net.layer.add()
    lp.name, lp.type = "ip", "InnerProduct"
    lp.connectivity_mode = caffe_pb2.LayerParameter.DISCONNECTED_ELTWISE
    ps = lp.param.add()
    ps.breadth_decay_mult, ps.kernel_shape_decay_mult = 1.0, 0.5
    spec = ps.block_group_lasso.add()
    spec.xdimen, spec.ydimen, spec.block_decay_mult = 3, 2, 2.0
    ps.regularization_type, ps.decay_proto = "L1", "d.binaryproto"
    w = np.arange(24, dtype=np.float32).reshape(4, 6) - 5
    blob = lp.blobs.add()
    blob.shape.dim.extend([4, 6])
    blob.data.extend(w.ravel().tolist())
    bias = lp.blobs.add()
    bias.shape.dim.extend([4])
    bias.data.extend([0, 0, 0, 0])
    raw = net.SerializeToString()
    # the fields sit at the fork's numbers: tags of ParamSpec 5 (float) .. 9 (string), Layer 12
    for tag in (b"\x2d", b"\x35", b"\x3a", b"\x42", b"\x4a", b"\x60\x01"):
        assert tag in raw
    path = tmp_path / "ssl.caffemodel"
    path.write_bytes(raw)
    net_text = MASK_NET.replace("MODE", "DISCONNECTED_ELTWISE")
    target = []
    records = _log_records(lambda: target.append(
        caffepy.Net(net_text, caffepy.TRAIN, weights=str(path))))
    loaded = target[0]
    np.testing.assert_array_equal(loaded.params["ip"][0].data, w)
    assert "all zero weights of ip are frozen" in records
    mask = loaded.params["ip"][0].mask
    np.testing.assert_array_equal(mask, (w != 0).astype(np.float32))
    back = caffe_pb2.NetParameter.FromString(raw)
    assert back.layer[0].param[0].block_group_lasso[0].ydimen == 2
    assert back.layer[0].param[0].decay_proto == "d.binaryproto"


# -- regularizer { } blocks and plug-in state ------------------------------------------------

IP_NET = '''
name: "r"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } }
layer { name: "ip2" type: "InnerProduct" bottom: "y" top: "z" inner_product_param { num_output: 2 } }
'''


def test_a_regularizer_block_in_the_solver_prototxt_applies_to_its_layer_only():
    s = _solver('base_lr: 1 lr_policy: "fixed" max_iter: 1 snapshot_after_train: false '
                'regularizer { type: "GroupLasso" coeff: 0.5 param_str: "kind: filter" '
                'layer: "ip" }', IP_NET)
    w = np.array([[3, 4, 0], [0, 0, 0]], np.float32)
    s.net.params["ip"][0].data[...] = w
    w2 = s.net.params["ip2"][0].data.copy()
    s.step(1)
    # row 0: norm 5 -> w - 0.5*w/5; row 1: zero group, unchanged
    np.testing.assert_allclose(s.net.params["ip"][0].data, [[2.7, 3.6, 0], [0, 0, 0]],
                               rtol=1e-6)
    np.testing.assert_array_equal(s.net.params["ip2"][0].data, w2)


def test_an_unknown_regularizer_type_in_the_solver_prototxt_names_it():
    with pytest.raises(caffepy.RegularizerError, match="Unknown regularizer 'NoSuch'"):
        _solver('base_lr: 1 lr_policy: "fixed" regularizer { type: "NoSuch" }', IP_NET)


def test_a_regularizer_naming_a_missing_layer_is_an_error():
    with pytest.raises(caffepy.RegularizerError, match="layer 'conv9'"):
        _solver('base_lr: 1 lr_policy: "fixed" regularizer { type: "L1" coeff: 1 '
                'layer: "conv9" }', IP_NET)


def test_a_decay_proto_of_the_wrong_shape_stops_the_solver_naming_file_layer_and_shapes(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([3, 3])
    bp.data.extend([1.0] * 9)
    write_binary(bp, "d.binaryproto")
    net = IP_NET.replace('name: "ip" type: "InnerProduct" bottom: "x" top: "y"',
                         'name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                         'param { decay_proto: "d.binaryproto" }')
    with pytest.raises(caffepy.RegularizerError) as e:
        _solver('base_lr: 1 lr_policy: "fixed" weight_decay: 0.1', net)
    msg = str(e.value)
    assert "d.binaryproto" in msg and "'ip'" in msg, msg
    print(msg)
    os.remove("d.binaryproto")
    with pytest.raises(caffepy.RegularizerError, match="d.binaryproto"):
        _solver('base_lr: 1 lr_policy: "fixed" weight_decay: 0.1', net)


def test_decay_proto_multiplies_each_weights_decay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = np.array([[0, 1, 2], [3, 0, 1]], np.float32)
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([2, 3])
    bp.data.extend(d.ravel().tolist())
    write_binary(bp, "d.binaryproto")
    net = IP_NET.replace('name: "ip" type: "InnerProduct" bottom: "x" top: "y"',
                         'name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                         'param { decay_proto: "d.binaryproto" regularization_type: "L1" }')
    s = _solver('base_lr: 1 lr_policy: "fixed" weight_decay: 0.1 max_iter: 1 '
                'snapshot_after_train: false', net)
    w = np.array([[1, -2, 3], [-4, 5, -6]], np.float32)
    s.net.params["ip"][0].data[...] = w
    s.step(1)
    # L1 for this blob (ParamSpec override): w -= 0.1 * sign(w) * D
    np.testing.assert_allclose(s.net.params["ip"][0].data, w - 0.1 * np.sign(w) * d, rtol=1e-6)


class _Counter(Regularizer):
    """A stateful regularizer: counts its calls, keeps a running sum of |w|."""

    def __init__(self, coeff=0.0, layers=None, blob_indices=None):
        super().__init__(coeff, layers, blob_indices)
        self.calls = np.zeros(1, np.float32)

    def regularize(self, param_id, blob, ctx):
        self.calls += 1

    def state_dict(self):
        return {"calls": self.calls.copy()}

    def load_state_dict(self, state):
        self.calls[...] = state["calls"]


register_regularizer("TestCounter", _Counter)


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_a_stateful_regularizers_state_survives_snapshot_and_resume(tmp_path, monkeypatch, fmt):
    monkeypatch.chdir(tmp_path)
    text = ('base_lr: 0.1 lr_policy: "fixed" max_iter: 3 snapshot: 3 snapshot_prefix: "s" '
            'snapshot_format: %s regularizer { type: "TestCounter" layer: "ip" }' % fmt)
    s = _solver(text, IP_NET)
    s.solve()
    counter = s.regularizers[0]
    assert counter.calls[0] == 6                       # 3 iterations x (weights, bias)
    ext = ".solverstate.h5" if fmt == "HDF5" else ".solverstate"
    s2 = _solver(text, IP_NET)
    assert s2.regularizers[0].calls[0] == 0
    s2.restore("s_iter_3" + ext)
    assert s2.regularizers[0].calls[0] == 6
    assert s2.iter == 3


# -- the example SSL prototxt pairs ---------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_dbs(tmp_path_factory):
    from caffepy.tools.convert_mnist import create_mnist
    d = tmp_path_factory.mktemp("mnist")
    create_mnist(str(d), str(d / "none"), "lmdb", overwrite=False)
    return d


def _example_solver(solver_file, mnist_dbs, **fields):
    param = read_solver_file(os.path.join(ROOT, solver_file))
    net = read_text(os.path.join(ROOT, param.net), caffe_pb2.NetParameter())
    for lp in net.layer:
        if lp.type == "Data":
            name = "train" if lp.include[0].phase == caffe_pb2.TRAIN else "test"
            lp.data_param.source = str(mnist_dbs / ("mnist_%s_lmdb" % name))
    param.ClearField("net")
    param.net_param.CopyFrom(net)
    param.snapshot = 0
    param.snapshot_after_train = False
    for k, v in fields.items():
        setattr(param, k, v)
    return caffepy.get_solver(param)


def test_the_lenet_group_lasso_pair_trains_and_shrinks_whole_groups(mnist_dbs, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = _example_solver("examples/mnist/lenet_grouplasso_solver.prototxt", mnist_dbs,
                        max_iter=60, test_interval=1000, display=20, breadth_decay=0.5,
                        kernel_shape_decay=0.5)
    stats = []
    s.add_listener(lambda ev, rec: stats.append(rec) if ev == "sparsity" else None)

    def row_norms():
        w2 = s.net.params["conv2"][0].data.reshape(50, -1)
        return np.linalg.norm(w2, axis=1)
    before = row_norms()
    s.step(60)
    assert [r["iter"] for r in stats] == [0, 20, 40]
    assert len(stats[0]["stats"]) == 8             # conv1, conv2, ip1, ip2: weights and biases
    # strong row and column group lasso pulls every conv2 filter towards 0 together
    assert row_norms().max() < 0.15 * before.min()
    assert np.isfinite(float(s.smoothed_loss))


def test_the_lenet_finetune_net_keeps_masks(mnist_dbs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = _example_solver("examples/mnist/lenet_grouplasso_solver.prototxt", mnist_dbs)
    w = src.net.params["conv2"][0].data
    w[::2] = 0                                    # half the filters zero
    src.net.save("gl.caffemodel")
    s = _example_solver("examples/mnist/lenet_finetune_solver.prototxt", mnist_dbs,
                        max_iter=20, test_interval=1000)
    s.net.copy_from("gl.caffemodel")
    s.step(20)
    w = s.net.params["conv2"][0].data
    assert np.all(w[::2] == 0) and np.all(w[1::2].reshape(25, -1).any(axis=1))


def test_the_cifar10_group_lasso_pair_builds_and_steps():
    param = read_solver_file(os.path.join(ROOT, "examples/cifar10/"
                                          "cifar10_quick_grouplasso_solver.prototxt"))
    net = read_text(os.path.join(ROOT, param.net), caffe_pb2.NetParameter())
    # replace the data layers by Input/DummyData of the same shapes
    body = [lp for lp in net.layer if lp.type != "Data"]
    data = parse_text('name: "cifar" type: "DummyData" top: "data" top: "label" '
                      'dummy_data_param { shape { dim: 4 dim: 3 dim: 32 dim: 32 } '
                      'shape { dim: 4 } data_filler { type: "gaussian" std: 1 } '
                      'data_filler { type: "constant" value: 3 } }',
                      caffe_pb2.LayerParameter())
    del net.layer[:]
    net.layer.add().CopyFrom(data)
    for lp in body:
        net.layer.add().CopyFrom(lp)
    param.ClearField("net")
    param.net_param.CopyFrom(net)
    param.ClearField("test_iter")
    param.test_interval = 0
    param.snapshot = 0
    param.snapshot_after_train = False
    param.display = 1
    s = caffepy.get_solver(param)
    stats = []
    s.add_listener(lambda ev, rec: stats.append(rec) if ev == "sparsity" else None)
    s.step(2)
    # conv2's block spec (25 x 32: one input channel of every filter) is reported
    conv2_w = s.net.layer_names.index("conv2")
    assert conv2_w > 0
    assert stats[0]["stats"][2].blocks == [(25, 32, 0.0)]


def test_regularizer_penalties_reach_the_log_and_the_listeners():
    # a regularizer { } block: its penalty is the total line's R (the solver has no decay)
    text = ('base_lr: 0.1 lr_policy: "fixed" max_iter: 1 display: 1 snapshot_after_train: false '
            'regularizer { type: "L1" coeff: 0.5 layer: "ip" blob_index: 0 }')
    s = _solver(text, IP_NET)
    w = np.array([[1, -2, 0], [0.5, 0, 3]], np.float32)
    s.net.params["ip"][0].data[...] = w
    events = []
    s.add_listener(lambda ev, rec: events.append(rec) if ev == "regularization" else None)
    records = _log_records(lambda: s.step(1))
    assert events[0]["total"] == pytest.approx(0.5 * 6.5)
    assert "    Total regularization terms: 3.25 loss+regular. : 3.25" in records
    assert sum("Sparsity %" in r for r in records) == 4
    # a regularizer added from Python: the listeners get the penalty, the log stays Caffe's
    plain = 'base_lr: 0.1 lr_policy: "fixed" max_iter: 1 display: 1 snapshot_after_train: false'
    s = _solver(plain, IP_NET)
    s.add_regularizer("L2", 2.0)
    s.net.params["ip"][0].data[...] = w
    s.net.params["ip"][1].data[...] = 0
    s.net.params["ip2"][0].data[...] = 0
    s.net.params["ip2"][1].data[...] = 0
    events = []
    s.add_listener(lambda ev, rec: events.append(rec) if ev == "regularization" else None)
    records = _log_records(lambda: s.step(1))
    assert events[0]["total"] == pytest.approx(0.5 * 2.0 * float((w ** 2).sum()))
    assert not any("regularization terms" in r or "Sparsity %" in r for r in records)


@pytest.mark.parametrize("solver_type,extra", [
    ("SGD", "momentum: 0.9"), ("Nesterov", "momentum: 0.9"), ("AdaGrad", ""),
    ("RMSProp", "rms_decay: 0.95"), ("AdaDelta", "momentum: 0.95 delta: 1e-6"),
    ("Adam", "momentum: 0.9 momentum2: 0.999")])
def test_group_lasso_feeds_every_update_rule(solver_type, extra):
    # the SSL gradient sits between weight decay and the update value for all six solvers:
    # the step equals the rule applied to the hand-computed regularization gradient
    from caffepy.solver.updaters import get_update_rule
    text = SOLVER.replace('base_lr: 0.1 momentum: 0.9', 'type: "%s" base_lr: 0.1 %s'
                          % (solver_type, extra))
    s = _solver(text)
    w0 = _weights_with_zero_groups()
    conv = s.net.layer_by_name("conv")
    conv.blobs[0].data[...] = w0
    conv.blobs[1].data[...] = 0
    # history as after some training, so that the adaptive rules' steps depend on the
    # gradient's size, not only on its sign
    n = len(s.net.learnable_params)
    rng = np.random.RandomState(5)
    start = [rng.uniform(0.01, 0.1, w0.size).astype(np.float32)
             for _ in range(len(s.history) // n)]
    for k, h in enumerate(start):
        s.history[k * n][...] = h.reshape(w0.shape)
    s.step(1)
    cols, rows, blocks = _ssl_groups(4, 18, 2, 2, 9)
    grad = (0.01 * w0.astype(np.float64) + _group_grad(w0, 0.06, cols)
            + _group_grad(w0, 0.02, rows) + _group_grad(w0, 0.06, blocks))
    rule = get_update_rule(solver_type)(s.param)
    diff = grad.astype(np.float32).ravel()
    history = [h.copy() for h in start]
    rule.update(diff, history, np.float32(0.1), 0, {})
    np.testing.assert_allclose(conv.blobs[0].data, w0 - diff.reshape(w0.shape), rtol=2e-5,
                               atol=1e-7)
