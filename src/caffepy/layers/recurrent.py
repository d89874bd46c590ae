"""Recurrent layers: LSTMUnit, LSTM and RNN.

Caffe builds LSTM and RNN as an unrolled net of InnerProduct, Scale, Eltwise, TanH and
LSTMUnit layers. caffepy computes the same unrolled graph directly: one matmul for the
input transform of all T timesteps, one small matmul per step for the recurrence, and
back-propagation through time in reverse order. Parameter blobs and their order are
Caffe's (LSTM: W_xc, b_c, [W_xc_static], W_hc; RNN: W_xh, b_h, [W_xh_static], W_hh,
W_ho, b_o), so .caffemodel files interchange.

Bottoms: x (T×N×…), cont (T×N; 0 starts a new sequence), optional x_static (N×…), and
with ``expose_hidden`` the initial states (h0[, c0], 1×N×H). Tops: the output sequence
and, with ``expose_hidden``, the final states. As in Caffe only the *data* of the
exposed states is shared with the unrolled net, so their diffs are zero / ignored.
Without ``expose_hidden`` the final state of one forward is the initial state of the next.
"""
import numpy as np

from .. import parallel_chunks
from ..blob import Blob
from ..layer import Layer, register_layer


def _sigmoid(xp, x):
    return 1.0 / (1.0 + xp.exp(-x))


@register_layer("LSTMUnit")
class LSTMUnitLayer(Layer):
    """One LSTM step: bottoms c_prev (1×N×D), gates (1×N×4D: i, f, o, g), cont (1×N)."""
    exact_num_bottom_blobs = 3
    exact_num_top_blobs = 2

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def reshape(self, bottom, top):
        c_prev, x, cont = bottom
        self.check(c_prev.num_axes == 3 and c_prev.shape[0] == 1,
                   "c_prev must be 1×N×D, got %s", c_prev.shape)
        n, d = c_prev.shape[1], c_prev.shape[2]
        self.check(x.shape == (1, n, 4 * d), "gate input must be 1×%d×%d, got %s", n, 4 * d, x.shape)
        self.check(cont.shape == (1, n), "cont must be 1×%d, got %s", n, cont.shape)
        top[0].reshape(c_prev.shape)
        top[1].reshape(c_prev.shape)
        self._acts = Blob(x.shape)

    def forward_impl(self, bottom, top):
        xp = self.xp
        c_prev, x, cont = (b.data[0] for b in bottom)
        d = c_prev.shape[1]
        acts = self._acts.data[0]
        acts[:, :3 * d] = _sigmoid(xp, x[:, :3 * d])
        acts[:, 3 * d:] = xp.tanh(x[:, 3 * d:])
        i, f, o, g = acts[:, :d], acts[:, d:2 * d], acts[:, 2 * d:3 * d], acts[:, 3 * d:]
        c = top[0].data[0]
        c[...] = cont[:, None] * f * c_prev + i * g
        top[1].data[0][...] = o * xp.tanh(c)

    def backward_impl(self, top, propagate_down, bottom):
        if not (propagate_down[0] or propagate_down[1]):
            return
        xp = self.xp
        c_prev, cont = bottom[0].data[0], bottom[2].data[0][:, None]
        d = c_prev.shape[1]
        acts = self._acts.data[0]
        i, f, o, g = acts[:, :d], acts[:, d:2 * d], acts[:, 2 * d:3 * d], acts[:, 3 * d:]
        c = top[0].data[0]
        c_diff, h_diff = top[0].diff[0], top[1].diff[0]
        tanh_c = xp.tanh(c)
        c_term = c_diff + h_diff * o * (1 - tanh_c * tanh_c)
        if propagate_down[0]:
            bottom[0].diff[0][...] = cont * c_term * f
        if propagate_down[1]:
            xd = bottom[1].diff[0]
            xd[:, :d] = c_term * g * i * (1 - i)
            xd[:, d:2 * d] = cont * c_term * c_prev * f * (1 - f)
            xd[:, 2 * d:3 * d] = h_diff * tanh_c * o * (1 - o)
            xd[:, 3 * d:] = c_term * i * (1 - g * g)


