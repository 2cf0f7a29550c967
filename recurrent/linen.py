"""Flax Linen modules around the functional layers: ``LSTM``, ``GRU``, ``RNN`` and the
per-step cells ``LSTMCell``, ``GRUCell`` for ``flax.linen.RNN`` / ``flax.linen.Bidirectional``.

The modules hold no math of their own. A layer module stores the functional params of
:func:`recurrent.init_lstm` (``((LSTMParams,) * num_directions,) * num_layers``) as one
param named ``"layers"``, so the module's variables, the functional params and a torch
state dict convert in one step each::

    variables = model.init(key, x)
    params = variables["params"]["layers"]              # what recurrent.lstm takes
    state_dict = recurrent.interop.lstm_to_torch(params)
    variables = {"params": {"layers": recurrent.interop.lstm_from_torch(state_dict)}}

A cell stores one direction's params (an ``LSTMParams``) as the param ``"weights"``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from recurrent import cells, checks, layers
from recurrent.regularize import scan_options
from recurrent.unroll import state_dtype


class _Stack(nn.Module):
    """A stacked (bidirectional) recurrent layer; subclasses name the functional layer."""

    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    deterministic: bool | None = None
    bias: bool = True
    batch_first: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    unroll: int | None = None
    rng_collection: str = "dropout"

    def _functions(self):
        """``(init_fn, layer_fn, layer_options)`` of the functional layer."""
        raise NotImplementedError

    def _rates(self) -> dict:
        """The rates of the scan's options (input/recurrent dropout, zoneout) by argument
        name; empty for layers that have none."""
        return {}

    def _initial_state(self, params, initial_state):
        """The state the layer starts from: ``initial_state`` as given."""
        del params
        return initial_state

    def _cell_options(self) -> dict:
        """Options of the cell that ``init_fn`` takes beyond ``bias`` and ``param_dtype``."""
        return {}

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
        init_fn, layer_fn, options = self._functions()
        params = self.param(
            "layers",
            lambda key: init_fn(key, x.shape[-1], self.hidden_size, self.num_layers,
                                self.bidirectional, bias=self.bias,
                                param_dtype=self.param_dtype, **self._cell_options()))
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
        options = {**options, **scan_options(name, rates, deterministic, return_activations)}
        y, state, *activations = layer_fn(
            params, x, seq_lengths, self._initial_state(params, initial_state), rate, key,
            self.batch_first, dtype=self.dtype, unroll=self.unroll, **options)
        out = ((y, state) if return_state else (y,)) + tuple(activations)
        return out if len(out) > 1 else y


class _CellStack(_Stack):
    """A stack of ``LSTM``, ``GRU`` or ``RNN`` cells, with the options of the scan
    (:func:`recurrent.lstm`) and a learnable initial state."""

    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    hidden_zoneout: float = 0.0
    learn_initial_state: bool = False

    _pair = False  # whether the state is (h, c)

    def _rates(self):
        return {"input_dropout": self.input_dropout,
                "recurrent_dropout": self.recurrent_dropout,
                "hidden_zoneout": self.hidden_zoneout}

    def _initial_state(self, params, initial_state):
        """``initial_state`` if given, else the learned one when ``learn_initial_state``:
        the param ``"initial_state"``, zeros at init, each array ``(num_layers *
        num_directions, width)`` and broadcast over the batch."""
        if not self.learn_initial_state or initial_state is not None:
            return initial_state
        return self.param("initial_state", lambda key: layers.zero_state(params, self._pair))


class LSTM(_CellStack):
    """``torch.nn.LSTM`` as a Linen module: a thin wrapper of :func:`recurrent.lstm`.

    Example::

        model = recurrent.linen.LSTM(32, num_layers=2, dropout=0.1)
        variables = model.init(jax.random.key(0), x)                # x (batch, time, I)
        y = model.apply(variables, x, deterministic=False,
                        rngs={"dropout": jax.random.key(1)})        # (batch, time, 32)
        y, (h_n, c_n) = model.apply(variables, x, deterministic=True, return_state=True)

    Attributes:
      hidden_size: ``H``.
      num_layers: stacked layers; layer ``l > 0`` reads ``num_directions * H`` features.
      bidirectional: run a backward direction too; ``y`` is ``[forward, backward]``.
      dropout: probability of zeroing an output of every layer but the last (as torch).
      deterministic: default for the call's ``deterministic``.
      bias: whether the layers have ``b_ih`` and ``b_hh``.
      batch_first: ``x`` and ``y`` put batch first (torch's ``batch_first=True``).
      dtype: matmul dtype (e.g. ``jnp.bfloat16``), ``None`` for the params' dtype.
      param_dtype: dtype of the params.
      unroll: scan steps per loop iteration; ``None``: 8 on a GPU, 1 elsewhere.
      rng_collection: the rng stream dropout draws from.
      input_dropout, recurrent_dropout: variational dropout (one mask per sequence) of
        each layer's input and of the hidden state fed to the recurrent matmuls.
      hidden_zoneout, cell_zoneout: zoneout rates of ``h`` and ``c``; their expectation
        when ``deterministic``. See :func:`recurrent.lstm`.
      learn_initial_state: learn ``(h_0, c_0)``: the param ``"initial_state"``, a pair of
        ``(num_layers * num_directions, hidden_size)`` arrays (zeros at init) broadcast
        over the batch; an ``initial_state`` passed at call replaces it.
      proj_size, peephole, layer_norm: the cell options of
        :func:`recurrent.cells.lstm_cell`; with ``proj_size=P``, ``y`` and ``h`` are ``P``
        wide per direction.
    """

    cell_zoneout: float = 0.0
    proj_size: int = 0
    peephole: bool = False
    layer_norm: bool = False

    _pair = True

    def _functions(self):
        return layers.init_lstm, layers.lstm, {}

    def _rates(self):
        return {**super()._rates(), "cell_zoneout": self.cell_zoneout}

    def _cell_options(self):
        return dict(proj_size=self.proj_size, peephole=self.peephole,
                    layer_norm=self.layer_norm)


class GRU(_CellStack):
    """``torch.nn.GRU`` as a Linen module around :func:`recurrent.gru`; attributes as
    :class:`LSTM` (no ``cell_zoneout``), plus ``reset_after`` (``True``: torch's form) and
    ``layer_norm`` (see :func:`recurrent.cells.gru_cell`). The state is ``h``."""

    reset_after: bool = True
    layer_norm: bool = False

    def _functions(self):
        return layers.init_gru, layers.gru, {"reset_after": self.reset_after}

    def _cell_options(self):
        return dict(layer_norm=self.layer_norm)


class RNN(_CellStack):
    """``torch.nn.RNN`` as a Linen module around :func:`recurrent.rnn`; attributes as
    :class:`LSTM` (no ``cell_zoneout``), plus ``nonlinearity`` (``"tanh"`` or ``"relu"``).
    The state is ``h``."""

    nonlinearity: str = "tanh"

    def _functions(self):
        return layers.init_rnn, layers.rnn, {"nonlinearity": self.nonlinearity}


class MinGRU(_Stack):
    """minGRU (Feng et al. 2024) as a Linen module around :func:`recurrent.mingru`, run in
    parallel over time; attributes as :class:`LSTM`. The state is ``h``."""

    def _functions(self):
        return layers.init_mingru, layers.mingru, {}


class MinLSTM(_Stack):
    """minLSTM (Feng et al. 2024) as a Linen module around :func:`recurrent.minlstm`, run in
    parallel over time; attributes as :class:`LSTM`. The state is ``h``."""

    def _functions(self):
        return layers.init_minlstm, layers.minlstm, {}


class _Cell(nn.RNNCellBase):
    """One time step of a functional cell, in Flax's cell protocol."""

    hidden_size: int
    bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def _cell(self) -> cells.Cell:
        raise NotImplementedError

    @nn.compact
    def __call__(self, carry, x):
        """One step: ``x (*batch, input_size)`` and the carry to ``(carry, y (*batch, H))``."""
        cell = self._cell()
        params = self.param("weights", lambda key: cell.init(key, x.shape[-1]))
        return cell.step(params, carry, cell.project(params, x))

    @nn.nowrap
    def initialize_carry(self, rng, input_shape: tuple[int, ...]):
        """Zeros for inputs of shape ``(*batch, input_size)``; ``rng`` is unused."""
        del rng
        checks.check_size(type(self).__name__, "hidden_size", self.hidden_size)
        dtype = state_dtype(self.param_dtype)
        return self._cell().initial_carry(tuple(input_shape[:-1]), dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1


class LSTMCell(_Cell):
    """The LSTM cell of :func:`recurrent.lstm`, one step at a time, for ``flax.linen.RNN``.

    The carry is ``(h, c)``, each ``(*batch, hidden_size)`` (torch's order; note that
    ``flax.linen.LSTMCell`` uses ``(c, h)``). Weights: the param ``"weights"``, an
    ``LSTMParams`` equal to ``variables["params"]["layers"][l][d]`` of :class:`LSTM`::

        rnn = flax.linen.RNN(recurrent.linen.LSTMCell(32))
        y = rnn.apply({"params": {"cell": {"weights": lstm_params[0][0]}}}, x)

    ``proj_size``, ``peephole`` and ``layer_norm`` are the options of
    :func:`recurrent.cells.lstm_cell` (with ``proj_size=P``, ``h`` is ``(*batch, P)``).
    """

    proj_size: int = 0
    peephole: bool = False
    layer_norm: bool = False

    def _cell(self):
        return cells.lstm_cell(self.hidden_size, proj_size=self.proj_size,
                               peephole=self.peephole, layer_norm=self.layer_norm,
                               bias=self.bias, dtype=self.dtype, param_dtype=self.param_dtype)


class GRUCell(_Cell):
    """The GRU cell of :func:`recurrent.gru`, one step at a time; the carry is ``h``
    ``(*batch, hidden_size)``. ``reset_after=True`` is torch's form; ``layer_norm`` as in
    :func:`recurrent.cells.gru_cell`."""

    reset_after: bool = True
    layer_norm: bool = False

    def _cell(self):
        return cells.gru_cell(self.hidden_size, reset_after=self.reset_after,
                              layer_norm=self.layer_norm, bias=self.bias, dtype=self.dtype,
                              param_dtype=self.param_dtype)

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "MinGRU", "MinLSTM", "RNN"]
