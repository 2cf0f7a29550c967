"""python -m recurrent: train on a dataset that ships offline, or evaluate a saved run.

    python -m recurrent train                       # LSTM on digits, < 1 minute on 2 cores
    python -m recurrent train --dataset co2 --model gru --out runs/co2
    python -m recurrent evaluate --run runs/co2
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import recurrent
from recurrent.app import runs
from recurrent.app import train as training
from recurrent.app.tasks import TASKS


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (and exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _defaults_table() -> str:
    rows = [f"  {name:9s} {task.help}\n{'':12s}defaults: --hidden {task.hidden} --epochs "
            f"{task.epochs} --batch-size {task.batch_size} --lr {task.lr:g}"
            + (f" --length {task.length}" if task.length else "")
            for name, task in TASKS.items()]
    return "datasets (all ship with a dependency or with Python; nothing is downloaded):\n" + \
        "\n".join(rows)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m recurrent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=recurrent.__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train", help="train a network on a dataset and report its test metric",
        description="Trains a recurrent network, shows a progress bar with the running loss\n"
                    "on stderr and prints the test metric as the last line. Writes the loss\n"
                    "curve (loss.png), any other plot, the final params (an orbax\n"
                    "checkpoint in checkpoint/) and the settings (run.json) under --out.",
        epilog=_defaults_table(), formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--dataset", choices=list(TASKS), default="digits",
                       help="what to learn (default digits; see below)")
    train.add_argument("--model", choices=list(training.LAYERS), default="lstm",
                       help="the recurrent layer (default lstm; rnn is a tanh RNN; mingru and "
                            "minlstm run in parallel over time)")
    train.add_argument("--bidirectional", action="store_true",
                       help="run a backward direction too (not for pysource)")
    train.add_argument("--layers", type=int, default=1, help="stacked layers (default 1)")
    train.add_argument("--hidden", type=int, help="hidden size (default: the dataset's)")
    train.add_argument("--epochs", type=int, help="passes over the training set")
    train.add_argument("--steps", type=int,
                       help="optimizer steps; overrides --epochs (e.g. --steps 20 to try a "
                            "dataset quickly)")
    train.add_argument("--batch-size", type=int, help="sequences per step")
    train.add_argument("--lr", type=float,
                       help="peak Adam learning rate; it decays to a tenth on a cosine")
    train.add_argument("--length", type=int,
                       help="sequence length: co2's input window in months, pysource's "
                            "training window in characters, the adding problem's T "
                            "(digits are always 8 rows)")
    train.add_argument("--seed", type=int, default=0, help="seeds data order and init")
    train.add_argument("--out", default="runs",
                       help="directory for loss.png, plots, checkpoint/ and run.json "
                            "(default runs)")
    train.set_defaults(parser=train)
    evaluate = sub.add_parser(
        "evaluate", help="report the test metric of a run that train saved",
        description="Loads the network and params that train saved under --run and prints\n"
                    "the test metric of its dataset (and rewrites its plots there).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_argument("--run", required=True, help="the --out directory of a train run")
    evaluate.set_defaults(parser=evaluate)
    return parser


def _check_train_args(args) -> None:
    """Fills in the dataset's defaults and rejects bad values with a one-line error and
    exit code 2."""
    parser = args.parser
    task = TASKS[args.dataset]
    if task.length is None and args.length is not None:
        parser.error(f"--length does not apply to {args.dataset}")
    for name in ("hidden", "epochs", "batch_size", "lr", "length"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(task, name))
    for name in ("hidden", "layers", "epochs", "steps", "batch_size", "length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        parser.error(f"--lr must be a positive finite number, got {args.lr}")
    if not 0 <= args.seed < 2**32:
        parser.error(f"--seed must be in [0, 2**32), got {args.seed}")
    if args.dataset == "pysource" and args.bidirectional:
        parser.error("--bidirectional does not apply to pysource: a language model must not "
                     "see the characters it predicts")
    if args.dataset == "adding" and args.length < 2:
        parser.error(f"--length must be at least 2 for the adding problem, got {args.length}")
    try:
        args.out = training.check_writable(args.out)
    except OSError as e:
        parser.error(f"--out {args.out} is not a writable directory: "
                     f"{e.strerror or e}")


def train(args) -> list[str]:
    """Runs ``args.dataset``'s task and saves its outputs; returns the lines to print. A
    size the data cannot serve is a one-line error (exit code 2), and a loss that became
    NaN or inf another (exit code 1), before anything is saved."""
    start = time.perf_counter()
    try:
        result = TASKS[args.dataset].run(args, args.out)
    except training.UsageError as e:
        args.parser.error(str(e))
    bad = np.flatnonzero(~np.isfinite(result.losses))
    if bad.size:
        args.parser.exit(1, f"{args.parser.prog}: training diverged: the loss is "
                            f"{result.losses[bad[0]]} from step {bad[0] + 1}; try a smaller "
                            f"--lr (nothing saved)\n")
    files = [training.save_loss_curve(result.losses, args.out / "loss.png",
                                      f"{args.model} on {args.dataset}"), *result.plots,
             *runs.save_run(args.out, args, result.network, result.params)]
    return [*(f"wrote {f}" for f in files),
            f"trained {len(result.losses)} steps and tested in "
            f"{time.perf_counter() - start:.1f} s",
            *result.lines]


def evaluate(args) -> list[str]:
    """Evaluates the run saved under ``args.run``; returns the lines to print (the test
    metric last). A directory that holds no run ends in one line and exit code 2."""
    try:
        run = runs.load_run(args.run)
    except (FileNotFoundError, ValueError) as e:
        args.parser.error(str(e).splitlines()[0])
    return TASKS[run.args.dataset].run(run.args, run.args.out, run.params).lines


def main(argv: list[str] | None = None) -> int:
    """``python -m recurrent`` with the arguments ``argv`` (default: the command line)."""
    args = _parser().parse_args(argv)
    if args.command == "train":
        _check_train_args(args)
    for line in train(args) if args.command == "train" else evaluate(args):
        print(line, flush=True)
    return 0

__all__ = ["main"]
