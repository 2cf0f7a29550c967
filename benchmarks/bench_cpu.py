"""recurrent against flax.linen and torch on CPU, forward and forward+backward, in one process.

    python benchmarks/bench_cpu.py [--repeats 11] [--quick] [--out PATH]

For LSTM and GRU at each configuration (batch-first, ``x (B, T, I)``, hidden ``H``) it
times ``recurrent.lstm``/``gru`` (the fast path, and ``impl="reference"``: one
``lax.scan`` per direction differentiated by JAX), flax.linen ``RNN(OptimizedLSTMCell)`` /
``RNN(GRUCell)`` (``Bidirectional`` and stacked for the last configuration) and
``torch.nn.LSTM``/``GRU``. Forward+backward is the gradient of ``sum(y)`` with respect to
every parameter. Each repetition runs every library once, interleaved, so that load from
other processes hits all of them alike; the table gives medians in ms and the ratios
recurrent / torch and recurrent / flax (below 1: recurrent is faster). It then reports
the compiled peak memory of one training step at ``T = 4096`` with and without
``remat_chunk``, and, for each row, the time recurrent and flax spend inside matmul kernels
(from a ``jax.profiler`` trace) next to the goals. Everything is written to
``benchmarks/results/cpu.md`` with the machine and versions.
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

import recurrent

from common import RESULTS, FlaxStack, jax_fns, machine, measure, time_ms

# (batch, time, input, hidden, layers, bidirectional)
CONFIGS = [(32, 128, 64, 128, 1, False), (16, 512, 32, 64, 1, False),
           (64, 256, 128, 256, 1, False), (32, 128, 64, 128, 2, True)]
QUICK_CONFIGS = [(8, 32, 16, 32, 1, False), (8, 32, 16, 32, 2, True)]
MEMORY_CONFIG = (32, 4096, 64, 128)  # batch, time, input, hidden: one LSTM layer
MEMORY_CHUNK = 64


def _inputs(config):
    """The key and ``x (batch, time, input)`` every library of a configuration runs on."""
    batch, time_steps, inputs = config[:3]
    key = jax.random.PRNGKey(0)
    return key, jax.random.normal(key, (batch, time_steps, inputs))


def layer_fns(module, cell, config, **options):
    """(forward, training) zero-argument callables of ``module``'s (``recurrent`` or another
    version of it) LSTM or GRU stack at ``config``, called with ``options``."""
    _, _, inputs, hidden, layers, bi = config
    key, x = _inputs(config)
    init, layer = ((module.init_lstm, module.lstm) if cell == "lstm"
                   else (module.init_gru, module.gru))
    return jax_fns(lambda p, x: layer(p, x, **options)[0],
                   init(key, inputs, hidden, layers, bi), x)


def _libraries(cell, config):
    """``{name: (forward, training)}`` zero-argument callables for one configuration."""
    _, _, inputs, hidden, layers, bi = config
    key, x = _inputs(config)
    libs = {"recurrent": layer_fns(recurrent, cell, config),
            "reference": layer_fns(recurrent, cell, config, impl="reference")}
    module = FlaxStack(cell, hidden, layers, bi)
    libs["flax"] = jax_fns(module.apply, module.init(key, x), x)

    torch_layer = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(
        inputs, hidden, num_layers=layers, bidirectional=bi, batch_first=True)
    tx = torch.from_numpy(np.array(x))  # (batch, time, input), a writable copy

    def torch_forward():
        with torch.no_grad():
            return torch_layer(tx)[0]

    def torch_training():
        torch_layer.zero_grad(set_to_none=True)
        torch_layer(tx)[0].sum().backward()

    libs["torch"] = (torch_forward, torch_training)
    return libs


def matmul_ms(fn, repeats=3):
    """ms per ``fn()`` spent inside matmul kernels (XLA:CPU's ``ynn_fusion``/``dot`` thunks,
    summed over threads), from a ``jax.profiler`` trace: what the matmuls alone cost."""
    with tempfile.TemporaryDirectory() as where:
        with jax.profiler.trace(where):
            for _ in range(repeats):
                jax.block_until_ready(fn())
        trace = jax.profiler.ProfileData.from_file(
            glob.glob(f"{where}/**/*.xplane.pb", recursive=True)[0])
    events = (e for plane in trace.planes for line in plane.lines for e in line.events)
    return sum(e.duration_ns for e in events
               if e.name.startswith(("ynn_fusion", "dot"))) / repeats / 1e6


HEADER = ("| cell | B, T, I, H | layers × dirs | pass | torch | flax | recurrent "
          "| reference | recurrent / torch | recurrent / flax |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


FLOOR_HEADER = ("| cell | B, T, I, H | layers × dirs | pass | 0.8 × torch | 0.5 × flax "
                "| recurrent | GFLOP | at peak | recurrent: in matmuls | flax: in matmuls |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|")
PEAK_SIZE = 2048


def peak_gflops(size=PEAK_SIZE, repeats=15):
    """The machine's float32 matmul rate, GFLOP/s: the faster of JAX's and torch's
    ``(size, size) @ (size, size)``, at its fastest of ``repeats`` (a peak, so the best run,
    not the median)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size))
    ta = torch.from_numpy(np.array(a))
    jax_mm = jax.jit(jnp.matmul)
    jax.block_until_ready(jax_mm(a, a))
    torch.mm(ta, ta)
    best = min(min(time_ms(lambda: jax_mm(a, a)), time_ms(lambda: torch.mm(ta, ta)))
               for _ in range(repeats))
    return 2 * size ** 3 / best / 1e6


