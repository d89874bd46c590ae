"""The SSL group lasso maths (rows, columns per conv group, blocks), GroupLasso's kinds and
SSLGroupLasso from ParamSpec: hand-computed examples, finite differences, exact zeros."""
import math

import numpy as np
import pytest

from caffepy.errors import GradientCheckError, RegularizerError
from caffepy.gradient_check import check_regularizer
from caffepy.proto import caffe_pb2, parse_text
from caffepy.regularizers import (GroupLasso, RegularizeContext, SSLGroupLasso,
                                  add_group_gradient, group_norms, group_penalty, group_view,
                                  ssl_terms)

from caffepy.gradient_check import ArrayBlob

f32 = np.float32


def B(w):
    """A minimal float32 blob over ``w`` (data and a zero diff)."""
    return ArrayBlob(np.array(w, dtype=np.float32))


def ctx(spec=None, group=1, name="conv1", blob_index=0, decay_mult=1.0):
    if isinstance(spec, str):
        spec = parse_text(spec, caffe_pb2.ParamSpec())
    return RegularizeContext(layer_name=name, layer_type="Convolution", blob_index=blob_index,
                             param_spec=spec, conv_group=group, decay_mult=decay_mult)


def grad(kind, w, lam, group=1, x=1, y=1):
    view = group_view(kind, np.shape(w), group, x, y)
    w = np.asarray(w, dtype=np.float32)
    d = np.zeros_like(w)
    add_group_gradient(view, f32(lam), w, d)
    return d, group_penalty(view, f32(lam), w)


# -- hand-computed examples ---------------------------------------------------------------------

def test_rows_on_a_2x4_matrix():
    w = [[1, 2, 2, 0], [0, 0, 0, 0]]           # row norms 3 and 0
    d, pen = grad("filter", w, 0.5)
    np.testing.assert_array_equal(d, f32([[0.5 * (f32(1) / f32(3)), 0.5 * (f32(2) / f32(3)),
                                          0.5 * (f32(2) / f32(3)), 0], [0, 0, 0, 0]]))
    assert d[1].tolist() == [0.0, 0.0, 0.0, 0.0]       # an all-zero row adds exactly 0
    assert pen == pytest.approx(0.5 * 3, rel=1e-7)


def test_columns_per_conv_group_on_a_4x3_matrix():
    w = np.array([[1, 0, 2],
                  [2, 0, 0],      # conv group 0: column norms sqrt(5), 0, 2
                  [3, 0, 0],
                  [4, 0, 0]],     # conv group 1: column norms 5, 0, 0
                 dtype=np.float32)
    d, pen = grad("shape", w, 1.0, group=2)
    s5 = math.sqrt(5)
    np.testing.assert_allclose(d, [[1 / s5, 0, 1], [2 / s5, 0, 0], [3 / 5, 0, 0], [4 / 5, 0, 0]],
                               rtol=1e-7)
    assert (d[:, 1] == 0).all() and d[2, 2] == 0 and d[3, 2] == 0
    assert pen == pytest.approx(s5 + 2 + 5, rel=1e-7)
    # one conv group: the columns span all 4 rows (norms sqrt(30), 0, 2)
    d1, pen1 = grad("shape", w, 1.0, group=1)
    s30 = math.sqrt(30)
    np.testing.assert_allclose(d1[:, 0], np.array([1, 2, 3, 4]) / s30, rtol=1e-7)
    assert pen1 == pytest.approx(s30 + 2, rel=1e-7)


def test_blocks_on_a_4x4_matrix():
    w = np.array([[1, 2, 0, 0],
                  [2, 4, 0, 0],
                  [0, 0, 0, 3],
                  [0, 0, 4, 0]], dtype=np.float32)   # 2x2 block norms 5, 0, 0, 5
    d, pen = grad("block", w, 0.1, x=2, y=2)
    np.testing.assert_allclose(d, 0.1 * w / 5, rtol=1e-7)
    assert pen == pytest.approx(0.1 * 10, rel=1e-7)
    # 1 row x 4 columns blocks are the rows; 4 rows x 1 column blocks the columns
    np.testing.assert_array_equal(grad("block", w, 0.1, x=4, y=1)[0], grad("filter", w, 0.1)[0])
    np.testing.assert_array_equal(grad("block", w, 0.1, x=1, y=4)[0], grad("shape", w, 0.1)[0])
    # xdimen 2, ydimen 1: (1,2) (0,0) / (2,4) (0,0) / (0,0) (0,3) / (0,0) (4,0)
    d, pen = grad("block", w, 1.0, x=2, y=1)
    s5 = math.sqrt(5)
    np.testing.assert_allclose(d, [[1 / s5, 2 / s5, 0, 0], [2 / s5 / 2, 4 / s5 / 2, 0, 0],
                                   [0, 0, 0, 1], [0, 0, 1, 0]], rtol=1e-6)
    assert pen == pytest.approx(s5 + 2 * s5 + 3 + 4, rel=1e-7)


