"""Flax Linen modules around the functional layers: ``LSTM``, ``GRU``, ``RNN``, ``MinGRU``,
``MinLSTM`` and the per-step cells ``LSTMCell``, ``GRUCell``, ``RNNCell`` for
``flax.linen.RNN`` / ``flax.linen.Bidirectional``.

The modules hold no math of their own. A layer module has one param per weight, named by
its place in the stack (:mod:`recurrent.module_params`); a 2-layer bidirectional LSTM's
``flax.traverse_util.flatten_dict(variables["params"])`` has the keys::

    ('layer_0', 'forward', 'w_ih')    (32, 8)     # (4 * hidden_size, input_size)
    ('layer_0', 'forward', 'w_hh')    (32, 8)     # (4 * hidden_size, hidden_size)
    ('layer_0', 'forward', 'b_ih')    (32,)
    ('layer_0', 'forward', 'b_hh')    (32,)
    ('layer_0', 'backward', 'w_ih')   (32, 8)
    ...
    ('layer_1', 'backward', 'b_hh')   (32,)

with ``hidden_size=8`` and 8 input features (layer 1 reads ``2 * hidden_size``). Weights
of options that are off have no param. The module converts them to the functional params
inside ``__call__``; ``get_params`` and ``make_params`` convert in one step each::

    params = model.get_params(variables["params"])     # what recurrent.lstm takes
    state_dict = recurrent.interop.lstm_to_torch(params)
    variables = {"params": model.make_params(recurrent.interop.lstm_from_torch(state_dict))}

A cell's params are its weights: ``w_ih``, ``w_hh``, ``b_ih``, ``b_hh`` (...) of one
direction. The options of every module are defined in :mod:`recurrent.module_options`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax

from recurrent import (
    cells,
    checks,
    layers,
    module_cells,
    module_options,
    module_params,
)
from recurrent.kinds import KINDS
from recurrent.module_options import (
    GRUCellOptions,
    GRUOptions,
    LSTMCellOptions,
    LSTMOptions,
    MinimalOptions,
    RNNCellOptions,
    RNNOptions,
)
from recurrent.regularize import scan_options


def _field(make: Callable, name: str, key):
    return getattr(make(key), name)


def _declare(module: nn.Module, make: Callable, axis_names, owner: str):
    """Declares one param of ``module`` per weight of ``make(key)`` (a params NamedTuple),
    named by its field and skipping ``None`` fields; returns the NamedTuple of the params.
    With ``axis_names``, each param carries its logical axis names."""
    shapes = jax.eval_shape(lambda: make(jax.random.key(0)))
    values = {}
    for name, shape in shapes._asdict().items():
        if shape is None:
            continue
        init = functools.partial(_field, make, name)
        names = module_options.axis_names_of(owner, axis_names, name, len(shape.shape))
        if names is not None:
            init = nn.with_logical_partitioning(init, names)
        values[name] = module.param(name, init)
    return type(shapes)(**{name: values.get(name) for name in shapes._fields})


class _Weights(nn.Module):
    """The params of one NamedTuple made by ``make(key)``, one param per field."""

    make: Callable
    axis_names: Any = None
    owner: str = ""

    @nn.compact
    def __call__(self):
        return _declare(self, self.make, self.axis_names, self.owner)


class _Layer(nn.Module):
    """One stacked layer: a ``_Weights`` named ``forward`` (and ``backward``)."""

    makes: tuple
    axis_names: Any = None
    owner: str = ""

    @nn.compact
    def __call__(self):
        return tuple(_Weights(make, self.axis_names, self.owner,
                              name=module_params.DIRECTIONS[d])()
                     for d, make in enumerate(self.makes))


class _Stack(nn.Module):
    """A stacked (bidirectional) recurrent layer; subclasses name the functional layer."""

    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    _kind: ClassVar[str]  # the subclass's entry of recurrent.kinds.KINDS

    @nn.nowrap
    def _functions(self) -> tuple[Callable, Callable, Callable, type]:
        """``(init_fn, layer_fn, make_cell, params_type)`` of the functional layer, from the
        kind's entry in :data:`recurrent.kinds.KINDS`."""
        kind = KINDS[self._kind]
        return (*layers.LAYERS[self._kind], kind.cell, kind.params_type)

    @nn.nowrap
    def _rates(self) -> dict:
        """The rates of the scan's options (input/recurrent dropout, zoneout) by argument
        name; empty for layers that have none."""
        return {}

    @nn.nowrap
    def get_params(self, params):
        """The functional params (``recurrent.lstm``'s) of this module's ``params``
        (``variables["params"]``)."""
        return module_params.to_functional(params, self._functions()[3])

    @nn.nowrap
    def make_params(self, params, initial_state=None) -> dict:
        """This module's ``variables["params"]`` holding functional ``params`` (e.g. from
        ``recurrent.interop.lstm_from_torch``) and a learned ``initial_state``."""
        return module_params.to_tree(params, initial_state)

    def _params(self, input_size: int):
        """Declares the params (a ``_Layer`` named ``layer_{l}`` per layer) and returns
        them as functional params."""
        init_fn, _, make_cell, _ = self._functions()
        options = module_options.options_to(self, "init")
        shapes = jax.eval_shape(  # checks the sizes and options as init_fn does
            lambda: init_fn(jax.random.key(0), input_size, self.hidden_size,
                            self.num_layers, self.bidirectional, **options))
        cell = make_cell(self.hidden_size, **options)
        return tuple(
            _Layer(tuple(functools.partial(cell.init, input_size=p.w_ih.shape[1])
                         for p in layer), self.axis_names, type(self).__name__,
                   name=f"layer_{l}")()
            for l, layer in enumerate(shapes))

    def _initial_state(self, params, initial_state):
        """The state the layer starts from: ``initial_state`` as given."""
        del params
        return initial_state

    @nn.compact
    def __call__(self, x, seq_lengths=None, initial_state=None, *,
                 deterministic: bool | None = None, return_state: bool = False,
                 return_activations: bool = False):
        """Runs the layer over ``x``.

        Args:
          x: ``(batch, time, input_size)`` (``(time, batch, input_size)`` when
            ``batch_first=False``); ``input_size`` is read from it at ``init``.
          seq_lengths: ``(batch,)`` integer valid lengths (right padding), or ``None``.
          initial_state: ``(h_0, c_0)`` for the LSTM, ``h_0`` for the GRU and RNN, each
            ``(num_layers * num_directions, batch, hidden_size)``; zeros when ``None``.
          deterministic: ``True`` turns dropout off (evaluation) and zoneout into its
            expectation; overrides the attribute. Needed, here or as the attribute, only
            when a dropout or zoneout rate is positive; training then draws from the
            ``rng_collection`` stream (``rngs={"dropout": key}``).
          return_state: also return the final state.
          return_activations: also return every gate and state at every step
            (``LSTM``, ``GRU``, ``RNN``; see :func:`recurrent.lstm`).

        Returns:
          ``y`` of shape ``(batch, time, num_directions * hidden_size)``, or
          ``(y, state)`` with ``return_state``; ``state`` is shaped as ``initial_state``.
          ``return_activations`` appends ``activations[layer][direction]``, a dict of
          ``(batch, time, hidden_size)`` arrays.
        """
        name = type(self).__name__
        checks.check_rate(name, self.dropout)
        module_options.check(name, self)
        _, layer_fn, _, _ = self._functions()
        if getattr(x, "ndim", 0) < 1:
            raise ValueError(f"{name}: x must be an array of shape (batch, time, features); "
                             f"got {getattr(x, 'shape', type(x).__name__)}")
        params = self._params(x.shape[-1])
        if deterministic is None:
            deterministic = self.deterministic
        rates = self._rates()
        for rate_name, rate in rates.items():
            checks.check_rate(name, rate, rate_name)
        random = {k: v for k, v in {"dropout": self.dropout, **rates}.items() if v > 0}
        if random and deterministic is None:
            shown = ", ".join(f"{k}={v}" for k, v in random.items())
            raise ValueError(f"{name}: {shown} needs deterministic=True "
                             f"(evaluation) or False (training), as an attribute or at call")
        rate, key = 0.0, None
        if random and not deterministic:
            rate, key = self.dropout, self.make_rng(self.rng_collection)
        options = {**module_options.options_to(self, "step", "layer"),
                   **scan_options(name, rates, deterministic, return_activations)}
        y, state, *activations = layer_fn(
            params, x, seq_lengths, self._initial_state(params, initial_state), rate, key,
            **options)
        out = ((y, state) if return_state else (y,)) + tuple(activations)
        return out if len(out) > 1 else y


