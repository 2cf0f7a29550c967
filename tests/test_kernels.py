"""The persistent GPU kernels (recurrent.kernels), run here in Pallas' interpret mode.

The sizes make the grid real: hidden 32 is two blocks of units, batch 18 pads to 32 and
splits into two batch tiles, and both directions run at once; so every block reads the
others' ``h`` as it does on the GPU.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

import recurrent
from recurrent.kernels import layer as kernel_layer
from recurrent.kernels import persistent

B, T, I, H = 18, 5, 4, 32


def _case(kind, seed=0, hidden=H):
    init = recurrent.init_lstm if kind == "lstm" else recurrent.init_gru
    keys = jax.random.split(jax.random.PRNGKey(seed), 5)
    params = init(keys[0], I, hidden, bidirectional=True)
    x = jax.random.normal(keys[1], (B, T, I))
    lengths = jax.random.randint(keys[2], (B,), 0, T + 1).at[:2].set(jnp.array([T, 0]))
    h0 = jax.random.normal(keys[3], (2, B, hidden))
    state = (h0, jax.random.normal(keys[4], (2, B, hidden))) if kind == "lstm" else h0
    return params, x, lengths, state


def _close(got, want, rtol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * float(jnp.max(jnp.abs(w))))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_kernel_equals_reference_values_and_gradients(kind):
    params, x, lengths, state = _case(kind)
    tiling = kernel_layer.configure(kind, "pallas", params[0], B, None)
    assert tiling.interpret and tiling.plan.grid(2, H) == (2, 2, 2)
    assert tiling.plan.resident and tiling.plan.scatter and tiling.plan.loads_first
    assert tiling.plan.kc == H  # as on the GPU: h loaded whole, one matmul chunk
    assert not tiling.plan.transposed and tiling.plan.ahead == 1
    _assert_equals_reference(kind, params, x, lengths, state)


def _assert_equals_reference(kind, params, x, lengths, state):
    """``impl="pallas"`` equals ``impl="reference"`` to 1e-5: values, and the gradients
    of a loss that weighs every output differently, w.r.t. params, inputs and state."""
    run = recurrent.lstm if kind == "lstm" else recurrent.gru

    def loss(impl, p, x, s):
        y, final = run(p, x, lengths, s, impl=impl)
        weights = jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape))
        return jnp.sum(y * weights) + sum(jnp.sum(jnp.sin(f)) for f in jax.tree.leaves(final))

    _close(run(params, x, lengths, state, impl="pallas"),
           run(params, x, lengths, state, impl="reference"), 1e-5)
    grad = jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)
    _close(grad("pallas", params, x, state), grad("reference", params, x, state), 1e-5)


def _grids(jaxpr):
    """The grid of every ``pallas_call`` in ``jaxpr``, nested ones included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            found.append(eqn.params["grid_mapping"].grid)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else [value]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    found += _grids(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    found += _grids(sub)
    return found


def test_vmap_launches_the_kernel_per_element():
    """Pallas batches a launch by a grid dimension: on the GPU the grid barrier would then
    wait on blocks that cannot all be resident. Each element gets its own launch instead."""
    params, x, lengths, state = _case("lstm", seed=3)
    xs = jnp.stack([x, -x, 2 * x])  # (3, B, T, I)

    def run(impl, p, x):
        return recurrent.lstm(p, x, lengths, state, impl=impl)[0]

    def loss(impl, p, xs):
        return jnp.sum(jnp.sin(jax.vmap(lambda x: run(impl, p, x))(xs)))

    _close(jax.vmap(lambda x: run("pallas", params, x))(xs),
           jax.vmap(lambda x: run("reference", params, x))(xs), 1e-5)
    grad = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)
    _close(grad("pallas", params, xs), grad("reference", params, xs), 1e-5)
    jaxpr = jax.make_jaxpr(lambda p, xs: grad("pallas", p, xs))(params, xs).jaxpr
    assert _grids(jaxpr) == [(2, 2, 2)] * 2  # forward and backward, as unbatched


def test_a_timed_out_barrier_makes_the_results_nan(monkeypatch):
    """The kernels count the grid barriers that gave up waiting; results computed past one
    are wrong, so they come out NaN rather than silently."""
    params, x, lengths, state = _case("gru", seed=4)

    def timing_out(launch):
        return lambda *a, **k: (*launch(*a, **k)[:-1], launch(*a, **k)[-1].at[:, 0].set(1))

    def grads(p):
        return jax.grad(lambda p: jnp.sum(recurrent.gru(p, x, lengths, state,
                                                         impl="pallas")[0]))(p)[0][0]

    assert np.isfinite(grads(params).w_hh).all()
    monkeypatch.setattr(persistent, "backward", timing_out(persistent.backward))
    assert np.isnan(grads(params).w_hh).all()
    monkeypatch.setattr(persistent, "forward", timing_out(persistent.forward))
    y, h_n = recurrent.gru(params, x, lengths, state, impl="pallas")
    valid = jnp.arange(T)[None, :] < lengths[:, None]  # (B, T): steps past are zero
    assert np.isnan(h_n).all() and np.isnan(y[valid]).all()


