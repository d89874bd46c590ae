"""Pooling layers: Pooling (MAX, AVE, STOCHASTIC) and SPP (spatial pyramid pooling).

Each class reproduces the Caffe 1.0 (master) layer of the same name, including its parameter
rules and its output-size formulas. The window loops live in caffepy.kernels.pooling.
"""
import logging

import numpy as np

from .. import backend, parallel_chunks
from ..kernels import compiled
from ..kernels.pooling import Pool2D, pooled_size, reads_image
from ..layer import Layer, register_layer
from ..proto import caffe_pb2
from .shapes import nchw

log = logging.getLogger("caffepy")


# -- Pooling --------------------------------------------------------------------------------

_MAX = caffe_pb2.PoolingParameter.MAX
_AVE = caffe_pb2.PoolingParameter.AVE
_STOCHASTIC = caffe_pb2.PoolingParameter.STOCHASTIC
_POOL_NAMES = {_MAX: "MAX", _AVE: "AVE", _STOCHASTIC: "STOCHASTIC"}


def _stochastic_guard(layer):
    if backend.mode() == backend.CPU and not getattr(layer, "_allow_cpu_stochastic", False):
        raise layer.error("STOCHASTIC pooling is implemented only on the GPU in Caffe "
                          "(its CPU forward is NOT_IMPLEMENTED); use MAX or AVE, or run in "
                          "GPU mode")


class _PoolRunner:
    """Runs one Pool2D kernel for a pooling method over (N·C, H, W) planes."""

    @staticmethod
    def forward(layer, kern, method, x, out, mask=None):
        if method == _MAX:
            kern.forward_max(x, out, mask)
        elif method == _AVE:
            kern.forward_ave(x, out)
        else:
            _stochastic_guard(layer)
            train = layer.phase == caffe_pb2.TRAIN
            u = None
            if train:
                u = layer.xp.asarray(backend.rng().random(out.shape, dtype=np.float32))
            kern.forward_stochastic(x, out, train, u)

    @staticmethod
    def backward(kern, method, dy, dx):
        if method == _MAX:
            kern.backward_max(dy, dx)
        elif method == _AVE:
            kern.backward_ave(dy, dx)
        else:
            kern.backward_stochastic(dy, dx)


