"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): gates that read only
the input, so a whole sequence is the linear recurrence ``h_t = a_t * h_{t-1} + b_t`` with
``a_t, b_t > 0`` computed from ``x_t`` alone, evaluated in parallel by
``jax.lax.associative_scan`` in log space.

=======  ==========================================================================
cell     step (``g(v) = v + 0.5`` for ``v >= 0``, ``sigmoid(v)`` below: positive)
=======  ==========================================================================
minGRU   ``z = sigmoid(W_z x + b_z)``; ``h' = (1 - z) * h + z * g(W_h x + b_h)``
minLSTM  ``f, i = sigmoid(W_f x + b_f), sigmoid(W_i x + b_i)``;
         ``h' = f/(f+i) * h + i/(f+i) * g(W_h x + b_h)``
=======  ==========================================================================

Both are :class:`recurrent.cells.Cell` s with ``log_coeffs`` (``step`` runs them one step
at a time, e.g. for generation); :func:`parallel_unroll` runs a whole sequence at once and
equals :func:`recurrent.unroll` over ``step``. The layers are :func:`mingru` and
:func:`minlstm` in :mod:`recurrent.layers`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from recurrent import checks
from recurrent.cells import Cell, cell_from, project_input, uniform_init, zeros_carry
from recurrent.framing import reverse_index
from recurrent.unroll import project_time_major, scan_unroll

_LOG_ZERO = -1e30  # log of 0 that stays finite under addition, so gradients stay finite


class MinGRUParams(NamedTuple):
    """minGRU weights, blocks z, h: ``w_ih (2H, I)``, ``b_ih (2H,)`` (or ``None``)."""

    w_ih: jax.Array
    b_ih: jax.Array | None


class MinLSTMParams(NamedTuple):
    """minLSTM weights, blocks f, i, h: ``w_ih (3H, I)``, ``b_ih (3H,)`` (or ``None``)."""

    w_ih: jax.Array
    b_ih: jax.Array | None


def _g(v):
    """The positive activation of the paper: ``v + 0.5`` for ``v >= 0``, ``sigmoid(v)`` below."""
    return jnp.where(v >= 0, v + 0.5, jax.nn.sigmoid(v))


def _log_g(v):
    """``log(g(v))`` without overflow."""
    return jnp.where(v >= 0, jnp.log(jnp.maximum(v, 0) + 0.5), -jax.nn.softplus(-v))


def _mingru_log_coeffs(xp):
    """``(log a, log b)`` of ``h' = a*h + b`` from ``xp (..., 2H)``; each ``(..., H)``."""
    k_z, k_h = jnp.split(xp, 2, axis=-1)
    return -jax.nn.softplus(k_z), -jax.nn.softplus(-k_z) + _log_g(k_h)


def _minlstm_log_coeffs(xp):
    """``(log a, log b)`` from ``xp (..., 3H)``: ``a = f/(f+i)``, ``b = i/(f+i) * g(h~)``."""
    k_f, k_i, k_h = jnp.split(xp, 3, axis=-1)
    diff = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)
    return -jax.nn.softplus(diff), -jax.nn.softplus(-diff) + _log_g(k_h)


def _minimal_cell(params_type, gates, log_coeffs, recurrence, hidden_size, bias,
                  kernel_init, bias_init, param_dtype, dtype) -> Cell:
    fn = {2: "mingru_cell", 3: "minlstm_cell"}[gates]
    checks.check_size(fn, "hidden_size", hidden_size)
    checks.check_flag(fn, "bias", bias)
    checks.check_dtype(fn, dtype)
    default = uniform_init(1.0 / hidden_size**0.5)
    kernel_init, bias_init = kernel_init or default, bias_init or default

    def init(key, input_size):
        k_w, k_b = jax.random.split(key)
        w_ih = kernel_init(k_w, (gates * hidden_size, input_size), param_dtype)
        b_ih = bias_init(k_b, (gates * hidden_size,), param_dtype) if bias else None
        return params_type(w_ih, b_ih)

    def project(params, x):
        return project_input(params, x, dtype, fold_b_hh=False)  # (..., gates*H)

    initial_carry = zeros_carry(hidden_size, pair=False)
    activations, step = cell_from(recurrence, ("h",), dtype, params_type, initial_carry)
    return Cell(init=init, project=project, step=step, initial_carry=initial_carry,
                activations=activations, params_type=params_type, gates=gates, dtype=dtype,
                log_coeffs=log_coeffs)


# The recurrences below have no recurrent weights: ``matmul`` and ``act`` go unused.
def _mingru_recurrence(params, h, xp_t, matmul, act):
    k_z, k_h = jnp.split(xp_t, 2, axis=-1)
    z, h_tilde = jax.nn.sigmoid(k_z), _g(k_h)
    return dict(z=z, h_tilde=h_tilde, h=(1 - z) * h + z * h_tilde)


def _minlstm_recurrence(params, h, xp_t, matmul, act):
    k_f, k_i, k_h = jnp.split(xp_t, 3, axis=-1)
    f, i, h_tilde = jax.nn.sigmoid(k_f), jax.nn.sigmoid(k_i), _g(k_h)
    f, i = f / (f + i), i / (f + i)
    return dict(f=f, i=i, h_tilde=h_tilde, h=f * h + i * h_tilde)