@pytest.mark.parametrize("dtype, overrides, hidden", [
    (jnp.bfloat16, {}, H), (jnp.float16, {}, H), (jnp.bfloat16, {"transposed": True}, H),
    (jnp.bfloat16, {"half_exchange": True}, H),
    (jnp.float16, {"half_exchange": True, "transposed": True, "ahead": 2}, 16)])
def test_kernel_half_precision_matmuls(dtype, overrides, hidden, monkeypatch):
    """Half-precision operands, float32 accumulation: values and gradients to 1e-2 of the
    reference path. ``h`` exchanged in half precision (``Plan.half_exchange``) gives the
    very numbers of ``h`` exchanged in float32: the matmul casts it to that dtype anyway."""
    params, x, lengths, state = _case("gru", seed=1, hidden=hidden)
    plan = persistent.plan

    def run(impl, p, x, s, **plan_options):
        monkeypatch.setattr(persistent, "plan", lambda *a, **k: plan(*a, **k, **plan_options))
        return recurrent.gru(p, x, lengths, s, impl=impl, dtype=dtype)

    def loss(impl, p, x, s):
        y, h_n = run(impl, p, x, s, **overrides)
        return jnp.sum(jnp.sin(y.astype(jnp.float32))) + jnp.sum(h_n.astype(jnp.float32))

    got = run("pallas", params, x, state, **overrides)
    assert got[0].dtype == dtype
    _close(got, run("reference", params, x, state), 1e-2)
    grad = jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)
    _close(grad("pallas", params, x, state), grad("reference", params, x, state), 1e-2)
    if overrides.get("half_exchange"):
        assert kernel_layer.configure("gru", "pallas", params[0], B, dtype).plan.half_exchange
        others = {k: v for k, v in overrides.items() if k != "half_exchange"}
        for a, b in zip(got, run("pallas", params, x, state, **others), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("blocks, timeouts", [(1, 0), (2, 1), (3, 2)])
def test_barrier_flags_and_time_outs(monkeypatch, blocks, timeouts):
    """The grid barrier run as it is on the GPU, three barriers in one call: interpret mode
    runs the blocks one after another, so one block alone passes each barrier on its own
    flag, while each block but the last waits for a flag that a later block has not raised
    yet, gives up (after ``SPIN_LIMIT`` polls) and is counted; the last finds every flag
    raised and passes. Three blocks leave a fourth flag column unused."""
    monkeypatch.setattr(persistent, "SPIN_LIMIT", 3)
    plan_ = persistent.plan("lstm", 1, 16, 16 * blocks, 132)
    assert plan_.grid(1, 16 * blocks) == (1, blocks, 1)
    sync = persistent._sync_buffer(plan_, 1, 16 * blocks)

    def kernel(sync_in_ref, sync_ref):
        del sync_in_ref  # aliased to sync_ref
        barrier = persistent._Sync(sync_ref, pl.program_id(0), blocks, True)
        alive = jnp.bool_(True)
        for passed in range(3):  # traced, as the kernels' step counts are
            alive = barrier.wait(barrier.zero + passed, alive)
        barrier.report(alive)

    out = pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct(sync.shape, sync.dtype),
                         grid=(1, blocks, 1), input_output_aliases={0: 0}, interpret=True)(sync)
    assert int(out[0, 0]) == timeouts
    flags = out[0, persistent.FLAGS:]
    np.testing.assert_array_equal(flags[:blocks], 3)  # every block reached every barrier
    assert (flags[blocks:] > 3).all()  # the unused columns never hold anyone back


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
    # h (bb, H) in registers: loaded whole, one chunk; otherwise chunks of 64 rows
    assert persistent.plan("lstm", 1, 16, 512, 132)[2:8] == (512, 16, 4, True, True, True)
    assert persistent.plan("lstm", 1, 16, 512, 132, loads_first=False).kc == 64
    assert persistent.plan("lstm", 1, 16, 512, 132, kc_first=128).kc == 128
    wide = persistent.plan("lstm", 2, 64, 512, 132)  # bb = 32: (32, 512) is 128 a thread
    assert not wide.loads_first and not wide.scatter and wide.kc == 64
    # the transposed matmul: where the weights are held (transposed, before the time loop)
    assert persistent.plan("lstm", 1, 16, 512, 132, transposed=True).transposed
    assert persistent.plan("lstm", 2, 64, 512, 132, transposed=True).transposed  # chunks
    assert not persistent.plan("lstm", 1, 256, 1024, 132, transposed=True).transposed
    with pytest.raises(ValueError, match="ahead must be at least 1"):
        persistent.plan("lstm", 1, 16, 512, 132, ahead=0)
    # h exchanged in half precision only where the matmuls' operands are
    assert persistent.plan("lstm", 1, 16, 512, 132, itemsize=2, half_exchange=True).half_exchange
    assert not persistent.plan("lstm", 1, 16, 512, 132, half_exchange=True).half_exchange
    # fewer, larger blocks where asked for
    assert persistent.plan("lstm", 1, 16, 512, 132, units=32).grid(1, 512) == (1, 16, 1)
    with pytest.raises(ValueError, match="units must be a power of two"):
        persistent.plan("lstm", 1, 16, 512, 132, units=24)


