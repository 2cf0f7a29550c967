"""Truncated BPTT: the same values as one pass, gradients cut at chunk boundaries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrent

KEY = jax.random.PRNGKey(5)
B, T, I, H = 2, 10, 3, 4


@pytest.mark.parametrize("kind", ["lstm", "gru", "mingru"])
@pytest.mark.parametrize("chunk", [3, 5, 10, 16])
def test_values_equal_one_pass(kind, chunk):
    params = getattr(recurrent, f"init_{kind}")(KEY, I, H, num_layers=2)
    layer = getattr(recurrent, kind)
    x = jax.random.normal(KEY, (B, T, I))
    lengths = jnp.array([10, 4])
    y, state = recurrent.truncated_bptt(layer, params, x, chunk, seq_lengths=lengths)
    want_y, want_state = layer(params, x, lengths)
    np.testing.assert_allclose(y, want_y, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), state, want_state)


def test_gradient_stops_at_chunk_boundaries():
    params = recurrent.init_lstm(KEY, I, H)
    x = jax.random.normal(KEY, (B, T, I))

    def last_output(x):
        y, _ = recurrent.truncated_bptt(recurrent.lstm, params, x, 4)
        return jnp.sum(y[:, -1])

    grad = jax.grad(last_output)(x)
    assert np.abs(grad[:, :8]).max() == 0  # before the last chunk (steps 8, 9)
    assert np.abs(grad[:, 8:]).min() > 0
    # Within the chunk it is the gradient of the layer started from the carried state.
    _, state = recurrent.lstm(params, x[:, :8])
    want = jax.grad(lambda xc: jnp.sum(recurrent.lstm(params, xc, None, state)[0][:, -1]))(
        x[:, 8:])
    np.testing.assert_allclose(grad[:, 8:], want, atol=1e-6)


def test_stateful_across_batches():
    params = recurrent.init_gru(KEY, I, H)
    stream = jax.random.normal(KEY, (B, 2 * T, I))
    y1, state = recurrent.truncated_bptt(recurrent.gru, params, stream[:, :T], 4)
    y2, _ = recurrent.truncated_bptt(recurrent.gru, params, stream[:, T:], 4, state)
    want, _ = recurrent.gru(params, stream)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], axis=1), want, atol=1e-6)
    grad = jax.grad(lambda s: jnp.sum(recurrent.truncated_bptt(
        recurrent.gru, params, stream[:, T:], 4, s)[0]))(state)
    assert np.abs(grad).max() == 0  # the carried state brings no gradient from the past


def test_dropout_key_per_chunk_and_bad_arguments():
    params = recurrent.init_lstm(KEY, I, H, num_layers=2)
    x = jax.random.normal(KEY, (B, T, I))
    a, _ = recurrent.truncated_bptt(recurrent.lstm, params, x, 5, dropout=0.5, key=KEY)
    b, _ = recurrent.truncated_bptt(recurrent.lstm, params, x, 5, dropout=0.5, key=KEY)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="chunk must be a positive int; got 0"):
        recurrent.truncated_bptt(recurrent.lstm, params, x, 0)
    with pytest.raises(ValueError, match="params are bidirectional"):
        recurrent.truncated_bptt(recurrent.lstm, recurrent.init_lstm(KEY, I, H,
                                                                    bidirectional=True), x, 5)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, time, features\)"):
        recurrent.truncated_bptt(recurrent.lstm, params, x[0], 5)
    with pytest.raises(ValueError, match="return_activations is not supported"):
        recurrent.truncated_bptt(recurrent.lstm, params, x, 5, return_activations=True)
