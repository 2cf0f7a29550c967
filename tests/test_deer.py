"""quasi-DEER at scale: the diagonal Jacobian without the matrix, memory linear in time and
hidden size, full DEER's size limit, chunks, and the backward pass's sequential fallback."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrent
from recurrent import deer
from recurrent.deer import deer_unroll

KEY = jax.random.PRNGKey(7)
B, T, I, H = 2, 10, 3, 4

# Cells whose unit i reads the old state only through unit i of each gate block: there
# the structured JVP gives the exact diagonal.
EXACT = {
    "lstm": lambda: recurrent.lstm_cell(H),
    "lstm_peephole": lambda: recurrent.lstm_cell(H, peephole=True),
    "gru": lambda: recurrent.gru_cell(H),
    "rnn_tanh": lambda: recurrent.rnn_cell(H),
    "rnn_relu": lambda: recurrent.rnn_cell(H, nonlinearity="relu"),
}
# Cells that mix units outside the matmul: quasi-Newton with an approximate diagonal.
MIXING = {
    "gru_reset_before": lambda: recurrent.gru_cell(H, reset_after=False),
    "gru_layer_norm": lambda: recurrent.gru_cell(H, layer_norm=True),
    "lstm_proj": lambda: recurrent.lstm_cell(H, proj_size=2),
    "lstm_layer_norm": lambda: recurrent.lstm_cell(H, layer_norm=True),
}


def _close(a, b, atol):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=atol, rtol=atol), a, b)


def _random_params(cell):
    """Params with every weight (gains included) drawn at random, so no diagonal is trivial."""
    params = cell.init(KEY, I)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(KEY, len(leaves))
    return jax.tree.unflatten(treedef, [leaf + 0.5 * jax.random.normal(k, leaf.shape)
                                        for leaf, k in zip(leaves, keys, strict=True)])


@pytest.mark.parametrize("name", EXACT)
def test_structured_diagonal_is_the_jacobians_diagonal(name):
    cell = EXACT[name]()
    params = _random_params(cell)
    carry = jax.tree.map(lambda c: jax.random.normal(KEY, c.shape),
                         cell.initial_carry((T, B), jnp.float32))  # (T, B, ...) states
    s, unflatten = deer._flatten_carry(carry)  # (T, B, S)
    xp = cell.project(params, jax.random.normal(KEY, (T, B, I)))  # (T, B, G)
    valid = jnp.arange(T)[:, None] < jnp.array([T, 4])[None, :]  # (T, B)
    sizes = [leaf.shape[-1] for leaf in jax.tree.leaves(carry)]
    new, got = deer._structured_diagonal(cell, unflatten, sizes)(params, s, xp, valid)

    def step_flat(s, xp_t, valid_t):  # (S,) -> (S,)
        new, _ = cell.step(params, unflatten(s[None]), xp_t[None])
        return jnp.where(valid_t, deer._flatten_carry(new)[0][0], s)

    full = jax.vmap(jax.vmap(jax.jacfwd(step_flat)))(s, xp, valid)  # (T, B, S, S)
    np.testing.assert_allclose(got, jnp.diagonal(full, axis1=-2, axis2=-1), atol=1e-5)
    np.testing.assert_allclose(new, jax.vmap(jax.vmap(step_flat))(s, xp, valid), atol=1e-6)


@pytest.mark.parametrize("name", MIXING)
def test_quasi_deer_converges_on_cells_that_mix_units(name):
    cell = MIXING[name]()
    params = cell.init(KEY, I)
    xs = jax.random.normal(KEY, (B, T, I))
    lengths = jnp.array([T, 3])
    final, ys, info = deer_unroll(cell, params, xs, seq_lengths=lengths, return_info=True)
    assert bool(info["converged"])
    _close((final, ys), recurrent.unroll(cell, params, xs, seq_lengths=lengths), 1e-4)


def _training_step_bytes(time, hidden, batch=2, inputs=2):
    """Bytes XLA plans for one quasi-DEER training step (loss and gradients of a GRU
    layer): temporaries plus arguments plus outputs, from the compiled memory analysis."""
    cell = recurrent.gru_cell(hidden)
    params = jax.eval_shape(lambda: cell.init(KEY, inputs))
    xs = jax.ShapeDtypeStruct((batch, time, inputs), jnp.float32)

    def loss(params, xs):
        return jnp.sum(jnp.sin(deer_unroll(cell, params, xs)[1]))

    mem = jax.jit(jax.value_and_grad(loss)).lower(params, xs).compile().memory_analysis()
    return mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes


def test_quasi_deer_training_memory_is_linear_in_time_and_hidden():
    base = _training_step_bytes(512, 16)
    longer = _training_step_bytes(1024, 16)
    wider = _training_step_bytes(512, 32)
    # Linear in T*H: doubling either doubles it (O(H^2) Jacobians would quadruple `wider`;
    # the weights, O(H^2) but independent of T, are under 2% of `base`).
    assert 1.8 < longer / base < 2.2, (base, longer)
    assert 1.8 < wider / base < 2.2, (base, wider)


def test_full_deer_is_refused_above_the_limit_and_quasi_deer_traces():
    cell = recurrent.gru_cell(128)
    params = jax.eval_shape(lambda: cell.init(KEY, 4))
    xs = jax.ShapeDtypeStruct((16, 65536, 4), jnp.float32)
    with pytest.raises(ValueError, match=r"jacobian='full' needs \(time=65536, batch=16, "
                                         r"S=128, S=128\) = 17,179,869,184 Jacobian entries"):
        jax.eval_shape(lambda p, x: deer_unroll(cell, p, x, jacobian="full"), params, xs)
    ys = jax.eval_shape(lambda p, x: deer_unroll(cell, p, x)[1], params, xs)
    assert ys.shape == (16, 65536, 128)
    # With chunks the full Jacobians are chunk steps long, under the limit again.
    jax.eval_shape(lambda p, x: deer_unroll(cell, p, x, jacobian="full", chunk=64), params, xs)


@pytest.mark.parametrize("jacobian", ["diagonal", "full"])
def test_chunked_deer_equals_sequential(jacobian):
    cell = recurrent.lstm_cell(H)
    params = cell.init(KEY, I)
    xs = jax.random.normal(KEY, (B, T, I))
    lengths = jnp.array([T, 7])
    carry = jax.tree.map(lambda c: c + 0.3, cell.initial_carry((B,), jnp.float32))

    def run(unroll_fn, **opts):
        def loss(params, xs, carry):
            final, ys = unroll_fn(cell, params, xs, carry, seq_lengths=lengths, **opts)
            return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(final))

        return jax.value_and_grad(loss, argnums=(0, 1, 2))(params, xs, carry)

    _, _, info = deer_unroll(cell, params, xs, carry, seq_lengths=lengths, chunk=4,
                             jacobian=jacobian, return_info=True)
    assert bool(info["converged"]) and int(info["iterations"]) <= 4 + 1
    _close(run(deer_unroll, chunk=4, jacobian=jacobian), run(recurrent.unroll), 1e-4)


@pytest.mark.parametrize("chunk", [0, -2, 2.0, True])
def test_bad_chunk(chunk):
    cell = recurrent.gru_cell(H)
    with pytest.raises(ValueError, match=f"chunk must be a positive int or None; got {chunk!r}"):
        deer_unroll(cell, cell.init(KEY, I), jnp.zeros((B, T, I)), chunk=chunk)


def _adjoint_problem():
    """What a GRU's backward pass needs, time-major: ``(cell, params, xp (T, B, G), valid
    (T, B), s0 (B, H), states (T, B, H), g (T, B, H), step_flat)``. The adjoint is linear in
    ``g`` at any linearisation point, so the states are random: every method must agree."""
    cell = recurrent.gru_cell(H)
    params = cell.init(KEY, I)
    xp = cell.project(params, jax.random.normal(KEY, (T, B, I)))  # (T, B, 3H)
    valid = jnp.arange(T)[:, None] < jnp.array([T, 6])[None, :]  # (T, B)
    s0 = jax.random.normal(jax.random.PRNGKey(1), (B, H))
    states = jax.random.normal(jax.random.PRNGKey(3), (T, B, H))
    g = jax.random.normal(jax.random.PRNGKey(2), states.shape)

    def step_flat(params, s, xp_t, valid_t):  # (H,) -> (H,)
        return jnp.where(valid_t, cell.step(params, s[None], xp_t[None])[0][0], s)

    return cell, params, xp, valid, s0, states, g, step_flat


def _true_adjoint(step_flat, params, prev, xp, valid, g):
    """``lambda_t = g_t + J_{t+1}^T lambda_{t+1}`` by a Python loop over full Jacobians."""
    lam, out = jnp.zeros_like(g[0]), []
    for t in reversed(range(g.shape[0])):
        lam = g[t] + lam
        out.append(lam)
        jac = jax.vmap(jax.jacfwd(step_flat, argnums=1), (None, 0, 0, 0))(
            params, prev[t], xp[t], valid[t])  # (B, H, H) = J_t
        lam = jnp.einsum("bij,bi->bj", jac, lam)  # J_t^T lambda_t
    return jnp.stack(out[::-1])


def test_diagonal_adjoint_iteration_converges_to_the_adjoint():
    cell, params, xp, valid, s0, states, g, step_flat = _adjoint_problem()
    prev = deer._previous(states, s0)
    over_time = jax.vmap(jax.vmap(step_flat, (None, 0, 0, 0)), (None, 0, 0, 0))
    _, jac_t = jax.vjp(lambda s: over_time(params, s, xp, valid), prev)
    _, d = deer._structured_diagonal(cell, lambda s: s, [H])(params, prev, xp, valid)
    lam, (iterations, error) = deer._diagonal_adjoint(lambda v: jac_t(v)[0], d, g, 1e-6, 50,
                                                      0.0)
    assert float(error) <= 1e-6 and int(iterations) <= T
    _close(lam, _true_adjoint(step_flat, params, prev, xp, valid, g), 1e-5)


def test_backward_falls_back_to_a_sequential_adjoint():
    """Capped at one iteration the adjoint iteration has not converged; the sequential
    reverse scan of VJPs then gives the same cotangents as the converged iteration."""
    cell, params, xp, valid, s0, states, g, step_flat = _adjoint_problem()

    def cotangents(max_iters):
        diagonal = deer._structured_diagonal(cell, lambda s: s, [H])
        solve = deer._make_solver(step_flat, diagonal, 1e-6, max_iters, 0.0)
        d_params, d_xp, _, d_s0 = solve.bwd((params, xp, valid, s0, states), (g, None))
        return d_params, d_xp, d_s0

    want = cotangents(50)
    _close(cotangents(1), want, 1e-5)
    prev = deer._previous(states, s0)
    lam = _true_adjoint(step_flat, params, prev, xp, valid, g)
    over_time = jax.vmap(jax.vmap(step_flat, (None, 0, 0, 0)), (None, 0, 0, 0))
    _, vjp = jax.vjp(lambda p, s, x: over_time(p, s, x, valid), params, prev, xp)
    d_params, d_prev, d_xp = vjp(lam)
    _close(want, (d_params, d_xp, d_prev[0]), 1e-5)
