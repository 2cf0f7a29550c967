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
    """

    init: Callable[[Array, int], Any]
    project: Callable[[Any, Array], Array]
    step: Callable[[Any, Any, Array], tuple[Any, Array]]
    initial_carry: Callable[[tuple, Any], Any]
    activations: Callable[[Any, Any, Array], dict]
    params_type: type
    gates: int


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


def _recurrent(params, h, dtype):
    """``h @ w_hh.T``: ``(batch, H) -> (batch, G*H)``."""
    return _matmul(h, params.w_hh, dtype)


def _step_from(activations, carry_keys):
    """``step`` from ``activations``: the new carry is ``carry_keys`` of it, the output ``h``."""

    def step(params, carry, xp_t):
        a = activations(params, carry, xp_t)
        new = tuple(a[k] for k in carry_keys)
        return (new if len(new) > 1 else new[0]), a["h"]

    return step


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

    def activations(params, carry, xp_t):
        h, c = carry
        gates = xp_t + _recurrent(params, h, dtype)  # (batch, 4H)
        i, f, g, o = jnp.split(gates, 4, axis=-1)  # 4 x (batch, H)
        i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        c = f * c + i * g
        return dict(i=i, f=f, g=g, o=o, c=c, h=o * jnp.tanh(c))

    return Cell(init, project, _step_from(activations, ("h", "c")),
                _zeros_carry(H, pair=True), activations, LSTMParams, 4)


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

    def activations(params, carry, xp_t):
        h = carry
        x_rz, x_n = xp_t[..., :2 * H], xp_t[..., 2 * H:]  # (batch, 2H), (batch, H)
        if reset_after:
            hp = _recurrent(params, h, dtype)  # (batch, 3H)
            h_rz, h_n = hp[..., :2 * H], hp[..., 2 * H:]  # (batch, 2H), (batch, H)
            if params.b_hh is not None:
                h_n = h_n + params.b_hh[2 * H:]
            r, z = jnp.split(jax.nn.sigmoid(x_rz + h_rz), 2, axis=-1)
            n = jnp.tanh(x_n + r * h_n)
        else:
            w_rz, w_n = params.w_hh[:2 * H], params.w_hh[2 * H:]  # (2H, H), (H, H)
            r, z = jnp.split(jax.nn.sigmoid(x_rz + _matmul(h, w_rz, dtype)), 2, axis=-1)
            n = jnp.tanh(x_n + _matmul(r * h, w_n, dtype))
        return dict(r=r, z=z, n=n, h=(1 - z) * n + z * h)

    return Cell(init, project, _step_from(activations, ("h",)), _zeros_carry(H, pair=False),
                activations, GRUParams, 3)


def rnn_cell(hidden_size: int, *, nonlinearity: str = "tanh", bias: bool = True,
             kernel_init: Initializer | None = None, recurrent_init: Initializer | None = None,
             bias_init: Initializer | None = None, param_dtype=jnp.float32,
             dtype=None) -> Cell:
    """The Elman RNN cell of ``torch.nn.RNN``: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``.

    ``nonlinearity`` is ``"tanh"`` or ``"relu"``; other arguments as in :func:`lstm_cell`.
    """
    acts = {"tanh": jnp.tanh, "relu": jax.nn.relu}
    if nonlinearity not in acts:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    act = acts[nonlinearity]
    init = _make_init(RNNParams, 1, hidden_size, bias, param_dtype, kernel_init,
                      recurrent_init, bias_init)

    def project(params, x):
        return _project(params, x, dtype, fold_b_hh=True)

    def activations(params, carry, xp_t):
        return dict(h=act(xp_t + _recurrent(params, carry, dtype)))

    return Cell(init, project, _step_from(activations, ("h",)),
                _zeros_carry(hidden_size, pair=False), activations, RNNParams, 1)
