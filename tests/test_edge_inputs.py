"""Edge inputs at every public entry point and every ``impl``: sizes (0 included), dtypes,
flags and lengths give the reference's answer or a ValueError/TypeError naming the
argument, never another exception; padding (NaN and inf included) changes no output or
gradient; empty batches and sequences run forwards and backwards everywhere."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import recurrent
import recurrent.linen as rl
import recurrent.nnx as rn
from recurrent.deer import deer_unroll
from recurrent.kinds import KINDS
from recurrent.minimal import mingru_cell, parallel_unroll

I, H = 2, 2
LAYERS = recurrent.layers.LAYERS  # name: (init, layer), every kind of recurrent.kinds.KINDS
# every kind's impls but the GPU kernel's (tests/test_kernels.py) and the RNN's full DEER
CASES = [(name, impl) for name, kind in KINDS.items() for impl in kind.impls
         if impl != "pallas" and (name, impl) != ("rnn", "deer")]
INT_DTYPES = [jnp.int8, jnp.uint8, jnp.int16, jnp.uint16, jnp.int32, jnp.uint32]
FLOAT_DTYPES = [jnp.float16, jnp.bfloat16, jnp.float32]
EXAMPLES = settings(max_examples=25, deadline=None)


def _params(name, bidirectional=False, num_layers=1, seed=0):
    return LAYERS[name][0](jax.random.key(seed), I, H, num_layers=num_layers,
                           bidirectional=bidirectional)


def _close(got, want, tol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                                   rtol=tol, atol=tol)


# ----- the reference's answer or a clear error, for every argument -----------------------

_BAD = object()  # marks a drawn value as one the layer must refuse


def _argument(draw, good, bad):
    """``(value, is_bad)`` drawn from the good values or, one time in four, the bad ones."""
    if bad and draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(bad)), True
    return draw(st.sampled_from(good)), False


@st.composite
def layer_calls(draw):
    name, impl = draw(st.sampled_from(CASES))
    batch, time = draw(st.integers(0, 2)), draw(st.integers(0, 3))
    bidirectional = draw(st.booleans())
    bad = set()

    x_dtype, wrong = _argument(draw, FLOAT_DTYPES, [jnp.int32, jnp.uint8, jnp.bool_])
    features = I
    if draw(st.integers(0, 7)) == 0:
        features, wrong = I + 1, True
    if wrong:
        bad.add("x")
    x = jax.random.normal(jax.random.key(draw(st.integers(0, 9))), (batch, time, features))
    x = x.astype(x_dtype)

    kind = draw(st.sampled_from(["none", "int", "int", "float", "shape", "list"]))
    if kind == "none":
        lengths = None
    elif kind == "int":  # any value of any integer dtype, clipped to [0, time]
        dtype = draw(st.sampled_from(INT_DTYPES))
        info = jnp.iinfo(dtype)
        values = draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=batch,
                               max_size=batch))
        lengths = jnp.asarray(np.array(values, dtype=np.dtype(dtype)))
    else:
        bad.add("seq_lengths")
        lengths = {"float": jnp.ones((batch,), jnp.float32), "shape": jnp.ones((batch + 1,),
                   jnp.int32), "list": [1] * batch}[kind]

    options = {}
    for arg, good, wrong in [
            ("dtype", [None, None, jnp.float32, jnp.bfloat16], [jnp.int32, jnp.bool_, "x"]),
            ("batch_first", [True], [0, 1, "no", None]),
            ("dropout", [0.0], [-0.5, 1.0, "0.1"]),
            ("unroll", [None, 1, 2], [0, -1, 1.5]),
    ]:
        value, is_bad = _argument(draw, good, wrong)
        options[arg] = value
        if is_bad:
            bad.add(arg)
    return name, impl, bidirectional, x, lengths, options, bad


def _reference_answer(name, params, x, lengths, options):
    """The reference scan's answer, with the lengths clipped to [0, time] in NumPy."""
    if lengths is not None:
        lengths = jnp.asarray(np.clip(np.asarray(lengths, np.int64), 0, x.shape[1]), jnp.int32)
    return LAYERS[name][1](params, x, lengths, impl="reference",
                           **{**options, "unroll": None})


