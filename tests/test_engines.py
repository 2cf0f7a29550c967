"""The engines behind ``impl`` (recurrent.engines) and the fast path's recording plan
(recurrent.vjp.make_plan)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrent
from recurrent import cells, vjp
from recurrent.engines import ENGINES
from recurrent.kinds import KINDS

B, T, I, H = 3, 5, 4, 3
X = jax.random.normal(jax.random.key(1), (B, T, I))
LENGTHS = jnp.array([5, 2, 0])


def test_every_impl_of_every_kind_has_an_engine():
    assert {impl for kind in KINDS.values() for impl in kind.impls} <= set(ENGINES)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("impl", ["fast", "quasi_deer"])
def test_dropout_between_layers_is_the_same_for_every_impl(impl, batch_first):
    # one loop draws the inter-layer mask for every engine (the reference loop drew its
    # own, time-major, when batch_first=False)
    params = recurrent.init_lstm(jax.random.key(0), I, H, num_layers=2, bidirectional=True)
    x = X if batch_first else jnp.swapaxes(X, 0, 1)
    run = lambda impl: recurrent.lstm(params, x, LENGTHS, dropout=0.3,  # noqa: E731
                                      key=jax.random.key(2), impl=impl,
                                      batch_first=batch_first)
    (y, (h, c)), (want_y, (want_h, want_c)) = run(impl), run("reference")
    np.testing.assert_allclose(y, want_y, atol=1e-5)
    np.testing.assert_allclose(h, want_h, atol=1e-5)
    np.testing.assert_allclose(c, want_c, atol=1e-5)


def _plan(cell, valid=None):
    params = cell.init(jax.random.key(0), I)
    xp_t = jax.ShapeDtypeStruct((B, params.w_hh.shape[0]), jnp.float32)
    return vjp.make_plan(cell, params, cell.initial_carry((B,)), xp_t, valid)


def test_plan_of_the_lstm():
    plan = _plan(cells.lstm_cell(H))
    # one matmul of every row with h (carry leaf 0), summed with xp_t: one cotangent
    assert plan.rows == ((None, None),) and plan.sources == (0,)
    assert plan.same_as_dxp == (True,)
    # the four gates fill xp's row (packed), then tanh(c); xp_t is read whole
    assert plan.widths == (4 * H, H) and plan.packed == 1
    assert not plan.fetch and plan.fetch_back
    assert hash(plan) == hash(_plan(cells.lstm_cell(H), jnp.ones(B, bool)))


def test_plan_of_the_gru_in_both_forms():
    plan = _plan(cells.gru_cell(H))
    assert plan.rows == ((None, None),) and plan.sources == (0,)
    assert plan.same_as_dxp == (False,)  # r * (W_hn h + b_hn): not summed with xp_t
    assert plan.widths == (2 * H, H) and plan.packed == 2 and plan.fetch
    before = _plan(cells.gru_cell(H, reset_after=False))
    # W_h{r,z} h from the carry, then W_hn (r * h) from a recorded input
    assert before.rows == ((0, 2 * H), (2 * H, 3 * H)) and before.sources == (0, None)


def test_plan_of_an_rnn_without_activations_to_record():
    plan = _plan(cells.rnn_cell(H, nonlinearity="relu"))
    assert plan.widths == () and plan.packed == 0
    assert not plan.fetch and not plan.fetch_back