def test_blocks_ignore_conv_groups():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 2, 3, 3)).astype(np.float32)
    v1 = group_view("block", w.shape, 1, 9, 2)
    v2 = group_view("block", w.shape, 2, 9, 2)
    assert v1.vshape == v2.vshape == (2, 2, 2, 9)


def test_channel_groups_are_one_input_channel_per_conv_group():
    rng = np.random.default_rng(1)
    n, cg, g = 6, 3, 2                      # conv weight 6 x (6/2) x 2 x 2, group 2
    w = rng.normal(size=(n, cg, 2, 2)).astype(np.float32)
    w[0:3, 1] = 0                           # channel 1 of conv group 0 is an all-zero group
    d, pen = grad("channel", w, 0.3, group=g)
    want = np.zeros_like(w, dtype=np.float64)
    total = 0.0
    for gi in range(g):
        rows = slice(gi * n // g, (gi + 1) * n // g)
        for c in range(cg):
            blk = w[rows, c].astype(np.float64)
            nrm = np.sqrt((blk ** 2).sum())
            total += nrm
            if nrm:
                want[rows, c] = 0.3 * blk / nrm
    np.testing.assert_allclose(d, want, rtol=1e-6)
    assert (d[0:3, 1] == 0).all()
    assert pen == pytest.approx(0.3 * total, rel=1e-6)
    # with one conv group a channel is the SSL fork's block {xdimen: kh*kw, ydimen: num_output}
    np.testing.assert_array_equal(grad("channel", w, 0.3)[0], grad("block", w, 0.3, x=4, y=6)[0])


def test_depth_is_the_whole_blob():
    w = np.array([[3, 0], [0, 4]], dtype=np.float32)
    d, pen = grad("depth", w, 2.0)
    np.testing.assert_allclose(d, 2.0 * w / 5, rtol=1e-7)
    assert pen == pytest.approx(10.0)
    d, pen = grad("depth", np.zeros((3, 2)), 2.0)
    assert (d == 0).all() and pen == 0.0


def test_gradient_adds_to_the_diff_and_uses_division():
    w = np.array([[1, 2, 2, 0]], dtype=np.float32)
    d = np.full_like(w, 0.25)
    add_group_gradient(group_view("filter", w.shape), f32(0.5), w, d)
    want = f32(0.25) + f32(0.5) * (w / f32(3))
    np.testing.assert_array_equal(d, want)


def test_nan_norm_is_zero_for_blocks_but_propagates_for_rows():
    w = np.array([[np.nan, 1.0], [3.0, 4.0]], dtype=np.float32)
    d, _ = grad("block", w, 1.0, x=2, y=1)
    assert d[0].tolist() == [0.0, 0.0]                # res > 0 ? sqrt : 0
    np.testing.assert_allclose(d[1], [0.6, 0.8], rtol=1e-7)
    d, _ = grad("filter", w, 1.0)
    assert np.isnan(d[0]).all()
    np.testing.assert_allclose(d[1], [0.6, 0.8], rtol=1e-7)
    n = group_norms(group_view("block", w.shape, 1, 2, 1), w)
    assert n.ravel().tolist() == [0.0, 5.0]


def test_underflowing_group_adds_exactly_zero():
    w = np.array([[1e-30, -1e-30], [1.0, 0.0]], dtype=np.float32)   # w*w underflows to 0
    d, pen = grad("filter", w, 1.0)
    assert d[0].tolist() == [0.0, 0.0]
    assert pen == pytest.approx(1.0)


def test_non_dividing_blocks_name_the_layer_and_sizes():
    with pytest.raises(RegularizerError) as e:
        group_view("block", (20, 3, 5, 5), 1, 4, 3, where="layer 'conv1' param 0")
    msg = str(e.value)
    assert msg.startswith("layer 'conv1' param 0: block group lasso (xdimen 4, ydimen 3) does "
                          "not tile the 20x75 weight matrix")
    assert "rows % ydimen = 2, columns % xdimen = 3" in msg
    spec = "block_group_lasso { xdimen: 4 ydimen: 3 }"
    r = SSLGroupLasso(block_group_decay=0.1)
    with pytest.raises(RegularizerError, match=r"layer 'conv2' param 0: block group lasso "
                                               r"\(xdimen 4, ydimen 3\) does not tile the "
                                               r"20x75 weight matrix"):
        r.regularize(0, B(np.ones((20, 3, 5, 5))), ctx(spec, name="conv2"))
    # with block_group_decay 0 the spec is never used, so nothing to check
    SSLGroupLasso(breadth_decay=0.1).regularize(0, B(np.ones((20, 3, 5, 5))), ctx(spec))
    with pytest.raises(RegularizerError, match="6 rows .num_output. do not split into 4 conv "
                                               "groups"):
        group_view("shape", (6, 2, 3, 3), 4)


# -- SSLGroupLasso ------------------------------------------------------------------------------

def test_ssl_lambdas_ignore_decay_mult_and_order_is_columns_rows_blocks():
    spec = parse_text("decay_mult: 0 breadth_decay_mult: 2 kernel_shape_decay_mult: 3 "
                      "block_group_lasso { xdimen: 2 ydimen: 2 block_decay_mult: 0.5 } "
                      "block_group_lasso { xdimen: 1 ydimen: 4 }", caffe_pb2.ParamSpec())
    terms = ssl_terms((4, 4), spec, 0.1, 0.2, 0.3, conv_group=2)
    assert [t[0].kind for t in terms] == ["shape", "filter", "block", "block"]
    assert [t[1] for t in terms] == [f32(f32(0.2) * f32(3)), f32(f32(0.1) * f32(2)),
                                     f32(f32(0.5) * f32(0.3)), f32(f32(1) * f32(0.3))]
    assert terms[0][0].vshape == (2, 2, 4)
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 4)).astype(np.float32)
    b = B(w)
    r = SSLGroupLasso(0.1, 0.2, 0.3)
    r.regularize(7, b, ctx(spec, group=2, decay_mult=0.0))
    want = np.zeros_like(w)
    pen = 0.0
    for view, lam in terms:                    # applied one after the other, in this order
        add_group_gradient(view, lam, w, want)
        pen += group_penalty(view, lam, w)
    np.testing.assert_array_equal(b.diff, want)
    assert r.penalty(7, b, ctx(spec, group=2)) == pytest.approx(pen, rel=1e-12)
    # hand value of the penalty: columns per group + rows + blocks
    w64 = w.astype(np.float64)
    cols = sum(np.sqrt((w64[g * 2:(g + 1) * 2, j] ** 2).sum()) for g in range(2) for j in range(4))
    rows = np.sqrt((w64 ** 2).sum(axis=1)).sum()
    b22 = sum(np.sqrt((w64[i:i + 2, j:j + 2] ** 2).sum()) for i in (0, 2) for j in (0, 2))
    b14 = np.sqrt((w64 ** 2).sum(axis=0)).sum()
    assert pen == pytest.approx(0.6 * cols + 0.2 * rows + 0.15 * b22 + 0.3 * b14, rel=1e-6)


