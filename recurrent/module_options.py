"""The options of the Flax modules, defined once for both families.

Each kind of module has one options dataclass here (:class:`LSTMOptions`,
:class:`LSTMCellOptions`, ...). A Linen module inherits it, so its options are dataclass
attributes; an NNX module takes the same names as keyword arguments and keeps the
dataclass as ``module.options``. Every field says where it goes (its ``metadata["to"]``):

- ``"init"``: to the cell's ``init`` (:func:`recurrent.init_lstm` and
  :func:`recurrent.cells.lstm_cell`): ``bias``, the initialisers, ``param_dtype`` and the
  cell options that add weights;
- ``"step"``: to the functional layer's call and to the cell (``dtype``,
  ``reset_after``, ``nonlinearity``);
- ``"layer"``: to the functional layer's call only (``impl``, ``unroll``, the rates...);
- ``"module"``: read by the module itself (``axis_names``, ``learn_initial_state``,
  ``carry_order``, ``carry_init``).

Names and defaults are those of the functional layers and cells.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp

from recurrent import checks

#: Logical axis names of every weight, by field, for ``axis_names=AXIS_NAMES``: the gate
#: rows (``G * hidden_size``), the input features, the recurrent width (``hidden_size`` or
#: ``proj_size``) and the cell width (``hidden_size``).
AXIS_NAMES: Mapping[str, tuple[str, ...]] = {
    "w_ih": ("rnn_gates", "rnn_input"), "w_hh": ("rnn_gates", "rnn_hidden"),
    "b_ih": ("rnn_gates",), "b_hh": ("rnn_gates",), "w_hr": ("rnn_hidden", "rnn_cell"),
    "w_ci": ("rnn_cell",), "w_cf": ("rnn_cell",), "w_co": ("rnn_cell",),
    "gamma_ih": ("rnn_gates",), "gamma_hh": ("rnn_gates",), "gamma_c": ("rnn_cell",),
    "beta_c": ("rnn_cell",),
}
CARRY_ORDERS = ("torch", "flax")


def _option(default: Any, to: str) -> Any:
    return dataclasses.field(default=default, metadata={"to": to})


@dataclasses.dataclass(kw_only=True, eq=False)
class _Weights:
    """Options of every module: the weights' init and dtypes, the matmuls' dtype."""

    bias: bool = _option(True, "init")
    kernel_init: Callable | None = _option(None, "init")
    bias_init: Callable | None = _option(None, "init")
    param_dtype: Any = _option(jnp.float32, "init")
    dtype: Any = _option(None, "step")
    axis_names: Mapping[str, tuple[str | None, ...]] | None = _option(None, "module")


@dataclasses.dataclass(kw_only=True, eq=False)
class _Recurrent(_Weights):
    """Options of the cells with a recurrent matrix ``w_hh``."""

    recurrent_init: Callable | None = _option(None, "init")


@dataclasses.dataclass(kw_only=True, eq=False)
class _Layer:
    """Options of every layer module's functional call."""

    batch_first: bool = _option(True, "layer")
    unroll: int | None = _option(None, "layer")


@dataclasses.dataclass(kw_only=True, eq=False)
class _Scan(_Recurrent, _Layer):
    """Options of the LSTM, GRU and RNN layers: their ``impl`` and the scan's options."""

    impl: str = _option("auto", "layer")
    remat_chunk: int | None = _option(None, "layer")
    input_dropout: float = _option(0.0, "layer")
    recurrent_dropout: float = _option(0.0, "layer")
    hidden_zoneout: float = _option(0.0, "layer")
    learn_initial_state: bool = _option(False, "module")


@dataclasses.dataclass(kw_only=True, eq=False)
class _LSTMCellFields:
    forget_bias: float = _option(0.0, "init")
    proj_size: int = _option(0, "init")
    peephole: bool = _option(False, "init")
    layer_norm: bool = _option(False, "init")


@dataclasses.dataclass(kw_only=True, eq=False)
class _GRUCellFields:
    reset_after: bool = _option(True, "step")
    layer_norm: bool = _option(False, "init")


@dataclasses.dataclass(kw_only=True, eq=False)
class _RNNCellFields:
    nonlinearity: str = _option("tanh", "step")


