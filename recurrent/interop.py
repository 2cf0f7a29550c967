"""Weights to and from torch's ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN``.

The cells keep torch's layout and gate order, so a conversion only renames:
``weight_ih_l{k}[_reverse] -> params[k][d].w_ih`` and likewise ``weight_hh``, ``bias_ih``,
``bias_hh`` and the LSTM projection ``weight_hr`` (``proj_size > 0``) to ``w_hr``. Cell
options torch does not have (peepholes, layer norm) cannot be converted to torch. torch is
needed only by the ``*_to_torch`` functions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from recurrent import checks
from recurrent.kinds import KINDS, Kind
from recurrent.layers import Params

_FIELDS = {"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b_ih", "bias_hh": "b_hh",
           "weight_hr": "w_hr"}  # in torch's order
# e.g. "LSTM has 4, GRU 3, RNN 1": what a weight_hh of the wrong kind is checked against
_GATE_COUNTS = ", ".join(f"{k.torch} {'has ' if i == 0 else ''}{k.gates}"
                         for i, k in enumerate(k for k in KINDS.values() if k.torch))
_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")


def _torch_key(name: str, layer: int, direction: int) -> str:
    return f"{name}_l{layer}{'_reverse' if direction else ''}"


def _as_numpy_dict(fn: str, source) -> dict[str, np.ndarray]:
    """A module's or a state dict's tensors (torch or NumPy) as NumPy arrays; a torch
    bfloat16 tensor (which NumPy has no dtype for) as ``ml_dtypes``' bfloat16, exactly."""
    if callable(getattr(source, "state_dict", None)):
        source = source.state_dict()
    if not isinstance(source, Mapping):
        raise TypeError(f"{fn}: expected a torch module or a state dict; got "
                        f"{type(source).__name__}")
    out = {}
    for k, v in source.items():
        if hasattr(v, "detach"):  # a torch tensor
            v = v.detach().cpu()
            bf16 = str(v.dtype) == "torch.bfloat16"
            v = v.float().numpy().astype(jnp.bfloat16) if bf16 else v.numpy()
        out[k] = np.asarray(v)
    return out


def _from_torch(fn: str, source, kind: Kind):
    params_type, gates = kind.params_type, kind.gates
    state = _as_numpy_dict(fn, source)
    layer_ids = [int(m.group(2)) for k in state if (m := _KEY.match(k))]
    if not layer_ids:
        raise ValueError(f"{fn}: no weight_ih_l0 / weight_hh_l0 keys in the state dict; "
                         f"got keys {sorted(state)}")
    num_layers = max(layer_ids) + 1
    num_dirs = 2 if "weight_ih_l0_reverse" in state else 1
    names = list(_FIELDS)[:4] if "bias_ih_l0" in state else ["weight_ih", "weight_hh"]
    projected = "w_hr" in params_type._fields and "weight_hr_l0" in state
    names += ["weight_hr"] if projected else []
    expected = {_torch_key(n, l, d) for l in range(num_layers) for d in range(num_dirs)
                for n in names}
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise ValueError(f"{fn}: state dict does not match a {num_layers}-layer "
                         f"{'bidirectional ' if num_dirs == 2 else ''}{fn.split('_')[0]}: "
                         f"missing keys {missing}, unexpected keys {extra}")
    w_hh = state["weight_hh_l0"]
    hidden = state["weight_hr_l0"].shape[-1] if projected else w_hh.shape[-1]
    if w_hh.ndim != 2 or w_hh.shape[0] != gates * hidden:
        raise ValueError(f"{fn}: weight_hh_l0 has shape {w_hh.shape}; expected "
                         f"({gates} * hidden_size, {'proj_size' if projected else 'hidden_size'})"
                         f" for {gates} gate blocks ({_GATE_COUNTS})")

    def get(name, l, d):
        key = _torch_key(name, l, d)
        return jnp.asarray(state[key]) if key in state else None

    params = tuple(
        tuple(params_type(**{field: get(name, l, d) for name, field in _FIELDS.items()
                             if field in params_type._fields})
              for d in range(num_dirs))
        for l in range(num_layers))
    checks.check_stack(fn, params, kind)
    return params


def _to_torch(fn: str, params, kind: Kind) -> dict:
    checks.check_stack(fn, params, kind)
    extra = [f for f in kind.params_type._fields
             if f not in _FIELDS.values() and getattr(params[0][0], f) is not None]
    if extra:
        raise ValueError(f"{fn}: the params have {', '.join(extra)} (peephole or layer_norm "
                         f"options), which torch's modules have no weights for")
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f'{fn} needs torch: pip install "jax-recurrent[torch]"') from e
    state = {}
    for l, layer in enumerate(params):
        for d, p in enumerate(layer):
            for name, field in _FIELDS.items():
                value = getattr(p, field, None)
                if value is not None:
                    state[_torch_key(name, l, d)] = torch.from_numpy(np.array(value))
    return state


def lstm_from_torch(source: Any) -> Params:
    """Params for :func:`recurrent.lstm` from a ``torch.nn.LSTM`` or its state dict.

    ``source`` may hold torch tensors or NumPy arrays; the number of layers, the
    directions, whether there are biases and a projection (``weight_hr_l*``, torch's
    ``proj_size > 0``, to ``w_hr``) are read from its keys. Raises ``ValueError``
    on missing or unexpected keys or on shapes that are not an LSTM's.
    """
    return _from_torch("lstm_from_torch", source, KINDS["lstm"])


def gru_from_torch(source: Any) -> Params:
    """Params for :func:`recurrent.gru` from a ``torch.nn.GRU`` or its state dict."""
    return _from_torch("gru_from_torch", source, KINDS["gru"])


def rnn_from_torch(source: Any) -> Params:
    """Params for :func:`recurrent.rnn` from a ``torch.nn.RNN`` or its state dict."""
    return _from_torch("rnn_from_torch", source, KINDS["rnn"])


def lstm_to_torch(params: Params) -> dict[str, Any]:
    """A ``torch.nn.LSTM`` state dict (``{name: torch.Tensor}``) from LSTM params, in
    torch's key order; ``module.load_state_dict(lstm_to_torch(params))`` loads it (a
    module made with ``proj_size=P`` for params with ``w_hr``). ``ValueError`` for params
    with peepholes or layer norm, which torch does not have."""
    return _to_torch("lstm_to_torch", params, KINDS["lstm"])


def gru_to_torch(params: Params) -> dict[str, Any]:
    """A ``torch.nn.GRU`` state dict from GRU params."""
    return _to_torch("gru_to_torch", params, KINDS["gru"])


def rnn_to_torch(params: Params) -> dict[str, Any]:
    """A ``torch.nn.RNN`` state dict from RNN params."""
    return _to_torch("rnn_to_torch", params, KINDS["rnn"])

__all__ = [
    "gru_from_torch", "gru_to_torch", "lstm_from_torch", "lstm_to_torch", "rnn_from_torch",
    "rnn_to_torch",
]
