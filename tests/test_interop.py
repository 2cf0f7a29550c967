"""Parity with torch.nn.LSTM / GRU / RNN from the same weights, and state-dict round trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrent
from recurrent import interop

B, T, I, H = 4, 7, 5, 6
LENGTHS = np.array([7, 3, 5, 1])


def _torch_run(torch, module, x, lengths, state):
    """torch's outputs and the input gradient of a fixed loss, through a packed sequence."""
    xt = torch.tensor(x, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths),
                                                     batch_first=True, enforce_sorted=False)
    state_t = tuple(torch.tensor(s) for s in state) if isinstance(state, tuple) \
        else torch.tensor(state)
    y, final = module(packed, state_t)
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=T)
    finals = final if isinstance(final, tuple) else (final,)
    loss = (y * torch.linspace(-1, 1, y.shape[-1])).sum() + sum((f**2).sum() for f in finals)
    loss.backward()
    return y.detach().numpy(), [f.detach().numpy() for f in finals], xt.grad.numpy()


def _jax_run(fn, params, x, lengths, state):
    def loss(x):
        y, final = fn(params, x, jnp.asarray(lengths), state)
        finals = final if isinstance(final, tuple) else (final,)
        loss = (y * jnp.linspace(-1, 1, y.shape[-1])).sum() + sum((f**2).sum() for f in finals)
        return loss, (y, finals)

    (_, (y, finals)), grad = jax.value_and_grad(loss, has_aux=True)(jnp.asarray(x))
    return np.asarray(y), [np.asarray(f) for f in finals], np.asarray(grad)


@pytest.mark.parametrize("kind, num_layers", [("lstm", 3), ("gru", 2), ("rnn", 2)])
def test_parity_with_torch_packed_bidirectional(torch, kind, num_layers):
    module_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    module = module_cls(I, H, num_layers=num_layers, bidirectional=True, batch_first=True)
    params = getattr(interop, f"{kind}_from_torch")(module)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    shape = (2 * num_layers, B, H)
    state = rng.standard_normal((2, *shape)).astype(np.float32)
    state = (state[0], state[1]) if kind == "lstm" else state[0]

    want_y, want_finals, want_grad = _torch_run(torch, module, x, LENGTHS, state)
    fn = getattr(recurrent, kind)
    got_y, got_finals, got_grad = _jax_run(fn, params, x, LENGTHS, state)
    np.testing.assert_allclose(got_y, want_y, atol=1e-5)
    for got, want in zip(got_finals, want_finals, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got_grad, want_grad, atol=1e-5)


def test_parity_unpacked_relu_rnn_and_no_bias(torch):
    rnn = torch.nn.RNN(I, H, num_layers=2, nonlinearity="relu", batch_first=True)
    lstm = torch.nn.LSTM(I, H, bias=False, batch_first=True)
    x = np.random.default_rng(1).standard_normal((B, T, I)).astype(np.float32)
    y_rnn, _ = recurrent.rnn(interop.rnn_from_torch(rnn), jnp.asarray(x), nonlinearity="relu")
    y_lstm, _ = recurrent.lstm(interop.lstm_from_torch(lstm), jnp.asarray(x))
    with torch.no_grad():
        np.testing.assert_allclose(y_rnn, rnn(torch.tensor(x))[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(y_lstm, lstm(torch.tensor(x))[0].numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_round_trip(torch, kind, bias):
    module_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    module = module_cls(I, H, num_layers=2, bidirectional=True, bias=bias)
    want = module.state_dict()
    params = getattr(interop, f"{kind}_from_torch")(want)
    got = getattr(interop, f"{kind}_to_torch")(params)
    assert list(got) == list(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    module.load_state_dict(got)  # strict by default: keys and shapes fit


def test_numpy_state_dict_and_params_to_torch(torch):
    params = recurrent.init_gru(jax.random.PRNGKey(0), I, H, num_layers=2)
    state = {k: v.numpy() for k, v in interop.gru_to_torch(params).items()}
    back = interop.gru_from_torch(state)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    module = torch.nn.GRU(I, H, num_layers=2, batch_first=True)
    module.load_state_dict(interop.gru_to_torch(params))
    x = np.random.default_rng(2).standard_normal((B, T, I)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(recurrent.gru(params, jnp.asarray(x))[0],
                                   module(torch.tensor(x))[0].numpy(), atol=1e-5)


def test_projection_parity_with_torch_packed_bidirectional(torch):
    """torch.nn.LSTM(proj_size=P): outputs, h_n (P wide), c_n (H wide) and the input
    gradient, two bidirectional layers over a packed sequence."""
    P = 3
    module = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True,
                           proj_size=P)
    params = interop.lstm_from_torch(module)
    assert params[1][1].w_hr.shape == (P, H) and params[1][1].w_ih.shape == (4 * H, 2 * P)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    state = (rng.standard_normal((4, B, P)).astype(np.float32),
             rng.standard_normal((4, B, H)).astype(np.float32))
    want_y, want_finals, want_grad = _torch_run(torch, module, x, LENGTHS, state)
    got_y, got_finals, got_grad = _jax_run(recurrent.lstm, params, x, LENGTHS, state)
    assert got_y.shape == (B, T, 2 * P)
    np.testing.assert_allclose(got_y, want_y, atol=1e-5)
    for got, want in zip(got_finals, want_finals, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got_grad, want_grad, atol=1e-5)


def test_projection_state_dict_both_ways(torch):
    """weight_hr_l{k}{_reverse} in and out, in torch's key order; params made by init_lstm
    load into a torch module with the same proj_size."""
    module = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=2)
    want = module.state_dict()
    got = interop.lstm_to_torch(interop.lstm_from_torch(want))
    assert list(got) == list(want) and "weight_hr_l1_reverse" in got
    for k in want:
        assert torch.equal(got[k], want[k]), k
    params = recurrent.init_lstm(jax.random.PRNGKey(1), I, H, 2, True, proj_size=2)
    module.load_state_dict(interop.lstm_to_torch(params))  # strict: keys and shapes fit
    np.testing.assert_array_equal(module.weight_hr_l1_reverse.detach().numpy(),
                                  params[1][1].w_hr)
