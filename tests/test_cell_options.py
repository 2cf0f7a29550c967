"""Cell options: the LSTM projection (``proj_size``, torch's LSTMP), peepholes (Gers &
Schmidhuber 2000) and layer norm (Ba et al. 2016) for the LSTM and GRU, against the NumPy
reference of their equations (tests/reference.py); the fast path's gradients against the
reference scan's.
Torch parity of the projection is in test_interop.py, bad options in test_errors.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrent
from recurrent import cells
from tests import reference as ref

KEY = jax.random.PRNGKey(5)
B, T, I, H, P = 3, 5, 4, 5, 3
LENGTHS = jnp.array([5, 2, 4])
ALL = dict(proj_size=P, peephole=True, layer_norm=True)
LSTM_OPTIONS = [dict(proj_size=P), dict(peephole=True), dict(layer_norm=True), ALL]
# each option alone is in the step tests; in whole layers: layer norm without peepholes
# (one squashing of all gates), every LSTM option at once, and both GRU forms
CASES = [("lstm", dict(layer_norm=True), {}), ("lstm", ALL, {}),
         ("gru", dict(layer_norm=True), dict(reset_after=True)),
         ("gru", dict(layer_norm=True), dict(reset_after=False))]


def _perturb(params, key, scale=0.3):
    """Every weight moved off its init (layer-norm gains start at 1, shifts at 0), so that a
    swapped or ignored weight shows."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [w + scale * jax.random.normal(k, w.shape, w.dtype)
                                        for w, k in zip(leaves, keys, strict=True)])


def _stack(kind, opts, num_layers):
    """Perturbed bidirectional params, an input and a random initial state."""
    init = recurrent.init_lstm if kind == "lstm" else recurrent.init_gru
    k1, k2, k3, k4 = jax.random.split(KEY, 4)
    params = _perturb(init(k1, I, H, num_layers, True, **opts), k2)
    x = jax.random.normal(k3, (B, T, I))
    h0 = jax.random.normal(k4, (2 * num_layers, B, H))  # (L*D, batch, H)
    state = (h0[..., :opts.get("proj_size") or H], -h0) if kind == "lstm" else h0
    return params, x, state


@pytest.mark.parametrize("opts", LSTM_OPTIONS)
def test_lstm_step_matches_equations(opts):
    cell = recurrent.lstm_cell(H, **opts)
    params = _perturb(cell.init(KEY, I), KEY)
    k1, k2, k3 = jax.random.split(KEY, 3)
    x = jax.random.normal(k1, (B, I))
    h = jax.random.normal(k2, (B, opts.get("proj_size") or H))
    c = jax.random.normal(k3, (B, H))
    xp = cell.project(params, x)
    (h1, c1), y = cell.step(params, (h, c), xp)
    for b in range(B):
        want_h, want_c = ref.lstm_step(params, *(np.asarray(v[b]) for v in (x, h, c)))
        np.testing.assert_allclose(h1[b], want_h, atol=1e-5)
        np.testing.assert_allclose(c1[b], want_c, atol=1e-5)
    np.testing.assert_array_equal(y, h1)
    np.testing.assert_array_equal(cell.activations(params, (h, c), xp)["h"], h1)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_layer_norm_step_matches_equations(reset_after):
    cell = recurrent.gru_cell(H, reset_after=reset_after, layer_norm=True)
    params = _perturb(cell.init(KEY, I), KEY)
    k1, k2 = jax.random.split(KEY)
    x, h = jax.random.normal(k1, (B, I)), jax.random.normal(k2, (B, H))
    h1, _ = cell.step(params, h, cell.project(params, x))
    for b in range(B):
        want = ref.gru_step(params, np.asarray(x[b]), np.asarray(h[b]), reset_after)
        np.testing.assert_allclose(h1[b], want, atol=1e-5)


@pytest.mark.parametrize("kind, opts, layer_opts", CASES)
def test_layer_reads_options_off_params_and_matches_reference(kind, opts, layer_opts):
    """Bidirectional layers with lengths and an initial state; the options are not repeated
    at call time. Two layers where the second reads the projected ``2 * P`` features."""
    params, x, state = _stack(kind, opts, num_layers=2 if opts.get("proj_size") else 1)
    layer = recurrent.lstm if kind == "lstm" else recurrent.gru
    y, final = layer(params, x, LENGTHS, state, **layer_opts)
    want_y, want_final = ref.run_layers(kind, params, x, LENGTHS, state, **layer_opts)
    width = opts.get("proj_size") or H
    assert y.shape == (B, T, 2 * width)
    np.testing.assert_allclose(y, want_y, atol=1e-5)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-5), final, want_final)
    if kind == "lstm":
        assert final[0].shape[-1] == width and final[1].shape[-1] == H


