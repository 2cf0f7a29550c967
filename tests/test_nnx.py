"""recurrent.nnx: modules equal the functional layers, cells work in flax.nnx.RNN,
parameter counts and weights match torch, dropout, training under nnx.jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import recurrent
import recurrent.nnx as rn
from tests.digits import digits

X = jax.random.normal(jax.random.key(0), (3, 5, 4))  # (batch, time, features)
LENGTHS = jnp.array([5, 3, 1])
VALID = (jnp.arange(5)[None, :] < LENGTHS[:, None])[..., None]  # (batch, time, 1)
OPTIONS = dict(proj_size=4, peephole=True, layer_norm=True)  # the LSTM cell options


@pytest.mark.parametrize("model, layer, state", [
    (rn.LSTM(4, 6, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0)), recurrent.lstm,
     (jnp.ones((4, 3, 6)), jnp.zeros((4, 3, 6)))),
    (rn.GRU(4, 6, num_layers=2, reset_after=False, rngs=nnx.Rngs(0)),
     functools.partial(recurrent.gru, reset_after=False), jnp.ones((2, 3, 6))),
    (rn.RNN(4, 6, nonlinearity="relu", bias=False, rngs=nnx.Rngs(0)),
     functools.partial(recurrent.rnn, nonlinearity="relu"), jnp.ones((1, 3, 6))),
    (rn.LSTM(4, 6, **OPTIONS, rngs=nnx.Rngs(0)), recurrent.lstm,
     (jnp.ones((1, 3, 4)), jnp.zeros((1, 3, 6)))),
    (rn.GRU(4, 6, layer_norm=True, rngs=nnx.Rngs(0)), recurrent.gru, jnp.ones((1, 3, 6))),
])
def test_module_equals_functional_layer(model, layer, state):
    y, final = nnx.jit(lambda m: m(X, LENGTHS, state, return_state=True))(model)
    y_ref, final_ref = jax.jit(layer)(model.get_params(), X, LENGTHS, state)
    np.testing.assert_array_equal(y, y_ref)
    jax.tree.map(np.testing.assert_array_equal, final, final_ref)


def test_params_are_the_functional_params():
    model = rn.LSTM(4, 6, num_layers=2, rngs=nnx.Rngs(3))
    params = model.get_params()
    assert jax.eval_shape(lambda: params) == jax.eval_shape(
        lambda: recurrent.init_lstm(jax.random.key(0), 4, 6, num_layers=2))
    np.testing.assert_array_equal(params[1][0].w_hh, model.layer_1.forward.w_hh.get_value())
    model.set_params(jax.tree.map(lambda a: a + 1, params))
    np.testing.assert_array_equal(model.get_params()[0][0].b_ih, params[0][0].b_ih + 1)
    with pytest.raises(ValueError, match=r"params\[0\]\[0\].w_ih has shape \(28, 4\); "
                                         r"expected \(24, 4\)"):
        model.set_params(recurrent.init_lstm(jax.random.key(0), 4, 7, num_layers=2))
    with pytest.raises(ValueError, match="LSTM.set_params: params have structure"):
        model.set_params(recurrent.init_lstm(jax.random.key(0), 4, 6))


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("num_layers, bidirectional, bias", [(3, True, True), (2, False, False)])
def test_parameter_count_equals_torch(kind, num_layers, bidirectional, bias):
    model = nnx.eval_shape(lambda: getattr(rn, kind)(4, 7, num_layers, bidirectional,
                                                     bias=bias, rngs=nnx.Rngs(0)))
    ours = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
    theirs = getattr(torch.nn, kind)(4, 7, num_layers=num_layers,
                                     bidirectional=bidirectional, bias=bias)
    assert ours == sum(p.numel() for p in theirs.parameters())


def test_torch_weights_in_and_out():
    torch.manual_seed(0)
    theirs = torch.nn.GRU(4, 6, num_layers=2, batch_first=True)
    model = rn.GRU(4, 6, num_layers=2, rngs=nnx.Rngs(0))
    model.set_params(recurrent.interop.gru_from_torch(theirs))
    y_torch = theirs(torch.tensor(np.asarray(X)))[0].detach().numpy()
    np.testing.assert_allclose(nnx.jit(lambda m: m(X))(model), y_torch, atol=1e-5)
    theirs.load_state_dict(recurrent.interop.gru_to_torch(model.get_params()))


@pytest.mark.parametrize("options", [{}, OPTIONS])
def test_lstm_cell_in_flax_rnn_equals_lstm(options):
    model = rn.LSTM(4, 6, **options, rngs=nnx.Rngs(1))
    cell = rn.LSTMCell(4, 6, **options, rngs=nnx.Rngs(2))
    cell.set_params(model.get_params()[0][0])
    rnn = nnx.RNN(cell, return_carry=True)
    (h, c), y = nnx.jit(lambda r: r(X, seq_lengths=LENGTHS))(rnn)
    y_ref, (h_ref, c_ref) = nnx.jit(lambda m: m(X, LENGTHS, return_state=True))(model)
    np.testing.assert_allclose(jnp.where(VALID, y, 0), y_ref, atol=1e-6)
    np.testing.assert_allclose(h, h_ref[0], atol=1e-6)
    np.testing.assert_allclose(c, c_ref[0], atol=1e-6)


def test_gru_cells_in_flax_bidirectional_equal_gru():
    model = rn.GRU(4, 6, bidirectional=True, rngs=nnx.Rngs(1))
    forward, backward = (rn.GRUCell(4, 6, rngs=nnx.Rngs(i)) for i in range(2))
    forward.set_params(model.get_params()[0][0])
    backward.set_params(model.get_params()[0][1])
    bi = nnx.Bidirectional(nnx.RNN(forward), nnx.RNN(backward), return_carry=True)
    (h_f, h_b), y = nnx.jit(lambda b: b(X, seq_lengths=LENGTHS))(bi)
    y_ref, h_ref = nnx.jit(lambda m: m(X, LENGTHS, return_state=True))(model)
    np.testing.assert_allclose(jnp.where(VALID, y, 0), y_ref, atol=1e-6)
    np.testing.assert_allclose(jnp.stack([h_f, h_b]), h_ref, atol=1e-6)


def test_cell_carry_and_bad_input():
    cell = rn.LSTMCell(4, 6, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    h, c = cell.initialize_carry((2, 3, 4), nnx.Rngs(1))
    assert h.shape == c.shape == (2, 3, 6) and h.dtype == jnp.float32
    assert cell.num_feature_axes == 1
    with pytest.raises(ValueError, match="GRUCell: x has 5 features"):
        rn.GRUCell(4, 6, rngs=nnx.Rngs(0))(jnp.zeros((3, 6)), jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match="LSTMCell: hidden_size must be a positive int"):
        rn.LSTMCell(4, 0, rngs=nnx.Rngs(0))


def test_dropout_only_in_training_and_reproducible():
    def model(seed=0):
        return rn.LSTM(4, 6, num_layers=2, dropout=0.5, rngs=nnx.Rngs(params=0, dropout=seed))

    run = nnx.jit(lambda m: m(X))
    trained = model()
    first, second = run(trained), run(trained)
    assert not np.allclose(first, second)  # the stream advances
    np.testing.assert_array_equal(first, run(model()))  # same seed, same masks
    assert not np.allclose(first, run(model(seed=1)))

    evaluation = model()
    evaluation.eval()
    reference = rn.LSTM(4, 6, num_layers=2, rngs=nnx.Rngs(params=0))
    np.testing.assert_array_equal(run(evaluation), run(reference))
    np.testing.assert_array_equal(
        nnx.jit(lambda m: m(X, deterministic=False, rngs=jax.random.key(5)))(evaluation),
        nnx.jit(lambda m: m(X, rngs=jax.random.key(5)))(model()))
    with pytest.raises(ValueError, match="dropout must be a number in \\[0, 1\\); got -0.1"):
        rn.GRU(4, 6, dropout=-0.1, rngs=nnx.Rngs(0))


class Classifier(nnx.Module):
    """A GRU over the rows of a digit, then a linear read-out of the last step."""

    def __init__(self, rngs: nnx.Rngs):
        self.gru = rn.GRU(8, 32, rngs=rngs)
        self.out = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(self.gru(x)[:, -1])  # (batch, 10)


def test_nnx_model_trains_under_jit():
    x, y = digits()
    model = Classifier(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(25)]
    assert losses[-1] < losses[0] / 2, losses