@register_layer("Pooling")
class PoolingLayer(Layer):
    """MAX / AVE (/ STOCHASTIC on GPU) 2-D pooling with Caffe's output size, padding and
    first-maximum rules. A second top (MAX only) receives the argmax mask h·W + w as float."""
    exact_num_bottom_blobs = 1
    min_top_blobs = 1
    max_top_blobs = 2

    def layer_setup(self, bottom, top):
        p = self.layer_param.pooling_param
        self.method = p.pool
        if len(top) > 1 and self.method != _MAX:
            raise self.error("only MAX pooling can have a second (mask) top; %s pooling takes "
                             "exactly 1 top, got %d", _POOL_NAMES.get(self.method), len(top))
        self.global_pooling = p.global_pooling
        if self.global_pooling:
            if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise self.error("With Global_pooling: true Filter size cannot specified")
        else:
            if not (p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w")):
                raise self.error("needs a window size: kernel_size, or kernel_h and kernel_w "
                                 "(or global_pooling: true)")
            if p.HasField("kernel_size") and (p.HasField("kernel_h") or p.HasField("kernel_w")):
                raise self.error("Filter size is kernel_size OR kernel_h and kernel_w; not both")
            if not p.HasField("kernel_size") and not (p.HasField("kernel_h")
                                                      and p.HasField("kernel_w")):
                raise self.error("For non-square filters both kernel_h and kernel_w are required.")
        if not ((not p.HasField("pad") and p.HasField("pad_h") and p.HasField("pad_w"))
                or (not p.HasField("pad_h") and not p.HasField("pad_w"))):
            raise self.error("pad is pad OR pad_h and pad_w are required.")
        if not ((not p.HasField("stride") and p.HasField("stride_h") and p.HasField("stride_w"))
                or (not p.HasField("stride_h") and not p.HasField("stride_w"))):
            raise self.error("Stride is stride OR stride_h and stride_w are required.")
        if self.global_pooling:
            self.kernel_h, self.kernel_w = nchw(self, bottom[0])[2:]
        elif p.HasField("kernel_size"):
            self.kernel_h = self.kernel_w = int(p.kernel_size)
        else:
            self.kernel_h, self.kernel_w = int(p.kernel_h), int(p.kernel_w)
        if self.kernel_h <= 0 or self.kernel_w <= 0:
            raise self.error("Filter dimensions cannot be zero.")
        if p.HasField("pad_h"):
            self.pad_h, self.pad_w = int(p.pad_h), int(p.pad_w)
        else:
            self.pad_h = self.pad_w = int(p.pad)
        if p.HasField("stride_h"):
            self.stride_h, self.stride_w = int(p.stride_h), int(p.stride_w)
        else:
            self.stride_h = self.stride_w = int(p.stride)
        if self.stride_h <= 0 or self.stride_w <= 0:
            raise self.error("Stride dimensions cannot be zero.")
        if self.global_pooling and not (self.pad_h == 0 and self.pad_w == 0
                                        and self.stride_h == 1 and self.stride_w == 1):
            raise self.error("With Global_pooling: true; only pad = 0 and stride = 1")
        if self.pad_h or self.pad_w:
            if self.method not in (_MAX, _AVE):
                raise self.error("Padding implemented only for average and max pooling.")
            if self.pad_h >= self.kernel_h or self.pad_w >= self.kernel_w:
                raise self.error("pad (%d, %d) must be smaller than the kernel (%d, %d)",
                                 self.pad_h, self.pad_w, self.kernel_h, self.kernel_w)
        self.ceil_mode = p.round_mode == caffe_pb2.PoolingParameter.CEIL
        self._key = None
        self._warned_input = None       # the input size last warned about (windows past it)

    def reshape(self, bottom, top):
        N, C, H, W = nchw(self, bottom[0])
        if self.global_pooling:
            self.kernel_h, self.kernel_w = H, W
        any_pad = bool(self.pad_h or self.pad_w)
        OH = pooled_size(H, self.kernel_h, self.stride_h, self.pad_h, self.ceil_mode, any_pad)
        OW = pooled_size(W, self.kernel_w, self.stride_w, self.pad_w, self.ceil_mode, any_pad)
        if OH <= 0 or OW <= 0:
            raise self.error("the pooled output would be empty: a %dx%d input with kernel "
                             "%dx%d, stride %dx%d and pad %dx%d", H, W, self.kernel_h,
                             self.kernel_w, self.stride_h, self.stride_w, self.pad_h, self.pad_w)
        for t in top:
            t.reshape(N, C, OH, OW)
        self._shape = (N * C, H, W, OH, OW)
        self._plan()

    def _warn_windows_past_input(self, H, W, OH, OW):
        """Rounding up without padding can start a last row or column of windows past the
        input (a 3-pixel input, kernel 1, stride 3: two outputs). Caffe keeps such windows,
        which cover no pixel: it gives them -FLT_MAX (MAX) or 0 divided by a window size of 0
        or less, NaN or -0 (AVE), and so does caffepy; say so once per input size, as it is
        rarely what the net's author meant."""
        past = [what for what, out, stride, size, pad in (
            ("row", OH, self.stride_h, H, self.pad_h),
            ("column", OW, self.stride_w, W, self.pad_w)) if (out - 1) * stride >= size + pad]
        if not past or self._warned_input == (H, W):
            return
        self._warned_input = (H, W)
        log.warning("Layer '%s' (Pooling): the last %s of windows %s past the %dx%d input "
                    "(kernel %dx%d, stride %dx%d, pad %dx%d, output %dx%d rounded up as in "
                    "Caffe): those outputs cover no pixel; as in Caffe they are -FLT_MAX for "
                    "MAX pooling and 0 divided by a window size of 0 or less (NaN or -0) for "
                    "AVE", self.name, " and the last ".join(past),
                    "starts" if len(past) == 1 else "start", H,
                    W, self.kernel_h, self.kernel_w, self.stride_h, self.stride_w, self.pad_h,
                    self.pad_w, OH, OW)

    def _plan(self):
        """One Pool2D per range of planes: the planes are independent, so the ranges run side
        by side on the cores (caffepy.parallel_chunks) and give the same bits as one kernel.
        STOCHASTIC pooling draws its random numbers for the whole top: one kernel."""
        nc, H, W, OH, OW = self._shape
        nparts = 1
        if self.xp is np and self.method in (_MAX, _AVE):
            work = 4 * nc * H * W
            if self.method == _MAX and reads_image(
                    self.kernel_h, self.kernel_w, self.stride_h, self.stride_w, self.pad_h,
                    self.pad_w, H, W, OH, OW) and compiled.kernels() is not None:
                # one pass over the image: as long as the other kernels take over a quarter
                # of it (LeNet's pool1, 2.9 MB, runs faster on one thread than on two)
                work //= 4
            nparts = parallel_chunks.parts_for(work, nc)
        key = (nc, H, W, self.kernel_h, self.kernel_w, OH, OW, nparts, self.xp)
        if key != self._key:
            self._key = key
            self._warn_windows_past_input(H, W, OH, OW)
            self._ranges = parallel_chunks.split(nc, nparts)
            self.kerns = [Pool2D(self.xp, b - a, H, W, self.kernel_h, self.kernel_w,
                                 self.stride_h, self.stride_w, self.pad_h, self.pad_w, OH, OW)
                          for a, b in self._ranges]
            self.kern = self.kerns[0]

    def forward_impl(self, bottom, top):
        nc, H, W, OH, OW = self._shape
        x = bottom[0].data.reshape(nc, H, W)
        y = top[0].data.reshape(nc, OH, OW)
        mask = top[1].data.reshape(nc, OH, OW) if len(top) > 1 else None
        if len(self.kerns) == 1:
            _PoolRunner.forward(self, self.kern, self.method, x, y, mask)
            return
        ranges, kerns, method = self._ranges, self.kerns, self.method

        def part(p):
            a, b = ranges[p]
            _PoolRunner.forward(self, kerns[p], method, x[a:b], y[a:b],
                                None if mask is None else mask[a:b])
        parallel_chunks.run(part, len(kerns))

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # the kernels of the forward pass (reshape made them): MAX's winners are kept there
        nc, H, W, OH, OW = self._shape
        dy = top[0].diff.reshape(nc, OH, OW)
        dx = bottom[0].diff.reshape(nc, H, W)
        if len(self.kerns) == 1:
            _PoolRunner.backward(self.kern, self.method, dy, dx)
            return
        ranges, kerns, method = self._ranges, self.kerns, self.method

        def part(p):
            a, b = ranges[p]
            _PoolRunner.backward(kerns[p], method, dy[a:b], dx[a:b])
        parallel_chunks.run(part, len(kerns))


# -- SPP ------------------------------------------------------------------------------------

@register_layer("SPP")
class SPPLayer(Layer):
    """Spatial pyramid pooling: level l pools into 2^l × 2^l bins (kernel ceil(H/bins), pad
    (kernel·bins − H + 1)/2, stride = kernel); the levels are flattened and concatenated
    (a single level gives the N×C×1×1 pooled blob itself, as in Caffe)."""
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.spp_param
        self.height = int(p.pyramid_height)
        if self.height < 1:
            raise self.error("pyramid_height must be at least 1 (set spp_param "
                             "{ pyramid_height: ... })")
        self.method = p.pool
        self._key = None

    def reshape(self, bottom, top):
        N, C, H, W = nchw(self, bottom[0])
        key = (N, C, H, W)
        if key != self._key:
            self._key = key
            self.levels = []
            off = 0
            for level in range(self.height):
                bins = 2 ** level
                kh = -(-H // bins)
                kw = -(-W // bins)
                ph = (kh * bins - H + 1) // 2
                pw = (kw * bins - W + 1) // 2
                if ph >= kh or pw >= kw:
                    raise self.error("pyramid level %d needs pad (%d, %d) smaller than its kernel "
                                     "(%d, %d) for a %dx%d input: the input is too small for "
                                     "pyramid_height %d", level, ph, pw, kh, kw, H, W, self.height)
                OH = pooled_size(H, kh, kh, ph, True, bool(ph or pw))
                OW = pooled_size(W, kw, kw, pw, True, bool(ph or pw))
                kern = Pool2D(self.xp, N * C, H, W, kh, kw, kh, kw, ph, pw, OH, OW)
                size = C * OH * OW
                self.levels.append((kern, OH, OW, off, size))
                off += size
            self.total = off
            self._out = [self.xp.empty((N * C, OH, OW), dtype=np.float32)
                         for (_, OH, OW, _, _) in self.levels]
            self._dx = None
        if self.height == 1:
            _, OH, OW, _, _ = self.levels[0]
            top[0].reshape(N, C, OH, OW)
        else:
            top[0].reshape(N, self.total)

    def forward_impl(self, bottom, top):
        N, C, H, W = self._key
        x = bottom[0].data.reshape(N * C, H, W)
        y = top[0].data.reshape(N, -1)
        for (kern, OH, OW, off, size), out in zip(self.levels, self._out):
            _PoolRunner.forward(self, kern, self.method, x, out)
            y[:, off:off + size] = out.reshape(N, size)

    def backward_impl(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        N, C, H, W = self._key
        dy = top[0].diff.reshape(N, -1)
        dx = bottom[0].diff.reshape(N * C, H, W)
        for li, (kern, OH, OW, off, size) in enumerate(self.levels):
            g = xp.ascontiguousarray(dy[:, off:off + size]).reshape(N * C, OH, OW)
            if li == 0:
                _PoolRunner.backward(kern, self.method, g, dx)
            else:
                if self._dx is None:
                    self._dx = xp.empty((N * C, H, W), dtype=np.float32)
                _PoolRunner.backward(kern, self.method, g, self._dx)
                dx += self._dx       # the internal Split layer sums the levels in order
