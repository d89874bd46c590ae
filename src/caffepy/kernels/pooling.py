"""2-D max / average / stochastic pooling over a batch of planes, with Caffe's exact rules.

Caffe's window for output (ph, pw) starts at hstart = ph·s − p. MAX scans the window clamped to
the image in row-major order with a strict ``>`` from −FLT_MAX, so the *first* maximal element
wins; AVE sums the clamped window (in row-major order) and divides by the size of the window
clamped only to [−p, H+p).

How it is vectorised (and why). Working on the (N·C, H, W) planes directly means every
strided slice has rows of only W/s elements, and NumPy's per-row overhead dominates. So the
input is first split once into its s_h × s_w *stride phases*, each a zero/−∞ padded grid of
shape (N·C, Hq, Wq) with Hq = OH + (k_h−1)//s_h (Wq likewise). In that layout kernel position
(kh, kw) is phase (kh % s_h, kw % s_w) read at a *flat* shift of (kh//s_h)·Wq + kw//s_w from
the output grid, so each of the k_h·k_w window steps is ONE contiguous 1-D operation over the
whole batch. Grid cells outside [0, OH) × [0, OW) hold garbage and are never read back.
Cells of a phase grid that fall outside the image hold −∞ (MAX: padding never wins) or 0 (AVE).

MAX keeps, per output, the number j of the winning kernel position (first position equal to
the maximum, i.e. Caffe's first-maximum rule) as a small integer "code"; the backward pass
turns codes into flat input indices and scatters the top diff in one ``add.at``.
"""
import numpy as np

FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)


