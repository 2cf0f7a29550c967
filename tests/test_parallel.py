"""Parallel-in-time evaluation: minGRU/minLSTM by associative scan, GRU/LSTM by (quasi-)DEER;
each equals the sequential scan, gradients included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrent
from recurrent import minimal
from recurrent.deer import deer_unroll

KEY = jax.random.PRNGKey(3)
B, T, I, H = 3, 12, 4, 5
LENGTHS = jnp.array([12, 5, 0])


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _g(v):
    return np.where(v >= 0, v + 0.5, _sigmoid(v))


def _data(hidden=H, time=T):
    k1, k2 = jax.random.split(KEY)
    xs = jax.random.normal(k1, (B, time, I))
    h0 = jax.random.normal(k2, (B, hidden))  # either sign: the parallel form must not care
    return xs, h0


def _close(a, b, atol):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=atol, rtol=atol), a, b)


def test_min_cells_follow_the_paper():
    xs, h0 = _data()
    x, h = np.asarray(xs[:, 0], np.float64), np.asarray(h0, np.float64)
    gru = minimal.mingru_cell(H)
    p = gru.init(KEY, I)
    k = x @ np.asarray(p.w_ih, np.float64).T + np.asarray(p.b_ih)
    z = _sigmoid(k[:, :H])
    want = (1 - z) * h + z * _g(k[:, H:])
    got, _ = gru.step(p, h0, gru.project(p, xs[:, 0]))
    np.testing.assert_allclose(got, want, atol=1e-6)

    lstm = minimal.minlstm_cell(H)
    p = lstm.init(KEY, I)
    k = x @ np.asarray(p.w_ih, np.float64).T + np.asarray(p.b_ih)
    f, i = _sigmoid(k[:, :H]), _sigmoid(k[:, H:2 * H])
    want = f / (f + i) * h + i / (f + i) * _g(k[:, 2 * H:])
    got, _ = lstm.step(p, h0, lstm.project(p, xs[:, 0]))
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert p.w_ih.shape == (3 * H, I) and p.b_ih.shape == (3 * H,)


@pytest.mark.parametrize("make", [minimal.mingru_cell, minimal.minlstm_cell])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_associative_scan_equals_sequential(make, reverse, lengths):
    m = make(H)
    params = m.init(KEY, I)
    xs, h0 = _data()

    def run(unroll_fn, cell):
        def loss(params, xs, h0):
            h_n, ys = unroll_fn(cell, params, xs, h0, seq_lengths=lengths, reverse=reverse)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(h_n**2), (h_n, ys)

        return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, h0)

    (_, par), par_grads = run(minimal.parallel_unroll, m)
    (_, seq), seq_grads = run(recurrent.unroll, m)
    _close(par, seq, 1e-5)
    _close(par_grads, seq_grads, 1e-4)


def test_associative_scan_is_stable_on_long_sequences():
    m = minimal.mingru_cell(8)
    params = m.init(KEY, 2)
    xs = jax.random.normal(KEY, (2, 4096, 2))
    h_par, ys_par = jax.jit(lambda p, x: minimal.parallel_unroll(m, p, x))(params, xs)
    h_seq, ys_seq = jax.jit(lambda p, x: recurrent.unroll(m, p, x))(params, xs)
    assert np.isfinite(ys_par).all()
    np.testing.assert_allclose(ys_par, ys_seq, atol=1e-4, rtol=1e-4)


CELLS = [recurrent.lstm_cell, recurrent.gru_cell, recurrent.rnn_cell]


@pytest.mark.parametrize("make", CELLS)
@pytest.mark.parametrize("jacobian", ["diagonal", "full"])
def test_deer_equals_sequential(make, jacobian):
    cell = make(H)
    params = cell.init(KEY, I)
    xs, _ = _data()
    for reverse in (False, True):
        final, ys, info = deer_unroll(cell, params, xs, seq_lengths=LENGTHS, reverse=reverse,
                                      jacobian=jacobian, return_info=True)
        assert bool(info["converged"]) and int(info["iterations"]) < T
        want_final, want_ys = recurrent.unroll(cell, params, xs, seq_lengths=LENGTHS,
                                               reverse=reverse)
        _close(ys, want_ys, 1e-4)
        _close(final, want_final, 1e-4)


@pytest.mark.parametrize("make", CELLS)
def test_deer_gradients_equal_sequential(make):
    cell = make(H)
    params = cell.init(KEY, I)
    xs, _ = _data()
    carry = jax.tree.map(lambda c: c + 0.3, cell.initial_carry((B,), jnp.float32))

    def loss(unroll_fn, **opts):
        def f(params, xs, carry):
            final, ys = unroll_fn(cell, params, xs, carry, seq_lengths=LENGTHS, **opts)
            return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(final))

        return jax.grad(f, argnums=(0, 1, 2))(params, xs, carry)

    want = loss(recurrent.unroll)
    _close(loss(deer_unroll, jacobian="full"), want, 1e-4)
    _close(jax.jit(lambda: loss(deer_unroll, tol=1e-6))(), want, 1e-4)


def test_deer_falls_back_to_the_scan_when_it_does_not_converge():
    cell = recurrent.lstm_cell(H)
    params = cell.init(KEY, I)
    xs, _ = _data()
    final, ys, info = deer_unroll(cell, params, xs, max_iters=2, return_info=True)
    assert not bool(info["converged"]) and int(info["iterations"]) == 2
    want_final, want_ys = recurrent.unroll(cell, params, xs)
    _close(ys, want_ys, 1e-6)
    _close(final, want_final, 1e-6)


def test_deer_damping_still_converges():
    cell = recurrent.gru_cell(H)
    params = cell.init(KEY, I)
    xs, _ = _data()
    _, ys, info = deer_unroll(cell, params, xs, damping=0.3, max_iters=200, return_info=True)
    assert bool(info["converged"])
    _close(ys, recurrent.unroll(cell, params, xs)[1], 1e-4)


@pytest.mark.parametrize("opts, message", [({"jacobian": "dense"}, "jacobian must be"),
                                           ({"damping": 1.0}, "damping must be in")])
def test_deer_bad_options(opts, message):
    cell = recurrent.gru_cell(H)
    with pytest.raises(ValueError, match=message):
        deer_unroll(cell, cell.init(KEY, I), _data()[0], **opts)


@pytest.mark.parametrize("kind", ["mingru", "minlstm"])
def test_min_layers_parallel_equal_sequential(kind):
    init, layer = getattr(recurrent, f"init_{kind}"), getattr(recurrent, kind)
    params = init(KEY, I, H, num_layers=2, bidirectional=True)
    xs, _ = _data()
    h0 = jax.random.normal(KEY, (4, B, H))

    def run(impl):
        def loss(params, xs, h0):
            y, h_n = layer(params, xs, LENGTHS, h0, impl=impl)
            return jnp.sum(jnp.sin(y)) + jnp.sum(h_n**2), (y, h_n)

        return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, h0)

    (_, (y, h_n)), grads = run("parallel")
    (_, want), want_grads = run("reference")
    assert y.shape == (B, T, 2 * H) and h_n.shape == (4, B, H)
    _close((y, h_n), want, 1e-5)
    _close(grads, want_grads, 1e-4)
    np.testing.assert_array_equal(y[2], 0)  # length 0: no valid step


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_deer_layers_equal_the_scan(kind):
    params = getattr(recurrent, f"init_{kind}")(KEY, I, H, num_layers=2, bidirectional=True)
    xs, _ = _data()
    layer = getattr(recurrent, kind)
    want = layer(params, xs, LENGTHS)
    for impl in ("deer", "quasi_deer"):
        _close(layer(params, xs, LENGTHS, impl=impl), want, 1e-4)


def test_layer_impl_and_params_errors():
    xs, _ = _data()
    with pytest.raises(ValueError, match="mingru: impl must be one of 'parallel', 'reference'; "
                                         "got 'fast'"):
        recurrent.mingru(recurrent.init_mingru(KEY, I, H), xs, impl="fast")
    with pytest.raises(ValueError, match="gru: impl must be one of 'auto', 'fast', 'pallas', "
                                         "'reference', 'deer', 'quasi_deer'; got 'parallel'"):
        recurrent.gru(recurrent.init_gru(KEY, I, H), xs, impl="parallel")
    with pytest.raises(TypeError, match=r"minlstm: params\[0\]\[0\] is MinGRUParams; expected "
                                        r"MinLSTMParams"):
        recurrent.minlstm(recurrent.init_mingru(KEY, I, H), xs)
    with pytest.raises(ValueError, match="parallel_unroll: the cell has no log_coeffs"):
        cell = recurrent.gru_cell(H)
        minimal.parallel_unroll(cell, cell.init(KEY, I), xs)


@pytest.mark.parametrize("kind", ["MinGRU", "MinLSTM"])
def test_flax_modules_wrap_the_min_layers(kind):
    from flax import nnx

    xs, _ = _data()
    layer = getattr(recurrent, kind.lower())
    linen_model = getattr(recurrent.linen, kind)(H, num_layers=2, bidirectional=True)
    variables = linen_model.init(KEY, xs)
    y, h_n = linen_model.apply(variables, xs, LENGTHS, return_state=True)
    want_y, want_h = layer(linen_model.get_params(variables["params"]), xs, LENGTHS)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(h_n, want_h)

    nnx_model = getattr(recurrent.nnx, kind)(I, H, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(nnx_model(xs, LENGTHS), layer(nnx_model.get_params(), xs,
                                                                 LENGTHS)[0])
