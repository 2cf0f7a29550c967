"""Recurrent cells as NamedTuples of pure functions.

A cell splits one time step into two halves so that the expensive input half can be
computed for a whole sequence with a single matmul outside the scan:

    xp = cell.project(params, x)             # (..., gates * hidden), all steps at once
    carry, y_t = cell.step(params, carry, xp[t])   # the scan body, one step

Weights use torch's layout and gate order, so a state dict maps onto them one to one:
``w_ih`` is ``(gates * hidden, input)``, ``w_hh`` is ``(gates * hidden, hidden)``, and the
biases ``b_ih``, ``b_hh`` are ``(gates * hidden,)`` (or ``None`` without bias).

=====  =====  ======================================================================
cell   gates  step
=====  =====  ======================================================================
LSTM   i f g o  ``c' = f*c + i*g``, ``h' = o*tanh(c')``
GRU    r z n    ``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))``, ``h' = (1-z)*n + z*h``
RNN    --       ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`` (or relu)
=====  =====  ======================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Initializer = Callable[[Array, tuple, Any], Array]


class LSTMParams(NamedTuple):
    """LSTM weights, gate order i, f, g, o: ``w_ih (4H, I)``, ``w_hh (4H, H)``, biases ``(4H,)``."""

    w_ih: Array
    w_hh: Array
    b_ih: Array | None
    b_hh: Array | None


class GRUParams(NamedTuple):
    """GRU weights, gate order r, z, n: ``w_ih (3H, I)``, ``w_hh (3H, H)``, biases ``(3H,)``."""

    w_ih: Array
    w_hh: Array
    b_ih: Array | None
    b_hh: Array | None


class RNNParams(NamedTuple):
    """Plain RNN weights: ``w_ih (H, I)``, ``w_hh (H, H)``, biases ``(H,)``."""

    w_ih: Array
    w_hh: Array
    b_ih: Array | None
    b_hh: Array | None


class Cell(NamedTuple):
    """A recurrent cell: four pure functions that close over the cell's settings.

    Attributes:
      init: ``init(key, input_size) -> params``.
      project: ``project(params, x) -> xp``; ``x (..., input)`` to ``xp (..., gates*hidden)``.
      step: ``step(params, carry, xp_t) -> (carry, y_t)``; ``xp_t (batch, gates*hidden)``,
        ``y_t (batch, hidden)``.
      initial_carry: ``initial_carry(batch_shape, dtype) -> carry`` of zeros; the carry is
        ``(h, c)`` for the LSTM and ``h`` for the GRU and RNN, each ``(*batch_shape, hidden)``.
      activations: ``activations(params, carry, xp_t) -> dict`` of every gate after its
        nonlinearity and the new state, each ``(batch, hidden)``: ``i, f, g, o, c, h`` for
        the LSTM, ``r, z, n, h`` for the GRU, ``h`` for the RNN. ``step`` is built from it.
      params_type: the NamedTuple class of this cell's params.
      gates: how many gate blocks of ``hidden`` rows ``w_ih`` has (4, 3 or 1).
      recurrence: ``recurrence(params, carry, xp_t, matmul, act) -> dict``:
        ``activations`` with its recurrent matmuls and its sigmoids and tanhs left to the
        caller: every product with ``w_hh`` is ``matmul(u, rows)`` for
        ``u @ params.w_hh[rows].T`` (``u (batch, hidden)``, ``rows`` a slice of gate rows),
        and every squashing is ``act(x, tanh_mask)``: ``tanh`` where ``tanh_mask`` (a bool
        or a ``(width,)`` mask) else ``sigmoid``. The fast path (:mod:`recurrent.vjp`)
        hooks both to record what its backward pass needs. ``None`` for cells that only
        have ``step``.
      carry_keys: the keys of ``recurrence``'s dict that make the new carry, in order.
      dtype: the matmuls' dtype (``None``: the params' dtype).
      log_coeffs: ``log_coeffs(xp) -> (log_a, log_b)``, each ``(..., hidden)``, for cells
        whose step is ``h' = a * h + b`` with ``a, b > 0`` read off the input alone
        (minGRU, minLSTM): :func:`recurrent.minimal.parallel_unroll` then runs a whole
        sequence in parallel. ``None`` for the others.
    """

    init: Callable[[Array, int], Any]
    project: Callable[[Any, Array], Array]
    step: Callable[[Any, Any, Array], tuple[Any, Array]]
    initial_carry: Callable[[tuple, Any], Any]
    activations: Callable[[Any, Any, Array], dict]
    params_type: type
    gates: int
    recurrence: Callable[[Any, Any, Array, Callable], dict] | None = None
    carry_keys: tuple = ("h",)
    dtype: Any = None
    log_coeffs: Callable[[Array], tuple[Array, Array]] | None = None


def uniform_init(scale: float) -> Initializer:
    """torch's default: every weight and bias drawn from ``U(-scale, scale)``."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


