"""Every bad input raises a ValueError or TypeError that names the argument, its shape and
what was expected."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrent
from recurrent import interop

KEY = jax.random.PRNGKey(0)
LSTM = recurrent.init_lstm(KEY, 4, 3, num_layers=2, bidirectional=True)
GRU = recurrent.init_gru(KEY, 4, 3)
PROJECTED = recurrent.init_lstm(KEY, 4, 3, num_layers=2, bidirectional=True, proj_size=2)
PEEPHOLE = recurrent.init_lstm(KEY, 4, 3, num_layers=2, peephole=True)
X = jnp.ones((2, 5, 4))


def test_x_of_wrong_rank():
    with pytest.raises(ValueError, match=r"x must have shape \(batch, time, features\); "
                                         r"got shape \(5, 4\)"):
        recurrent.lstm(LSTM, X[0])


def test_x_feature_size_mismatch():
    with pytest.raises(ValueError, match=r"x has 6 features \(shape \(2, 5, 6\)\).*"
                                         r"input_size=4"):
        recurrent.lstm(LSTM, jnp.ones((2, 5, 6)))


def test_x_of_integer_dtype():
    with pytest.raises(TypeError, match="x must be a float array; got dtype int32"):
        recurrent.gru(GRU, jnp.ones((2, 5, 4), jnp.int32))


def test_x_not_an_array():
    with pytest.raises(TypeError, match="x must be an array"):
        recurrent.gru(GRU, [[1.0]])


def test_seq_lengths_of_wrong_shape():
    with pytest.raises(ValueError, match=r"seq_lengths has shape \(2, 1\); expected \(2,\)"):
        recurrent.lstm(LSTM, X, seq_lengths=jnp.ones((2, 1), jnp.int32))


def test_seq_lengths_of_float_dtype():
    with pytest.raises(TypeError, match="seq_lengths must have an integer dtype; got float32"):
        recurrent.lstm(LSTM, X, seq_lengths=jnp.array([5.0, 3.0]))


def test_initial_state_of_wrong_shape():
    with pytest.raises(ValueError, match=r"initial_state has shape \(2, 2, 3\); expected "
                                         r"\(1, 2, 3\)"):
        recurrent.gru(GRU, X, initial_state=jnp.zeros((2, 2, 3)))


def test_lstm_initial_state_not_a_pair():
    with pytest.raises(TypeError, match=r"initial_state must be a pair \(h_0, c_0\)"):
        recurrent.lstm(LSTM, X, initial_state=jnp.zeros((4, 2, 3)))


def test_lstm_initial_cell_state_of_wrong_shape():
    with pytest.raises(ValueError, match=r"initial_state\[1\] \(c_0\) has shape \(4, 3, 3\); "
                                         r"expected \(4, 2, 3\)"):
        recurrent.lstm(LSTM, X, initial_state=(jnp.zeros((4, 2, 3)), jnp.zeros((4, 3, 3))))


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_dropout_outside_unit_interval(dropout):
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\)"):
        recurrent.lstm(LSTM, X, dropout=dropout, key=KEY)


@pytest.mark.parametrize("unroll", [0, 2.0, True])
def test_unroll_not_a_positive_int(unroll):
    with pytest.raises(ValueError, match=f"unroll must be a positive int or None; got {unroll}"):
        recurrent.gru(GRU, X, unroll=unroll)


def test_dropout_without_key():
    with pytest.raises(ValueError, match="dropout=0.2 needs a PRNG key"):
        recurrent.lstm(LSTM, X, dropout=0.2)


def test_params_of_another_kind():
    with pytest.raises(TypeError, match=r"lstm: params\[0\]\[0\] is GRUParams; expected "
                                        r"LSTMParams"):
        recurrent.lstm(GRU, X)


def test_params_not_a_stack():
    with pytest.raises(TypeError, match="params must be a tuple of layers"):
        recurrent.lstm(LSTM[0][0], X)


def test_params_with_inconsistent_shapes():
    bad = ((LSTM[0][0], LSTM[0][1]), (LSTM[1][0]._replace(w_hh=jnp.ones((12, 4))), LSTM[1][1]))
    with pytest.raises(ValueError, match=r"params\[1\]\[0\].w_hh has shape \(12, 4\); "
                                         r"expected \(12, 3\)"):
        recurrent.lstm(bad, X)


def test_state_dict_with_missing_and_extra_keys():
    state = {k: v.numpy() for k, v in interop.lstm_to_torch(LSTM).items()}
    del state["bias_hh_l1_reverse"]
    state["weight_xx_l0"] = np.ones(3)
    with pytest.raises(ValueError, match=r"missing keys \['bias_hh_l1_reverse'\], "
                                         r"unexpected keys \['weight_xx_l0'\]"):
        interop.lstm_from_torch(state)


def test_state_dict_of_another_kind():
    state = {k: v.numpy() for k, v in interop.lstm_to_torch(LSTM).items()}
    with pytest.raises(ValueError, match=r"weight_hh_l0 has shape \(12, 3\); expected "
                                         r"\(3 \* hidden_size"):
        interop.gru_from_torch(state)


def test_state_dict_with_projection_of_the_wrong_shape():
    state = {k: v.numpy() for k, v in interop.lstm_to_torch(PROJECTED).items()}
    state["weight_hr_l0"] = np.ones((2, 4))
    with pytest.raises(ValueError, match=r"weight_hh_l0 has shape \(12, 2\); expected "
                                         r"\(4 \* hidden_size, proj_size\)"):
        interop.lstm_from_torch(state)
    state = {k: v.numpy() for k, v in interop.lstm_to_torch(PROJECTED).items()}
    del state["weight_hr_l1_reverse"]
    with pytest.raises(ValueError, match=r"missing keys \['weight_hr_l1_reverse'\]"):
        interop.lstm_from_torch(state)


@pytest.mark.parametrize("proj_size", [3, 4, -1, 1.5, True])
def test_proj_size_outside_zero_to_hidden_size(proj_size):
    with pytest.raises(ValueError, match=r"lstm_cell: proj_size must be 0 \(no projection\) "
                                         r"or an int in \[1, hidden_size=3\)"):
        recurrent.init_lstm(KEY, 4, 3, proj_size=proj_size)


@pytest.mark.parametrize("make, name", [(recurrent.lstm_cell, "peephole"),
                                        (recurrent.lstm_cell, "layer_norm"),
                                        (recurrent.gru_cell, "layer_norm")])
def test_cell_flag_not_a_bool(make, name):
    with pytest.raises(TypeError, match=f"{name} must be a bool; got 'yes'"):
        make(3, **{name: "yes"})


def test_projected_initial_state_of_wrong_shape():
    h_0, c_0 = jnp.zeros((4, 2, 2)), jnp.zeros((4, 2, 3))
    with pytest.raises(ValueError, match=r"initial_state\[0\] \(h_0\) has shape \(4, 2, 3\); "
                                         r"expected \(4, 2, 2\) \(num_layers \* "
                                         r"num_directions, batch, proj_size\)"):
        recurrent.lstm(PROJECTED, X, initial_state=(c_0, c_0))
    with pytest.raises(ValueError, match=r"initial_state\[1\] \(c_0\) has shape \(4, 2, 2\); "
                                         r"expected \(4, 2, 3\)"):
        recurrent.lstm(PROJECTED, X, initial_state=(h_0, h_0))


def test_params_with_inconsistent_options():
    layer = PEEPHOLE[1][0]
    bad = (PEEPHOLE[0], (layer._replace(w_cf=jnp.ones(4)),))
    with pytest.raises(ValueError, match=r"params\[1\]\[0\].w_cf has shape \(4,\); "
                                         r"expected \(3,\)"):
        recurrent.lstm(bad, X)
    bad = (PEEPHOLE[0], (layer._replace(w_ci=None),))
    with pytest.raises(ValueError, match=r"params\[1\]\[0\].w_ci is None but "
                                         r"params\[0\]\[0\].w_ci is set"):
        recurrent.lstm(bad, X)
    bad = ((PROJECTED[0][0]._replace(w_hr=jnp.ones(3)),) + PROJECTED[0][1:], PROJECTED[1])
    with pytest.raises(ValueError, match=r"params\[0\]\[0\].w_hr must be a \(proj_size, "
                                         r"hidden_size\) matrix; got shape \(3,\)"):
        recurrent.lstm(bad, X)


def test_options_torch_does_not_have():
    with pytest.raises(ValueError, match="lstm_to_torch: the params have w_ci, w_cf, w_co "):
        interop.lstm_to_torch(PEEPHOLE)
    with pytest.raises(ValueError, match="gru_to_torch: the params have gamma_ih, gamma_hh "):
        interop.gru_to_torch(recurrent.init_gru(KEY, 4, 3, layer_norm=True))


def test_not_a_state_dict():
    with pytest.raises(TypeError, match="expected a torch module or a state dict; got list"):
        interop.gru_from_torch([1, 2])


@pytest.mark.parametrize("name, args", [("input_size", (0, 3)), ("hidden_size", (4, -1)),
                                        ("num_layers", (4, 3, 0))])
def test_init_with_bad_sizes(name, args):
    with pytest.raises(ValueError, match=f"init_lstm: {name} must be a positive int"):
        recurrent.init_lstm(KEY, *args)


def test_unknown_nonlinearity():
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'gelu'"):
        recurrent.rnn(recurrent.init_rnn(KEY, 4, 3), X, nonlinearity="gelu")


def test_checks_run_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="x has 6 features"):
        jax.jit(recurrent.lstm)(LSTM, jnp.ones((2, 5, 6)))
