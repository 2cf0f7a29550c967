"""Parallel-in-time evaluation against the sequential scan, forward and forward+backward.

    python benchmarks/bench_parallel.py [--lengths 1024 4096 16384 65536] [--repeats 5]

Rows: minGRU by the sequential scan and by the log-space associative scan; GRU by the
sequential scan and by quasi-DEER (diagonal Jacobian). Prints median milliseconds and the
ratio parallel / sequential (below 1: the parallel form is faster), and writes the table
to ``benchmarks/results/parallel_<backend>.md``.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp

import recurrent
from recurrent import minimal
from recurrent.deer import deer_unroll

from common import RESULTS, machine, measure


def _forward_and_training(unroll_fn, params, xs):
    """Zero-argument ``forward()`` and ``forward+backward()`` (gradient of ``sum(ys)``)."""
    fwd = jax.jit(lambda p, x: unroll_fn(p, x)[1])
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(unroll_fn(p, x)[1])))
    return partial(fwd, params, xs), partial(grad, params, xs)


def _rows(hidden):
    """``{name: (cell, sequential, parallel)}``, each ``unroll(params, xs) -> (carry, ys)``."""
    mingru = minimal.mingru_cell(hidden)
    gru = recurrent.gru_cell(hidden)
    return {
        "minGRU": (mingru,
                   lambda p, x: recurrent.unroll(mingru, p, x),
                   lambda p, x: minimal.parallel_unroll(mingru, p, x)),
        "GRU (quasi-DEER)": (gru,
                             lambda p, x: recurrent.unroll(gru, p, x),
                             lambda p, x: deer_unroll(gru, p, x)),
    }


def run(lengths, batch, hidden, inputs, repeats):
    """Times every row at every length; returns a list of table rows."""
    table = []
    key = jax.random.PRNGKey(0)
    for name, (cell, sequential, parallel) in _rows(hidden).items():
        params = cell.init(key, inputs)
        for time_steps in lengths:
            xs = jax.random.normal(key, (batch, time_steps, inputs))
            seq = _forward_and_training(sequential, params, xs)
            par = _forward_and_training(parallel, params, xs)
            row = [name, time_steps]
            for mode in (0, 1):  # forward, forward+backward
                ms = measure({"sequential": seq[mode], "parallel": par[mode]}, repeats)
                row += [ms["sequential"], ms["parallel"], ms["parallel"] / ms["sequential"]]
            print(_format(row), flush=True)
            table.append(row)
    return table


def _format(row):
    name, t, *vals = row
    return (f"| {name} | {t} | " + " | ".join(
        f"{v:.2f}" if k % 3 == 2 else f"{v:.1f}" for k, v in enumerate(vals)) + " |")


HEADER = ("| cell | T | seq fwd ms | parallel fwd ms | ratio | seq fwd+bwd ms "
          "| parallel fwd+bwd ms | ratio |\n|---|---|---|---|---|---|---|---|")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--inputs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the table (default benchmarks/results/)")
    args = parser.parse_args(argv)
    backend = jax.default_backend()
    print(machine())
    print(HEADER)
    table = run(args.lengths, args.batch, args.hidden, args.inputs, args.repeats)
    text = (f"# Parallel in time vs sequential scan ({backend})\n\n"
            f"- machine: {machine()}\n"
            f"- batch {args.batch}, hidden {args.hidden}, inputs {args.inputs}; median of "
            f"{args.repeats} interleaved runs after warm-up; ratio = parallel / sequential\n"
            f"- command: `python benchmarks/bench_parallel.py`\n\n"
            + HEADER + "\n" + "\n".join(_format(r) for r in table) + "\n")
    out = args.out or RESULTS / f"parallel_{backend}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