class _RecurrentBase(Layer):
    min_bottom_blobs = 2
    n_states = 1          # recurrent state blobs: RNN h; LSTM h, c

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def layer_setup(self, bottom, top):
        rp = self.layer_param.recurrent_param
        self.hidden = rp.num_output
        self.check(self.hidden > 0, "recurrent_param.num_output must be positive")
        self.expose_hidden = rp.expose_hidden
        self.check(bottom[0].num_axes >= 2, "x must have at least 2 axes (T×N×…), got %s",
                   bottom[0].shape)
        self.T, self.N = bottom[0].shape[:2]
        self.check(bottom[1].shape == (self.T, self.N),
                   "cont (bottom 1) must have shape T×N = %d×%d, got %s", self.T, self.N,
                   bottom[1].shape)
        n_extra = len(bottom) - 2
        expected_states = self.n_states if self.expose_hidden else 0
        self.static = n_extra - expected_states == 1
        self.check(n_extra - expected_states in (0, 1),
                   "expects bottoms x, cont, [x_static]%s; got %d bottoms",
                   ", and the initial states" if self.expose_hidden else "", len(bottom))
        want_tops = 1 + (self.n_states if self.expose_hidden else 0)
        self.check(len(top) == want_tops, "expects %d top(s), got %d", want_tops, len(top))
        self.input_dim = bottom[0].count_range(2)
        if self.static:
            self.check(bottom[2].num_axes >= 2 and bottom[2].shape[0] == self.N,
                       "x_static must be N×…, with N = %d, got %s", self.N, bottom[2].shape)
            self.static_dim = bottom[2].count_range(1)
        if not len(self.blobs):
            self._make_params(rp)
        self._state = [np.zeros((self.N, self.hidden), np.float32) for _ in range(self.n_states)]

    def _filled(self, filler, shape):
        b = Blob(shape)
        self.fill_param(filler, b, "recurrent_param filler")
        return b

    def reshape(self, bottom, top):
        self.check(bottom[0].shape[:2] == (self.T, self.N) and
                   bottom[0].count_range(2) == self.input_dim,
                   "input shape changed from T×N = %d×%d; got %s", self.T, self.N, bottom[0].shape)
        top[0].reshape((self.T, self.N, self.hidden))
        for k in range(1, len(top)):
            top[k].reshape((1, self.N, self.hidden))

    def _initial_states(self, bottom):
        xp = self.xp
        if self.expose_hidden:
            first = 2 + int(self.static)
            return [bottom[first + k].data.reshape(self.N, self.hidden) for k in range(self.n_states)]
        return [xp.asarray(s) for s in self._state]


