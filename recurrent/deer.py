"""Parallel-in-time evaluation of any nonlinear cell by Newton's method (DEER, Lim et al.
2024; quasi-DEER, Gonzalez et al. 2024).

The states ``s_1..s_T`` of ``s_t = f(s_{t-1}, x_t)`` solve a system of ``T`` equations.
Linearising ``f`` around a guess of the whole trajectory turns it into the linear
recurrence ``s_t = J_t s_{t-1} + (f(s'_{t-1}) - J_t s'_{t-1})``, which
``jax.lax.associative_scan`` solves in ``O(log T)`` depth; iterating is Newton's method.
With the full Jacobian (DEER) it converges in few iterations but costs ``O(S^3)`` per step
for state size ``S``; with its diagonal (quasi-DEER) each iteration is cheap and
convergence is slower. Both reach the exact solution in at most ``T`` iterations.

Gradients use the implicit function theorem at the solution: the adjoint
``lambda_t = g_t + J_{t+1}^T lambda_{t+1}`` is again a linear recurrence, solved by a
reverse associative scan with the full Jacobians, so the backward pass is parallel too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from recurrent import checks
from recurrent.cells import Cell
from recurrent.framing import reverse_index
from recurrent.unroll import project_time_major
from recurrent.unroll import scan_unroll as sequential_unroll


def _flatten_carry(carry):
    """A carry pytree of ``(..., H_k)`` leaves as one ``(..., S)`` array, and its inverse."""
    leaves, treedef = jax.tree.flatten(carry)
    sizes = [leaf.shape[-1] for leaf in leaves]
    cuts = [sum(sizes[:k]) for k in range(1, len(sizes))]

    def unflatten(flat):
        return jax.tree.unflatten(treedef, jnp.split(flat, cuts, axis=-1))

    return jnp.concatenate(leaves, axis=-1), unflatten


def _diag_combine(earlier, later):
    """Composes ``s -> a1 s + b1`` then ``s -> a2 s + b2`` (diagonal ``a``)."""
    a1, b1 = earlier
    a2, b2 = later
    return a2 * a1, a2 * b1 + b2


def _full_combine(earlier, later):
    """Composes two affine maps with matrices ``a (..., S, S)``."""
    a1, b1 = earlier
    a2, b2 = later
    return a2 @ a1, jnp.einsum("...ij,...j->...i", a2, b1) + b2


def _solve_linear(jac, bias, s0, diagonal):
    """Solves ``s_t = J_t s_{t-1} + bias_t`` from ``s0 (B, S)``: ``(T, B, S)``."""
    combine = _diag_combine if diagonal else _full_combine
    a, b = jax.lax.associative_scan(combine, (jac, bias), axis=0)
    if diagonal:
        return a * s0 + b
    return jnp.einsum("tbij,bj->tbi", a, s0) + b


def _make_solver(step_flat, diagonal, tol, max_iters, damping):
    """The Newton solve ``(params, xp, valid, s0) -> states`` with an implicit-function VJP.

    ``step_flat(params, s (S,), xp_t (G,), valid_t ()) -> s'`` is one step of one sequence.
    """
    over_time = jax.vmap(jax.vmap(step_flat, (None, 0, 0, 0)), (None, 0, 0, 0))
    jac_full = jax.vmap(jax.vmap(jax.jacfwd(step_flat, argnums=1), (None, 0, 0, 0)),
                        (None, 0, 0, 0))  # (T, B, S, S)

    def previous(states, s0):
        return jnp.concatenate([s0[None], states[:-1]], axis=0)  # (T, B, S), s_{t-1}

    def newton(params, xp, valid, s0):
        def iterate(state):
            k, states, _ = state
            prev = previous(states, s0)
            jac = jac_full(params, prev, xp, valid)
            if diagonal:
                jac = jnp.diagonal(jac, axis1=-2, axis2=-1)  # (T, B, S)
                bias = over_time(params, prev, xp, valid) - jac * prev
            else:
                bias = (over_time(params, prev, xp, valid)
                        - jnp.einsum("tbij,tbj->tbi", jac, prev))
            new = _solve_linear(jac, bias, s0, diagonal)
            new = states + (1 - damping) * (new - states)
            return k + 1, new, jnp.max(jnp.abs(new - states))

        def unfinished(state):
            k, _, err = state
            return (k < max_iters) & (err > tol)

        guess = jnp.broadcast_to(s0, (xp.shape[0], *s0.shape))
        k, states, err = jax.lax.while_loop(
            unfinished, iterate, (0, guess, jnp.array(jnp.inf, s0.dtype)))
        return states, (k, err)

    @jax.custom_vjp
    def solve(params, xp, valid, s0):
        return newton(params, xp, valid, s0)

    def solve_fwd(params, xp, valid, s0):
        out = newton(params, xp, valid, s0)
        return out, (params, xp, valid, s0, out[0])

    def solve_bwd(res, cotangents):
        params, xp, valid, s0, states = res
        g = cotangents[0]  # (T, B, S); the iteration count and error have no gradient
        prev = previous(states, s0)
        jac = jac_full(params, prev, xp, valid)  # (T, B, S, S)
        # lambda_t = g_t + J_{t+1}^T lambda_{t+1}: the same affine recurrence run from the
        # end of time (a reverse scan composes in scan order), over the maps J_{t+1}^T.
        jac_next_t = jnp.concatenate([jnp.swapaxes(jac[1:], -1, -2),
                                      jnp.zeros_like(jac[:1])], axis=0)
        _, lam = jax.lax.associative_scan(_full_combine, (jac_next_t, g), reverse=True, axis=0)

        def contributions(params, prev, xp):
            _, vjp = jax.vjp(lambda p, s, x: over_time(p, s, x, valid), params, prev, xp)
            return vjp(lam)

        d_params, d_prev, d_xp = contributions(params, prev, xp)
        return d_params, d_xp, None, d_prev[0]

    solve.defvjp(solve_fwd, solve_bwd)
    return solve


def deer_unroll(cell: Cell, params, xs, carry=None, *, seq_lengths=None,
                reverse: bool = False, time_major: bool = False, unroll: int = 1,
                jacobian: str = "diagonal", tol: float = 1e-5, max_iters: int = 50,
                damping: float = 0.0, return_info: bool = False):
    """Runs ``cell`` over time by Newton iterations; same contract as :func:`recurrent.unroll`.

    Falls back to the sequential scan (``unroll`` steps per iteration) when the iteration
    has not converged to ``tol`` within ``max_iters`` or has produced a non-finite value,
    so the result always equals the sequential one up to ``tol``-sized differences.

    Args:
      cell, params, xs, carry, seq_lengths, reverse, time_major, unroll: as in
        :func:`recurrent.unroll` (``xs`` is ``(batch, time, input)``).
      jacobian: ``"diagonal"`` (quasi-DEER) or ``"full"`` (DEER).
      tol: stop when no state moved more than this in an iteration.
      max_iters: iteration cap.
      damping: in ``[0, 1)``; each iteration moves ``1 - damping`` of the way to the Newton
        update, which trades speed for stability on stiff cells.
      return_info: also return ``{"iterations", "error", "converged"}``.

    Returns:
      ``(carry, ys)`` as :func:`recurrent.unroll`, plus the info dict with ``return_info``.
      Memory: the backward pass holds the full Jacobians, ``(time, batch, S, S)`` floats
      for a state of ``S`` numbers (``2 * hidden`` for the LSTM).
    """
    if jacobian not in ("diagonal", "full"):
        raise ValueError(f"deer_unroll: jacobian must be 'diagonal' or 'full'; got {jacobian!r}")
    if not 0 <= damping < 1:
        raise ValueError(f"deer_unroll: damping must be in [0, 1); got {damping!r}")
    checks.check_unroll("deer_unroll", cell, params, xs, carry, seq_lengths, time_major)
    if not time_major:
        xs = jnp.swapaxes(xs, 0, 1)  # (batch, time, I) -> (time, batch, I)
    time, batch = xs.shape[:2]
    if not time or not batch:  # nothing to iterate over: the scan's empty result
        final, ys = sequential_unroll(cell, params, xs, carry, seq_lengths=seq_lengths,
                                      reverse=reverse, time_major=True)
        ys = ys if time_major else jnp.swapaxes(ys, 0, 1)
        info = dict(iterations=jnp.int32(0), error=jnp.float32(0), converged=jnp.bool_(True))
        return (final, ys, info) if return_info else (final, ys)
    xp, carry, lengths, valid = project_time_major(cell, params, xs, carry, True, seq_lengths)
    if seq_lengths is None:
        lengths = jnp.full((batch,), time, jnp.int32)
        valid = jnp.ones((time, batch), bool)
    if reverse:
        idx = reverse_index(lengths, time)  # (time, batch)
        xp = jnp.take_along_axis(xp, idx[:, :, None], axis=0)

    s0, unflatten = _flatten_carry(carry)  # (batch, S)

    def step_flat(params, s, xp_t, valid_t):
        new, _ = cell.step(params, unflatten(s[None]), xp_t[None])
        return jnp.where(valid_t, _flatten_carry(new)[0][0], s)

    solve = _make_solver(step_flat, jacobian == "diagonal", tol, max_iters, damping)
    states, (iterations, error) = solve(params, xp, valid, s0)  # (time, batch, S)
    converged = (error <= tol) & jnp.all(jnp.isfinite(states))

    def parallel():
        prev = jnp.concatenate([s0[None], states[:-1]], axis=0)  # (time, batch, S)
        _, ys = jax.vmap(lambda s, x: cell.step(params, unflatten(s), x))(prev, xp)
        ys = jnp.where(valid[:, :, None], ys, 0)  # (time, batch, H)
        if reverse:
            ys = jnp.take_along_axis(ys, idx[:, :, None], axis=0)
        return unflatten(states[-1]), ys

    def sequential():
        return sequential_unroll(cell, params, xs, carry, seq_lengths=seq_lengths,
                                 reverse=reverse, unroll=unroll, time_major=True)

    final, ys = jax.lax.cond(converged, parallel, sequential)
    if not time_major:
        ys = jnp.swapaxes(ys, 0, 1)  # (time, batch, H) -> (batch, time, H)
    if return_info:
        return final, ys, dict(iterations=iterations, error=error, converged=converged)
    return final, ys

__all__ = ["deer_unroll"]
