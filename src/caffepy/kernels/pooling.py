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
The window steps run over blocks of CHUNK grid cells (every step for one block, then the
next), so a block's phase-grid cells are read from cache rather than from memory K times.

MAX keeps, per output, which kernel position won as a small unsigned "code" (uint8 for windows
up to 255 pixels of offset): code = NF − (i·W + k) for the winning position (i, k), where i·W + k
is the winner's offset from the window origin inside the plane and NF is one more than the
largest offset, and 0 when nothing wins. The winner is the first position (row-major) equal to
the maximum, which is Caffe's first-maximum rule; as offsets grow with the position, it is the
position with the largest code, so the code is a running ``maximum`` of two small-integer passes
per position. The backward pass turns codes into flat input indices with one subtraction from a
table made at reshape ((plane, window origin) + NF) and scatters the top diff in one ``add.at``,
which adds repeated indices in array order, i.e. in Caffe's order (outputs in row-major order).

With numba installed (and ``CAFFEPY_COMPILED`` not "0"), MAX and AVE run compiled kernels
(caffepy.kernels.compiled) instead: they build the same phase grids a block of planes at a time,
so a block stays in cache while every window step reads it (2 x 2 MAX windows with stride 2 and
no padding need no grids: that kernel reads each window's four pixels from the image). MAX finds
each maximum and its code in the same pass (Caffe's strict '>' scan) and its backward scatters
from the codes in Caffe's order. Same codes, same sums in the same order, so the same bits (a
zero maximum may differ in sign: fmax does not promise which of -0 and +0 it keeps, the scan
keeps the first, as Caffe).
"""
import numpy as np

from . import compiled

FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)
CHUNK = 1 << 16        # grid cells per block of the window-step loops (a few 100 KiB per array)
COMPILED_BLOCK = 2048  # grid cells per block of the compiled MAX forward (its work rows: ~40 KiB)


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


def _covering_outputs(size, out, stride, offset):
    """[lo, hi): the outputs o whose input o·stride + offset lies in range(size)."""
    lo = min(out, (-offset + stride - 1) // stride) if offset < 0 else 0
    hi = out
    while hi > lo and (hi - 1) * stride + offset >= size:
        hi -= 1
    return lo, hi


def _nan_ignoring_max(xp, a):
    """The max of each row of ``a`` ignoring NaN (NaN for an all-NaN row), without warnings."""
    if xp is np:
        return np.fmax.reduce(a, axis=1)
    return xp.nanmax(a, axis=1)  # pragma: no cover - GPU only


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


def reads_image(kh, kw, sh, sw, ph, pw, H, W, OH, OW):
    """Whether the compiled MAX forward reads the image itself (compiled.maxpool2_forward):
    2 x 2 windows, stride 2, no padding, every pixel in at most one window."""
    return (kh == kw == sh == sw == 2 and ph == pw == 0
            and OH in (H // 2, (H + 1) // 2) and OW in (W // 2, (W + 1) // 2))


class Pool2D:
    """Geometry and buffers for pooling ``nc`` planes of H×W into OH×OW outputs.

    Build one per (shape, parameters) in a layer's reshape; call ``forward_max`` /
    ``forward_ave`` / ``forward_stochastic`` and the matching backward.
    """

    def __init__(self, xp, nc, H, W, kh, kw, sh, sw, ph, pw, OH, OW, use_compiled=None):
        self.xp = xp
        self.nc, self.H, self.W = nc, H, W
        self.kh, self.kw, self.sh, self.sw, self.ph, self.pw = kh, kw, sh, sw, ph, pw
        self.OH, self.OW = OH, OW
        # The whole plane is one window (global pooling, SPP level 0): plain reductions.
        self.global_like = (OH == 1 and OW == 1 and ph == 0 and pw == 0 and kh >= H and kw >= W)
        self.K = kh * kw
        # Codes: NF - (offset of the winner from the window origin), 0 = no winner.
        jj = np.arange(self.K)
        offset = (jj // kw) * W + (jj % kw)
        self.NF = int(offset[-1]) + 1
        self.code_dtype = (np.uint8 if self.NF <= 0xFF else
                           np.uint16 if self.NF <= 0xFFFF else np.uint32)
        self._cand = [self.code_dtype(self.NF - int(o)) for o in offset]
        # window origin (h·W + w, may be negative) of each output, and + NF
        base = ((np.arange(OH) * sh - ph)[:, None] * W + (np.arange(OW) * sw - pw)[None, :])
        self._base_nf = base.astype(np.int64) + self.NF
        self._base_nf_x = xp.asarray(self._base_nf)
        self._index_base = None       # plane·H·W + origin + NF, made at the first backward
        self._plane_starts = xp.arange(nc, dtype=np.int64) * (H * W)
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
        self.maxshift = maxshift
        self.phase_index = {ab: n for n, ab in enumerate(phases)}
        self.chunks = [(c, min(c + CHUNK, self.L)) for c in range(0, self.L, CHUNK)]
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
        # The compiled MAX backward (NumPy arrays only; None: the NumPy code below).
        # use_compiled: None = compiled.kernels() (numba when installed and not turned off),
        # False = never, or a namespace of kernels with compiled.py's signatures.
        self._compiled = None
        if xp is np and not self.global_like and use_compiled is not False:
            self._compiled = compiled.kernels() if use_compiled is None else use_compiled
        # MAX with uint32 codes (offsets past 65535) stays NumPy
        self._compiled_max = self._compiled if self.code_dtype != np.uint32 else None
        # 2 x 2 windows, stride 2, no padding (every pixel in one window): the compiled MAX
        # forward reads the image itself (compiled.maxpool2_forward), no phase grids
        self._max2 = reads_image(kh, kw, sh, sw, ph, pw, H, W, OH, OW)
        if self._compiled is not None:
            self._c_phase = np.array([self.phase_index[ab] for _, ab, _ in self.offsets],
                                     dtype=np.int64)
            self._c_shift = np.array([shift for _, _, shift in self.offsets], dtype=np.int64)
            self._c_cand = np.array(self._cand, dtype=np.int32)
            boxes = np.zeros((len(phases), 7), dtype=np.int64)
            boxes[:, 6] = -1
            for ab, (dst, src) in self.phases.items():
                if dst is not None:
                    boxes[self.phase_index[ab], :6] = (dst[1].start, dst[1].stop, src[1].start,
                                                       dst[2].start, dst[2].stop, src[2].start)
            if sw == 2:
                # a row's two column phases are copied in one pass (compiled._copy_phase_grids):
                # grid column c holds pixel 2c − pw of the first, 2c − pw + 1 of the second
                for a in range(sh):
                    f, g = self.phase_index.get((a, 0)), self.phase_index.get((a, 1))
                    if (f is not None and g is not None and self.phases[(a, 0)][0] is not None
                            and self.phases[(a, 1)][0] is not None):
                        boxes[f, 6], boxes[g, 6] = g, -2
            self._c_boxes = boxes
            plane = self.Hq * self.Wq
            self._c_block = max(1, COMPILED_BLOCK // plane)       # planes per block
            self._c_geom = np.array([sh, sw, self.Hq, self.Wq, self._c_block,
                                     int(self.covers_image)], dtype=np.int64)

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
        """Copy x (nc, H, W) into the phase grids (padding cells hold ``fill``); one
        (phases, grid cells) buffer per fill value, a dict phase -> its flat row."""
        stack = self._buf(("phases", fill), (len(self.phases), self.grid_size), np.float32, fill)
        grids = {}
        for ab, (dst, src) in self.phases.items():
            g = stack[self.phase_index[ab]]
            if dst is not None:
                g.reshape(self.nc, self.Hq, self.Wq)[dst] = x[src]
            grids[ab] = g
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
            self._forward_max_global(x, top, mask)
            return
        if self._compiled_max is not None and x.flags.c_contiguous and top.flags.c_contiguous:
            self._forward_max_compiled(x, top)
        else:
            grids = self._phase_grids(x, -np.inf)
            g = self._grid("max")
            g.fill(-FLT_MAX)
            for c0, c1 in self.chunks:
                gl = g[c0:c1]
                for j, ab, shift in self.offsets:
                    # fmax ignores NaN, as Caffe's strict '>' scan does.
                    xp.fmax(gl, grids[ab][c0 + shift:c1 + shift], out=gl)
            top[...] = self._valid(g)
            self._grids = grids
            self._code_valid = False
        if mask is not None:
            code = self._winner_codes()
            m = self._base_nf_x - code.astype(np.int64)
            mask[...] = xp.where(code == 0, -1, m)

    def _forward_max_compiled(self, x, top):
        """The maxima and the winners' codes in one compiled pass (kernels/compiled.py)."""
        code = self._buf("c_code", (self.nc, self.OH, self.OW), self.code_dtype)
        if self._max2:
            self._compiled_max.maxpool2_forward(x, top, code)
        else:
            block = self._c_block * self.Hq * self.Wq
            grids = self._buf("c_grids", (len(self.phases), block + self.maxshift), np.float32,
                              -np.inf)
            self._compiled_max.maxpool_forward(
                x, top, code, grids, self._buf("c_best", (block,), np.float32),
                self._buf("c_wins", (block,), np.int32), self._c_phase, self._c_shift,
                self._c_cand, self._c_boxes, self._c_geom)
        self._code_box = code
        self._code_valid = True

    def _forward_max_global(self, x, top, mask):
        """One window per plane: a NaN-ignoring max, then the first pixel equal to it."""
        xp = self.xp
        xr = x.reshape(self.nc, self.H * self.W)
        m = _nan_ignoring_max(xp, xr)
        eq = self._buf("global_eq", xr.shape, np.bool_)
        xp.equal(xr, m[:, None], out=eq)
        found = m > -FLT_MAX        # Caffe starts at -FLT_MAX with '>': nothing at or below wins
        top.reshape(self.nc)[...] = xp.where(found, m, -FLT_MAX)
        self._gidx = xp.where(found, xp.argmax(eq, axis=1), -1)
        if mask is not None:
            mask.reshape(self.nc)[...] = self._gidx

    def _winner_codes(self):
        """(nc, OH, OW) codes of the last forward's winners (computed now after a NumPy one)."""
        if not self._code_valid:
            self._compute_code()
        return self._code_box

    def _compute_code(self):
        """code = NF - offset of the first kernel position whose value equals the max (0: none)."""
        if self._code_valid:
            return
        xp = self.xp
        g = self._buffers["max"]
        L = self.L
        code = self._buf("code", (self.grid_size,), self.code_dtype)
        cand = self._buf("cand", (min(L, CHUNK),), self.code_dtype)
        eq = self._buf("eq", (L,), np.bool_)
        eq8 = eq.view(np.uint8)
        code.fill(0)
        for c0, c1 in self.chunks:
            cl, gl = code[c0:c1], g[c0:c1]
            e, e8, cd = eq[:c1 - c0], eq8[:c1 - c0], cand[:c1 - c0]
            for j, ab, shift in self.offsets:
                xp.equal(self._grids[ab][c0 + shift:c1 + shift], gl, out=e)
                xp.multiply(e8, self._cand[j], out=cd)     # candidate where equal, else 0
                xp.maximum(cl, cd, out=cl)                 # the largest code = the first position
        cl, gl = code[:L], g[:L]
        if float(gl.min()) <= -FLT_MAX:
            # a window whose max stayed at -FLT_MAX has no winner (an input equal to -FLT_MAX
            # does not beat Caffe's starting value)
            xp.greater(gl, -FLT_MAX, out=eq)
            xp.multiply(cl, eq8, out=cl)
        self._code_box = self._valid(code)
        self._code_valid = True

    def backward_max(self, dy, dx):
        """dy: (nc, OH, OW) -> dx: (nc, H, W) (overwritten)."""
        xp = self.xp
        if self.global_like:
            dx[...] = 0
            idx = self._gidx
            ok = idx >= 0
            flat = self._plane_starts + xp.where(ok, idx, 0)
            vals = xp.where(ok, dy.reshape(self.nc), 0).astype(np.float32)
            dx.reshape(-1)[flat] += vals
            return
        code = self._winner_codes()
        if (self._compiled_max is not None and code.flags.c_contiguous
                and dy.flags.c_contiguous and dx.flags.c_contiguous):
            self._compiled_max.maxpool_backward(code, dy, self._base_nf,
                                                dx.reshape(self.nc, -1))
            return
        dx[...] = 0
        if xp is np:
            self._scatter_code(dy, dx)
        else:
            self._gather_code(dy, dx)

    def _gather_code(self, dy, dx):
        """dx (zeroed) += dy at each output's winner, as a gather over kernel positions (the
        device path): position (kh, kw) adds, at once for every window, the top diffs of the
        windows it won into the pixels it covers — a strided slice of dx, no pixel twice. The
        positions go in reverse row-major order, so each pixel receives its windows in
        row-major output order, Caffe's order (its CPU loop and its GPU kernel alike): the same
        bits as _scatter_code, with no atomic adds whose order varies between runs."""
        xp = self.xp
        code = self._winner_codes()
        term = self._buf("gather_term", (self.nc, self.OH, self.OW), np.float32)
        hit = self._buf("gather_hit", (self.nc, self.OH, self.OW), np.bool_)
        for i in reversed(range(self.kh)):
            oh0, oh1 = _covering_outputs(self.H, self.OH, self.sh, i - self.ph)
            for k in reversed(range(self.kw)):
                ow0, ow1 = _covering_outputs(self.W, self.OW, self.sw, k - self.pw)
                if oh1 <= oh0 or ow1 <= ow0:
                    continue
                box = (slice(None), slice(oh0, oh1), slice(ow0, ow1))
                t, h = term[box], hit[box]
                xp.equal(code[box], self._cand[i * self.kw + k], out=h)
                t.fill(0)
                xp.copyto(t, dy[box], where=h)
                ih0, iw0 = oh0 * self.sh + i - self.ph, ow0 * self.sw + k - self.pw
                dxv = dx[:, ih0:ih0 + (oh1 - oh0 - 1) * self.sh + 1:self.sh,
                         iw0:iw0 + (ow1 - ow0 - 1) * self.sw + 1:self.sw]
                dxv += t

    def _scatter_code(self, dy, dx):
        """dx (zeroed) += dy at each output's winner, in Caffe's order."""
        xp = self.xp
        code = self._winner_codes()
        if self._index_base is None:
            self._index_base = self._plane_starts.reshape(-1, 1, 1) + self._base_nf_x
        index = self._buf("index", (self.nc, self.OH, self.OW), np.int64)
        xp.subtract(self._index_base, code, out=index)
        vals = dy
        if int(code.min()) == 0:
            # no element won (empty window, or all -inf/NaN/-FLT_MAX): Caffe's mask is -1;
            # skip it
            missing = code == 0
            vals = xp.where(missing, 0, dy).astype(np.float32)
            index = xp.where(missing, 0, index)
        scatter_add(xp, dx.reshape(-1), index.reshape(-1), xp.ascontiguousarray(vals).reshape(-1))

    # -- AVE -------------------------------------------------------------------------------
    def forward_ave(self, x, top):
        xp = self.xp
        if self.global_like:
            # a running sum gives Caffe's order (pixel after pixel), which sum() does not
            xr = x.reshape(self.nc, self.H * self.W)
            acc = self._buf("global_acc", xr.shape, np.float32)
            xp.cumsum(xr, axis=1, out=acc)
            xp.divide(acc[:, -1], self._divisor.reshape(()), out=top.reshape(self.nc))
            return
        if self._compiled is not None and x.flags.c_contiguous and top.flags.c_contiguous:
            block = self._c_block * self.Hq * self.Wq
            self._compiled.avepool_forward(
                x, top, self._divisor,
                self._buf("c_grids0", (len(self.phases), block + self.maxshift), np.float32, 0),
                self._buf("c_acc", (block,), np.float32), self._c_phase, self._c_shift,
                self._c_boxes, self._c_geom)
            return
        grids = self._phase_grids(x, 0.0)
        g = self._grid("sum")
        g.fill(0)
        for c0, c1 in self.chunks:
            gl = g[c0:c1]
            for j, ab, shift in self.offsets:      # Caffe's order: the window row by row
                gl += grids[ab][c0 + shift:c1 + shift]
        xp.divide(self._valid(g), self._divisor, out=top)

    def backward_ave(self, dy, dx):
        xp = self.xp
        if self.global_like:
            dx[...] = (dy.reshape(self.nc) / self._divisor.reshape(()))[:, None, None]
            return
        if self._compiled is not None and dy.flags.c_contiguous and dx.flags.c_contiguous:
            block = self._c_block * self.Hq * self.Wq
            self._compiled.avepool_backward(
                dy, dx, self._divisor,
                self._buf("c_dgrids", (len(self.phases), block + self.maxshift), np.float32),
                self._buf("c_spread", (block,), np.float32), self._c_phase, self._c_shift,
                self._c_boxes, self._c_geom)
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
        # A pixel takes the diffs of the outputs whose windows hold it in Caffe's order, outputs
        # in row-major order, which is kernel positions from the last to the first.
        src = gg[:L]
        for j, ab, shift in reversed(self.offsets):
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
        code.fill(0)
        val = self._grid("sto_val")
        val.fill(0)
        found = self._buf("sto_found", (L,), np.bool_)
        found.fill(False)
        cl, vl = cum[:L], val[:L]
        for j, ab, shift in self.offsets:
            v = grids[ab][shift:shift + L]
            cl += v
            hit = (cl >= thres[:L]) & ~found
            xp.copyto(code[:L], self._cand[j], where=hit)
            xp.copyto(vl, v, where=hit)
            found |= hit
        top[...] = self._valid(val)
        self._code_box = self._valid(code)
        self._code_valid = True

    def backward_stochastic(self, dy, dx):
        dx[...] = 0
        self._scatter_code(dy, dx)
