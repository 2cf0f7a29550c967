"""recurrent.linen: modules equal the functional layers, cells work in flax.linen.RNN,
parameter counts and weights match torch, dropout, training under jit."""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import recurrent
import recurrent.linen as rl
from tests.digits import digits

X = jax.random.normal(jax.random.key(0), (3, 5, 4))  # (batch, time, features)
LENGTHS = jnp.array([5, 3, 1])
OPTIONS = dict(proj_size=4, peephole=True, layer_norm=True)  # the LSTM cell options


@pytest.mark.parametrize("module, init, layer, state", [
    (rl.LSTM(6, num_layers=2, bidirectional=True),
     functools.partial(recurrent.init_lstm, num_layers=2, bidirectional=True), recurrent.lstm,
     (jnp.ones((4, 3, 6)), jnp.zeros((4, 3, 6)))),
    (rl.GRU(6, num_layers=2, reset_after=False),
     functools.partial(recurrent.init_gru, num_layers=2),
     functools.partial(recurrent.gru, reset_after=False), jnp.ones((2, 3, 6))),
    (rl.RNN(6, bidirectional=True, nonlinearity="relu", bias=False),
     functools.partial(recurrent.init_rnn, bidirectional=True, bias=False),
     functools.partial(recurrent.rnn, nonlinearity="relu"), jnp.ones((2, 3, 6))),
    (rl.LSTM(6, **OPTIONS), functools.partial(recurrent.init_lstm, **OPTIONS), recurrent.lstm,
     (jnp.ones((1, 3, 4)), jnp.zeros((1, 3, 6)))),
    (rl.GRU(6, layer_norm=True), functools.partial(recurrent.init_gru, layer_norm=True),
     recurrent.gru, jnp.ones((1, 3, 6))),
])
def test_module_equals_functional_layer(module, init, layer, state):
    params = init(jax.random.key(1), 4, 6)
    variables = {"params": module.make_params(params)}
    assert jax.eval_shape(module.init, jax.random.key(1), X) == jax.eval_shape(
        lambda: variables)
    y, final = jax.jit(functools.partial(module.apply, return_state=True))(
        variables, X, LENGTHS, state)
    y_ref, final_ref = jax.jit(layer)(params, X, LENGTHS, state)
    np.testing.assert_array_equal(y, y_ref)
    jax.tree.map(np.testing.assert_array_equal, final, final_ref)


def test_time_major_input_and_output_only():
    module = rl.GRU(6, batch_first=False)
    x = jnp.swapaxes(X, 0, 1)  # (time, batch, features)
    params = recurrent.init_gru(jax.random.key(1), 4, 6)
    y = jax.jit(module.apply)({"params": module.make_params(params)}, x)
    y_ref, _ = jax.jit(functools.partial(recurrent.gru, batch_first=False))(params, x)
    np.testing.assert_array_equal(y, y_ref)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("num_layers, bidirectional, bias", [
    (1, False, True), (3, True, True), (2, False, False)])
def test_parameter_count_equals_torch(kind, num_layers, bidirectional, bias):
    module = getattr(rl, kind)(7, num_layers=num_layers, bidirectional=bidirectional,
                               bias=bias)
    variables = jax.eval_shape(module.init, jax.random.key(0), X)
    ours = sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))
    theirs = getattr(torch.nn, kind)(4, 7, num_layers=num_layers,
                                     bidirectional=bidirectional, bias=bias)
    assert ours == sum(p.numel() for p in theirs.parameters())


def test_torch_weights_in_and_out():
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)
    module = rl.LSTM(6, num_layers=2, bidirectional=True)
    variables = {"params": module.make_params(recurrent.interop.lstm_from_torch(theirs))}
    y = jax.jit(module.apply)(variables, X)
    y_torch = theirs(torch.tensor(np.asarray(X)))[0].detach().numpy()
    np.testing.assert_allclose(y, y_torch, atol=1e-5)

    params = jax.tree.map(lambda a: a + 1, module.get_params(variables["params"]))
    theirs.load_state_dict(recurrent.interop.lstm_to_torch(params))
    np.testing.assert_array_equal(theirs.weight_hh_l1_reverse.detach().numpy(),
                                  params[1][1].w_hh)


