"""One direction of a recurrent cell over time, with ``jax.lax.scan``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from recurrent import checks
from recurrent.cells import Cell
from recurrent.framing import frame
from recurrent.framing import reverse_index as reverse_index


def state_dtype(param_dtype):
    """The carry's dtype for params of ``param_dtype``: never below float32 (bf16 carries f32)."""
    return jnp.promote_types(param_dtype, jnp.float32)


def carry_dtype(params):
    """The carry's dtype for ``params``: :func:`state_dtype` of their ``w_ih``."""
    return state_dtype(params.w_ih.dtype)


def project_time_major(cell: Cell, params, xs, carry, time_major: bool, seq_lengths=None):
    """What every way of running a cell over time starts with: the input framed by
    :func:`recurrent.framing.frame` (padded steps zeroed) and projected, ``xp (time, batch,
    G*H)``, time first; the carry (zeros when ``None``); the ``int32`` lengths ``(batch,)``
    and the valid steps ``(time, batch)`` (both ``None`` without ``seq_lengths``)."""
    if not time_major:
        xs = jnp.swapaxes(xs, 0, 1)  # (batch, time, I) -> (time, batch, I)
    if carry is None:
        carry = cell.initial_carry((xs.shape[1],), carry_dtype(params))
    xs, lengths, valid = frame(xs, seq_lengths)
    return cell.project(params, xs), carry, lengths, valid  # (time, batch, G*H)


def unroll(cell: Cell, params: Any, xs: jax.Array, carry: Any = None, *,
           seq_lengths: jax.Array | None = None, reverse: bool = False, unroll: int = 1,
           time_major: bool = False, return_activations: bool = False) -> tuple[Any, Any]:
    """Runs ``cell`` over the time axis of ``xs`` and returns ``(final_carry, ys)``.

    The input half of every step is computed for the whole sequence in one matmul
    (``cell.project``) before the scan; the scan body is ``cell.step``. Without
    ``seq_lengths`` this computes::

        xp = cell.project(params, xs)
        for t in (reversed(range(T)) if reverse else range(T)):
            carry, ys[t] = cell.step(params, carry, xp[t])

    With ``seq_lengths`` (right padding), sequence ``b`` only runs its first
    ``seq_lengths[b]`` steps: past them its carry is frozen and its outputs are zero, so
    the final carry is the state at its last valid step; ``reverse`` runs each valid part
    backwards from its own last valid step, as a packed sequence does in torch. Lengths
    are clipped to ``[0, T]`` at run time, and padded steps are zeroed before the
    projection, so a NaN there changes no output or gradient.

    Args:
      cell: a :class:`recurrent.cells.Cell`.
      params: the cell's params.
      xs: ``(batch, time, input)``, or ``(time, batch, input)`` with ``time_major``.
      carry: the initial carry (see ``cell.initial_carry``); zeros when ``None``.
      seq_lengths: ``(batch,)`` integer valid lengths, or ``None`` for all ``time`` steps.
      reverse: run from the last (valid) step to the first.
      unroll: how many steps one scan iteration runs (``jax.lax.scan``'s ``unroll``).
      time_major: whether ``xs`` and ``ys`` put time first.
      return_activations: return, in place of ``ys``, the dict of every gate and state at
        every step (``cell.activations``: for the LSTM ``i, f, g, o, c, h``), each shaped as
        ``ys``. Zero past ``seq_lengths`` like ``ys``.

    Returns:
      ``(carry, ys)``: the final carry and ``ys`` of shape ``(batch, time, hidden)``, or
      ``(time, batch, hidden)`` with ``time_major``; ``ys[b, t]`` is the output at input
      position ``t`` whichever the direction.
    """
    checks.check_unroll("unroll", cell, params, xs, carry, seq_lengths, time_major)
    checks.check_flag("unroll", "reverse", reverse)
    checks.check_flag("unroll", "return_activations", return_activations)
    checks.check_size("unroll", "unroll", unroll)
    return scan_unroll(cell, params, xs, carry, seq_lengths=seq_lengths, reverse=reverse,
                       unroll=unroll, time_major=time_major,
                       return_activations=return_activations)


def scan_unroll(cell: Cell, params, xs: jax.Array, carry=None, *, seq_lengths=None,
                reverse: bool = False, unroll: int = 1, time_major: bool = False,
                return_activations: bool = False):
    """:func:`unroll` without the checks of its arguments, for the callers that have made
    them (the layers) or that change the cell's input (:mod:`recurrent.regularize`)."""
    xp, carry, lengths, valid = project_time_major(cell, params, xs, carry, time_major,
                                                   seq_lengths)
    time = xp.shape[0]

    def step(carry, xp_t):
        new_carry, y_t = cell.step(params, carry, xp_t)
        if return_activations:
            y_t = cell.activations(params, carry, xp_t)
        return new_carry, y_t

    if seq_lengths is None:
        carry, ys = jax.lax.scan(step, carry, xp, reverse=reverse, unroll=unroll)
    else:
        if reverse:
            idx = reverse_index(lengths, time)  # (time, batch)
            xp = jnp.take_along_axis(xp, idx[:, :, None], axis=0)

        def body(carry, inputs):
            xp_t, valid_t = inputs  # (batch, G*H), (batch,)
            new_carry, y_t = step(carry, xp_t)
            keep = valid_t[:, None]  # (batch, 1)
            new_carry = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new_carry, carry)
            return new_carry, jax.tree.map(lambda y: jnp.where(keep, y, 0), y_t)

        carry, ys = jax.lax.scan(body, carry, (xp, valid), unroll=unroll)
        if reverse:
            ys = jax.tree.map(lambda y: jnp.take_along_axis(y, idx[:, :, None], axis=0), ys)

    if not time_major:
        ys = jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1), ys)  # (T, B, H) -> (B, T, H)
    return carry, ys

__all__ = ["unroll"]