@EXAMPLES
@given(layer_calls())
def test_every_layer_and_impl_answers_as_the_reference_or_names_the_argument(call):
    name, impl, bidirectional, x, lengths, options, bad = call
    params = _params(name, bidirectional)
    try:
        got = LAYERS[name][1](params, x, lengths, impl=impl, **options)
    except (ValueError, TypeError) as error:
        assert bad, f"refused good arguments: {error}"
        assert any(arg in str(error) for arg in bad), (bad, str(error))
        return
    assert not bad, f"accepted {bad}"
    tol = 5e-2 if options["dtype"] is not None or x.dtype != jnp.float32 else 1e-4
    _close(got, _reference_answer(name, params, x, lengths, options), tol)


@st.composite
def init_calls(draw):
    sizes = {}
    bad = set()
    for arg in ("input_size", "hidden_size", "num_layers"):
        value, is_bad = _argument(draw, [1, 2], [0, -2, 2.5, True, "3", None])
        sizes[arg] = value
        if is_bad:
            bad.add(arg)
    bidirectional, is_bad = _argument(draw, [True, False], [0, 1, "no", None])
    if is_bad:
        bad.add("bidirectional")
    return draw(st.sampled_from(list(LAYERS))), sizes, bidirectional, bad


@EXAMPLES
@given(init_calls())
def test_every_init_makes_params_or_names_the_argument(call):
    name, sizes, bidirectional, bad = call
    try:
        params = LAYERS[name][0](jax.random.key(0), sizes["input_size"], sizes["hidden_size"],
                                 sizes["num_layers"], bidirectional)
    except (ValueError, TypeError) as error:
        assert bad and any(arg in str(error) for arg in bad), (bad, str(error))
        return
    assert not bad, f"accepted {bad}"
    assert len(params) == sizes["num_layers"] and len(params[0]) == 1 + bidirectional


@pytest.mark.parametrize("make", [recurrent.lstm_cell, recurrent.gru_cell, recurrent.rnn_cell,
                                  mingru_cell])
@pytest.mark.parametrize("hidden", [0, -2, 2.5, "2"])
def test_cells_refuse_bad_hidden_sizes(make, hidden):
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        make(hidden)


@pytest.mark.parametrize("build", [
    lambda: rl.LSTM(0).init(jax.random.key(0), jnp.ones((1, 2, I))),
    lambda: rl.GRU(0).init(jax.random.key(0), jnp.ones((1, 2, I))),
    lambda: rn.LSTM(I, 0, rngs=nnx.Rngs(0)),
    lambda: rn.GRU(I, 0, rngs=nnx.Rngs(0)),
])
def test_modules_with_no_units_are_a_clear_error(build):
    with pytest.raises(ValueError, match="hidden_size must be a positive int; got 0"):
        build()


def test_nnx_dropout_without_its_rng_stream_is_a_clear_error():
    with pytest.raises(ValueError, match="rng_collection='dropout', which rngs lacks"):
        rn.LSTM(I, H, num_layers=2, dropout=0.5, rngs=nnx.Rngs(params=0))


# ----- lengths in any integer dtype ------------------------------------------------------

@pytest.mark.parametrize("dtype, impl", [(dtype, "reference") for dtype in INT_DTYPES]
                         + [(jnp.uint8, "fast"), (jnp.uint8, "quasi_deer"),
                            (jnp.int8, "parallel")])
def test_narrow_length_dtypes_do_not_wrap(dtype, impl):
    """uint8 lengths [250, 255] at T = 300 were clipped to 300 in uint8, i.e. to 44; at
    T = 260 to 4 (int8 wraps from T = 128). Every impl frames the lengths alike."""
    name = "mingru" if impl == "parallel" else "gru"
    params, layer = _params(name, bidirectional=True), LAYERS[name][1]
    time = 260
    x = jax.random.normal(jax.random.key(1), (2, time, I))
    info = jnp.iinfo(dtype)
    values = np.array([min(250, info.max), info.max], np.int64)
    got = layer(params, x, jnp.asarray(values.astype(np.dtype(dtype))), impl=impl)
    want = layer(params, x, jnp.asarray(np.minimum(values, time), jnp.int32), impl="reference")
    _close(got, want, 1e-4)


