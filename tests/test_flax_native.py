"""The Flax modules as a Flax user meets them: one param per weight (optax masks, orbax
without a target, nnx.state), every option of the functional layers, cells that refuse a
wrong carry and return ``dtype``, flax's carry order, ``RNNCell``, ``carry_init`` and
logical axis names sharded over 8 host CPU devices; Linen and NNX alike."""

import dataclasses
import functools
import inspect

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import recurrent
import recurrent.linen as rl
import recurrent.nnx as rn
from recurrent import module_options, module_params
from tests.eight_devices import run_on_eight_devices

X = jax.random.normal(jax.random.key(0), (3, 5, 4))  # (batch, time, features)
TOKENS = jax.random.randint(jax.random.key(1), (8, 6), 0, 11)  # (batch, time) codes
LABELS = TOKENS[:, 0] % 2  # the class is read off the first token: the backward pass's job
# flatten_dict's keys of a 2-layer bidirectional LSTM, in the README's order.
STACK_KEYS = [(f"layer_{l}", d, w) for l in range(2) for d in ("forward", "backward")
              for w in ("w_ih", "w_hh", "b_ih", "b_hh")]


def test_linen_params_are_one_array_per_weight_named_by_place():
    variables = rl.LSTM(8, num_layers=2, bidirectional=True).init(jax.random.key(0), X)
    flat = flax.traverse_util.flatten_dict(variables["params"])
    assert list(flat) == STACK_KEYS
    assert all(isinstance(a, jax.Array) for a in flat.values())
    assert flat[("layer_1", "backward", "w_ih")].shape == (32, 16)
    options = rl.LSTM(8, proj_size=2, peephole=True, layer_norm=True, bias=False)
    flat = flax.traverse_util.flatten_dict(
        jax.eval_shape(options.init, jax.random.key(0), X)["params"])
    assert sorted(k[-1] for k in flat) == sorted(
        ["w_ih", "w_hh", "w_hr", "w_ci", "w_cf", "w_co", "gamma_ih", "gamma_hh", "gamma_c",
         "beta_c"])


def test_nnx_state_lists_each_weight():
    model = rn.LSTM(4, 8, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
    paths = [path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    assert sorted(paths) == sorted(STACK_KEYS)
    assert model.layer_1.backward.w_ih.get_value().shape == (32, 16)
    gru = rn.GRU(4, 8, layer_norm=True, learn_initial_state=True, rngs=nnx.Rngs(0))
    assert sorted(p[-1] for p, _ in nnx.to_flat_state(nnx.state(gru, nnx.Param))) == sorted(
        ["w_ih", "w_hh", "b_ih", "b_hh", "gamma_ih", "gamma_hh", "h"])


class LinenTagger(nn.Module):
    """Embedding, a 2-layer bidirectional LSTM and a dense head over the first step."""

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(11, 4)(tokens)  # (batch, time, 4)
        y = rl.LSTM(8, num_layers=2, bidirectional=True)(x)  # (batch, time, 16)
        return nn.Dense(2)(y[:, 0])  # (batch, 2)


class NNXTagger(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(11, 4, rngs=rngs)
        self.lstm = rn.LSTM(4, 8, num_layers=2, bidirectional=True, rngs=rngs)
        self.head = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, tokens):
        return self.head(self.lstm(self.embed(tokens))[:, 0])  # (batch, 2)


def _by_ndim(params):
    return jax.tree.map(lambda x: x.ndim > 1, params)


def _by_path(params):
    return flax.traverse_util.path_aware_map(lambda path, x: path[-1].startswith("w_"), params)


def _loss(logits):
    return optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()


@pytest.mark.parametrize("mask", [_by_ndim, _by_path])
def test_linen_model_trains_with_an_adamw_mask(mask):
    model = LinenTagger()
    params = model.init(jax.random.key(0), TOKENS)["params"]
    lstm = mask(params["LSTM_0"])
    assert lstm["layer_1"]["backward"]["w_hh"] and not lstm["layer_1"]["backward"]["b_ih"]
    # the mask reaches each weight: decay alone moves the masked weights, not the biases
    decay = optax.add_decayed_weights(1.0, mask)
    update, _ = decay.update(jax.tree.map(jnp.zeros_like, params), decay.init(params), params)
    np.testing.assert_array_equal(update["LSTM_0"]["layer_0"]["forward"]["w_ih"],
                                  params["LSTM_0"]["layer_0"]["forward"]["w_ih"])
    assert not update["LSTM_0"]["layer_0"]["forward"]["b_ih"].any()

    tx = optax.adamw(3e-2, weight_decay=1e-2, mask=mask)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: _loss(model.apply({"params": p},
                                                                     TOKENS)))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(15):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < losses[0] / 2, losses


def test_nnx_model_trains_with_an_adamw_mask():
    model = NNXTagger(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(3e-2, weight_decay=1e-2, mask=_by_ndim),
                              wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: _loss(m(TOKENS)))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(15)]
    assert losses[-1] < losses[0] / 2, losses


