"""Parallel-in-time evaluation of any nonlinear cell by Newton's method (DEER, Lim et al.
2024; quasi-DEER, Gonzalez et al. 2024).

The states ``s_1..s_T`` of ``s_t = f(s_{t-1}, x_t)`` solve a system of ``T`` equations.
Linearising ``f`` around a guess of the whole trajectory turns it into the linear
recurrence ``s_t = J_t s_{t-1} + (f(s'_{t-1}) - J_t s'_{t-1})``, which
``jax.lax.associative_scan`` solves in ``O(log T)`` depth; iterating is Newton's method.
Both forms reach the exact solution in at most ``T`` iterations (``chunk`` at most, with
chunks), and any matrix in place of ``J_t`` keeps the same fixed point.

- DEER uses the full Jacobian: few iterations, but ``(time, batch, S, S)`` floats and
  ``O(S^3)`` work per step for a state of ``S`` numbers. It is refused where
  ``time * batch * S**2`` passes :data:`FULL_JACOBIAN_LIMIT` (``time`` is ``chunk`` with
  chunks).
- quasi-DEER uses the diagonal, ``(time, batch, S)`` floats, computed without the matrix:
  the cell's ``recurrence`` runs under one JVP per carry part whose recurrent matmul
  passes on only the diagonal of each gate block of ``w_hh``
  (:func:`_structured_diagonal`). That is the exact diagonal for the LSTM (with or without
  peepholes), the GRU with ``reset_after`` and the RNN, where unit ``i`` of the new state
  reads the old state only through unit ``i`` of each gate block; with a layer norm, a
  projection or ``reset_after=False`` units mix outside the matmul and it is the diagonal
  of the matmul paths only, still a valid quasi-Newton step. A cell without
  ``recurrence`` takes the diagonal of the full Jacobian (and its size limit).

Gradients use the implicit function theorem at the solution: the adjoint
``lambda_t = g_t + J_{t+1}^T lambda_{t+1}`` is again a linear recurrence. DEER solves it
by a reverse associative scan with the full Jacobians; quasi-DEER by the same
diagonal iteration backwards, ``J^T lambda`` coming from the cell's VJP (no matrix), and
by a sequential reverse scan of VJPs where that iteration does not converge. Memory of a
quasi-DEER training step is ``O(time * batch * (S + gates * hidden))`` plus the weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from recurrent import checks
from recurrent.cells import Cell, plain_matmul, sigmoid_tanh
from recurrent.framing import reverse_index
from recurrent.unroll import project_time_major
from recurrent.unroll import scan_unroll as sequential_unroll

FULL_JACOBIAN_LIMIT = 2**28
"""Most ``time * batch * S**2`` Jacobian entries full DEER builds (1 GiB in float32; the
associative scan holds a few times that): above it :func:`deer_unroll` raises
``ValueError`` in place of running out of memory."""


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


def _diagonal_matmul(params, dtype, hidden):
    """``recurrence``'s ``matmul(u, rows)`` whose value is ``u @ w_hh[rows].T`` but whose
    JVP is ``tile(du) * diag``: the diagonal of each ``(H, H)`` gate block of ``w_hh[rows]``
    times the tangent, so unit ``i`` of every block sees only unit ``i`` of ``u``. Where
    the blocks are not square (``u`` is a projected LSTM's ``(..., P)``) the JVP is zero."""
    plain = plain_matmul(params, dtype)

    def matmul(u, rows):
        w = jax.lax.stop_gradient(params.w_hh[rows])  # (n*H, K)
        if u.shape[-1] != hidden:  # K = P < H (a projected LSTM): no unit-to-unit diagonal
            return jax.lax.stop_gradient(plain(u, rows))
        diag = jnp.diagonal(w.reshape(-1, hidden, hidden), axis1=1, axis2=2)  # (n, H)
        tangent = jnp.tile(u - jax.lax.stop_gradient(u), diag.shape[0])  # (..., n*H), zero
        return jax.lax.stop_gradient(plain(u, rows)) + tangent * diag.reshape(-1)

    return matmul


def _structured_diagonal(cell: Cell, unflatten, sizes):
    """``diag(params, prev (..., S), xp (..., G), valid (...)) -> (new, diagonal)``, each
    ``(..., S)``: the step's new state (``prev`` where not ``valid``) and the diagonal of
    ``d step / d prev``, by one JVP per carry part through :func:`_diagonal_matmul`."""
    cuts = [sum(sizes[:k]) for k in range(len(sizes) + 1)]

    def diag(params, prev, xp, valid):
        matmul = _diagonal_matmul(params, cell.dtype, params.w_hh.shape[0] // cell.gates)

        def new_state(s):
            a = cell.recurrence(params, unflatten(s), xp, matmul, sigmoid_tanh)
            return jnp.concatenate([a[k] for k in cell.carry_keys], axis=-1)  # (..., S)

        parts = []
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            tangent = jnp.zeros_like(prev).at[..., lo:hi].set(1)  # ones on this carry part
            new, d_new = jax.jvp(new_state, (prev,), (tangent,))
            parts.append(d_new[..., lo:hi])
        keep = valid[..., None]
        return jnp.where(keep, new, prev), jnp.where(keep, jnp.concatenate(parts, axis=-1), 1)

    return diag


def _previous(states, s0):
    """``s_{t-1}`` for every ``t``: ``(T, B, S)`` from the states and ``s0 (B, S)``."""
    return jnp.concatenate([s0[None], states[:-1]], axis=0)


def _iterate(update, guess, tol, max_iters, damping):
    """``x <- x + (1 - damping) * (update(x) - x)`` from ``guess`` until no entry moves more
    than ``tol`` or ``max_iters`` iterations: ``(x, (iterations, error))``."""
    def body(state):
        k, old, _ = state
        new = old + (1 - damping) * (update(old) - old)
        return k + 1, new, jnp.max(jnp.abs(new - old))

    def unfinished(state):
        k, _, err = state
        return (k < max_iters) & (err > tol)

    k, out, err = jax.lax.while_loop(unfinished, body,
                                     (0, guess, jnp.array(jnp.inf, guess.dtype)))
    return out, (k, err)


def _following(a):
    """``a_{t+1}`` at every ``t`` of ``a (T, ...)``, zero at ``T - 1``."""
    return jnp.concatenate([a[1:], jnp.zeros_like(a[:1])], axis=0)


def _diagonal_adjoint(jac_t, d, g, tol, max_iters, damping):
    """The adjoint ``lambda_t = g_t + J_{t+1}^T lambda_{t+1}`` by quasi-Newton iterations:
    ``jac_t(lam) -> (T, B, S)`` is ``J_t^T lam_t`` at every ``t`` (a VJP), ``d (T, B, S)``
    the Jacobians' diagonals, ``g (T, B, S)`` the states' cotangents. Each iteration solves
    ``lambda_t = g_t + D_{t+1} lambda_{t+1} + (J_{t+1}^T - D_{t+1}) lambda^k_{t+1}`` by a
    reverse associative scan: ``(lambda, (iterations, error))``."""
    d_next = _following(d)  # D_{t+1}

    def update(lam):
        bias = g + _following(jac_t(lam)) - d_next * _following(lam)
        return jax.lax.associative_scan(_diag_combine, (d_next, bias), reverse=True,
                                        axis=0)[1]

    return _iterate(update, g, tol, max_iters, damping)


def _make_solver(step_flat, diagonal_fn, tol, max_iters, damping):
    """The Newton solve ``(params, xp, valid, s0) -> (states, (iterations, error))`` with an
    implicit-function VJP.

    ``step_flat(params, s (S,), xp_t (G,), valid_t ()) -> s'`` is one step of one sequence;
    ``diagonal_fn(params, prev, xp, valid) -> (new, diagonal)``, each ``(T, B, S)``, the
    steps and their Jacobians' diagonals (:func:`_structured_diagonal`), or ``None`` for
    DEER's full Jacobians.
    """
    over_time = jax.vmap(jax.vmap(step_flat, (None, 0, 0, 0)), (None, 0, 0, 0))
    jac_full = jax.vmap(jax.vmap(jax.jacfwd(step_flat, argnums=1), (None, 0, 0, 0)),
                        (None, 0, 0, 0))  # (T, B, S, S)
    diagonal = diagonal_fn is not None

    def newton(params, xp, valid, s0):
        def update(states):
            prev = _previous(states, s0)
            if diagonal:
                new, jac = diagonal_fn(params, prev, xp, valid)  # (T, B, S) each
                bias = new - jac * prev
            else:
                jac = jac_full(params, prev, xp, valid)  # (T, B, S, S)
                bias = (over_time(params, prev, xp, valid)
                        - jnp.einsum("tbij,tbj->tbi", jac, prev))
            return _solve_linear(jac, bias, s0, diagonal)

        guess = jnp.broadcast_to(s0, (xp.shape[0], *s0.shape))
        return _iterate(update, guess, tol, max_iters, damping)

    def adjoint_full(params, prev, xp, valid, g):
        jac = jac_full(params, prev, xp, valid)  # (T, B, S, S)
        # lambda_t = g_t + J_{t+1}^T lambda_{t+1}: the same affine recurrence run from the
        # end of time (a reverse scan composes in scan order), over the maps J_{t+1}^T.
        jac_next_t = jnp.concatenate([jnp.swapaxes(jac[1:], -1, -2),
                                      jnp.zeros_like(jac[:1])], axis=0)
        return jax.lax.associative_scan(_full_combine, (jac_next_t, g), reverse=True,
                                        axis=0)[1]

    def adjoint_diagonal(params, prev, xp, valid, g):
        _, jac_t = jax.vjp(lambda s: over_time(params, s, xp, valid), prev)
        _, d = diagonal_fn(params, prev, xp, valid)  # (T, B, S)
        lam, (_, err) = _diagonal_adjoint(lambda lam: jac_t(lam)[0], d, g, tol, max_iters,
                                          damping)

        def sequential():
            def body(carry, inputs):  # carry: J_{t+1}^T lambda_{t+1}, (B, S)
                prev_t, xp_t, valid_t, g_t = inputs
                lam_t = g_t + carry
                _, vjp = jax.vjp(lambda s: jax.vmap(step_flat, (None, 0, 0, 0))(
                    params, s, xp_t, valid_t), prev_t)
                return vjp(lam_t)[0], lam_t

            return jax.lax.scan(body, jnp.zeros_like(g[0]), (prev, xp, valid, g),
                                reverse=True)[1]

        ok = (err <= tol) & jnp.all(jnp.isfinite(lam))
        return jax.lax.cond(ok, lambda: lam, sequential)

    @jax.custom_vjp
    def solve(params, xp, valid, s0):
        return newton(params, xp, valid, s0)

    def solve_fwd(params, xp, valid, s0):
        out = newton(params, xp, valid, s0)
        return out, (params, xp, valid, s0, out[0])

    def solve_bwd(res, cotangents):
        params, xp, valid, s0, states = res
        g = cotangents[0]  # (T, B, S); the iteration count and error have no gradient
        prev = _previous(states, s0)
        adjoint = adjoint_diagonal if diagonal else adjoint_full
        lam = adjoint(params, prev, xp, valid, g)  # (T, B, S)
        _, vjp = jax.vjp(lambda p, s, x: over_time(p, s, x, valid), params, prev, xp)
        d_params, d_prev, d_xp = vjp(lam)
        return d_params, d_xp, None, d_prev[0]

    solve.defvjp(solve_fwd, solve_bwd)
    return solve


def _chunked(solve, xp, valid, s0, chunk):
    """``solve`` one chunk of ``chunk`` steps after another (``lax.scan``), each from the
    last state of the one before: ``(T, B, S)`` states and the largest iteration count and
    error of any chunk. The last chunk is padded with invalid steps, which keep the state."""
    time = xp.shape[0]
    pad = -time % chunk

    def split(a):  # (T, ...) -> (T/chunk, chunk, ...), padded with zeros (invalid steps)
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape(-1, chunk, *a.shape[1:])

    def body(s, inputs):
        states, info = solve(*inputs, s)  # (chunk, B, S)
        return states[-1], (states, info)

    _, (states, (k, err)) = jax.lax.scan(body, s0, (split(xp), split(valid)))
    states = states.reshape(-1, *states.shape[2:])[:time]  # (T, B, S)
    return states, (jnp.max(k), jnp.max(err))


def _check_full_size(time, batch, size, chunk):
    """Refuses full DEER where its Jacobians would pass :data:`FULL_JACOBIAN_LIMIT`."""
    steps = min(time, chunk or time)
    entries = steps * batch * size**2
    if entries > FULL_JACOBIAN_LIMIT:
        raise ValueError(
            f"deer_unroll: jacobian='full' needs (time={steps}, batch={batch}, S={size}, "
            f"S={size}) = {entries:,} Jacobian entries, above FULL_JACOBIAN_LIMIT = "
            f"{FULL_JACOBIAN_LIMIT:,}; use jacobian='diagonal' (quasi-DEER, linear in S) or "
            f"a smaller chunk")


def _solve_states(cell, params, xp, valid, s0, unflatten, jacobian, tol, max_iters, damping,
                  chunk):
    """Every state ``(T, B, S)`` of ``cell`` from ``xp (T, B, G)``, ``valid (T, B)`` and
    ``s0 (B, S)`` by (quasi-)DEER, whole or by chunks, and ``(iterations, error)``."""
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int)
                              or chunk < 1):
        raise ValueError(f"deer_unroll: chunk must be a positive int or None; got {chunk!r}")
    time, batch = xp.shape[:2]
    diagonal = None
    if jacobian == "full" or cell.recurrence is None:
        _check_full_size(time, batch, s0.shape[-1], chunk)
    if jacobian == "diagonal" and cell.recurrence is not None:
        sizes = [part.shape[-1] for part in jax.tree.leaves(unflatten(s0))]
        diagonal = _structured_diagonal(cell, unflatten, sizes)

    def step_flat(params, s, xp_t, valid_t):
        new, _ = cell.step(params, unflatten(s[None]), xp_t[None])
        return jnp.where(valid_t, _flatten_carry(new)[0][0], s)

    solve = _make_solver(step_flat, diagonal, tol, max_iters, damping)
    if chunk is None or chunk >= time:
        return solve(params, xp, valid, s0)
    return _chunked(lambda xp_c, valid_c, s: solve(params, xp_c, valid_c, s), xp, valid, s0,
                    chunk)