def gflop(cell, config, mode):
    """The matmul work of one call, GFLOP: the input and recurrent products of every layer
    and direction; training adds ``dW_ih``, ``dW_hh``, ``dh`` and ``dx`` (not for the first
    layer: the gradient is taken with respect to the params only)."""
    batch, time_steps, inputs, hidden, layers, bi = config
    dirs, gates = 2 if bi else 1, 4 if cell == "lstm" else 3
    total = 0
    for layer in range(layers):
        fan_in = inputs if layer == 0 else dirs * hidden
        forward = fan_in + hidden  # x @ w_ih.T and h @ w_hh.T, per row of gates
        backward = 2 * forward - (fan_in if layer == 0 else 0)
        total += dirs * (forward + mode * backward)
    return 2 * time_steps * batch * gates * hidden * total / 1e9


def describe(cell, config, mode):
    batch, time_steps, inputs, hidden, layers, bi = config
    return (f"| {cell.upper()} | {batch}, {time_steps}, {inputs}, {hidden} | "
            f"{layers} × {2 if bi else 1} | {('forward', 'fwd+bwd')[mode]} |")


def _floor_row(cell, config, mode, ms, fns, peak):
    """The goals next to the matmul work at the machine's peak rate and the time recurrent
    and flax spend in matmul kernels."""
    work = gflop(cell, config, mode)
    return (f"{describe(cell, config, mode)} {0.8 * ms['torch']:.1f} | {0.5 * ms['flax']:.1f} | "
            f"{ms['recurrent']:.1f} | {work:.2f} | {work / peak * 1e3:.1f} | "
            f"{matmul_ms(fns['recurrent']):.1f} | {matmul_ms(fns['flax']):.1f} |")


def _row(cell, config, mode, ms):
    return (f"{describe(cell, config, mode)} {ms['torch']:.1f} | {ms['flax']:.1f} | "
            f"{ms['recurrent']:.1f} | {ms['reference']:.1f} | "
            f"{ms['recurrent'] / ms['torch']:.2f} | {ms['recurrent'] / ms['flax']:.2f} |")


def peak_memory_mb(time_steps, remat_chunk, config=MEMORY_CONFIG):
    """Compiled memory of one LSTM training step (gradient of ``sum(y)``), in MB: XLA's
    temporaries plus arguments and outputs, from ``compiled.memory_analysis()``."""
    batch, _, inputs, hidden = config
    params = recurrent.init_lstm(jax.random.PRNGKey(0), inputs, hidden)
    x = jax.ShapeDtypeStruct((batch, time_steps, inputs), jnp.float32)
    grad = jax.jit(jax.grad(
        lambda p, x: jnp.sum(recurrent.lstm(p, x, remat_chunk=remat_chunk)[0])))
    stats = grad.lower(params, x).compile().memory_analysis()
    total = (stats.temp_size_in_bytes + stats.argument_size_in_bytes
             + stats.output_size_in_bytes)
    return total / 2**20


def _memory_table(time_steps):
    batch, _, inputs, hidden = MEMORY_CONFIG
    lines = [f"Peak memory of one training step (LSTM, B {batch}, I {inputs}, H {hidden}; "
             f"XLA's compiled temporaries + arguments + outputs; the input alone is "
             f"{batch * time_steps * inputs * 4 / 2**20:.0f} MB):", "",
             "| T | remat_chunk | MB |", "|---|---|---|"]
    for t in (time_steps // 4, time_steps):
        for chunk in (None, MEMORY_CHUNK):
            lines.append(f"| {t} | {chunk} | {peak_memory_mb(t, chunk):.0f} |")
    return lines


def _machine():
    return f"{machine()}; torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes, to check that the script runs")
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count())
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    print(_machine())
    load_before = os.getloadavg()
    peak = peak_gflops()
    print(f"peak float32 matmul: {peak:.0f} GFLOP/s")
    print(HEADER, flush=True)
    rows, floors = [], []
    for cell in ("lstm", "gru"):
        for config in configs:
            libs = _libraries(cell, config)
            for mode in (0, 1):
                fns = {name: fns[mode] for name, fns in libs.items()}
                ms = measure(fns, args.repeats)
                rows.append(_row(cell, config, mode, ms))
                floors.append(_floor_row(cell, config, mode, ms, fns, peak))
                print(rows[-1], flush=True)
    floor = ["Where the time goes: the goals and recurrent's median (ms, from the table above) "
             "next to the matmul work of one call (GFLOP) and the ms it takes at this "
             f"machine's peak rate ({peak:.0f} GFLOP/s: the faster of JAX's and torch's "
             f"{PEAK_SIZE}x{PEAK_SIZE} float32 matmul, best of 15), and the time XLA's matmul "
             "kernels keep threads busy in one call (`jax.profiler`, summed over threads: on "
             "2 cores the wall time they take is between half of it and all of it). Where "
             "`at peak` exceeds a goal, no implementation reaches that goal on this machine.",
             "",
             FLOOR_HEADER, *floors]
    print("\n".join(floor))
    memory = _memory_table(256 if args.quick else 4096)
    print("\n".join(memory))
    text = "\n".join([
        "# recurrent vs flax.linen vs torch on CPU", "",
        f"- machine: {_machine()}",
        "- load average (1, 5, 15 min; this script adds up to 2) at the start: "
        f"{', '.join(f'{v:.2f}' for v in load_before)}; at the end: "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"- command: `python benchmarks/bench_cpu.py`; median ms of {args.repeats} "
        "interleaved repetitions after warm-up; fwd+bwd = gradient of sum(y) w.r.t. all "
        "params; `reference` is `impl=\"reference\"` (lax.scan differentiated by JAX)", "",
        HEADER, *rows, "", *floor, "", *memory, ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