# ----- padding cannot matter -------------------------------------------------------------

def _padding_case(seed, lengths, poison, time=4, batch=3):
    key = jax.random.key(seed)
    x = jax.random.normal(key, (batch, time, I))
    padded = np.arange(time)[None, :] >= np.asarray(lengths)[:, None]  # (batch, time)
    return jnp.where(padded[..., None], 0.0, x), jnp.where(padded[..., None], poison, x)


@functools.cache
def _outputs_and_gradients(name, impl):
    """``run(params, x, lengths) -> (y, state, d_params, d_x)``, jitted once per layer and
    ``impl``, of a loss that weighs every output and final state differently."""
    layer = LAYERS[name][1]

    def loss(params, x, lengths):
        y, state = layer(params, x, lengths, impl=impl)
        weights = jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
        return jnp.sum(y * weights) + sum(jnp.sum(jnp.sin(s)) for s in jax.tree.leaves(state))

    @jax.jit
    def run(params, x, lengths):
        y, state = layer(params, x, lengths, impl=impl)
        return y, state, *jax.grad(loss, argnums=(0, 1))(params, x, lengths)

    return run


@pytest.mark.parametrize("name, impl", CASES)
@settings(max_examples=3, deadline=None)
@given(lengths=st.lists(st.integers(-1, 5), min_size=3, max_size=3),
       poison=st.sampled_from([np.nan, np.inf, -np.inf, 1e30]), seed=st.integers(0, 9))
def test_nan_or_inf_in_padding_changes_no_output_or_gradient(name, impl, lengths, poison,
                                                             seed):
    """Two bidirectional layers; lengths below 0 and above time included."""
    params = _params(name, bidirectional=True, num_layers=2, seed=seed)
    lengths = jnp.asarray(lengths, jnp.int32)
    clean, poisoned = _padding_case(seed, np.clip(lengths, 0, 4), poison)
    run = _outputs_and_gradients(name, impl)
    got = run(params, poisoned, lengths)
    for leaf in jax.tree.leaves(got):
        assert jnp.all(jnp.isfinite(leaf))
    _close(got, run(params, clean, lengths), 1e-6)


def test_nan_in_padding_changes_nothing_in_the_kernel():
    """impl="pallas" in interpret mode (the GRU: the quicker of the two kernels to
    interpret); hidden 16 is the kernels' smallest block."""
    params = recurrent.init_gru(jax.random.key(0), I, 16)
    lengths = jnp.array([3, 0], jnp.int32)
    clean, poisoned = _padding_case(0, lengths, np.nan, time=3, batch=2)
    run = _outputs_and_gradients("gru", "pallas")
    _close(run(params, poisoned, lengths), run(params, clean, lengths), 1e-6)


@pytest.mark.parametrize("unroll_fn, cell, reverse", [
    (recurrent.unroll, recurrent.lstm_cell(H), False),
    (recurrent.unroll, recurrent.lstm_cell(H), True),
    (deer_unroll, recurrent.gru_cell(H), True),
    (parallel_unroll, mingru_cell(H), False),
    (parallel_unroll, mingru_cell(H), True),
])
def test_nan_in_padding_changes_nothing_in_the_public_unrolls(unroll_fn, cell, reverse):
    params = cell.init(jax.random.key(0), I)
    lengths = jnp.array([4, 1, 0], jnp.int32)
    clean, poisoned = _padding_case(0, lengths, np.nan)

    def run(params, x):
        carry, ys = unroll_fn(cell, params, x, seq_lengths=lengths, reverse=reverse)
        return jnp.sum(ys * jnp.cos(jnp.arange(ys.size).reshape(ys.shape))) + sum(
            jnp.sum(c) for c in jax.tree.leaves(carry))

    want = jax.value_and_grad(run, argnums=(0, 1))(params, clean)
    got = jax.value_and_grad(run, argnums=(0, 1))(params, poisoned)
    _close(got, want, 1e-6)


# ----- empty batches and sequences -------------------------------------------------------

