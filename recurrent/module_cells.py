"""What the cell modules of both families (:mod:`recurrent.linen`, :mod:`recurrent.nnx`)
do around a functional cell: one checked step, with the carry in torch's order ``(h, c)``
or flax's ``(c, h)``, and the initial carry."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from recurrent import cells, checks
from recurrent.unroll import state_dtype


def step(name: str, cell: cells.Cell, params, carry, x, carry_order: str, dtype):
    """``cell``'s step on ``x`` from ``carry`` in ``carry_order``, checked against the
    carry ``cell.initial_carry`` makes for ``x``; ``y`` in ``dtype``."""
    pair = carry_order == "flax" and isinstance(carry, (tuple, list)) and len(carry) == 2
    ours = (carry[1], carry[0]) if pair else carry
    want = jax.eval_shape(lambda: cell.initial_carry(tuple(jnp.shape(x)[:-1])))
    if carry_order == "flax" and isinstance(want, tuple):
        want = (want[1], want[0])
    checks.check_carry(name, carry, want)
    new, y = cell.step(params, ours, cell.project(params, x))
    if carry_order == "flax" and isinstance(new, tuple):
        new = (new[1], new[0])
    return new, (y if dtype is None else y.astype(dtype))


def initial_carry(cell: cells.Cell, input_shape, param_dtype, carry_init, key,
                  carry_order: str):
    """The carry of ``initialize_carry`` for inputs ``(*batch, input_size)``: zeros, or
    ``carry_init(key, shape, dtype)`` of each array (one key each, split from ``key``); in
    ``carry_order``."""
    zeros = cell.initial_carry(tuple(input_shape[:-1]), state_dtype(param_dtype))
    if carry_init is not None:
        leaves, tree = jax.tree.flatten(zeros)
        keys = jax.random.split(key, len(leaves))
        zeros = jax.tree.unflatten(tree, [carry_init(k, z.shape, z.dtype)
                                          for k, z in zip(keys, leaves, strict=True)])
    if carry_order == "flax" and isinstance(zeros, tuple):
        return zeros[1], zeros[0]
    return zeros


__all__ = ["initial_carry", "step"]
