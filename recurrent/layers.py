"""Whole recurrent layers, stacked and bidirectional, with the semantics of torch's
``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` (``batch_first=True`` by default).

Params are ``((forward, backward?), ...)``: one tuple per layer holding one cell params
NamedTuple per direction. Sizes are read off their shapes, so they pass unchanged through
``jit``, ``grad``, ``vmap`` and optax.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from recurrent import checks
from recurrent.cells import Cell, GRUParams, LSTMParams, RNNParams
from recurrent.engines import ENGINES, LayerRun, kernel_configs
from recurrent.kinds import KINDS, Kind, of_params
from recurrent.layer_docs import H_STATE, LINEAR_IMPL_DOC, document
from recurrent.minimal import MinGRUParams, MinLSTMParams
from recurrent.regularize import Regularization
from recurrent.unroll import carry_dtype

#: One direction of one layer: the params of its cell.
CellParams = LSTMParams | GRUParams | RNNParams | MinGRUParams | MinLSTMParams
#: A whole layer's params, ``((forward, backward?), ...)``: one tuple per stacked layer of
#: one cell params per direction, as ``init_lstm`` etc. return them.
Params = tuple[tuple[CellParams, ...], ...]
#: ``(h, c)`` of an LSTM, each ``(num_layers * num_directions, batch, hidden_size)``.
LSTMState = tuple[jax.Array, jax.Array]
#: ``activations[layer][direction]``: a dict of every gate and state at every step.
Activations = tuple[tuple[dict[str, jax.Array], ...], ...]

def default_unroll() -> int:
    """Scan steps per loop iteration where ``unroll=None``: 8 on a GPU, where it made the XLA
    path's LSTM training step 23% faster than 1 (B 64, T 256, H 512 on an H100;
    benchmarks/results/gpu.md), else 1."""
    return 8 if jax.default_backend() == "gpu" else 1


def _init_stack(kind: Kind, key, input_size, hidden_size, num_layers, bidirectional,
                cell_options: dict):
    """``num_layers`` x directions params of ``kind.cell(hidden_size, **cell_options)``,
    built once the sizes are checked; layer ``l > 0`` reads ``D * H`` features (``D *
    proj_size`` when the cell's output is not ``H`` wide)."""
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)):
        checks.check_size(f"init_{kind.name}", name, value)
    checks.check_flag(f"init_{kind.name}", "bidirectional", bidirectional)
    cell = kind.cell(hidden_size, **cell_options)
    output_size = jax.tree.leaves(jax.eval_shape(lambda: cell.initial_carry((1,))))[0].shape[-1]
    num_dirs = 2 if bidirectional else 1
    keys = jax.random.split(key, num_layers * num_dirs)
    return tuple(
        tuple(cell.init(keys[l * num_dirs + d],
                        input_size if l == 0 else num_dirs * output_size)
              for d in range(num_dirs))
        for l in range(num_layers))