def _matmul(x: Array, w: Array, dtype) -> Array:
    """``x @ w.T`` in ``dtype`` with float32 accumulation: ``(..., in) -> (..., out)``."""
    if dtype is None:
        return jnp.einsum("...i,oi->...o", x, w)
    out = jnp.einsum("...i,oi->...o", x.astype(dtype), w.astype(dtype),
                     preferred_element_type=jnp.float32)
    return out


def _make_init(params_type, gates, hidden_size, bias, dtype, kernel_init, recurrent_init,
               bias_init):
    """Builds ``init(key, input_size)`` for a cell with ``gates`` blocks of ``hidden_size`` rows."""
    default = uniform_init(1.0 / hidden_size**0.5)
    kernel_init = kernel_init or default
    recurrent_init = recurrent_init or default
    bias_init = bias_init or default
    rows = gates * hidden_size

    def init(key, input_size):
        k_ih, k_hh, k_bih, k_bhh = jax.random.split(key, 4)
        w_ih = kernel_init(k_ih, (rows, input_size), dtype)
        w_hh = recurrent_init(k_hh, (rows, hidden_size), dtype)
        if not bias:
            return params_type(w_ih, w_hh, None, None)
        b_ih = bias_init(k_bih, (rows,), dtype)
        b_hh = bias_init(k_bhh, (rows,), dtype)
        return params_type(w_ih, w_hh, b_ih, b_hh)

    return init


def _project(params, x, dtype, fold_b_hh):
    """The input half of the gates for every leading index: ``(..., I) -> (..., G*H)``."""
    xp = _matmul(x, params.w_ih, dtype)
    if params.b_ih is not None:
        xp = xp + params.b_ih
    if fold_b_hh and params.b_hh is not None:
        xp = xp + params.b_hh
    return xp


ALL_ROWS = slice(None)


def _plain_matmul(params, dtype):
    """The ``matmul(u, rows)`` of ``recurrence`` as a plain product: ``u @ w_hh[rows].T``."""
    return lambda u, rows: _matmul(u, params.w_hh[rows], dtype)


def sigmoid_tanh(x, tanh_mask):
    """``tanh`` where ``tanh_mask`` else ``sigmoid``, on the full gate width at once.

    ``sigmoid(x) = (1 + tanh(x / 2)) / 2``, so every column takes one ``tanh``: XLA emits one
    vectorised elementwise loop over ``(batch, G*H)`` in place of one loop per gate slice
    (on CPU the per-slice form costs more than the recurrent matmul; see benchmarks/).
    """
    t = jnp.tanh(x * jnp.where(tanh_mask, 1.0, 0.5).astype(x.dtype))
    return jnp.where(tanh_mask, t, 0.5 * t + 0.5)


def _gate_mask(gates, hidden_size, tanh_gates):
    """``(gates * H,)`` booleans, true on the columns of the blocks in ``tanh_gates``."""
    block = jnp.arange(gates * hidden_size) // hidden_size  # (G*H,) gate index of a column
    return jnp.isin(block, jnp.asarray(tanh_gates))


def _cell_from(recurrence, carry_keys, dtype):
    """``activations`` and ``step`` from ``recurrence`` with the plain recurrent matmul."""

    def activations(params, carry, xp_t):
        return recurrence(params, carry, xp_t, _plain_matmul(params, dtype), sigmoid_tanh)

    def step(params, carry, xp_t):
        a = activations(params, carry, xp_t)
        new = tuple(a[k] for k in carry_keys)
        return (new if len(new) > 1 else new[0]), a["h"]

    return activations, step


def _zeros_carry(hidden_size, pair):
    def initial_carry(batch_shape, dtype=jnp.float32):
        h = jnp.zeros((*batch_shape, hidden_size), dtype)
        return (h, h) if pair else h

    return initial_carry


