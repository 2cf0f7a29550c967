"""Trace-time checks of the layers' arguments; each failure names the argument, its shape
and what was expected."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class StackShape(NamedTuple):
    """Sizes read off a stacked layer's params."""

    num_layers: int
    num_directions: int
    input_size: int
    hidden_size: int
    output_size: int  # the width of h: proj_size for a projected LSTM, else hidden_size


def _shape(x):
    return getattr(x, "shape", None)


def check_stack(fn: str, params, kind) -> StackShape:
    """Checks that ``params`` is ``((cell_params,) * directions,) * layers`` of ``kind``'s
    params type (``kind`` a :class:`recurrent.kinds.Kind`) with every field shaped as
    ``kind``'s cell, made with the options read off ``params[0][0]``, makes it
    (``jax.eval_shape`` of its ``init``), and returns the sizes read off them."""
    label = lambda l, d: f"params[{l}][{d}]"  # noqa: E731
    _check_structure(fn, params, kind.params_type, kind.gates, label, f"init_{fn}")
    first, num_dirs = params[0][0], len(params[0])
    input_size = first.w_ih.shape[1]
    _, carry = kind.init_shapes(first, input_size)
    sizes = _sizes(params, carry)
    for l, layer in enumerate(params):
        want, _ = kind.init_shapes(first, input_size if l == 0 else num_dirs * sizes.output_size)
        for d, p in enumerate(layer):
            _check_fields(fn, p, want, label(l, d), strict=True)
    return sizes


def _sizes(params, carry) -> StackShape:
    """The sizes of ``params``, whose cell's carry for a batch of one is ``carry``."""
    widths = [leaf.shape[-1] for leaf in jax.tree.leaves(carry)]  # h's, then c's if a pair
    return StackShape(len(params), len(params[0]), params[0][0].w_ih.shape[1], widths[-1],
                      widths[0])


def _check_structure(fn: str, params, params_type: type, gates: int, label,
                     made_by: str) -> None:
    """The checks of every stack that need no cell: layers of 1 or 2 directions of
    ``params_type``, a ``(gates * hidden_size, input_size)`` ``w_ih`` and the same fields
    set everywhere. Names the params of layer ``l``, direction ``d`` ``label(l, d)`` and
    the function that makes them ``made_by``."""
    if not isinstance(params, (tuple, list)) or not params or not all(
            isinstance(layer, (tuple, list)) for layer in params):
        raise TypeError(f"{fn}: params must be a tuple of layers, each a tuple of "
                        f"{params_type.__name__} per direction (as made by {made_by}); "
                        f"got {type(params).__name__}")
    num_dirs = len(params[0])
    if num_dirs not in (1, 2):
        raise ValueError(f"{fn}: params[0] has {num_dirs} directions; expected 1 or 2")
    for l, layer in enumerate(params):
        if len(layer) != num_dirs:
            raise ValueError(f"{fn}: params[{l}] has {len(layer)} directions but params[0] "
                             f"has {num_dirs}")
        for d, p in enumerate(layer):
            if type(p) is not params_type:
                raise TypeError(f"{fn}: {label(l, d)} is {type(p).__name__}; expected "
                                f"{params_type.__name__} (as made by {made_by})")
            for name in ("w_ih", "w_hh"):
                if name in p._fields and getattr(p, name) is None:
                    raise ValueError(f"{fn}: {label(l, d)}.{name} is None; expected an array")
    first = params[0][0]
    w_ih = _shape(first.w_ih)
    if w_ih is None or len(w_ih) != 2 or w_ih[0] % gates or not w_ih[0]:
        raise ValueError(f"{fn}: {label(0, 0)}.w_ih must be a ({gates} * hidden_size, "
                         f"input_size) matrix with hidden_size >= 1; got shape {w_ih}")
    for name in params_type._fields:  # the options are read off these shapes
        value = getattr(first, name)
        if value is not None and _shape(value) is None:
            raise ValueError(f"{fn}: {label(0, 0)}.{name} must be an array; got "
                             f"{type(value).__name__}")
    if getattr(first, "w_hr", None) is not None and len(_shape(first.w_hr)) != 2:
        raise ValueError(f"{fn}: {label(0, 0)}.w_hr must be a (proj_size, hidden_size) "
                         f"matrix; got shape {_shape(first.w_hr)}")
    _check_same_fields(fn, params, params_type._fields, label)


