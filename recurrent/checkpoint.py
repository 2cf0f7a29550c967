"""Save and restore pytrees of arrays with orbax-checkpoint, checking the checkpoint against
the tree it is restored into.

Anything that is a pytree of arrays can be saved: Linen variables, the functional params,
an optax state, ``nnx.state(model)``, or a dict of several of them::

    recurrent.checkpoint.save(path, {"variables": variables, "opt_state": opt_state})
    restored = recurrent.checkpoint.restore(path, {"variables": variables,
                                                   "opt_state": opt_state})
    nnx.update(model, recurrent.checkpoint.restore(path, nnx.state(model)))   # NNX

Restored arrays are bit for bit the saved ones, with the dtypes and shardings of ``like``.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


def _key_name(key) -> str:
    """One key of a pytree path as a string; tuple indices and dict keys compare equal."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _leaves_by_path(tree) -> dict[str, object]:
    """``{"params/layers/0/0/w_ih": leaf, ...}`` over the leaves of ``tree``."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in flat}


def _stored(leaf) -> tuple[tuple, object]:
    """``(shape, dtype)`` of a leaf as orbax stores it: a typed PRNG key (e.g. in an NNX
    ``Rngs``) as its ``uint32`` key data."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.eval_shape(jax.random.key_data, leaf)
    return tuple(leaf.shape), leaf.dtype


def save(directory, tree, *, overwrite: bool = False) -> None:
    """Saves ``tree`` (a pytree of arrays) to ``directory`` and waits until it is written.

    Args:
      directory: a path; it must not exist unless ``overwrite`` (else ``FileExistsError``).
      tree: e.g. Linen variables, functional params, ``nnx.state(model)``, an optax state.
      overwrite: replace an existing checkpoint at ``directory``.
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not overwrite:
        raise FileExistsError(f"save: {directory} exists; pass overwrite=True to replace it")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory, tree, force=overwrite)
        checkpointer.wait_until_finished()


def restore(directory, like):
    """Restores the checkpoint at ``directory`` into the structure of ``like``.

    Args:
      directory: a path written by :func:`save`.
      like: a pytree with the saved structure whose leaves are arrays or
        ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``); the restored arrays take
        their dtypes and shardings.

    Returns:
      A pytree like ``like`` holding the saved arrays.

    Raises:
      FileNotFoundError: no checkpoint at ``directory``.
      ValueError: the checkpoint does not match ``like``: missing or unexpected entries, or
        an entry of another shape or dtype (e.g. a model built with another
        ``hidden_size``); the message names each path.
    """
    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"restore: no checkpoint at {directory}")
    with ocp.StandardCheckpointer() as checkpointer:
        saved = _leaves_by_path(checkpointer.metadata(directory).item_metadata.tree)
        wanted = _leaves_by_path(like)
        problems = [f"missing from the checkpoint: {p}" for p in wanted if p not in saved]
        problems += [f"not in the model: {p}" for p in saved if p not in wanted]
        for path in wanted.keys() & saved.keys():
            (got_shape, got_dtype), (shape, dtype) = _stored(saved[path]), _stored(wanted[path])
            if got_shape != shape or got_dtype != dtype:
                problems.append(f"{path}: saved {got_dtype}{list(got_shape)}, expected "
                                f"{dtype}{list(shape)}")
        if problems:
            raise ValueError(f"restore: the checkpoint at {directory} does not match the "
                             f"tree to restore into:\n  " + "\n  ".join(sorted(problems)))
        return checkpointer.restore(directory, like)
