"""The ways of running one layer of a stack, by ``impl``: one signature, one dict.

Every engine runs one layer of ``D`` directions over a time-major input::

    ys, carry, activations = ENGINES[impl](run, l, layer, xs, carry, seq_lengths)

with ``xs (time, batch, input)``, ``carry`` leaves ``(D, batch, H)`` in and out, ``ys
(time, batch, D*H)`` with ``[forward, backward]`` on the last axis, and ``activations`` a
tuple of one dict of every gate and state per direction (each leaf ``(time, batch, H)``),
empty unless ``run.return_activations``. ``run`` (a :class:`LayerRun`) holds what is the
same for every layer of the stack. The stack itself (state slicing, inter-layer dropout,
final states) is ``recurrent.layers._run_stack``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from recurrent import fast
from recurrent.cells import Cell
from recurrent.deer import deer_unroll
from recurrent.minimal import parallel_unroll
from recurrent.regularize import Regularization, regularized_unroll
from recurrent.unroll import scan_unroll


class LayerRun(NamedTuple):
    """What every layer of one stack runs with.

    Attributes:
      cell: the stack's cell.
      unroll: scan steps per loop iteration.
      remat_chunk: the fast path's rematerialisation chunk, or ``None``.
      reg: the dropout and zoneout of the regularised scan, or ``None``.
      masks_key: the key the regularised scan's masks of layer ``l``, direction ``d`` are
        drawn from by ``fold_in(masks_key, l * D + d)``, or ``None``.
      return_activations: whether the regularised scan returns every gate and state.
      kernels: each layer's GPU kernel configuration
        (:func:`recurrent.kernels.layer.configure`), ``None`` for the XLA path.
    """

    cell: Cell
    unroll: int
    remat_chunk: int | None = None
    reg: Regularization | None = None
    masks_key: Any = None
    return_activations: bool = False
    kernels: tuple = ()


def _per_direction(unroll_fn: Callable, run: LayerRun, l: int, layer, xs, carry,
                   seq_lengths):
    """The engine of a one-direction unroll (``unroll_fn`` with
    :func:`recurrent.unroll.unroll`'s contract): each direction in turn, the backward one
    with ``reverse=True``."""
    ys, finals, activations = [], [], []
    for d, p in enumerate(layer):
        carry_d = jax.tree.map(lambda s: s[d], carry)  # leaves (D, batch, H) -> (batch, H)
        carry_d, y = unroll_fn(run.cell, p, xs, carry_d, seq_lengths=seq_lengths,
                               reverse=d == 1, unroll=run.unroll, time_major=True)
        if run.return_activations:  # y is the dict of every gate and state
            activations.append(y)
            y = y["h"]
        finals.append(carry_d)
        ys.append(y)
    carry = jax.tree.map(lambda *c: jnp.stack(c), *finals)  # leaves (D, batch, H)
    return jnp.concatenate(ys, axis=-1), carry, tuple(activations)  # (T, batch, D*H)


def _unroll_engine(unroll_fn: Callable):
    """:func:`_per_direction` of ``unroll_fn``."""
    return partial(_per_direction, unroll_fn)


def _regularized(run: LayerRun, l: int, layer, xs, carry, seq_lengths):
    """The scan with ``run.reg``'s dropout and zoneout, direction ``d`` of layer ``l``
    drawing its masks from ``fold_in(run.masks_key, l * D + d)``."""
    num_dirs = len(layer)

    def unroll_fn(cell, p, xs, carry, *, reverse, **kwargs):
        index = l * num_dirs + (1 if reverse else 0)
        key = None if run.masks_key is None else jax.random.fold_in(run.masks_key, index)
        return regularized_unroll(cell, p, xs, carry, reg=run.reg or Regularization(),
                                  key=key, reverse=reverse,
                                  return_activations=run.return_activations, **kwargs)

    return _per_direction(unroll_fn, run, l, layer, xs, carry, seq_lengths)


def _fast(run: LayerRun, l: int, layer, xs, carry, seq_lengths):
    """Both directions at once by :func:`recurrent.fast.run_layer`."""
    ys, carry = fast.run_layer(run.cell, layer, xs, carry, seq_lengths, unroll=run.unroll,
                               remat_chunk=run.remat_chunk)
    return ys, carry, ()


def _kernel(run: LayerRun, l: int, layer, xs, carry, seq_lengths):
    """The GPU kernels' run_layer where ``run.kernels[l]`` is set, else :func:`_fast`."""
    if run.kernels[l] is None:
        return _fast(run, l, layer, xs, carry, seq_lengths)
    from recurrent.kernels import layer as kernel_layer

    ys, carry = kernel_layer.run_layer(run.cell, run.kernels[l], layer, xs, carry,
                                       seq_lengths)
    return ys, carry, ()


def _auto(run: LayerRun, l: int, layer, xs, carry, seq_lengths):
    """The kernel where ``run.kernels[l]`` is set and the program is lowered for CUDA, the
    XLA fast path elsewhere.

    The kernel was chosen from the process' device, but the program may be lowered for
    another platform (``jax.export(..., platforms=("tpu",))`` on a GPU machine):
    ``lax.platform_dependent`` decides at lowering; XLA never sees a branch."""
    if run.kernels[l] is None:
        return _fast(run, l, layer, xs, carry, seq_lengths)
    from recurrent.kernels import layer as kernel_layer

    xla = partial(fast.run_layer, run.cell, layer, unroll=run.unroll,
                  remat_chunk=run.remat_chunk)
    kernel = partial(kernel_layer.run_layer, run.cell, run.kernels[l], layer)
    ys, carry = jax.lax.platform_dependent(xs, carry, seq_lengths, cuda=kernel, default=xla)
    return ys, carry, ()


#: Every way of running a layer, by ``impl``; "regularized" is the scan that
#: ``recurrent.layers._run_stack`` picks for dropout, zoneout and activations.
ENGINES: dict[str, Callable] = {
    "auto": _auto,
    "fast": _fast,
    "pallas": _kernel,
    "reference": _unroll_engine(scan_unroll),
    "deer": _unroll_engine(partial(deer_unroll, jacobian="full")),
    "quasi_deer": _unroll_engine(partial(deer_unroll, jacobian="diagonal")),
    "parallel": _unroll_engine(parallel_unroll),
    "regularized": _regularized,
}


def kernel_configs(kernel: str | None, impl: str, params, batch: int, dtype,
                   remat_chunk: int | None) -> tuple:
    """Each layer's GPU kernel configuration by :func:`recurrent.kernels.layer.configure`
    (``None``: the XLA path). The kernels, and Pallas, are imported only where they may
    run: for ``impl="pallas"``, and for ``"auto"`` in a process whose devices are GPUs."""
    if impl not in ("auto", "pallas") or (impl == "auto" and jax.default_backend() != "gpu"):
        return (None,) * len(params)
    from recurrent.kernels import layer as kernel_layer

    return tuple(kernel_layer.configure(kernel, impl, layer, batch, dtype, remat_chunk)
                 for layer in params)


__all__ = ["ENGINES", "LayerRun", "kernel_configs"]