class _CellStack(_Stack):
    """A stack of ``LSTM``, ``GRU`` or ``RNN`` cells, with the options of the scan
    (:func:`recurrent.lstm`) and a learnable initial state."""

    @nn.nowrap
    def _rates(self):
        return {name: getattr(self, name) for name in
                ("input_dropout", "recurrent_dropout", "hidden_zoneout", "cell_zoneout")
                if hasattr(self, name)}

    def _initial_state(self, params, initial_state):
        """``initial_state`` if given, else the learned one when ``learn_initial_state``:
        the params ``initial_state/h`` (and ``initial_state/c``), zeros at init, each
        ``(num_layers * num_directions, width)`` and broadcast over the batch."""
        if not getattr(self, "learn_initial_state", False) or initial_state is not None:
            return initial_state
        pair = KINDS[self._kind].pair

        def zeros(key):
            del key
            state = layers.zero_state(params, pair)
            return module_params.InitialState(*(state if pair else (state,)))

        state = _Weights(zeros, name="initial_state")()
        return (state.h, state.c) if pair else state.h


_OPTIONS_DOC = """
    Attributes:
      hidden_size: ``H``.
      num_layers: stacked layers; layer ``l > 0`` reads ``num_directions * H`` features.
      bidirectional: run a backward direction too; ``y`` is ``[forward, backward]``.
      dropout: probability of zeroing an output of every layer but the last (as torch).
      deterministic: default for the call's ``deterministic``.
      rng_collection: the rng stream dropout and zoneout draw from.

    and the options of :mod:`recurrent.module_options` (all keyword-only), with the names
    and defaults of the functional layer and cell: ``bias``, ``kernel_init``,
    ``recurrent_init``, ``bias_init``, ``param_dtype``, ``dtype``, ``batch_first``,
    ``unroll``, ``impl``, ``remat_chunk``, ``input_dropout``, ``recurrent_dropout``,
    ``hidden_zoneout``, the cell options, and:

      learn_initial_state: learn the initial state: the params ``initial_state/h`` (and
        ``initial_state/c``), each ``(num_layers * num_directions, width)`` (zeros at
        init) broadcast over the batch; an ``initial_state`` passed at call replaces it.
      axis_names: ``None``, or a mapping from weight name to logical axis names (e.g.
        :data:`recurrent.module_options.AXIS_NAMES`): each param is then
        ``nn.LogicallyPartitioned``, for ``nn.get_partition_spec`` and
        ``nn.logical_to_mesh_sharding``.
"""