def test_orbax_restores_without_a_target_and_applies(tmp_path):
    model = LinenTagger()
    params = model.init(jax.random.key(0), TOKENS)["params"]
    nnx_model = NNXTagger(nnx.Rngs(0))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "linen", params)
        checkpointer.save(tmp_path / "nnx", nnx.to_pure_dict(nnx.state(nnx_model, nnx.Param)))
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "linen")
        state = checkpointer.restore(tmp_path / "nnx")
    np.testing.assert_array_equal(model.apply({"params": restored}, TOKENS),
                                  model.apply({"params": params}, TOKENS))
    fresh = NNXTagger(nnx.Rngs(1))
    nnx.update(fresh, state)
    np.testing.assert_array_equal(fresh(TOKENS), nnx_model(TOKENS))


def test_legacy_checkpoints_convert(tmp_path):
    """Params saved in the layout of one param ``"layers"`` (orbax restores them without a
    target as lists of dicts with ``None``, NNX's with ``{"value": ...}`` leaves)."""
    functional = recurrent.init_lstm(jax.random.key(0), 4, 3, num_layers=2,
                                     bidirectional=True)
    state = (jnp.ones((4, 3)), jnp.full((4, 3), 2.0))
    old_linen = {"LSTM_0": {"layers": functional, "initial_state": state}}
    old_nnx = {"layers": {str(l): {str(d): {k: {"value": v} for k, v in p._asdict().items()
                                            if v is not None} for d, p in enumerate(layer)}
                          for l, layer in enumerate(functional)}}
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "old", old_linen)
        checkpointer.wait_until_finished()
        raw = checkpointer.restore(tmp_path / "old")
    module = rl.LSTM(3, num_layers=2, bidirectional=True, learn_initial_state=True)
    want = {"LSTM_0": module.make_params(functional, state)}
    for old in (old_linen, raw):
        jax.tree.map(np.testing.assert_array_equal, module_params.from_legacy(old), want)
    y = module.apply({"params": module_params.from_legacy(raw)["LSTM_0"]}, X)
    np.testing.assert_array_equal(y, recurrent.lstm(functional, X, initial_state=state)[0])
    model = rn.LSTM(4, 3, num_layers=2, bidirectional=True, rngs=nnx.Rngs(5))
    nnx.update(model, module_params.from_legacy(old_nnx))
    jax.tree.map(np.testing.assert_array_equal, model.get_params(), functional)


def _option_names(*functions):
    """The keyword-only arguments of ``functions``, less the per-call ones."""
    return {name for f in functions for name, p in inspect.signature(f).parameters.items()
            if p.kind is p.KEYWORD_ONLY} - {"deterministic", "return_activations"}


@pytest.mark.parametrize("options, functions", [
    (module_options.LSTMOptions, (recurrent.lstm, recurrent.lstm_cell)),
    (module_options.GRUOptions, (recurrent.gru, recurrent.gru_cell)),
    (module_options.RNNOptions, (recurrent.rnn, recurrent.rnn_cell)),
    (module_options.MinimalOptions, (recurrent.mingru, recurrent.minimal.mingru_cell)),
    (module_options.LSTMCellOptions, (recurrent.lstm_cell,)),
    (module_options.GRUCellOptions, (recurrent.gru_cell,)),
    (module_options.RNNCellOptions, (recurrent.rnn_cell,)),
])
def test_the_modules_take_every_option_of_the_functional_layer(options, functions):
    fields = {f.name: f.default for f in dataclasses.fields(options)}
    assert _option_names(*functions) <= set(fields)
    for f in functions:  # same defaults
        for name, p in inspect.signature(f).parameters.items():
            if name in fields and p.kind is p.KEYWORD_ONLY:
                assert fields[name] == p.default, (name, fields[name], p.default)


OPTIONS = dict(forget_bias=1.0, bias_init=jax.nn.initializers.zeros,
               kernel_init=jax.nn.initializers.ones, recurrent_init=jax.nn.initializers.ones,
               impl="reference", unroll=2, proj_size=2, peephole=True, dtype=jnp.bfloat16,
               batch_first=False, cell_zoneout=0.3)
LAYER_OPTIONS = dict(impl="reference", unroll=2, dtype=jnp.bfloat16, batch_first=False,
                     cell_zoneout=0.3, deterministic=True)


