"""The fast path of one stacked layer: both directions projected and scanned together.

For one layer with ``D`` directions this computes the same as ``D`` calls of
:func:`recurrent.unroll.unroll`, arranged for speed:

- time-major throughout: ``x`` is transposed once per stack, and every scan step reads a
  contiguous ``(D, batch, G*H)`` slab;
- the backward direction's input is reversed (each sequence from its own last valid step)
  before the projection, so both directions run forward in one scan, ``vmap``-ed over
  ``D``, and the projection of both is one batched matmul;
- the scan is :func:`recurrent.vjp.scan_fn`'s, whose backward pass computes the weight
  gradients as single matmuls over all steps;
- with ``remat_chunk=K`` the layer runs as a scan over chunks of ``K`` steps, each chunk
  (projection and scan) rematerialised in the backward pass, so training keeps only the
  carry at chunk boundaries besides the layer's inputs and outputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from recurrent.cells import Cell
from recurrent.unroll import reverse_index
from recurrent.vjp import scan_fn


def _over_directions(fn, num_dirs, in_axes, out_axes):
    """``fn`` applied per direction: ``vmap`` over the direction axes, or, for one
    direction, ``fn`` on the squeezed arguments (a size-1 ``vmap`` would put a batch
    dimension on every matmul of the scan)."""
    if num_dirs > 1:
        return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes)

    def squeeze(args, axes):
        return [a if ax is None else jax.tree.map(lambda v: jnp.squeeze(v, ax), a)
                for a, ax in zip(args, axes, strict=True)]

    def single(*args):
        outs = fn(*squeeze(args, in_axes))
        return tuple(jax.tree.map(lambda v: jnp.expand_dims(v, ax), o)
                     for o, ax in zip(outs, out_axes, strict=True))

    return single


def directions_in(xs, seq_lengths, num_dirs: int):
    """Both directions' inputs in scan order: ``xs (T, batch, F)`` to ``(T, D, batch, F)``,
    direction 1 reversed within each sequence's valid part (its padding stays last), so
    that both run forward in one scan. Also returns ``reorder``, which swaps a ``(T, batch,
    ...)`` array between the two orders (it is its own inverse)."""
    time = xs.shape[0]
    if seq_lengths is None:
        reorder = lambda v: v[::-1]  # noqa: E731
    else:
        idx = reverse_index(jnp.clip(seq_lengths, 0, time), time)[:, :, None]  # (T, batch, 1)
        reorder = lambda v: jnp.take_along_axis(v, idx, axis=0)  # noqa: E731
    order = jnp.stack([xs, reorder(xs)], axis=1) if num_dirs == 2 else xs[:, None]
    return order, reorder


def directions_out(ys, reorder):
    """``ys (T, D, batch, H)`` in scan order to ``(T, batch, D*H)`` in input order, with
    ``[forward, backward]`` on the last axis."""
    if ys.shape[1] == 2:
        ys = jnp.stack([ys[:, 0], reorder(ys[:, 1])], axis=1)
    time, _, batch, _ = ys.shape
    return jnp.swapaxes(ys, 1, 2).reshape(time, batch, -1)  # via (T, batch, D, H)


def run_layer(cell: Cell, layer, xs, carry, seq_lengths=None, *, unroll: int = 1,
              remat_chunk: int | None = None):
    """One layer of ``D`` directions over time-major ``xs``.

    Args:
      cell: the layer's cell (with ``recurrence``).
      layer: a tuple of ``D`` cell params, forward then backward.
      xs: ``(time, batch, input)``.
      carry: the initial carry, leaves ``(D, batch, H)``.
      seq_lengths: ``(batch,)`` valid lengths or ``None``.
      unroll: scan steps per loop iteration.
      remat_chunk: rematerialise the backward pass in chunks of this many steps, or
        ``None`` to store every step's residuals.

    Returns:
      ``(ys, carry)``: ``ys (time, batch, D*H)`` with ``[forward, backward]`` on the last
      axis and the final carry, leaves ``(D, batch, H)``.
    """
    num_dirs = len(layer)
    time, batch = xs.shape[:2]
    stacked = jax.tree.map(lambda *p: jnp.stack(p), *layer)  # leaves (D, ...)
    valid = (None if seq_lengths is None else
             jnp.arange(time)[:, None] < jnp.clip(seq_lengths, 0, time)[None, :])  # (T, batch)
    order, reorder = directions_in(xs, seq_lengths, num_dirs)  # (T, D, batch, I)

    def project(p, x):  # (K, batch, I) -> (K, batch, G*H) and the bias (G*H,)
        # project is affine: its constant part is project(p, 0), added inside the scan
        linear = cell.project(p._replace(b_ih=None, b_hh=None), x.reshape(-1, x.shape[-1]))
        bias = cell.project(p, jnp.zeros(x.shape[-1:], x.dtype))
        return linear.reshape(*x.shape[:2], -1), bias  # (K*batch, G*H) -> (K, batch, G*H)

    def scan(p, xp, bias, c, v):
        return scan_fn(cell, unroll)(p._replace(w_ih=None), xp, bias, c, v)

    project = _over_directions(project, num_dirs, (0, 1), (1, 0))
    scan = _over_directions(scan, num_dirs, (0, 1, 0, 0, None), (0, 1))

    def chunk(carry, inputs):
        x, v = inputs  # (K, D, batch, I), (K, batch) or None
        xp, bias = project(stacked, x)  # (K, D, batch, G*H), (D, G*H)
        return scan(stacked, xp, bias, carry, v)  # carry, (K, D, batch, H)

    if remat_chunk is None or remat_chunk >= time:
        carry, ys = chunk(carry, (order, valid))
    else:
        k = remat_chunk
        n = -(-time // k)
        pad = n * k - time  # padded steps come last in scan order and are masked out
        if pad and valid is None:
            valid = jnp.ones((time, batch), bool)
        if pad:
            order = jnp.pad(order, ((0, pad),) + ((0, 0),) * 3)
            valid = jnp.pad(valid, ((0, pad), (0, 0)))
        order = order.reshape(n, k, *order.shape[1:])  # (T, D, B, I) -> (n, K, D, B, I)
        valid = None if valid is None else valid.reshape(n, k, batch)  # (n, K, batch)
        carry, ys = jax.lax.scan(jax.checkpoint(chunk), carry, (order, valid))
        ys = ys.reshape(n * k, *ys.shape[2:])[:time]  # (n, K, D, B, H) -> (T, D, B, H)
    return directions_out(ys, reorder), carry  # (T, batch, D*H)