@pytest.mark.parametrize("name, impl", CASES)
@pytest.mark.parametrize("batch, time", [(0, 3), (2, 0)])
def test_empty_inputs_run_forwards_and_backwards_as_the_reference(name, impl, batch, time):
    params = _params(name, bidirectional=True)
    x = jnp.ones((batch, time, I))
    lengths = jnp.zeros((batch,), jnp.int32)
    layer = LAYERS[name][1]
    got = _outputs_and_gradients(name, impl)(params, x, lengths)  # under jit
    want = _outputs_and_gradients(name, "reference")(params, x, lengths)
    assert got[0].shape == (batch, time, 2 * H)
    _close(got, want, 0)
    _close(layer(params, x, impl=impl), layer(params, x, impl="reference"), 0)


@pytest.mark.parametrize("batch, time", [(0, 3), (2, 0)])
def test_empty_inputs_in_the_modules(batch, time):
    x = jnp.ones((batch, time, I))
    linen = rl.LSTM(H, bidirectional=True)
    variables = linen.init(jax.random.key(0), jnp.ones((1, 2, I)))
    assert jax.jit(linen.apply)(variables, x).shape == (batch, time, 2 * H)
    assert rn.GRU(I, H, rngs=nnx.Rngs(0))(x).shape == (batch, time, H)


@pytest.mark.parametrize("batch, time", [(0, 3), (2, 0)])
def test_empty_inputs_in_truncated_bptt(batch, time):
    params = _params("lstm")
    y, (h, c) = recurrent.truncated_bptt(recurrent.lstm, params, jnp.ones((batch, time, I)), 2)
    assert y.shape == (batch, time, H) and h.shape == c.shape == (1, batch, H)


# ----- the public unrolls check their arguments ------------------------------------------

_LSTM = recurrent.lstm_cell(H)
_LSTM_PARAMS = _LSTM.init(jax.random.key(0), I)


@pytest.mark.parametrize("unroll_fn", [recurrent.unroll, deer_unroll])
@pytest.mark.parametrize("args, kwargs, error, message", [
    ((_LSTM_PARAMS, jnp.ones((2, 3, I + 1))), {}, ValueError, "x has 3 features"),
    ((recurrent.gru_cell(H).init(jax.random.key(0), I), jnp.ones((2, 3, I))), {}, TypeError,
     "params is GRUParams; expected LSTMParams"),
    ((_LSTM_PARAMS._replace(w_hh=None), jnp.ones((2, 3, I))), {}, ValueError,
     "params.w_hh is None"),
    ((_LSTM_PARAMS, jnp.ones((2, 3, I)), jnp.zeros((2, H))), {}, ValueError, "carry has shapes"),
    ((_LSTM_PARAMS, jnp.ones((2, 3, I))), {"seq_lengths": [1, 2]}, TypeError, "seq_lengths"),
    ((_LSTM_PARAMS, jnp.ones((3, I))), {}, ValueError, "x must have shape"),
    ((recurrent.lstm_cell(H + 1).init(jax.random.key(0), I), jnp.ones((2, 3, I))), {},
     ValueError, "made for hidden_size=2"),
])
def test_public_unrolls_name_the_bad_argument(unroll_fn, args, kwargs, error, message):
    with pytest.raises(error, match=message):
        unroll_fn(_LSTM, *args, **kwargs)


@pytest.mark.parametrize("cell", [recurrent.lstm_cell(H), recurrent.gru_cell(H), mingru_cell(H)])
def test_cells_project_names_a_wrong_feature_size(cell):
    params = cell.init(jax.random.key(0), I)
    with pytest.raises(ValueError, match=r"project: x of shape \(2, 3, 3\) needs params.w_ih"):
        cell.project(params, jnp.ones((2, 3, I + 1)))


def test_truncated_bptt_names_bad_lengths():
    with pytest.raises(TypeError, match="seq_lengths must be an integer array"):
        recurrent.truncated_bptt(recurrent.lstm, _params("lstm"), jnp.ones((2, 5, I)), 2,
                                 seq_lengths=[5, 3])


def test_bfloat16_torch_weights_load_exactly(torch):
    module = torch.nn.LSTM(I, H).to(torch.bfloat16)
    params = recurrent.interop.lstm_from_torch(module)
    assert params[0][0].w_ih.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(params[0][0].w_hh, np.float32),
                                  module.weight_hh_l0.detach().float().numpy())