def mingru_cell(hidden_size: int, *, bias: bool = True, kernel_init=None, bias_init=None,
                param_dtype=jnp.float32, dtype=None) -> Cell:
    """The minGRU cell: ``z = sigmoid(W_z x + b_z)``, ``h' = (1 - z) h + z g(W_h x + b_h)``.

    Params: ``MinGRUParams(w_ih (2H, I), b_ih (2H,))``, torch-style uniform init by default.
    ``activations`` gives ``z, h_tilde, h``. Other arguments as in
    :func:`recurrent.cells.lstm_cell`.
    """
    return _minimal_cell(MinGRUParams, 2, _mingru_log_coeffs, _mingru_recurrence,
                         hidden_size, bias, kernel_init, bias_init, param_dtype, dtype)


def minlstm_cell(hidden_size: int, *, bias: bool = True, kernel_init=None, bias_init=None,
                 param_dtype=jnp.float32, dtype=None) -> Cell:
    """The minLSTM cell: ``f, i`` normalised to sum to one, ``h' = f h + i g(W_h x + b_h)``.

    Params: ``MinLSTMParams(w_ih (3H, I), b_ih (3H,))``. ``activations`` gives the normalised
    ``f, i``, ``h_tilde`` and ``h``.
    """
    return _minimal_cell(MinLSTMParams, 3, _minlstm_log_coeffs, _minlstm_recurrence,
                         hidden_size, bias, kernel_init, bias_init, param_dtype, dtype)


def _combine(earlier, later):
    """Composes two affine maps in log space: ``h -> a2 (a1 h + b1) + b2``."""
    log_a1, log_b1 = earlier
    log_a2, log_b2 = later
    return log_a1 + log_a2, jnp.logaddexp(log_b1 + log_a2, log_b2)


def parallel_unroll(cell: Cell, params, xs, carry=None, *, seq_lengths=None,
                    reverse: bool = False, time_major: bool = False, unroll: int = 1):
    """Runs a minGRU/minLSTM over time in parallel; same contract as :func:`recurrent.unroll`.

    ``h_t = a_t h_{t-1} + b_t`` with ``a_t, b_t > 0`` from the input alone, so
    ``h_t = A_t h_0 + B_t`` where ``(log A_t, log B_t)`` is a prefix of log-space affine
    maps, computed with ``jax.lax.associative_scan`` in ``O(log T)`` depth. The initial
    state may have any sign (it is not taken to log space). ``unroll`` is accepted for a
    common signature and has no effect.

    Args:
      cell: a cell with ``log_coeffs``: :func:`mingru_cell` or :func:`minlstm_cell`.
      params: its params.
      xs: ``(batch, time, input)``, or ``(time, batch, input)`` with ``time_major``.
      carry: ``(batch, hidden)`` initial state; zeros when ``None``.
      seq_lengths, reverse, time_major: as in :func:`recurrent.unroll`.

    Returns:
      ``(h_n, ys)``: ``(batch, hidden)`` and ``(batch, time, hidden)`` (time first with
      ``time_major``), zero past each sequence's length.
    """
    del unroll
    if cell.log_coeffs is None:
        raise ValueError("parallel_unroll: the cell has no log_coeffs (its step is not a "
                         "linear recurrence); use recurrent.unroll or deer_unroll")
    checks.check_unroll("parallel_unroll", cell, params, xs, carry, seq_lengths, time_major)
    time, batch = xs.shape[:2] if time_major else xs.shape[1::-1]
    if not time or not batch:  # nothing to scan: the sequential scan's empty result
        return scan_unroll(cell, params, xs, carry, seq_lengths=seq_lengths, reverse=reverse,
                           time_major=time_major)
    if reverse and seq_lengths is None:
        seq_lengths = jnp.full((batch,), time, jnp.int32)
    xp, carry, lengths, valid = project_time_major(cell, params, xs, carry, time_major,
                                                   seq_lengths)
    if seq_lengths is not None:
        valid = valid[:, :, None]  # (time, batch, 1)
        if reverse:
            idx = reverse_index(lengths, time)  # (time, batch)
            xp = jnp.take_along_axis(xp, idx[:, :, None], axis=0)
    log_a, log_b = cell.log_coeffs(xp)  # each (time, batch, H)
    if seq_lengths is not None:
        log_a = jnp.where(valid, log_a, 0.0)  # past the length: h_t = 1 * h_{t-1} + 0
        log_b = jnp.where(valid, log_b, _LOG_ZERO)
    log_A, log_B = jax.lax.associative_scan(_combine, (log_a, log_b), axis=0)
    ys = jnp.exp(log_A) * carry + jnp.exp(log_B)  # (time, batch, H)
    h_n = ys[-1]
    if seq_lengths is not None:
        ys = jnp.where(valid, ys, 0)
        if reverse:
            ys = jnp.take_along_axis(ys, idx[:, :, None], axis=0)
    if not time_major:
        ys = jnp.swapaxes(ys, 0, 1)  # (time, batch, H) -> (batch, time, H)
    return h_n, ys

__all__ = ["MinGRUParams", "MinLSTMParams", "mingru_cell", "minlstm_cell", "parallel_unroll"]