def _run_stack(kind: Kind, call_options: dict, params, x, seq_lengths, initial_state,
               dropout, key, batch_first, unroll_steps, dtype, impl, remat_chunk,
               reg: Regularization | None = None, return_activations: bool = False):
    """Checks the arguments, then runs every layer of a ``kind`` stack, each by the engine
    of :data:`recurrent.engines.ENGINES` that ``impl`` picks; returns ``(y, state)``, or
    ``(y, state, activations)`` with ``return_activations``.

    The cell is ``kind``'s, with the options read off ``params[0][0]`` and
    ``call_options``. This loop owns what every engine shares: the time-major layout,
    each layer's slice of the initial state, the dropout between layers and the final
    state of every layer."""
    fn = kind.name
    if impl not in kind.impls:
        raise ValueError(f"{fn}: impl must be one of {', '.join(map(repr, kind.impls))}; "
                         f"got {impl!r}")
    checks.check_size(fn, "unroll", unroll_steps, optional=True)
    checks.check_size(fn, "remat_chunk", remat_chunk, optional=True)
    checks.check_flag(fn, "batch_first", batch_first)
    checks.check_flag(fn, "return_activations", return_activations)
    checks.check_dtype(fn, dtype)
    sizes = checks.check_stack(fn, params, kind)
    batch, time = checks.check_input(fn, x, sizes, batch_first)
    checks.check_seq_lengths(fn, seq_lengths, batch)
    if reg is not None:
        reg.check(fn, key)
        if reg.deterministic:  # evaluation: no dropout of any kind
            checks.check_rate(fn, dropout)
            dropout = 0.0
    checks.check_dropout(fn, dropout, key)
    initial_state = _broadcast_state(initial_state, batch)
    num_dirs = sizes.num_directions
    cell = kind.cell_for(params[0][0], dtype=dtype, **call_options)
    _check_initial_state(fn, kind, initial_state, sizes, batch)
    impl = _engine(fn, impl, cell, reg, return_activations, empty=not batch or not time)
    masks_key = None
    if impl == "regularized" and reg is not None and reg.random:
        key, masks_key = jax.random.split(key)
    run = LayerRun(cell, default_unroll() if unroll_steps is None else unroll_steps,
                   remat_chunk, reg, masks_key, return_activations,
                   kernel_configs(kind.kernel_for(**call_options), impl, params, batch, dtype,
                                  remat_chunk))
    engine = ENGINES[impl]

    out = jnp.swapaxes(x, 0, 1) if batch_first else x  # (batch, T, I) -> (T, batch, I)
    finals, activations = [], []
    for l, layer in enumerate(params):
        state_dtype = carry_dtype(layer[0])
        if initial_state is None:
            carry = cell.initial_carry((num_dirs, batch), state_dtype)
        else:  # leaves (L*D, batch, H) -> (D, batch, H)
            carry = jax.tree.map(lambda s: s[l * num_dirs:(l + 1) * num_dirs].astype(
                state_dtype), tuple(initial_state) if kind.pair else initial_state)
        out, carry, layer_activations = engine(run, l, layer, out, carry, seq_lengths)
        finals.append(carry)
        activations.append(layer_activations)
        if dropout > 0 and l < len(params) - 1:  # the mask is drawn batch-first
            key, sub = jax.random.split(key)
            keep = jax.random.bernoulli(sub, 1 - dropout, (batch, time, out.shape[-1]))
            out = jnp.where(jnp.swapaxes(keep, 0, 1), out / (1 - dropout), 0)
    state = jax.tree.map(lambda *c: jnp.concatenate(c), *finals)  # each (L*D, batch, H)
    if batch_first:  # (T, batch, ...) -> (batch, T, ...)
        out, activations = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), (out, activations))
    if dtype is not None:
        out = out.astype(dtype)
    if return_activations:
        return out, state, tuple(activations)
    return out, state


def _check_initial_state(fn: str, kind: Kind, initial_state, sizes, batch: int) -> None:
    """``initial_state`` (broadcast over the batch) is ``None`` or shaped as the stack's
    state: one array, or a pair ``(h_0, c_0)`` for a kind whose carry is a pair."""
    if initial_state is None:
        return
    state_shape = (sizes.num_layers * sizes.num_directions, batch, sizes.hidden_size)
    if not kind.pair:
        checks.check_state(fn, "initial_state", initial_state, state_shape)
        return
    if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
        raise TypeError(f"{fn}: initial_state must be a pair (h_0, c_0); got "
                        f"{type(initial_state).__name__}")
    projected = sizes.output_size != sizes.hidden_size
    checks.check_state(fn, "initial_state[0] (h_0)", initial_state[0],
                       (*state_shape[:2], sizes.output_size),
                       "proj_size" if projected else "hidden_size")
    checks.check_state(fn, "initial_state[1] (c_0)", initial_state[1], state_shape)


