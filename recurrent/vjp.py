"""One direction's scan with a hand-written VJP: weight gradients as single matmuls.

JAX differentiates ``lax.scan`` step by step: the backward loop carries ``dW_hh`` and adds
a ``(G*H, batch) @ (batch, H)`` outer product into it at every step, next to the
``(batch, G*H) @ (G*H, H)`` product that propagates ``dh``, and it recomputes or stores
every intermediate of the step. :func:`scan` keeps only the second product in the loop.
Its forward pass records, at every step, the carry, the input ``u`` and result ``m`` of
each recurrent matmul (``cell.recurrence``'s ``matmul(u, rows)`` hook) and the output of
each sigmoid/tanh (its ``act`` hook). Its backward loop replays them, so it runs no
transcendental function and no forward matmul, propagates the carry's cotangent and emits
each matmul's output cotangent ``g_t``; after the loop, ``dW_hh[rows] = sum_t g_t.T @ u_t``
is one matmul over all ``time * batch`` rows::

    # forward                                   # backward, t = T-1 .. 0
    m_t = u_t @ w_hh.T    (recorded)            g_t, dxp_t, dcarry = vjp(step_t)(dcarry, dy_t)
    carry, y_t = step(carry, xp_t, m_t)         dW_hh = einsum("tbg,tbh->gh", g, u)

Two layout choices are for XLA:CPU: a step input that the step reads in gate blocks
(the GRU's ``xp_t``, every LSTM/GRU gate slab in the backward loop) comes from a
loop-carried copy (see :func:`_scan`), and the backward loop writes ``dxp_t`` over
``xp[t]`` instead of into a fresh zero-filled stack.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from recurrent.cells import Cell, sigmoid_tanh


def _product(u, w, dtype):
    """``u @ w`` in ``dtype`` with float32 accumulation: ``(batch, k) @ (k, n) -> (batch, n)``."""
    if dtype is None:
        return u @ w
    return jnp.matmul(u.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def _replay(dtype):
    """``replay(u, m, w) = m``, whose VJP sends ``g`` to ``m`` and ``g @ w`` to ``u``.

    ``m`` is the recorded ``u @ w.T`` (``w`` is ``(rows, H)``): the backward step gets the
    matmul's output cotangent as ``m``'s and the path through ``u`` without recomputing it.
    """

    @jax.custom_vjp
    def replay(u, m, w):
        return m

    def fwd(u, m, w):
        return m, w

    def bwd(w, g):
        return _product(g, w, dtype).astype(jnp.result_type(g)), g, None  # du (batch, H)

    replay.defvjp(fwd, bwd)
    return replay


@jax.custom_vjp
def _replay_act(x, y, tanh_mask):
    """``sigmoid_tanh(x, tanh_mask)`` given its recorded value ``y``; the VJP uses only ``y``."""
    return y


def _replay_act_fwd(x, y, tanh_mask):
    return y, (y, tanh_mask)


def _replay_act_bwd(res, g):
    y, tanh_mask = res
    slope = jnp.where(tanh_mask, 1 - y * y, y * (1 - y))  # tanh' = 1 - y^2, sigmoid' = y(1-y)
    return g * slope, None, None


_replay_act.defvjp(_replay_act_fwd, _replay_act_bwd)


def _scan(body, carry, fetched, streamed, length, reverse=False, unroll=1):
    """``jax.lax.scan`` over two pytrees of ``(length, ...)`` inputs, ``body(carry, (f_t, s_t))``.

    ``streamed`` is scanned as usual: XLA:CPU fuses its dynamic slice into the step's
    elementwise loops. ``fetched`` reaches ``body`` as a loop-carried copy: step ``t`` copies
    out step ``t+1``'s slice (``t-1``'s in reverse). LLVM does not vectorise a loop that
    reads a dynamic slice at more than one offset (a GRU's gate blocks), and one that reads
    a plain buffer runs at full SIMD width; the copy costs two small kernels per step.
    """
    step, start = (-1, length - 1) if reverse else (1, 0)

    def at(t):  # every leaf of ``fetched`` at step ``t`` (clipped: the last step refetches)
        t = jnp.clip(t, 0, length - 1)
        return jax.tree.map(lambda v: jax.lax.dynamic_index_in_dim(v, t, keepdims=False),
                            fetched)

    def prefetching(state, inputs):
        carry, fetched_t = state
        t, streamed_t = inputs
        carry, y = body(carry, (fetched_t, streamed_t))
        return (carry, at(t + step)), y

    (carry, _), ys = jax.lax.scan(prefetching, (carry, at(start)),
                                  (jnp.arange(length), streamed), reverse=reverse,
                                  unroll=unroll)
    return carry, ys


def _slices_input(cell: Cell, params, carry, xp_t):
    """Whether ``cell.recurrence`` reads ``xp_t`` in slices (at more than one offset)."""
    spec = lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype)  # noqa: E731
    closed = jax.make_jaxpr(cell.activations)(*jax.tree.map(spec, (params, carry, xp_t)))
    xp_var = closed.jaxpr.invars[-1]
    return any(xp_var in eqn.invars and eqn.primitive.name in ("slice", "split")
               for eqn in closed.jaxpr.eqns)


def _advance(cell: Cell, params, carry, xp_t, valid_t, matmul, act):
    """One masked step: ``(new_carry, y_t)``; rows with ``valid_t`` false keep their carry."""
    a = cell.recurrence(params, carry, xp_t, matmul, act)
    new = tuple(a[k] for k in cell.carry_keys)
    new = new if len(new) > 1 else new[0]
    y = a["h"]
    if valid_t is not None:
        keep = valid_t[:, None]  # (batch, 1)
        new = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, carry)
        y = jnp.where(keep, y, 0)
    return new, y


def scan_fn(cell: Cell, unroll: int = 1):
    """``scan(params, xp, bias, carry, valid) -> (carry, ys)``: ``cell`` over ``xp``'s time.

    Equal to ``jax.lax.scan`` of ``cell.step`` over ``xp + bias`` (masked by ``valid``), with
    the VJP described in the module docstring.

    Args of ``scan``:
      params: the cell's params with ``w_ih`` set to ``None`` (the projection is outside).
      xp: ``(time, batch, G*H)`` projected inputs, in the order the scan runs.
      bias: ``(G*H,)``, added to every step of ``xp`` inside the loop (where the add is
        free: it fuses into the step's elementwise work, not one more pass over ``xp``).
      carry: the initial carry, leaves ``(batch, H)``.
      valid: ``(time, batch)`` booleans (a false step keeps the carry and outputs zero), or
        ``None``.

    Returns ``(carry, ys)`` with ``ys (time, batch, H)``.
    """
    replay = _replay(cell.dtype)
    # Read while tracing: each recurrent matmul's ``rows``, and which carry leaf is its
    # input ``u`` (``None``: ``u`` is recorded); whether its output cotangent is the same
    # array as ``xp``'s (they enter as a sum, as in the LSTM: emitted once).
    row_slices, u_in_carry, same_as_dxp = [], [], []

    def forward(params, xp, bias, carry, valid, save):
        w_t = params.w_hh.T  # (G*H, H) -> (H, G*H): the product needs no per-step transpose
        fetch = _slices_input(cell, params, carry, xp[0])

        def body(carry, inputs):
            xp_t, (streamed_xp_t, valid_t) = inputs
            xp_t = streamed_xp_t if xp_t is None else xp_t
            records, acts, rows_seen, sources = [], [], [], []
            leaves = jax.tree.leaves(carry)

            def matmul(u, rows):
                m = _product(u, w_t[:, rows], cell.dtype)  # (batch, rows)
                source = next((i for i, leaf in enumerate(leaves) if leaf is u), None)
                records.append((None if source is not None else u, m))
                rows_seen.append(rows)
                sources.append(source)
                return m

            def act(x, tanh_mask):
                acts.append(sigmoid_tanh(x, tanh_mask))
                return acts[-1]

            new, y = _advance(cell, params, carry, xp_t + bias, valid_t, matmul, act)
            row_slices[:], u_in_carry[:] = rows_seen, sources
            return new, ((y, carry, records, acts) if save else y)

        fetched, streamed = (xp, None) if fetch else (None, xp)
        return _scan(body, carry, fetched, (streamed, valid), xp.shape[0], unroll=unroll)

    @jax.custom_vjp
    def scan(params, xp, bias, carry, valid):
        return forward(params, xp, bias, carry, valid, save=False)

    def scan_fwd(params, xp, bias, carry, valid):
        carry, (ys, carries, records, acts) = forward(params, xp, bias, carry, valid, save=True)
        return (carry, ys), (params, xp, bias, valid, carries, records, acts)

    def scan_bwd(res, cotangents):
        params, xp, bias, valid, carries, records, acts = res
        d_carry, d_ys = cotangents
        w = params.w_hh
        rest = params._replace(w_hh=None)  # the biases: their gradient is summed per step

        def body(state, inputs):
            d_carry, d_rest, d_xp = state
            fetched_t, (t, carry, valid_t, recs, dy_t, streamed_t) = inputs
            acts_t = streamed_t if fetched_t is None else fetched_t
            xp_t = jax.lax.dynamic_index_in_dim(d_xp, t, keepdims=False)  # still xp at step t
            recorded = iter(acts_t)

            def act(x, tanh_mask):
                return _replay_act(x, next(recorded), tanh_mask)

            def step(rest, carry, xp_t, ms):
                ms = iter(ms)

                def matmul(u, rows):
                    return replay(u, next(ms), w[rows])

                return _advance(cell, rest._replace(w_hh=w), carry, xp_t + bias, valid_t,
                                matmul, act)

            _, vjp = jax.vjp(step, rest, carry, xp_t, [m for _, m in recs])
            dr, dc, dxp_t, dms = vjp((d_carry, dy_t))
            d_rest = jax.tree.map(jnp.add, d_rest, dr)
            same_as_dxp[:] = [dm is dxp_t for dm in dms]
            d_xp = jax.lax.dynamic_update_index_in_dim(d_xp, dxp_t.astype(d_xp.dtype), t, 0)
            return (dc, d_rest, d_xp), [None if same else dm
                                        for dm, same in zip(dms, same_as_dxp, strict=True)]

        zeros = jax.tree.map(jnp.zeros_like, rest)
        time = xp.shape[0]
        # recorded gate slabs wider than the state are read a block at a time: fetched, so
        # the loops vectorise; d_xp overwrites xp step by step (step t reads xp[t] before it
        # writes d_xp[t]), so it needs no zero-filled buffer of its own
        width = jax.tree.leaves(carries)[0].shape[-1]
        fetch = any(a.shape[-1] > width for a in acts)
        fetched, streamed = (acts, None) if fetch else (None, acts)
        (d_carry0, d_rest, d_xp), d_ms = _scan(
            body, (d_carry, zeros, xp), fetched,
            (jnp.arange(time), carries, valid, records, d_ys, streamed), time, reverse=True,
            unroll=unroll)
        d_w = jnp.zeros_like(w)
        time, batch = xp.shape[:2]
        leaves = jax.tree.leaves(carries)
        for rows, source, (u, _), g, same in zip(row_slices, u_in_carry, records, d_ms,
                                                  same_as_dxp, strict=True):
            u = (u if source is None else leaves[source]).reshape(time * batch, -1)  # (T*B, H)
            g = (d_xp if same else g).reshape(time * batch, -1)  # (T*B, rows)
            # one matmul over all steps; (H, rows) -> (rows, H) transposes the small result
            d_w = d_w.at[rows].add((u.T @ g).T.astype(w.dtype))
        d_bias = jnp.sum(d_xp, axis=(0, 1))  # (G*H,)
        return d_rest._replace(w_hh=d_w), d_xp, d_bias, d_carry0, None

    scan.defvjp(scan_fwd, scan_bwd)
    return scan
