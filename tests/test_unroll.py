"""``unroll`` equals a Python loop over ``step``; reverse and masking against truncation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import recurrent
from recurrent.unroll import reverse_index

KEY = jax.random.PRNGKey(1)
CELLS = {
    "lstm": lambda h: recurrent.lstm_cell(h),
    "gru": lambda h: recurrent.gru_cell(h),
    "gru_v1": lambda h: recurrent.gru_cell(h, reset_after=False),
    "rnn": lambda h: recurrent.rnn_cell(h),
}


def _setup(name, batch=3, time=6, inputs=5, hidden=4):
    cell = CELLS[name](hidden)
    k1, k2, k3 = jax.random.split(KEY, 3)
    params = cell.init(k1, inputs)
    xs = jax.random.normal(k2, (batch, time, inputs))
    carry = jax.tree.map(lambda z: jax.random.normal(k3, z.shape),
                         cell.initial_carry((batch,), jnp.float32))
    return cell, params, xs, carry


def _python_loop(cell, params, xs, carry, reverse=False):
    """The definition: ``step`` over every time index, in order or reversed."""
    steps = range(xs.shape[1])
    ys = [None] * xs.shape[1]
    for t in (reversed(steps) if reverse else steps):
        carry, ys[t] = cell.step(params, carry, cell.project(params, xs[:, t]))
    return carry, (jnp.stack(ys, axis=1) if ys else None)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_equals_python_loop(name, reverse):
    cell, params, xs, carry = _setup(name)
    got_carry, got = recurrent.unroll(cell, params, xs, carry, reverse=reverse)
    want_carry, want = _python_loop(cell, params, xs, carry, reverse)
    np.testing.assert_allclose(got, want, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got_carry,
                 want_carry)


def test_zero_initial_carry_by_default():
    cell, params, xs, carry = _setup("lstm")
    zeros = cell.initial_carry((xs.shape[0],), jnp.float32)
    np.testing.assert_array_equal(recurrent.unroll(cell, params, xs)[1],
                                  recurrent.unroll(cell, params, xs, zeros)[1])


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_time_major_and_unroll_factor(name):
    cell, params, xs, carry = _setup(name, time=7)
    _, want = recurrent.unroll(cell, params, xs, carry)
    _, tm = recurrent.unroll(cell, params, jnp.swapaxes(xs, 0, 1), carry, time_major=True)
    np.testing.assert_allclose(jnp.swapaxes(tm, 0, 1), want, atol=1e-6)
    for k in (2, 3, 7):
        _, got = recurrent.unroll(cell, params, xs, carry, unroll=k)
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_reverse_index_is_an_involution():
    lengths = jnp.array([5, 3, 0, 1])
    idx = reverse_index(lengths, 5)
    np.testing.assert_array_equal(idx[:, 1], [2, 1, 0, 3, 4])
    np.testing.assert_array_equal(idx[:, 2], np.arange(5))
    np.testing.assert_array_equal(jnp.take_along_axis(idx, idx, axis=0),
                                  jnp.broadcast_to(jnp.arange(5)[:, None], (5, 4)))


def _check_against_truncation(name, batch, time, lengths, reverse):
    cell, params, xs, carry = _setup(name, batch=batch, time=time)
    lengths = jnp.asarray(lengths, jnp.int32)
    got_carry, got = recurrent.unroll(cell, params, xs, carry, seq_lengths=lengths,
                                      reverse=reverse)
    for b in range(batch):
        n = int(lengths[b])
        carry_b = jax.tree.map(lambda c: c[b:b + 1], carry)
        want_carry, want = _python_loop(cell, params, xs[b:b + 1, :n], carry_b, reverse)
        if n:
            np.testing.assert_allclose(got[b, :n], want[0], atol=1e-5)
        np.testing.assert_array_equal(got[b, n:], 0)
        jax.tree.map(lambda g, w: np.testing.assert_allclose(g[b], w[0], atol=1e-5),
                     got_carry, want_carry)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_seq_lengths_equal_truncating_by_hand(name, reverse):
    _check_against_truncation(name, 4, 6, [6, 3, 1, 0], reverse)


@settings(max_examples=15, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(CELLS)), reverse=st.booleans())
def test_seq_lengths_property(data, name, reverse):
    batch = data.draw(st.integers(1, 4), label="batch")
    time = data.draw(st.integers(1, 7), label="time")
    lengths = data.draw(st.lists(st.integers(0, time), min_size=batch, max_size=batch),
                        label="lengths")
    _check_against_truncation(name, batch, time, lengths, reverse)


def test_full_lengths_equal_no_lengths():
    cell, params, xs, carry = _setup("lstm")
    full = jnp.full((xs.shape[0],), xs.shape[1])
    for reverse in (False, True):
        a = recurrent.unroll(cell, params, xs, carry, seq_lengths=full, reverse=reverse)
        b = recurrent.unroll(cell, params, xs, carry, reverse=reverse)
        jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=1e-6), a, b)


def test_lengths_are_clipped_to_the_sequence():
    """Documented: lengths above ``time`` count as ``time``, negative ones as 0."""
    cell, params, xs, carry = _setup("gru")
    a = recurrent.unroll(cell, params, xs, carry, seq_lengths=jnp.array([99, -2, 6]))
    b = recurrent.unroll(cell, params, xs, carry, seq_lengths=jnp.array([6, 0, 6]))
    jax.tree.map(lambda u, v: np.testing.assert_array_equal(u, v), a, b)
