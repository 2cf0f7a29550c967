"""Export of trained LSTM, GRU and RNN stacks to ONNX's own ``LSTM``, ``GRU`` and ``RNN``
operators, for runtimes without Python or JAX (e.g. onnxruntime).

One operator node per layer runs both directions (``direction="bidirectional"``) with
ONNX's ``sequence_lens``, whose reverse direction starts at each sequence's own last valid
step and whose outputs past a length are zero: the semantics of :func:`recurrent.lstm`.
The graph reads and writes torch's batch-first layout::

    x (batch, time, input) --Transpose--> (time, batch, input)
      per layer: LSTM/GRU/RNN -> Y (time, dirs, batch, H)
                 --Transpose--> (time, batch, dirs, H) --Reshape--> (time, batch, dirs*H)
    --Transpose--> y (batch, time, dirs*H)
    h_n = Concat(Y_h of every layer)   # (layers*dirs, batch, H), torch's order

ONNX's ``layout=1`` (batch first) is not used: onnxruntime's CPU kernels refuse it. The
model uses opset :data:`OPSET` and IR version :data:`IR_VERSION` (onnx 1.12,
onnxruntime 1.12 and later load it). ``onnx`` is needed to export, ``onnxruntime`` to run
the model: both come with the ``onnx`` extra.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import jax
import numpy as np

from recurrent import checks
from recurrent.kinds import KINDS, Kind
from recurrent.layers import Params

if TYPE_CHECKING:  # pragma: no cover
    import onnx

DISTRIBUTION = "jax-recurrent"  # the name ``pip install`` knows this project by
OPSET = 17  # LSTM, GRU and RNN resolve to their version 14
IR_VERSION = 8  # the IR of onnx 1.12, which introduced opset 17


# Cell options ONNX's operators have no input for
_REFUSED_OPTIONS = ("proj_size", "layer_norm")


def _require_onnx():
    """The ``onnx`` package, or an ``ImportError`` that says how to install it."""
    try:
        import onnx
    except ImportError:
        raise ImportError(f'recurrent.onnx needs the onnx extra: pip install '
                          f'"{DISTRIBUTION}[onnx]"') from None
    return onnx


def _refuse_options(fn: str, kind: Kind, params) -> None:
    """``ValueError`` for cell options ONNX's operators have no input for."""
    options = kind.param_options(params[0][0])
    refused = [name for name in _REFUSED_OPTIONS if options.get(name)]
    if refused:
        raise ValueError(f"{fn}: the params have the cell option(s) {', '.join(refused)} "
                         f"(read off their fields), which ONNX's {kind.onnx} operator "
                         f"cannot express; export params without them")


def _f32(a) -> np.ndarray:
    """A parameter as a float32 NumPy array (bfloat16 and float16 params are upcast)."""
    return np.asarray(jax.device_get(a)).astype(np.float32)


def _gate_blocks(a, order: tuple, hidden: int) -> np.ndarray:
    """``a (G*H, ...)`` with its gate blocks of ``hidden`` rows reordered to ``order``."""
    a = _f32(a)
    return np.concatenate([a[g * hidden:(g + 1) * hidden] for g in order])


def _layer_weights(kind: Kind, layer, hidden: int) -> dict:
    """ONNX's ``W (D, G*H, in)``, ``R (D, G*H, H)``, ``B (D, 2*G*H)`` (``None`` without
    bias) and, for peephole LSTMs, ``P (D, 3H)`` (i, o, f) of one layer."""
    blocks = lambda a: _gate_blocks(a, kind.onnx_gate_order, hidden)  # noqa: E731
    out = {"W": np.stack([blocks(p.w_ih) for p in layer]),
           "R": np.stack([blocks(p.w_hh) for p in layer]), "B": None, "P": None}
    if layer[0].b_ih is not None:
        out["B"] = np.stack([np.concatenate([blocks(p.b_ih), blocks(p.b_hh)]) for p in layer])
    if getattr(layer[0], "w_ci", None) is not None:
        out["P"] = np.stack([np.concatenate([_f32(p.w_ci), _f32(p.w_co), _f32(p.w_cf)])
                             for p in layer])
    return out