def test_ssl_without_paramspec_or_multipliers_does_nothing():
    r = SSLGroupLasso(0.1, 0.1, 0.1)
    b = B(np.ones((3, 4)))
    r.regularize(0, b, ctx(None))
    r.regularize(0, b, ctx("lr_mult: 1"))       # the multipliers default to 0
    assert (b.diff == 0).all()
    assert r.penalty(0, b, ctx("lr_mult: 1")) == 0.0
    assert not SSLGroupLasso().active and SSLGroupLasso(block_group_decay=1e-3).active
    p = parse_text("breadth_decay: 0.1 kernel_shape_decay: 0.2 block_group_decay: 0.3",
                   caffe_pb2.SolverParameter())
    s = SSLGroupLasso.from_solver_param(p)
    assert (s.breadth_decay, s.kernel_shape_decay, s.block_group_decay) == pytest.approx(
        (0.1, 0.2, 0.3))


def test_ssl_biases_count_when_their_paramspec_asks():
    r = SSLGroupLasso(breadth_decay=1.0)
    b = B([3.0, 0.0, -4.0])                      # M = 3 rows of one column: norms |b|
    r.regularize(1, b, ctx("breadth_decay_mult: 1", blob_index=1))
    assert b.diff.tolist() == [1.0, 0.0, -1.0]


# -- finite differences -----------------------------------------------------------------------

