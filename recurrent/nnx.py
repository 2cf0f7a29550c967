"""Flax NNX modules around the functional layers: ``LSTM``, ``GRU``, ``RNN`` and the
per-step cells ``LSTMCell``, ``GRUCell`` for ``flax.nnx.RNN`` / ``flax.nnx.Bidirectional``.

The modules hold no math of their own. A layer module keeps the functional params of
:func:`recurrent.init_lstm` (``((LSTMParams,) * num_directions,) * num_layers``) with
each array in an ``nnx.Param``, in the attribute ``layers``; ``get_params`` and
``set_params`` read and write them as plain arrays, which is the one way to and from the
functional layer and torch::

    model = recurrent.nnx.LSTM(8, 32, rngs=nnx.Rngs(0))
    state_dict = recurrent.interop.lstm_to_torch(model.get_params())
    model.set_params(recurrent.interop.lstm_from_torch(state_dict))

A cell keeps one direction's params the same way, in the attribute ``weights``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from recurrent import cells, checks, layers
from recurrent.regularize import scan_options
from recurrent.unroll import state_dtype


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _as_params(tree):
    """Functional params wrapped for NNX: each array in an ``nnx.Param``."""
    return nnx.data(jax.tree.map(nnx.Param, tree))


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

    _init = None  # the functional init_* of a subclass
    _layer = None  # the functional layer of a subclass

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, *, bias: bool = True,
                 batch_first: bool = True, deterministic: bool = False, dtype: Any = None,
                 param_dtype: Any = jnp.float32, unroll: int | None = None,
                 rng_collection: str = "dropout", rngs: nnx.Rngs):
        name = type(self).__name__
        checks.check_rate(name, dropout)
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"{name}: rngs must be an nnx.Rngs; got {type(rngs).__name__}")
        self.layers = _as_params(type(self)._init(
            rngs.params(), input_size, hidden_size, num_layers, bidirectional, bias=bias,
            param_dtype=param_dtype, **self._cell_options()))
        self.dropout = dropout
        self.deterministic = deterministic
        self.batch_first = batch_first
        self.dtype = dtype
        self.unroll = unroll
        self.rng_collection = rng_collection
        random = dropout > 0 or any(rate > 0 for rate in self._rates().values())
        self.rngs = _stream(name, rngs, rng_collection).fork() if random else nnx.data(None)

    def _options(self) -> dict:
        """Keyword arguments of the functional layer beyond the common ones."""
        return {}

    def _rates(self) -> dict:
        """The rates of the scan's options (input/recurrent dropout, zoneout) by argument
        name; empty for layers that have none."""
        return {}

    def _initial_state(self, initial_state):
        """The state the layer starts from: ``initial_state`` as given."""
        return initial_state

    def _cell_options(self) -> dict:
        """Options of the cell for ``_init`` beyond ``bias`` and ``param_dtype``."""
        return {}

    def get_params(self):
        """The functional params (plain arrays), as :func:`recurrent.init_lstm` makes them."""
        return _values(self.layers)

    def set_params(self, params) -> None:
        """Loads functional params (e.g. from ``recurrent.interop.lstm_from_torch``); they
        must have this module's structure and shapes, else ``ValueError``."""
        _assign(type(self).__name__, self.layers, params)

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
        options = {**self._options(),
                   **scan_options(type(self).__name__, rates, deterministic,
                                  return_activations)}
        y, state, *activations = type(self)._layer(
            self.get_params(), x, seq_lengths, self._initial_state(initial_state), rate, key,
            self.batch_first, dtype=self.dtype, unroll=self.unroll, **options)
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

    _pair = False  # whether the state is (h, c)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, *,
                 input_dropout: float = 0.0, recurrent_dropout: float = 0.0,
                 hidden_zoneout: float = 0.0, learn_initial_state: bool = False, **kwargs):
        self.input_dropout = input_dropout  # read by _rates() in the base __init__
        self.recurrent_dropout = recurrent_dropout
        self.hidden_zoneout = hidden_zoneout
        for rate_name, rate in self._rates().items():
            checks.check_rate(type(self).__name__, rate, rate_name)
        super().__init__(input_size, hidden_size, num_layers, bidirectional, dropout,
                         **kwargs)
        self.initial_state = nnx.data(None)
        if learn_initial_state:
            self.initial_state = _as_params(layers.zero_state(self.get_params(), self._pair))

    def _rates(self):
        return {"input_dropout": self.input_dropout,
                "recurrent_dropout": self.recurrent_dropout,
                "hidden_zoneout": self.hidden_zoneout}

    def _initial_state(self, initial_state):
        """``initial_state`` if given, else the learned one (broadcast over the batch)."""
        if initial_state is not None or self.initial_state is None:
            return initial_state
        return _values(self.initial_state)


