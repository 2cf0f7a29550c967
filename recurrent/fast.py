"""The fast path of one stacked layer: both directions projected and scanned together.

For one layer with ``D`` directions this computes the same as ``D`` calls of
:func:`recurrent.unroll.unroll`, arranged for speed:

- time-major throughout: ``x`` is transposed once per stack, and every scan step reads a
  contiguous ``(D, batch, G*H)`` slab;
- the backward direction's input is reversed (each sequence from its own last valid step)
  before the projection, so both directions run forward in one scan, ``vmap``-ed over
  ``D``, and the projection of both is one batched matmul;
- projection and scan are :func:`recurrent.vjp.layer_fn`'s, whose backward pass computes
  the weight gradients as single matmuls over all steps, and which, when not
  differentiated, projects a long sequence a chunk of steps at a time
  (:func:`projection_chunk`);
- with ``remat_chunk=K`` the layer runs as a scan over chunks of ``K`` steps, each chunk
  (projection and scan) rematerialised in the backward pass, so training keeps only the
  carry at chunk boundaries besides the layer's inputs and outputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from recurrent.cells import Cell
from recurrent.framing import frame, reverse_index
from recurrent.vjp import layer_fn


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
    """Both directions' inputs in scan order: ``xs (T, batch, F)``, framed by
    :func:`recurrent.framing.frame` (padded steps zeroed), to ``(T, D, batch, F)``,
    direction 1 reversed within each sequence's valid part (its padding stays last), so
    that both run forward in one scan. Also returns ``reorder``, which swaps a ``(T, batch,
    ...)`` array between the two orders (it is its own inverse), and the valid steps
    ``(T, batch)`` (``None`` without ``seq_lengths``)."""
    time = xs.shape[0]
    xs, lengths, valid = frame(xs, seq_lengths)
    if seq_lengths is None:
        reorder = lambda v: v[::-1]  # noqa: E731
    else:
        idx = reverse_index(lengths, time)[:, :, None]  # (T, batch, 1)
        reorder = lambda v: jnp.take_along_axis(v, idx, axis=0)  # noqa: E731
    order = jnp.stack([xs, reorder(xs)], axis=1) if num_dirs == 2 else xs[:, None]
    return order, reorder, valid


def directions_out(ys, reorder):
    """``ys (T, D, batch, H)`` in scan order to ``(T, batch, D*H)`` in input order, with
    ``[forward, backward]`` on the last axis."""
    if ys.shape[1] == 2:
        ys = jnp.stack([ys[:, 0], reorder(ys[:, 1])], axis=1)
    time, _, batch, _ = ys.shape
    return jnp.swapaxes(ys, 1, 2).reshape(time, batch, -1)  # via (T, batch, D, H)


PROJECTION_BYTES = 8 << 20


def projection_chunk(time: int, width: int) -> int | None:
    """Steps projected at once when not differentiated, for ``width`` float32 projected
    inputs a step: on CPU, ``None`` (all) when they fit twice ``PROJECTION_BYTES``, else the
    most steps (a power of two) that fit ``PROJECTION_BYTES``: a larger array costs more in
    fresh pages and cache misses than the outer loop costs (at B 64, T 256, H 256 the
    chunked LSTM forward pass took 0.80 to 0.86 of the unchunked one's time). Elsewhere
    ``None``: an accelerator runs one large matmul best."""
    step_bytes = 4 * width
    if jax.default_backend() != "cpu" or time * step_bytes <= 2 * PROJECTION_BYTES:
        return None
    steps = max(1, PROJECTION_BYTES // step_bytes)
    return 1 << (steps.bit_length() - 1)


def run_layer(cell: Cell, layer, xs, carry, seq_lengths=None, *, unroll: int = 1,
              remat_chunk: int | None = None):
    """One layer of ``D`` directions over time-major ``xs``.

    Args:
      cell: the layer's cell (with ``recurrence``).
      layer: a tuple of ``D`` cell params, forward then backward.
      xs: ``(time, batch, input)``.
      carry: the initial carry, leaves ``(D, batch, H)``.
      seq_lengths: ``(batch,)`` valid lengths or ``None``.
      unroll: scan steps per loop iteration (the largest divisor of ``time`` not above it).
      remat_chunk: rematerialise the backward pass in chunks of this many steps, or
        ``None`` to store every step's residuals.

    Returns:
      ``(ys, carry)``: ``ys (time, batch, D*H)`` with ``[forward, backward]`` on the last
      axis and the final carry, leaves ``(D, batch, H)``.
    """
    num_dirs = len(layer)
    time, batch = xs.shape[:2]
    stacked = jax.tree.map(lambda *p: jnp.stack(p), *layer)  # leaves (D, ...)
    order, reorder, valid = directions_in(xs, seq_lengths, num_dirs)  # (T, D, batch, I)
    # projected inputs a step; the last carry leaf is H wide (an LSTMP's c, not its h)
    width = cell.gates * jax.tree.leaves(carry)[-1].shape[-1] * num_dirs * batch
    run = _over_directions(layer_fn(cell, unroll, projection_chunk(time, width)), num_dirs,
                           (0, 1, 0, None), (0, 1))

    def chunk(carry, inputs):
        x, v = inputs  # (K, D, batch, I), (K, batch) or None
        return run(stacked, x, carry, v)  # carry, (K, D, batch, H)

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