def test_impl_choice_and_errors():
    params, x, _, _ = _case("lstm")
    # off a GPU only impl="pallas" runs the kernel
    for impl in ("fast", "auto"):
        assert kernel_layer.configure("lstm", impl, params[0], B, None) is None
    with pytest.raises(ValueError, match="LSTM and the GRU with reset_after=True"):
        recurrent.rnn(recurrent.init_rnn(jax.random.PRNGKey(0), I, 16), x, impl="pallas")
    with pytest.raises(ValueError, match="hidden_size=20"):
        recurrent.lstm(recurrent.init_lstm(jax.random.PRNGKey(0), I, 20), x, impl="pallas")
    with pytest.raises(ValueError, match="with w_ci, w_cf, w_co"):
        recurrent.lstm(recurrent.init_lstm(jax.random.PRNGKey(0), I, 16, peephole=True), x,
                       impl="pallas")
    with pytest.raises(ValueError, match="impl must be one of"):
        recurrent.lstm(params, x, impl="cudnn")


def test_auto_picks_the_kernel_where_its_weights_stay_on_chip(monkeypatch):
    """``impl="auto"`` on a lone CUDA GPU (faked: only the choice runs here)."""
    device = types.SimpleNamespace(platform="gpu", compute_capability="9.0", core_count=132)
    count = 1
    monkeypatch.setattr(jax, "devices", lambda *a: [device])
    monkeypatch.setattr(jax, "device_count", lambda *a: count)
    key = jax.random.PRNGKey(0)

    def auto(kind, hidden, batch=64, dirs=1, dtype=None, remat_chunk=None, **options):
        params = (recurrent.init_lstm if kind == "lstm" else recurrent.init_gru)(
            key, 8, hidden, bidirectional=dirs == 2, **options)
        return kernel_layer.configure(kind, "auto", params[0], batch, dtype, remat_chunk)

    chosen = auto("lstm", 512)  # an H100 holds the 128 KiB slice: the kernel
    assert not chosen.interpret and chosen.plan.resident and chosen.plan.scatter
    assert chosen.plan.loads_first
    assert auto("gru", 512, dirs=2, batch=16).plan.loads_first
    # where h (bb, H) does not fit in registers the kernel was slower: the XLA path
    assert auto("gru", 512, dirs=2) is None  # bb = 32
    assert auto("lstm", 1024, batch=256) is None  # 256 KiB a block
    assert auto("lstm", 1024, batch=256, dtype=jnp.bfloat16) is None  # held, bb = 128
    assert auto("lstm", 512, remat_chunk=8) is None  # asked for less memory
    plan = persistent.plan  # a benchmark turning the transposed matmuls on times them
    monkeypatch.setattr(persistent, "plan", lambda *a, **k: plan(*a, **k, transposed=True))
    assert auto("gru", 512, dirs=2).plan.transposed  # bb = 32: chunks of h, transposed
    assert auto("lstm", 1024, batch=256) is None  # weights streamed: never transposed
    assert auto("lstm", 1024, batch=256, dtype=jnp.bfloat16) is None  # 128 rows: spills
    monkeypatch.setattr(persistent, "plan", plan)
    assert auto("lstm", 48, proj_size=16) is None  # cell options: no kernel, no error
    assert kernel_layer.configure(None, "auto", None, 64, None) is None  # no kernel (RNN)
    device.compute_capability = "8.6"  # 99 KiB a block: 64 KiB of weights at H 256
    assert kernel_layer.shared_bytes(device) == 67 << 10
    assert auto("lstm", 512) is None and auto("lstm", 256).plan.resident
    device.compute_capability = "gfx90a"  # not CUDA
    assert auto("lstm", 256) is None
    device.compute_capability, count = "9.0", 2  # several devices: XLA partitions the step
    assert auto("lstm", 256) is None
    device.platform, count = "cpu", 1
    assert auto("lstm", 256) is None


@pytest.mark.parametrize("kind, overrides", [
    ("lstm", {"resident": False, "scatter": False}), ("gru", {"scatter": False})])
