"""SGD's update (h = momentum·h + lr·g; g = h) keeps Caffe's float32 roundings on every path:
the NumPy passes, the compiled kernel's Python source run uncompiled, and the numba kernel."""
import types

import numpy as np
import pytest

from caffepy.kernels import compiled
from caffepy.proto import caffe_pb2
from caffepy.solver.updaters import SGDRule

f32 = np.float32


def caffe_sgd(g, h, lr, momentum):
    """caffe_cpu_axpby(lr, g, momentum, h) then caffe_copy(h, g), element by element."""
    h_out = np.empty_like(h)
    for i in range(h.size):
        scaled = f32(h[i] * momentum)               # cblas_sscal
        h_out[i] = f32(scaled + f32(lr * g[i]))     # cblas_saxpy
    return h_out


def rule_with(kernels, momentum):
    param = caffe_pb2.SolverParameter()
    param.momentum = momentum
    rule = SGDRule(param)
    rule._fused = kernels
    return rule


def kernels_for(mode):
    if mode == "numpy":
        return None
    if mode == "python":
        return types.SimpleNamespace(sgd_momentum=compiled.sgd_momentum)
    kern = compiled.kernels()
    if kern is None:
        pytest.skip("numba is not installed or CAFFEPY_COMPILED=0")
    return kern


@pytest.mark.parametrize("mode", ["numpy", "python", "numba"])
@pytest.mark.parametrize("momentum", [0.9, 0.0, 0.99])
def test_sgd_update_bits(mode, momentum):
    rng = np.random.default_rng(11)
    n = 1031
    g = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 3, n)).astype(np.float32)
    h = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 3, n)).astype(np.float32)
    g[:5] = [0.0, -0.0, 1e-30, -1e-30, 3.0]
    h[:5] = [-0.0, -2.0, -1e-30, 1e-30, -0.0]
    lr = f32(f32(0.01) * f32(2))                    # rate · lr_mult, as the solver passes it
    expect = caffe_sgd(g, h, lr, f32(momentum))
    rule = rule_with(kernels_for(mode), momentum)
    rule.update(g, [h], lr, 0, {})
    np.testing.assert_array_equal(h.view(np.uint32), expect.view(np.uint32))
    np.testing.assert_array_equal(g.view(np.uint32), expect.view(np.uint32))


def test_sgd_update_of_a_strided_view_takes_the_numpy_path():
    # a non-contiguous diff (not what the solver passes, but allowed) still updates correctly
    rng = np.random.default_rng(12)
    buf = rng.standard_normal(40).astype(np.float32)
    g = buf[::2]
    h = rng.standard_normal(20).astype(np.float32)
    expect = caffe_sgd(g.copy(), h, f32(0.1), f32(0.9))
    rule_with(types.SimpleNamespace(sgd_momentum=None), 0.9).update(g, [h], f32(0.1), 0, {})
    np.testing.assert_array_equal(h, expect)
    np.testing.assert_array_equal(g, expect)
