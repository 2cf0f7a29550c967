"""Recurrent cells as NamedTuples of pure functions.

A cell splits one time step into two halves so that the expensive input half can be
computed for a whole sequence with a single matmul outside the scan::

    xp = cell.project(params, x)             # (..., gates * hidden), all steps at once
    carry, y_t = cell.step(params, carry, xp[t])   # the scan body, one step

Weights use torch's layout and gate order, so a state dict maps onto them one to one:
``w_ih`` is ``(gates * hidden, input)``, ``w_hh`` is ``(gates * hidden, hidden)``, and the
biases ``b_ih``, ``b_hh`` are ``(gates * hidden,)`` (or ``None`` without bias).

=====  =======  ======================================================================
cell   gates    step
=====  =======  ======================================================================
LSTM   i f g o  ``c' = f*c + i*g``, ``h' = o*tanh(c')``
GRU    r z n    ``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))``, ``h' = (1-z)*n + z*h``
RNN    --       ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`` (or relu)
=====  =======  ======================================================================

Options that compose: :func:`lstm_cell`'s ``proj_size`` (torch's LSTMP), ``peephole`` and
``layer_norm``, and :func:`gru_cell`'s ``layer_norm``. Their weights are extra fields of
the params, ``None`` when the option is off; :func:`lstm_options` and :func:`gru_options`
read the options back off the params.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from recurrent import checks

Array = jax.Array
Initializer = Callable[[Array, tuple, Any], Array]


class LSTMParams(NamedTuple):
    """LSTM weights, gate order i, f, g, o: ``w_ih (4H, I)``, ``w_hh (4H, P)``, biases ``(4H,)``.

    The fields after ``b_hh`` belong to the options of :func:`lstm_cell` and are ``None``
    when it is off (``P = H`` without a projection):

    - ``proj_size``: ``w_hr (P, H)``, ``h = (o * tanh(c)) @ w_hr.T`` (torch's ``weight_hr``).
    - ``peephole``: ``w_ci``, ``w_cf``, ``w_co``, each ``(H,)``.
    - ``layer_norm``: gains ``gamma_ih``, ``gamma_hh`` ``(4H,)`` of the input and recurrent
      halves of the gates; gain and shift ``gamma_c``, ``beta_c`` ``(H,)`` of the cell state.
    """

    w_ih: Array
    w_hh: Array
    b_ih: Array | None
    b_hh: Array | None
    w_hr: Array | None = None
    w_ci: Array | None = None
    w_cf: Array | None = None
    w_co: Array | None = None
    gamma_ih: Array | None = None
    gamma_hh: Array | None = None
    gamma_c: Array | None = None
    beta_c: Array | None = None


class GRUParams(NamedTuple):
    """GRU weights, gate order r, z, n: ``w_ih (3H, I)``, ``w_hh (3H, H)``, biases ``(3H,)``.

    With :func:`gru_cell`'s ``layer_norm``, ``gamma_ih`` and ``gamma_hh`` ``(3H,)`` are the
    gains of the input and recurrent halves of the gates (``None`` without it).
    """

    w_ih: Array
    w_hh: Array
    b_ih: Array | None
    b_hh: Array | None
    gamma_ih: Array | None = None
    gamma_hh: Array | None = None


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
        ``y_t (batch, hidden)`` (``(batch, proj_size)`` for a projected LSTM).
      initial_carry: ``initial_carry(batch_shape, dtype) -> carry`` of zeros; the carry is
        ``(h, c)`` for the LSTM and ``h`` for the GRU and RNN, each ``(*batch_shape, hidden)``
        (``h`` is ``proj_size`` wide for a projected LSTM).
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


def _check_cell(fn: str, hidden_size, bias, dtype) -> None:
    """The arguments every cell shares: a positive int ``hidden_size`` (checked before any
    init scale divides by it), a bool ``bias`` and a floating or ``None`` ``dtype``."""
    checks.check_size(fn, "hidden_size", hidden_size)
    checks.check_flag(fn, "bias", bias)
    checks.check_dtype(fn, dtype)


def _make_init(params_type, gates, hidden_size, bias, dtype, kernel_init, recurrent_init,
               bias_init, recurrent_size=None):
    """Builds ``init(key, input_size)`` for a cell with ``gates`` blocks of ``hidden_size`` rows;
    ``w_hh`` reads ``recurrent_size`` features (default ``hidden_size``)."""
    default = uniform_init(1.0 / hidden_size**0.5)
    kernel_init = kernel_init or default
    recurrent_init = recurrent_init or default
    bias_init = bias_init or default
    rows = gates * hidden_size

    def init(key, input_size):
        k_ih, k_hh, k_bih, k_bhh = jax.random.split(key, 4)
        w_ih = kernel_init(k_ih, (rows, input_size), dtype)
        w_hh = recurrent_init(k_hh, (rows, recurrent_size or hidden_size), dtype)
        if not bias:
            return params_type(w_ih, w_hh, None, None)
        b_ih = bias_init(k_bih, (rows,), dtype)
        b_hh = bias_init(k_bhh, (rows,), dtype)
        return params_type(w_ih, w_hh, b_ih, b_hh)

    return init


LAYER_NORM_EPS = 1e-5


def _layer_norm(x, gain, shift=None):
    """``(x - mean) / sqrt(var + eps) * gain + shift`` over the last axis of ``x (..., F)``."""
    mean = jnp.mean(x, axis=-1, keepdims=True)  # (..., 1)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)  # (..., 1)
    y = (x - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS) * gain
    return y if shift is None else y + shift


def project_input(params, x, dtype, fold_b_hh, gain=None):
    """The input half of the gates for every leading index: ``(..., I) -> (..., G*H)``;
    with ``gain``, ``x @ w_ih.T`` is layer-normalised before the biases are added.
    ``ValueError`` where ``x``'s features are not ``w_ih``'s columns."""
    w_shape, x_shape = getattr(params.w_ih, "shape", None), getattr(x, "shape", None)
    if w_shape is None or len(w_shape) != 2 or not x_shape or x_shape[-1] != w_shape[1]:
        raise ValueError(f"project: x of shape {x_shape} needs params.w_ih of shape "
                         f"(G * hidden_size, {x_shape[-1] if x_shape else 'features'}); got "
                         f"{w_shape}")
    xp = _matmul(x, params.w_ih, dtype)
    if gain is not None:
        xp = _layer_norm(xp, gain)
    if params.b_ih is not None:
        xp = xp + params.b_ih
    if fold_b_hh and params.b_hh is not None:
        xp = xp + params.b_hh
    return xp


ALL_ROWS = slice(None)


def plain_matmul(params, dtype):
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


def cell_from(recurrence, carry_keys, dtype, params_type, initial_carry=None):
    """``activations`` and ``step`` from ``recurrence`` with the plain recurrent matmul;
    ``step`` names params of another type than ``params_type`` (a GRU's in an LSTM cell
    would otherwise reach a broadcasting error) and, given ``initial_carry``, a carry of
    another structure or shape than it makes for ``xp_t``'s batch shape."""

    def activations(params, carry, xp_t):
        return recurrence(params, carry, xp_t, plain_matmul(params, dtype), sigmoid_tanh)

    def step(params, carry, xp_t):
        if type(params) is not params_type:
            raise TypeError(f"step: params is {type(params).__name__}; expected "
                            f"{params_type.__name__} (as made by this cell's init)")
        if initial_carry is not None:
            want = jax.eval_shape(lambda: initial_carry(xp_t.shape[:-1]))
            checks.check_carry("step", carry, want)
        a = activations(params, carry, xp_t)
        new = tuple(a[k] for k in carry_keys)
        return (new if len(new) > 1 else new[0]), a["h"]

    return activations, step


def zeros_carry(hidden_size, pair, output_size=None):
    """``initial_carry``: zeros ``(*batch_shape, hidden_size)``, for a ``pair`` ``(h, c)``
    with ``h`` ``output_size`` wide when given (a projected LSTM)."""
    def initial_carry(batch_shape, dtype=jnp.float32):
        c = jnp.zeros((*batch_shape, hidden_size), dtype)
        if not pair:
            return c
        return (c if output_size is None else jnp.zeros((*batch_shape, output_size), dtype)), c

    return initial_carry


def _layer_norm_params(gates, hidden_size, cell_state, dtype) -> dict:
    """Layer-norm gains at one (and the cell state's shift at zero), Ba et al.'s init."""
    rows = gates * hidden_size
    params = dict(gamma_ih=jnp.ones((rows,), dtype), gamma_hh=jnp.ones((rows,), dtype))
    if cell_state:
        params.update(gamma_c=jnp.ones((hidden_size,), dtype),
                      beta_c=jnp.zeros((hidden_size,), dtype))
    return params


def lstm_options(params: LSTMParams) -> dict:
    """The options of :func:`lstm_cell` that made ``params`` (one direction's), read off
    which fields are set: ``{"proj_size": P or 0, "peephole": bool, "layer_norm": bool}``."""
    return dict(proj_size=0 if params.w_hr is None else params.w_hr.shape[0],
                peephole=params.w_ci is not None, layer_norm=params.gamma_ih is not None)


def gru_options(params: GRUParams) -> dict:
    """The options of :func:`gru_cell` that made ``params``: ``{"layer_norm": bool}``."""
    return dict(layer_norm=params.gamma_ih is not None)


def lstm_cell(hidden_size: int, *, proj_size: int = 0, peephole: bool = False,
              layer_norm: bool = False, bias: bool = True, forget_bias: float = 0.0,
              kernel_init: Initializer | None = None, recurrent_init: Initializer | None = None,
              bias_init: Initializer | None = None, param_dtype=jnp.float32,
              dtype=None) -> Cell:
    """The LSTM cell of ``torch.nn.LSTM`` (gate order i, f, g, o)::

        i, f, g, o = split(W_ih x + b_ih + W_hh h + b_hh, 4)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(c')

    with three options that compose::

        proj_size=P (torch's LSTMP):  h' = (sigmoid(o) * tanh(c')) @ w_hr.T  # (batch, P)
        peephole (Gers & Schmidhuber 2000): the pre-activations of i and f add
            w_ci * c and w_cf * c, that of o adds w_co * c'
        layer_norm (Ba et al. 2016):  LN(W_ih x; gamma_ih) + b_ih + LN(W_hh h; gamma_hh) + b_hh
            in place of W_ih x + b_ih + W_hh h + b_hh, each LN over all 4H gate rows, and
            h' = sigmoid(o) * tanh(LN(c'; gamma_c, beta_c))

    where ``LN(v; g, b) = (v - mean(v)) / sqrt(var(v) + 1e-5) * g + b``: the biases
    ``b_ih`` and ``b_hh`` are the shifts of the two gate normalisations.

    Args:
      hidden_size: ``H``.
      proj_size: ``P`` in ``[1, H)`` for a projected output (then the carry is ``h (batch,
        P)``, ``c (batch, H)`` and ``w_hh`` is ``(4H, P)``); 0, as torch, for none.
      peephole: add the peephole weights ``w_ci``, ``w_cf``, ``w_co`` ``(H,)``.
      layer_norm: normalise the gates and the cell state, with gains ``gamma_ih``,
        ``gamma_hh`` ``(4H,)``, ``gamma_c (H,)`` (initialised to 1) and ``beta_c (H,)`` (0).
      bias: whether the cell has ``b_ih`` and ``b_hh``.
      forget_bias: added to the forget-gate block of ``b_ih`` at init (1.0 is a common choice).
      kernel_init, recurrent_init, bias_init: ``init(key, shape, dtype)`` for ``w_ih``,
        ``w_hh`` (and ``w_hr``) and both biases; default torch's ``U(-1/sqrt(H), 1/sqrt(H))``,
        which the peephole weights always use.
      param_dtype: dtype of the params made by ``init``.
      dtype: dtype of the matmuls (e.g. ``jnp.bfloat16``; they accumulate in float32 and
        the gates and carry stay float32); ``None`` computes in the params' dtype.
    """
    _check_cell("lstm_cell", hidden_size, bias, dtype)
    H = hidden_size
    checks.check_proj_size("lstm_cell", proj_size, H)
    checks.check_flag("lstm_cell", "peephole", peephole)
    checks.check_flag("lstm_cell", "layer_norm", layer_norm)
    base_init = _make_init(LSTMParams, 4, H, bias, param_dtype, kernel_init, recurrent_init,
                           bias_init, recurrent_size=proj_size)
    default_init = uniform_init(1.0 / H**0.5)

    def init(key, input_size):
        params = base_init(key, input_size)
        if bias and forget_bias:
            params = params._replace(b_ih=params.b_ih.at[H:2 * H].add(forget_bias))
        if proj_size:
            w_hr = (recurrent_init or default_init)(jax.random.fold_in(key, 1), (proj_size, H),
                                                     param_dtype)
            params = params._replace(w_hr=w_hr)
        if peephole:
            w_ci, w_cf, w_co = default_init(jax.random.fold_in(key, 2), (3, H), param_dtype)
            params = params._replace(w_ci=w_ci, w_cf=w_cf, w_co=w_co)
        if layer_norm:
            params = params._replace(**_layer_norm_params(4, H, True, param_dtype))
        return params

    def project(params, x):
        return project_input(params, x, dtype, fold_b_hh=True,
                        gain=params.gamma_ih if layer_norm else None)

    def recurrence(params, carry, xp_t, matmul, act):
        h, c = carry
        hp = matmul(h, ALL_ROWS)  # (batch, 4H)
        if layer_norm:
            hp = _layer_norm(hp, params.gamma_hh)
        if peephole:
            pre = xp_t + hp  # (batch, 4H)
            peep = jnp.concatenate([params.w_ci * c, params.w_cf * c, jnp.zeros_like(c)],
                                   axis=-1)  # (batch, 3H): i and f see c, g does not
            ifg = act(pre[..., :3 * H] + peep, _gate_mask(3, H, (2,)))  # (batch, 3H)
            i, f, g = jnp.split(ifg, 3, axis=-1)  # 3 x (batch, H)
            c = f * c + i * g
            o = act(pre[..., 3 * H:] + params.w_co * c, False)
        else:
            gates = act(xp_t + hp, _gate_mask(4, H, (2,)))  # (batch, 4H)
            i, f, g, o = jnp.split(gates, 4, axis=-1)  # 4 x (batch, H)
            c = f * c + i * g
        h = o * act(_layer_norm(c, params.gamma_c, params.beta_c) if layer_norm else c, True)
        if proj_size:
            h = _matmul(h, params.w_hr, dtype)  # (batch, H) -> (batch, P)
        return dict(i=i, f=f, g=g, o=o, c=c, h=h)

    initial_carry = zeros_carry(H, pair=True, output_size=proj_size or None)
    activations, step = cell_from(recurrence, ("h", "c"), dtype, LSTMParams, initial_carry)
    return Cell(init=init, project=project, step=step,
                initial_carry=initial_carry,
                activations=activations, params_type=LSTMParams, gates=4,
                recurrence=recurrence, carry_keys=("h", "c"), dtype=dtype)


def gru_cell(hidden_size: int, *, reset_after: bool = True, layer_norm: bool = False,
             bias: bool = True, kernel_init: Initializer | None = None,
             recurrent_init: Initializer | None = None, bias_init: Initializer | None = None,
             param_dtype=jnp.float32, dtype=None) -> Cell:
    """The GRU cell (gate order r, z, n). With ``reset_after=True`` (torch, cuDNN)::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    and with ``reset_after=False`` (Cho et al. 2014)
    ``n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)``.
    The params have the same shapes in both forms.

    ``layer_norm`` (Ba et al. 2016) replaces ``W_ih x`` by ``LN(W_ih x; gamma_ih)`` over all
    3H rows and each recurrent product by its own normalisation with ``gamma_hh``:
    ``W_hh h`` by ``LN(W_hh h; gamma_hh)`` over 3H rows with ``reset_after``, else
    ``W_h{r,z} h`` and ``W_hn (r*h)`` over their 2H and H rows; ``LN`` as in
    :func:`lstm_cell`, with ``b_ih`` and ``b_hh`` as the shifts. ``gamma_ih``, ``gamma_hh``
    are ``(3H,)``, initialised to 1. Other arguments as in :func:`lstm_cell`.
    """
    _check_cell("gru_cell", hidden_size, bias, dtype)
    H = hidden_size
    checks.check_flag("gru_cell", "reset_after", reset_after)
    checks.check_flag("gru_cell", "layer_norm", layer_norm)
    base_init = _make_init(GRUParams, 3, H, bias, param_dtype, kernel_init, recurrent_init,
                           bias_init)

    def init(key, input_size):
        params = base_init(key, input_size)
        if layer_norm:
            params = params._replace(**_layer_norm_params(3, H, False, param_dtype))
        return params

    def project(params, x):
        xp = project_input(params, x, dtype, fold_b_hh=not reset_after,
                      gain=params.gamma_ih if layer_norm else None)
        if reset_after and params.b_hh is not None:  # b_hn stays inside r * (...)
            xp = xp + jnp.asarray(params.b_hh).at[2 * H:].set(0)
        return xp

    def recurrence(params, carry, xp_t, matmul, act):
        h = carry
        x_rz, x_n = xp_t[..., :2 * H], xp_t[..., 2 * H:]  # (batch, 2H), (batch, H)
        if reset_after:
            hp = matmul(h, ALL_ROWS)  # (batch, 3H)
            if layer_norm:
                hp = _layer_norm(hp, params.gamma_hh)
            h_rz, h_n = hp[..., :2 * H], hp[..., 2 * H:]  # (batch, 2H), (batch, H)
            if params.b_hh is not None:
                h_n = h_n + params.b_hh[2 * H:]
            r, z = jnp.split(act(x_rz + h_rz, False), 2, axis=-1)  # 2 x (batch, H)
            n = act(x_n + r * h_n, True)
        else:
            h_rz = matmul(h, slice(0, 2 * H))  # (batch, 2H)
            if layer_norm:
                h_rz = _layer_norm(h_rz, params.gamma_hh[:2 * H])
            r, z = jnp.split(act(x_rz + h_rz, False), 2, axis=-1)  # 2 x (batch, H)
            h_n = matmul(r * h, slice(2 * H, 3 * H))  # (batch, H)
            if layer_norm:
                h_n = _layer_norm(h_n, params.gamma_hh[2 * H:])
            n = act(x_n + h_n, True)
        return dict(r=r, z=z, n=n, h=(1 - z) * n + z * h)

    initial_carry = zeros_carry(H, pair=False)
    activations, step = cell_from(recurrence, ("h",), dtype, GRUParams, initial_carry)
    return Cell(init=init, project=project, step=step, initial_carry=initial_carry,
                activations=activations, params_type=GRUParams, gates=3,
                recurrence=recurrence, carry_keys=("h",), dtype=dtype)


def rnn_cell(hidden_size: int, *, nonlinearity: str = "tanh", bias: bool = True,
             kernel_init: Initializer | None = None, recurrent_init: Initializer | None = None,
             bias_init: Initializer | None = None, param_dtype=jnp.float32,
             dtype=None) -> Cell:
    """The Elman RNN cell of ``torch.nn.RNN``: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``.

    ``nonlinearity`` is ``"tanh"`` or ``"relu"``; other arguments as in :func:`lstm_cell`.
    """
    _check_cell("rnn_cell", hidden_size, bias, dtype)
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    init = _make_init(RNNParams, 1, hidden_size, bias, param_dtype, kernel_init,
                      recurrent_init, bias_init)

    def project(params, x):
        return project_input(params, x, dtype, fold_b_hh=True)

    def recurrence(params, carry, xp_t, matmul, act):
        pre = xp_t + matmul(carry, ALL_ROWS)  # (batch, H)
        return dict(h=act(pre, True) if nonlinearity == "tanh" else jax.nn.relu(pre))

    initial_carry = zeros_carry(hidden_size, pair=False)
    activations, step = cell_from(recurrence, ("h",), dtype, RNNParams, initial_carry)
    return Cell(init=init, project=project, step=step,
                initial_carry=initial_carry, activations=activations,
                params_type=RNNParams, gates=1, recurrence=recurrence, carry_keys=("h",),
                dtype=dtype)

__all__ = [
    "Cell", "GRUParams", "LSTMParams", "RNNParams", "gru_cell", "lstm_cell", "rnn_cell",
    "uniform_init",
]
