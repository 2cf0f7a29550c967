"""Per-step gates: ``unroll(..., return_activations=True)`` returns every gate of the
textbook equations, which match a NumPy reference, rebuild the layer's output, and are
zero past ``seq_lengths``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrent
from tests.reference import sigmoid

B, T, I, H = 3, 7, 5, 4


def _np(params):
    return [np.asarray(a, np.float64) for a in (params.w_ih, params.w_hh, params.b_ih,
                                                params.b_hh)]


def numpy_lstm_gates(params, xs):
    """The LSTM equations one step at a time: ``xs (T, I)`` -> dict of ``(T, H)``."""
    w_ih, w_hh, b_ih, b_hh = _np(params)
    W = dict(zip("ifgo", np.split(w_ih, 4), strict=True))
    U = dict(zip("ifgo", np.split(w_hh, 4), strict=True))
    b = dict(zip("ifgo", np.split(b_ih + b_hh, 4), strict=True))
    h, c = np.zeros(H), np.zeros(H)
    out = {k: [] for k in "ifgoch"}
    for x in xs:
        i = sigmoid(W["i"] @ x + U["i"] @ h + b["i"])  # input gate
        f = sigmoid(W["f"] @ x + U["f"] @ h + b["f"])  # forget gate
        g = np.tanh(W["g"] @ x + U["g"] @ h + b["g"])  # candidate
        o = sigmoid(W["o"] @ x + U["o"] @ h + b["o"])  # output gate
        c = f * c + i * g  # cell state
        h = o * np.tanh(c)
        for k, v in zip("ifgoch", (i, f, g, o, c, h), strict=True):
            out[k].append(v)
    return {k: np.stack(v) for k, v in out.items()}


def numpy_gru_gates(params, xs, reset_after=True):
    """The GRU equations one step at a time: ``xs (T, I)`` -> dict of ``(T, H)``."""
    w_ih, w_hh, b_ih, b_hh = _np(params)
    W = dict(zip("rzn", np.split(w_ih, 3), strict=True))
    U = dict(zip("rzn", np.split(w_hh, 3), strict=True))
    bi = dict(zip("rzn", np.split(b_ih, 3), strict=True))
    bh = dict(zip("rzn", np.split(b_hh, 3), strict=True))
    h = np.zeros(H)
    out = {k: [] for k in "rznh"}
    for x in xs:
        r = sigmoid(W["r"] @ x + bi["r"] + U["r"] @ h + bh["r"])  # reset gate
        z = sigmoid(W["z"] @ x + bi["z"] + U["z"] @ h + bh["z"])  # update gate
        if reset_after:
            n = np.tanh(W["n"] @ x + bi["n"] + r * (U["n"] @ h + bh["n"]))
        else:
            n = np.tanh(W["n"] @ x + bi["n"] + U["n"] @ (r * h) + bh["n"])
        h = (1 - z) * n + z * h
        for k, v in zip("rznh", (r, z, n, h), strict=True):
            out[k].append(v)
    return {k: np.stack(v) for k, v in out.items()}


@pytest.fixture
def xs():
    return jax.random.normal(jax.random.PRNGKey(1), (B, T, I))


def test_lstm_gates_match_the_equations(xs):
    params = recurrent.init_lstm(jax.random.PRNGKey(0), I, H)
    _, acts = recurrent.unroll(recurrent.lstm_cell(H), params[0][0], xs,
                               return_activations=True)
    assert set(acts) == set("ifgoch")
    for b in range(B):
        want = numpy_lstm_gates(params[0][0], np.asarray(xs[b]))
        for k in "ifgoch":
            assert acts[k].shape == (B, T, H)
            np.testing.assert_allclose(acts[k][b], want[k], atol=1e-5, err_msg=k)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_gates_match_the_equations(xs, reset_after):
    params = recurrent.init_gru(jax.random.PRNGKey(0), I, H)
    cell = recurrent.gru_cell(H, reset_after=reset_after)
    _, acts = recurrent.unroll(cell, params[0][0], xs, return_activations=True)
    assert set(acts) == set("rznh")
    for b in range(B):
        want = numpy_gru_gates(params[0][0], np.asarray(xs[b]), reset_after)
        for k in "rznh":
            np.testing.assert_allclose(acts[k][b], want[k], atol=1e-5, err_msg=k)


def test_lstm_gates_rebuild_the_layer_output(xs):
    """c_t = f_t c_{t-1} + i_t g_t and h_t = o_t tanh(c_t) give the layer's y and (h_n, c_n)."""
    params = recurrent.init_lstm(jax.random.PRNGKey(0), I, H)
    _, a = recurrent.unroll(recurrent.lstm_cell(H), params[0][0], xs, return_activations=True)
    c_prev = jnp.pad(a["c"], ((0, 0), (1, 0), (0, 0)))[:, :-1]  # c_{t-1}, c_{-1} = 0
    c = a["f"] * c_prev + a["i"] * a["g"]
    h = a["o"] * jnp.tanh(c)
    y, (h_n, c_n) = recurrent.lstm(params, xs)
    np.testing.assert_allclose(h, y, atol=1e-6)
    np.testing.assert_allclose(c, a["c"], atol=1e-6)
    np.testing.assert_allclose(h[:, -1], h_n[0], atol=1e-6)
    np.testing.assert_allclose(c[:, -1], c_n[0], atol=1e-6)


