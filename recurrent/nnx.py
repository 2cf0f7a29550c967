"""Flax NNX modules around the functional layers: ``LSTM``, ``GRU``, ``RNN``, ``MinGRU``,
``MinLSTM`` and the per-step cells ``LSTMCell``, ``GRUCell``, ``RNNCell`` for
``flax.nnx.RNN`` / ``flax.nnx.Bidirectional``.

The modules hold no math of their own. A layer module has one ``nnx.Param`` per weight,
named by its place in the stack (:mod:`recurrent.module_params`):
``model.layer_0.forward.w_ih`` etc.; for a 2-layer bidirectional LSTM
``nnx.state(model, nnx.Param)`` has the paths ``('layer_0', 'forward', 'w_ih')``,
``('layer_0', 'forward', 'w_hh')``, ``('layer_0', 'forward', 'b_ih')``, ``('layer_0',
'forward', 'b_hh')``, ``('layer_0', 'backward', 'w_ih')`` ... ``('layer_1', 'backward',
'b_hh')``. Weights of options that are off have no param. ``get_params`` and
``set_params`` read and write them as the functional params, which is the one way to and
from the functional layer and torch::

    model = recurrent.nnx.LSTM(8, 32, rngs=nnx.Rngs(0))
    state_dict = recurrent.interop.lstm_to_torch(model.get_params())
    model.set_params(recurrent.interop.lstm_from_torch(state_dict))

A cell's weights are its own params, ``cell.w_ih``, ``cell.w_hh``... The options of every
module are defined in :mod:`recurrent.module_options` and kept as ``module.options``.
"""

from __future__ import annotations

import re

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from recurrent import cells, checks, layers, module_cells, module_options, module_params
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


def _flax_release() -> tuple[int, ...]:
    """flax's release as integers, e.g. ``(0, 12, 8)`` (a suffix such as ``rc1`` dropped)."""
    return tuple(int(re.match(r"\d*", part).group() or 0)
                 for part in flax.__version__.split(".")[:3])


# The nnx.Param metadata that holds logical axis names: flax 0.12.4 renamed sharding_names
# to out_sharding (the old name warns since; the new one is ignored before).
_SHARDING_KEY = "out_sharding" if _flax_release() >= (0, 12, 4) else "sharding_names"


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _declare(module: nnx.Module, params, axis_names, owner: str) -> None:
    """Sets one ``nnx.Param`` attribute of ``module`` per weight of ``params`` (a params
    NamedTuple), named by its field and skipping ``None`` fields; with ``axis_names``, each
    carries its logical axis names as sharding metadata (all checked before any is made)."""
    weights = {name: value for name, value in params._asdict().items() if value is not None}
    names = {name: module_options.axis_names_of(owner, axis_names, name, value.ndim)
             for name, value in weights.items()}
    for name, value in weights.items():
        metadata = {} if names[name] is None else {_SHARDING_KEY: names[name]}
        setattr(module, name, nnx.Param(value, **metadata))


def _collect(module: nnx.Module, params_type: type):
    """The ``params_type`` NamedTuple of ``module``'s weights (``nnx.Param`` s, ``None``
    where absent)."""
    return params_type(**{name: getattr(module, name, None) for name in params_type._fields})


class _Weights(nnx.Module):
    """The weights of one layer and direction (or a learned initial state), one
    ``nnx.Param`` per field of ``params``."""

    def __init__(self, params, axis_names=None, owner: str = ""):
        self.params_type = type(params)
        _declare(self, params, axis_names, owner)

    def variables(self):
        return _collect(self, self.params_type)


class _Layer(nnx.Module):
    """One stacked layer: ``forward`` (and ``backward``) weights."""

    def __init__(self, layer, axis_names, owner: str):
        for direction, params in zip(module_params.DIRECTIONS, layer, strict=False):
            setattr(self, direction, _Weights(params, axis_names, owner))

    def variables(self) -> tuple:
        return tuple(getattr(self, d).variables() for d in module_params.DIRECTIONS
                     if hasattr(self, d))


def _values(tree):
    """The arrays of a tree of ``nnx.Param``: functional params."""
    return jax.tree.map(lambda v: v.get_value(), tree, is_leaf=_is_variable)


