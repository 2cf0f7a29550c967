"""The fast path (custom-VJP scan, both directions in one scan, chunked remat) against the
reference path (one lax.scan per direction, differentiated by JAX): outputs, final states
and gradients with respect to params, inputs and initial state."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrent
from recurrent import fast
from recurrent.vjp import _scan, layer_fn

KEY = jax.random.PRNGKey(7)
B, T, I, H = 3, 6, 4, 5
LAYERS = {
    "lstm": (recurrent.init_lstm, recurrent.lstm, {}),
    "gru": (recurrent.init_gru, recurrent.gru, {}),
    "gru_reset_before": (recurrent.init_gru, recurrent.gru, {"reset_after": False}),
    "rnn": (recurrent.init_rnn, recurrent.rnn, {}),
    "rnn_relu": (recurrent.init_rnn, recurrent.rnn, {"nonlinearity": "relu"}),
}


def _setup(kind, num_layers, bidirectional, dtype=jnp.float32):
    init, layer, opts = LAYERS[kind]
    k1, k2, k3 = jax.random.split(KEY, 3)
    params = init(k1, I, H, num_layers, bidirectional, param_dtype=dtype)
    x = jax.random.normal(k2, (B, T, I), dtype)
    n_states = num_layers * (2 if bidirectional else 1)
    h0 = 0.5 * jax.random.normal(k3, (2, n_states, B, H), dtype)
    state = (h0[0], h0[1]) if kind == "lstm" else h0[0]
    return layer, opts, params, x, state


def _loss(layer, opts, **kwargs):
    """A loss that weighs every output and final-state entry differently."""
    def loss(params, x, state):
        y, final = layer(params, x, initial_state=state, **opts, **kwargs)
        leaves = [y, *jax.tree.leaves(final)]
        return sum(jnp.sum(jnp.sin(3.0 * v.astype(jnp.float32) + k))
                   for k, v in enumerate(leaves))
    return loss


def _grad(loss, argnums=(0, 1, 2)):
    return jax.jit(jax.grad(loss, argnums=argnums))


def _assert_close(got, want, atol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                                   atol=atol, rtol=atol)


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("num_layers, bidirectional, lengths",
                         [(1, False, None), (2, True, (6, 2, 0))])
def test_fast_matches_reference(kind, num_layers, bidirectional, lengths):
    layer, opts, params, x, state = _setup(kind, num_layers, bidirectional)
    seq = None if lengths is None else jnp.array(lengths)
    fast = _loss(layer, opts, seq_lengths=seq)
    slow = _loss(layer, opts, seq_lengths=seq, impl="reference")
    run = jax.jit(lambda impl: layer(params, x, seq, state, impl=impl, **opts),
                  static_argnums=0)
    _assert_close(run("fast"), run("reference"), 1e-6)
    _assert_close(_grad(fast)(params, x, state), _grad(slow)(params, x, state), 1e-5)


@pytest.mark.parametrize("kind, chunk", [("lstm", 1), ("lstm", 4), ("lstm", 6),
                                         ("gru_reset_before", 4)])
def test_remat_chunks_match_reference(kind, chunk):
    """Chunks that divide T, that do not (padded, masked steps) and that cover all of it."""
    layer, opts, params, x, state = _setup(kind, 2, True)
    seq = jnp.array([6, 3, 1])
    fast = _loss(layer, opts, seq_lengths=seq, remat_chunk=chunk)
    slow = _loss(layer, opts, seq_lengths=seq, impl="reference")
    _assert_close(_grad(fast)(params, x, state), _grad(slow)(params, x, state), 1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_chunked_projection_matches_reference(kind, monkeypatch):
    """A sequence too long for one projection (``PROJECTION_BYTES`` made small: 2 steps a
    chunk, 3 chunks) runs chunk by chunk and gives the reference's outputs and state."""
    layer, opts, params, x, state = _setup(kind, 2, True)
    gates = 4 if kind == "lstm" else 3
    step_bytes = 4 * gates * H * 2 * B  # both directions' projected inputs, one step
    monkeypatch.setattr(fast, "PROJECTION_BYTES", int(2.5 * step_bytes))
    assert fast.projection_chunk(T, gates * H * 2 * B) == 2
    seq = jnp.array([6, 3, 1])
    got = layer(params, x, seq, state, **opts)
    _assert_close(got, layer(params, x, seq, state, impl="reference", **opts), 1e-6)


def test_remat_without_lengths_pads_with_masked_steps():
    layer, opts, params, x, state = _setup("lstm", 1, True)
    fast = _loss(layer, opts, remat_chunk=4)  # T = 6: the last chunk is half padding
    slow = _loss(layer, opts, impl="reference")
    _assert_close(_grad(fast)(params, x, state), _grad(slow)(params, x, state), 1e-5)


def test_remat_reduces_compiled_memory():
    params = recurrent.init_lstm(KEY, I, 32)
    x = jax.ShapeDtypeStruct((4, 512, I), jnp.float32)

    def temp_bytes(chunk):
        grad = jax.jit(jax.grad(
            lambda p, x: jnp.sum(recurrent.lstm(p, x, remat_chunk=chunk)[0])))
        return grad.lower(params, x).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(32) * 3 < temp_bytes(None)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bfloat16_matches_reference_loosely(kind):
    layer, opts, params, x, state = _setup(kind, 2, True)
    fast = _loss(layer, opts, dtype=jnp.bfloat16)
    slow = _loss(layer, opts, dtype=jnp.bfloat16, impl="reference")
    y_fast, _ = layer(params, x, None, state, dtype=jnp.bfloat16, **opts)
    assert y_fast.dtype == jnp.bfloat16
    _assert_close(_grad(fast, (0, 1))(params, x, state),
                  _grad(slow, (0, 1))(params, x, state), 5e-2)


