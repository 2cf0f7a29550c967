"""One direction of a layer with a hand-written VJP: weight gradients as single matmuls.

JAX differentiates ``lax.scan`` step by step: the backward loop carries ``dW_hh`` and adds
a ``(G*H, batch) @ (batch, H)`` outer product into it at every step, next to the
``(batch, G*H) @ (G*H, H)`` product that propagates ``dh``, and it recomputes or stores
every intermediate of the step. :func:`layer_fn` keeps only the second product in the loop.
Its forward pass records, at every step, the carry, the input ``u`` and result ``m`` of
each recurrent matmul (``cell.recurrence``'s ``matmul(u, rows)`` hook) and the output of
each sigmoid/tanh (its ``act`` hook). Its backward loop replays them, so it runs no
transcendental function and no forward matmul, propagates the carry's cotangent and emits
each matmul's output cotangent ``g_t``; after the loop, ``dW_hh[rows] = sum_t g_t.T @ u_t``
is one matmul over all ``time * batch`` rows, and so are ``dW_ih`` and ``dx``::

    # forward                                   # backward, t = T-1 .. 0
    xp = x @ w_ih.T + b   (one matmul)
    m_t = u_t @ w_hh.T    (recorded)            g_t, dxp_t, dcarry = vjp(step_t)(dcarry, dy_t)
    carry, y_t = step(carry, xp_t, m_t)         dW_hh = einsum("tbg,tbh->gh", g, u)
                                                dW_ih, dx = dxp.T @ x, dxp @ w_ih

Memory: one ``(time, batch, G*H)`` array serves the whole training step. Step ``t`` of the
forward loop overwrites ``xp[t]`` with the activations it records (when they fill exactly
one row: the LSTM's four gates, the GRU's three), and step ``t`` of the backward loop
overwrites those with ``dxp_t``; no zero-filled stack is written for them. Unless
differentiated, the projection runs a chunk of steps at a time.

For XLA:CPU, a row that the step reads in gate blocks (the GRU's ``xp_t``, every
LSTM/GRU gate row in the backward loop) comes from a loop-carried copy (see
:func:`_scan`).
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

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


def _scan(body, carry, buffer, streamed, length, *, fetch, reverse=False, unroll=1):
    """``jax.lax.scan`` over ``streamed`` that also carries ``buffer``, rewritten in place.

    ``body(carry, buffer_t, streamed_t) -> (carry, new_t, y)``: step ``t`` reads
    ``buffer[t]`` and, unless ``new_t`` is ``None``, overwrites it with ``new_t``, so a
    buffer whose old rows are dead after their step (the projected inputs, then the recorded
    gates) needs no second array. Returns ``(carry, buffer, ys)``. Each loop iteration runs
    the largest divisor of ``length`` not above ``unroll`` steps: steps left over after the
    loop would make XLA copy the buffer.

    With ``fetch``, the rows of an iteration reach ``body`` as a loop-carried copy, read
    after the previous iteration's writes: LLVM does not vectorise a loop that reads a
    dynamic slice at more than one offset (a GRU's gate blocks), and a read of the buffer
    itself by a step output that the write does not depend on would make XLA copy the whole
    buffer. Without ``fetch`` each step's dynamic slice fuses into its elementwise loops
    (every read must then lead to ``new_t``).
    """
    k = max(d for d in range(1, max(1, min(unroll, length)) + 1) if length % d == 0)
    n = length // k
    rows = lambda v, start: jax.tree.map(  # noqa: E731
        lambda a: jax.lax.dynamic_slice_in_dim(a, start, k), v)  # the k rows from ``start``

    def iteration(state, inputs):
        carry, buffer, fetched = state
        block, streamed_block = inputs
        ys = [None] * k
        for j in (range(k - 1, -1, -1) if reverse else range(k)):  # scan order
            t = block * k + j
            row = jax.tree.map(lambda a: a[j], fetched) if fetch else jax.tree.map(
                lambda a: jax.lax.dynamic_index_in_dim(a, t, keepdims=False), buffer)
            carry, new_t, ys[j] = body(carry, row, jax.tree.map(lambda a: a[j], streamed_block))
            if new_t is not None:
                buffer = jax.tree.map(
                    lambda b, v: jax.lax.dynamic_update_index_in_dim(b, v.astype(b.dtype), t, 0),
                    buffer, new_t)
        following = (block - 1 if reverse else block + 1) * k  # clipped when there is none
        return ((carry, buffer, rows(buffer, following) if fetch else None),
                jax.tree.map(lambda *y: jnp.stack(y), *ys))  # ys in row order

    blocks = lambda v: jax.tree.map(lambda a: a.reshape(n, k, *a.shape[1:]), v)  # noqa: E731
    first = rows(buffer, (n - 1) * k if reverse else 0) if fetch else None
    (carry, buffer, _), ys = jax.lax.scan(iteration, (carry, buffer, first),
                                          (jnp.arange(n), blocks(streamed)), reverse=reverse)
    return carry, buffer, jax.tree.map(lambda a: a.reshape(length, *a.shape[2:]), ys)


class Plan(NamedTuple):
    """What the fast path records and replays for one cell and shape (hashable: a static
    argument of :func:`_run`); made by :func:`make_plan`.

    Attributes:
      rows: each recurrent matmul's gate rows ``(start, stop)`` of ``w_hh``, in call order.
      sources: for each matmul, the index of the carry leaf that is its input ``u`` (read
        back from the recorded carries), or ``None`` where ``u`` is recorded.
      widths: each sigmoid/tanh's output width, in call order.
      packed: how many leading activations fill exactly one ``(G*H)`` row of ``xp`` (they
        are written over it), or 0.
      same_as_dxp: for each matmul, whether its output cotangent is ``xp_t``'s (they enter
        the step as a sum, as in the LSTM): emitted once.
      fetch: whether the forward step reads ``xp_t`` in slices (at more than one offset),
        so :func:`_scan` hands it a loop-carried copy.
      fetch_back: whether the backward step reads a row wider than the state (a block at
        a time), fetched likewise.
    """

    rows: tuple[tuple[int | None, int | None], ...]
    sources: tuple[int | None, ...]
    widths: tuple[int, ...]
    packed: int
    same_as_dxp: tuple[bool, ...]
    fetch: bool
    fetch_back: bool


def _slices_input(cell: Cell, params, carry, xp_t) -> bool:
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


def _packed(widths, width):
    """How many leading activations fill exactly one ``width``-wide row, or 0."""
    total = 0
    for k, w in enumerate(widths, 1):
        total += w
        if total == width:
            return k
    return 0


def _recording_step(cell: Cell, params, w_t, carry, xp_t, bias, valid_t):
    """The forward step with its recurrent matmuls and activations recorded: ``(new, y,
    records, acts, rows)``, ``records`` a ``(u, m)`` per matmul, ``rows`` its gate rows."""
    records, acts, rows_seen = [], [], []

    def matmul(u, rows):
        m = _product(u, w_t[:, rows], cell.dtype)  # (batch, rows)
        records.append((u, m))
        rows_seen.append(rows)
        return m

    def act(x, tanh_mask):
        acts.append(sigmoid_tanh(x, tanh_mask))
        return acts[-1]

    new, y = _advance(cell, params, carry, xp_t + bias, valid_t, matmul, act)
    return new, y, records, acts, rows_seen


def _replay_step(cell: Cell, replay, w, bias, valid_t, acts_t):
    """``step(rest, carry, xp_t, ms) -> (new, y)``: the forward step with every matmul's
    output replayed from ``ms`` and every activation from ``acts_t`` (the backward step's
    function to differentiate; ``rest`` is the params without ``w_ih``, ``w_hh``)."""
    def step(rest, carry, xp_t, ms):
        ms, recorded = iter(ms), iter(acts_t)

        def act(x, tanh_mask):
            return _replay_act(x, next(recorded), tanh_mask)

        def matmul(u, rows):
            return replay(u, next(ms), w[rows])

        return _advance(cell, rest._replace(w_hh=w), carry, xp_t + bias, valid_t, matmul, act)

    return step


def make_plan(cell: Cell, params, carry, xp_t, valid_t) -> Plan:
    """The :class:`Plan` of ``cell`` for one step's shapes: ``params``, ``carry`` leaves
    ``(batch, H)``, ``xp_t (batch, G*H)``, ``valid_t (batch,)`` or ``None`` (arrays or
    ``jax.ShapeDtypeStruct``), read by tracing the forward step and the backward step's VJP
    abstractly (``jax.eval_shape``): nothing is computed."""
    spec = lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype)  # noqa: E731
    params, carry, xp_t, valid_t = jax.tree.map(spec, (params, carry, xp_t, valid_t))
    found = {}

    def trace(params, carry, xp_t, valid_t):
        bias = jnp.zeros(xp_t.shape[-1:], xp_t.dtype)
        leaves = jax.tree.leaves(carry)
        _, _, records, acts, rows = _recording_step(cell, params, params.w_hh.T, carry, xp_t,
                                                    bias, valid_t)
        found["rows"] = tuple((r.start, r.stop) for r in rows)
        found["sources"] = tuple(next((i for i, leaf in enumerate(leaves) if leaf is u), None)
                                 for u, _ in records)
        found["widths"] = tuple(a.shape[-1] for a in acts)
        step = _replay_step(cell, _replay(cell.dtype), params.w_hh, bias, valid_t, acts)
        rest = params._replace(w_ih=None, w_hh=None)
        out, vjp = jax.vjp(step, rest, carry, xp_t, [m for _, m in records])
        _, _, dxp_t, dms = vjp(jax.tree.map(jnp.zeros_like, out))
        found["same_as_dxp"] = tuple(dm is dxp_t for dm in dms)
        return out

    jax.eval_shape(trace, params, carry, xp_t, valid_t)
    width = xp_t.shape[-1]
    return Plan(found["rows"], found["sources"], found["widths"],
                _packed(found["widths"], width), found["same_as_dxp"],
                _slices_input(cell, params, carry, xp_t),
                width > jax.tree.leaves(carry)[0].shape[-1])


def _project(cell: Cell, params, x):
    """``x (K, batch, I) -> (K, batch, G*H)`` by ``cell.project``, without the biases."""
    linear = cell.project(params._replace(b_ih=None, b_hh=None), x.reshape(-1, x.shape[-1]))
    return linear.reshape(*x.shape[:2], -1)


def _bias(cell: Cell, params, x):
    """``(G*H,)``: ``project`` is affine, its constant part is ``project(params, 0)``."""
    return cell.project(params, jnp.zeros(x.shape[-1:], x.dtype))


def _forward(cell: Cell, plan: Plan, unroll: int, params, xp, bias, carry, valid, save):
    """The scan over projected inputs ``xp (time, batch, G*H)``; with ``save``, also the
    residuals, the packed activations written over ``xp``: ``(carry, buffer, ys)`` with
    ``ys`` ``y`` or, with ``save``, ``(y, carries, records, acts)``, ``records`` a ``(u or
    None, m)`` per matmul (``None`` where ``u`` is a carry leaf)."""
    w_t = params.w_hh.T  # (G*H, H) -> (H, G*H): the product needs no per-step transpose

    def body(carry, xp_t, valid_t):
        new, y, records, acts, _ = _recording_step(cell, params, w_t, carry, xp_t, bias,
                                                   valid_t)
        if not save:
            return new, None, y
        records = [(None if source is not None else u, m)
                   for (u, m), source in zip(records, plan.sources, strict=True)]
        k = plan.packed
        row = jnp.concatenate(acts[:k], axis=-1) if k else None  # (batch, G*H)
        return new, row, (y, carry, records, acts[k:])

    return _scan(body, carry, xp, valid, xp.shape[0], fetch=plan.fetch, unroll=unroll)


def _primal(cell: Cell, plan: Plan, unroll: int, chunk: int | None, params, xs, carry, valid):
    """The layer without residuals; a ``chunk`` of steps projected at a time."""
    bias = _bias(cell, params, xs)
    time = xs.shape[0]

    def run_chunk(carry, inputs):
        x, v = inputs  # (K, batch, I), (K, batch) or None
        carry, _, ys = _forward(cell, plan, unroll, params, _project(cell, params, x), bias,
                                carry, v, False)
        return carry, ys

    if chunk is None or chunk >= time:
        return run_chunk(carry, (xs, valid))
    n = time // chunk
    split = lambda v, a, b: None if v is None else v[a:b]  # noqa: E731
    whole = lambda v: None if v is None else v.reshape(n, chunk, *v.shape[1:])  # noqa: E731
    carry, ys = jax.lax.scan(run_chunk, carry,
                             (whole(xs[:n * chunk]), whole(split(valid, 0, n * chunk))))
    ys = ys.reshape(n * chunk, *ys.shape[2:])  # (n, K, batch, H) -> (n*K, batch, H)
    if n * chunk < time:
        carry, rest = run_chunk(carry, (xs[n * chunk:], split(valid, n * chunk, time)))
        ys = jnp.concatenate([ys, rest])
    return carry, ys


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _run(cell: Cell, plan: Plan, unroll: int, chunk: int | None, params, xs, carry, valid):
    """:func:`_primal`, differentiated by :func:`_run_fwd` and :func:`_run_bwd`."""
    return _primal(cell, plan, unroll, chunk, params, xs, carry, valid)


def _run_fwd(cell: Cell, plan: Plan, unroll: int, chunk: int | None, params, xs, carry,
             valid):
    bias = _bias(cell, params, xs)
    carry, buffer, (ys, carries, records, acts) = _forward(
        cell, plan, unroll, params, _project(cell, params, xs), bias, carry, valid, True)
    return (carry, ys), (params, xs, bias, valid, buffer, carries, records, acts)


def _run_bwd(cell: Cell, plan: Plan, unroll: int, chunk: int | None, res, cotangents):
    del chunk
    params, xs, bias, valid, buffer, carries, records, rest_acts = res
    d_carry, d_ys = cotangents
    w = params.w_hh
    rest = params._replace(w_ih=None, w_hh=None)  # their gradient is summed per step
    replay = _replay(cell.dtype)
    bounds = list(itertools.accumulate(plan.widths[:plan.packed]))[:-1]

    def body(state, row_t, inputs):
        d_carry, d_rest = state
        carry, valid_t, recs, dy_t, rest_acts_t = inputs
        # the packed activations are read back from their row; xp_t itself is never
        # needed: every input to a recorded activation is replaced by its record, and
        # with nothing packed the row still holds xp_t
        acts_t = (jnp.split(row_t, bounds, axis=-1) if plan.packed else []) + rest_acts_t
        step = _replay_step(cell, replay, w, bias, valid_t, acts_t)
        _, vjp = jax.vjp(step, rest, carry, row_t, [m for _, m in recs])
        dr, dc, dxp_t, dms = vjp((d_carry, dy_t))
        return ((dc, jax.tree.map(jnp.add, d_rest, dr)), dxp_t,
                [None if same else dm for dm, same in zip(dms, plan.same_as_dxp, strict=True)])

    time, batch = buffer.shape[:2]
    zeros = jax.tree.map(jnp.zeros_like, rest)
    (d_carry0, d_rest), d_xp, d_ms = _scan(
        body, (d_carry, zeros), buffer, (carries, valid, records, d_ys, rest_acts), time,
        fetch=plan.fetch_back, reverse=True, unroll=unroll)
    d_w = jnp.zeros_like(w)
    leaves = jax.tree.leaves(carries)
    for rows, source, (u, _), g, same in zip(plan.rows, plan.sources, records, d_ms,
                                              plan.same_as_dxp, strict=True):
        u = (u if source is None else leaves[source]).reshape(time * batch, -1)  # (T*B, H)
        g = (d_xp if same else g).reshape(time * batch, -1)  # (T*B, rows)
        # one matmul over all steps; (H, rows) -> (rows, H) transposes the small result
        d_w = d_w.at[slice(*rows)].add((u.T @ g).T.astype(w.dtype))
    # the projection's VJP: dW_ih, dx and the biases' gradients, each one pass over d_xp
    _, project_vjp = jax.vjp(lambda p, x: _project(cell, p, x) + _bias(cell, p, x), params, xs)
    d_params, d_xs = project_vjp(d_xp)
    d_loop = d_rest._replace(w_ih=jnp.zeros_like(params.w_ih), w_hh=d_w)
    return jax.tree.map(jnp.add, d_params, d_loop), d_xs, d_carry0, None


_run.defvjp(_run_fwd, _run_bwd)


def layer_fn(cell: Cell, unroll: int = 1, chunk: int | None = None):
    """``run(params, xs, carry, valid) -> (carry, ys)``: one direction of a layer.

    Equal to projecting ``xs`` with ``cell.project`` and running ``jax.lax.scan`` of
    ``cell.step`` over it (masked by ``valid``), with the VJP described in the module
    docstring.

    Unless differentiated, the projection runs ``chunk`` steps at a time inside an outer
    loop, so no ``(time, batch, G*H)`` array exists at once. When differentiated, the
    forward pass projects every step in one matmul and overwrites each step's projected
    input with the activations the backward pass replays, which then overwrites them with
    their cotangents: one such array serves the whole training step, and no zero-filled
    stack is written for the recorded gates. After the loop, ``dW_ih`` and ``dx`` are one
    matmul each over all steps. What the passes record is :func:`make_plan`'s, made once
    per call from the shapes.

    Args of ``run``:
      params: the cell's params.
      xs: ``(time, batch, input)``, in the order the scan runs.
      carry: the initial carry, leaves ``(batch, H)``.
      valid: ``(time, batch)`` booleans (a false step keeps the carry and outputs zero), or
        ``None``.

    Returns ``(carry, ys)`` with ``ys (time, batch, H)``.
    """

    def run(params, xs, carry, valid):
        spec = lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype)  # noqa: E731
        xp = jax.eval_shape(lambda p, x: _project(cell, p, x[:1]) + _bias(cell, p, x),
                            *jax.tree.map(spec, (params, xs)))  # (1, batch, G*H)
        plan = make_plan(cell, params, carry, jax.ShapeDtypeStruct(xp.shape[1:], xp.dtype),
                         None if valid is None else valid[0])
        return _run(cell, plan, unroll, chunk, params, xs, carry, valid)

    return run
