"""recurrent's GPU kernel against cuDNN (torch and jax.experimental.rnn), flax.linen and
recurrent's XLA path, forward and forward+backward, in one process; plus the kernel's
correctness on the GPU.

    python benchmarks/bench_gpu.py [--repeats 20] [--quick] [--budget 420] [--out PATH]
                                   [--configs 0,3,1,2]

First it checks the kernel (``impl="pallas"``) against the XLA path (``impl="fast"``) at
full float32 precision: outputs, final states and every gradient, bidirectional and
stacked, with ``seq_lengths`` and a random initial state, in float32 and bfloat16 (it
reports the largest relative error; the targets are 1e-5 and 1e-2), and the number of grid
barriers that timed out (0 when sound); both as :func:`persistent.plan` tiles it and as
its ``FALLBACK`` where the sizes rule that out (weights read at every step, gathering
backward pass). Then, for the LSTM and the GRU at each configuration, it times
``torch.nn.LSTM``/``GRU`` (cuDNN), ``jax.experimental.rnn.lstm`` (cuDNN, LSTM only), flax
``RNN(OptimizedLSTMCell)`` / ``RNN(GRUCell)``, ``recurrent`` with ``impl="fast"`` (the XLA
path, at the GPU default ``unroll=8``) and with ``impl="pallas"``, each at its library's
default float32 precision (TF32 matmuls on this GPU for all of them), and says which of
the two ``impl="auto"``, the default, runs. The tuning table times the XLA path's
``unroll`` and the kernel's ``TUNING`` variants. Forward+backward is the gradient of
``sum(y)`` with respect to the params and ``x``. Medians in ms of interleaved
repetitions; ratios below 1 mean the kernel is faster.
Rows stop being started once ``--budget`` seconds have passed. Everything is written to
``benchmarks/results/gpu.md`` (or ``--out``) with the card and versions.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import recurrent
from recurrent.kernels import layer as kernel_layer
from recurrent.kernels import persistent

from common import RESULTS, FlaxStack, jax_fns, machine, measure

# (batch, time, input, hidden, layers, bidirectional): the table of issue 6
CONFIGS = [(64, 256, 256, 512, 1, False), (32, 1024, 128, 256, 1, False),
           (256, 256, 1024, 1024, 1, False), (64, 256, 256, 512, 2, True)]
QUICK_CONFIGS = [(16, 32, 16, 64, 1, False), (16, 32, 16, 64, 2, True)]
CHECKS = [(40, 17, 24, 256, 1, True), (5, 33, 12, 64, 2, True), (64, 40, 32, 512, 1, False)]
# persistent.plan's choices turned off, as where the sizes rule them out (no weights on
# chip: no scattering backward pass either)
FALLBACK = {"resident": False, "scatter": False}
TUNING = {"default": {}, "gathering backward": {"scatter": False},
          "weights streamed (FALLBACK)": FALLBACK, "8 warps": {"warps": 8}}
LAYERS = {"lstm": (recurrent.init_lstm, recurrent.lstm),
          "gru": (recurrent.init_gru, recurrent.gru)}


def _inputs(config, seed=0):
    batch, time_steps, inputs, hidden, layers, bi = config
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    x = jax.random.normal(k1, (batch, time_steps, inputs))
    lengths = jax.random.randint(k2, (batch,), 0, time_steps + 1).at[0].set(time_steps)
    state_shape = (layers * (2 if bi else 1), batch, hidden)
    return x, lengths, jax.random.normal(k3, state_shape), jax.random.normal(k4, state_shape)


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))


@contextlib.contextmanager
def _plans(**variant):
    """Within: :func:`persistent.plan` gives ``variant`` (see ``persistent.Plan``) too."""
    original = persistent.plan
    persistent.plan = lambda *a, **k: original(*a, **{**variant, **k})
    try:
        yield
    finally:
        persistent.plan = original


def _traced(variant, fns):
    """Compiles the zero-argument ``fns`` with the kernel ``variant``; returns them."""
    with _plans(**variant):
        jax.block_until_ready([f() for f in fns])
    return fns


def check(kind, config, dtype=None, variant=None):
    """Largest relative error of the kernel (``variant`` of it) against the XLA path, both
    with matmuls in ``dtype``, over outputs, states and gradients (params, x, initial
    state)."""
    init, run = LAYERS[kind]
    x, lengths, h0, c0 = _inputs(config)
    params = init(jax.random.PRNGKey(1), config[2], config[3], config[4], config[5])
    state = (h0, c0) if kind == "lstm" else h0

    def values(impl, p, x, s):
        return run(p, x, lengths, s, impl=impl, dtype=dtype)

    def loss(impl, p, x, s):
        y, final = values(impl, p, x, s)
        weights = jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape))
        return jnp.sum(y.astype(jnp.float32) * weights) + sum(
            jnp.sum(jnp.sin(f)) for f in jax.tree.leaves(final))

    errors = {}
    for name, fn in (("value", values), ("grad", jax.grad(loss, argnums=(1, 2, 3)))):
        with jax.default_matmul_precision("highest"), _plans(**(variant or {})):
            got = jax.jit(fn, static_argnums=0)("pallas", params, x, state)
            want = jax.jit(fn, static_argnums=0)("fast", params, x, state)
        errors[name] = max(jax.tree.leaves(jax.tree.map(_rel, got, want)))
    return errors


def barrier_timeouts(kind, config, variant=None):
    """How many grid barriers gave up waiting in one forward launch (0 when sound)."""
    batch, time_steps, _, hidden, _, bi = config
    num_dirs = 2 if bi else 1
    p = persistent.plan(kind, num_dirs, batch, hidden, jax.devices()[0].core_count,
                        **(variant or {}))
    g = persistent.GATES[kind]
    xp = jnp.ones((time_steps, num_dirs, p.batch, g * hidden)) * 0.1
    w_t = jnp.ones((num_dirs, hidden, g * hidden)) * 0.01
    zeros = jnp.zeros((num_dirs, p.batch, hidden))
    out = jax.jit(lambda: persistent.forward(
        kind, p, jnp.full((p.batch,), time_steps, jnp.int32), xp, w_t,
        jnp.zeros((num_dirs, hidden)), zeros, zeros, dtype=None,
        precision=jax.lax.Precision.DEFAULT, interpret=False))()
    return int(out[-1][:, 1].sum())


def _jax_fns(apply, params, x):
    """As :func:`common.jax_fns`, training differentiates with respect to ``x`` too."""
    return jax_fns(apply, params, x, argnums=(0, 1))


def _libraries(kind, config, torch):
    """``{name: (forward, training)}`` zero-argument callables for one configuration, and
    which of ``"kernel"`` and ``"xla"`` ``impl="auto"`` runs there (its first layer)."""
    batch, time_steps, inputs, hidden, layers, bi = config
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (batch, time_steps, inputs))
    init, run = LAYERS[kind]
    params = init(key, inputs, hidden, layers, bi)
    libs = {name: _jax_fns(lambda p, x, impl=impl: run(p, x, impl=impl)[0], params, x)
            for name, impl in (("kernel", "pallas"), ("xla", "fast"))}
    auto = kernel_layer.configure(kind, "auto", params[0], batch, None)
    module = FlaxStack(kind, hidden, layers, bi)
    libs["flax"] = _jax_fns(module.apply, module.init(key, x), x)
    if kind == "lstm":
        libs["jax cuDNN"] = _jax_cudnn(config, x)
    libs["torch cuDNN"] = _torch_fns(kind, config, x, torch)
    return libs, "xla" if auto is None else "kernel"


def _jax_cudnn(config, x):
    from jax.experimental import rnn

    batch, _, inputs, hidden, layers, bi = config
    weights = rnn.init_lstm_weight(jax.random.PRNGKey(2), inputs, hidden, layers, bi)
    state = jnp.zeros((layers * (2 if bi else 1), batch, hidden))
    lengths = jnp.full((batch,), x.shape[1], jnp.int32)

    def apply(w, x):
        return rnn.lstm(x, state, state, w, lengths, inputs, hidden, layers, 0.0, bi)[0]

    return _jax_fns(apply, weights, x)


def _torch_fns(kind, config, x, torch):
    batch, _, inputs, hidden, layers, bi = config
    module = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(
        inputs, hidden, num_layers=layers, bidirectional=bi, batch_first=True).cuda()
    tx = torch.from_numpy(np.array(x)).cuda().requires_grad_(True)

    def forward():
        with torch.no_grad():
            out = module(tx)[0]
        torch.cuda.synchronize()
        return out

    def training():
        module.zero_grad(set_to_none=True)
        tx.grad = None
        module(tx)[0].sum().backward()
        torch.cuda.synchronize()

    return forward, training


HEADER = ("| cell | B, T, I, H | layers × dirs | pass | torch cuDNN | jax cuDNN | flax "
          "| recurrent xla | recurrent kernel | auto runs | kernel / torch | auto / torch "
          "| kernel / xla |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _row(kind, config, mode, ms, auto):
    batch, time_steps, inputs, hidden, layers, bi = config
    cudnn = f"{ms['jax cuDNN']:.2f}" if "jax cuDNN" in ms else "—"
    torch = ms["torch cuDNN"]
    return (f"| {kind.upper()} | {batch}, {time_steps}, {inputs}, {hidden} | "
            f"{layers} × {2 if bi else 1} | {('forward', 'fwd+bwd')[mode]} | "
            f"{torch:.2f} | {cudnn} | {ms['flax']:.2f} | {ms['xla']:.2f} | "
            f"{ms['kernel']:.2f} | {auto} | {ms['kernel'] / torch:.2f} | "
            f"{ms[auto] / torch:.2f} | {ms['kernel'] / ms['xla']:.2f} |")


def _tuning(config, repeats):
    """The XLA path's ``unroll`` and the kernel's ``TUNING`` variants, LSTM at ``config``;
    each kernel variant's largest output difference from the XLA path is shown beside its
    times."""
    batch, time_steps, inputs, hidden, layers, bi = config
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (batch, time_steps, inputs))
    params = recurrent.init_lstm(key, inputs, hidden, layers, bi)
    fns = {f"xla unroll={u}": _jax_fns(
        lambda p, x, u=u: recurrent.lstm(p, x, impl="fast", unroll=u)[0], params, x)
        for u in (1, 2, 4, 8)}
    for name, variant in TUNING.items():
        fns[f"kernel {name}"] = _traced(variant, _jax_fns(
            lambda q, x: recurrent.lstm(q, x, impl="pallas")[0], params, x))
    fns["kernel bf16"] = _jax_fns(
        lambda p, x: recurrent.lstm(p, x, impl="pallas", dtype=jnp.bfloat16)[0], params, x)
    want = fns["xla unroll=1"][0]()
    lines = ["| variant | forward | fwd+bwd | max abs diff from xla |", "|---|---|---|---|"]
    fwd = measure({n: f[0] for n, f in fns.items()}, repeats)
    train = measure({n: f[1] for n, f in fns.items()}, repeats)
    lines += [f"| {n} | {fwd[n]:.2f} | {train[n]:.2f} | "
              f"{float(jnp.max(jnp.abs(f[0]() - want))):.1e} |" for n, f in fns.items()]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds after which no new row is started")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu.md")
    parser.add_argument("--checks", type=int, default=len(CHECKS),
                        help="how many of the correctness configurations to run")
    parser.add_argument("--check-dtypes", type=int, default=2,
                        help="1: float32 only; 2: float32 and bfloat16")
    parser.add_argument("--tuning-first", action="store_true")
    parser.add_argument("--configs", default=None,
                        help="which rows of CONFIGS to time, in this order, e.g. 0,3,1,2")
    args = parser.parse_args(argv)
    import torch

    start = time.perf_counter()
    where = f"{machine()}; torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}"
    lines = ["# recurrent's GPU kernel vs cuDNN, flax and the XLA path", "",
             f"- machine: {where}",
             f"- command: `python benchmarks/bench_gpu.py`; median ms of {args.repeats} "
             "interleaved repetitions after warm-up; fwd+bwd = gradient of sum(y) w.r.t. "
             "params and x; every library at its default float32 precision", ""]

    def emit(*new):
        lines.extend(new)
        print("\n".join(new), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")

    emit("## Correctness on the GPU (kernel vs XLA path, max relative error)", "",
         f"The fallback is {FALLBACK}.", "",
         "| cell | B, T, I, H, layers, bi | kernel | dtype | values | gradients "
         "| barrier timeouts |", "|---|---|---|---|---|---|---|")
    for kind in ("lstm", "gru"):
        for config in CHECKS[:args.checks]:
            for dtype in (None, jnp.bfloat16)[:args.check_dtypes]:
                for name, variant in (("default", {}), ("fallback", FALLBACK)):
                    try:
                        err = check(kind, config, dtype, variant)
                        emit(f"| {kind} | {config} | {name} | "
                             f"{jnp.dtype(dtype or jnp.float32).name} | {err['value']:.1e} | "
                             f"{err['grad']:.1e} | {barrier_timeouts(kind, config, variant)} |")
                    except Exception as e:  # keep going: the rest still informs
                        emit(f"| {kind} | {config} | {name} | {dtype} | error: "
                             f"{type(e).__name__}: {str(e)[:300]} | | |")

    def tuning():
        emit("", f"## Tuning (LSTM {CONFIGS[0]})", "")
        try:
            emit(*_tuning(QUICK_CONFIGS[0] if args.quick else CONFIGS[0], args.repeats))
        except Exception as e:
            emit(f"error: {type(e).__name__}: {str(e)[:300]}")

    if args.tuning_first:
        tuning()
    emit("", "## Speed", "", HEADER)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    if args.configs:
        configs = [configs[int(i)] for i in args.configs.split(",")]
    for config in configs:
        for kind in ("lstm", "gru"):
            if time.perf_counter() - start > args.budget:
                emit(f"| {kind} | {config} | skipped: over the time budget |")
                continue
            try:
                libs, auto = _libraries(kind, config, torch)
                for mode in (0, 1):
                    ms = measure({n: f[mode] for n, f in libs.items()}, args.repeats)
                    emit(_row(kind, config, mode, ms, auto))
            except Exception as e:
                emit(f"| {kind} | {config} | error: {type(e).__name__}: {str(e)[:300]} |")
    if not args.tuning_first and time.perf_counter() - start < args.budget:
        tuning()
    emit("", f"total {time.perf_counter() - start:.0f} s")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