def _assign(module: str, tree, params) -> None:
    """Writes ``params`` into the ``nnx.Param`` leaves of ``tree``; same structure and shapes."""
    want = jax.tree.structure(_values(tree))
    if jax.tree.structure(params) != want:
        raise ValueError(f"{module}.set_params: params have structure "
                         f"{jax.tree.structure(params)}; expected {want} (the module's "
                         f"layers, directions and bias)")
    pairs = list(zip(jax.tree_util.tree_flatten_with_path(params)[0],
                     jax.tree.leaves(tree, is_leaf=_is_variable), strict=True))
    for (path, new), var in pairs:
        if jnp.shape(new) != var.get_value().shape:
            raise ValueError(f"{module}.set_params: params{jax.tree_util.keystr(path)} has "
                             f"shape {jnp.shape(new)}; expected {var.get_value().shape}")
    for (_, new), var in pairs:
        var.set_value(jnp.asarray(new, var.get_value().dtype))


def _stream(name: str, rngs: nnx.Rngs, rng_collection: str):
    """The stream ``rng_collection`` of ``rngs`` (or its ``default`` stream), which dropout
    and zoneout draw from; ``ValueError`` if it has neither."""
    try:
        return rngs[rng_collection]
    except KeyError:
        raise ValueError(f"{name}: dropout and zoneout draw from the rng stream "
                         f"rng_collection={rng_collection!r}, which rngs lacks (and it has no "
                         f"default stream): pass e.g. nnx.Rngs(params=0, "
                         f"{rng_collection}=1)") from None


class _Stack(nnx.Module):
    """A stacked (bidirectional) recurrent layer; subclasses name the functional layer."""

    _kind: str  # the subclass's entry of recurrent.kinds.KINDS (and recurrent.layers.LAYERS)
    _options_type: type = MinimalOptions

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, *,
                 deterministic: bool = False, rng_collection: str = "dropout",
                 rngs: nnx.Rngs, **options):
        name = type(self).__name__
        checks.check_rate(name, dropout)
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"{name}: rngs must be an nnx.Rngs; got {type(rngs).__name__}")
        self.options = module_options.make(name, self._options_type, options)
        module_options.check(name, self.options)
        for rate_name, rate in self._rates().items():
            checks.check_rate(name, rate, rate_name)
        params = layers.LAYERS[self._kind][0](rngs.params(), input_size, hidden_size, num_layers,
                                  bidirectional,
                                  **module_options.options_to(self.options, "init"))
        self.num_layers = num_layers
        for l, layer in enumerate(params):
            setattr(self, f"layer_{l}", _Layer(layer, self.options.axis_names, name))
        self.dropout = dropout
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        random = dropout > 0 or any(rate > 0 for rate in self._rates().values())
        self.rngs = _stream(name, rngs, rng_collection).fork() if random else nnx.data(None)

    def _rates(self) -> dict:
        """The rates of the scan's options (input/recurrent dropout, zoneout) by argument
        name; empty for layers that have none."""
        return {name: getattr(self.options, name) for name in
                ("input_dropout", "recurrent_dropout", "hidden_zoneout", "cell_zoneout")
                if hasattr(self.options, name)}

    def _initial_state(self, initial_state):
        """The state the layer starts from: ``initial_state`` as given."""
        return initial_state

    def _variables(self):
        """The functional params with each array an ``nnx.Param``."""
        return tuple(getattr(self, f"layer_{l}").variables() for l in range(self.num_layers))

    def get_params(self):
        """The functional params (plain arrays), as :func:`recurrent.init_lstm` makes them."""
        return _values(self._variables())

    def set_params(self, params) -> None:
        """Loads functional params (e.g. from ``recurrent.interop.lstm_from_torch``); they
        must have this module's structure and shapes, else ``ValueError``."""
        _assign(type(self).__name__, self._variables(), params)

    def __call__(self, x, seq_lengths=None, initial_state=None, *,
                 deterministic: bool | None = None, rngs=None, return_state: bool = False,
                 return_activations: bool = False):
        """Runs the layer over ``x``.

        Args:
          x: ``(batch, time, input_size)`` (``(time, batch, input_size)`` when
            ``batch_first=False``).
          seq_lengths: ``(batch,)`` integer valid lengths (right padding), or ``None``.
          initial_state: ``(h_0, c_0)`` for the LSTM, ``h_0`` for the GRU and RNN, each
            ``(num_layers * num_directions, batch, hidden_size)``; zeros when ``None``.
          deterministic: ``True`` turns dropout off and zoneout into its expectation;
            overrides the attribute, which ``model.eval()`` / ``model.train()`` set.
          rngs: an ``nnx.Rngs``, ``RngStream`` or key for dropout and zoneout, instead of
            the stream forked at construction.
          return_state: also return the final state.
          return_activations: also return every gate and state at every step
            (``LSTM``, ``GRU``, ``RNN``; see :func:`recurrent.lstm`).

        Returns:
          ``y`` of shape ``(batch, time, num_directions * hidden_size)``, or
          ``(y, state)`` with ``return_state``; ``state`` is shaped as ``initial_state``.
          ``return_activations`` appends ``activations[layer][direction]``, a dict of
          ``(batch, time, hidden_size)`` arrays.
        """
        if deterministic is None:
            deterministic = self.deterministic
        rates = self._rates()
        rate, key = 0.0, None
        if not deterministic and (self.dropout > 0 or any(r > 0 for r in rates.values())):
            rate, key = self.dropout, self._dropout_key(rngs)
        options = {**module_options.options_to(self.options, "step", "layer"),
                   **scan_options(type(self).__name__, rates, deterministic,
                                  return_activations)}
        y, state, *activations = layers.LAYERS[self._kind][1](
            self.get_params(), x, seq_lengths, self._initial_state(initial_state), rate, key,
            **options)
        out = ((y, state) if return_state else (y,)) + tuple(activations)
        return out if len(out) > 1 else y

    def _dropout_key(self, rngs):
        if rngs is None:
            rngs = self.rngs
        if isinstance(rngs, nnx.Rngs):
            return _stream(type(self).__name__, rngs, self.rng_collection)()
        if isinstance(rngs, nnx.RngStream):
            return rngs()
        if isinstance(rngs, jax.Array):
            return rngs
        raise TypeError(f"{type(self).__name__}: dropout needs rngs (an nnx.Rngs, RngStream "
                        f"or key); got {type(rngs).__name__}")

    def set_view(self, deterministic: bool | None = None):
        """Used by ``nnx.view``: ``deterministic=True`` turns dropout off."""
        if deterministic is not None:
            self.deterministic = deterministic