def _layer_nodes(helper, numpy_helper, kind: Kind, l: int, layer, hidden: int,
                 layer_in: str, state_names: tuple, initial_state: bool, attributes: dict):
    """The nodes and initializers of layer ``l``: its ``kind.onnx`` node reading ``layer_in``
    ``(time, batch, in)``, then ``out_l{l}`` ``(time, batch, D*H)`` and the final states
    ``{s}_n_l{l}`` ``(D, batch, H)``."""
    names, initializers = {}, []
    for name, value in _layer_weights(kind, layer, hidden).items():
        if value is not None:
            names[name] = f"{name}_l{l}"
            initializers.append(numpy_helper.from_array(value, names[name]))
    inputs = [layer_in, names["W"], names["R"], names.get("B", ""), "lengths"]
    if initial_state:
        inputs += [f"{s}_0_l{l}" for s in state_names]
    if "P" in names:  # P is the 8th input: X, W, R, B, sequence_lens, initial_h, initial_c, P
        inputs += [""] * (7 - len(inputs)) + [names["P"]]
    nodes = [
        helper.make_node(kind.onnx, inputs, [f"Y_l{l}"] + [f"{s}_n_l{l}" for s in state_names],
                         name=f"{kind.onnx}_l{l}", hidden_size=hidden,
                         direction="bidirectional" if len(layer) == 2 else "forward",
                         **attributes),
        # Y (time, D, batch, H) -> (time, batch, D, H) -> (time, batch, D*H)
        helper.make_node("Transpose", [f"Y_l{l}"], [f"Y_tbdh_l{l}"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", [f"Y_tbdh_l{l}", "merge_dirs"], [f"out_l{l}"])]
    return nodes, initializers


def _final_state_nodes(helper, numpy_helper, num_layers: int, state_names: tuple,
                       initial_state: bool):
    """The nodes and initializers that make the outputs ``{s}_n`` ``(L*D, batch, H)`` from
    every layer's ``{s}_n_l{l}`` ``(D, batch, H)``; with ``initial_state``, a sequence of
    length 0 keeps ``{s}_0``, as in recurrent (onnxruntime gives zeros)."""
    final = "_n_last" if initial_state else "_n"
    nodes = [helper.make_node("Concat", [f"{s}_n_l{l}" for l in range(num_layers)],
                              [f"{s}{final}"], axis=0)
             for s in state_names]  # L x (D, batch, H) -> (L*D, batch, H)
    if not initial_state:
        return nodes, []
    nodes += [helper.make_node("Equal", ["lengths", "zero"], ["empty"]),  # (batch,)
              helper.make_node("Unsqueeze", ["empty", "outer"], ["empty_1b1"])]
    nodes += [helper.make_node("Where", ["empty_1b1", f"{s}_0", f"{s}_n_last"], [f"{s}_n"])
              for s in state_names]  # (1, batch, 1) picks between (L*D, batch, H)
    return nodes, [numpy_helper.from_array(np.array([0, 2], np.int64), "outer")]


def _export(fn: str, kind_name: str, params, initial_state: bool, path,
            attributes: Callable[[int], dict]):
    """The model of a ``kind_name`` stack, whose node takes ``attributes(num_directions)``
    besides ``hidden_size`` and ``direction``; see :func:`lstm_to_onnx`."""
    kind = KINDS[kind_name]
    sizes = checks.check_stack(fn, params, kind)
    checks.check_flag(fn, "initial_state", initial_state)
    _refuse_options(fn, kind, params)
    onnx = _require_onnx()
    helper, numpy_helper, FLOAT = onnx.helper, onnx.numpy_helper, onnx.TensorProto.FLOAT
    L, D, H = sizes.num_layers, sizes.num_directions, sizes.hidden_size
    state_names = kind.state_names

    inputs = [helper.make_tensor_value_info("x", FLOAT, ["batch", "time", sizes.input_size]),
              helper.make_tensor_value_info("seq_lengths", onnx.TensorProto.INT32, ["batch"])]
    if initial_state:
        inputs += [helper.make_tensor_value_info(f"{s}_0", FLOAT, [L * D, "batch", H])
                   for s in state_names]
    outputs = [helper.make_tensor_value_info("y", FLOAT, ["batch", "time", D * H])]
    outputs += [helper.make_tensor_value_info(f"{s}_n", FLOAT, [L * D, "batch", H])
                for s in state_names]
    initializers = [numpy_helper.from_array(np.array(0, np.int32), "zero"),
                    numpy_helper.from_array(np.array(1, np.int64), "one"),
                    numpy_helper.from_array(np.array([0, 0, -1], np.int64), "merge_dirs")]
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_tm"], perm=[1, 0, 2]),  # (time, batch, I)
        # recurrent clips lengths to [0, time]; onnxruntime refuses them outside it
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Gather", ["x_shape", "one"], ["time64"], axis=0),  # () scalar
        helper.make_node("Cast", ["time64"], ["time"], to=onnx.TensorProto.INT32),
        helper.make_node("Clip", ["seq_lengths", "zero", "time"], ["lengths"]),
    ]
    if initial_state:  # (L*D, batch, H) -> L x (D, batch, H)
        initializers.append(numpy_helper.from_array(np.full(L, D, np.int64), "per_layer"))
        nodes += [helper.make_node("Split", [f"{s}_0", "per_layer"],
                                   [f"{s}_0_l{l}" for l in range(L)], axis=0)
                  for s in state_names]

    layer_in = "x_tm"
    for l, layer in enumerate(params):
        layer_nodes, layer_initializers = _layer_nodes(
            helper, numpy_helper, kind, l, layer, H, layer_in, state_names, initial_state,
            attributes(D))
        nodes += layer_nodes
        initializers += layer_initializers
        layer_in = f"out_l{l}"
    nodes.append(helper.make_node("Transpose", [layer_in], ["y"], perm=[1, 0, 2]))
    final_nodes, final_initializers = _final_state_nodes(helper, numpy_helper, L, state_names,
                                                         initial_state)
    nodes += final_nodes
    initializers += final_initializers

    graph = helper.make_graph(nodes, f"recurrent_{kind_name}", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="recurrent")
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save_model(model, path)
    return model


_EXPORT_DOC = """

    Graph inputs: ``x`` ``(batch, time, input_size)`` float32 and ``seq_lengths``
    ``(batch,)`` int32 (clipped to ``[0, time]`` as :func:`recurrent.{fn}` does; pass
    ``time`` for full sequences); with ``initial_state=True`` also {state_in}, each
    ``(num_layers * num_directions, batch, hidden_size)`` in torch's order. Graph outputs:
    ``y`` ``(batch, time, num_directions * hidden_size)``, zero past each length, and
    {state_out} at each sequence's last valid step, shaped as the inputs. ``batch`` and
    ``time`` are dynamic. Params in bfloat16 (or float16) are cast to float32, so the model
    computes in float32 what :func:`recurrent.{fn}` computes with ``dtype=None`` on
    float32 copies of them.

    Args:
      params: ``((forward, backward?),) * num_layers`` as made by ``init_{fn}``,
        ``interop.{fn}_from_torch``, a Linen module's
        ``module.get_params(variables["params"])`` or an NNX module's ``get_params()``; with
        or without bias.{extra_args}
      initial_state: whether the model takes the initial state as inputs (else zeros).
      path: if given, where the model is also saved (``onnx.save_model``).

    Returns:
      The ``onnx.ModelProto``, already checked by ``onnx.checker.check_model``.

    Raises:
      ImportError: without the ``onnx`` package (the ``onnx`` extra).
      TypeError, ValueError: for params that are not a stack of this kind.{refused}
"""


_F = TypeVar("_F", bound=Callable)


def _document(fn: str, state_in: str, state_out: str, extra_args: str = "",
              refused: str = "") -> Callable[[_F], _F]:
    """Appends the Args, Returns and Raises all three exports share."""

    def wrap(f: _F) -> _F:
        f.__doc__ = (f.__doc__ or "").rstrip() + _EXPORT_DOC.format(
            fn=fn, state_in=state_in, state_out=state_out, extra_args=extra_args,
            refused=refused)
        return f

    return wrap


@_document("lstm", "``h_0`` and ``c_0``", "``h_n`` and ``c_n``",
           refused="\n      ValueError: for params with ``proj_size`` or ``layer_norm``, which "
           "ONNX's\n        LSTM has no inputs for.")
def lstm_to_onnx(params: Params, *, initial_state: bool = False,
                 path: str | os.PathLike | None = None) -> onnx.ModelProto:
    """An ONNX model of :func:`recurrent.lstm` with these params: one ONNX ``LSTM`` per layer.

    The weights are reordered to ONNX's gate order (i, o, f, c from torch's i, f, g, o),
    ``B`` is ``[b_ih, b_hh]`` per direction and the peepholes ``w_ci``, ``w_co``, ``w_cf``
    (``lstm_cell(peephole=True)``) are ONNX's ``P``. Running it::

        import onnxruntime
        session = onnxruntime.InferenceSession(lstm_to_onnx(params).SerializeToString())
        y, h_n, c_n = session.run(None, {"x": x, "seq_lengths": lengths})
        # == recurrent.lstm(params, x, seq_lengths=lengths) to float32 rounding
    """
    return _export("lstm_to_onnx", "lstm", params, initial_state, path, lambda d: {})


@_document("gru", "``h_0``", "``h_n``",
           extra_args="\n      reset_after: the GRU form, as :func:`recurrent.gru`'s: ``True`` "
           "(torch's) exports\n        ``linear_before_reset=1``, ``False`` (Cho et al.'s) "
           "``linear_before_reset=0``.",
           refused="\n      ValueError: for params with ``layer_norm``, which ONNX's GRU has no "
           "inputs for.")
def gru_to_onnx(params: Params, *, reset_after: bool = True, initial_state: bool = False,
                path: str | os.PathLike | None = None) -> onnx.ModelProto:
    """An ONNX model of :func:`recurrent.gru` with these params: one ONNX ``GRU`` per layer,
    gates reordered to ONNX's z, r, h (from torch's r, z, n), ``B`` ``[b_ih, b_hh]``.
    Outputs ``y, h_n``."""
    checks.check_flag("gru_to_onnx", "reset_after", reset_after)
    return _export("gru_to_onnx", "gru", params, initial_state, path,
                   lambda d: {"linear_before_reset": int(reset_after)})


@_document("rnn", "``h_0``", "``h_n``",
           extra_args="\n      nonlinearity: ``\"tanh\"`` or ``\"relu\"``, as "
           ":func:`recurrent.rnn`'s.")
def rnn_to_onnx(params: Params, *, nonlinearity: str = "tanh", initial_state: bool = False,
                path: str | os.PathLike | None = None) -> onnx.ModelProto:
    """An ONNX model of :func:`recurrent.rnn` with these params: one ONNX ``RNN`` per layer.
    Outputs ``y, h_n``."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"rnn_to_onnx: nonlinearity must be 'tanh' or 'relu'; "
                         f"got {nonlinearity!r}")
    activation = nonlinearity.capitalize()  # ONNX's names: "Tanh", "Relu"
    return _export("rnn_to_onnx", "rnn", params, initial_state, path,
                   lambda d: {"activations": [activation] * d})


__all__ = ["gru_to_onnx", "lstm_to_onnx", "rnn_to_onnx"]