def _check_fields(fn: str, p, want, label: str, strict: bool) -> None:
    """Every field of ``p`` has the shape of ``want``'s (what the cell's ``init`` makes);
    ``strict``: and is set exactly where ``want``'s is."""
    for name in p._fields:
        got, shape = getattr(p, name), getattr(want, name)
        if got is not None and shape is not None and tuple(_shape(got)) != shape.shape:
            raise ValueError(f"{fn}: {label}.{name} has shape {tuple(_shape(got))}; "
                             f"expected {shape.shape}")
        if strict and (got is None) != (shape is None):
            raise ValueError(f"{fn}: {label}.{name} is {'None' if got is None else 'set'}; "
                             f"the cell options read off the params make it "
                             f"{'an array of shape ' + str(shape.shape) if shape else 'None'}")


def _check_same_fields(fn: str, params, fields, label) -> None:
    """Every layer and direction sets the same fields (bias and cell options) as
    ``params[0][0]``."""
    for l, layer in enumerate(params):
        for d, p in enumerate(layer):
            for name in fields:
                got, want = ("None" if getattr(q, name) is None else "set"
                             for q in (p, params[0][0]))
                if got != want:
                    raise ValueError(f"{fn}: {label(l, d)}.{name} is {got} but "
                                     f"{label(0, 0)}.{name} is {want}; every layer and "
                                     f"direction must have the same fields")


def check_input(fn: str, x, sizes: StackShape, batch_first: bool) -> tuple[int, int]:
    """Checks ``x`` and returns ``(batch, time)``."""
    layout = "(batch, time, features)" if batch_first else "(time, batch, features)"
    shape = _shape(x)
    if shape is None:
        raise TypeError(f"{fn}: x must be an array of shape {layout}; got {type(x).__name__}")
    if len(shape) != 3:
        raise ValueError(f"{fn}: x must have shape {layout}; got shape {tuple(shape)} "
                         f"(rank {len(shape)}). Use jax.vmap for extra batch axes.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{fn}: x must be a float array; got dtype {x.dtype}")
    if shape[2] != sizes.input_size:
        raise ValueError(f"{fn}: x has {shape[2]} features (shape {tuple(shape)}) but the "
                         f"params expect input_size={sizes.input_size}")
    return (shape[0], shape[1]) if batch_first else (shape[1], shape[0])


def check_seq_lengths(fn: str, seq_lengths, batch: int) -> None:
    """``seq_lengths`` must be ``None`` or an integer array of shape ``(batch,)``."""
    if seq_lengths is None:
        return
    shape = _shape(seq_lengths)
    if shape is None:
        raise TypeError(f"{fn}: seq_lengths must be an integer array of shape ({batch},); "
                        f"got {type(seq_lengths).__name__}")
    if tuple(shape) != (batch,):
        raise ValueError(f"{fn}: seq_lengths has shape {tuple(shape)}; expected ({batch},), "
                         f"one length per sequence")
    if not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
        raise TypeError(f"{fn}: seq_lengths must have an integer dtype; got "
                        f"{seq_lengths.dtype}")


def check_state(fn: str, name: str, state, shape: tuple, size: str = "hidden_size") -> None:
    """One array of the initial state must have exactly ``shape``, whose last entry is
    ``size`` (``"hidden_size"`` or ``"proj_size"``)."""
    got = _shape(state)
    if got is None or tuple(got) != shape:
        shown = tuple(got) if got is not None else type(state).__name__
        raise ValueError(f"{fn}: {name} has shape {shown}; expected {shape} "
                         f"(num_layers * num_directions, batch, {size})")


