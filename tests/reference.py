"""A NumPy reference written straight from the equations, in float64, one sequence at a time.

Variable lengths are handled the plain way: each sequence is cut to its valid length,
run (reversed for the backward direction) and zero-padded back. The cell options are read
off the params' fields: ``w_hr`` (projection), ``w_ci/w_cf/w_co`` (peepholes), ``gamma_*``
(layer norm).
"""

import numpy as np


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _np(p):
    w_ih, w_hh, b_ih, b_hh = (None if a is None else np.asarray(a, np.float64)
                              for a in (p.w_ih, p.w_hh, p.b_ih, p.b_hh))
    G = w_hh.shape[0]
    zero = np.zeros(G)
    return w_ih, w_hh, zero if b_ih is None else b_ih, zero if b_hh is None else b_hh


def _field(p, name):
    """``p.name`` as float64, or ``None`` when the option is off."""
    value = getattr(p, name, None)
    return None if value is None else np.asarray(value, np.float64)


def layer_norm(v, gain, shift=0.0, eps=1e-5):
    """Ba et al. 2016: ``(v - mean(v)) / sqrt(var(v) + eps) * gain + shift``."""
    return (v - v.mean()) / np.sqrt(v.var() + eps) * gain + shift


def _norm(v, gain):
    """``layer_norm(v, gain)``, or ``v`` when layer norm is off (``gain`` is ``None``)."""
    return v if gain is None else layer_norm(v, gain)


def lstm_step(p, x, h, c):
    """One LSTM step: ``x (I,)``, ``h (P,)``, ``c (H,)`` -> ``h', c'`` (torch's gate order
    i, f, g, o), with the projection, peepholes and layer norm of ``p`` when set."""
    w_ih, w_hh, b_ih, b_hh = _np(p)
    H = c.shape[-1]
    # with layer norm, each half is normalised over all 4H rows
    pre = _norm(w_ih @ x, _field(p, "gamma_ih")) + b_ih + _norm(w_hh @ h, _field(p, "gamma_hh")) \
        + b_hh
    peep = {k: _field(p, f"w_c{k}") for k in "ifo"}
    if peep["i"] is None:
        peep = {k: np.zeros(H) for k in "ifo"}
    i = sigmoid(pre[:H] + peep["i"] * c)  # Gers & Schmidhuber: i and f see c_{t-1}
    f = sigmoid(pre[H:2 * H] + peep["f"] * c)
    g = np.tanh(pre[2 * H:3 * H])
    c = f * c + i * g
    o = sigmoid(pre[3 * H:] + peep["o"] * c)  # o sees c_t
    if _field(p, "gamma_c") is not None:
        h = o * np.tanh(layer_norm(c, _field(p, "gamma_c"), _field(p, "beta_c")))
    else:
        h = o * np.tanh(c)
    if _field(p, "w_hr") is not None:
        h = _field(p, "w_hr") @ h  # (P,)
    return h, c


def gru_step(p, x, h, reset_after=True, h_rec=None):
    """One GRU step (gate order r, z, n); ``reset_after=False`` is Cho et al.'s form. With
    layer norm, ``W_ih x`` and each recurrent product are normalised on their own.
    ``h_rec`` is the state the recurrent matmuls read (``h`` unless given, e.g. dropped)."""
    w_ih, w_hh, b_ih, b_hh = _np(p)
    H = h.shape[-1]
    u = h if h_rec is None else h_rec
    g_hh = _field(p, "gamma_hh")
    g_rz, g_n = (None, None) if g_hh is None else (g_hh[:2 * H], g_hh[2 * H:])
    xi = _norm(w_ih @ x, _field(p, "gamma_ih")) + b_ih
    if reset_after:
        hh = _norm(w_hh @ u, g_hh)
        r = sigmoid(xi[:H] + hh[:H] + b_hh[:H])
        z = sigmoid(xi[H:2 * H] + hh[H:2 * H] + b_hh[H:2 * H])
        n = np.tanh(xi[2 * H:] + r * (hh[2 * H:] + b_hh[2 * H:]))
    else:
        hh = _norm(w_hh[:2 * H] @ u, g_rz)
        r = sigmoid(xi[:H] + hh[:H] + b_hh[:H])
        z = sigmoid(xi[H:2 * H] + hh[H:] + b_hh[H:2 * H])
        hn = _norm(w_hh[2 * H:] @ (r * u), g_n)
        n = np.tanh(xi[2 * H:] + hn + b_hh[2 * H:])
    return (1 - z) * n + z * h


def rnn_step(p, x, h, nonlinearity="tanh"):
    w_ih, w_hh, b_ih, b_hh = _np(p)
    pre = w_ih @ x + b_ih + w_hh @ h + b_hh
    return np.tanh(pre) if nonlinearity == "tanh" else np.maximum(pre, 0)


def run_direction(kind, p, xs, state, reverse=False, **opts):
    """One direction over ``xs (T, I)`` from ``state``; returns ``ys (T, P), state`` (``P``:
    the width of ``h``, ``w_hh``'s columns)."""
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
    final state(s) ``(L*D, B, H)`` in torch's order (``h`` is ``P`` wide with a
    projection), all float64."""
    x = np.asarray(x, np.float64)
    B, T, _ = x.shape
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    D = len(params[0])
    H = np.asarray(params[0][0].w_hh).shape[1]  # the width of h
    sizes = [H] if kind != "lstm" else [H, np.asarray(params[0][0].w_ih).shape[0] // 4]
    if initial_state is None:
        initial_state = tuple(np.zeros((len(params) * D, B, n)) for n in sizes)
    elif len(sizes) == 1:
        initial_state = (initial_state,)
    initial_state = [np.asarray(s, np.float64) for s in initial_state]
    finals = [np.zeros((len(params) * D, B, n)) for n in sizes]
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
                for i in range(len(sizes)):
                    finals[i][k, b] = s[i]
        out = new_out
    return out, (tuple(finals) if kind == "lstm" else finals[0])
