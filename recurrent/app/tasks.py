"""The tasks of ``python -m recurrent train``, one function each.

A task reads its data from :mod:`recurrent.app.data`, trains with
:func:`recurrent.app.train.fit`
and returns a :class:`Result`: the network, the trained params, the loss per step, the
plots it drew and the lines to print, the last of which is its test metric. ``args`` is
the parsed command line (see ``python -m recurrent train --help``). Given ``params`` (a run
saved by ``train``), a task skips training and evaluates them on the same test set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from recurrent.app import data, train


class Result(NamedTuple):
    """A trained task: its ``network``, ``params``, ``losses (steps,)`` (empty when it
    evaluated given params), the PNGs it wrote, and its report."""

    network: train.Network
    params: dict
    losses: np.ndarray
    plots: list[Path]
    lines: list[str]


class Task(NamedTuple):
    """A task and its defaults for the options the user leaves out."""

    run: Callable[..., Result]
    help: str
    hidden: int
    epochs: int
    batch_size: int
    lr: float
    length: int | None


def _steps(args, train_size: int) -> int:
    """``--steps``, or ``--epochs`` passes over ``train_size`` examples."""
    return args.steps or args.epochs * max(1, train_size // args.batch_size)


def _check_length(length: int, most: int, what: str) -> None:
    """:class:`recurrent.app.train.UsageError` unless ``--length`` is at most ``most``, the
    longest window that ``what`` (named in the message) leaves room for."""
    if length > most:
        raise train.UsageError(f"--length {length} is too long for {what}: at most {most}")


def _desc(args) -> str:
    bi = "bidirectional " if args.bidirectional else ""
    return f"{bi}{args.model} x{args.layers} on {args.dataset}"


def _fit(args, loss: Callable, init: dict, batches, train_size: int, params: dict | None):
    """``(params, losses)``: ``init`` trained on ``batches`` for :func:`_steps`, or the given
    ``params`` untouched (and no losses)."""
    if params is not None:
        return params, np.zeros(0)
    return train.fit(loss, init, batches, _steps(args, train_size), args.lr, _desc(args))


def digits(args, out: Path, params: dict | None = None) -> Result:
    """Classifies scikit-learn's 8x8 digits read row by row (8 steps of 8 pixels)."""
    split = data.digits(seed=args.seed)
    network = train.Network(args.model, 8, args.hidden, args.layers, args.bidirectional,
                            out_features=10)

    def logits(params, x):  # (batch, 8, 8) -> (batch, 10)
        return train.head(params, train.encode(args.model, params, x)[1])

    def loss(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y).mean()

    batches = train.shuffled(np.random.default_rng(args.seed), args.batch_size,
                             split.x_train, split.y_train)
    params, losses = _fit(args, loss, network.init(jax.random.PRNGKey(args.seed)), batches,
                          len(split.x_train), params)
    predicted = jnp.argmax(jax.jit(logits)(params, split.x_test), axis=-1)
    accuracy = float(jnp.mean(predicted == split.y_test))
    return Result(network, params, losses, [], [f"test accuracy: {accuracy:.3f}"])


def _regression(args, input_size: int):
    """``(network, predict, loss)`` of a network with one output: ``predict(params, x)``
    maps ``x (batch, time, input_size)`` to ``(batch,)``, ``loss`` is its mean squared error."""
    network = train.Network(args.model, input_size, args.hidden, args.layers,
                            args.bidirectional, out_features=1)

    def predict(params, x):  # (batch, time, input_size) -> (batch,)
        return train.head(params, train.encode(args.model, params, x)[1])[:, 0]

    def loss(params, x, y):
        return jnp.mean((predict(params, x) - y) ** 2)

    return network, predict, loss


def co2(args, out: Path, params: dict | None = None) -> Result:
    """Forecasts next month's Mauna Loa CO2 from the ``--length`` months before it; the
    last fifth of the record (1993-2001) is the test set.

    The network sees each window relative to its last value, in units of the typical
    monthly change, and predicts the change to the next month, so it never has to
    extrapolate the rising level itself.
    """
    series = data.co2()
    values, years = series.values, series.years
    n_test = len(values) // 5
    _check_length(args.length, len(values) - n_test - 1, f"the co2 series' {len(values)} "
                  f"months less the {n_test} test months")
    x, y = data.windows(values, args.length)  # (n, length), (n,)
    last = x[:, -1:]  # (n, 1)
    scale = float(np.std(np.diff(values[:-n_test])))
    inputs = ((x - last) / scale)[..., None]  # (n, length, 1)
    targets = (y - last[:, 0]) / scale  # (n,)
    train_x, test_x = inputs[:-n_test], inputs[-n_test:]
    train_y = targets[:-n_test]

    network, predict, loss = _regression(args, input_size=1)

    batches = train.shuffled(np.random.default_rng(args.seed), args.batch_size, train_x,
                             train_y)
    params, losses = _fit(args, loss, network.init(jax.random.PRNGKey(args.seed)), batches,
                          len(train_x), params)
    forecast = last[-n_test:, 0] + scale * np.asarray(jax.jit(predict)(params, test_x))
    truth = y[-n_test:]
    mse = float(np.mean((forecast - truth) ** 2))
    persistence = float(np.mean((last[-n_test:, 0] - truth) ** 2))

    fig, ax = train.figure(figsize=(9, 4))
    shown = slice(len(values) - 3 * n_test, None)
    ax.plot(years[shown], values[shown], color="black", lw=1, label="measured")
    ax.plot(years[-n_test:], forecast, color="tab:red", lw=1.2,
            label=f"{args.model} one month ahead (test mse {mse:.3f})")
    ax.axvline(years[-n_test], color="gray", ls="--", lw=0.8)
    ax.set(xlabel="year", ylabel="CO2 (ppm)", title="Mauna Loa CO2: forecast on the test years")
    ax.legend()
    plot = train.save_figure(fig, out / "forecast.png")
    return Result(network, params, losses, [plot], [
        f"repeating the last month: test mse {persistence:.3f} ppm^2",
        f"test mse: {mse:.3f} ppm^2"])


