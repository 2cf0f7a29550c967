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


@pytest.mark.parametrize("kind, scatter", [("lstm", False), ("gru", True)])
def test_kernel_variants_equal_reference(kind, scatter, monkeypatch):
    """The weights held on chip, the gates fused into one matmul, polling by loads, loads 3
    chunks ahead (with chunks of 16 rows: 2 forward, all loaded at once, and 8 in the
    LSTM's gathering backward pass), and the GRU's backward pass that scatters products
    (the shares of 2 blocks)."""
    params, x, lengths, state = _case(kind, seed=2)
    run = recurrent.lstm if kind == "lstm" else recurrent.gru
    plan = persistent.plan
    monkeypatch.setattr(persistent, "plan", lambda *a, **k: plan(
        *a, **k, resident=True, fused=True, poll_load=True, prefetch=3,
        scatter=scatter)._replace(kc=16))
    assert kernel_layer.configure(kind, "pallas", params[0], B, None).plan.resident

    def loss(impl, p, x, s):
        return sum(jnp.sum(jnp.sin(f)) for f in jax.tree.leaves(run(p, x, lengths, s,
                                                                     impl=impl)))

    _close(run(params, x, lengths, state, impl="pallas"),
           run(params, x, lengths, state, impl="reference"), 1e-5)
    grad = jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)
    _close(grad("pallas", params, x, state), grad("reference", params, x, state), 1e-5)


def test_fused_layout_and_variant_limits():
    w_t = jnp.arange(2 * 32 * 96, dtype=jnp.float32).reshape(2, 32, 96)  # GRU, H=32
    fused = persistent.fuse(w_t, 16)
    assert fused.shape == (2, 32, 128)
    for j, g, u in [(0, 0, 0), (1, 2, 3), (1, 1, 15)]:  # block j, gate g, unit u
        np.testing.assert_array_equal(fused[:, :, j * 64 + g * 16 + u],
                                      w_t[:, :, g * 32 + j * 16 + u])
    assert not fused[:, :, 48:64].any() and not fused[:, :, 112:].any()  # padded 4th gate
    # a block's weights must fit on chip: 4 * 16 * 1024 floats do not, in bfloat16 they do
    assert not persistent.plan("lstm", 1, 256, 1024, 132, resident=True).resident
    assert persistent.plan("lstm", 1, 256, 1024, 132, resident=True, itemsize=2).resident
    # loads ahead and the scattered product must fit in 64 registers a thread
    small = persistent.plan("lstm", 1, 64, 512, 132, prefetch=8, scatter=True)
    large = persistent.plan("lstm", 1, 256, 1024, 132, prefetch=8, scatter=True)
    assert (small.prefetch, small.scatter, large.prefetch, large.scatter) == (8, True, 0, False)
    assert persistent.plan("lstm", 1, 64, 512, 132, warps=8).warps == 8


@pytest.mark.parametrize("variant", [{}, {"resident": True, "fused": True, "poll_load": True,
                                          "prefetch": 8, "scatter": True, "warps": 8}])
def test_kernels_lower_to_triton_for_cuda(variant):
    """No GPU here: lowering for CUDA still runs Pallas' Triton lowering of every kernel."""
    tiling = persistent.plan("gru", 2, 64, 512, 132, **variant)
    assert tiling.resident == tiling.scatter == (tiling.prefetch == 8) == bool(variant)
    f32, time = jnp.float32, 3
    xp = jnp.zeros((time, 2, tiling.batch, 3 * 512), f32)
    state, lengths = jnp.zeros((2, tiling.batch, 512), f32), jnp.zeros((tiling.batch,), jnp.int32)
    options = dict(dtype=None, precision=jax.lax.Precision.DEFAULT, interpret=False)
    for record in (True, False):
        forward = jax.jit(lambda *a, r=record: persistent.forward(
            "gru", tiling, *a, record=r, **options))
        text = forward.trace(lengths, xp, jnp.zeros((2, 512, 1536), f32), state[:, 0], state,
                             state).lower(lowering_platforms=("cuda",)).as_text()
        assert "__gpu$xla.gpu.triton" in text
    hbuf = jnp.zeros((time + 1, 2, tiling.batch, 512), f32)
    backward = jax.jit(lambda *a: persistent.backward("gru", tiling, *a, **options))
    text = backward.trace(lengths, jnp.zeros((2, 1536, 512), f32),
                          jnp.zeros((time, 2, tiling.batch, 2048), f32), hbuf, hbuf,
                          hbuf[1:], state).lower(lowering_platforms=("cuda",)).as_text()
    assert "__gpu$xla.gpu.triton" in text