@register_layer("LSTM")
class LSTMLayer(_RecurrentBase):
    n_states = 2

    def _make_params(self, rp):
        h = self.hidden
        self.blobs.append(self._filled(rp.weight_filler, (4 * h, self.input_dim)))
        self.blobs.append(self._filled(rp.bias_filler, (4 * h,)))
        if self.static:
            self.blobs.append(self._filled(rp.weight_filler, (4 * h, self.static_dim)))
        self.blobs.append(self._filled(rp.weight_filler, (4 * h, h)))

    def forward_impl(self, bottom, top):
        xp = self.xp
        T, N, H = self.T, self.N, self.hidden
        x = bottom[0].data.reshape(T * N, self.input_dim)
        cont = bottom[1].data
        w_xc, b_c = self.blobs[0].data, self.blobs[1].data
        w_hc = self.blobs[-1].data
        wx = (x @ w_xc.T + b_c).reshape(T, N, 4 * H)
        ws = None
        if self.static:
            ws = bottom[2].data.reshape(N, self.static_dim) @ self.blobs[2].data.T
        h_prev, c_prev = self._initial_states(bottom)
        self._hc = xp.empty((T, N, H), np.float32)      # cont·h_{t-1}
        self._cprev = xp.empty((T, N, H), np.float32)
        self._acts = xp.empty((T, N, 4 * H), np.float32)
        self._c = xp.empty((T, N, H), np.float32)
        out = top[0].data
        for t in range(T):
            ct = cont[t][:, None]
            hc = ct * h_prev
            self._hc[t] = hc
            self._cprev[t] = c_prev
            gates = hc @ w_hc.T + wx[t]
            if ws is not None:
                gates = gates + ws
            acts = self._acts[t]
            acts[:, :3 * H] = _sigmoid(xp, gates[:, :3 * H])
            acts[:, 3 * H:] = xp.tanh(gates[:, 3 * H:])
            i, f, o, g = acts[:, :H], acts[:, H:2 * H], acts[:, 2 * H:3 * H], acts[:, 3 * H:]
            c = ct * f * c_prev + i * g
            self._c[t] = c
            h = o * xp.tanh(c)
            out[t] = h
            h_prev, c_prev = h, c
        if self.expose_hidden:
            top[1].data[0][...] = h_prev
            top[2].data[0][...] = c_prev
        else:
            self._state = [h_prev.copy(), c_prev.copy()]

    def backward_impl(self, top, propagate_down, bottom):
        xp = self.xp
        T, N, H = self.T, self.N, self.hidden
        cont = bottom[1].data
        w_hc = self.blobs[-1].data
        dtop = top[0].diff
        dgates_all = xp.empty((T, N, 4 * H), np.float32)
        dh_next = xp.zeros((N, H), np.float32)
        dc_next = xp.zeros((N, H), np.float32)
        dw_hc = xp.zeros_like(w_hc)
        for t in range(T - 1, -1, -1):
            ct = cont[t][:, None]
            acts = self._acts[t]
            i, f, o, g = acts[:, :H], acts[:, H:2 * H], acts[:, 2 * H:3 * H], acts[:, 3 * H:]
            tanh_c = xp.tanh(self._c[t])
            h_diff = dtop[t] + dh_next
            c_term = dc_next + h_diff * o * (1 - tanh_c * tanh_c)
            dg = dgates_all[t]
            dg[:, :H] = c_term * g * i * (1 - i)
            dg[:, H:2 * H] = ct * c_term * self._cprev[t] * f * (1 - f)
            dg[:, 2 * H:3 * H] = h_diff * tanh_c * o * (1 - o)
            dg[:, 3 * H:] = c_term * i * (1 - g * g)
            dc_next = ct * c_term * f
            dw_hc += parallel_chunks.product(xp, dg.T, self._hc[t])
            dh_next = ct * (dg @ w_hc)
        self._param_and_input_grads(bottom, propagate_down, dgates_all, dw_hc)

    def _param_and_input_grads(self, bottom, propagate_down, dgates_all, dw_hc):
        T, N = self.T, self.N
        dg2 = dgates_all.reshape(T * N, -1)
        x = bottom[0].data.reshape(T * N, self.input_dim)
        if self.param_propagate(0):
            self.blobs[0].diff[...] += dg2.T @ x
        if self.param_propagate(1):
            self.blobs[1].diff[...] += dg2.sum(axis=0)
        if self.static and self.param_propagate(2):
            self.blobs[2].diff[...] += parallel_chunks.product(
                self.xp, dgates_all.sum(axis=0).T, bottom[2].data.reshape(N, -1))
        if self.param_propagate(len(self.blobs) - 1):
            self.blobs[-1].diff[...] += dw_hc
        if propagate_down[0]:
            bottom[0].diff[...] = (dg2 @ self.blobs[0].data).reshape(bottom[0].shape)
        if self.static and propagate_down[2]:
            bottom[2].diff[...] = (dgates_all.sum(axis=0) @ self.blobs[2].data).reshape(bottom[2].shape)
        if self.expose_hidden:
            first = 2 + int(self.static)
            for k in range(self.n_states):
                if propagate_down[first + k]:
                    bottom[first + k].diff[...] = 0


