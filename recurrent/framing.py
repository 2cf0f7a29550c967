"""How a batch of right-padded sequences is framed: valid lengths, the mask of valid
steps, the reverse order of each valid part, and padding that cannot reach any result.

Every way of running a cell over time (:func:`recurrent.unroll.unroll`, the DEER and
parallel unrolls, the fast path and the GPU kernels) frames its input with :func:`frame`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def clip_lengths(seq_lengths: jax.Array, time: int) -> jax.Array:
    """``seq_lengths`` clipped to ``[0, time]``, as ``int32`` of shape ``(batch,)``.

    The clip runs in the lengths' own dtype with a bound it can hold (``time``, or the
    dtype's largest value when ``time`` is larger), so a narrow dtype (``uint8`` lengths
    with ``time = 300``) neither wraps the bound nor the lengths; the result is cast to
    ``int32``, which holds every value in ``[0, time]``.
    """
    bound = min(time, int(jnp.iinfo(seq_lengths.dtype).max))
    return jnp.clip(seq_lengths, 0, bound).astype(jnp.int32)


def valid_mask(lengths: jax.Array, time: int) -> jax.Array:
    """``valid[t, b] = t < lengths[b]``: ``(time, batch)`` bool from ``int32`` lengths."""
    return jnp.arange(time, dtype=jnp.int32)[:, None] < lengths[None, :]


def reverse_index(lengths: jax.Array, time: int) -> jax.Array:
    """Time indices that reverse each sequence's valid part and leave its padding in place.

    ``idx[t, b] = lengths[b] - 1 - t`` for ``t < lengths[b]``, else ``t``; shape
    ``(time, batch)``, from the ``int32`` lengths of :func:`clip_lengths`. Applying it
    twice is the identity.
    """
    t = jnp.arange(time, dtype=jnp.int32)[:, None]  # (time, 1)
    return jnp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


def frame(xs: jax.Array, seq_lengths) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """Frames time-major ``xs (time, batch, features)`` by ``seq_lengths``.

    Returns ``(xs, lengths, valid)``: ``xs`` with every padded step (``t >= length``) set
    to zero by ``where``, so that a NaN or inf there reaches neither an output nor a
    gradient (a product of zero and NaN would: the weight gradients sum over every step);
    the ``int32`` lengths of :func:`clip_lengths` ``(batch,)``; and :func:`valid_mask`
    ``(time, batch)``. Without ``seq_lengths``: ``(xs, None, None)``.
    """
    if seq_lengths is None:
        return xs, None, None
    time = xs.shape[0]
    lengths = clip_lengths(seq_lengths, time)
    valid = valid_mask(lengths, time)
    return jnp.where(valid[:, :, None], xs, jnp.zeros((), xs.dtype)), lengths, valid