def pysource(args, out: Path, params: dict | None = None) -> Result:
    """A character-level language model of the standard library's source: trained on
    ``--length``-character windows of the first 90% of the text, scored in bits per
    character on the rest, and sampled from."""
    codes = data.python_source(max_chars=1_000_000)
    split = len(codes) * 9 // 10
    train_codes, test_codes = codes[:split], codes[split:]
    _check_length(args.length, len(test_codes) - 1, f"the {len(test_codes)} characters of "
                  f"test text")
    length, embed = args.length, 32
    network = train.Network(args.model, embed, args.hidden, args.layers, False,
                            out_features=data.VOCAB, vocab=data.VOCAB)

    def logits(params, x):  # (batch, time) codes -> (batch, time, VOCAB)
        return train.head(params, train.encode(args.model, params, x)[0])

    def loss(params, chunk):  # chunk (batch, length + 1)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits(params, chunk[:, :-1]), chunk[:, 1:]).mean()

    def batches(rng):
        offsets = np.arange(length + 1)
        while True:
            starts = rng.integers(0, len(train_codes) - length - 1, args.batch_size)
            yield (train_codes[starts[:, None] + offsets].astype(np.int32),)

    params, losses = _fit(args, loss, network.init(jax.random.PRNGKey(args.seed)),
                          batches(np.random.default_rng(args.seed)),
                          len(train_codes) // length, params)
    n_chunks = min(len(test_codes) // (length + 1), 256)
    chunks = test_codes[:n_chunks * (length + 1)].reshape(n_chunks, length + 1)
    bits = float(jax.jit(loss)(params, chunks.astype(np.int32))) / math.log(2)
    counts = np.bincount(train_codes, minlength=data.VOCAB) + 1  # add-one smoothing
    unigram = -np.mean(np.log2(counts / counts.sum())[chunks[:, 1:]])
    sample = generate(args.model, params, "def ", 300, jax.random.PRNGKey(args.seed))
    return Result(network, params, losses, [], [
        "sample:", sample, "-" * 40,
        f"character frequencies alone: {unigram:.3f} bits per character",
        f"test bits per character: {bits:.3f}"])


def generate(kind: str, params: dict, prompt: str, chars: int, key,
             temperature: float = 0.7) -> str:
    """Continues ``prompt`` by ``chars`` characters sampled one at a time from a
    :func:`pysource`-style network: each sampled character is fed back in, and the layer's
    state is carried from step to step (one ``lax.scan``)."""
    apply = train.LAYERS[kind][1]
    prompt_codes = np.frombuffer(prompt.encode("ascii"), np.uint8).astype(np.int32)[None]

    @jax.jit
    def sample(key):  # -> codes (chars,)
        ys, state = apply(params["rnn"], params["embed"][prompt_codes])  # (1, len, H)

        def step(carry, key):
            state, logits = carry  # logits (1, VOCAB) for the next character
            code = jax.random.categorical(key, logits / temperature)  # (1,)
            ys, state = apply(params["rnn"], params["embed"][code[:, None]],
                              initial_state=state)  # ys (1, 1, H)
            return (state, train.head(params, ys[:, -1])), code[0]

        first = (state, train.head(params, ys[:, -1]))
        return jax.lax.scan(step, first, jax.random.split(key, chars))[1]

    return prompt + data.decode(jax.device_get(sample(key)))


def adding(args, out: Path, params: dict | None = None) -> Result:
    """The adding problem at ``--length`` steps: regress the sum of the two marked values.
    Every batch is freshly drawn; an epoch is 10,000 sequences."""
    rng = np.random.default_rng(args.seed)
    test_x, test_y = data.adding(1000, args.length, np.random.default_rng(args.seed + 1))
    network, predict, loss = _regression(args, input_size=2)

    def batches():
        while True:
            yield data.adding(args.batch_size, args.length, rng)

    params, losses = _fit(args, loss, network.init(jax.random.PRNGKey(args.seed)), batches(),
                          10_000, params)
    mse = float(jax.jit(loss)(params, test_x, test_y))
    baseline = float(np.mean((1 - test_y) ** 2))
    return Result(network, params, losses, [], [
        f"test mse: {mse:.4f} (always predicting 1: {baseline:.3f})"])


TASKS = {
    "digits": Task(digits, "scikit-learn's 8x8 digits read row by row; classification",
                   hidden=64, epochs=30, batch_size=64, lr=1e-2, length=None),
    "co2": Task(co2, "Mauna Loa CO2 (statsmodels); next-month forecast, plot",
                hidden=32, epochs=100, batch_size=32, lr=1e-2, length=24),
    "pysource": Task(pysource, "character language model of the stdlib's own source",
                     hidden=128, epochs=2, batch_size=32, lr=5e-3, length=100),
    "adding": Task(adding, "the adding problem (Hochreiter & Schmidhuber 1997)",
                   hidden=64, epochs=10, batch_size=64, lr=5e-3, length=50),
}

__all__ = ["Result", "TASKS", "Task", "generate"]