def _engine(fn: str, impl: str, cell: Cell, reg: Regularization | None,
            return_activations: bool, empty: bool) -> str:
    """The key of :data:`recurrent.engines.ENGINES` that runs ``impl``: "regularized" (the
    scan) where ``reg`` changes the step or per-step activations are asked for, which only
    it runs; "reference" for empty inputs (one path whatever the impl) and for the fast
    impls of a cell without ``recurrence``; else ``impl``."""
    if return_activations or (reg is not None and reg.changes_step):
        if impl not in ("auto", "fast", "reference"):
            raise ValueError(f"{fn}: input_dropout, recurrent_dropout, zoneout and "
                             f"return_activations run in the scan (impl='reference'); "
                             f"impl={impl!r} cannot run them")
        return "regularized"
    if empty or (impl in ("auto", "fast", "pallas") and cell.recurrence is None):
        return "reference"
    return impl


def zero_state(params, pair: bool):
    """Zeros of a state without its batch axis, for a learnable initial state: the cell's
    zero carry for a batch of ``num_layers * num_directions`` rows, in the carry's dtype:
    ``h_0`` ``(num_layers * num_directions, output_size)``, and with ``pair`` (LSTM) ``(h_0,
    c_0)``, ``c_0`` ``(num_layers * num_directions, hidden_size)``. The layers broadcast it
    over the batch."""
    p = params[0][0]
    kind = of_params(p)
    if pair != kind.pair:
        raise ValueError(f"zero_state: pair={pair} but the state of a {kind.name} stack "
                         f"is {'(h, c)' if kind.pair else 'h'}")
    rows = len(params) * len(params[0])  # num_layers * num_directions
    return kind.cell_for(p).initial_carry((rows,), carry_dtype(p))


def _broadcast_state(initial_state, batch: int):
    """Each state array of shape ``(L*D, H)`` or ``(L*D, 1, H)``, one state for every
    sequence (e.g. a learned one), broadcast to ``(L*D, batch, H)``; the rest as given."""

    def widen(s):
        shape = getattr(s, "shape", None)
        if shape is None or len(shape) not in (2, 3) or (len(shape) == 3 and shape[1] != 1):
            return s
        s = jnp.reshape(s, (shape[0], 1, shape[-1]))  # (L*D, 1, H)
        return jnp.broadcast_to(s, (shape[0], batch, shape[-1]))

    if isinstance(initial_state, (tuple, list)):
        return tuple(widen(s) for s in initial_state)
    return None if initial_state is None else widen(initial_state)


def init_lstm(key: jax.Array, input_size: int, hidden_size: int, num_layers: int = 1,
              bidirectional: bool = False, **cell_options: Any) -> Params:
    """Params of a stacked (bidirectional) LSTM, initialised as ``torch.nn.LSTM``.

    ``cell_options`` go to :func:`recurrent.cells.lstm_cell` (``proj_size``, ``peephole``,
    ``layer_norm``, ``bias``, ``forget_bias``, ``kernel_init``, ``recurrent_init``,
    ``bias_init``, ``param_dtype``). Returns ``((LSTMParams,) * num_directions,) *
    num_layers``; layer 0 reads ``input_size`` features, later layers ``num_directions *
    hidden_size`` (``num_directions * proj_size`` with a projection, as torch).
    """
    return _init_stack(KINDS["lstm"], key, input_size, hidden_size, num_layers, bidirectional,
                       cell_options)


def init_gru(key: jax.Array, input_size: int, hidden_size: int, num_layers: int = 1,
             bidirectional: bool = False, **cell_options: Any) -> Params:
    """Params of a stacked (bidirectional) GRU, initialised as ``torch.nn.GRU``.

    ``cell_options`` go to :func:`recurrent.cells.gru_cell` (e.g. ``layer_norm``). The
    params are the same for both GRU forms; choose the form with ``gru(...,
    reset_after=...)``.
    """
    return _init_stack(KINDS["gru"], key, input_size, hidden_size, num_layers, bidirectional,
                       cell_options)


def init_rnn(key: jax.Array, input_size: int, hidden_size: int, num_layers: int = 1,
             bidirectional: bool = False, **cell_options: Any) -> Params:
    """Params of a stacked (bidirectional) tanh/relu RNN, initialised as ``torch.nn.RNN``.

    ``cell_options`` go to :func:`recurrent.cells.rnn_cell` (its ``nonlinearity`` does not
    change the params; choose it with ``rnn(..., nonlinearity=...)``).
    """
    return _init_stack(KINDS["rnn"], key, input_size, hidden_size, num_layers, bidirectional,
                       cell_options)