class LSTM(_CellStack):
    """``torch.nn.LSTM`` as an NNX module: a thin wrapper of :func:`recurrent.lstm`.

    Example::

        model = recurrent.nnx.LSTM(8, 32, num_layers=2, dropout=0.1, rngs=nnx.Rngs(0))
        y = model(x)                                   # (batch, time, 32), dropout on
        model.eval()                                   # dropout off
        y, (h_n, c_n) = model(x, return_state=True)

    Args:
      input_size: ``I``, the features of ``x``.
      hidden_size: ``H``.
      num_layers: stacked layers; layer ``l > 0`` reads ``num_directions * H`` features.
      bidirectional: run a backward direction too; ``y`` is ``[forward, backward]``.
      dropout: probability of zeroing an output of every layer but the last (as torch).
      bias: whether the layers have ``b_ih`` and ``b_hh``.
      batch_first: ``x`` and ``y`` put batch first (torch's ``batch_first=True``).
      deterministic: start in evaluation mode (no dropout).
      dtype: matmul dtype (e.g. ``jnp.bfloat16``), ``None`` for the params' dtype.
      param_dtype: dtype of the params.
      unroll: scan steps per loop iteration; ``None``: 8 on a GPU, 1 elsewhere.
      rng_collection: the stream of ``rngs`` that dropout forks.
      rngs: ``nnx.Rngs``; ``params`` initialises the weights as torch does.
      input_dropout, recurrent_dropout: variational dropout (one mask per sequence) of
        each layer's input and of the hidden state fed to the recurrent matmuls.
      hidden_zoneout, cell_zoneout: zoneout rates of ``h`` and ``c``; their expectation
        in evaluation mode. See :func:`recurrent.lstm`.
      learn_initial_state: learn ``(h_0, c_0)``: the attribute ``initial_state``, a pair
        of ``nnx.Param`` of shape ``(num_layers * num_directions, hidden_size)`` (zeros at
        init) broadcast over the batch; an ``initial_state`` passed at call replaces it.
      proj_size, peephole, layer_norm: the cell options of
        :func:`recurrent.cells.lstm_cell`; with ``proj_size=P``, ``y`` and ``h`` are ``P``
        wide per direction.
    """

    _init = staticmethod(layers.init_lstm)
    _layer = staticmethod(layers.lstm)
    _pair = True

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, *,
                 cell_zoneout: float = 0.0, proj_size: int = 0, peephole: bool = False,
                 layer_norm: bool = False, **kwargs):
        # read by _rates() and _cell_options() in the base __init__
        self.cell_zoneout = cell_zoneout
        self.proj_size, self.peephole, self.layer_norm = proj_size, peephole, layer_norm
        super().__init__(input_size, hidden_size, num_layers, bidirectional, dropout,
                         **kwargs)

    def _rates(self):
        return {**super()._rates(), "cell_zoneout": self.cell_zoneout}

    def _cell_options(self):
        return dict(proj_size=self.proj_size, peephole=self.peephole,
                    layer_norm=self.layer_norm)


class GRU(_CellStack):
    """``torch.nn.GRU`` as an NNX module around :func:`recurrent.gru`; arguments as
    :class:`LSTM` (no ``cell_zoneout``), plus ``reset_after`` (``True``: torch's form) and
    ``layer_norm`` (see :func:`recurrent.cells.gru_cell`). The state is ``h``."""

    _init = staticmethod(layers.init_gru)
    _layer = staticmethod(layers.gru)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, *,
                 reset_after: bool = True, layer_norm: bool = False, **kwargs):
        self.layer_norm = layer_norm  # read by _cell_options() in the base __init__
        super().__init__(input_size, hidden_size, num_layers, bidirectional, dropout,
                         **kwargs)
        self.reset_after = reset_after

    def _options(self):
        return {"reset_after": self.reset_after}

    def _cell_options(self):
        return dict(layer_norm=self.layer_norm)


class RNN(_CellStack):
    """``torch.nn.RNN`` as an NNX module around :func:`recurrent.rnn`; arguments as
    :class:`LSTM` (no ``cell_zoneout``), plus ``nonlinearity`` (``"tanh"`` or ``"relu"``).
    The state is ``h``."""

    _init = staticmethod(layers.init_rnn)
    _layer = staticmethod(layers.rnn)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, *,
                 nonlinearity: str = "tanh", **kwargs):
        super().__init__(input_size, hidden_size, num_layers, bidirectional, dropout,
                         **kwargs)
        self.nonlinearity = nonlinearity

    def _options(self):
        return {"nonlinearity": self.nonlinearity}