class LSTM(_CellStack, LSTMOptions):
    """``torch.nn.LSTM`` as a Linen module: a thin wrapper of :func:`recurrent.lstm`.

    Example::

        model = recurrent.linen.LSTM(32, num_layers=2, dropout=0.1)
        variables = model.init(jax.random.key(0), x)                # x (batch, time, I)
        y = model.apply(variables, x, deterministic=False,
                        rngs={"dropout": jax.random.key(1)})        # (batch, time, 32)
        y, (h_n, c_n) = model.apply(variables, x, deterministic=True, return_state=True)

    The cell options ``proj_size``, ``peephole``, ``layer_norm``, ``forget_bias`` are those
    of :func:`recurrent.cells.lstm_cell`; with ``proj_size=P``, ``y`` and ``h`` are ``P``
    wide per direction. ``cell_zoneout`` is zoneout of ``c``.
    """

    _kind = "lstm"


LSTM.__doc__ = (LSTM.__doc__ or "") + _OPTIONS_DOC


class GRU(_CellStack, GRUOptions):
    """``torch.nn.GRU`` as a Linen module around :func:`recurrent.gru`; attributes as
    :class:`LSTM` (no ``cell_zoneout``), plus ``reset_after`` (``True``: torch's form) and
    ``layer_norm`` (see :func:`recurrent.cells.gru_cell`). The state is ``h``."""

    _kind = "gru"


class RNN(_CellStack, RNNOptions):
    """``torch.nn.RNN`` as a Linen module around :func:`recurrent.rnn`; attributes as
    :class:`LSTM` (no ``cell_zoneout``), plus ``nonlinearity`` (``"tanh"`` or ``"relu"``).
    The state is ``h``."""

    _kind = "rnn"


