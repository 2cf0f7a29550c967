"""The table of cell kinds: what the layers, the checks, torch interop, the ONNX export, the
GPU kernels' dispatch and the CLI know of each kind, in one entry per kind.

Adding a cell kind means writing its cell (``cell(hidden_size, **options) -> Cell``), one
:class:`Kind` in :data:`KINDS`, and its ``init_<name>`` and ``<name>`` layer functions in
:mod:`recurrent.layers` (the public API, which reads the entry). Everything else (the
shapes the params must have, whether the state is a pair, the options read off the params)
comes from the entry and the cell.

=======  ==========  =======  ===============  =================  ==========
kind     state       impls    read off params  at call time       torch/ONNX
=======  ==========  =======  ===============  =================  ==========
lstm     ``(h, c)``  scan     ``proj_size``,   --                 LSTM
                              ``peephole``,
                              ``layer_norm``
gru      ``h``       scan     ``layer_norm``   ``reset_after``    GRU
rnn      ``h``       scan     --               ``nonlinearity``   RNN
mingru   ``h``       linear   --               --                 --
minlstm  ``h``       linear   --               --                 --
=======  ==========  =======  ===============  =================  ==========

(``bias`` is read off the params of every kind.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from recurrent.cells import (
    Cell,
    GRUParams,
    LSTMParams,
    RNNParams,
    gru_cell,
    gru_options,
    lstm_cell,
    lstm_options,
    rnn_cell,
)
from recurrent.minimal import MinGRUParams, MinLSTMParams, mingru_cell, minlstm_cell

#: The ``impl`` values of the kinds whose step is nonlinear in the carry, and of the
#: linear-recurrence kinds (minGRU, minLSTM); ``impl`` is dispatched in
#: :mod:`recurrent.layers`.
NONLINEAR_IMPLS = ("auto", "fast", "pallas", "reference", "deer", "quasi_deer")
LINEAR_IMPLS = ("parallel", "reference")


def _no_options(params) -> dict:
    """The cell options read off params of a kind without options: none."""
    del params
    return {}


class Kind(NamedTuple):
    """One cell kind.

    Attributes:
      name: the kind's name, e.g. ``"lstm"``: the layer functions are ``init_<name>`` and
        ``<name>`` in :mod:`recurrent.layers`, the exports ``<name>_to_torch`` etc.
      cell: ``cell(hidden_size, **options) -> Cell``, the kind's cell constructor.
      params_type: the NamedTuple class of one direction's params.
      state_names: the names of the layer's state, ``("h", "c")`` for a pair carry, else
        ``("h",)``.
      param_options: ``param_options(params) -> dict`` of the cell options read off one
        direction's params (which fields are set, their shapes), ``bias`` excluded.
      call_options: the names of the cell options the layer function takes at call time
        (they do not change the params, e.g. ``reset_after``).
      impls: the ``impl`` values the layer function accepts.
      torch: the name of the ``torch.nn`` module with the same weights, or ``None``.
      onnx: the ONNX operator that runs the kind, or ``None``.
      onnx_gate_order: the kind's gate blocks (torch's order) in the ONNX operator's order.
      kernel: the kind of the GPU kernels (:mod:`recurrent.kernels.persistent`) that run
        the plain cell, or ``None``.
      kernel_when: ``(option, value)`` pairs of call options the kernel needs.
    """

    name: str
    cell: Callable[..., Cell]
    params_type: type
    state_names: tuple[str, ...]
    param_options: Callable[[Any], dict] = _no_options
    call_options: tuple[str, ...] = ()
    impls: tuple[str, ...] = NONLINEAR_IMPLS
    torch: str | None = None
    onnx: str | None = None
    onnx_gate_order: tuple[int, ...] = ()
    kernel: str | None = None
    kernel_when: tuple[tuple[str, Any], ...] = ()

    @property
    def pair(self) -> bool:
        """Whether the carry (and the layer's state) is a pair ``(h, c)``."""
        return len(self.state_names) == 2

    @property
    def gates(self) -> int:
        """How many gate blocks of ``hidden_size`` rows ``w_ih`` has."""
        return self.cell(1).gates

    def options(self, params) -> dict:
        """Every cell option read off one direction's ``params``: ``bias`` and
        :attr:`param_options`."""
        return dict(bias=params.b_ih is not None, **self.param_options(params))

    def cell_for(self, params, **call_options) -> Cell:
        """The cell that made ``params`` (one direction's), with ``call_options``; the hidden
        size is ``w_ih``'s rows over :attr:`gates`."""
        hidden_size = params.w_ih.shape[0] // self.gates
        return self.cell(hidden_size, **self.options(params), **call_options)

    def kernel_for(self, **call_options) -> str | None:
        """The GPU kernel's kind for these call options, or ``None``."""
        if any(call_options.get(k) != v for k, v in self.kernel_when):
            return None
        return self.kernel

    def init_shapes(self, params, input_size: int):
        """What the cell of ``params`` (:meth:`cell_for`) makes for ``input_size`` features:
        its params of ``jax.ShapeDtypeStruct`` (``None`` fields stay ``None``) and its
        carry for a batch of one, by ``jax.eval_shape``, without computing anything."""
        options = tuple(sorted(self.options(params).items()))
        hidden_size = params.w_ih.shape[0] // self.gates
        return _init_shapes(self, hidden_size, options, input_size)


@functools.lru_cache(maxsize=256)
def _init_shapes(kind: Kind, hidden_size: int, options: tuple, input_size: int):
    """:meth:`Kind.init_shapes`, once per kind, sizes and options."""
    cell = kind.cell(hidden_size, **dict(options))
    params = jax.eval_shape(lambda: cell.init(jax.random.key(0), input_size))
    carry = jax.eval_shape(lambda: cell.initial_carry((1,)))
    return params, carry


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("lstm", lstm_cell, LSTMParams, ("h", "c"), lstm_options,
         torch="LSTM", onnx="LSTM", onnx_gate_order=(0, 3, 1, 2),  # i f g o -> ONNX i o f c
         kernel="lstm"),
    Kind("gru", gru_cell, GRUParams, ("h",), gru_options, ("reset_after",),
         torch="GRU", onnx="GRU", onnx_gate_order=(1, 0, 2),  # r z n -> ONNX z r h
         kernel="gru", kernel_when=(("reset_after", True),)),
    Kind("rnn", rnn_cell, RNNParams, ("h",), call_options=("nonlinearity",),
         torch="RNN", onnx="RNN", onnx_gate_order=(0,)),
    Kind("mingru", mingru_cell, MinGRUParams, ("h",), impls=LINEAR_IMPLS),
    Kind("minlstm", minlstm_cell, MinLSTMParams, ("h",), impls=LINEAR_IMPLS),
)}


def of_params(params) -> Kind:
    """The kind whose params type ``params`` (one direction's) is; ``TypeError`` for
    anything else."""
    for kind in KINDS.values():
        if type(params) is kind.params_type:
            return kind
    raise TypeError(f"params is {type(params).__name__}; expected one of "
                    f"{', '.join(k.params_type.__name__ for k in KINDS.values())}")


__all__ = ["KINDS", "LINEAR_IMPLS", "NONLINEAR_IMPLS", "Kind", "of_params"]
