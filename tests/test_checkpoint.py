"""recurrent.checkpoint: a trained model saved and restored gives bit-identical outputs;
a checkpoint that does not fit the model is a clear error."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import recurrent
import recurrent.linen as rl
import recurrent.nnx as rn
from recurrent import checkpoint

X = jax.random.normal(jax.random.key(0), (4, 6, 3))  # (batch, time, features)
TARGET = jnp.ones((4, 6, 10))


def test_linen_trained_model_and_optimizer_restore_bit_identical(tmp_path):
    model = rl.LSTM(5, bidirectional=True)
    params = model.make_params(recurrent.init_lstm(jax.random.key(1), 3, 5,
                                                   bidirectional=True))
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(lambda p: jnp.mean((model.apply({"params": p}, X) - TARGET) ** 2))(
            params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for _ in range(3):
        params, opt_state = step(params, opt_state)
    checkpoint.save(tmp_path / "ckpt", {"params": params, "opt_state": opt_state})

    abstract = jax.eval_shape(model.init, jax.random.key(2), X)["params"]
    like = {"params": abstract, "opt_state": jax.eval_shape(tx.init, abstract)}
    restored = checkpoint.restore(tmp_path / "ckpt", like)
    assert type(model.get_params(restored["params"])[0][1]) is recurrent.LSTMParams
    jax.tree.map(np.testing.assert_array_equal, restored, {"params": params,
                                                          "opt_state": opt_state})
    apply = jax.jit(model.apply)
    np.testing.assert_array_equal(apply({"params": restored["params"]}, X),
                                  apply({"params": params}, X))


def test_nnx_model_with_dropout_stream_restores_bit_identical(tmp_path):
    def build(seed):
        return rn.GRU(3, 5, num_layers=2, dropout=0.3, rngs=nnx.Rngs(seed))

    model = build(0)
    model.set_params(jax.tree.map(lambda a: a * 1.5, model.get_params()))  # "trained"
    checkpoint.save(tmp_path / "ckpt", nnx.state(model))  # params and the dropout stream

    restored = nnx.eval_shape(lambda: build(1))
    nnx.update(restored, checkpoint.restore(tmp_path / "ckpt", nnx.state(restored)))
    run = nnx.jit(lambda m: m(X))
    np.testing.assert_array_equal(run(restored), run(model))  # same dropout masks too
    restored.eval()
    model.eval()
    np.testing.assert_array_equal(run(restored), run(model))


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    params = rl.LSTM(5).make_params(recurrent.init_lstm(jax.random.key(0), 3, 5))
    checkpoint.save(tmp_path / "ckpt", {"params": params})
    wider = jax.eval_shape(rl.LSTM(7, num_layers=2).init, jax.random.key(0), X)
    with pytest.raises(ValueError) as error:
        checkpoint.restore(tmp_path / "ckpt", wider)
    message = str(error.value)
    assert "does not match" in message
    assert ("params/layer_0/forward/w_hh: saved float32[20, 5], expected float32[28, 7]"
            in message)
    assert "missing from the checkpoint: params/layer_1/forward/w_ih" in message

    as_bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), {"params": params})
    with pytest.raises(ValueError, match="saved float32\\[20\\], expected bfloat16\\[20\\]"):
        checkpoint.restore(tmp_path / "ckpt", as_bf16)
    with pytest.raises(ValueError, match="not in the model: params/layer_0/forward/b_ih"):
        checkpoint.restore(tmp_path / "ckpt", {"params": rl.LSTM(5).make_params(
            recurrent.init_lstm(jax.random.key(0), 3, 5, bias=False))})


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
    first = {"w": jnp.zeros(3)}
    checkpoint.save(tmp_path / "ckpt", first)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        checkpoint.save(tmp_path / "ckpt", {"w": jnp.ones(3)})
    checkpoint.save(tmp_path / "ckpt", {"w": jnp.ones(3)}, overwrite=True)
    np.testing.assert_array_equal(checkpoint.restore(tmp_path / "ckpt", first)["w"],
                                  jnp.ones(3))
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        checkpoint.restore(tmp_path / "missing", first)
