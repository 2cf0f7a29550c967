"""A small real task for the training tests: scikit-learn's 8x8 digits, read row by row."""

import jax.numpy as jnp
from sklearn.datasets import load_digits


def digits(n: int = 256):
    """``x (n, 8 rows = time, 8 pixels)`` in [0, 1] and labels ``y (n,)`` in 0-9."""
    data = load_digits()
    return (jnp.asarray(data.images[:n] / 16.0, jnp.float32),
            jnp.asarray(data.target[:n], jnp.int32))