@overload
def lstm(params: Params, x: jax.Array, seq_lengths: jax.Array | None = ...,
         initial_state: LSTMState | None = ..., dropout: float = ..., key: jax.Array | None = ...,
         batch_first: bool = ..., *,
         dtype: DTypeLike | None = ..., unroll: int | None = ..., impl: str = ...,
         remat_chunk: int | None = ..., input_dropout: float = ...,
         recurrent_dropout: float = ..., hidden_zoneout: float = ..., cell_zoneout: float = ...,
         deterministic: bool = ...,
         return_activations: Literal[False] = ...) -> tuple[jax.Array, LSTMState]: ...


@overload
def lstm(params: Params, x: jax.Array, seq_lengths: jax.Array | None = ...,
         initial_state: LSTMState | None = ..., dropout: float = ..., key: jax.Array | None = ...,
         batch_first: bool = ..., *,
         dtype: DTypeLike | None = ..., unroll: int | None = ..., impl: str = ...,
         remat_chunk: int | None = ..., input_dropout: float = ...,
         recurrent_dropout: float = ..., hidden_zoneout: float = ..., cell_zoneout: float = ...,
         deterministic: bool = ...,
         return_activations: Literal[True]) -> tuple[jax.Array, LSTMState, Activations]: ...


@document("lstm", "a pair ``(h_0, c_0)``, each ``(num_layers * num_directions, batch, "
           "hidden_size)``", "(h_n, c_n)", "``h_n`` and ``c_n`` are each",
           activations="``i, f, g, o, c, h``")
def lstm(params: Params, x: jax.Array, seq_lengths: jax.Array | None = None,
         initial_state: LSTMState | None = None, dropout: float = 0.0, key: jax.Array | None = None,
         batch_first: bool = True, *,
         dtype: DTypeLike | None = None, unroll: int | None = None, impl: str = "auto",
         remat_chunk: int | None = None, input_dropout: float = 0.0,
         recurrent_dropout: float = 0.0, hidden_zoneout: float = 0.0, cell_zoneout: float = 0.0,
         deterministic: bool = False,
         return_activations: bool = False) -> tuple[Any, ...]:
    """A stacked (bidirectional) LSTM over a batch of sequences, as ``torch.nn.LSTM``.

    For one layer and direction, with ``x`` batch first::

        h, c = initial_state
        for t in range(time):
            i, f, g, o = split(x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh, 4)
            c = sigmoid(f) * c + sigmoid(i) * tanh(g)
            h = sigmoid(o) * tanh(c)
            y[:, t] = h

    The cell options of :func:`recurrent.cells.lstm_cell` are read off the params (made
    by ``init_lstm(..., proj_size=P, peephole=True, layer_norm=True)`` or loaded from a
    torch LSTM with ``proj_size``). With a projection, ``y`` is ``(batch, time,
    num_directions * P)`` and ``h_0``, ``h_n`` are ``(num_layers * num_directions, batch,
    P)``; ``c_0``, ``c_n`` stay ``hidden_size`` wide.
    """
    return _run_stack(KINDS["lstm"], {}, params, x, seq_lengths, initial_state, dropout, key,
                      batch_first, unroll, dtype, impl, remat_chunk,
                      reg=Regularization(input_dropout, recurrent_dropout, hidden_zoneout,
                                         cell_zoneout, deterministic),
                      return_activations=return_activations)


@overload
def gru(params: Params, x: jax.Array, seq_lengths: jax.Array | None = ...,
        initial_state: jax.Array | None = ..., dropout: float = ..., key: jax.Array | None = ...,
        batch_first: bool = ..., *,
        reset_after: bool = ..., dtype: DTypeLike | None = ..., unroll: int | None = ...,
        impl: str = ..., remat_chunk: int | None = ..., input_dropout: float = ...,
        recurrent_dropout: float = ..., hidden_zoneout: float = ..., deterministic: bool = ...,
        return_activations: Literal[False] = ...) -> tuple[jax.Array, jax.Array]: ...