@pytest.mark.parametrize("options", [{}, OPTIONS])
def test_lstm_cell_in_flax_rnn_equals_lstm(options):
    variables = {"params": rl.LSTM(6).make_params(
        recurrent.init_lstm(jax.random.key(1), 4, 6, **options))}
    weights = variables["params"]["layer_0"]["forward"]
    rnn = nn.RNN(rl.LSTMCell(6, **options), return_carry=True)
    assert jax.tree.structure(jax.eval_shape(rnn.init, jax.random.key(2), X)) == (
        jax.tree.structure({"params": {"cell": weights}}))
    (h, c), y = jax.jit(functools.partial(rnn.apply, seq_lengths=LENGTHS))(
        {"params": {"cell": weights}}, X)
    y_ref, (h_ref, c_ref) = jax.jit(functools.partial(rl.LSTM(6, **options).apply,
                                                      return_state=True))(variables, X, LENGTHS)
    valid = (jnp.arange(5)[None, :] < LENGTHS[:, None])[..., None]  # (batch, time, 1)
    np.testing.assert_allclose(jnp.where(valid, y, 0), y_ref, atol=1e-6)
    np.testing.assert_allclose(h, h_ref[0], atol=1e-6)
    np.testing.assert_allclose(c, c_ref[0], atol=1e-6)


def test_gru_cells_in_flax_bidirectional_equal_gru():
    variables = {"params": rl.GRU(6).make_params(
        recurrent.init_gru(jax.random.key(1), 4, 6, bidirectional=True))}
    forward, backward = (variables["params"]["layer_0"][d] for d in ("forward", "backward"))
    bi = nn.Bidirectional(nn.RNN(rl.GRUCell(6)), nn.RNN(rl.GRUCell(6)), return_carry=True)
    (h_f, h_b), y = jax.jit(functools.partial(bi.apply, seq_lengths=LENGTHS))(
        {"params": {"forward_rnn": {"cell": forward}, "backward_rnn": {"cell": backward}}}, X)
    y_ref, h_ref = jax.jit(functools.partial(rl.GRU(6, bidirectional=True).apply,
                                             return_state=True))(variables, X, LENGTHS)
    valid = (jnp.arange(5)[None, :] < LENGTHS[:, None])[..., None]  # (batch, time, 1)
    np.testing.assert_allclose(jnp.where(valid, y, 0), y_ref, atol=1e-6)
    np.testing.assert_allclose(jnp.stack([h_f, h_b]), h_ref, atol=1e-6)


def test_cell_carry_and_bad_input():
    cell = rl.LSTMCell(6, param_dtype=jnp.bfloat16)
    h, c = cell.initialize_carry(jax.random.key(0), (2, 3, 4))
    assert h.shape == c.shape == (2, 3, 6) and h.dtype == jnp.float32
    assert cell.num_feature_axes == 1
    variables = rl.GRUCell(6).init(jax.random.key(0), jnp.zeros((3, 6)), jnp.zeros((3, 4)))
    with pytest.raises(flax.errors.ScopeParamShapeError, match='"w_ih"'):
        rl.GRUCell(6).apply(variables, jnp.zeros((3, 6)), jnp.zeros((3, 5)))


def test_dropout_only_in_training_and_reproducible():
    module = rl.LSTM(6, num_layers=2, dropout=0.5)
    variables = module.init(jax.random.key(1), X, deterministic=True)
    apply = jax.jit(module.apply, static_argnames="deterministic")

    def train(seed):
        return apply(variables, X, deterministic=False, rngs={"dropout": jax.random.key(seed)})

    evaluation = apply(variables, X, deterministic=True)
    np.testing.assert_array_equal(evaluation,
                                  jax.jit(rl.LSTM(6, num_layers=2).apply)(variables, X))
    np.testing.assert_array_equal(train(7), train(7))
    assert not np.allclose(train(7), evaluation)
    assert not np.allclose(train(7), train(8))
    with pytest.raises(ValueError, match="LSTM: dropout=0.5 needs deterministic"):
        jax.eval_shape(module.apply, variables, X)
    with pytest.raises(ValueError, match="dropout must be a number in \\[0, 1\\); got 1.5"):
        jax.eval_shape(rl.GRU(6, dropout=1.5).init, jax.random.key(0), X)


class Classifier(nn.Module):
    """An LSTM over the rows of a digit, then a linear read-out of the last step."""

    @nn.compact
    def __call__(self, x):
        h = rl.LSTM(32)(x)
        return nn.Dense(10)(h[:, -1])  # (batch, 10)


def test_linen_model_trains_under_jit():
    x, y = digits()
    model = Classifier()
    params = model.init(jax.random.key(0), x)["params"]
    tx = optax.adam(3e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(params):
            logits = model.apply({"params": params}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(25):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < losses[0] / 2, losses