def pooled_size(in_size, kernel, stride, pad, ceil_mode=True, any_pad=None):
    """Caffe's pooled output size: CEIL or FLOOR rounding, then, if the layer has any padding
    (``any_pad``: pad_h or pad_w, default this axis's pad), drop a last window that would start
    in the padding."""
    num = in_size + 2 * pad - kernel
    out = (-(-num // stride) if ceil_mode else num // stride) + 1
    if any_pad is None:
        any_pad = pad > 0
    if any_pad and (out - 1) * stride >= in_size + pad:
        out -= 1
    return out


def scatter_add(xp, target_flat, index, values):
    """target_flat[index] += values, summing repeated indices (NumPy or CuPy)."""
    if xp is np:
        np.add.at(target_flat, index, values)
    elif hasattr(xp.add, "at"):  # pragma: no cover - GPU only: CuPy >= 12 has ufunc.at
        xp.add.at(target_flat, index, values)
    else:  # pragma: no cover - older CuPy
        _legacy_scatter_add()(target_flat, index, values)


_cupyx_scatter_add = None       # CuPy < 12: cupyx.scatter_add, looked up once


def _legacy_scatter_add():  # pragma: no cover - older CuPy
    global _cupyx_scatter_add
    if _cupyx_scatter_add is None:
        import cupyx
        _cupyx_scatter_add = cupyx.scatter_add
    return _cupyx_scatter_add


def _phase_range(size, grid, phase, stride, pad):
    """Grid cells i (< grid) whose image position i·stride + phase − pad lies in [0, size)."""
    off = phase - pad
    lo = (-off + stride - 1) // stride if off < 0 else 0
    last = size - 1 - off
    if last < 0:
        return 0, 0, 0
    hi = min(grid, last // stride + 1)
    if hi <= lo:
        return 0, 0, 0
    return lo, hi, lo * stride + off


class Pool2D:
    """Geometry and buffers for pooling ``nc`` planes of H×W into OH×OW outputs.

    Build one per (shape, parameters) in a layer's reshape; call ``forward_max`` /
    ``forward_ave`` / ``forward_stochastic`` and the matching backward.
    """

    def __init__(self, xp, nc, H, W, kh, kw, sh, sw, ph, pw, OH, OW):
        self.xp = xp
        self.nc, self.H, self.W = nc, H, W
        self.kh, self.kw, self.sh, self.sw, self.ph, self.pw = kh, kw, sh, sw, ph, pw
        self.OH, self.OW = OH, OW
        # The whole plane is one window (global pooling, SPP level 0): plain reductions.
        self.global_like = (OH == 1 and OW == 1 and ph == 0 and pw == 0 and kh >= H and kw >= W)
        self.K = kh * kw
        self.code_dtype = np.uint8 if self.K < 255 else np.int32
        self.NOT_FOUND = 255 if self.K < 255 else self.K
        # Host tables: kernel position j -> offset (kh·W + kw) inside the plane; window origin.
        table = np.zeros(self.NOT_FOUND + 1, dtype=np.int64)
        jj = np.arange(self.K)
        table[:self.K] = (jj // kw) * W + (jj % kw)
        self._table = xp.asarray(table)
        base = ((np.arange(OH) * sh - ph)[:, None] * W + (np.arange(OW) * sw - pw)[None, :])
        self._base = xp.asarray(base.astype(np.int64))
        self._planes = xp.asarray((np.arange(nc, dtype=np.int64) * (H * W)).reshape(nc, 1, 1))
        # AVE divisor: the window clamped to [-p, H+p) (before clamping to the image).
        hs = np.arange(OH) * sh - ph
        he = np.minimum(hs + kh, H + ph)
        ws = np.arange(OW) * sw - pw
        we = np.minimum(ws + kw, W + pw)
        self._divisor = xp.asarray(((he - hs)[:, None] * (we - ws)[None, :]).astype(np.float32))
        self._buffers = {}
        self._code_valid = False
        self.Hq = OH + (kh - 1) // sh
        self.Wq = OW + (kw - 1) // sw
        self.grid_size = nc * self.Hq * self.Wq
        # kernel positions in row-major order: (j, phase, flat shift)
        self.offsets = []
        phases = []
        maxshift = 0
        for i in range(kh):
            for k in range(kw):
                phase = (i % sh, k % sw)
                shift = (i // sh) * self.Wq + (k // sw)
                maxshift = max(maxshift, shift)
                self.offsets.append((i * kw + k, phase, shift))
                if phase not in phases:
                    phases.append(phase)
        self.L = self.grid_size - maxshift
        # For each phase grid: the grid box and the strided image box it copies.
        self.phases = {}
        for a, b in phases:
            ilo, ihi, h0 = _phase_range(H, self.Hq, a, sh, ph)
            jlo, jhi, w0 = _phase_range(W, self.Wq, b, sw, pw)
            if ihi > ilo and jhi > jlo:
                dst = (slice(None), slice(ilo, ihi), slice(jlo, jhi))
                src = (slice(None), slice(h0, h0 + (ihi - ilo - 1) * sh + 1, sh),
                       slice(w0, w0 + (jhi - jlo - 1) * sw + 1, sw))
            else:
                dst = src = None
            self.phases[(a, b)] = (dst, src)
        # Does every image pixel belong to a phase grid cell? (else dx needs zeroing first)
        covered = 0
        for dst, src in self.phases.values():
            if dst is not None:
                covered += (dst[1].stop - dst[1].start) * (dst[2].stop - dst[2].start)
        self.covers_image = covered == H * W

    # -- buffers ---------------------------------------------------------------------------
    def _buf(self, name, shape, dtype, fill=None):
        b = self._buffers.get(name)
        if b is None:
            b = self.xp.empty(shape, dtype=dtype)
            if fill is not None:
                b.fill(fill)
            self._buffers[name] = b
        return b

    def _phase_grids(self, x, fill):
        """Copy x (nc, H, W) into the phase grids (padding cells hold ``fill``)."""
        grids = {}
        for ab, (dst, src) in self.phases.items():
            g = self._buf(("phase", ab, fill), (self.nc, self.Hq, self.Wq), np.float32, fill)
            if dst is not None:
                g[dst] = x[src]
            grids[ab] = g.reshape(-1)
        return grids

    def _grid(self, name, fill=None):
        return self._buf(name, (self.grid_size,), np.float32, fill)

    def _valid(self, flat):
        """The (nc, OH, OW) output box of a flat grid."""
        return flat.reshape(self.nc, self.Hq, self.Wq)[:, :self.OH, :self.OW]

    # -- MAX -------------------------------------------------------------------------------
    def forward_max(self, x, top, mask=None):
        """x: (nc, H, W); top: (nc, OH, OW); mask (optional): (nc, OH, OW) gets h·W + w as float."""
        xp = self.xp
        if self.global_like:
            xr = x.reshape(self.nc, self.H * self.W)
            idx = xp.argmax(xr, axis=1)
            m = xp.take_along_axis(xr, idx[:, None], axis=1)[:, 0]
            found = m >= -FLT_MAX       # Caffe starts at -FLT_MAX: nothing below it wins
            top.reshape(self.nc)[...] = xp.where(found, m, -FLT_MAX)
            self._gidx = xp.where(found, idx, -1)
            if mask is not None:
                mask.reshape(self.nc)[...] = self._gidx
            return
        grids = self._phase_grids(x, -np.inf)
        g = self._grid("max")
        g.fill(-FLT_MAX)
        L = self.L
        gl = g[:L]
        for j, ab, shift in self.offsets:
            # fmax ignores NaN, as Caffe's strict '>' scan does.
            xp.fmax(gl, grids[ab][shift:shift + L], out=gl)
        top[...] = self._valid(g)
        self._grids = grids
        self._code_valid = False
        if mask is not None:
            self._compute_code()
            code = self._valid(self._code)
            m = xp.take(self._table, code) + self._base
            mask[...] = xp.where(code == self.NOT_FOUND, -1, m)

    def _compute_code(self):
        """code = number of the first kernel position whose value equals the max (or NOT_FOUND)."""
        if self._code_valid:
            return
        xp = self.xp
        g = self._buffers["max"]
        L = self.L
        code = self._buf("code", (self.grid_size,), self.code_dtype)
        cand = self._buf("cand", (L,), self.code_dtype)
        eq = self._buf("eq", (L,), np.bool_)
        code.fill(self.NOT_FOUND)
        cl = code[:L]
        nf = self.NOT_FOUND
        for j, ab, shift in self.offsets:
            xp.equal(self._grids[ab][shift:shift + L], g[:L], out=eq)
            # cand = j where equal, NOT_FOUND elsewhere; keep the smallest j.
            xp.multiply(eq.view(np.uint8) if self.code_dtype == np.uint8 else eq,
                        nf - j, out=cand)
            xp.subtract(nf, cand, out=cand)
            xp.minimum(cl, cand, out=cl)
        self._code = code
        self._code_valid = True

    def backward_max(self, dy, dx):
        """dy: (nc, OH, OW) -> dx: (nc, H, W) (overwritten)."""
        xp = self.xp
        dx[...] = 0
        if self.global_like:
            idx = self._gidx
            ok = idx >= 0
            flat = self._planes.reshape(-1) + xp.where(ok, idx, 0)
            vals = xp.where(ok, dy.reshape(self.nc), 0).astype(np.float32)
            dx.reshape(-1)[flat] += vals
            return
        self._compute_code()
        self._scatter_code(dy, dx)

    def _scatter_code(self, dy, dx):
        xp = self.xp
        code = self._valid(self._code)
        index = xp.take(self._table, code)
        index += self._base
        index += self._planes
        vals = dy
        missing = code == self.NOT_FOUND
        if bool(missing.any()):
            # no element won (empty window, or all -inf/NaN): Caffe's mask is -1; skip it
            vals = xp.where(missing, 0, dy).astype(np.float32)
            index = xp.where(missing, 0, index)
        scatter_add(xp, dx.reshape(-1), index.reshape(-1), xp.ascontiguousarray(vals).reshape(-1))

    # -- AVE -------------------------------------------------------------------------------
    def forward_ave(self, x, top):
        xp = self.xp
        if self.global_like:
            s = x.reshape(self.nc, self.H * self.W).sum(axis=1, dtype=np.float32)
            xp.divide(s, self._divisor.reshape(()), out=top.reshape(self.nc))
            return
        grids = self._phase_grids(x, 0.0)
        g = self._grid("sum")
        g.fill(0)
        L = self.L
        gl = g[:L]
        for j, ab, shift in self.offsets:
            gl += grids[ab][shift:shift + L]
        xp.divide(self._valid(g), self._divisor, out=top)

    def backward_ave(self, dy, dx):
        xp = self.xp
        if self.global_like:
            dx[...] = (dy.reshape(self.nc) / self._divisor.reshape(()))[:, None, None]
            return
        gg = self._grid("ave_dy", 0.0)             # zero outside the output box, always
        xp.divide(dy, self._divisor, out=self._valid(gg))
        self._spread(gg, dx)

    def _spread(self, gg, dx):
        """dx[window of each output] += gg (through the phase grids); overwrites dx."""
        L = self.L
        dgrids = {}
        for ab in self.phases:
            d = self._buf(("dphase", ab), (self.grid_size,), np.float32)
            d.fill(0)
            dgrids[ab] = d
        src = gg[:L]
        for j, ab, shift in self.offsets:
            d = dgrids[ab][shift:shift + L]
            d += src
        if not self.covers_image:
            dx[...] = 0
        for ab, (dst, srcsl) in self.phases.items():
            if dst is not None:
                dx[srcsl] = dgrids[ab].reshape(self.nc, self.Hq, self.Wq)[dst]

    # -- STOCHASTIC (Caffe implements it on the GPU only) -----------------------------------
    def forward_stochastic(self, x, top, train, uniform):
        """TRAIN: pick a window element with probability ∝ its value (``uniform``: U[0,1) per
        output); TEST: Σx²/Σx over the window (sum started at FLT_MIN)."""
        xp = self.xp
        grids = self._phase_grids(x, 0.0)
        L = self.L
        total = self._grid("sto_sum")
        total.fill(FLT_MIN if not train else 0.0)
        tl = total[:L]
        if not train:
            sq = self._grid("sto_sq")
            sq.fill(0)
            sql = sq[:L]
            for j, ab, shift in self.offsets:
                v = grids[ab][shift:shift + L]
                tl += v
                sql += v * v
            xp.divide(self._valid(sq), self._valid(total), out=top)
            return
        for j, ab, shift in self.offsets:
            tl += grids[ab][shift:shift + L]
        thres = self._grid("sto_thres")
        thres.fill(np.inf)
        self._valid(thres)[...] = uniform * self._valid(total)
        cum = self._grid("sto_cum")
        cum.fill(0)
        code = self._buf("code", (self.grid_size,), self.code_dtype)
        code.fill(self.NOT_FOUND)
        val = self._grid("sto_val")
        val.fill(0)
        found = self._buf("sto_found", (L,), np.bool_)
        found.fill(False)
        cl, vl = cum[:L], val[:L]
        for j, ab, shift in self.offsets:
            v = grids[ab][shift:shift + L]
            cl += v
            hit = (cl >= thres[:L]) & ~found
            xp.copyto(code[:L], j, where=hit)
            xp.copyto(vl, v, where=hit)
            found |= hit
        top[...] = self._valid(val)
        self._code = code
        self._code_valid = True

    def backward_stochastic(self, dy, dx):
        dx[...] = 0
        self._scatter_code(dy, dx)
