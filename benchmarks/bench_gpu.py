"""recurrent against torch's cuDNN, flax.linen and recurrent's own XLA path on one GPU, in
float32 and half precision, forward and forward+backward, in one process; plus the
kernel's correctness on the GPU.

    python benchmarks/bench_gpu.py [--repeats 10] [--calls 10] [--budget 400]
                                   [--rows 0,1,2] [--checks 3] [--out PATH]

First it checks the kernel (``impl="pallas"``) against the XLA path (``impl="fast"``) at
full float32 precision: outputs, final states and every gradient, bidirectional and
stacked, with ``seq_lengths`` and a random initial state, with float32, bfloat16 and
float16 matmuls (the largest relative error; the targets are 1e-5 and 1e-2), and the
number of grid barriers that timed out (0 when sound); both as :func:`persistent.plan`
tiles it and as its ``FALLBACK`` where the sizes rule that out (weights read at every
step, gathering backward pass).

Then, for each row of ``ROWS`` (in order of importance, until ``--budget`` seconds have
passed), it times ``torch.nn.LSTM``/``GRU`` (cuDNN) in float32 and float16, flax
``RNN(OptimizedLSTMCell)`` / ``RNN(GRUCell)``, ``recurrent``'s XLA path
(``impl="fast"``) and ``recurrent`` as a user gets it (``impl="auto"``, the default: the
kernel or the XLA path, as the "auto runs" column says) in float32, bfloat16 and float16
(``dtype=``: half-precision matmul operands, float32 accumulation and state). float32 is
each library's default precision (TF32 matmuls on this GPU for all of them).
Forward+backward is the gradient of ``sum(y)`` with respect to the params and ``x``.

Two timings, both without pauses (an idle GPU lowers its clocks): ``pipelined``,
``--calls`` calls issued back to back and one sync, divided by the number of calls (what
a training loop sees), with µs per time step in brackets; and ``latency``, one synced
call. Medians in ms of ``--repeats`` interleaved repetitions. Everything is written to
``benchmarks/results/gpu.md`` (or ``--out``) with the card and versions.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import recurrent
from recurrent.kernels import layer as kernel_layer
from recurrent.kernels import persistent

from common import RESULTS, FlaxStack, jax_fns, machine, measure_gpu

# (cell, batch, time, input, hidden, layers, bidirectional), most important first: the
# goal rows of issue 19, then the long-small, the large, B16 H1024 and the stacks
ROWS = [("lstm", 16, 512, 512, 512, 1, False), ("lstm", 64, 256, 256, 512, 1, False),
        ("gru", 16, 512, 512, 512, 1, False), ("gru", 64, 256, 256, 512, 1, False),
        ("lstm", 256, 256, 1024, 1024, 1, False), ("lstm", 16, 512, 1024, 1024, 1, False),
        ("lstm", 32, 1024, 128, 256, 1, False), ("lstm", 64, 256, 256, 512, 2, True),
        ("gru", 64, 256, 256, 512, 2, True), ("gru", 256, 256, 1024, 1024, 1, False),
        ("gru", 16, 512, 1024, 1024, 1, False), ("gru", 32, 1024, 128, 256, 1, False)]
QUICK_ROWS = [("lstm", 16, 8, 16, 32, 1, False), ("gru", 16, 8, 16, 32, 2, True)]
# (batch, time, input, hidden, layers, bidirectional)
CHECKS = [(40, 17, 24, 256, 1, True), (5, 33, 12, 64, 2, True), (64, 40, 32, 512, 1, False)]
QUICK_CHECKS = [(5, 6, 4, 32, 1, True)]
# (cell, dtype, kernel) checked at each of CHECKS, most telling first
CHECK_CASES = [("lstm", "fp32", "default"), ("gru", "fp32", "default"),
               ("lstm", "bf16", "default"), ("gru", "fp16", "default"),
               ("lstm", "fp32", "fallback"), ("lstm", "fp16", "default"),
               ("gru", "bf16", "default"), ("gru", "fp32", "fallback")]
DTYPES = {"fp32": None, "bf16": jnp.bfloat16, "fp16": jnp.float16}
# persistent.plan's choices turned off, as where the sizes rule them out (no weights on
# chip: no scattering backward pass either)
FALLBACK = {"resident": False, "scatter": False}
# variants of the kernel that kernel_resources.py compiles; from the fourth on, the plan's
# choices not yet timed on a GPU (off by default)
TUNING = {"default": {}, "h in chunks of 64 rows": {"loads_first": False},
          "weights streamed (FALLBACK)": FALLBACK,
          "transposed matmuls (wgmma)": {"transposed": True},
          "inputs 2 steps ahead": {"ahead": 2},
          "transposed, 2 ahead": {"transposed": True, "ahead": 2},
          "h exchanged in half precision": {"half_exchange": True},
          "all three": {"transposed": True, "ahead": 2, "half_exchange": True},
          "32 units a block, transposed": {"units": 32, "transposed": True}}
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
    device = jax.devices()[0]
    on_gpu = device.platform == "gpu"
    p = persistent.plan(kind, num_dirs, batch, hidden, device.core_count if on_gpu else 132,
                        **(variant or {}))
    g = persistent.GATES[kind]
    xp = jnp.ones((time_steps, num_dirs, p.batch, g * hidden)) * 0.1
    w_t = jnp.ones((num_dirs, hidden, g * hidden)) * 0.01
    zeros = jnp.zeros((num_dirs, p.batch, hidden))
    out = jax.jit(lambda: persistent.forward(
        kind, p, jnp.full((p.batch,), time_steps, jnp.int32), xp, w_t,
        jnp.zeros((num_dirs, hidden)), zeros, zeros, dtype=None,
        precision=jax.lax.Precision.DEFAULT, interpret=not on_gpu))()
    return int(out[-1][:, 0].sum())


def _jax_fns(apply, params, x):
    """As :func:`common.jax_fns`, training differentiates with respect to ``x`` too."""
    return jax_fns(apply, params, x, argnums=(0, 1))


def _runs(kind, row):
    """Which path ``impl="auto"`` runs at ``row`` (its first layer), for each dtype."""
    _, batch, _, inputs, hidden, layers, bi = row
    params = LAYERS[kind][0](jax.random.PRNGKey(0), inputs, hidden, layers, bi)
    return {name: "xla" if kernel_layer.configure(kind, "auto", params[0], batch, dtype)
            is None else "kernel" for name, dtype in DTYPES.items()}


def _libraries(row, torch, device):
    """``{name: (forward, training)}`` zero-argument callables for one row, each library at
    its default precision in float32 and at half precision."""
    kind, batch, time_steps, inputs, hidden, layers, bi = row
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (batch, time_steps, inputs))
    init, run = LAYERS[kind]
    params = init(key, inputs, hidden, layers, bi)
    libs = {}
    for impl, name in (("auto", "recurrent"), ("fast", "xla")):
        for label, dtype in DTYPES.items():
            if impl == "fast" and label == "fp16":
                continue
            libs[f"{name} {label}"] = _jax_fns(
                lambda p, x, impl=impl, dtype=dtype: run(p, x, impl=impl, dtype=dtype)[0],
                params, x)
    module = FlaxStack(kind, hidden, layers, bi)
    libs["flax fp32"] = _jax_fns(module.apply, module.init(key, x), x)
    for label, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        libs[f"torch {label}"] = _torch_fns(kind, row, x, torch, device, dtype)
    return libs


def _torch_fns(kind, row, x, torch, device, dtype):
    """``torch.nn.LSTM``/``GRU`` (cuDNN on a GPU) in ``dtype``: ``(forward, training)``."""
    _, _, _, inputs, hidden, layers, bi = row
    module = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(
        inputs, hidden, num_layers=layers, bidirectional=bi, batch_first=True)
    module = module.to(device=device, dtype=dtype)
    tx = torch.from_numpy(np.array(x)).to(device=device, dtype=dtype).requires_grad_(True)

    def forward():
        with torch.no_grad():
            return module(tx)[0]

    def training():
        module.zero_grad(set_to_none=True)
        tx.grad = None
        module(tx)[0].sum().backward()

    return forward, training


COLUMNS = ["torch fp32", "torch fp16", "flax fp32", "xla fp32", "xla bf16", "recurrent fp32",
           "recurrent bf16", "recurrent fp16"]
RATIOS = [("recurrent fp32", "torch fp32"), ("recurrent bf16", "torch fp16"),
          ("recurrent fp16", "torch fp16"), ("recurrent bf16", "recurrent fp32")]
HEADER = ("| cell | B, T, I, H | layers × dirs | pass | timing | auto runs (fp32/bf16/fp16) | "
          + " | ".join(COLUMNS) + " | " + " | ".join(f"{a} / {b}" for a, b in RATIOS) + " |\n"
          + "|---" * (6 + len(COLUMNS) + len(RATIOS)) + "|")


def _row(row, mode, timing, ms, runs):
    kind, batch, time_steps, inputs, hidden, layers, bi = row

    def cell(name):
        if name not in ms:
            return "—"
        steps = f" ({ms[name] * 1e3 / time_steps:.1f})" if timing == "pipelined" else ""
        return f"{ms[name]:.2f}{steps}"

    return (f"| {kind.upper()} | {batch}, {time_steps}, {inputs}, {hidden} | "
            f"{layers} × {2 if bi else 1} | {('forward', 'fwd+bwd')[mode]} | {timing} | "
            f"{'/'.join(runs.values())} | " + " | ".join(cell(c) for c in COLUMNS) + " | "
            + " | ".join(f"{ms[a] / ms[b]:.2f}" for a, b in RATIOS) + " |")


def speed(row, torch, device, repeats, calls):
    """The table's lines for one row: forward and fwd+bwd, pipelined and one call's
    latency."""
    kind = row[0]
    runs = _runs(kind, row)
    libs = _libraries(row, torch, device)
    syncs = {name: (lambda _: torch.cuda.synchronize()) if name.startswith("torch")
             and device == "cuda" else jax.block_until_ready for name in libs}
    lines = []
    for mode in (0, 1):
        fns = {n: f[mode] for n, f in libs.items()}
        for timing, n in (("pipelined", calls), ("latency", 1)):
            ms = measure_gpu(fns, repeats, n, syncs)
            lines.append(_row(row, mode, timing, ms, runs))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--calls", type=int, default=10,
                        help="calls issued back to back per pipelined measurement")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU dry run)")
    parser.add_argument("--budget", type=float, default=400.0,
                        help="seconds after which no new row is started")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu.md")
    parser.add_argument("--checks", type=int, default=len(CHECKS),
                        help="how many of the correctness configurations to run")
    parser.add_argument("--check-cases", type=int, default=len(CHECK_CASES),
                        help="how many of CHECK_CASES to run at each")
    parser.add_argument("--rows", default=None,
                        help="which of ROWS to time, in this order, e.g. 0,1,4 ('' for "
                             "none: the checks only)")
    parser.add_argument("--plan", type=_plan_options, default={},
                        help="persistent.plan keywords for every kernel run, e.g. kc_first=256")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    with _plans(**args.plan):
        run(args, argv)


def _plan_options(text: str) -> dict:
    """``"kc_first=256,barrier=flags"`` as plan keywords (ints where they parse)."""
    options = dict(item.split("=", 1) for item in text.split(",") if item)
    return {k: int(v) if v.lstrip("-").isdigit() else {"True": True, "False": False}.get(v, v)
            for k, v in options.items()}


def run(args, argv):
    """Runs the checks and the speed table as ``args`` say."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    cudnn = torch.backends.cudnn.version() if device == "cuda" else None
    lines = ["# recurrent vs cuDNN, flax and the XLA path, on one GPU", "",
             f"- machine: {machine()}; torch {torch.__version__}, cuDNN {cudnn}",
             f"- command: `{' '.join(['python benchmarks/bench_gpu.py', *argv])}`",
             f"- median ms of {args.repeats} interleaved repetitions after warm-up; "
             f"pipelined = {args.calls} calls back to back and one sync, per call, with µs "
             "per step in brackets; latency = one synced call; fwd+bwd = gradient of sum(y) "
             "w.r.t. params and x; fp32 = each library's default (TF32 matmuls)",
             f"- kernel plan keywords: {args.plan or 'none (the defaults)'}", ""]

    def emit(*new):
        lines.extend(new)
        print("\n".join(new), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")

    emit("## Correctness on the GPU (kernel vs XLA path, max relative error)", "",
         f"The fallback is {FALLBACK}.", "",
         "| cell | B, T, I, H, layers, bi | kernel | dtype | values | gradients "
         "| barrier timeouts |", "|---|---|---|---|---|---|---|")
    for config in QUICK_CHECKS if args.quick else CHECKS[:args.checks]:
        for kind, label, name in CHECK_CASES[:args.check_cases]:
            variant = FALLBACK if name == "fallback" else {}
            try:
                err = check(kind, config, DTYPES[label], variant)
                emit(f"| {kind} | {config} | {name} | {label} | {err['value']:.1e} | "
                     f"{err['grad']:.1e} | {barrier_timeouts(kind, config, variant)} |")
            except Exception as e:  # keep going: the rest still informs
                emit(f"| {kind} | {config} | {name} | {label} | error: "
                     f"{type(e).__name__}: {str(e)[:300]} | | |")

    emit("", "## Speed", "", HEADER)
    rows = ROWS
    if args.rows is not None:
        rows = [rows[int(i)] for i in args.rows.split(",") if i]
    if args.quick:  # a dry run: whatever rows were asked for
        rows = QUICK_ROWS
    for row in rows:
        if time.perf_counter() - start > args.budget:
            emit(f"| {row} | skipped: over the time budget |")
            continue
        try:
            emit(*speed(row, torch, device, args.repeats, args.calls))
        except Exception as e:
            emit(f"| {row} | error: {type(e).__name__}: {str(e)[:300]} |")
    emit("", f"total {time.perf_counter() - start:.0f} s")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
