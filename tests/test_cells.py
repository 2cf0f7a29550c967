"""Each cell's one step against the NumPy reference of its equations; init as torch's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrent
from tests import reference as ref

KEY = jax.random.PRNGKey(0)
B, I, H = 3, 5, 4


def _one_step(cell, params, carry, x):
    return cell.step(params, carry, cell.project(params, x))


@pytest.mark.parametrize("bias", [True, False])
def test_lstm_step_matches_equations(bias):
    cell = recurrent.lstm_cell(H, bias=bias)
    params = cell.init(KEY, I)
    k1, k2, k3 = jax.random.split(KEY, 3)
    x, h, c = (jax.random.normal(k, (B, n)) for k, n in ((k1, I), (k2, H), (k3, H)))
    (h1, c1), y = _one_step(cell, params, (h, c), x)
    for b in range(B):
        want_h, want_c = ref.lstm_step(params, np.asarray(x[b]), np.asarray(h[b]),
                                       np.asarray(c[b]))
        np.testing.assert_allclose(h1[b], want_h, atol=1e-6)
        np.testing.assert_allclose(c1[b], want_c, atol=1e-6)
    np.testing.assert_array_equal(y, h1)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_gru_step_matches_equations(reset_after, bias):
    cell = recurrent.gru_cell(H, reset_after=reset_after, bias=bias)
    params = cell.init(KEY, I)
    k1, k2 = jax.random.split(KEY)
    x, h = jax.random.normal(k1, (B, I)), jax.random.normal(k2, (B, H))
    h1, y = _one_step(cell, params, h, x)
    for b in range(B):
        want = ref.gru_step(params, np.asarray(x[b]), np.asarray(h[b]), reset_after)
        np.testing.assert_allclose(h1[b], want, atol=1e-6)
    np.testing.assert_array_equal(y, h1)


def test_gru_forms_differ():
    """The two GRU forms are different functions of the same params."""
    params = recurrent.gru_cell(H).init(KEY, I)
    x, h = jnp.ones((B, I)), jnp.full((B, H), 0.5)
    a, _ = _one_step(recurrent.gru_cell(H, reset_after=True), params, h, x)
    b, _ = _one_step(recurrent.gru_cell(H, reset_after=False), params, h, x)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_step_matches_equations(nonlinearity):
    cell = recurrent.rnn_cell(H, nonlinearity=nonlinearity)
    params = cell.init(KEY, I)
    k1, k2 = jax.random.split(KEY)
    x, h = jax.random.normal(k1, (B, I)), jax.random.normal(k2, (B, H))
    h1, _ = _one_step(cell, params, h, x)
    for b in range(B):
        want = ref.rnn_step(params, np.asarray(x[b]), np.asarray(h[b]), nonlinearity)
        np.testing.assert_allclose(h1[b], want, atol=1e-6)


@pytest.mark.parametrize("make, gates", [(recurrent.lstm_cell, 4), (recurrent.gru_cell, 3),
                                         (recurrent.rnn_cell, 1)])
def test_init_is_torch_uniform(make, gates):
    hidden = 64
    p = make(hidden).init(KEY, 32)
    bound = 1 / np.sqrt(hidden)
    assert p.w_ih.shape == (gates * hidden, 32) and p.w_hh.shape == (gates * hidden, hidden)
    assert p.b_ih.shape == p.b_hh.shape == (gates * hidden,)
    for w in jax.tree.leaves(p):
        w = np.asarray(w)
        assert np.abs(w).max() <= bound
        assert np.abs(w).max() > 0.9 * bound  # spread over the whole interval
        assert abs(w.mean()) < 0.1 * bound


def test_init_options():
    ones = lambda key, shape, dtype: jnp.ones(shape, dtype)  # noqa: E731
    p = recurrent.lstm_cell(H, forget_bias=1.0, bias_init=jax.nn.initializers.zeros,
                            kernel_init=ones).init(KEY, I)
    np.testing.assert_array_equal(p.b_ih, np.r_[np.zeros(H), np.ones(H), np.zeros(2 * H)])
    np.testing.assert_array_equal(p.b_hh, np.zeros(4 * H))
    np.testing.assert_array_equal(p.w_ih, np.ones((4 * H, I)))
    p64 = recurrent.gru_cell(H, param_dtype=jnp.bfloat16).init(KEY, I)
    assert all(w.dtype == jnp.bfloat16 for w in jax.tree.leaves(p64))


def test_initial_carry_shapes():
    h, c = recurrent.lstm_cell(H).initial_carry((2, 3), jnp.float32)
    assert h.shape == c.shape == (2, 3, H) and not h.any()
    assert recurrent.gru_cell(H).initial_carry((2,), jnp.float32).shape == (2, H)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn", "mingru", "minlstm"])
def test_step_names_params_of_another_cell(kind):
    """A cell's step given another cell's params raises a TypeError naming both types (an
    LSTM step given a GRU's params reached a broadcasting error)."""
    makers = {"lstm": recurrent.lstm_cell, "gru": recurrent.gru_cell,
              "rnn": recurrent.rnn_cell, "mingru": recurrent.minimal.mingru_cell,
              "minlstm": recurrent.minimal.minlstm_cell}
    cell = makers[kind](H)
    carry = cell.initial_carry((B,), jnp.float32)
    xp = jnp.zeros((B, cell.gates * H))
    assert _one_step(cell, cell.init(KEY, I), carry, jnp.ones((B, I)))[1].shape == (B, H)
    for other, make in makers.items():
        if other != kind:
            params = make(H).init(KEY, I)
            with pytest.raises(TypeError, match=f"params is {type(params).__name__}; "
                                                f"expected {cell.params_type.__name__}"):
                cell.step(params, carry, xp)