class MinGRU(_Stack, MinimalOptions):
    """minGRU (Feng et al. 2024) as a Linen module around :func:`recurrent.mingru`, run in
    parallel over time; attributes as :class:`LSTM` without the scan's. The state is
    ``h``."""

    _kind = "mingru"


class MinLSTM(_Stack, MinimalOptions):
    """minLSTM (Feng et al. 2024) as a Linen module around :func:`recurrent.minlstm`, run in
    parallel over time; attributes as :class:`MinGRU`. The state is ``h``."""

    _kind = "minlstm"


class _Cell(nn.RNNCellBase):
    """One time step of a functional cell, in Flax's cell protocol."""

    hidden_size: int

    _kind: ClassVar[str]  # the subclass's entry of recurrent.kinds.KINDS

    @nn.nowrap
    def _cell(self) -> cells.Cell:
        """The functional cell of the kind, with this module's options."""
        return KINDS[self._kind].cell(self.hidden_size,
                                      **module_options.options_to(self, "init", "step"))

    @nn.compact
    def __call__(self, carry, x):
        """One step: ``x (*batch, input_size)`` and the carry to ``(carry, y)``, ``y (*batch,
        H)`` in ``dtype`` (the carry stays in the params' dtype, at least float32).
        ``ValueError`` where the carry's structure or shapes are not those of
        ``initialize_carry`` for ``x``."""
        name = type(self).__name__
        module_options.check(name, self)
        cell = self._cell()
        params = _declare(self, functools.partial(cell.init, input_size=x.shape[-1]),
                          self.axis_names, name)
        return module_cells.step(name, cell, params, carry, x,
                                 getattr(self, "carry_order", "torch"), self.dtype)

    @nn.nowrap
    def initialize_carry(self, rng, input_shape: tuple[int, ...]):
        """The carry for inputs of shape ``(*batch, input_size)``: ``carry_init(key, shape,
        dtype)`` of each of its arrays (one key each, split from ``rng``), zeros when
        ``carry_init`` is ``None``."""
        checks.check_size(type(self).__name__, "hidden_size", self.hidden_size)
        return module_cells.initial_carry(self._cell(), input_shape, self.param_dtype,
                                          self.carry_init, rng,
                                          getattr(self, "carry_order", "torch"))

    @property
    def num_feature_axes(self) -> int:
        return 1


class LSTMCell(_Cell, LSTMCellOptions):
    """The LSTM cell of :func:`recurrent.lstm`, one step at a time, for ``flax.linen.RNN``.

    The carry is ``(h, c)``, each ``(*batch, hidden_size)``: torch's order. With
    ``carry_order="flax"`` it is ``(c, h)``, that of ``flax.linen.LSTMCell`` and
    ``OptimizedLSTMCell``, so the cell drops in where they stood. A carry of another
    structure or shape raises ``ValueError``. The params are one direction's weights,
    ``w_ih``, ``w_hh``, ``b_ih``, ``b_hh`` (as ``layer_{l}/{direction}`` of :class:`LSTM`)::

        rnn = flax.linen.RNN(recurrent.linen.LSTMCell(32))
        y = rnn.apply({"params": {"cell": lstm_variables["params"]["layer_0"]["forward"]}}, x)

    Options as :class:`LSTM`'s cell options (:mod:`recurrent.module_options`), and
    ``carry_init`` for ``initialize_carry``.
    """

    _kind = "lstm"


class GRUCell(_Cell, GRUCellOptions):
    """The GRU cell of :func:`recurrent.gru`, one step at a time; the carry is ``h``
    ``(*batch, hidden_size)``. ``reset_after=True`` is torch's form; ``layer_norm`` as in
    :func:`recurrent.cells.gru_cell`; other options as :class:`LSTMCell`."""

    _kind = "gru"


class RNNCell(_Cell, RNNCellOptions):
    """The Elman cell of :func:`recurrent.rnn` (``flax.linen.SimpleCell``'s place), one step
    at a time; the carry is ``h`` ``(*batch, hidden_size)``; ``nonlinearity`` is
    ``"tanh"`` or ``"relu"``; other options as :class:`LSTMCell`."""

    _kind = "rnn"


__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "MinGRU", "MinLSTM", "RNN", "RNNCell"]