def deer_unroll(cell: Cell, params, xs, carry=None, *, seq_lengths=None,
                reverse: bool = False, time_major: bool = False, unroll: int = 1,
                jacobian: str = "diagonal", tol: float = 1e-5, max_iters: int = 50,
                damping: float = 0.0, chunk: int | None = None, return_info: bool = False):
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
      chunk: solve ``chunk`` steps at a time, one chunk after another (a sequential scan
        over ``ceil(time / chunk)`` parallel solves): at most ``chunk`` iterations each,
        whatever ``time``, and full DEER's Jacobians shrink to ``chunk`` steps. ``None``:
        the whole sequence at once.
      return_info: also return ``{"iterations", "error", "converged"}`` (with chunks, the
        largest iteration count and error of any chunk).

    Returns:
      ``(carry, ys)`` as :func:`recurrent.unroll`, plus the info dict with ``return_info``.
      Memory, for a state of ``S`` numbers (``2 * hidden`` for the LSTM): quasi-DEER holds
      ``O(time * batch * (S + gates * hidden))`` floats, forward and backward; DEER the
      full Jacobians, ``(time, batch, S, S)`` floats (``time`` is ``chunk`` with chunks),
      refused above :data:`FULL_JACOBIAN_LIMIT` entries.

    Raises:
      ValueError: a bad ``jacobian``, ``damping`` or ``chunk``, or full Jacobians above
        :data:`FULL_JACOBIAN_LIMIT`.
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
    states, (iterations, error) = _solve_states(cell, params, xp, valid, s0, unflatten,
                                                jacobian, tol, max_iters, damping, chunk)
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

__all__ = ["FULL_JACOBIAN_LIMIT", "deer_unroll"]
