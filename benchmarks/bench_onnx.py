"""onnxruntime (CPU) running an exported model against recurrent's own CPU forward, in one
process.

    python benchmarks/bench_onnx.py [--repeats 11] [--quick] [--out PATH]

For LSTM and GRU at ``bench_cpu.py``'s configurations it exports the params of
``recurrent.init_lstm``/``init_gru`` with :mod:`recurrent.onnx` and times, interleaved
(``common.measure``), the jitted ``recurrent.lstm``/``gru`` forward (``impl="auto"``, the
fast path on CPU) and onnxruntime's ``InferenceSession.run`` of the model, both on the same
``x (B, T, I)`` with every ``seq_lengths`` equal to ``T`` (the model always takes lengths;
recurrent is given the same ones). The table gives medians in ms and onnxruntime /
recurrent (below 1: onnxruntime is faster), and is written to
``benchmarks/results/onnx.md`` with the machine and versions.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import version
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime

import recurrent
from recurrent import onnx as ronnx

from bench_cpu import CONFIGS, QUICK_CONFIGS, _inputs, describe
from common import RESULTS, machine, measure

HEADER = ("| cell | B, T, I, H | layers × dirs | pass | recurrent | onnxruntime "
          "| onnxruntime / recurrent |\n|---|---|---|---|---|---|---|")
_FUNCTIONS = {"lstm": (recurrent.init_lstm, recurrent.lstm, ronnx.lstm_to_onnx),
              "gru": (recurrent.init_gru, recurrent.gru, ronnx.gru_to_onnx)}


def forwards(cell, config):
    """``{"recurrent": fn, "onnxruntime": fn}``: zero-argument forwards of one configuration,
    on the same params, ``x`` and full lengths."""
    batch, time_steps, inputs, hidden, layers, bi = config
    key, x = _inputs(config)
    init, layer, export = _FUNCTIONS[cell]
    params = init(key, inputs, hidden, layers, bi)
    lengths = jnp.full((batch,), time_steps, jnp.int32)
    forward = jax.jit(lambda p, x, n: layer(p, x, seq_lengths=n)[0])
    session = onnxruntime.InferenceSession(export(params).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    feeds = {"x": np.asarray(x), "seq_lengths": np.asarray(lengths)}
    return {"recurrent": lambda: forward(params, x, lengths),
            "onnxruntime": lambda: session.run(["y"], feeds)[0]}


def _machine():
    return (f"{machine()}; onnxruntime {onnxruntime.__version__} (default threads), "
            f"onnx {version('onnx')}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes, to check that the script runs")
    parser.add_argument("--out", type=Path, default=RESULTS / "onnx.md")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    print(_machine())
    load_before = os.getloadavg()
    print(HEADER, flush=True)
    rows = []
    for cell in ("lstm", "gru"):
        for config in QUICK_CONFIGS if args.quick else CONFIGS:
            fns = forwards(cell, config)
            np.testing.assert_allclose(fns["onnxruntime"](), fns["recurrent"](), atol=1e-4,
                                       err_msg="onnxruntime's y differs from recurrent's")
            ms = measure(fns, args.repeats)
            rows.append(f"{describe(cell, config, 0)} {ms['recurrent']:.1f} | "
                        f"{ms['onnxruntime']:.1f} | {ms['onnxruntime'] / ms['recurrent']:.2f} |")
            print(rows[-1], flush=True)
    text = "\n".join([
        "# onnxruntime running the exported model vs recurrent on CPU", "",
        f"- machine: {_machine()}",
        "- load average (1, 5, 15 min) at the start: "
        f"{', '.join(f'{v:.2f}' for v in load_before)}; at the end: "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"- command: `{' '.join(['python benchmarks/bench_onnx.py', *argv])}`; "
        f"median ms of {args.repeats} "
        "interleaved repetitions after warm-up; forward only, every `seq_lengths` = T; "
        "recurrent is the jitted `recurrent.lstm`/`gru` (`impl=\"auto\"`), onnxruntime runs "
        "the model of `recurrent.onnx.lstm_to_onnx`/`gru_to_onnx` (one ONNX LSTM/GRU node "
        "per layer)", "",
        HEADER, *rows, ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
