"""``python -m recurrent train``: train a recurrent classifier on a dataset that ships offline."""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from recurrent import data, layers


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recurrent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a classifier and report test accuracy")
    train.add_argument("--dataset", choices=["digits"], default="digits",
                       help="digits: scikit-learn's 8x8 digits read row by row (default)")
    train.add_argument("--model", choices=["lstm", "gru", "rnn"], default="lstm")
    train.add_argument("--hidden", type=int, default=64, help="hidden size (default 64)")
    train.add_argument("--layers", type=int, default=1, help="stacked layers (default 1)")
    train.add_argument("--bidirectional", action="store_true")
    train.add_argument("--epochs", type=int, default=30, help="passes over the data (default 30)")
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 1e-2)")
    train.add_argument("--seed", type=int, default=0)
    return parser


def train(args) -> float:
    """Trains ``args.model`` on ``args.dataset``; returns the test accuracy."""
    split = data.digits(seed=args.seed)
    init = {"lstm": layers.init_lstm, "gru": layers.init_gru, "rnn": layers.init_rnn}[args.model]
    apply = {"lstm": layers.lstm, "gru": layers.gru, "rnn": layers.rnn}[args.model]
    num_classes = int(split.y_train.max()) + 1
    k_rnn, k_head, k_shuffle = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    features = (2 if args.bidirectional else 1) * args.hidden
    params = {
        "rnn": init(k_rnn, split.x_train.shape[-1], args.hidden, args.layers, args.bidirectional),
        "head": jax.random.normal(k_head, (features, num_classes)) / np.sqrt(features),
        "bias": jnp.zeros(num_classes),
    }

    def logits(params, x):
        y, _ = apply(params["rnn"], x)  # (batch, time, features)
        return y[:, -1] @ params["head"] + params["bias"]  # (batch, classes)

    def loss_fn(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y).mean()

    opt = optax.adam(args.lr)
    opt_state = opt.init(params)

    @jax.jit
    def update(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    n = len(split.x_train)
    steps_per_epoch = n // args.batch_size
    rng = np.random.default_rng(args.seed)
    with tqdm(total=args.epochs * steps_per_epoch, desc=f"{args.model} on {args.dataset}") as bar:
        for _ in range(args.epochs):
            order = rng.permutation(n)
            for s in range(steps_per_epoch):
                idx = order[s * args.batch_size:(s + 1) * args.batch_size]
                params, opt_state, loss = update(params, opt_state, split.x_train[idx],
                                                 split.y_train[idx])
                bar.set_postfix(loss=f"{float(loss):.4f}")
                bar.update()
    predicted = jnp.argmax(jax.jit(logits)(params, split.x_test), axis=-1)
    return float(jnp.mean(predicted == split.y_test))


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    for name in ("hidden", "layers", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            _parser().error(f"--{name.replace('_', '-')} must be a positive integer")
    accuracy = train(args)
    print(f"test accuracy: {accuracy:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