class _CellStack(_Stack):
    """A stack of ``LSTM``, ``GRU`` or ``RNN`` cells, with the options of the scan
    (:func:`recurrent.lstm`) and a learnable initial state."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, **kwargs):
        super().__init__(input_size, hidden_size, num_layers, bidirectional, dropout,
                         **kwargs)
        self.initial_state = nnx.data(None)
        if self.options.learn_initial_state:
            pair = KINDS[self._kind].pair
            state = layers.zero_state(self.get_params(), pair)
            self.initial_state = _Weights(
                module_params.InitialState(*(state if pair else (state,))))

    def _initial_state(self, initial_state):
        """``initial_state`` if given, else the learned one (broadcast over the batch):
        the params ``initial_state.h`` (and ``initial_state.c``), each ``(num_layers *
        num_directions, width)``."""
        if initial_state is not None or self.initial_state is None:
            return initial_state
        state = _values(self.initial_state.variables())
        return (state.h, state.c) if KINDS[self._kind].pair else state.h


_ARGS_DOC = """
    Args:
      input_size: ``I``, the features of ``x``.
      hidden_size: ``H``.
      num_layers: stacked layers; layer ``l > 0`` reads ``num_directions * H`` features.
      bidirectional: run a backward direction too; ``y`` is ``[forward, backward]``.
      dropout: probability of zeroing an output of every layer but the last (as torch).
      deterministic: start in evaluation mode (no dropout).
      rng_collection: the stream of ``rngs`` that dropout and zoneout fork.
      rngs: ``nnx.Rngs``; ``params`` initialises the weights as torch does.
      **options: the options of :mod:`recurrent.module_options` (kept as
        ``module.options``), with the names and defaults of the functional layer and cell:
        ``bias``, ``kernel_init``, ``recurrent_init``, ``bias_init``, ``param_dtype``,
        ``dtype``, ``batch_first``, ``unroll``, ``impl``, ``remat_chunk``,
        ``input_dropout``, ``recurrent_dropout``, ``hidden_zoneout``, the cell options,
        ``learn_initial_state`` (the params ``initial_state.h`` (and ``.c``), each
        ``(num_layers * num_directions, width)``, zeros at init, broadcast over the batch;
        an ``initial_state`` passed at call replaces it) and ``axis_names`` (``None`` or a
        mapping from weight name to logical axis names, e.g.
        :data:`recurrent.module_options.AXIS_NAMES`, set as each ``nnx.Param``'s
        ``out_sharding`` (``sharding_names`` before flax 0.12.4); create the model under
        ``jax.set_mesh(mesh)`` and ``flax.linen.logical_axis_rules(rules)`` to shard the
        weights as they are made).
        An unknown option raises ``TypeError``.
