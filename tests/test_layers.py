"""Stacked, bidirectional layers against the NumPy reference; jit, vmap, grad, long sequences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import recurrent
from recurrent.kinds import KINDS
from tests import reference as ref

KEY = jax.random.PRNGKey(2)
B, T, I, H = 3, 5, 4, 3
# the kinds torch has, whose equations tests/reference.py writes out: name: (init, layer)
LAYERS = {name: recurrent.layers.LAYERS[name] for name, kind in KINDS.items() if kind.torch}


def _inputs(kind, num_layers, bidirectional, dtype=jnp.float32):
    init, _ = LAYERS[kind]
    k1, k2, k3 = jax.random.split(KEY, 3)
    params = init(k1, I, H, num_layers, bidirectional, param_dtype=dtype)
    x = jax.random.normal(k2, (B, T, I), dtype)
    n_states = num_layers * (2 if bidirectional else 1)
    h0 = jax.random.normal(k3, (2, n_states, B, H), dtype)
    state = (h0[0], h0[1]) if kind == "lstm" else h0[0]
    return params, x, state


@pytest.mark.parametrize("kind, opts", [("lstm", {}), ("gru", {"reset_after": True}),
                                        ("gru", {"reset_after": False}),
                                        ("rnn", {"nonlinearity": "relu"})])
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)])
def test_layer_matches_numpy_reference(kind, opts, num_layers, bidirectional):
    params, x, state = _inputs(kind, num_layers, bidirectional)
    lengths = jnp.array([5, 2, 4])
    y, final = LAYERS[kind][1](params, x, lengths, state, **opts)
    want_y, want_final = ref.run_layers(kind, params, x, lengths, state, **opts)
    assert y.shape == (B, T, (2 if bidirectional else 1) * H)
    np.testing.assert_allclose(y, want_y, atol=1e-5)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-5), final, want_final)


def test_batch_first_false_is_the_transpose():
    params, x, state = _inputs("lstm", 2, True)
    y, final = recurrent.lstm(params, x, initial_state=state)
    y_tm, final_tm = recurrent.lstm(params, jnp.swapaxes(x, 0, 1), initial_state=state,
                                    batch_first=False)
    np.testing.assert_allclose(jnp.swapaxes(y_tm, 0, 1), y, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), final_tm, final)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_gradients_check_numerically(kind):
    with jax.enable_x64(True):
        params, x, state = _inputs(kind, 2, True, jnp.float64)
        lengths = jnp.array([5, 3, 1])
        fn = LAYERS[kind][1]

        def loss(params, x, state):
            y, final = fn(params, x, lengths, state)
            return jnp.sum(jnp.sin(y)) + sum(jnp.sum(f**2) for f in jax.tree.leaves(final))

        check_grads(loss, (params, x, state), order=1, modes=["rev"], eps=1e-6, atol=1e-6,
                    rtol=1e-6)


def test_jit_grad_and_vmap_over_param_sets():
    params, x, _ = _inputs("gru", 2, True)
    eager = recurrent.gru(params, x)[0]
    np.testing.assert_allclose(jax.jit(recurrent.gru)(params, x)[0], eager, atol=1e-6)

    # A batch of 3 independent param sets, stacked on a leading axis.
    keys = jax.random.split(KEY, 3)
    sets = [recurrent.init_gru(k, I, H, 2, True) for k in keys]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *sets)
    ys = jax.jit(jax.vmap(lambda p: recurrent.gru(p, x)[0]))(stacked)
    for k in range(3):
        np.testing.assert_allclose(ys[k], recurrent.gru(sets[k], x)[0], atol=1e-5)

    grads = jax.jit(jax.grad(lambda p: jnp.sum(recurrent.gru(p, x)[0] ** 2)))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(np.isfinite(g).all() and np.abs(g).sum() > 0 for g in jax.tree.leaves(grads))


def test_ten_thousand_steps_forward_and_backward():
    params = recurrent.init_lstm(KEY, 2, 8)
    x = jax.random.normal(KEY, (2, 10_000, 2))

    @jax.jit
    def loss_and_grad(params, x):
        return jax.value_and_grad(lambda p: jnp.mean(recurrent.lstm(p, x)[0] ** 2))(params)

    loss, grads = loss_and_grad(params, x)
    assert np.isfinite(loss) and loss > 0
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_dropout_between_layers_only():
    params, x, _ = _inputs("lstm", 2, False)
    y0, _ = recurrent.lstm(params, x)
    k1, k2 = jax.random.split(KEY)
    y1, _ = recurrent.lstm(params, x, dropout=0.5, key=k1)
    y1b, _ = recurrent.lstm(params, x, dropout=0.5, key=k1)
    y2, _ = recurrent.lstm(params, x, dropout=0.5, key=k2)
    np.testing.assert_array_equal(y1, y1b)  # reproducible from the key
    assert np.abs(np.asarray(y1 - y0)).max() > 1e-3 and np.abs(np.asarray(y1 - y2)).max() > 1e-3
    # One layer: nothing sits between layers, so dropout changes nothing (as torch).
    p1, x1, _ = _inputs("lstm", 1, False)
    np.testing.assert_array_equal(recurrent.lstm(p1, x1, dropout=0.5, key=k1)[0],
                                  recurrent.lstm(p1, x1)[0])


def test_bfloat16_compute_keeps_a_float32_state():
    params, x, _ = _inputs("lstm", 2, True)
    y, (h, c) = recurrent.lstm(params, x, dtype=jnp.bfloat16)
    y32, (h32, c32) = recurrent.lstm(params, x)
    assert y.dtype == jnp.bfloat16 and h.dtype == c.dtype == jnp.float32
    np.testing.assert_allclose(y.astype(jnp.float32), y32, atol=3e-2)
    np.testing.assert_allclose(c, c32, atol=3e-2)


def test_init_shapes_and_layer_inputs():
    params = recurrent.init_lstm(KEY, 7, 5, num_layers=3, bidirectional=True)
    assert len(params) == 3 and all(len(layer) == 2 for layer in params)
    assert params[0][1].w_ih.shape == (20, 7)
    assert params[2][0].w_ih.shape == (20, 10)  # layer > 0 reads both directions
    assert not np.array_equal(params[0][0].w_hh, params[0][1].w_hh)  # independent keys