@overload
def gru(params: Params, x: jax.Array, seq_lengths: jax.Array | None = ...,
        initial_state: jax.Array | None = ..., dropout: float = ..., key: jax.Array | None = ...,
        batch_first: bool = ..., *,
        reset_after: bool = ..., dtype: DTypeLike | None = ..., unroll: int | None = ...,
        impl: str = ..., remat_chunk: int | None = ..., input_dropout: float = ...,
        recurrent_dropout: float = ..., hidden_zoneout: float = ..., deterministic: bool = ...,
        return_activations: Literal[True]) -> tuple[jax.Array, jax.Array, Activations]: ...


@document("gru", *H_STATE, activations="``r, z, n, h``")
def gru(params: Params, x: jax.Array, seq_lengths: jax.Array | None = None,
        initial_state: jax.Array | None = None, dropout: float = 0.0, key: jax.Array | None = None,
        batch_first: bool = True, *,
        reset_after: bool = True, dtype: DTypeLike | None = None, unroll: int | None = None,
        impl: str = "auto", remat_chunk: int | None = None, input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0, hidden_zoneout: float = 0.0, deterministic: bool = False,
        return_activations: bool = False) -> tuple[Any, ...]:
    """A stacked (bidirectional) GRU over a batch of sequences, as ``torch.nn.GRU``.

    For one layer and direction (``reset_after=True``, torch's form; ``False`` applies the
    reset gate before the recurrent matmul, as Cho et al. 2014)::

        h = initial_state
        for t in range(time):
            xr, xz, xn = split(x[:, t] @ w_ih.T + b_ih, 3)
            hr, hz, hn = split(h @ w_hh.T + b_hh, 3)
            r, z = sigmoid(xr + hr), sigmoid(xz + hz)
            n = tanh(xn + r * hn)
            h = (1 - z) * n + z * h
            y[:, t] = h

    ``layer_norm`` (:func:`recurrent.cells.gru_cell`) is read off the params.
    """
    return _run_stack(KINDS["gru"], dict(reset_after=reset_after), params, x, seq_lengths,
                      initial_state, dropout, key, batch_first, unroll, dtype, impl,
                      remat_chunk,
                      reg=Regularization(input_dropout, recurrent_dropout, hidden_zoneout,
                                         deterministic=deterministic),
                      return_activations=return_activations)


@overload
def rnn(params: Params, x: jax.Array, seq_lengths: jax.Array | None = ...,
        initial_state: jax.Array | None = ..., dropout: float = ..., key: jax.Array | None = ...,
        batch_first: bool = ..., *,
        nonlinearity: str = ..., dtype: DTypeLike | None = ..., unroll: int | None = ...,
        impl: str = ..., remat_chunk: int | None = ..., input_dropout: float = ...,
        recurrent_dropout: float = ..., hidden_zoneout: float = ..., deterministic: bool = ...,
        return_activations: Literal[False] = ...) -> tuple[jax.Array, jax.Array]: ...


@overload
def rnn(params: Params, x: jax.Array, seq_lengths: jax.Array | None = ...,
        initial_state: jax.Array | None = ..., dropout: float = ..., key: jax.Array | None = ...,
        batch_first: bool = ..., *,
        nonlinearity: str = ..., dtype: DTypeLike | None = ..., unroll: int | None = ...,
        impl: str = ..., remat_chunk: int | None = ..., input_dropout: float = ...,
        recurrent_dropout: float = ..., hidden_zoneout: float = ..., deterministic: bool = ...,
        return_activations: Literal[True]) -> tuple[jax.Array, jax.Array, Activations]: ...