def test_batch_major_and_time_major_agree():
    layer, opts, params, x, state = _setup("gru", 2, True)
    y, h = layer(params, x, None, state)
    y_t, h_t = layer(params, jnp.swapaxes(x, 0, 1), None, state, batch_first=False)
    _assert_close((jnp.swapaxes(y_t, 0, 1), h_t), (y, h), 1e-6)


def test_dropout_draws_the_reference_mask():
    layer, opts, params, x, state = _setup("lstm", 3, True)
    key = jax.random.PRNGKey(3)
    _assert_close(layer(params, x, None, state, 0.4, key),
                  layer(params, x, None, state, 0.4, key, impl="reference"), 1e-6)


@pytest.mark.parametrize("unroll", [4])
def test_unroll_does_not_change_results(unroll):
    layer, opts, params, x, state = _setup("lstm", 1, True)
    fast = _loss(layer, opts, unroll=unroll)
    slow = _loss(layer, opts, impl="reference")
    _assert_close(_grad(fast, 0)(params, x, state), _grad(slow, 0)(params, x, state), 1e-5)


@pytest.mark.parametrize("chunk", [None, 4])
def test_layer_fn_matches_autodiff_of_the_step_loop(chunk):
    """One direction's custom VJP (projection included) against JAX's VJP of a Python loop
    over ``project`` and ``step``; ``chunk`` projects a few steps at a time (with a
    remainder) when not differentiated."""
    cell = recurrent.gru_cell(H, reset_after=False)
    params = cell.init(KEY, I)
    xs = jax.random.normal(KEY, (T, B, I))
    h0 = jnp.ones((B, H)) * 0.3
    valid = jnp.arange(T)[:, None] < jnp.array([T, 2, 0])[None, :B]

    def fast(params, xs, h0):
        h, ys = layer_fn(cell, chunk=chunk)(params, xs, h0, valid)
        return jnp.sum(jnp.cos(ys)) + jnp.sum(h ** 2)

    def loop(params, xs, h0):
        h, ys = h0, []
        for t in range(T):
            new, y = cell.step(params, h, cell.project(params, xs[t]))
            h = jnp.where(valid[t][:, None], new, h)
            ys.append(jnp.where(valid[t][:, None], y, 0))
        return jnp.sum(jnp.cos(jnp.stack(ys))) + jnp.sum(h ** 2)

    _assert_close(fast(params, xs, h0), loop(params, xs, h0), 1e-5)
    _assert_close(_grad(fast, (0, 1, 2))(params, xs, h0),
                  _grad(loop, (0, 1, 2))(params, xs, h0), 1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_rewrites_its_buffer_as_lax_scan_would(reverse):
    """``_scan`` hands each step the same rows as ``lax.scan``, fetched or not, unrolled or
    not, and writes each step's new row over its own."""
    buffer = jax.random.normal(KEY, (T, B, 2 * H))  # read in two blocks, as gate slabs are
    streamed = (jnp.arange(T * B, dtype=jnp.float32).reshape(T, B), None)

    def body(c, b_t, s_t):
        c = jnp.tanh(c * b_t[:, :H] + b_t[:, H:]) + s_t[0][:, None]
        return c, jnp.concatenate([c, -c], axis=-1), (c, b_t)

    c0 = jnp.ones((B, H))
    want_c, (want_new, want_ys) = jax.lax.scan(
        lambda c, xs: (lambda c, new, y: (c, (new, y)))(*body(c, xs[0], xs[1])), c0,
        (buffer, streamed), reverse=reverse)
    for fetch in (False, True):
        for unroll in (1, 4):  # 4: three steps an iteration, the largest divisor of T = 6
            got = _scan(body, c0, buffer, streamed, T, fetch=fetch, reverse=reverse,
                        unroll=unroll)
            _assert_close(got, (want_c, want_new, want_ys), 0)


def _buffer_copies(fn, *args, shape):
    """How many copies of a ``shape`` float32 array the compiled ``fn`` makes."""
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    dims = ",".join(map(str, shape))
    return len(re.findall(rf"= f32\[{dims}\]\{{[0-9,]*\}} copy\(", hlo))


@pytest.mark.parametrize("kind, gates", [("lstm", 4), ("gru", 3)])
def test_training_step_rewrites_one_buffer_in_place(kind, gates):
    """The projected inputs, the recorded gates and their cotangents share one array that
    XLA updates in place, unrolled or not; a step whose read of the buffer the write does
    not depend on makes XLA copy it (the control shows the check can see that)."""
    layer, opts, params, x, state = _setup(kind, 1, False)
    for unroll in (1, 4):
        loss = _loss(layer, opts, unroll=unroll)
        assert _buffer_copies(jax.grad(loss), params, x, state, shape=(T, B, gates * H)) == 0

    def hazard(c, buffer):  # the row feeds only the carry: the write does not wait for it
        body = lambda c, row, _: (c + row, jnp.zeros_like(row), None)  # noqa: E731
        return _scan(body, c, buffer, None, T, fetch=False)[:2]

    rows = jnp.ones((T, B, H))
    assert _buffer_copies(hazard, jnp.zeros((B, H)), rows, shape=(T, B, H)) > 0


def test_impl_and_remat_chunk_are_checked():
    layer, opts, params, x, _ = _setup("lstm", 1, False)
    with pytest.raises(ValueError, match="impl"):
        layer(params, x, impl="cudnn")
    with pytest.raises(ValueError, match="remat_chunk"):
        layer(params, x, remat_chunk=0)