@register_layer("RNN")
class RNNLayer(_RecurrentBase):
    n_states = 1

    def _make_params(self, rp):
        h = self.hidden
        self.blobs.append(self._filled(rp.weight_filler, (h, self.input_dim)))
        self.blobs.append(self._filled(rp.bias_filler, (h,)))
        if self.static:
            self.blobs.append(self._filled(rp.weight_filler, (h, self.static_dim)))
        self.blobs.append(self._filled(rp.weight_filler, (h, h)))
        self.blobs.append(self._filled(rp.weight_filler, (h, h)))
        self.blobs.append(self._filled(rp.bias_filler, (h,)))

    def forward_impl(self, bottom, top):
        xp = self.xp
        T, N, H = self.T, self.N, self.hidden
        s = int(self.static)
        w_xh, b_h = self.blobs[0].data, self.blobs[1].data
        w_hh, w_ho, b_o = self.blobs[2 + s].data, self.blobs[3 + s].data, self.blobs[4 + s].data
        x = bottom[0].data.reshape(T * N, self.input_dim)
        wx = (x @ w_xh.T + b_h).reshape(T, N, H)
        ws = bottom[2].data.reshape(N, -1) @ self.blobs[2].data.T if self.static else None
        (h_prev,) = self._initial_states(bottom)
        cont = bottom[1].data
        self._hc = xp.empty((T, N, H), np.float32)
        self._h = xp.empty((T, N, H), np.float32)
        out = top[0].data
        for t in range(T):
            hc = cont[t][:, None] * h_prev
            self._hc[t] = hc
            a = hc @ w_hh.T + wx[t]
            if ws is not None:
                a = a + ws
            h = xp.tanh(a)
            self._h[t] = h
            out[t] = xp.tanh(h @ w_ho.T + b_o)
            h_prev = h
        if self.expose_hidden:
            top[1].data[0][...] = h_prev
        else:
            self._state = [h_prev.copy()]

    def backward_impl(self, top, propagate_down, bottom):
        xp = self.xp
        T, N, H = self.T, self.N, self.hidden
        s = int(self.static)
        w_hh, w_ho = self.blobs[2 + s].data, self.blobs[3 + s].data
        cont = bottom[1].data
        o = top[0].data
        do = top[0].diff * (1 - o * o)                 # T×N×H
        do2 = do.reshape(T * N, H)
        h2 = self._h.reshape(T * N, H)
        if self.param_propagate(3 + s):
            self.blobs[3 + s].diff[...] += do2.T @ h2
        if self.param_propagate(4 + s):
            self.blobs[4 + s].diff[...] += do2.sum(axis=0)
        dh_out = (do2 @ w_ho).reshape(T, N, H)
        da_all = xp.empty((T, N, H), np.float32)
        dh_next = xp.zeros((N, H), np.float32)
        dw_hh = xp.zeros_like(w_hh)
        for t in range(T - 1, -1, -1):
            h = self._h[t]
            da = (dh_out[t] + dh_next) * (1 - h * h)
            da_all[t] = da
            dw_hh += parallel_chunks.product(xp, da.T, self._hc[t])
            dh_next = cont[t][:, None] * (da @ w_hh)
        if self.param_propagate(2 + s):
            self.blobs[2 + s].diff[...] += dw_hh
        da2 = da_all.reshape(T * N, H)
        x = bottom[0].data.reshape(T * N, self.input_dim)
        if self.param_propagate(0):
            self.blobs[0].diff[...] += da2.T @ x
        if self.param_propagate(1):
            self.blobs[1].diff[...] += da2.sum(axis=0)
        if self.static and self.param_propagate(2):
            self.blobs[2].diff[...] += parallel_chunks.product(
                xp, da_all.sum(axis=0).T, bottom[2].data.reshape(N, -1))
        if propagate_down[0]:
            bottom[0].diff[...] = (da2 @ self.blobs[0].data).reshape(bottom[0].shape)
        if self.static and propagate_down[2]:
            bottom[2].diff[...] = (da_all.sum(axis=0) @ self.blobs[2].data).reshape(bottom[2].shape)
        if self.expose_hidden and propagate_down[2 + s]:
            bottom[2 + s].diff[...] = 0
