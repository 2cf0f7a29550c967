"""recurrent.onnx: onnxruntime running the exported model equals recurrent.lstm/gru/rnn."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import recurrent
from recurrent import kinds
from recurrent import onnx as ronnx

# the kinds with an ONNX operator: (init, layer, export, whether the state is (h, c))
KINDS = {name: (*recurrent.layers.LAYERS[name], getattr(ronnx, f"{name}_to_onnx"), kind.pair)
         for name, kind in kinds.KINDS.items() if kind.onnx}
I, H = 3, 4


def _session(ort, model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _random_state(rng, pair, rows, batch):
    """``h_0`` (and ``c_0``), each ``(rows, batch, H)`` float32."""
    states = [rng.normal(size=(rows, batch, H)).astype(np.float32) for _ in range(1 + pair)]
    return tuple(states) if pair else states[0]


def _compare(session, layer, params, x, lengths, state, **options):
    """onnxruntime's ``y, h_n(, c_n)`` against ``layer``'s, within 1e-5."""
    feeds = {"x": x, "seq_lengths": lengths}
    if state is not None:
        names = ("h_0", "c_0") if isinstance(state, tuple) else ("h_0",)
        feeds.update(zip(names, state if isinstance(state, tuple) else (state,), strict=True))
    got = session.run(None, feeds)
    y, final = layer(params, jnp.asarray(x), seq_lengths=jnp.asarray(lengths),
                     initial_state=state, **options)
    _assert_close(got, [y, *(final if isinstance(final, tuple) else (final,))])


def _assert_close(got, want):
    """Each of onnxruntime's outputs ``got`` has the shape of and is within 1e-5 of ``want``'s."""
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, np.asarray(w), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_onnxruntime_equals_the_layer_on_two_shapes(onnxruntime, kind, num_layers,
                                                    bidirectional):
    """One export runs at two batch and time sizes, with lengths 1 and the full length."""
    import onnx

    init, layer, export, pair = KINDS[kind]
    params = init(jax.random.PRNGKey(0), I, H, num_layers, bidirectional)
    model = export(params, initial_state=True)
    onnx.checker.check_model(model, full_check=True)
    session = _session(onnxruntime, model)
    rng = np.random.default_rng(0)
    rows = num_layers * (1 + bidirectional)
    for batch, time, lengths in ((3, 5, [5, 1, 3]), (2, 8, [1, 8])):
        x = rng.normal(size=(batch, time, I)).astype(np.float32)
        state = _random_state(rng, pair, rows, batch)
        _compare(session, layer, params, x, np.array(lengths, np.int32), state)


@settings(max_examples=20, deadline=None)
@given(data=st.data(), kind=st.sampled_from(sorted(KINDS)), num_layers=st.integers(1, 2),
       bidirectional=st.booleans(), bias=st.booleans(), initial_state=st.booleans())
def test_onnxruntime_equals_the_layer_with_options(onnxruntime, data, kind, num_layers,
                                                   bidirectional, bias, initial_state):
    """Any bias, peepholes, GRU form and RNN nonlinearity; lengths outside ``[1, time]``
    (clipped to it, as the layers do; a length of 0 keeps the initial state)."""
    init, layer, export, pair = KINDS[kind]
    cell_options, options = {}, {}
    if kind == "lstm":
        cell_options["peephole"] = data.draw(st.booleans(), "peephole")
    elif kind == "gru":
        options["reset_after"] = data.draw(st.booleans(), "reset_after")
    else:
        options["nonlinearity"] = data.draw(st.sampled_from(["tanh", "relu"]), "nonlinearity")
    params = init(jax.random.PRNGKey(data.draw(st.integers(0, 2**16), "seed")), I, H,
                  num_layers, bidirectional, bias=bias, **cell_options)
    batch, time = data.draw(st.integers(1, 3), "batch"), data.draw(st.integers(1, 5), "time")
    lengths = np.array(data.draw(st.lists(st.integers(-1, time + 2), min_size=batch,
                                          max_size=batch), "lengths"), np.int32)
    rng = np.random.default_rng(batch * 10 + time)
    x = rng.normal(size=(batch, time, I)).astype(np.float32)
    state = (_random_state(rng, pair, num_layers * (1 + bidirectional), batch)
             if initial_state else None)
    session = _session(onnxruntime, export(params, initial_state=initial_state, **options))
    _compare(session, layer, params, x, lengths, state, **options)


def test_peepholes_are_onnx_p_input(onnxruntime):
    """The peephole weights reach the graph as the LSTM node's 8th input, ``P``."""
    params = recurrent.init_lstm(jax.random.PRNGKey(1), I, H, peephole=True)
    (node,) = [n for n in ronnx.lstm_to_onnx(params).graph.node if n.op_type == "LSTM"]
    assert len(node.input) == 8 and node.input[7] == "P_l0"


