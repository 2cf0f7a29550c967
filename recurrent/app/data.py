"""Datasets that ship inside a dependency or with Python itself, as sequences; nothing is
downloaded.

=========  ====================================================  ===============================
name       source                                                shapes
=========  ====================================================  ===============================
digits     scikit-learn's 8x8 handwritten digits, row by row     ``x (n, 8, 8)``, ``y (n,)``
co2        statsmodels' Mauna Loa CO2 series, monthly means      ``(526,)`` ppm
pysource   the standard library's own ``*.py`` files             ``(chars,)`` ASCII codes
adding     the adding problem (Hochreiter & Schmidhuber 1997)    ``x (n, T, 2)``, ``y (n,)``
=========  ====================================================  ===============================
"""

from __future__ import annotations

import os
from pathlib import Path
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


class Series(NamedTuple):
    """A monthly time series: ``values (months,)`` float32 and ``years (months,)`` as
    fractional years (1958.17 is March 1958), for plotting."""

    values: np.ndarray
    years: np.ndarray


def co2() -> Series:
    """statsmodels' Mauna Loa CO2 record (ppm), weekly 1958-2001, as 526 monthly means;
    the few months without a measurement repeat the month before."""
    from statsmodels.datasets import co2 as co2_dataset

    weekly = co2_dataset.load_pandas().data["co2"]
    monthly = weekly.resample("MS").mean().ffill()
    years = monthly.index.year + (monthly.index.month - 1) / 12
    return Series(monthly.to_numpy(np.float32), np.asarray(years, np.float32))


def windows(series: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Every run of ``length`` consecutive values and the value after it:
    ``series (n,)`` to ``x (n - length, length)`` and ``y (n - length,)``."""
    idx = np.arange(len(series) - length)[:, None] + np.arange(length)  # (n - length, length)
    return series[idx], series[length:]


VOCAB = 128
"""``python_source`` text is ASCII: one code per character, ``0 <= code < VOCAB``."""


def python_source(max_chars: int = 2_000_000) -> np.ndarray:
    """The standard library's own source: the ``*.py`` files next to ``os.py`` (not in
    sub-packages), in name order, joined until ``max_chars`` characters, as ``(chars,)``
    uint8 ASCII codes; other characters become ``?``."""
    files = sorted(Path(os.__file__).parent.glob("*.py"))
    parts, total = [], 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    text = "".join(parts)[:max_chars]
    return np.frombuffer(text.encode("ascii", errors="replace"), np.uint8).copy()


def decode(codes) -> str:
    """ASCII codes ``(chars,)`` back to text."""
    return bytes(np.asarray(codes, np.uint8)).decode("ascii")


def adding(n: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem: ``n`` sequences of ``length`` steps with two features, a value
    drawn from U(0, 1) and a marker that is 1 at exactly two steps, one in each half; the
    target is the sum of the two marked values. Returns ``x (n, length, 2)`` float32 and
    ``y (n,)``. Always predicting 1 scores a mean squared error of 1/6 = 0.167.
    """
    if length < 2:
        raise ValueError(f"adding: length must be at least 2, got {length}")
    values = rng.uniform(size=(n, length)).astype(np.float32)  # (n, length)
    half = length // 2
    first = rng.integers(0, half, n)
    second = rng.integers(half, length, n)
    marker = np.zeros((n, length), np.float32)
    marker[np.arange(n), first] = 1
    marker[np.arange(n), second] = 1
    x = np.stack([values, marker], axis=-1)  # (n, length, 2)
    return x, (values * marker).sum(axis=1)

__all__ = [
    "Series", "Split", "VOCAB", "adding", "co2", "decode", "digits", "python_source", "windows",
]