def _check_options(params, y):
    """The init options reached the weights and the layer options the call."""
    p = params[0][0]
    np.testing.assert_array_equal(p.w_ih, 1)
    np.testing.assert_array_equal(p.b_ih, jnp.zeros(12).at[3:6].set(1.0))
    assert p.w_hr.shape == (2, 3) and p.w_ci.shape == (3,)
    want, _ = recurrent.lstm(params, jnp.swapaxes(X, 0, 1), **LAYER_OPTIONS)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y, want)


def test_linen_options_reach_init_and_layer():
    module = rl.LSTM(3, deterministic=True, **OPTIONS)
    variables = module.init(jax.random.key(0), jnp.swapaxes(X, 0, 1))
    _check_options(module.get_params(variables["params"]),
                   module.apply(variables, jnp.swapaxes(X, 0, 1)))


def test_nnx_options_reach_init_and_layer():
    model = rn.LSTM(4, 3, deterministic=True, **OPTIONS, rngs=nnx.Rngs(0))
    _check_options(model.get_params(), model(jnp.swapaxes(X, 0, 1)))
    with pytest.raises(TypeError, match="LSTM: unexpected option\\(s\\) recurrent_kernel"):
        rn.LSTM(4, 3, recurrent_kernel_init=None, rngs=nnx.Rngs(0))


def _linen_cell(kind, **options):
    cell = getattr(rl, kind)(3, **options)
    variables = cell.init(jax.random.key(0), cell.initialize_carry(jax.random.key(1),
                                                                   (3, 4)), X[:, 0])
    return functools.partial(cell.apply, variables)


def _nnx_cell(kind, **options):
    return getattr(rn, kind)(4, 3, **options, rngs=nnx.Rngs(0))


BAD_CARRIES = {  # (kind, carry that a (3, 4) input cannot take)
    "batch 1": ("LSTMCell", (jnp.zeros((1, 3)), jnp.zeros((3, 3)))),
    "width 1": ("GRUCell", jnp.zeros((3, 1))),
    "structure": ("LSTMCell", jnp.zeros((3, 3))),
    "rnn batch": ("RNNCell", jnp.zeros((1, 3))),
}


@pytest.mark.parametrize("make", [_linen_cell, _nnx_cell])
@pytest.mark.parametrize("case", sorted(BAD_CARRIES))
def test_cells_refuse_a_wrong_carry(make, case):
    kind, carry = BAD_CARRIES[case]
    with pytest.raises(ValueError, match=f"{kind}: carry has shapes"):
        make(kind)(carry, X[:, 0])


@pytest.mark.parametrize("cell", [recurrent.lstm_cell(3), recurrent.gru_cell(3),
                                  recurrent.rnn_cell(3), recurrent.minimal.mingru_cell(3)])
def test_functional_cells_refuse_a_wrong_carry(cell):
    params = cell.init(jax.random.key(0), 4)
    xp = cell.project(params, X[:, 0])  # (3, G * 3)
    good = cell.initial_carry((3,))
    cell.step(params, good, xp)
    for bad in (cell.initial_carry((1,)), jax.tree.map(lambda a: a[:, :1], good)):
        with pytest.raises(ValueError, match="step: carry has shapes"):
            cell.step(params, bad, xp)


@pytest.mark.parametrize("make", [_linen_cell, _nnx_cell])
@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells_return_dtype(make, kind):
    cell = make(kind, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    carry = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32),
                         make(kind)(jax.tree.map(jnp.zeros_like, _zeros(kind)), X[:, 0])[0])
    new, y = cell(carry, X[:, 0])
    assert y.dtype == jnp.bfloat16
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(new))


def _zeros(kind):
    return (jnp.zeros((3, 3)), jnp.zeros((3, 3))) if kind == "LSTMCell" else jnp.zeros((3, 3))


@pytest.mark.parametrize("make", [_linen_cell, _nnx_cell])
def test_flax_carry_order_is_c_then_h(make):
    h, c = jnp.full((3, 3), 0.5), jnp.full((3, 3), -0.25)
    torch_order, flax_order = make("LSTMCell"), make("LSTMCell", carry_order="flax")
    (h_t, c_t), y_t = torch_order((h, c), X[:, 0])
    (c_f, h_f), y_f = flax_order((c, h), X[:, 0])
    for ours, theirs in ((h_t, h_f), (c_t, c_f), (y_t, y_f)):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(h_f, y_f)  # as flax's: the carry's second entry is y
    assert not np.allclose(c_f, y_f)