@pytest.mark.parametrize("kind, opts, layer_opts", CASES[1::2])
def test_fast_path_gradients_equal_reference_scan(kind, opts, layer_opts):
    """The gradients of the fast path's hand-written VJP with every option on, against
    JAX's autodiff of the reference scan (the forward pass is checked above)."""
    params, x, state = _stack(kind, opts, num_layers=1)
    layer = recurrent.lstm if kind == "lstm" else recurrent.gru

    def grad(impl):
        def loss(params, x, state):
            y, final = layer(params, x, LENGTHS, state, impl=impl, **layer_opts)
            return jnp.sum(jnp.sin(y)) + sum(jnp.sum(f**2) for f in jax.tree.leaves(final))
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, x, state)

    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
                 grad("fast"), grad("reference"))


def test_params_shapes_init_and_options_read_back():
    params = recurrent.init_lstm(KEY, I, H, 2, True, **ALL)
    first, last = params[0][0], params[1][1]
    assert first.w_ih.shape == (4 * H, I) and last.w_ih.shape == (4 * H, 2 * P)
    assert last.w_hh.shape == (4 * H, P) and last.w_hr.shape == (P, H)
    assert last.w_ci.shape == last.w_cf.shape == last.w_co.shape == (H,)
    assert last.gamma_ih.shape == last.gamma_hh.shape == (4 * H,)
    np.testing.assert_array_equal(last.gamma_c, np.ones(H))
    np.testing.assert_array_equal(last.beta_c, np.zeros(H))
    assert cells.lstm_options(last) == ALL
    plain = recurrent.init_lstm(KEY, I, H)[0][0]
    assert cells.lstm_options(plain) == dict(proj_size=0, peephole=False, layer_norm=False)
    assert all(getattr(plain, f) is None for f in recurrent.LSTMParams._fields[4:])
    gru = recurrent.init_gru(KEY, I, H, layer_norm=True)[0][0]
    assert gru.gamma_ih.shape == gru.gamma_hh.shape == (3 * H,)
    assert cells.gru_options(gru) == dict(layer_norm=True)
    h, c = recurrent.lstm_cell(H, proj_size=P).initial_carry((2,), jnp.float32)
    assert h.shape == (2, P) and c.shape == (2, H)


def test_options_leave_the_other_weights_as_drawn():
    """Peepholes and layer norm draw from their own keys: the weights they share with the
    plain cell are the plain cell's."""
    plain = recurrent.lstm_cell(H).init(KEY, I)
    for opts in (dict(peephole=True), dict(layer_norm=True)):
        params = recurrent.lstm_cell(H, **opts).init(KEY, I)
        for name in plain._fields[:4]:
            np.testing.assert_array_equal(getattr(params, name), getattr(plain, name))


def test_cell_options_compose_with_the_layer_options():
    """Dropout, zoneout, per-step gates and a learned state run on top of every cell
    option; at zero rates in evaluation they change nothing."""
    params = recurrent.init_lstm(KEY, I, H, 2, True, **ALL)
    x = jax.random.normal(KEY, (B, T, I))
    y, _ = recurrent.lstm(params, x, LENGTHS)
    y_eval, _ = recurrent.lstm(params, x, LENGTHS, input_dropout=0.3, hidden_zoneout=0.0,
                               deterministic=True)
    np.testing.assert_array_equal(y_eval, y)
    y_train, (h_n, c_n), acts = recurrent.lstm(
        params, x, LENGTHS, key=KEY, recurrent_dropout=0.3, cell_zoneout=0.2,
        return_activations=True)
    assert y_train.shape == (B, T, 2 * P) and h_n.shape == (4, B, P) and c_n.shape == (4, B, H)
    assert acts[1][1]["h"].shape == (B, T, P) and acts[1][1]["c"].shape == (B, T, H)
    module = recurrent.linen.LSTM(H, proj_size=P, peephole=True, learn_initial_state=True)
    state = module.init(KEY, x, deterministic=True)["params"]["initial_state"]
    h_0, c_0 = state["h"], state["c"]
    assert h_0.shape == (1, P) and c_0.shape == (1, H)
