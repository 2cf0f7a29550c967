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


def check_stack(fn: str, params, params_type: type, gates: int) -> StackShape:
    """Checks that ``params`` is ``((cell_params,) * directions,) * layers`` of ``params_type``
    with consistent shapes, and returns the sizes read off them."""
    return _check_layers(fn, params, params_type, gates, lambda l, d: f"params[{l}][{d}]",
                         f"init_{fn}")


def _check_layers(fn: str, params, params_type: type, gates: int, label,
                  made_by: str) -> StackShape:
    """:func:`check_stack`, naming the params of layer ``l``, direction ``d`` ``label(l, d)``
    and the function that makes them ``made_by``."""
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
    fields = params_type._fields
    _check_same_fields(fn, params, fields, label)
    input_size, rows = w_ih[1], w_ih[0]
    hidden = output = rows // gates
    if getattr(first, "w_hr", None) is not None:  # an LSTM projection: h is (batch, P)
        w_hr = _shape(first.w_hr)
        if w_hr is None or len(w_hr) != 2:
            raise ValueError(f"{fn}: {label(0, 0)}.w_hr must be a (proj_size, hidden_size) "
                             f"matrix; got shape {w_hr}")
        output = w_hr[0]
    for l, layer in enumerate(params):
        want = {"w_ih": (rows, input_size if l == 0 else num_dirs * output),
                "w_hh": (rows, output), "b_ih": (rows,), "b_hh": (rows,),
                "w_hr": (output, hidden), "w_ci": (hidden,), "w_cf": (hidden,),
                "w_co": (hidden,), "gamma_ih": (rows,), "gamma_hh": (rows,),
                "gamma_c": (hidden,), "beta_c": (hidden,)}
        for d, p in enumerate(layer):
            for name in fields:
                got, shape = _shape(getattr(p, name)), want[name]
                if getattr(p, name) is not None and (got is None or tuple(got) != shape):
                    raise ValueError(f"{fn}: {label(l, d)}.{name} has shape {got}; "
                                     f"expected {shape}")
    return StackShape(len(params), num_dirs, input_size, hidden, output)


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
    """``params`` must be one ``cell.params_type`` whose shapes fit ``cell``'s sizes;
    returns the sizes read off them (one layer, one direction)."""
    sizes = _check_layers(fn, ((params,),), cell.params_type, cell.gates, lambda l, d: "params",
                          "cell.init")
    widths = [leaf.shape[-1] for leaf in jax.tree.leaves(cell.initial_carry((1,)))]
    if (widths[0], widths[-1]) != (sizes.output_size, sizes.hidden_size):
        raise ValueError(f"{fn}: params are for hidden_size={sizes.hidden_size} (w_ih has "
                         f"shape {tuple(params.w_ih.shape)}) but the cell was made for "
                         f"hidden_size={widths[-1]}")
    return sizes


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
