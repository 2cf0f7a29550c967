"""One LSTM or GRU layer through the persistent kernels, with its VJP.

:func:`run_layer` has :func:`recurrent.fast.run_layer`'s contract: the same inputs and
outputs, computed by :mod:`recurrent.kernels.persistent` instead of an XLA scan. The input
projection of every step (both directions in one batched matmul) stays in XLA; the
kernels run the recurrence; the weight gradient is one matmul over all steps.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from recurrent.cells import Cell
from recurrent.fast import directions_in, directions_out
from recurrent.framing import clip_lengths
from recurrent.kernels import persistent
from recurrent.kinds import KINDS

_HIGHEST = ("highest", "float32")  # jax_default_matmul_precision values that rule out TF32


class Config(NamedTuple):
    """What a kernel launch is compiled for (hashable: the custom VJP's static argument)."""

    kind: str
    plan: persistent.Plan
    dtype: object  # the matmuls' operand dtype, or None: float32 at ``precision``
    precision: jax.lax.Precision
    interpret: bool


def _precision():
    """TF32 unless ``jax_default_matmul_precision`` asks for full float32, as XLA's dots."""
    chosen = jax.config.jax_default_matmul_precision
    highest = chosen is not None and str(chosen).lower() in _HIGHEST
    return jax.lax.Precision.HIGHEST if highest else jax.lax.Precision.DEFAULT


# Shared memory a block may opt into, KiB, by CUDA compute capability (CUDA programming
# guide); other devices: the least of any
_SHARED_KIB = {"8.0": 163, "8.6": 99, "8.7": 163, "8.9": 99, "9.0": 227,
               "10.0": 227, "10.3": 227, "12.0": 99}
_STAGING = 32 << 10  # shared memory the kernels take beside the weights (32 KiB on an H100)


def _capability(device) -> str:
    """``device``'s CUDA compute capability, e.g. ``"9.0"``; ``""`` for other devices."""
    return str(getattr(device, "compute_capability", ""))


def shared_bytes(device) -> int:
    """Bytes of ``w_hh`` a block of the kernels may hold in ``device``'s shared memory."""
    return (_SHARED_KIB.get(_capability(device), 64) << 10) - _STAGING


def configure(kind: str | None, impl: str, layer, batch: int, dtype,
              remat_chunk: int | None = None) -> Config | None:
    """The kernel configuration of one layer, or ``None`` for the XLA path.

    ``impl="pallas"`` always runs the kernel (in interpret mode off GPU); ``ValueError``
    for cells other than the plain LSTM and the GRU in torch's form (``kind``) and for
    sizes no tiling fits. ``impl="auto"`` runs it where it was faster than the XLA path on
    an H100 and an H200 (benchmarks/results/gpu.md): for those cells, in a process with one
    device, a CUDA GPU, when no ``remat_chunk`` is asked for and the plan holds a block's
    weights in shared memory and its ``h`` in registers (``Plan.loads_first``; where it
    does not, as at B256 H1024 in bfloat16, the kernel took 1.6 times the XLA path's time
    to train on an H200), or where the plan computes its matmuls transposed
    (``Plan.transposed``, untimed and off by default: a benchmark that turns it on times
    the kernel there) on tiles of at most 32 rows (``h`` then multiplied in chunks, as in
    the 2 x 2 stacks at H 512; at 128 rows, as at B256 H1024, the compiled kernel spills
    hundreds of bytes a thread a step). Any other ``impl``: ``None``.
    """
    if impl == "pallas":
        if kind is None:
            raise ValueError("impl='pallas': the kernels run the LSTM and the GRU with "
                             "reset_after=True only")
        p = layer[0]
        if not _plain(kind, p):
            plain = jax.eval_shape(lambda: KINDS[kind].cell(1).init(jax.random.key(0), 1))
            options = [f for f in p._fields  # the fields of the cell options
                       if getattr(p, f) is not None and getattr(plain, f) is None]
            raise ValueError(
                f"impl='pallas' runs only the plain {kind.upper()} with float32 or bfloat16 "
                f"params; got {type(p).__name__} of {p.w_ih.dtype}"
                + (f" with {', '.join(options)}" if options else ""))
        config = _config(kind, layer, batch, dtype)
        if config is None:
            raise ValueError(
                f"impl='pallas': no kernel tiling fits hidden_size={p.w_hh.shape[-1]}, "
                f"batch={batch}, {len(layer)} direction(s) (hidden_size must be a multiple "
                f"of {persistent.MIN_BLOCK}, and the blocks must fit the GPU at once)")
        return config
    device = jax.devices()[0]
    if (impl != "auto" or kind is None or remat_chunk is not None
            or jax.device_count() > 1 or device.platform != "gpu"
            or _capability(device) not in _SHARED_KIB
            or not _plain(kind, layer[0])):
        return None
    config = _config(kind, layer, batch, dtype)
    if config is None:
        return None
    tiling = config.plan
    return config if tiling.loads_first or (tiling.transposed and tiling.bb <= 32) else None


def _plain(kind, p) -> bool:
    """Whether ``p`` is the plain cell of ``kind``, float32 or bfloat16, no cell options."""
    return (type(p) is KINDS[kind].params_type and p.w_ih.dtype in (jnp.float32, jnp.bfloat16)
            and not any(KINDS[kind].param_options(p).values()))


def _config(kind, layer, batch, dtype) -> Config | None:
    """The launch configuration on this process' first device, ``None`` where no tiling
    fits."""
    device = jax.devices()[0]
    on_gpu = device.platform == "gpu"
    itemsize = jnp.dtype(jnp.float32 if dtype is None else dtype).itemsize
    tiling = persistent.plan(
        kind, len(layer), batch, layer[0].w_hh.shape[-1],
        device.core_count if on_gpu else 1 << 30, itemsize=itemsize,
        shared_bytes=shared_bytes(device) if on_gpu else persistent.SHARED_BYTES)
    if tiling is None:
        return None
    return Config(kind, tiling, None if dtype is None else jnp.dtype(dtype), _precision(),
                  not on_gpu)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(config: Config, xp, w_hh, b_hn, h0, c0, lengths):
    """``(hs (T, D, B, H), c_n (D, B, H))``: the state after every step, and the LSTM's last
    cell state (zeros for the GRU); NaN if a grid barrier timed out."""
    return _forward(config, xp, w_hh, b_hn, h0, c0, lengths, record=False)[0]


def _forward(config, xp, w_hh, b_hn, h0, c0, lengths, record=True):
    """The recurrence, and the residuals of its VJP; ``record=False`` (no VJP) skips
    writing the gates and the cell states of every step."""
    w_t = jnp.swapaxes(_cast(w_hh, config), 1, 2)  # (D, G*H, H) -> (D, H, G*H)
    hbuf, cbuf, acts, sync = _launches(functools.partial(
        persistent.forward, config.kind, config.plan, dtype=config.dtype,
        precision=config.precision, interpret=config.interpret, record=record),
        lengths, xp, w_t, b_hn, h0, c0)
    return _poisoned(sync, hbuf[1:], cbuf[-1]), (w_hh, acts, hbuf, cbuf, lengths)


def _poisoned(sync, *arrays):
    """``arrays``, or NaN everywhere if a grid barrier of the launch gave up waiting
    (``sync[:, 0]``, see :func:`persistent.forward`): its results are then wrong, and NaN
    says so where they are used."""
    failed = jnp.any(sync[:, 0] > 0)
    return tuple(jnp.where(failed, jnp.nan, a) for a in arrays)


def _launches(kernel, *args):
    """``kernel(*args)``; under ``vmap``, one launch per element (``lax.map``). Pallas would
    batch a launch by adding a grid dimension, and then its blocks would not all be
    resident at once, as the grid barrier needs."""
    return jax.custom_batching.sequential_vmap(kernel)(*args)


def _cast(w, config):
    return w if config.dtype is None else w.astype(config.dtype)


def _backward(config, residuals, cotangents):
    w_hh, acts, hbuf, cbuf, lengths = residuals
    d_hs, d_cn = cotangents
    dm, dxn, d_pass, dc0, sync = _launches(functools.partial(
        persistent.backward, config.kind, config.plan, dtype=config.dtype,
        precision=config.precision, interpret=config.interpret),
        lengths, _cast(w_hh, config), acts, hbuf, cbuf, d_hs, d_cn)
    hidden = hbuf.shape[-1]
    precision = jax.lax.Precision.HIGHEST if config.precision == jax.lax.Precision.HIGHEST \
        else None
    d_w = jnp.einsum("tdbg,tdbh->dgh", dm, hbuf[:-1], precision=precision)  # one matmul
    dh0 = d_pass + jnp.einsum("dbg,dgh->dbh", dm[0], w_hh, precision=precision)
    d_w, dh0, dc0 = _poisoned(sync, d_w, dh0, dc0)  # the small ones: the step goes NaN
    if config.kind == "gru":
        d_xp = jnp.concatenate([dm[..., :2 * hidden], dxn], axis=-1)
        d_bhn = jnp.sum(dm[..., 2 * hidden:], axis=(0, 2))  # (D, H)
    else:
        d_xp, d_bhn = dm, jnp.zeros((w_hh.shape[0], hidden), jnp.float32)
    return d_xp, d_w.astype(w_hh.dtype), d_bhn, dh0, dc0, None


_recurrence.defvjp(_forward, _backward)


def run_layer(cell: Cell, config: Config, layer, xs, carry, seq_lengths=None):
    """One layer of ``D`` directions over time-major ``xs (time, batch, input)`` from
    ``carry`` (leaves ``(D, batch, H)``); returns ``(ys (time, batch, D*H), carry)`` as
    :func:`recurrent.fast.run_layer`."""
    num_dirs = len(layer)
    time, batch = xs.shape[:2]
    hidden = layer[0].w_hh.shape[-1]
    stacked = jax.tree.map(lambda *p: jnp.stack(p), *layer)  # leaves (D, ...)
    lengths = (jnp.full((batch,), time, jnp.int32) if seq_lengths is None
               else clip_lengths(seq_lengths, time))
    order, reorder, valid = directions_in(xs, seq_lengths, num_dirs)  # (T, D, batch, I)
    pad = config.plan.batch - batch  # padded rows have length 0: they never change
    order = jnp.pad(order, ((0, 0), (0, 0), (0, pad), (0, 0)))  # (T, D, Bp, I)
    xp = jax.vmap(cell.project, in_axes=(0, 1), out_axes=1)(stacked, order)  # (T, D, Bp, G*H)
    h0, c0 = carry if config.kind == "lstm" else (carry, jnp.zeros_like(carry))
    h0, c0 = (jnp.pad(s.astype(jnp.float32), ((0, 0), (0, pad), (0, 0))) for s in (h0, c0))
    b_hn = (jnp.zeros((num_dirs, hidden), jnp.float32)
            if config.kind == "lstm" or stacked.b_hh is None else stacked.b_hh[:, 2 * hidden:])
    hs, c_n = _recurrence(config, xp.astype(jnp.float32), stacked.w_hh,
                          b_hn.astype(jnp.float32), h0, c0, jnp.pad(lengths, (0, pad)))
    hs = hs[:, :, :batch]  # (T, D, batch, H)
    h_n = hs[-1]  # rows past their length kept their state: this is it at the last valid step
    if valid is not None:  # (T, batch), from directions_in: zero past each length
        hs = jnp.where(valid[:, None, :, None], hs, 0)
    ys = directions_out(hs, reorder)
    return ys, ((h_n, c_n[:, :batch]) if config.kind == "lstm" else h_n)
