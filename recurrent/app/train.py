"""What every task of ``python -m recurrent train`` shares: a recurrent network with a
linear head, an optax loop with a progress bar, and the files a run leaves behind."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from recurrent.kinds import KINDS
from recurrent.layers import LAYERS


def init_network(key, kind: str, input_size: int, hidden: int, num_layers: int,
                 bidirectional: bool, out_features: int, vocab: int | None = None) -> dict:
    """Params of a ``kind`` layer (a name of :data:`recurrent.kinds.KINDS`) with a linear head.

    Returns ``{"rnn": ..., "head": (D * hidden, out_features), "bias": (out_features,)}``
    and, with ``vocab``, ``"embed": (vocab, input_size)`` that turns integer codes into
    the layer's inputs. ``D`` is 2 when ``bidirectional``, else 1.
    """
    k_rnn, k_head, k_embed = jax.random.split(key, 3)
    features = (2 if bidirectional else 1) * hidden
    params = {
        "rnn": LAYERS[kind][0](k_rnn, input_size, hidden, num_layers, bidirectional),
        "head": jax.random.normal(k_head, (features, out_features)) / np.sqrt(features),
        "bias": jnp.zeros(out_features),
    }
    if vocab is not None:
        params["embed"] = jax.random.normal(k_embed, (vocab, input_size)) / np.sqrt(input_size)
    return params


class Network(NamedTuple):
    """The network of a task: a ``kind`` layer with a linear head, and with ``vocab`` an
    embedding of integer codes; :func:`init_network`'s arguments after the key."""

    kind: str
    input_size: int
    hidden: int
    num_layers: int
    bidirectional: bool
    out_features: int
    vocab: int | None = None

    def init(self, key: jax.Array) -> dict:
        """Freshly initialised params (see :func:`init_network`)."""
        return init_network(key, *self)


def encode(kind: str, params: dict, x, seq_lengths=None):
    """Runs the layer: ``x (batch, time, input)`` (or integer codes ``(batch, time)`` when
    ``params`` has ``"embed"``) to ``(ys, last)``: every step's output
    ``ys (batch, time, D * hidden)`` and the top layer's final state of every direction
    ``last (batch, D * hidden)``, which summarises the whole sequence."""
    if "embed" in params:
        x = params["embed"][x]  # (batch, time) -> (batch, time, input)
    ys, state = LAYERS[kind][1](params["rnn"], x, seq_lengths=seq_lengths)
    h_n = state[0] if KINDS[kind].pair else state  # (layers * D, batch, hidden)
    directions = ys.shape[-1] // h_n.shape[-1]
    last = jnp.concatenate(list(h_n[-directions:]), axis=-1)  # (batch, D * hidden)
    return ys, last


def head(params: dict, features):
    """The linear head: ``(..., D * hidden) -> (..., out_features)``."""
    return features @ params["head"] + params["bias"]


class UsageError(ValueError):
    """An option of the command line that the data cannot serve (e.g. a batch larger than
    the training set); the message names the option. Raised before training starts."""


def shuffled(rng: np.random.Generator, batch_size: int, *arrays) -> Iterator[tuple]:
    """Endless minibatches of ``arrays`` (all of the same length), reshuffled every epoch;
    :class:`UsageError` at once if they hold less than one batch (the loop would never
    yield)."""
    n = len(arrays[0])
    if n < batch_size:
        raise UsageError(f"--batch-size {batch_size} is larger than the training set "
                         f"({n} examples)")

    def batches():
        while True:
            order = rng.permutation(n)
            for s in range(n // batch_size):
                idx = order[s * batch_size:(s + 1) * batch_size]
                yield tuple(a[idx] for a in arrays)

    return batches()


def fit(loss_fn: Callable, params, batches: Iterator[tuple], steps: int, lr: float,
        desc: str, log_every: int = 20):
    """Minimises ``loss_fn(params, *batch)`` for ``steps`` steps of Adam (gradients clipped
    to norm 1, learning rate decaying from ``lr`` to ``lr / 10`` on a cosine), showing a
    progress bar with the running loss on stderr. Returns ``(params, losses (steps,))``."""
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.1)))
    opt_state = opt.init(params)

    @jax.jit
    def update(params, opt_state, *batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    with tqdm(total=steps, desc=desc, file=sys.stderr, dynamic_ncols=True) as bar:
        for step in range(steps):
            params, opt_state, loss = update(params, opt_state, *next(batches))
            losses.append(loss)
            if (step + 1) % log_every == 0 or step + 1 == steps:
                # Reading the loss waits for the device, so only every few steps.
                bar.set_postfix(loss=f"{float(np.mean(losses[-log_every:])):.4f}")
            bar.update()
    return params, np.asarray(jax.device_get(losses))


def check_writable(out: str | os.PathLike) -> Path:
    """Creates the directory ``out`` and checks that files can be written in it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    probe = out / ".write-test"
    probe.write_bytes(b"")
    probe.unlink()
    return out


def save_loss_curve(losses: np.ndarray, path: Path, title: str) -> Path:
    """Plots the training loss per step (and its moving average) to the PNG ``path``."""
    fig, ax = figure()
    ax.plot(losses, alpha=0.35, label="per step")
    window = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax.plot(np.arange(window - 1, len(losses)), smooth, label=f"mean of {window}")
    ax.set(xlabel="step", ylabel="training loss", title=title)
    ax.legend()
    return save_figure(fig, path)


def figure(figsize=(7, 4)):
    """A matplotlib ``(figure, axes)`` drawn off screen (the Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def save_figure(fig, path: Path) -> Path:
    """Writes ``fig`` to the PNG ``path`` and closes it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

__all__ = [
    "LAYERS", "Network", "check_writable", "encode", "figure", "fit", "head", "init_network",
    "UsageError", "save_figure", "save_loss_curve", "shuffled",
]
