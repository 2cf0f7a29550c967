"""Run by tests/test_flax_native.py in a subprocess with 8 host CPU devices: Linen and NNX
LSTMs with ``axis_names`` sharded over a mesh by logical axis rules; prints one JSON line."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

import recurrent
import recurrent.linen as rl
import recurrent.nnx as rn
from recurrent.module_options import AXIS_NAMES


def _entries(spec: jax.sharding.PartitionSpec) -> list:
    """The spec's mesh axis per array axis (its repr and iteration differ across jax
    versions; indexing does not)."""
    return [spec[i] for i in range(len(spec))]


RULES = (("rnn_gates", "model"), ("rnn_input", None), ("rnn_hidden", None), ("rnn_cell", None))
X = jax.random.normal(jax.random.key(0), (2, 3, 4))  # (batch, time, features)


def main():
    mesh = jax.make_mesh((8,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    module = rl.LSTM(2, bidirectional=True, axis_names=AXIS_NAMES)
    abstract = jax.eval_shape(module.init, jax.random.key(0), X)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, RULES)
    variables = jax.jit(module.init, out_shardings=shardings)(jax.random.key(0), X)
    linen_w = variables["params"]["layer_0"]["backward"]["w_ih"].value
    y = jax.jit(module.apply)(variables, X)
    plain = nn.meta.unbox(jax.device_get(variables))
    linen_error = float(jnp.abs(y - recurrent.lstm(module.get_params(plain["params"]),
                                                   X)[0]).max())

    with nn.logical_axis_rules(RULES), jax.set_mesh(mesh):
        model = rn.LSTM(4, 2, bidirectional=True, axis_names=AXIS_NAMES, rngs=nnx.Rngs(0))
    nnx_w = model.layer_0.backward.w_ih.get_value()
    y = nnx.jit(lambda m: m(X))(model)
    nnx_error = float(jnp.abs(y - recurrent.lstm(jax.device_get(model.get_params()),
                                                 X)[0]).max())
    print(json.dumps({
        "devices": jax.device_count(),
        "linen_spec": _entries(linen_w.sharding.spec),
        "linen_shard": list(linen_w.addressable_shards[0].data.shape),
        "linen_error": linen_error,
        "nnx_spec": _entries(nnx_w.sharding.spec),
        "nnx_shard": list(nnx_w.addressable_shards[0].data.shape),
        "nnx_error": nnx_error,
        "nnx_names": list(nnx.get_partition_spec(nnx.state(model, nnx.Param))
                          ["layer_0"]["forward"]["w_hh"].get_value()),
    }))


if __name__ == "__main__":
    main()
