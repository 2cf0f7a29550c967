"""Run by test_sharding.py in a subprocess with 8 host CPU devices: a few training steps of
a Linen and an NNX model, with the batch sharded over all devices and on one device.
Prints a JSON summary for the test to check."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import nnx

import recurrent.linen as rl
import recurrent.nnx as rn
from recurrent import sharding
from tests.digits import digits

STEPS = 2


class LinenClassifier(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(rl.LSTM(16)(x)[:, -1])  # (batch, 10)


class NNXClassifier(nnx.Module):
    def __init__(self, rngs):
        self.gru = rn.GRU(8, 16, rngs=rngs)
        self.out = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(self.gru(x)[:, -1])  # (batch, 10)


def linen_params(params, x, y, mesh=None):
    """``params`` after ``STEPS`` Adam steps, with the batch sharded over ``mesh`` if given."""
    model, tx = LinenClassifier(), optax.adam(1e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(params):
            logits = model.apply({"params": params}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    if mesh is not None:
        params, opt_state = sharding.replicate((params, opt_state), mesh)
        x, y = sharding.shard_batch((x, y), mesh)
    for _ in range(STEPS):
        params, opt_state = step(params, opt_state, x, y)
    return params


def nnx_params(initial, x, y, mesh=None):
    """The params of a copy of ``initial`` after ``STEPS`` Adam steps, as NumPy arrays."""
    model = nnx.clone(initial)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        optimizer.update(model, nnx.grad(loss_fn)(model))

    if mesh is not None:
        nnx.update((model, optimizer),
                   sharding.replicate(nnx.state((model, optimizer)), mesh))
        x, y = sharding.shard_batch((x, y), mesh)
    for _ in range(STEPS):
        step(model, optimizer, x, y)
    return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))]


def max_difference(a, b):
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a),
                                                               jax.tree.leaves(b), strict=True))


def main():
    x, y = (np.asarray(a) for a in digits(64))
    mesh = sharding.data_mesh()
    initial = jax.jit(LinenClassifier().init)(jax.random.key(0), x)["params"]
    single, sharded = linen_params(initial, x, y), linen_params(initial, x, y, mesh)
    batch_sharding = sharding.shard_batch(x, mesh).sharding
    model = NNXClassifier(nnx.Rngs(0))
    try:
        sharding.shard_batch(x[:12], mesh)
        error = None
    except ValueError as e:
        error = str(e)
    print(json.dumps({
        "devices": jax.device_count(),
        "batch_devices": len(batch_sharding.device_set),
        "batch_spec": str(batch_sharding.spec),
        "params_replicated": all(leaf.sharding.is_fully_replicated
                                 for leaf in jax.tree.leaves(sharded)),
        "linen_difference": max_difference(single, sharded),
        "linen_change": max_difference(initial, sharded),
        "nnx_difference": max_difference(nnx_params(model, x, y),
                                         nnx_params(model, x, y, mesh)),
        "nnx_change": max_difference(nnx_params(model, x, y),
                                     jax.tree.leaves(nnx.state(model, nnx.Param))),
        "indivisible_error": error,
    }))


if __name__ == "__main__":
    main()
