"""The table of cell kinds (recurrent.kinds): every entry agrees with its cell and its layer
functions, and the checks read the params' expected shapes off the cell's init."""

import jax
import jax.numpy as jnp
import pytest

import recurrent
from recurrent import interop, layers
from recurrent import onnx as ronnx
from recurrent.kinds import KINDS, of_params

KEY = jax.random.key(0)
I, H = 3, 4


@pytest.mark.parametrize("name", list(KINDS))
def test_entry_agrees_with_its_cell_and_layers(name):
    kind = KINDS[name]
    cell = kind.cell(H)
    assert kind.name == name and cell.params_type is kind.params_type
    assert kind.gates == cell.gates
    carry = cell.initial_carry((2,), jnp.float32)
    assert isinstance(carry, tuple) == kind.pair == (len(kind.state_names) == 2)
    init, layer = layers.LAYERS[name]
    params = init(KEY, I, H, num_layers=2, bidirectional=True)
    assert of_params(params[0][0]) is kind
    y, state = layer(params, jnp.ones((2, 5, I)))
    assert y.shape == (2, 5, 2 * H)
    assert len(state) == 2 if kind.pair else state.shape == (4, 2, H)
    assert callable(getattr(interop, f"{name}_from_torch", None)) == (kind.torch is not None)
    assert callable(getattr(ronnx, f"{name}_to_onnx", None)) == (kind.onnx is not None)


def test_options_are_read_off_the_params():
    params = recurrent.init_lstm(KEY, I, H, proj_size=2, peephole=True, bias=False)
    kind = of_params(params[0][0])
    assert kind.options(params[0][0]) == dict(bias=False, proj_size=2, peephole=True,
                                              layer_norm=False)
    shapes, carry = kind.init_shapes(params[0][0], I)
    assert shapes.w_hr.shape == (2, H) and shapes.b_ih is None
    assert [c.shape for c in carry] == [(1, 2), (1, H)]


def test_kernel_by_call_options():
    assert KINDS["lstm"].kernel_for() == "lstm"
    assert KINDS["gru"].kernel_for(reset_after=True) == "gru"
    assert KINDS["gru"].kernel_for(reset_after=False) is None
    assert KINDS["rnn"].kernel_for(nonlinearity="tanh") is None


def test_of_params_names_what_it_got():
    with pytest.raises(TypeError, match="params is dict; expected one of LSTMParams"):
        of_params({})


def test_a_field_its_options_do_not_make_is_refused():
    # a peephole LSTM without w_cf: the cell made with the options read off the params
    # (peephole=True, since w_ci is set) has w_cf, so the check names it
    params = recurrent.init_lstm(KEY, I, H, peephole=True)
    bad = ((params[0][0]._replace(w_cf=None),),)
    with pytest.raises(ValueError, match=r"lstm: params\[0\]\[0\]\.w_cf is None; the cell "
                                         r"options read off the params make it an array of "
                                         r"shape \(4,\)"):
        recurrent.lstm(bad, jnp.ones((2, 5, I)))


def test_a_learned_state_has_the_cells_widths():
    params = recurrent.init_lstm(KEY, I, H, num_layers=2, proj_size=2)
    h, c = layers.zero_state(params, pair=True)
    assert h.shape == (2, 2) and c.shape == (2, H)
    with pytest.raises(ValueError, match=r"zero_state: pair=False but the state of a lstm"):
        layers.zero_state(params, pair=False)
