"""A NumPy reference written straight from the equations, in float64, one sequence at a time.

Variable lengths are handled the plain way: each sequence is cut to its valid length,
run (reversed for the backward direction) and zero-padded back.
"""

import numpy as np


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _np(p):
    w_ih, w_hh, b_ih, b_hh = (None if a is None else np.asarray(a, np.float64) for a in p)
    G = w_hh.shape[0]
    zero = np.zeros(G)
    return w_ih, w_hh, zero if b_ih is None else b_ih, zero if b_hh is None else b_hh


def lstm_step(p, x, h, c):
    """One LSTM step: ``x (I,)``, ``h, c (H,)`` -> ``h', c'`` (torch's gate order i, f, g, o)."""
    w_ih, w_hh, b_ih, b_hh = _np(p)
    H = h.shape[-1]
    pre = w_ih @ x + b_ih + w_hh @ h + b_hh
    i, f = sigmoid(pre[:H]), sigmoid(pre[H:2 * H])
    g, o = np.tanh(pre[2 * H:3 * H]), sigmoid(pre[3 * H:])
    c = f * c + i * g
    return o * np.tanh(c), c


def gru_step(p, x, h, reset_after=True, h_rec=None):
    """One GRU step (gate order r, z, n); ``reset_after=False`` is Cho et al.'s form.
    ``h_rec`` is the state the recurrent matmuls read (``h`` unless given, e.g. dropped)."""
    w_ih, w_hh, b_ih, b_hh = _np(p)
    H = h.shape[-1]
    u = h if h_rec is None else h_rec
    xi = w_ih @ x + b_ih
    r = sigmoid(xi[:H] + w_hh[:H] @ u + b_hh[:H])
    z = sigmoid(xi[H:2 * H] + w_hh[H:2 * H] @ u + b_hh[H:2 * H])
    if reset_after:
        n = np.tanh(xi[2 * H:] + r * (w_hh[2 * H:] @ u + b_hh[2 * H:]))
    else:
        n = np.tanh(xi[2 * H:] + w_hh[2 * H:] @ (r * u) + b_hh[2 * H:])
    return (1 - z) * n + z * h


def rnn_step(p, x, h, nonlinearity="tanh"):
    w_ih, w_hh, b_ih, b_hh = _np(p)
    pre = w_ih @ x + b_ih + w_hh @ h + b_hh
    return np.tanh(pre) if nonlinearity == "tanh" else np.maximum(pre, 0)


def run_direction(kind, p, xs, state, reverse=False, **opts):
    """One direction over ``xs (T, I)`` from ``state``; returns ``ys (T, H), state``."""
    order = range(len(xs) - 1, -1, -1) if reverse else range(len(xs))
    H = np.asarray(p.w_hh).shape[1]
    ys = np.zeros((len(xs), H))
    for t in order:
        if kind == "lstm":
            state = lstm_step(p, xs[t], *state)
            ys[t] = state[0]
        else:
            step = gru_step if kind == "gru" else rnn_step
            state = step(p, xs[t], state, **opts)
            ys[t] = state
    return ys, state


def run_layers(kind, params, x, lengths=None, initial_state=None, **opts):
    """The whole stacked (bidirectional) layer on ``x (B, T, I)``; returns ``y`` and the
    final state(s) ``(L*D, B, H)`` in torch's order, all float64."""
    x = np.asarray(x, np.float64)
    B, T, _ = x.shape
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    D = len(params[0])
    H = np.asarray(params[0][0].w_hh).shape[1]
    n_states = 2 if kind == "lstm" else 1
    if initial_state is None:
        initial_state = tuple(np.zeros((len(params) * D, B, H)) for _ in range(n_states))
    elif n_states == 1:
        initial_state = (initial_state,)
    initial_state = [np.asarray(s, np.float64) for s in initial_state]
    finals = [np.zeros((len(params) * D, B, H)) for _ in range(n_states)]
    out = x
    for l, layer in enumerate(params):
        new_out = np.zeros((B, T, D * H))
        for d, p in enumerate(layer):
            k = l * D + d
            for b in range(B):
                n = lengths[b]
                s0 = tuple(s[k, b] for s in initial_state)
                ys, s = run_direction(kind, p, out[b, :n], s0 if kind == "lstm" else s0[0],
                                      reverse=d == 1, **opts)
                new_out[b, :n, d * H:(d + 1) * H] = ys
                s = s if kind == "lstm" else (s,)
                for i in range(n_states):
                    finals[i][k, b] = s[i]
        out = new_out
    return out, (tuple(finals) if kind == "lstm" else finals[0])