def test_kernel_fallbacks_equal_reference(kind, overrides, monkeypatch):
    """Where the sizes rule out :func:`persistent.plan`'s first choice: weights read at
    every step (the LSTM: chunks of 4 rows, 8 unrolled forward and 32 looped in the
    gathering backward pass) and the backward pass that gathers every block's gate
    gradients (the GRU: with the weights held, 24 chunks unrolled)."""
    params, x, lengths, state = _case(kind, seed=2)
    plan = persistent.plan
    monkeypatch.setattr(persistent, "plan", lambda *a, **k: plan(
        *a, **k, **overrides)._replace(kc=4))
    tiling = kernel_layer.configure(kind, "pallas", params[0], B, None).plan
    assert (tiling.resident, tiling.scatter) == (kind == "gru", False)
    _assert_equals_reference(kind, params, x, lengths, state)


@pytest.mark.parametrize("kind, overrides, hidden, kc", [
    ("lstm", {}, 16, None), ("lstm", {"transposed": True}, H, None),
    ("lstm", {"ahead": 2}, 16, None), ("gru", {"ahead": 3, "transposed": True}, 16, None),
    ("lstm", {"transposed": True, "loads_first": False, "scatter": False}, 16, 8),
    ("gru", {"transposed": True, "units": 32}, H, None)])
def test_kernel_variants_equal_reference(kind, overrides, hidden, kc, monkeypatch):
    """The plan's untimed choices (``Plan.transposed``, ``Plan.ahead``, ``units``): the same
    numbers, also with ``h`` multiplied in chunks of ``kc`` rows (transposed products
    accumulated) and the gathering backward pass. Where a direction is one block of units
    (``hidden=16``, or 32 units at ``hidden=32``), interpret mode runs every step in one
    call, as the GPU does: the barrier, the loads ``ahead`` and the backward pass' two
    slots of products then work across steps within the kernel."""
    params, x, lengths, state = _case(kind, seed=4, hidden=hidden)
    plan = persistent.plan

    def chunked(tiling):
        return tiling._replace(kc=kc) if kc else tiling

    monkeypatch.setattr(persistent, "plan", lambda *a, **k: chunked(plan(*a, **k, **overrides)))
    tiling = kernel_layer.configure(kind, "pallas", params[0], B, None).plan
    assert tiling.grid(2, hidden) == (2, hidden // overrides.get("units", 16), 2)
    others = {k: v for k, v in overrides.items() if k not in ("transposed", "ahead")}
    assert tiling._replace(transposed=False, ahead=1) == chunked(plan(
        kind, 2, B, hidden, 1 << 30, **others))  # nothing else changed
    assert (tiling.transposed, tiling.ahead) == (overrides.get("transposed", False),
                                                 overrides.get("ahead", 1))
    _assert_equals_reference(kind, params, x, lengths, state)


def test_fused_layout_and_plan_limits():
    w_t = jnp.arange(2 * 32 * 96, dtype=jnp.float32).reshape(2, 32, 96)  # GRU, H=32
    fused = persistent.fuse(w_t, 16)
    assert fused.shape == (2, 32, 128)
    for j, g, u in [(0, 0, 0), (1, 2, 3), (1, 1, 15)]:  # block j, gate g, unit u
        np.testing.assert_array_equal(fused[:, :, j * 64 + g * 16 + u],
                                      w_t[:, :, g * 32 + j * 16 + u])
    assert not fused[:, :, 48:64].any() and not fused[:, :, 112:].any()  # padded 4th gate
    # a block's weights must fit on chip: 4 * 16 * 1024 floats do not, in bfloat16 they do
    assert not persistent.plan("lstm", 1, 256, 1024, 132).resident
    assert persistent.plan("lstm", 1, 256, 1024, 132, itemsize=2).resident
    assert not persistent.plan("lstm", 1, 64, 512, 132, shared_bytes=64 << 10).resident
    # the scattered product must fit in 64 registers a thread
    assert persistent.plan("lstm", 1, 64, 512, 132).scatter
    assert not persistent.plan("lstm", 2, 64, 512, 132).scatter  # 32 rows a block
    assert persistent.plan("lstm", 2, 64, 512, 132, warps=8).scatter
    assert not persistent.plan("lstm", 1, 64, 512, 132, scatter=False).scatter
    assert not persistent.plan("lstm", 1, 64, 512, 132, resident=False).scatter


@pytest.mark.parametrize("overrides", [{"warps": 8}, {"resident": False}])
def test_kernels_lower_to_triton_for_cuda(overrides):
    """No GPU here: lowering for CUDA still runs Pallas' Triton lowering of every kernel,
    with the weights held and the scattering backward pass, and with neither."""
    tiling = persistent.plan("gru", 2, 64, 512, 132, **overrides)
    assert tiling.resident == tiling.scatter == ("warps" in overrides)
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
