"""The layer-level options of lstm/gru/rnn and their Flax modules: variational dropout and
zoneout against a Python loop with the same masks, per-step activations, and a learnable
(batch-free) initial state."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.test_util import check_grads

import recurrent
import recurrent.linen as rl
import recurrent.nnx as rn
from recurrent.kinds import KINDS, NONLINEAR_IMPLS
from recurrent.regularize import Masks, Regularization, draw_masks
from tests import reference as ref

KEY = jax.random.key(3)
B, T, I, H = 3, 6, 4, 3
LENGTHS = jnp.array([6, 2, 4])
X = jax.random.normal(jax.random.key(1), (B, T, I))
# the kinds with a nonlinear step, whose scan runs the dropouts and zoneouts: (init, layer)
LAYERS = {name: recurrent.layers.LAYERS[name] for name, kind in KINDS.items()
          if kind.impls == NONLINEAR_IMPLS}


def _masks(key, reg, index, input_size):
    """The masks the layer draws for layer-direction ``index``, as its docstring says."""
    if not reg.random:
        return Masks(None, None, {})
    return jax.tree.map(np.asarray, _draw(key, index, reg, input_size))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _draw(key, index, reg, input_size):
    _, masks_key = jax.random.split(key)
    return draw_masks(jax.random.fold_in(masks_key, index), reg, B, T, input_size,
                      {"h": H, "c": H})


def _direction(kind, p, xs, masks, b, reg, reverse, **opts):
    """One sequence ``xs (n, I)`` through one direction, a Python loop over the reference
    steps: the input and recurrent masks fixed over time, zoneout per step (or its
    expectation when ``reg.deterministic``)."""
    m_x = 1 if masks.inputs is None else masks.inputs[b]
    m_h = 1 if masks.recurrent is None else masks.recurrent[b]
    keep = {k: z[b] for k, z in masks.zoneout.items()}  # each (T, H)
    state = {"h": np.zeros(H), "c": np.zeros(H)}
    ys = np.zeros((len(xs), H))
    for t in (range(len(xs) - 1, -1, -1) if reverse else range(len(xs))):
        x_t, h_rec = xs[t] * m_x, state["h"] * m_h
        if kind == "lstm":
            new = dict(zip("hc", ref.lstm_step(p, x_t, h_rec, state["c"]), strict=True))
        elif kind == "gru":
            new = {"h": ref.gru_step(p, x_t, state["h"], h_rec=h_rec, **opts)}
        else:
            new = {"h": ref.rnn_step(p, x_t, h_rec, **opts)}
        for k, rate in reg.zoneout().items():
            new[k] = (rate * state[k] + (1 - rate) * new[k] if reg.deterministic
                      else np.where(keep[k][t], state[k], new[k]))
        state.update(new)
        ys[t] = state["h"]
    return ys, state


def _reference(kind, params, x, lengths, reg, key, **opts):
    """The stacked layer from :func:`_direction`: ``y (B, T, D*H)`` and ``{"h", "c"}`` of
    ``(L*D, B, H)`` final states, float64."""
    D = len(params[0])
    out = np.asarray(x, np.float64)
    finals = {k: np.zeros((len(params) * D, B, H)) for k in "hc"}
    for l, layer in enumerate(params):
        new_out = np.zeros((B, T, D * H))
        for d, p in enumerate(layer):
            masks = _masks(key, reg, l * D + d, out.shape[-1])
            for b, n in enumerate(np.asarray(lengths).tolist()):
                ys, state = _direction(kind, p, out[b, :n], masks, b, reg, d == 1, **opts)
                new_out[b, :n, d * H:(d + 1) * H] = ys
                for k in "hc":
                    finals[k][l * D + d, b] = state[k]
        out = new_out
    return out, finals


LSTM_RATES = dict(input_dropout=0.3, recurrent_dropout=0.4, hidden_zoneout=0.3,
                  cell_zoneout=0.5)


@pytest.mark.parametrize("kind, num_layers, rates, opts, deterministic, batch_first", [
    ("lstm", 2, LSTM_RATES, {}, False, True),
    ("lstm", 2, LSTM_RATES, {}, True, True),
    ("gru", 1, dict(recurrent_dropout=0.5, hidden_zoneout=0.4), {"reset_after": False},
     False, True),
    ("rnn", 1, dict(input_dropout=0.3, hidden_zoneout=0.5), {"nonlinearity": "relu"}, False,
     False),
])
def test_options_match_a_python_loop_with_the_same_masks(kind, num_layers, rates, opts,
                                                         deterministic, batch_first):
    init, layer = LAYERS[kind]
    params = init(jax.random.key(0), I, H, num_layers, bidirectional=True)
    key = None if deterministic else KEY
    x = X if batch_first else jnp.swapaxes(X, 0, 1)  # (time, batch, I)
    y, final = jax.jit(functools.partial(layer, **rates, **opts, deterministic=deterministic,
                                         batch_first=batch_first))(params, x, LENGTHS, key=key)
    y = y if batch_first else jnp.swapaxes(y, 0, 1)  # (batch, time, D*H)
    reg = Regularization(**rates, deterministic=deterministic)
    want_y, want = _reference(kind, params, X, LENGTHS, reg, key, **opts)
    np.testing.assert_allclose(y, want_y, atol=1e-5)
    for got, k in zip(final if kind == "lstm" else (final,), "hc", strict=False):
        np.testing.assert_allclose(got, want[k], atol=1e-5)
    plain, _ = _reference(kind, params, X, LENGTHS, Regularization(), None, **opts)
    assert not np.allclose(y, plain, atol=1e-3)  # the options did change the output


def test_dropout_alone_changes_nothing_in_evaluation():
    params = recurrent.init_lstm(jax.random.key(0), I, H, 2)
    plain = jax.make_jaxpr(lambda p: recurrent.lstm(p, X))(params)
    off = jax.make_jaxpr(lambda p: recurrent.lstm(
        p, X, dropout=0.5, input_dropout=0.5, recurrent_dropout=0.5, deterministic=True))(params)
    assert str(off) == str(plain)  # the same computation: the fast path, no masks
    assert "custom_vjp" in str(plain)
    zoneout = jax.make_jaxpr(lambda p: recurrent.lstm(p, X, hidden_zoneout=0.1,
                                                      deterministic=True))(params)
    assert "custom_vjp" not in str(zoneout)  # the scan


def test_masks_are_scaled_keep_masks_drawn_from_the_key():
    reg = Regularization(input_dropout=0.25, recurrent_dropout=0.5, hidden_zoneout=0.2,
                         cell_zoneout=0.6)
    draw = functools.partial(draw_masks, reg=reg, batch=500, time=20, input_size=40,
                             widths={"h": 30, "c": 30})
    masks = draw(KEY)
    for mask, rate in ((masks.inputs, 0.25), (masks.recurrent, 0.5)):
        np.testing.assert_allclose(np.unique(mask), [0, 1 / (1 - rate)], rtol=1e-6)
        assert abs(float(mask.mean()) - 1) < 0.05  # E[mask] = 1: activations keep their scale
    assert masks.zoneout["h"].shape == masks.zoneout["c"].shape == (500, 20, 30)
    assert abs(float(masks.zoneout["c"].mean()) - 0.6) < 0.02
    jax.tree.map(np.testing.assert_array_equal, draw(KEY), masks)
    other = draw(jax.random.key(4))
    assert not np.array_equal(other.inputs, masks.inputs)


def test_gradients_with_options_check_numerically():
    with jax.enable_x64(True):
        params = recurrent.init_lstm(jax.random.key(0), I, 2, param_dtype=jnp.float64)
        x = X[:, :4].astype(jnp.float64)  # (batch, 4, I)

        def loss(params, x):
            y, (h, c) = recurrent.lstm(params, x, jnp.array([4, 2, 3]), key=KEY, input_dropout=0.3,
                                       recurrent_dropout=0.3, hidden_zoneout=0.3,
                                       cell_zoneout=0.3)
            return jnp.sum(jnp.sin(y)) + jnp.sum(c**2)

        check_grads(jax.jit(loss), (params, x), order=1, modes=["rev"], eps=1e-6, atol=1e-6,
                    rtol=1e-6)


@pytest.mark.parametrize("kind, keys, num_layers, batch_first", [
    ("lstm", "ifgoch", 2, True), ("gru", "rznh", 1, True), ("rnn", "h", 1, False)])
def test_layer_activations_are_unrolls_and_end_at_the_final_state(kind, keys, num_layers,
                                                                   batch_first):
    init, layer = LAYERS[kind]
    params = init(jax.random.key(0), I, H, num_layers, bidirectional=True)
    cell = getattr(recurrent, f"{kind}_cell")(H)
    x = X if batch_first else jnp.swapaxes(X, 0, 1)  # (time, batch, I)
    _, final, acts = jax.jit(functools.partial(layer, return_activations=True,
                                               batch_first=batch_first))(params, x, LENGTHS)
    if not batch_first:  # (time, batch, H) -> (batch, time, H)
        acts = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), acts)

    @jax.jit
    def unrolls(acts):
        """Each layer and direction by unroll, on the layer input rebuilt from ``acts``."""
        inputs, out = X, []
        for l in range(num_layers):
            out.append([recurrent.unroll(cell, params[l][d], inputs, seq_lengths=LENGTHS,
                                         reverse=d == 1, return_activations=True)[1]
                        for d in range(2)])
            inputs = jnp.concatenate([acts[l][0]["h"], acts[l][1]["h"]], axis=-1)
        return out

    want = unrolls(acts)
    rows = jnp.arange(B)
    for l in range(num_layers):
        for d in range(2):
            assert set(acts[l][d]) == set(keys)
            for k in keys:
                assert acts[l][d][k].shape == (B, T, H)
                np.testing.assert_allclose(acts[l][d][k], want[l][d][k], atol=1e-6,
                                           err_msg=k)
            end = LENGTHS - 1 if d == 0 else jnp.zeros_like(LENGTHS)  # each direction's end
            for k, final_k in zip("hc", final if kind == "lstm" else (final,), strict=False):
                np.testing.assert_allclose(acts[l][d][k][rows, end], final_k[2 * l + d],
                                           atol=1e-6)


def test_batch_free_initial_state_broadcasts():
    params = recurrent.init_lstm(jax.random.key(0), I, H, bidirectional=True)
    h0, c0 = jax.random.normal(jax.random.key(5), (2, 2, H))  # (L*D, H) each

    def loss(state):
        y, _ = recurrent.lstm(params, X, LENGTHS, state)
        return jnp.sum(jnp.sin(y))

    @jax.jit
    def losses_and_grads(h0, c0):
        full = jax.tree.map(lambda s: jnp.broadcast_to(s[:, None], (2, B, H)), (h0, c0))
        losses = [loss(s) for s in ((h0, c0), (h0[:, None], c0[:, None]), full)]
        return losses, jax.grad(loss)((h0, c0)), jax.grad(loss)(full)

    losses, grad, grad_full = losses_and_grads(h0, c0)
    np.testing.assert_allclose(losses[:2], [losses[2]] * 2, rtol=1e-6)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w.sum(1), atol=1e-6), grad,
                 grad_full)  # the gradient of a shared state sums over the batch
    assert all(np.abs(g).min() > 0 for g in grad)
    with pytest.raises(ValueError, match=r"initial_state\[0\] \(h_0\) has shape \(2, 2, 3\)"):
        recurrent.lstm(params, X, initial_state=(jnp.zeros((2, 2, H)), c0))


@pytest.mark.parametrize("call, match", [
    (dict(recurrent_dropout=1.0, key=KEY), r"lstm: recurrent_dropout must be a number in "
                                           r"\[0, 1\); got 1.0"),
    (dict(cell_zoneout=-0.1), r"lstm: cell_zoneout must be a number in \[0, 1\)"),
    (dict(hidden_zoneout=0.1), "lstm: hidden_zoneout=0.1 needs a PRNG key"),
    (dict(hidden_zoneout=0.1, deterministic=True, impl="deer"), "impl='deer' cannot"),
    (dict(return_activations=True, impl="quasi_deer"), "impl='quasi_deer' cannot"),
])
def test_bad_options(call, match):
    params = recurrent.init_lstm(jax.random.key(0), I, H)
    with pytest.raises(ValueError, match=match):
        recurrent.lstm(params, X, **call)


def test_linen_options_learned_state_and_activations():
    rates = dict(recurrent_dropout=0.3, hidden_zoneout=0.2, cell_zoneout=0.4)
    module = rl.LSTM(H, learn_initial_state=True, **rates)
    variables = module.init(jax.random.key(0), X, deterministic=True)
    state = variables["params"]["initial_state"]
    h0, c0 = state["h"], state["c"]
    assert h0.shape == c0.shape == (1, H) and not h0.any()
    evaluation = jax.jit(functools.partial(module.apply, deterministic=True,
                                           return_activations=True))(variables, X, LENGTHS)
    y, _, acts = jax.jit(functools.partial(recurrent.lstm, **rates, deterministic=True,
                                           return_activations=True))(
        module.get_params(variables["params"]), X, LENGTHS, (h0, c0))
    jax.tree.map(np.testing.assert_array_equal, evaluation, (y, acts))

    @jax.jit
    def train(params, seed):
        return module.apply({"params": params}, X, LENGTHS, deterministic=False,
                            rngs={"dropout": jax.random.key(seed)})

    params = variables["params"]
    np.testing.assert_array_equal(train(params, 1), train(params, 1))
    assert not np.allclose(train(params, 1), train(params, 2))
    assert not np.allclose(train(params, 1), evaluation[0])

    opt = optax.adam(1e-1)

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(lambda p: jnp.sum(train(p, 1) ** 2))(params)
        updates, opt_state = opt.update(grads, opt_state)
        return (optax.apply_updates(params, updates), opt_state,
                list(grads["initial_state"].values()))

    opt_state = opt.init(params)
    for _ in range(2):
        params, opt_state, grad = step(params, opt_state)
        assert all(np.abs(g).max() > 0 for g in grad)
    assert all(np.abs(s).min() > 0 for s in params["initial_state"].values())  # it moved
    with pytest.raises(ValueError, match="LSTM: recurrent_dropout=0.3, hidden_zoneout=0.2, "
                                         "cell_zoneout=0.4 needs deterministic"):
        module.apply(variables, X)
    with pytest.raises(ValueError, match="MinGRU: return_activations is only for LSTM"):
        rl.MinGRU(H).init(jax.random.key(0), X, return_activations=True)


def test_nnx_options_learned_state_and_activations():
    model = rn.GRU(I, H, input_dropout=0.3, hidden_zoneout=0.3, learn_initial_state=True,
                   rngs=nnx.Rngs(0))
    assert model.initial_state.h.get_value().shape == (1, H)
    run = nnx.jit(lambda m: m(X, LENGTHS, return_state=True, return_activations=True))
    first, second = run(model), run(model)
    assert not np.allclose(first[0], second[0])  # the dropout stream advances
    model.eval()
    y, h_n, acts = run(model)
    want = recurrent.gru(model.get_params(), X, LENGTHS, jnp.zeros((1, H)),
                         input_dropout=0.3, hidden_zoneout=0.3, deterministic=True,
                         return_activations=True)
    jax.tree.map(np.testing.assert_array_equal, (y, h_n, acts), want)

    model.train()
    optimizer = nnx.Optimizer(model, optax.adam(1e-1), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.sum(m(X, LENGTHS) ** 2))(model)
        optimizer.update(model, grads)
        return grads.initial_state.h.get_value()

    assert np.abs(step(model, optimizer)).max() > 0
    step(model, optimizer)
    assert np.abs(model.initial_state.h.get_value()).min() > 0
    with pytest.raises(ValueError, match="LSTM: cell_zoneout must be a number in"):
        rn.LSTM(I, H, cell_zoneout=1.5, rngs=nnx.Rngs(0))