def check_rate(fn: str, dropout: float, name: str = "dropout") -> None:
    """The rate ``name`` (``dropout`` unless said) must be a number in ``[0, 1)``."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating)) \
            or not 0 <= dropout < 1:
        raise ValueError(f"{fn}: {name} must be a number in [0, 1); got {dropout!r}")


def check_dropout(fn: str, dropout: float, key) -> None:
    """``dropout`` must be in ``[0, 1)`` and come with a ``key`` when positive."""
    check_rate(fn, dropout)
    if dropout > 0 and key is None:
        raise ValueError(f"{fn}: dropout={dropout} needs a PRNG key: pass key=...")


def check_size(fn: str, name: str, value, optional: bool = False) -> None:
    """A size argument must be a positive int (or ``None`` when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        expected = "a positive int or None" if optional else "a positive int"
        raise ValueError(f"{fn}: {name} must be {expected}; got {value!r}")


def check_flag(fn: str, name: str, value) -> None:
    """An on/off option must be a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be a bool; got {value!r}")


def check_proj_size(fn: str, proj_size, hidden_size) -> None:
    """``proj_size`` must be 0 (no projection) or an int in ``[1, hidden_size)``, as torch."""
    if isinstance(proj_size, bool) or not isinstance(proj_size, (int, np.integer)) or not (
            proj_size == 0 or 0 < proj_size < hidden_size):
        raise ValueError(f"{fn}: proj_size must be 0 (no projection) or an int in "
                         f"[1, hidden_size={hidden_size}); got {proj_size!r}")


def check_dtype(fn: str, dtype) -> None:
    """``dtype`` (of the matmuls) must be ``None`` or a floating dtype."""
    if dtype is None:
        return
    try:
        floating = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise TypeError(f"{fn}: dtype must be None or a floating dtype such as jnp.bfloat16; "
                        f"got {dtype!r}")


def check_cell_params(fn: str, cell, params) -> StackShape:
    """``params`` must be one ``cell.params_type`` whose set fields have the shapes
    ``cell.init`` makes (``jax.eval_shape``); returns the sizes read off them (one layer,
    one direction)."""
    _check_structure(fn, ((params,),), cell.params_type, cell.gates, lambda l, d: "params",
                     "cell.init")
    input_size = params.w_ih.shape[1]
    want = jax.eval_shape(lambda: cell.init(jax.random.key(0), input_size))
    rows = want.w_ih.shape[0]
    if params.w_ih.shape[0] != rows:
        raise ValueError(f"{fn}: params are for hidden_size={params.w_ih.shape[0] // cell.gates}"
                         f" (w_ih has shape {tuple(params.w_ih.shape)}) but the cell was made "
                         f"for hidden_size={rows // cell.gates}")
    _check_fields(fn, params, want, "params", strict=False)
    return _sizes(((params,),), jax.eval_shape(lambda: cell.initial_carry((1,))))


def check_unroll(fn: str, cell, params, xs, carry, seq_lengths, time_major) -> None:
    """The arguments of one cell over time (:func:`recurrent.unroll.unroll` and its
    parallel forms): params that fit ``cell``, ``xs`` of rank 3 with their input size,
    ``seq_lengths`` of shape ``(batch,)`` and a carry shaped as ``cell.initial_carry``."""
    check_flag(fn, "time_major", time_major)
    sizes = check_cell_params(fn, cell, params)
    batch, _ = check_input(fn, xs, sizes, batch_first=not time_major)
    check_seq_lengths(fn, seq_lengths, batch)
    if carry is None:
        return
    want = cell.initial_carry((batch,))
    shapes = jax.tree.map(lambda a: tuple(a.shape), want)
    got = jax.tree.map(_shape, carry)
    if jax.tree.structure(got) != jax.tree.structure(shapes) or got != shapes:
        raise ValueError(f"{fn}: carry has shapes {got}; expected {shapes} (as "
                         f"cell.initial_carry(({batch},)))")


def check_carry(fn: str, carry, want) -> None:
    """A cell's ``carry`` must have the structure and shapes of ``want`` (the carry
    ``cell.initial_carry`` makes for the input's batch shape, arrays or
    ``jax.ShapeDtypeStruct`` s); nothing is broadcast."""
    shapes = jax.tree.map(lambda a: tuple(a.shape), want)
    got = jax.tree.map(lambda a: tuple(_shape(a)) if _shape(a) is not None
                       else type(a).__name__, carry)
    if jax.tree.structure(got) != jax.tree.structure(shapes) or got != shapes:
        raise ValueError(f"{fn}: carry has shapes {got}; expected {shapes} (the batch shape "
                         f"of the input and the cell's widths, as initialize_carry makes it)")