KIND_CASES = [
    ("filter", 1, {}), ("filter", 2, {}), ("shape", 1, {}), ("shape", 2, {}), ("shape", 3, {}),
    ("channel", 1, {}), ("channel", 2, {}), ("depth", 1, {}),
    ("block", 1, {"xdimen": 9, "ydimen": 2}), ("block", 2, {"xdimen": 6, "ydimen": 3}),
    ("block", 1, {"xdimen": 1, "ydimen": 6}),
]


@pytest.mark.parametrize("kind,group,extra", KIND_CASES)
def test_group_kind_gradient_matches_finite_differences(kind, group, extra):
    shape = (6, 2, 3, 3)                          # conv weight 6 x (C/G) x 3 x 3
    # a filter, a column, a channel slab of two filters, a 3 x 6 block
    zero = [np.s_[0], np.s_[:, 1, 2, 2], np.s_[2:4, 0], np.s_[0:3, 0, 0:2]]
    r = GroupLasso(0.05, kind=kind, **extra)
    res = check_regularizer(r, shape=shape, zero=zero, conv_group=group)
    assert res.passed and res.max_rel_error < 1e-4
    # elements of all-zero groups get exactly 0
    z = np.zeros(shape, dtype=bool)
    w = np.ones(shape)
    for idx in zero:
        w[idx] = 0
    view = group_view(kind, shape, group, extra.get("xdimen", 1), extra.get("ydimen", 1))
    allzero = (w.reshape(view.vshape) == 0).all(axis=view.axes, keepdims=True)
    z = np.broadcast_to(allzero, view.vshape).reshape(shape)
    assert res.analytic[z].tolist() == [0.0] * int(z.sum())
    if kind in ("filter", "shape", "block"):
        assert z.any()                            # the pattern made at least one zero group
    assert (res.analytic[~z & (w != 0)] != 0).all()


def test_ssl_gradient_matches_finite_differences_with_conv_groups():
    spec = ("breadth_decay_mult: 1 kernel_shape_decay_mult: 2 "
            "block_group_lasso { xdimen: 9 ydimen: 3 } "
            "block_group_lasso { xdimen: 18 ydimen: 1 block_decay_mult: 2 }")
    zero = [np.s_[1], np.s_[:, 0, 1, 1], np.s_[3:6, 1]]
    res = check_regularizer(SSLGroupLasso(0.01, 0.02, 0.03), shape=(6, 2, 3, 3), zero=zero,
                            conv_group=2, param_spec=spec)
    assert res.passed and res.max_rel_error < 1e-4
    assert (res.analytic[1] == 0).all()            # row 1: zero in every group it belongs to
    assert (res.analytic[:, 0, 1, 1] == 0).all()


def test_inner_product_groups():
    zero = [np.s_[2], np.s_[:, 4]]
    for kind in ("filter", "shape", "channel"):
        res = check_regularizer(GroupLasso(0.1, kind=kind), shape=(5, 8), zero=zero)
        assert res.passed
        assert (res.analytic[2] == 0).all() and (res.analytic[:, 4] == 0).all()


def test_a_wrong_group_gradient_is_caught():
    class Wrong(GroupLasso):
        def regularize(self, param_id, blob, ctx):
            super().regularize(param_id, blob, ctx)
            blob.diff[...] *= 1.01
    with pytest.raises(GradientCheckError, match="regularizer 'GroupLasso' on layer 'layer' "
                                                 "blob 0 .*analytic"):
        check_regularizer(Wrong(0.05, kind="filter"), shape=(4, 3))


def test_group_lasso_defaults_to_weights_and_caches_views():
    r = GroupLasso(0.1, kind="filter")
    assert r.selects(ctx(blob_index=0)) and not r.selects(ctx(blob_index=1))
    r = GroupLasso(0.1, kind="filter", layers=["conv2"], blob_indices=[0, 1])
    assert r.selects(ctx(name="conv2", blob_index=1)) and not r.selects(ctx(name="conv1"))
    with pytest.raises(RegularizerError, match="unknown kind 'rowz' .kinds: filter, shape, "
                                               "channel, block, depth."):
        GroupLasso(0.1, kind="rowz")
    b = B(np.ones((4, 3)))
    r.regularize(0, b, ctx(name="conv2"))
    buffers = dict(r._scratch_buffers)
    r.regularize(0, b, ctx(name="conv2"))
    assert all(r._scratch_buffers[k] is v for k, v in buffers.items())   # no new allocation
    np.testing.assert_allclose(b.diff, 2 * 0.1 / np.sqrt(3), rtol=1e-6)