def test_flax_order_cell_drops_in_for_optimized_lstm_cell():
    """A model written around ``nn.OptimizedLSTMCell``'s ``(c, h)`` carry runs our cell in
    its place, and gives the functional LSTM's output and final state."""
    c0, h0 = nn.OptimizedLSTMCell(3).initialize_carry(jax.random.key(0), X[:, 0].shape)
    c0, h0 = c0 + 0.3, h0 - 0.2
    rnn = nn.RNN(rl.LSTMCell(3, carry_order="flax"), return_carry=True)
    variables = rnn.init(jax.random.key(0), X, initial_carry=(c0, h0))
    (c, h), y = rnn.apply(variables, X, initial_carry=(c0, h0))
    params = ((recurrent.LSTMParams(**variables["params"]["cell"]),),)
    y_ref, (h_n, c_n) = recurrent.lstm(params, X, initial_state=(h0[None], c0[None]))
    np.testing.assert_allclose(y, y_ref, atol=1e-6)
    np.testing.assert_allclose(h, h_n[0], atol=1e-6)
    np.testing.assert_allclose(c, c_n[0], atol=1e-6)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_cells_equal_the_rnn_layer(nonlinearity):
    params = recurrent.init_rnn(jax.random.key(0), 4, 3)
    y_ref, _ = recurrent.rnn(params, X, nonlinearity=nonlinearity)
    linen = nn.RNN(rl.RNNCell(3, nonlinearity=nonlinearity))
    y = linen.apply({"params": {"cell": module_params.to_tree(params)["layer_0"]["forward"]}},
                    X)
    np.testing.assert_allclose(y, y_ref, atol=1e-6)
    cell = rn.RNNCell(4, 3, nonlinearity=nonlinearity, rngs=nnx.Rngs(0))
    cell.set_params(params[0][0])
    np.testing.assert_allclose(nnx.RNN(cell)(X), y_ref, atol=1e-6)


def test_carry_init():
    init = jax.nn.initializers.normal(1.0)
    linen = rl.LSTMCell(3, carry_init=init)
    h, c = linen.initialize_carry(jax.random.key(0), (2, 4))
    assert h.shape == c.shape == (2, 3) and not np.allclose(h, c)
    cell = rn.GRUCell(4, 3, carry_init=jax.nn.initializers.ones, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(cell.initialize_carry((2, 4), nnx.Rngs(1)), 1)
    np.testing.assert_array_equal(rn.GRUCell(4, 3, rngs=nnx.Rngs(0)).initialize_carry((2, 4)),
                                  0)
    with pytest.raises(ValueError, match="GRUCell: carry_init needs rngs"):
        cell.initialize_carry((2, 4))


def test_axis_names_shard_over_eight_devices():
    result = run_on_eight_devices("tests.flax_sharding")
    assert result["devices"] == 8
    for family in ("linen", "nnx"):  # w_ih (4 * 2, 4): its gate rows over the 8 devices
        assert result[f"{family}_spec"] == ["model", None], result
        assert result[f"{family}_shard"] == [1, 4]
        assert result[f"{family}_error"] < 1e-6
    assert result["nnx_names"] == ["rnn_gates", "rnn_hidden"]
    with pytest.raises(ValueError, match="LSTM: axis_names has no entry for the weight 'w_hh'"):
        rn.LSTM(4, 2, axis_names={"w_ih": ("a", "b")}, rngs=nnx.Rngs(0))


def test_bad_module_options_are_clear_errors():
    with pytest.raises(ValueError, match="LSTMCell: carry_order must be 'torch'"):
        _linen_cell("LSTMCell", carry_order="jax")
    with pytest.raises(ValueError, match="LSTMCell: carry_order must be 'torch'"):
        _nnx_cell("LSTMCell", carry_order="jax")
    with pytest.raises(TypeError, match="GRU: axis_names must be None or a mapping"):
        rl.GRU(3, axis_names=("rnn_gates",)).init(jax.random.key(0), X)
    with pytest.raises(TypeError, match="GRUCell: unexpected option\\(s\\) proj_size"):
        _nnx_cell("GRUCell", proj_size=2)


def test_modules_trace_to_the_functional_layer():
    """Converting the params inside ``__call__`` costs nothing: the modules' programs are
    the functional layer's, primitive for primitive."""
    module = rl.LSTM(3, num_layers=2, bidirectional=True)
    variables = module.init(jax.random.key(0), X)
    model = rn.LSTM(4, 3, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
    graph, state = nnx.split(model)

    def primitives(f, *args):
        return [e.primitive.name for e in jax.make_jaxpr(f)(*args).jaxpr.eqns]

    want = primitives(lambda p: recurrent.lstm(p, X)[0], module.get_params(variables["params"]))
    assert primitives(lambda v: module.apply(v, X), variables) == want
    assert primitives(lambda s: nnx.merge(graph, s)(X), state) == want