@document("rnn", *H_STATE, activations="``h``")
def rnn(params: Params, x: jax.Array, seq_lengths: jax.Array | None = None,
        initial_state: jax.Array | None = None, dropout: float = 0.0, key: jax.Array | None = None,
        batch_first: bool = True, *,
        nonlinearity: str = "tanh", dtype: DTypeLike | None = None, unroll: int | None = None,
        impl: str = "auto", remat_chunk: int | None = None, input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0, hidden_zoneout: float = 0.0, deterministic: bool = False,
        return_activations: bool = False) -> tuple[Any, ...]:
    """A stacked (bidirectional) Elman RNN, as ``torch.nn.RNN``::

        h = initial_state
        for t in range(time):
            h = tanh(x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh)   # or relu
            y[:, t] = h
    """
    return _run_stack(KINDS["rnn"], dict(nonlinearity=nonlinearity), params, x, seq_lengths,
                      initial_state, dropout, key, batch_first, unroll, dtype, impl,
                      remat_chunk,
                      reg=Regularization(input_dropout, recurrent_dropout, hidden_zoneout,
                                         deterministic=deterministic),
                      return_activations=return_activations)


def init_mingru(key: jax.Array, input_size: int, hidden_size: int, num_layers: int = 1,
                bidirectional: bool = False, **cell_options: Any) -> Params:
    """Params of a stacked (bidirectional) minGRU (Feng et al. 2024): a tuple per layer of
    ``MinGRUParams(w_ih (2H, I), b_ih (2H,))`` per direction. ``cell_options`` go to
    :func:`recurrent.minimal.mingru_cell`."""
    return _init_stack(KINDS["mingru"], key, input_size, hidden_size, num_layers, bidirectional,
                       cell_options)


def init_minlstm(key: jax.Array, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, **cell_options: Any) -> Params:
    """Params of a stacked (bidirectional) minLSTM (Feng et al. 2024): a tuple per layer of
    ``MinLSTMParams(w_ih (3H, I), b_ih (3H,))`` per direction."""
    return _init_stack(KINDS["minlstm"], key, input_size, hidden_size, num_layers,
                       bidirectional, cell_options)


@document("mingru", *H_STATE, impl_doc=LINEAR_IMPL_DOC)
def mingru(params: Params, x: jax.Array, seq_lengths: jax.Array | None = None,
           initial_state: jax.Array | None = None, dropout: float = 0.0,
           key: jax.Array | None = None, batch_first: bool = True, *,
           dtype: DTypeLike | None = None, unroll: int | None = None,
           impl: str = "parallel") -> tuple[jax.Array, jax.Array]:
    """A stacked (bidirectional) minGRU, evaluated in parallel over time by default::

        h = initial_state
        for t in range(time):
            k_z, k_h = split(x[:, t] @ w_ih.T + b_ih, 2)
            z = sigmoid(k_z)
            h = (1 - z) * h + z * g(k_h)      # g(v) = v + 0.5 if v >= 0 else sigmoid(v)
            y[:, t] = h
    """
    return _run_stack(KINDS["mingru"], {}, params, x, seq_lengths, initial_state, dropout,
                      key, batch_first, unroll, dtype, impl, None)


@document("minlstm", *H_STATE, impl_doc=LINEAR_IMPL_DOC)
def minlstm(params: Params, x: jax.Array, seq_lengths: jax.Array | None = None,
            initial_state: jax.Array | None = None, dropout: float = 0.0,
            key: jax.Array | None = None, batch_first: bool = True, *,
            dtype: DTypeLike | None = None, unroll: int | None = None,
            impl: str = "parallel") -> tuple[jax.Array, jax.Array]:
    """A stacked (bidirectional) minLSTM, evaluated in parallel over time by default::

        h = initial_state
        for t in range(time):
            k_f, k_i, k_h = split(x[:, t] @ w_ih.T + b_ih, 3)
            f, i = sigmoid(k_f), sigmoid(k_i)
            h = f / (f + i) * h + i / (f + i) * g(k_h)
            y[:, t] = h
    """
    return _run_stack(KINDS["minlstm"], {}, params, x, seq_lengths, initial_state, dropout,
                      key, batch_first, unroll, dtype, impl, None)

#: ``(init, layer)`` of every kind of :data:`recurrent.kinds.KINDS`, by its name.
LAYERS = {name: (globals()[f"init_{name}"], globals()[name]) for name in KINDS}

__all__ = [
    "CellParams", "LAYERS", "Params", "gru", "init_gru", "init_lstm", "init_mingru", "init_minlstm",
    "init_rnn", "lstm", "mingru", "minlstm", "rnn",
]
