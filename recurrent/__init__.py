"""recurrent: LSTM, GRU, RNN, minGRU and minLSTM layers for JAX with torch's semantics.

The functional API loads with the package; the Flax modules (``recurrent.linen``,
``recurrent.nnx``), checkpoints (``recurrent.checkpoint``), the GPU kernels
(``recurrent.kernels``) and the ONNX export (``recurrent.onnx``) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from recurrent import cells as cells
from recurrent import deer as deer
from recurrent import interop as interop
from recurrent import minimal as minimal
from recurrent import module_options as module_options
from recurrent import module_params as module_params
from recurrent import regularize as regularize
from recurrent import sharding as sharding
from recurrent.cells import Cell as Cell
from recurrent.cells import GRUParams as GRUParams
from recurrent.cells import LSTMParams as LSTMParams
from recurrent.cells import RNNParams as RNNParams
from recurrent.cells import gru_cell as gru_cell
from recurrent.cells import lstm_cell as lstm_cell
from recurrent.cells import rnn_cell as rnn_cell
from recurrent.layers import Params as Params
from recurrent.layers import gru as gru
from recurrent.layers import init_gru as init_gru
from recurrent.layers import init_lstm as init_lstm
from recurrent.layers import init_mingru as init_mingru
from recurrent.layers import init_minlstm as init_minlstm
from recurrent.layers import init_rnn as init_rnn
from recurrent.layers import lstm as lstm
from recurrent.layers import mingru as mingru
from recurrent.layers import minlstm as minlstm
from recurrent.layers import rnn as rnn
from recurrent.tbptt import truncated_bptt as truncated_bptt
from recurrent.unroll import unroll as unroll

if TYPE_CHECKING:
    from recurrent import checkpoint as checkpoint
    from recurrent import kernels as kernels
    from recurrent import linen as linen
    from recurrent import nnx as nnx
    from recurrent import onnx as onnx

__version__ = "0.1.0"

# Submodules that import heavy dependencies (flax, orbax, Pallas, onnx): loaded on first access.
_LAZY = ("checkpoint", "kernels", "linen", "nnx", "onnx")


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"recurrent.{name}")
    raise AttributeError(f"module 'recurrent' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "Cell", "GRUParams", "LSTMParams", "Params", "RNNParams", "cells", "checkpoint", "deer",
    "gru", "gru_cell", "init_gru", "init_lstm", "init_mingru", "init_minlstm", "init_rnn",
    "interop", "kernels", "linen", "lstm", "lstm_cell", "mingru", "minimal", "minlstm",
    "module_options", "module_params", "nnx",
    "onnx", "regularize", "rnn", "rnn_cell", "sharding", "truncated_bptt", "unroll",
]