"""


class LSTM(_CellStack):
    """``torch.nn.LSTM`` as an NNX module: a thin wrapper of :func:`recurrent.lstm`.

    Example::

        model = recurrent.nnx.LSTM(8, 32, num_layers=2, dropout=0.1, rngs=nnx.Rngs(0))
        y = model(x)                                   # (batch, time, 32), dropout on
        model.eval()                                   # dropout off
        y, (h_n, c_n) = model(x, return_state=True)

    The cell options ``proj_size``, ``peephole``, ``layer_norm``, ``forget_bias`` are those
    of :func:`recurrent.cells.lstm_cell`; with ``proj_size=P``, ``y`` and ``h`` are ``P``
    wide per direction. ``cell_zoneout`` is zoneout of ``c``.
    """

    _kind = "lstm"
    _options_type = LSTMOptions


LSTM.__doc__ = (LSTM.__doc__ or "") + _ARGS_DOC


class GRU(_CellStack):
    """``torch.nn.GRU`` as an NNX module around :func:`recurrent.gru`; arguments as
    :class:`LSTM` (no ``cell_zoneout``), plus ``reset_after`` (``True``: torch's form) and
    ``layer_norm`` (see :func:`recurrent.cells.gru_cell`). The state is ``h``."""

    _kind = "gru"
    _options_type = GRUOptions


class RNN(_CellStack):
    """``torch.nn.RNN`` as an NNX module around :func:`recurrent.rnn`; arguments as
    :class:`LSTM` (no ``cell_zoneout``), plus ``nonlinearity`` (``"tanh"`` or ``"relu"``).
    The state is ``h``."""

    _kind = "rnn"
    _options_type = RNNOptions


class MinGRU(_Stack):
    """minGRU (Feng et al. 2024) as an NNX module around :func:`recurrent.mingru`, run in
    parallel over time; arguments as :class:`LSTM` without the scan's. The state is ``h``."""

    _kind = "mingru"


class MinLSTM(_Stack):
    """minLSTM (Feng et al. 2024) as an NNX module around :func:`recurrent.minlstm`, run in
    parallel over time; arguments as :class:`MinGRU`. The state is ``h``."""

    _kind = "minlstm"


class _Cell(nnx.RNNCellBase):
    """One time step of a functional cell, in Flax NNX's cell protocol."""

    _options_type: type = LSTMCellOptions
    _kind: str  # the subclass's entry of recurrent.kinds.KINDS

    def __init__(self, input_size: int, hidden_size: int, *, rngs: nnx.Rngs, **options):
        name = type(self).__name__
        for arg, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            checks.check_size(name, arg, value)
        self.options = module_options.make(name, self._options_type, options)
        module_options.check(name, self.options)
        self.hidden_size = hidden_size
        params = self._cell().init(rngs.params(), input_size)
        self.params_type = type(params)
        _declare(self, params, self.options.axis_names, name)

    def _cell(self) -> cells.Cell:
        return KINDS[self._kind].cell(self.hidden_size,
                                      **module_options.options_to(self.options, "init", "step"))

    def get_params(self):
        """This cell's functional params, e.g. an ``LSTMParams`` of plain arrays."""
        return _values(_collect(self, self.params_type))

    def set_params(self, params) -> None:
        """Loads one direction's functional params, e.g. ``lstm_params[layer][direction]``."""
        _assign(type(self).__name__, _collect(self, self.params_type), params)

    def __call__(self, carry, x):
        """One step: ``x (*batch, input_size)`` and the carry to ``(carry, y)``, ``y (*batch,
        H)`` in ``dtype`` (the carry stays in the params' dtype, at least float32).
        ``ValueError`` where ``x``'s features are not the weights', or the carry's
        structure or shapes are not those of ``initialize_carry`` for ``x``."""
        name, params = type(self).__name__, self.get_params()
        if x.shape[-1] != params.w_ih.shape[1]:
            raise ValueError(f"{name}: x has {x.shape[-1]} features (shape "
                             f"{x.shape}) but the weights expect {params.w_ih.shape[1]}")
        return module_cells.step(name, self._cell(), params, carry, x,
                                 getattr(self.options, "carry_order", "torch"),
                                 self.options.dtype)

    def initialize_carry(self, input_shape: tuple[int, ...], rngs=None):
        """The carry for inputs of shape ``(*batch, input_size)``: zeros, or with
        ``carry_init`` its ``carry_init(key, shape, dtype)`` with keys from ``rngs`` (an
        ``nnx.Rngs``, whose ``carry`` stream is used, an ``RngStream`` or a key)."""
        key = None
        if self.options.carry_init is not None:
            if isinstance(rngs, nnx.Rngs):
                rngs = rngs["carry"]
            if isinstance(rngs, nnx.RngStream):
                rngs = rngs()
            if not isinstance(rngs, jax.Array):
                raise ValueError(f"{type(self).__name__}: carry_init needs rngs (an "
                                 f"nnx.Rngs, RngStream or key); got {type(rngs).__name__}")
            key = rngs
        return module_cells.initial_carry(self._cell(), input_shape, self.options.param_dtype,
                                          self.options.carry_init, key,
                                          getattr(self.options, "carry_order", "torch"))

    @property
    def num_feature_axes(self) -> int:
        return 1


class LSTMCell(_Cell):
    """The LSTM cell of :func:`recurrent.lstm`, one step at a time, for ``flax.nnx.RNN``.

    The carry is ``(h, c)``, each ``(*batch, hidden_size)``: torch's order. With
    ``carry_order="flax"`` it is ``(c, h)``, that of ``flax.nnx.LSTMCell`` and
    ``OptimizedLSTMCell``, so the cell drops in where they stood. A carry of another
    structure or shape raises ``ValueError``::

        rnn = flax.nnx.RNN(recurrent.nnx.LSTMCell(8, 32, rngs=nnx.Rngs(0)))
        y = rnn(x)                                     # (batch, time, 32)

    Options (keyword arguments, :class:`recurrent.module_options.LSTMCellOptions`): the
    cell options of :class:`LSTM`, ``carry_order`` and ``carry_init``. The weights are the
    params ``w_ih``, ``w_hh``, ``b_ih``, ``b_hh`` (...) of the cell.
    """

    _options_type = LSTMCellOptions
    _kind = "lstm"


class GRUCell(_Cell):
    """The GRU cell of :func:`recurrent.gru`, one step at a time; the carry is ``h``
    ``(*batch, hidden_size)``. ``reset_after=True`` is torch's form; ``layer_norm`` as in
    :func:`recurrent.cells.gru_cell`; other options as :class:`LSTMCell`."""

    _options_type = GRUCellOptions
    _kind = "gru"


class RNNCell(_Cell):
    """The Elman cell of :func:`recurrent.rnn` (``flax.nnx.SimpleCell``'s place), one step
    at a time; the carry is ``h`` ``(*batch, hidden_size)``; ``nonlinearity`` is ``"tanh"``
    or ``"relu"``; other options as :class:`LSTMCell`."""

    _options_type = RNNCellOptions
    _kind = "rnn"


__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "MinGRU", "MinLSTM", "RNN", "RNNCell"]