class MinGRU(_Stack):
    """minGRU (Feng et al. 2024) as an NNX module around :func:`recurrent.mingru`, run in
    parallel over time; arguments as :class:`LSTM`. The state is ``h``."""

    _init = staticmethod(layers.init_mingru)
    _layer = staticmethod(layers.mingru)


class MinLSTM(_Stack):
    """minLSTM (Feng et al. 2024) as an NNX module around :func:`recurrent.minlstm`, run in
    parallel over time; arguments as :class:`LSTM`. The state is ``h``."""

    _init = staticmethod(layers.init_minlstm)
    _layer = staticmethod(layers.minlstm)


class _Cell(nnx.RNNCellBase):
    """One time step of a functional cell, in Flax NNX's cell protocol."""

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 dtype: Any = None, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            checks.check_size(type(self).__name__, name, value)
        self.hidden_size = hidden_size
        self.bias = bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.weights = _as_params(self._cell().init(rngs.params(), input_size))

    def _cell(self) -> cells.Cell:
        raise NotImplementedError

    def get_params(self):
        """This cell's functional params, e.g. an ``LSTMParams`` of plain arrays."""
        return _values(self.weights)

    def set_params(self, params) -> None:
        """Loads one direction's functional params, e.g. ``lstm_params[layer][direction]``."""
        _assign(type(self).__name__, self.weights, params)

    def __call__(self, carry, x):
        """One step: ``x (*batch, input_size)`` and the carry to ``(carry, y (*batch, H))``."""
        params, cell = self.get_params(), self._cell()
        if x.shape[-1] != params.w_ih.shape[1]:
            raise ValueError(f"{type(self).__name__}: x has {x.shape[-1]} features (shape "
                             f"{x.shape}) but the weights expect {params.w_ih.shape[1]}")
        return cell.step(params, carry, cell.project(params, x))

    def initialize_carry(self, input_shape: tuple[int, ...], rngs=None):
        """Zeros for inputs of shape ``(*batch, input_size)``; ``rngs`` is unused."""
        del rngs
        dtype = state_dtype(self.param_dtype)
        return self._cell().initial_carry(tuple(input_shape[:-1]), dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1


class LSTMCell(_Cell):
    """The LSTM cell of :func:`recurrent.lstm`, one step at a time, for ``flax.nnx.RNN``.

    The carry is ``(h, c)``, each ``(*batch, hidden_size)`` (torch's order; note that
    ``flax.nnx.LSTMCell`` uses ``(c, h)``)::

        rnn = flax.nnx.RNN(recurrent.nnx.LSTMCell(8, 32, rngs=nnx.Rngs(0)))
        y = rnn(x)                                     # (batch, time, 32)

    ``proj_size``, ``peephole`` and ``layer_norm`` are the options of
    :func:`recurrent.cells.lstm_cell` (with ``proj_size=P``, ``h`` is ``(*batch, P)``).
    """

    def __init__(self, input_size: int, hidden_size: int, *, proj_size: int = 0,
                 peephole: bool = False, layer_norm: bool = False, **kwargs):
        # read by _cell() in the base __init__
        self.proj_size, self.peephole, self.layer_norm = proj_size, peephole, layer_norm
        super().__init__(input_size, hidden_size, **kwargs)

    def _cell(self):
        return cells.lstm_cell(self.hidden_size, proj_size=self.proj_size,
                               peephole=self.peephole, layer_norm=self.layer_norm,
                               bias=self.bias, dtype=self.dtype, param_dtype=self.param_dtype)


class GRUCell(_Cell):
    """The GRU cell of :func:`recurrent.gru`, one step at a time; the carry is ``h``
    ``(*batch, hidden_size)``. ``reset_after=True`` is torch's form; ``layer_norm`` as in
    :func:`recurrent.cells.gru_cell`."""

    def __init__(self, input_size: int, hidden_size: int, *, reset_after: bool = True,
                 layer_norm: bool = False, **kwargs):
        # read by _cell() in the base __init__
        self.reset_after, self.layer_norm = reset_after, layer_norm
        super().__init__(input_size, hidden_size, **kwargs)

    def _cell(self):
        return cells.gru_cell(self.hidden_size, reset_after=self.reset_after,
                              layer_norm=self.layer_norm, bias=self.bias, dtype=self.dtype,
                              param_dtype=self.param_dtype)

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "MinGRU", "MinLSTM", "RNN"]
