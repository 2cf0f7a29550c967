"""Parallel in time against our fastest sequential paths: memory and speed per row.

    python benchmarks/bench_parallel.py                  # the GPU grid, or the CPU one
    python benchmarks/bench_parallel.py --rows 16,128,256 16,128,65536 --budget 480
    python benchmarks/bench_parallel.py --chunk 1024 --budget 420 --out $OUT/parallel_gpu.md

A row is one ``batch, hidden, time``. In each, a one-layer GRU (input 8) runs as

- ``reference``, ``fast``, and on a GPU ``auto`` (the persistent kernel where it fits):
  :func:`recurrent.gru` with that ``impl``, the sequential paths;
- ``quasi-DEER`` (and ``quasi-DEER/C`` with ``--chunk C``): :func:`recurrent.deer.deer_unroll`
  with the diagonal Jacobian, its iteration count in the last column (the largest of any
  chunk); it falls back to the scan when it does not converge, as the count then says;

and a minGRU of the same size by its associative scan (``parallel``) and its scan
(``reference``). ``fwd`` is the output ``y``, ``train`` the gradient of ``sum(y)`` with
respect to the params; ``MiB`` is what XLA plans for the training step (temporaries,
arguments and outputs, from the compiled ``memory_analysis()``), before it runs. The ratio
is ms against the fastest sequential path of the same cell in the same row (below 1: the
parallel form is faster). Timing: on a GPU :func:`common.measure_gpu` (``--calls`` calls
back to back, one sync: what a training loop sees; ``--calls * 4096 / T`` of them from
``T = 4096``, so that a long row does not take minutes), on a CPU :func:`common.measure`
(medians of ``--repeats`` interleaved runs after warm-up). A path that fails to compile or
run (out of memory) shows the error's first words in place of its times. Rows run in
order until ``--budget`` seconds have passed; each row is appended to the output file as
it finishes, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp

import recurrent
from recurrent.deer import deer_unroll

from common import RESULTS, machine, measure, measure_gpu

INPUTS = 8
# (batch, hidden, time), most important first: the B16 H128 line, then the other
# batch and hidden sizes at a short, a long and the longest length.
GPU_ROWS = ([(16, 128, t) for t in (256, 1024, 4096, 16384, 65536)]
            + [(b, h, t) for t in (1024, 16384, 65536)
               for b, h in ((1, 128), (64, 128), (16, 16), (16, 512))])
CPU_ROWS = ([(4, 32, t) for t in (256, 1024, 4096)]
            + [(b, h, 1024) for b, h in ((1, 32), (16, 32), (4, 8), (4, 128))])


def _paths(batch, hidden, chunk, gpu):
    """``{(cell, name): (sequential, apply(params, x) -> (y, iterations or None))}`` and
    each cell's params maker."""
    gru_cell = recurrent.gru_cell(hidden)

    def layer(kind, impl):
        fn = getattr(recurrent, kind)
        return lambda p, x: (fn(p, x, impl=impl)[0], None)

    def quasi_deer(chunk):
        def apply(p, x):
            _, ys, info = deer_unroll(gru_cell, p[0][0], x, chunk=chunk, return_info=True)
            return ys, info["iterations"]
        return apply

    paths = {("GRU", "reference"): (True, layer("gru", "reference")),
             ("GRU", "fast"): (True, layer("gru", "fast"))}
    if gpu:
        paths[("GRU", "auto")] = (True, layer("gru", "auto"))
    paths[("GRU", "quasi-DEER")] = (False, quasi_deer(None))
    if chunk:
        paths[("GRU", f"quasi-DEER/{chunk}")] = (False, quasi_deer(chunk))
    paths[("minGRU", "reference")] = (True, layer("mingru", "reference"))
    paths[("minGRU", "parallel")] = (False, layer("mingru", "parallel"))
    inits = {"GRU": partial(recurrent.init_gru, input_size=INPUTS, hidden_size=hidden),
             "minGRU": partial(recurrent.init_mingru, input_size=INPUTS, hidden_size=hidden)}
    return paths, inits


def _compile(apply, params, x):
    """Compiled forward ``(y, iterations)`` and training step, and the step's MiB."""
    fwd = jax.jit(apply).lower(params, x).compile()
    train = jax.jit(jax.grad(lambda p, x: jnp.sum(apply(p, x)[0]))).lower(params, x).compile()
    mem = train.memory_analysis()
    mib = (mem.temp_size_in_bytes + mem.argument_size_in_bytes
           + mem.output_size_in_bytes) / 2**20
    return fwd, train, mib


