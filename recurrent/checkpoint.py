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

import ctypes
import glob
import os
import shutil
import sys
import uuid

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


def _summary(error: Exception) -> str:
    """The kind and first line of ``error``, at most 200 characters (tensorstore's messages
    go on to print whole specs)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


def _stored(leaf) -> tuple[tuple, object]:
    """``(shape, dtype)`` of a leaf as orbax stores it: a typed PRNG key (e.g. in an NNX
    ``Rngs``) as its ``uint32`` key data."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.eval_shape(jax.random.key_data, leaf)
    return tuple(leaf.shape), leaf.dtype


# Files orbax writes into every complete checkpoint; a directory without them is not one.
_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA")


def is_checkpoint(directory) -> bool:
    """Whether ``directory`` holds a checkpoint written by :func:`save` (orbax's metadata
    files): what :func:`save` may replace."""
    return all(os.path.isfile(os.path.join(directory, m)) for m in _MARKERS)


def _check_leaves(tree) -> None:
    """``TypeError`` naming the first leaf that is not an array (nor a Python number),
    before anything is written."""
    for path, leaf in _leaves_by_path(tree).items():
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")) and (
                isinstance(leaf, bool) or not isinstance(leaf, (int, float))):
            raise TypeError(f"save: the leaf {path} is a {type(leaf).__name__}; a checkpoint "
                            f"holds arrays (and numbers) only")


def _sibling(directory: str, tag: str) -> str:
    """A fresh hidden path next to ``directory``, e.g. ``.ckpt.saving-1234-ab12cd34``."""
    parent, name = os.path.split(directory)
    return os.path.join(parent, f".{name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _exchange(a: str, b: str) -> bool:
    """Swaps the paths ``a`` and ``b`` in one atomic step (Linux's ``renameat2`` with
    ``RENAME_EXCHANGE``); ``False`` where that is not available (then nothing moved)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) \
        if sys.platform.startswith("linux") else None
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (38, 22, 95):  # ENOSYS, EINVAL, EOPNOTSUPP: the file system cannot
        return False
    raise OSError(errno, os.strerror(errno), b)


def save(directory, tree, *, overwrite: bool = False) -> None:
    """Saves ``tree`` (a pytree of arrays) to ``directory`` and waits until it is written.

    The checkpoint is written to a hidden sibling of ``directory``
    (``.<name>.saving-<pid>-*``) and moved into place only once complete, so a save that
    fails or is killed midway leaves the previous checkpoint (if any) as it was; the
    sibling is removed on failure (a killed process leaves it behind). On Linux the new
    checkpoint and the previous one swap places in one atomic rename, and the previous one
    is then deleted. Elsewhere the previous one is renamed aside (``.<name>.old-*``) before
    the new one is renamed in: a crash between those two renames leaves it there.

    Args:
      directory: a path; it must not exist unless ``overwrite`` (else ``FileExistsError``).
        Its parent directories are created.
      tree: e.g. Linen variables, functional params, ``nnx.state(model)``, an optax state;
        leaves are arrays or numbers (else ``TypeError``, before anything is written).
      overwrite: replace an existing checkpoint at ``directory``; anything else there (a
        file, a directory that is not a checkpoint) is never replaced:
        ``FileExistsError``.
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.lexists(directory):
        if not overwrite:
            raise FileExistsError(f"save: {directory} exists; pass overwrite=True to replace "
                                  f"it")
        if not os.path.isdir(directory) or not is_checkpoint(directory):
            raise FileExistsError(f"save: {directory} exists and is not a checkpoint (it lacks "
                                  f"{' and '.join(_MARKERS)}); refusing to replace it, even "
                                  f"with overwrite=True")
    _check_leaves(tree)
    parent = os.path.dirname(directory)
    try:  # fails at once where a parent is a regular file; orbax would wait 300 s
        os.makedirs(parent, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        blocker = parent
        while not os.path.lexists(blocker):
            blocker = os.path.dirname(blocker)
        raise NotADirectoryError(f"save: cannot create {directory}: {blocker} is not a "
                                 f"directory") from e
    staging = _sibling(directory, "saving")
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging, tree)
            checkpointer.wait_until_finished()
        if not os.path.lexists(directory):
            os.rename(staging, directory)
        elif _exchange(staging, directory):  # staging now holds the previous checkpoint
            shutil.rmtree(staging)
        else:
            old = _sibling(directory, "old")
            os.rename(directory, old)
            os.rename(staging, directory)
            shutil.rmtree(old)
    finally:
        for leftover in [staging, *glob.glob(glob.escape(staging) + ".orbax-checkpoint-tmp*")]:
            if os.path.lexists(leftover):
                shutil.rmtree(leftover, ignore_errors=True)


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
        aside = glob.glob(os.path.join(glob.escape(os.path.dirname(directory)),
                                       f".{glob.escape(os.path.basename(directory))}.old-*"))
        hint = f" (a save interrupted while swapping left the previous one at {aside[0]})" \
            if aside else ""
        raise FileNotFoundError(f"restore: no checkpoint at {directory}{hint}")
    missing = [m for m in _MARKERS if not os.path.isfile(os.path.join(directory, m))]
    if missing:
        raise ValueError(f"restore: {directory} is not a complete checkpoint: "
                         f"{', '.join(missing)} missing")
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            item = checkpointer.metadata(directory).item_metadata
        except Exception as e:  # orbax and tensorstore raise many kinds
            raise ValueError(f"restore: the checkpoint at {directory} is damaged: its metadata "
                             f"cannot be read ({_summary(e)})") from e
        if item is None:  # orbax logs why and returns nothing
            raise ValueError(f"restore: the checkpoint at {directory} is damaged: its tree's "
                             f"metadata (_METADATA, _sharding, manifest.ocdbt, d/) cannot be "
                             f"read")
        saved = _leaves_by_path(item.tree)
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
        try:
            return checkpointer.restore(directory, like)
        except Exception as e:
            raise ValueError(f"restore: the checkpoint at {directory} is damaged: its arrays "
                             f"cannot be read ({_summary(e)})") from e