def test_linen_and_nnx_module_params(onnxruntime):
    """Params of a Linen LSTM (``module.get_params(variables["params"])``) and an NNX GRU
    (``get_params()``) export and run as the modules do."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 6, I)).astype(np.float32)
    lengths = np.array([6, 1, 4], np.int32)

    module = recurrent.linen.LSTM(H, num_layers=2, bidirectional=True)
    variables = module.init(jax.random.PRNGKey(0), x)
    session = _session(onnxruntime, ronnx.lstm_to_onnx(module.get_params(variables["params"])))
    y, (h_n, c_n) = module.apply(variables, x, lengths, return_state=True)
    _assert_close(session.run(None, {"x": x, "seq_lengths": lengths}), (y, h_n, c_n))

    model = recurrent.nnx.GRU(I, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
    session = _session(onnxruntime, ronnx.gru_to_onnx(model.get_params()))
    y, h_n = model(x, lengths, return_state=True)
    _assert_close(session.run(None, {"x": x, "seq_lengths": lengths}), (y, h_n))


def test_bfloat16_params_are_cast_to_float32(onnxruntime):
    params = recurrent.init_lstm(jax.random.PRNGKey(3), I, H, 2, True,
                                 param_dtype=jnp.bfloat16)
    model = ronnx.lstm_to_onnx(params)
    assert {t.data_type for t in model.graph.initializer if t.name.startswith(("W", "R", "B"))} \
        == {1}  # TensorProto.FLOAT
    as_f32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    rng = np.random.default_rng(3)
    _compare(_session(onnxruntime, model), recurrent.lstm, as_f32,
             rng.normal(size=(2, 4, I)).astype(np.float32), np.array([4, 2], np.int32), None)


def test_path_saves_the_model(onnxruntime, tmp_path):
    import onnx

    params = recurrent.init_gru(jax.random.PRNGKey(4), I, H)
    model = ronnx.gru_to_onnx(params, path=tmp_path / "gru.onnx")
    assert onnx.load(tmp_path / "gru.onnx") == model


@pytest.mark.parametrize("kind, option, cell_options", [
    ("lstm", "proj_size", dict(proj_size=2)),
    ("lstm", "layer_norm", dict(layer_norm=True)),
    ("lstm", "layer_norm", dict(layer_norm=True, peephole=True)),
    ("gru", "layer_norm", dict(layer_norm=True)),
])
def test_options_onnx_lacks_are_refused(onnxruntime, kind, option, cell_options):
    init, _, export, _ = KINDS[kind]
    params = init(jax.random.PRNGKey(0), I, H, **cell_options)
    with pytest.raises(ValueError, match=f"{kind}_to_onnx: .*{option}"):
        export(params)


def test_bad_arguments(onnxruntime):
    gru_params = recurrent.init_gru(jax.random.PRNGKey(0), I, H)
    with pytest.raises(TypeError, match="lstm_to_onnx: params\\[0\\]\\[0\\] is GRUParams"):
        ronnx.lstm_to_onnx(gru_params)
    with pytest.raises(TypeError, match="reset_after must be a bool"):
        ronnx.gru_to_onnx(gru_params, reset_after="yes")
    with pytest.raises(TypeError, match="initial_state must be a bool"):
        ronnx.gru_to_onnx(gru_params, initial_state=None)
    rnn_params = recurrent.init_rnn(jax.random.PRNGKey(0), I, H)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'; got 'gelu'"):
        ronnx.rnn_to_onnx(rnn_params, nonlinearity="gelu")


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    params = recurrent.init_lstm(jax.random.PRNGKey(0), I, H)
    with pytest.raises(ImportError) as error:
        ronnx.lstm_to_onnx(params)
    assert str(error.value) == (f'recurrent.onnx needs the onnx extra: pip install '
                                f'"{ronnx.DISTRIBUTION}[onnx]"')


@pytest.mark.parametrize("initial_state", [False, True])
def test_every_initializer_is_used(onnxruntime, initial_state):
    """No dead weights or constants in the graph (onnxruntime warns about each)."""
    params = recurrent.init_lstm(jax.random.PRNGKey(0), I, H, 2, True, peephole=True)
    graph = ronnx.lstm_to_onnx(params, initial_state=initial_state).graph
    used = {name for node in graph.node for name in node.input}
    assert {t.name for t in graph.initializer} <= used