def _error(exc):
    return " ".join(str(exc).split()[:6])


def run_row(batch, hidden, time_steps, chunk, repeats, calls, gpu):
    """Measures every path at one size: a list of table lines' fields."""
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (batch, time_steps, INPUTS))
    paths, inits = _paths(batch, hidden, chunk, gpu)
    params = {cell: init(key) for cell, init in inits.items()}
    results, fns = {}, {}
    for (cell, name), (_, apply) in paths.items():
        try:
            fwd, train, mib = _compile(apply, params[cell], x)
            iterations = fwd(params[cell], x)[1]
            iterations = None if iterations is None else int(iterations)
            jax.block_until_ready(train(params[cell], x))
        except jax.errors.JaxRuntimeError as exc:  # out of memory and the like: reported
            results[cell, name] = dict(error=_error(exc))
            continue
        results[cell, name] = dict(mib=mib, iterations=iterations)
        fns[cell, name, "fwd"] = partial(fwd, params[cell], x)
        fns[cell, name, "train"] = partial(train, params[cell], x)
    calls = max(1, calls * 4096 // max(time_steps, 4096))  # long rows: fewer, longer calls
    timed = measure_gpu(fns, repeats, calls) if gpu else measure(fns, repeats)
    for (cell, name, mode), ms in timed.items():
        results[cell, name][mode] = ms
    fastest = {(cell, mode): min((r[mode] for (c, n), r in results.items()
                                  if c == cell and paths[c, n][0] and mode in r), default=None)
               for cell in inits for mode in ("fwd", "train")}
    return [_line(cell, name, batch, hidden, time_steps, results[cell, name],
                  {mode: fastest[cell, mode] for mode in ("fwd", "train")})
            for cell, name in paths]


def _line(cell, name, batch, hidden, time_steps, r, fastest):
    head = f"| {cell} | {name} | {batch} | {hidden} | {time_steps} |"
    if "error" in r:
        return head + f" {r['error']} | | | | | |"
    ratios = [f"{r[m] / fastest[m]:.3g}" if fastest[m] else "" for m in ("fwd", "train")]
    its = "" if r["iterations"] is None else str(r["iterations"])
    return (head + f" {r['fwd']:.3g} | {r['train']:.3g} | {r['mib']:.1f} | {ratios[0]} | "
            f"{ratios[1]} | {its} |")


HEADER = ("| cell | path | B | H | T | fwd ms | train ms | train MiB | fwd ratio | train ratio "
          "| iterations |\n|---|---|---|---|---|---|---|---|---|---|---|")


def _size(text):
    batch, hidden, time_steps = (int(v) for v in text.split(","))
    return batch, hidden, time_steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=_size, nargs="+", default=None,
                        help="B,H,T triples (default: the GPU or the CPU grid above)")
    parser.add_argument("--chunk", type=int, default=None,
                        help="also time quasi-DEER by chunks of this many steps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10, help="GPU: calls per sync")
    parser.add_argument("--budget", type=float, default=float("inf"),
                        help="seconds after which no new row starts")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the table (default benchmarks/results/)")
    command = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(command)
    backend = jax.default_backend()
    gpu = backend == "gpu"
    rows = args.rows or (GPU_ROWS if gpu else CPU_ROWS)
    out = args.out or RESULTS / f"parallel_{backend}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    timing = (f"`measure_gpu`, {args.calls} calls per sync, x 4096/T above T 4096" if gpu
              else "`measure`, interleaved with pauses")
    out.write_text(
        f"# Parallel in time vs our sequential paths ({backend})\n\n"
        f"- machine: {machine()}\n"
        f"- one-layer GRU and minGRU, input {INPUTS}, float32; median ms of {args.repeats} "
        f"repetitions ({timing}); ratio = ms / the fastest sequential path of the same cell "
        f"and row; MiB: the compiled training step's temporaries + arguments + outputs\n"
        f"- command: `{' '.join(['python benchmarks/bench_parallel.py', *command])}`\n\n"
        f"{HEADER}\n")
    print(machine(), flush=True)
    print(HEADER, flush=True)
    start = time.perf_counter()
    for batch, hidden, time_steps in rows:
        if time.perf_counter() - start > args.budget:
            print(f"budget of {args.budget:.0f} s spent; rows left out from "
                  f"B{batch} H{hidden} T{time_steps}", flush=True)
            break
        lines = run_row(batch, hidden, time_steps, args.chunk, args.repeats, args.calls, gpu)
        with out.open("a") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
