"""The persistent GPU kernels (recurrent.kernels), run here in Pallas' interpret mode.

The sizes make the grid real: hidden 32 is two blocks of units, batch 18 pads to 32 and
splits into two batch tiles, and both directions run at once; so every block reads the
others' ``h`` as it does on the GPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrent
from recurrent.kernels import layer as kernel_layer
from recurrent.kernels import persistent

B, T, I, H = 18, 5, 4, 32


def _case(kind, seed=0):
    init = recurrent.init_lstm if kind == "lstm" else recurrent.init_gru
    keys = jax.random.split(jax.random.PRNGKey(seed), 5)
    params = init(keys[0], I, H, bidirectional=True)
    x = jax.random.normal(keys[1], (B, T, I))
    lengths = jax.random.randint(keys[2], (B,), 0, T + 1).at[:2].set(jnp.array([T, 0]))
    h0 = jax.random.normal(keys[3], (2, B, H))
    state = (h0, jax.random.normal(keys[4], (2, B, H))) if kind == "lstm" else h0
    return params, x, lengths, state


def _close(got, want, rtol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * float(jnp.max(jnp.abs(w))))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_kernel_equals_reference_values_and_gradients(kind):
    params, x, lengths, state = _case(kind)
    run = recurrent.lstm if kind == "lstm" else recurrent.gru
    config = kernel_layer.configure(kind, "pallas", params[0], B, None)
    assert config.interpret and persistent.plan(kind, 2, B, H, 1 << 30).grid(2, H) == (2, 2, 2)

    def loss(impl, p, x, s):
        y, final = run(p, x, lengths, s, impl=impl)
        weights = jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape))
        return jnp.sum(y * weights) + sum(jnp.sum(jnp.sin(f)) for f in jax.tree.leaves(final))

    _close(run(params, x, lengths, state, impl="pallas"),
           run(params, x, lengths, state, impl="reference"), 1e-5)
    grad = jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)
    _close(grad("pallas", params, x, state), grad("reference", params, x, state), 1e-5)


def test_kernel_bfloat16_matmuls():
    params, x, lengths, state = _case("gru", seed=1)
    got = recurrent.gru(params, x, lengths, state, impl="pallas", dtype=jnp.bfloat16)
    want = recurrent.gru(params, x, lengths, state, impl="reference", dtype=jnp.bfloat16)
    _close(got, want, 1e-2)


def test_plan_keeps_every_block_resident():
    assert persistent.plan("lstm", 1, 8, 40, 132) is None  # hidden not a multiple of 16
    for dirs, batch, hidden in [(1, 64, 512), (2, 64, 512), (1, 256, 1024), (2, 3, 64)]:
        tiling = persistent.plan("lstm", dirs, batch, hidden, 132)
        assert np.prod(tiling.grid(dirs, hidden)) <= 132
        assert tiling.batch >= batch and tiling.batch % tiling.bb == 0
        assert hidden % tiling.bh == 0 and hidden % tiling.kc == 0
    assert persistent.plan("lstm", 2, 64, 512, 132).grid(2, 512) == (2, 32, 2)  # batch split
    assert persistent.plan("lstm", 2, 64, 512, 132, split_batch=False).bb == 64
    assert persistent.plan("lstm", 1, 4096, 512, 132) is None  # accumulators too large


def test_impl_choice_and_errors():
    params, x, _, _ = _case("lstm")
    # the kernel runs only when asked for
    assert kernel_layer.configure("lstm", "fast", params[0], B, None) is None
    with pytest.raises(ValueError, match="LSTM and the GRU with reset_after=True"):
        recurrent.rnn(recurrent.init_rnn(jax.random.PRNGKey(0), I, 16), x, impl="pallas")
    with pytest.raises(ValueError, match="hidden_size=20"):
        recurrent.lstm(recurrent.init_lstm(jax.random.PRNGKey(0), I, 20), x, impl="pallas")
    with pytest.raises(ValueError, match="with w_ci, w_cf, w_co"):
        recurrent.lstm(recurrent.init_lstm(jax.random.PRNGKey(0), I, 16, peephole=True), x,
                       impl="pallas")
    with pytest.raises(ValueError, match="impl must be one of"):
        recurrent.lstm(params, x, impl="cudnn")
