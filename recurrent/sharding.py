"""Data parallelism with ``jax.sharding``: the batch split over a mesh of all devices, the
params replicated, and the training step an ordinary ``jax.jit`` (or ``nnx.jit``) function.

XLA partitions the step from the shardings of its inputs and averages the gradients over
the ``"data"`` axis itself, so the step gives the same params as on one device::

    mesh = recurrent.sharding.data_mesh()                    # all devices, axis "data"
    params, opt_state = recurrent.sharding.replicate((params, opt_state), mesh)
    for x, y in batches:                                     # this process's rows
        x, y = recurrent.sharding.shard_batch((x, y), mesh)
        params, opt_state, loss = train_step(params, opt_state, x, y)   # jax.jit'ed

On several hosts, call ``jax.distributed.initialize()`` first on each; ``data_mesh`` then
spans the devices of all hosts, every process gives ``shard_batch`` its own rows (the global
batch is all processes' rows in process order) and the same params to ``replicate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

T = TypeVar("T")  # a pytree of arrays


def data_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = "data") -> Mesh:
    """A 1-D mesh over ``devices`` (default: ``jax.devices()``, every host's) named
    ``axis_name``, with automatic sharding propagation."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (axis_name,),
                axis_types=(jax.sharding.AxisType.Auto,))


def replicate(tree: T, mesh: Mesh) -> T:
    """Puts every array of ``tree`` (params, optimizer state) whole on every device of
    ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(tree: T, mesh: Mesh, axis_name: str = "data") -> T:
    """Splits the leading (batch) axis of every array of ``tree`` over ``mesh``.

    Args:
      tree: arrays of this process's rows, each ``(local_batch, ...)``.
      mesh: from :func:`data_mesh`.
      axis_name: the mesh axis to split over.

    Returns:
      Global arrays ``(local_batch * process_count, ...)``, each device holding
      ``global_batch / mesh size`` consecutive rows.

    Raises:
      ValueError: an array has no batch axis, or the batch does not divide evenly over
        the devices.
    """
    sharding = NamedSharding(mesh, PartitionSpec(axis_name))
    per_process = mesh.shape[axis_name] // jax.process_count()

    def put(path, x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % per_process:
            raise ValueError(
                f"shard_batch: batch{jax.tree_util.keystr(path)} has shape {x.shape}; its "
                f"leading (batch) axis must be a multiple of the {per_process} devices of "
                f"this process on mesh axis {axis_name!r}")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map_with_path(put, tree)

__all__ = ["data_mesh", "replicate", "shard_batch"]