def test_gru_gates_rebuild_the_layer_output(xs):
    """h_t = (1 - z_t) n_t + z_t h_{t-1} gives the layer's y and h_n."""
    params = recurrent.init_gru(jax.random.PRNGKey(0), I, H)
    _, a = recurrent.unroll(recurrent.gru_cell(H), params[0][0], xs, return_activations=True)
    h_prev = jnp.pad(a["h"], ((0, 0), (1, 0), (0, 0)))[:, :-1]  # h_{t-1}, h_{-1} = 0
    h = (1 - a["z"]) * a["n"] + a["z"] * h_prev
    y, h_n = recurrent.gru(params, xs)
    np.testing.assert_allclose(h, y, atol=1e-6)
    np.testing.assert_allclose(h[:, -1], h_n[0], atol=1e-6)


def test_rnn_activations_are_its_output(xs):
    params = recurrent.init_rnn(jax.random.PRNGKey(0), I, H)
    _, acts = recurrent.unroll(recurrent.rnn_cell(H), params[0][0], xs,
                               return_activations=True)
    assert set(acts) == {"h"}
    np.testing.assert_allclose(acts["h"], recurrent.rnn(params, xs)[0], atol=1e-6)


@pytest.mark.parametrize("reverse", [False, True])
def test_gates_are_zero_past_seq_lengths(xs, reverse):
    """Within a sequence's length the gates are those of the sequence cut to that length
    (run backwards from its own last step when ``reverse``); past it they are zero."""
    params = recurrent.init_lstm(jax.random.PRNGKey(0), I, H)[0][0]
    cell = recurrent.lstm_cell(H)
    lengths = jnp.array([T, 4, 1])
    _, acts = recurrent.unroll(cell, params, xs, seq_lengths=lengths, reverse=reverse,
                               return_activations=True)
    for b, n in enumerate(lengths.tolist()):
        _, cut = recurrent.unroll(cell, params, xs[b:b + 1, :n], reverse=reverse,
                                  return_activations=True)
        for k in "ifgoch":
            np.testing.assert_allclose(acts[k][b, :n], cut[k][0], atol=1e-6, err_msg=k)
            np.testing.assert_array_equal(acts[k][b, n:], 0)


def test_activations_carry_matches_plain_unroll(xs):
    """Asking for the gates changes what is returned per step, not the final carry."""
    params = recurrent.init_lstm(jax.random.PRNGKey(0), I, H)[0][0]
    cell = recurrent.lstm_cell(H)
    carry, _ = recurrent.unroll(cell, params, xs, return_activations=True)
    want, _ = recurrent.unroll(cell, params, xs)
    for got, w in zip(carry, want, strict=True):
        np.testing.assert_allclose(got, w, atol=1e-6)
