"""recurrent: LSTM, GRU, RNN, minGRU and minLSTM layers for JAX with torch's semantics."""

from recurrent import cells as cells
from recurrent import checkpoint as checkpoint
from recurrent import deer as deer
from recurrent import interop as interop
from recurrent import linen as linen
from recurrent import minimal as minimal
from recurrent import nnx as nnx
from recurrent import regularize as regularize
from recurrent import sharding as sharding
from recurrent.cells import Cell as Cell
from recurrent.cells import GRUParams as GRUParams
from recurrent.cells import LSTMParams as LSTMParams
from recurrent.cells import RNNParams as RNNParams
from recurrent.cells import gru_cell as gru_cell
from recurrent.cells import lstm_cell as lstm_cell
from recurrent.cells import rnn_cell as rnn_cell
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

__version__ = "0.1.0"