def lstm_cell(hidden_size: int, *, bias: bool = True, forget_bias: float = 0.0,
              kernel_init: Initializer | None = None, recurrent_init: Initializer | None = None,
              bias_init: Initializer | None = None, param_dtype=jnp.float32,
              dtype=None) -> Cell:
    """The LSTM cell of ``torch.nn.LSTM`` (gate order i, f, g, o)::

        i, f, g, o = split(W_ih x + b_ih + W_hh h + b_hh, 4)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(c')

    Args:
      hidden_size: ``H``.
      bias: whether the cell has ``b_ih`` and ``b_hh``.
      forget_bias: added to the forget-gate block of ``b_ih`` at init (1.0 is a common choice).
      kernel_init, recurrent_init, bias_init: ``init(key, shape, dtype)`` for ``w_ih``,
        ``w_hh`` and both biases; default torch's ``U(-1/sqrt(H), 1/sqrt(H))``.
      param_dtype: dtype of the params made by ``init``.
      dtype: dtype of the matmuls (e.g. ``jnp.bfloat16``; they accumulate in float32 and
        the gates and carry stay float32); ``None`` computes in the params' dtype.
    """
    H = hidden_size
    base_init = _make_init(LSTMParams, 4, H, bias, param_dtype, kernel_init, recurrent_init,
                           bias_init)

    def init(key, input_size):
        params = base_init(key, input_size)
        if bias and forget_bias:
            params = params._replace(b_ih=params.b_ih.at[H:2 * H].add(forget_bias))
        return params

    def project(params, x):
        return _project(params, x, dtype, fold_b_hh=True)

    def recurrence(params, carry, xp_t, matmul, act):
        h, c = carry
        gates = act(xp_t + matmul(h, ALL_ROWS), _gate_mask(4, H, (2,)))  # (batch, 4H)
        i, f, g, o = jnp.split(gates, 4, axis=-1)  # 4 x (batch, H)
        c = f * c + i * g
        return dict(i=i, f=f, g=g, o=o, c=c, h=o * act(c, True))

    activations, step = _cell_from(recurrence, ("h", "c"), dtype)
    return Cell(init, project, step, _zeros_carry(H, pair=True), activations, LSTMParams, 4,
                recurrence, ("h", "c"), dtype)


def gru_cell(hidden_size: int, *, reset_after: bool = True, bias: bool = True,
             kernel_init: Initializer | None = None, recurrent_init: Initializer | None = None,
             bias_init: Initializer | None = None, param_dtype=jnp.float32,
             dtype=None) -> Cell:
    """The GRU cell (gate order r, z, n). With ``reset_after=True`` (torch, cuDNN)::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    and with ``reset_after=False`` (Cho et al. 2014)
    ``n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)``.
    The params have the same shapes in both forms. Arguments as in :func:`lstm_cell`.
    """
    H = hidden_size
    init = _make_init(GRUParams, 3, H, bias, param_dtype, kernel_init, recurrent_init,
                      bias_init)

    def project(params, x):
        xp = _project(params, x, dtype, fold_b_hh=not reset_after)
        if reset_after and params.b_hh is not None:  # b_hn stays inside r * (...)
            xp = xp + jnp.asarray(params.b_hh).at[2 * H:].set(0)
        return xp

    def recurrence(params, carry, xp_t, matmul, act):
        h = carry
        x_rz, x_n = xp_t[..., :2 * H], xp_t[..., 2 * H:]  # (batch, 2H), (batch, H)
        if reset_after:
            hp = matmul(h, ALL_ROWS)  # (batch, 3H)
            h_rz, h_n = hp[..., :2 * H], hp[..., 2 * H:]  # (batch, 2H), (batch, H)
            if params.b_hh is not None:
                h_n = h_n + params.b_hh[2 * H:]
            r, z = jnp.split(act(x_rz + h_rz, False), 2, axis=-1)  # 2 x (batch, H)
            n = act(x_n + r * h_n, True)
        else:
            rz = act(x_rz + matmul(h, slice(0, 2 * H)), False)  # (batch, 2H)
            r, z = jnp.split(rz, 2, axis=-1)  # 2 x (batch, H)
            n = act(x_n + matmul(r * h, slice(2 * H, 3 * H)), True)
        return dict(r=r, z=z, n=n, h=(1 - z) * n + z * h)

    activations, step = _cell_from(recurrence, ("h",), dtype)
    return Cell(init, project, step, _zeros_carry(H, pair=False), activations, GRUParams, 3,
                recurrence, ("h",), dtype)


def rnn_cell(hidden_size: int, *, nonlinearity: str = "tanh", bias: bool = True,
             kernel_init: Initializer | None = None, recurrent_init: Initializer | None = None,
             bias_init: Initializer | None = None, param_dtype=jnp.float32,
             dtype=None) -> Cell:
    """The Elman RNN cell of ``torch.nn.RNN``: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``.

    ``nonlinearity`` is ``"tanh"`` or ``"relu"``; other arguments as in :func:`lstm_cell`.
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    init = _make_init(RNNParams, 1, hidden_size, bias, param_dtype, kernel_init,
                      recurrent_init, bias_init)

    def project(params, x):
        return _project(params, x, dtype, fold_b_hh=True)

    def recurrence(params, carry, xp_t, matmul, act):
        pre = xp_t + matmul(carry, ALL_ROWS)  # (batch, H)
        return dict(h=act(pre, True) if nonlinearity == "tanh" else jax.nn.relu(pre))

    activations, step = _cell_from(recurrence, ("h",), dtype)
    return Cell(init, project, step, _zeros_carry(hidden_size, pair=False), activations,
                RNNParams, 1, recurrence, ("h",), dtype)
