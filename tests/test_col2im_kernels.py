"""col2im of channels-last columns: the compiled kernel (and its Python source run uncompiled)
against the NumPy slice-adds and a per-window float64 reference, bit for bit, on odd shapes:
strides, padding, dilation, groups, batch 1, a window that runs past the padded image (Caffe's
truncating output size), kernels wider than the stride."""
import types

import numpy as np
import pytest

from caffepy.kernels import compiled
from caffepy.kernels.im2col import WindowGeometry, col2im_last

# (m, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, G)
CASES = [
    (2, 6, 7, 9, 3, 3, 2, 2, 1, 1, 1, 1, 1),
    (1, 4, 5, 5, 3, 3, 1, 1, 0, 0, 1, 1, 2),      # groups, batch 1
    (3, 3, 9, 8, 3, 2, 1, 2, 2, 1, 2, 1, 1),      # dilation, pad wider than the kernel's reach
    (2, 5, 6, 6, 4, 4, 3, 3, 1, 1, 1, 1, 1),      # the last window ends past the padded image
    (1, 2, 4, 7, 1, 5, 1, 1, 0, 2, 1, 1, 1),      # rectangular kernel
]


def kernels_for(mode):
    if mode == "numpy":
        return None
    if mode == "python":
        return types.SimpleNamespace(col2im_last_2d=compiled.col2im_last_2d)
    kern = compiled.kernels()
    if kern is None:
        pytest.skip("numba is not installed or CAFFEPY_COMPILED=0")
    return kern


def reference(col, case, geom):
    """Σ over kernel positions (row-major), each window position's value added to its pixel,
    in float32 in that order (Caffe's col2im order)."""
    m, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, G = case
    OH, OW = geom.out_shape
    Cg = C // G
    dx = np.zeros((m, H, W, C), np.float32)
    for a in range(kh):
        for b in range(kw):
            for oh in range(OH):
                ih = oh * sh - ph + a * dh
                if not 0 <= ih < H:
                    continue
                for ow in range(OW):
                    iw = ow * sw - pw + b * dw
                    if 0 <= iw < W:
                        for g in range(G):
                            dx[:, ih, iw, g * Cg:(g + 1) * Cg] += col[:, oh, ow, g, a, b, :]
    return dx


@pytest.mark.parametrize("mode", ["numpy", "python", "numba"])
@pytest.mark.parametrize("case", CASES)
def test_col2im_last_bits(mode, case):
    m, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, G = case
    geom = WindowGeometry((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    OH, OW = geom.out_shape
    rng = np.random.default_rng(len(CASES) * m + C)
    col = (rng.standard_normal((m, OH, OW, G, kh, kw, C // G))
           * 10.0 ** rng.integers(-3, 3, (m, OH, OW, G, kh, kw, C // G))).astype(np.float32)
    dx = np.full((m, H, W, C), np.nan, np.float32)          # overwritten, never read
    col2im_last(col, dx, geom, kernels_for(mode))
    np.testing.assert_array_equal(dx.view(np.uint32), reference(col, case, geom).view(np.uint32))


def test_strided_arrays_take_the_numpy_path():
    """A column array that is not in C order is summed by the NumPy code even when a compiled
    kernel is offered (the kernel takes contiguous arrays only)."""
    case = CASES[0]
    m, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, G = case
    geom = WindowGeometry((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    OH, OW = geom.out_shape
    big = np.random.default_rng(1).standard_normal((m, OH, OW, G, kh, kw, 2 * C)).astype(
        np.float32)
    col = big[..., ::2]
    calls = []
    fake = types.SimpleNamespace(col2im_last_2d=lambda *a: calls.append(a))
    dx = np.empty((m, H, W, C), np.float32)
    col2im_last(col, dx, geom, fake)
    assert calls == []
    np.testing.assert_array_equal(dx, reference(np.ascontiguousarray(col), case, geom))
