"""A run of ``python -m recurrent train`` on disk: ``run.json`` (the command line and the
network) beside the orbax checkpoint, so that :func:`load_run` rebuilds the network and
reads its params back in one call, from any installation of the package."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import NamedTuple

import jax

from recurrent import checkpoint
from recurrent.app.train import Network

CONFIG = "run.json"
CHECKPOINT = "checkpoint"


class Run(NamedTuple):
    """A saved run: ``args`` (the parsed ``train`` command line, defaults filled in), its
    ``network`` and the trained ``params`` (``network.init``'s pytree)."""

    args: argparse.Namespace
    network: Network
    params: dict


def save_run(directory: Path, args: argparse.Namespace, network: Network, params) -> list[Path]:
    """Writes ``params`` to ``directory/checkpoint`` (replacing an earlier one) and the
    command line and network to ``directory/run.json``; returns both paths."""
    settings = {k: v for k, v in vars(args).items() if k not in ("parser", "command", "out")}
    config = {"args": settings, "network": network._asdict()}
    checkpoint.save(directory / CHECKPOINT, params, overwrite=True)
    (directory / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return [directory / CONFIG, directory / CHECKPOINT]


def load_run(directory: str | os.PathLike) -> Run:
    """The run that ``python -m recurrent train --out directory`` saved.

    Raises:
      FileNotFoundError: ``directory`` has no ``run.json`` (not a run, or one saved before
        runs kept their configuration) or no checkpoint.
      ValueError: the checkpoint does not match the network in ``run.json``.
    """
    directory = Path(directory)
    config_path = directory / CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"load_run: no {CONFIG} in {directory}; pass the --out "
                                f"directory of `python -m recurrent train`")
    config = json.loads(config_path.read_text())
    network = Network(**config["network"])
    like = jax.eval_shape(network.init, jax.random.PRNGKey(0))
    params = checkpoint.restore(directory / CHECKPOINT, like)
    return Run(argparse.Namespace(**config["args"], out=directory), network, params)

__all__ = ["Run", "load_run", "save_run"]
