"""What a type checker sees of the public API (run by .ci/typecheck.sh, never executed).

``assert_type`` fails when a name's type is not exactly the one written, ``Any`` included,
so an annotation that goes missing (or a ``py.typed`` that is not shipped) fails the check.
"""

from typing import Any, assert_type

import jax
import numpy as np
import onnx
from flax import nnx as flax_nnx

import recurrent
from recurrent import checkpoint, linen, nnx
from recurrent.app import Run, load_run
from recurrent.cells import Cell, LSTMParams
from recurrent.layers import Activations, LSTMState

key = jax.random.PRNGKey(0)
x = jax.numpy.ones((2, 5, 3))
lengths = jax.numpy.array([5, 3])

params = recurrent.init_lstm(key, 3, 4, num_layers=2, bidirectional=True)
assert_type(params, recurrent.Params)
y, (h_n, c_n) = recurrent.lstm(params, x, seq_lengths=lengths)
assert_type(recurrent.lstm(params, x), tuple[jax.Array, LSTMState])
assert_type(recurrent.lstm(params, x, return_activations=True),
            tuple[jax.Array, LSTMState, Activations])
assert_type(y, jax.Array)
assert_type(h_n, jax.Array)
assert_type(recurrent.gru(recurrent.init_gru(key, 3, 4), x), tuple[jax.Array, jax.Array])
assert_type(recurrent.rnn(recurrent.init_rnn(key, 3, 4), x, seq_lengths=lengths),
            tuple[jax.Array, jax.Array])
assert_type(recurrent.mingru(recurrent.init_mingru(key, 3, 4), x), tuple[jax.Array, jax.Array])
assert_type(recurrent.minlstm(recurrent.init_minlstm(key, 3, 4), x),
            tuple[jax.Array, jax.Array])
assert_type(recurrent.truncated_bptt(recurrent.lstm, params, x, 2), tuple[jax.Array, Any])
assert_type(recurrent.lstm_cell(4), Cell)
assert_type(recurrent.unroll(recurrent.lstm_cell(4), params[0][0], x), tuple[Any, Any])
assert_type(params[0][0], recurrent.layers.CellParams)
assert_type(LSTMParams(x, x, x, x).w_ih, jax.Array)

assert_type(recurrent.interop.lstm_from_torch({}), recurrent.Params)
assert_type(recurrent.interop.gru_to_torch(params), dict[str, Any])
assert_type(recurrent.onnx.lstm_to_onnx(params), onnx.ModelProto)
assert_type(recurrent.onnx.gru_to_onnx(recurrent.init_gru(key, 3, 4), path="gru.onnx"),
            onnx.ModelProto)
mesh = recurrent.sharding.data_mesh()
assert_type(recurrent.sharding.shard_batch(x, mesh), jax.Array)
assert_type(recurrent.sharding.replicate({"w": x}, mesh), dict[str, jax.Array])
assert_type(checkpoint.save("/tmp/ckpt", params), None)

assert_type(linen.LSTM(4, bidirectional=True), linen.LSTM)
assert_type(linen.LSTM(4, proj_size=2, forget_bias=1.0, impl="fast"), linen.LSTM)
assert_type(linen.LSTMCell(4, carry_order="flax"), linen.LSTMCell)
assert_type(linen.RNNCell(4, nonlinearity="relu"), linen.RNNCell)
assert_type(nnx.GRU(3, 4, rngs=flax_nnx.Rngs(0)), nnx.GRU)
assert_type(recurrent.__version__, str)

run = load_run("runs")
assert_type(run, Run)
assert_type(run.network.init(key), dict)
assert_type(np.asarray(y), np.ndarray)
