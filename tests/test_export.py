"""``jax.export`` lowers the layers and modules for platforms this machine lacks (TPU, CUDA),
so code that cannot lower there fails here; ``impl="auto"`` lowers the GPU kernel only for
CUDA, whatever device the exporting process has."""

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx as flax_nnx
from jax import export

import recurrent
from recurrent import fast
from recurrent.kernels import layer as kernel_layer

PLATFORMS = [("tpu",), ("cuda",)]
X = jnp.ones((2, 5, 3))  # (batch, time, input_size)
LENGTHS = jnp.array([5, 2])


def _train_step(loss):
    """One jitted Adam step of ``loss(params)``: ``(params, opt_state) -> (params,
    opt_state, loss)``."""
    opt = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state):
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step, opt


@pytest.mark.parametrize("platforms", PLATFORMS, ids=lambda p: p[0])
def test_functional_layers_export_forward_and_training_step(platforms):
    key = jax.random.PRNGKey(0)
    params = {"lstm": recurrent.init_lstm(key, 3, 4, num_layers=2, bidirectional=True),
              "gru": recurrent.init_gru(key, 3, 4, bidirectional=True)}

    def forward(params, x, lengths):  # -> (batch, time, 8) twice
        y_lstm, _ = recurrent.lstm(params["lstm"], x, seq_lengths=lengths)
        y_gru, _ = recurrent.gru(params["gru"], x, seq_lengths=lengths)
        return y_lstm, y_gru

    step, opt = _train_step(lambda p: sum(jnp.sum(y ** 2) for y in forward(p, X, LENGTHS)))
    exported = export.export(jax.jit(forward), platforms=platforms)(params, X, LENGTHS)
    assert exported.platforms == platforms
    assert [a.shape for a in exported.out_avals] == [(2, 5, 8), (2, 5, 8)]
    exported = export.export(step, platforms=platforms)(params, opt.init(params))
    assert exported.platforms == platforms


@pytest.mark.parametrize("platforms", PLATFORMS, ids=lambda p: p[0])
def test_flax_modules_export_forward_and_training_step(platforms):
    linen = recurrent.linen.GRU(4, bidirectional=True)
    variables = linen.init(jax.random.PRNGKey(0), X, seq_lengths=LENGTHS)
    model = recurrent.nnx.LSTM(3, 4, bidirectional=True, rngs=flax_nnx.Rngs(0))
    graph, state = flax_nnx.split(model)

    def forward(variables, state, x, lengths):  # -> (batch, time, 8) twice
        y_linen = linen.apply(variables, x, seq_lengths=lengths)
        y_nnx = flax_nnx.merge(graph, state)(x, seq_lengths=lengths)
        return y_linen, y_nnx

    params = (variables, state)
    step, opt = _train_step(lambda p: sum(jnp.sum(y ** 2) for y in forward(*p, X, LENGTHS)))
    exported = export.export(jax.jit(forward), platforms=platforms)(*params, X, LENGTHS)
    assert [a.shape for a in exported.out_avals] == [(2, 5, 8), (2, 5, 8)]
    export.export(step, platforms=platforms)(params, opt.init(params))


def test_auto_lowers_the_kernel_only_for_cuda(monkeypatch):
    """As on a GPU machine, where ``impl="auto"`` configures the kernel: a stand-in kernel
    that leaves a marker custom call must be in the CUDA export and not in the TPU one."""
    marker = "recurrent_test_kernel"

    def marked_run_layer(cell, config, layer, xs, carry, seq_lengths=None):
        ys, carry = fast.run_layer(cell, layer, xs, carry, seq_lengths)
        return jax.ffi.ffi_call(marker, jax.ShapeDtypeStruct(ys.shape, ys.dtype))(ys), carry

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(kernel_layer, "configure", lambda kind, impl, *args: object())
    monkeypatch.setattr(kernel_layer, "run_layer", marked_run_layer)
    params = recurrent.init_lstm(jax.random.PRNGKey(0), 3, 4, bidirectional=True)
    forward = jax.jit(lambda p, x: recurrent.lstm(p, x, seq_lengths=LENGTHS)[0])
    allow = [export.DisabledSafetyCheck.custom_call(marker)]
    lowered = {p: export.export(forward, platforms=(p,), disabled_checks=allow)(params, X)
               for p in ("cuda", "tpu")}
    assert marker in lowered["cuda"].mlir_module()
    assert marker not in lowered["tpu"].mlir_module()
