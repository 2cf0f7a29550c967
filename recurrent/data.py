"""Datasets that ship inside a dependency, as sequences; nothing is downloaded."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Split(NamedTuple):
    """Train and test arrays: ``x (n, time, features)`` float32, ``y (n,)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digits(test_fraction: float = 0.2, seed: int = 0) -> Split:
    """scikit-learn's 8x8 handwritten digits read row by row: ``x (n, 8, 8)`` in [0, 1],
    ``y (n,)`` labels 0-9; a seeded shuffle puts ``test_fraction`` of them in the test split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)  # (1797, 8 rows = time, 8 pixels = features)
    y = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return Split(x[train], y[train], x[test], y[test])
