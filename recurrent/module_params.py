"""How the Flax modules name their weights, and the conversions to and from the functional
params, for both families.

A layer module has one param per weight, named by its place in the stack:
``layer_{l}/{forward|backward}/{field}``, where ``field`` is the name of the weight in the
functional params (:class:`recurrent.LSTMParams` etc., torch's names: ``w_ih``, ``w_hh``,
``b_ih``, ``b_hh``, and ``w_hr``, ``w_ci``... with the cell options). Weights of options
that are off have no param. A learned initial state is ``initial_state/h`` (and
``initial_state/c`` for the LSTM), each ``(num_layers * num_directions, width)``. A cell
module's weights are its own params, ``w_ih``, ``w_hh``...

:func:`to_tree` and :func:`to_functional` convert between the functional params and that
tree; :func:`from_legacy` converts params saved in the earlier layout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax

DIRECTIONS = ("forward", "backward")
_LAYER = re.compile(r"layer_(\d+)")


class InitialState(NamedTuple):
    """A learned initial state: ``h`` and, for the LSTM, ``c``, each ``(num_layers *
    num_directions, width)``."""

    h: jax.Array
    c: jax.Array | None = None


def to_tree(params, initial_state=None) -> dict:
    """The module's param tree of functional ``params`` (``((cell_params,) *
    num_directions,) * num_layers``): ``{"layer_0": {"forward": {"w_ih": ..., ...}, ...},
    ...}`` without the ``None`` fields; with ``initial_state`` (``h_0`` or ``(h_0, c_0)``,
    each ``(num_layers * num_directions, width)``) also ``{"initial_state": {"h": ...,
    "c": ...}}``."""
    tree: dict[str, Any] = {
        f"layer_{l}": {DIRECTIONS[d]: _fields(p) for d, p in enumerate(layer)}
        for l, layer in enumerate(params)}
    if initial_state is not None:
        state = (InitialState(*initial_state) if isinstance(initial_state, (tuple, list))
                 else InitialState(initial_state))
        tree["initial_state"] = _fields(state)
    return tree


def _fields(p) -> dict:
    return {name: value for name, value in p._asdict().items() if value is not None}


def to_functional(tree: Mapping, params_type: type):
    """The functional params of a module's param tree (:func:`to_tree`'s inverse; other
    entries such as ``initial_state`` are ignored): ``((params_type,) * num_directions,) *
    num_layers``. ``ValueError`` for a tree without layers or with a field
    ``params_type`` lacks."""
    layers = sorted((int(m.group(1)), key) for key in tree
                    if (m := _LAYER.fullmatch(str(key))))
    if not layers or [l for l, _ in layers] != list(range(len(layers))):
        raise ValueError(f"to_functional: the tree has layers {[k for _, k in layers]}; "
                         f"expected layer_0, layer_1, ... (keys {sorted(map(str, tree))})")
    out = []
    for _, key in layers:
        directions = [d for d in DIRECTIONS if d in tree[key]]
        out.append(tuple(_params(params_type, tree[key][d], f"{key}/{d}")
                         for d in directions))
    return tuple(out)


def _params(params_type: type, fields: Mapping, where: str):
    unknown = sorted(set(fields) - set(params_type._fields))
    if unknown:
        raise ValueError(f"to_functional: {where} has {unknown}, which "
                         f"{params_type.__name__} lacks (fields {params_type._fields})")
    return params_type(**{name: fields.get(name) for name in params_type._fields})


def from_legacy(tree):
    """Params in the layout before one param per weight, converted to today's.

    That layout held the functional params whole in one param ``"layers"`` (and a learned
    state as ``"initial_state"``, a pair for the LSTM), in Linen variables and in NNX
    states. Every dict of ``tree`` holding ``"layers"`` is rewritten with :func:`to_tree`;
    the rest is kept. ``tree`` may be the saved params themselves (NamedTuples), or what
    orbax restores from such a checkpoint without a target (lists or dicts with string
    indices, ``None`` for options that are off, NNX's ``{"value": array}`` leaves)::

        raw = orbax.checkpoint.StandardCheckpointer().restore(old_path)
        variables = {"params": recurrent.module_params.from_legacy(raw["params"])}  # Linen
        nnx.update(model, recurrent.module_params.from_legacy(raw))  # NNX: nnx.Param state
    """
    if not isinstance(tree, Mapping):
        return tree
    if "layers" not in tree:
        return {k: from_legacy(v) for k, v in tree.items()}
    out = {k: from_legacy(v) for k, v in tree.items() if k not in ("layers", "initial_state")}
    for l, layer in enumerate(_sequence(tree["layers"])):
        out[f"layer_{l}"] = {DIRECTIONS[d]: _legacy_fields(p)
                             for d, p in enumerate(_sequence(layer))}
    if tree.get("initial_state") is not None:
        state = _sequence(tree["initial_state"]) if not _is_array(tree["initial_state"]) \
            else [tree["initial_state"]]
        out["initial_state"] = {InitialState._fields[i]: _unwrap(s) for i, s in enumerate(state)}
    return out


def _is_array(x) -> bool:
    return hasattr(x, "shape") or (isinstance(x, Mapping) and set(x) == {"value"})


def _unwrap(x):
    """An NNX state's ``{"value": array}`` leaf as its array."""
    return x["value"] if isinstance(x, Mapping) and set(x) == {"value"} else x


def _sequence(x) -> list:
    """A saved tuple: a list or tuple, or a dict with keys ``"0"``, ``"1"``..."""
    if isinstance(x, Mapping):
        return [x[k] for k in sorted(x, key=int)]
    return list(x)


def _legacy_fields(p) -> dict:
    fields = p._asdict() if hasattr(p, "_asdict") else dict(p)
    return {k: _unwrap(v) for k, v in fields.items() if v is not None}


__all__ = ["DIRECTIONS", "InitialState", "from_legacy", "to_functional", "to_tree"]