@dataclasses.dataclass(kw_only=True, eq=False)
class _CellModule(_Recurrent):
    """Options of the cell modules beyond the cell's: the carry's initialiser
    ``carry_init(key, shape, dtype)`` (zeros when ``None``)."""

    carry_init: Callable | None = _option(None, "module")


@dataclasses.dataclass(kw_only=True, eq=False)
class LSTMOptions(_LSTMCellFields, _Scan):
    """Options of the LSTM layer modules (:func:`recurrent.lstm`)."""

    cell_zoneout: float = _option(0.0, "layer")


@dataclasses.dataclass(kw_only=True, eq=False)
class GRUOptions(_GRUCellFields, _Scan):
    """Options of the GRU layer modules (:func:`recurrent.gru`)."""


@dataclasses.dataclass(kw_only=True, eq=False)
class RNNOptions(_RNNCellFields, _Scan):
    """Options of the RNN layer modules (:func:`recurrent.rnn`)."""


@dataclasses.dataclass(kw_only=True, eq=False)
class MinimalOptions(_Weights, _Layer):
    """Options of the minGRU and minLSTM layer modules (run in parallel over time)."""

    impl: str = _option("parallel", "layer")


@dataclasses.dataclass(kw_only=True, eq=False)
class LSTMCellOptions(_LSTMCellFields, _CellModule):
    """Options of the LSTM cell modules; ``carry_order`` is ``"torch"`` (carry ``(h, c)``)
    or ``"flax"`` (``(c, h)``, as ``flax.linen.LSTMCell``)."""

    carry_order: str = _option("torch", "module")


@dataclasses.dataclass(kw_only=True, eq=False)
class GRUCellOptions(_GRUCellFields, _CellModule):
    """Options of the GRU cell modules."""


@dataclasses.dataclass(kw_only=True, eq=False)
class RNNCellOptions(_RNNCellFields, _CellModule):
    """Options of the plain RNN cell modules (flax's ``SimpleCell``)."""


def options_to(options, *targets: str) -> dict:
    """The options of ``options`` (an options dataclass, or a Linen module inheriting one)
    that go to one of ``targets`` (``"init"``, ``"step"``, ``"layer"``, ``"module"``), by
    name."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
            if f.metadata.get("to") in targets}


def make(module: str, options_type: type, values: Mapping[str, Any]):
    """``options_type(**values)`` for an NNX module named ``module``; ``TypeError`` naming an
    option ``options_type`` does not have."""
    names = {f.name for f in dataclasses.fields(options_type)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise TypeError(f"{module}: unexpected option(s) {', '.join(unknown)}; the options "
                        f"are {', '.join(sorted(names))}")
    return options_type(**values)


def check(module: str, options) -> None:
    """The module-level options: ``axis_names`` a mapping naming every weight it knows and
    ``carry_order`` ``"torch"`` or ``"flax"``."""
    axis_names = options.axis_names
    if axis_names is not None and not isinstance(axis_names, Mapping):
        raise TypeError(f"{module}: axis_names must be None or a mapping from weight name "
                        f"to logical axis names (e.g. recurrent.module_options.AXIS_NAMES); "
                        f"got {type(axis_names).__name__}")
    order = getattr(options, "carry_order", "torch")
    if order not in CARRY_ORDERS:
        raise ValueError(f"{module}: carry_order must be 'torch' (h, c) or 'flax' (c, h); "
                         f"got {order!r}")
    if hasattr(options, "learn_initial_state"):
        checks.check_flag(module, "learn_initial_state", options.learn_initial_state)


def axis_names_of(module: str, axis_names, name: str, ndim: int):
    """The logical axis names of the weight ``name`` (``None`` without ``axis_names``);
    ``ValueError`` where ``axis_names`` lacks it or gives another rank."""
    if axis_names is None:
        return None
    if name not in axis_names:
        raise ValueError(f"{module}: axis_names has no entry for the weight {name!r}; "
                         f"it names {sorted(axis_names)}")
    names = tuple(axis_names[name])
    if len(names) != ndim:
        raise ValueError(f"{module}: axis_names[{name!r}] is {names}, {len(names)} names for "
                         f"a weight of rank {ndim}")
    return names


__all__ = ["AXIS_NAMES", "GRUCellOptions", "GRUOptions", "LSTMCellOptions", "LSTMOptions",
           "MinimalOptions", "RNNCellOptions", "RNNOptions"]
