"""Variational (recurrent) dropout (Gal & Ghahramani 2016) and zoneout (Krueger et al. 2017)
for one direction of a cell, run by :func:`recurrent.unroll.unroll`.

For one sequence, with ``m_x``, ``m_h`` drawn once and reused at every step, and the zoneout
masks ``d_h[t]``, ``d_c[t]`` drawn per step and unit::

    for t in range(time):
        a = cell(x[t] * m_x, h fed to the recurrent matmuls as h * m_h, c)
        h = where(d_h[t], h, a.h)            # True: keep the previous value
        c = where(d_c[t], c, a.c)            # LSTM only
        y[t] = h

The dropout masks are 0 or ``1 / (1 - rate)``, so each unit's expectation is unchanged.
``deterministic`` (evaluation) drops nothing and replaces each zoneout by its expectation
``h = rate * h + (1 - rate) * a.h``, as the paper does. The recurrent mask scales only what
goes into the products with ``w_hh`` (``cell.recurrence``'s ``matmul``), not the carry nor
the GRU's ``z * h`` term.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from recurrent import checks
from recurrent.cells import Cell, cell_from
from recurrent.unroll import carry_dtype
from recurrent.unroll import scan_unroll as sequential_unroll

_DROPOUTS = ("input_dropout", "recurrent_dropout")
# Which carry entry (``cell.carry_keys``) each zoneout rate acts on.
_ZONEOUTS = {"hidden_zoneout": "h", "cell_zoneout": "c"}


class Regularization(NamedTuple):
    """The rates of a layer's variational dropout and zoneout, each in ``[0, 1)``, and
    whether it runs for evaluation (``deterministic``)."""

    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    hidden_zoneout: float = 0.0
    cell_zoneout: float = 0.0
    deterministic: bool = False

    def rates(self) -> dict:
        """Every rate by its argument name."""
        return {name: getattr(self, name) for name in (*_DROPOUTS, *_ZONEOUTS)}

    def check(self, fn: str, key) -> None:
        """Rates in ``[0, 1)``; a bool ``deterministic``; a ``key`` whenever a rate is
        positive in training."""
        checks.check_flag(fn, "deterministic", self.deterministic)
        for name, rate in self.rates().items():
            checks.check_rate(fn, rate, name)
        if self.random and key is None:
            on = ", ".join(f"{k}={v}" for k, v in self.rates().items() if v > 0)
            raise ValueError(f"{fn}: {on} needs a PRNG key: pass key=..., or "
                             f"deterministic=True for evaluation")

    @property
    def random(self) -> bool:
        """Whether masks are drawn (in training, with a positive rate)."""
        return not self.deterministic and any(r > 0 for r in self.rates().values())

    @property
    def changes_step(self) -> bool:
        """Whether the step differs from the plain cell's (so the fast path cannot run it)."""
        return self.random or self.hidden_zoneout > 0 or self.cell_zoneout > 0

    def zoneout(self) -> dict:
        """The positive zoneout rates by carry key (``"h"``, ``"c"``)."""
        return {_ZONEOUTS[name]: rate for name, rate in self.rates().items()
                if name in _ZONEOUTS and rate > 0}


class Masks(NamedTuple):
    """The masks of one layer and direction; ``None`` / absent where the rate is 0.

    Attributes:
      inputs: ``(batch, input_size)``, 0 or ``1 / (1 - input_dropout)``.
      recurrent: ``(batch, hidden)``, 0 or ``1 / (1 - recurrent_dropout)``.
      zoneout: carry key (``"h"``, ``"c"``) to ``(batch, time, width)`` booleans, True where
        the step keeps the previous value; ``[:, t]`` acts on input position ``t`` in
        either direction.
    """

    inputs: jax.Array | None
    recurrent: jax.Array | None
    zoneout: dict


def draw_masks(key, reg: Regularization, batch: int, time: int, input_size: int,
               widths: dict) -> Masks:
    """The masks one layer and direction draws from ``key``; ``widths`` maps each carry key
    (``"h"``, ``"c"``) to its width.

    One ``jax.random.uniform`` draw (one random-bits computation to compile, however many
    masks) is cut into the masks whose rate is positive, in the order input, recurrent,
    hidden zoneout, cell zoneout: a dropout keeps where ``u >= rate``, a zoneout keeps the
    previous value where ``u < rate``.
    """
    rates = {"inputs": reg.input_dropout, "recurrent": reg.recurrent_dropout,
             **reg.zoneout()}
    shapes = {"inputs": (batch, input_size), "recurrent": (batch, widths["h"]),
              **{k: (batch, time, widths[k]) for k in reg.zoneout()}}
    drawn = [k for k, rate in rates.items() if rate > 0]
    sizes = [int(np.prod(shapes[k])) for k in drawn]
    u = jax.random.uniform(key, (sum(sizes),))
    pieces = dict(zip(drawn, jnp.split(u, np.cumsum(sizes)[:-1].tolist()), strict=True))
    u = {k: piece.reshape(shapes[k]) for k, piece in pieces.items()}

    def scaled_keep(name):  # 0 or 1 / (1 - rate); None at rate 0
        rate = rates[name]
        return None if rate == 0 else (u[name] >= rate) / (1 - rate)

    return Masks(scaled_keep("inputs"), scaled_keep("recurrent"),
                 {k: u[k] < rate for k, rate in reg.zoneout().items()})


def _dropped(matmul, mask):
    """``matmul`` of ``cell.recurrence`` applied to ``u * mask``."""
    return lambda u, rows: matmul(u * mask, rows)


def regularized_cell(cell: Cell, reg: Regularization, recurrent_mask=None,
                     flag_widths: dict | None = None) -> Cell:
    """``cell`` with its recurrent matmuls' input scaled by ``recurrent_mask`` ``(batch, H)``
    and its carry zoned out.

    In training the zoneout masks travel with the inputs: ``x`` carries them as its last
    ``sum(flag_widths.values())`` columns (0/1, in the order of ``flag_widths``), which
    ``project`` passes on to ``xp`` and the step reads. The wrapped cell has no
    ``recurrence`` (the fast path cannot run it).
    """
    flag_widths = flag_widths or {}
    num_flags = sum(flag_widths.values())
    cuts = np.cumsum(list(flag_widths.values()))[:-1].tolist()
    zoneout = reg.zoneout()

    def project(params, x):  # x (..., I + num_flags) -> (..., G*H + num_flags)
        if not num_flags:
            return cell.project(params, x)
        xp = cell.project(params, x[..., :-num_flags])
        return jnp.concatenate([xp, x[..., -num_flags:].astype(xp.dtype)], axis=-1)

    def recurrence(params, carry, xp_t, matmul, act):
        flags = {}
        if num_flags:  # (batch, G*H), (batch, num_flags)
            xp_t, packed = xp_t[..., :-num_flags], xp_t[..., -num_flags:]
            flags = dict(zip(flag_widths, jnp.split(packed, cuts, axis=-1), strict=True))
        if recurrent_mask is not None:
            matmul = _dropped(matmul, recurrent_mask)
        a = dict(cell.recurrence(params, carry, xp_t, matmul, act))
        previous = dict(zip(cell.carry_keys, carry if isinstance(carry, tuple) else (carry,),
                            strict=True))
        for k, rate in zoneout.items():
            if reg.deterministic:
                a[k] = rate * previous[k] + (1 - rate) * a[k]
            else:
                a[k] = jnp.where(flags[k] > 0, previous[k], a[k])
        return a

    activations, step = cell_from(recurrence, cell.carry_keys, cell.dtype,
                                   cell.params_type)
    return cell._replace(project=project, step=step, activations=activations,
                         recurrence=None)


def regularized_unroll(cell: Cell, params, xs, carry=None, *, reg: Regularization, key=None,
                       seq_lengths=None, reverse: bool = False, unroll: int = 1,
                       time_major: bool = False, return_activations: bool = False):
    """:func:`recurrent.unroll.unroll` with the dropout and zoneout of ``reg``, masks drawn
    from ``key`` by :func:`draw_masks`; same arguments and result."""
    wrapped = cell
    if reg.random:
        time, batch = xs.shape[:2] if time_major else xs.shape[1::-1]
        if carry is None:
            carry = cell.initial_carry((batch,), carry_dtype(params))
        leaves = carry if isinstance(carry, tuple) else (carry,)
        widths = {k: leaf.shape[-1] for k, leaf in zip(cell.carry_keys, leaves, strict=True)}
        masks = draw_masks(key, reg, batch, time, xs.shape[-1], widths)
        if masks.inputs is not None:  # (batch, I) -> (1, batch, I) or (batch, 1, I)
            xs = xs * (masks.inputs[None] if time_major else masks.inputs[:, None])
        if masks.zoneout:
            flags = jnp.concatenate(list(masks.zoneout.values()), axis=-1)  # (batch, time, F)
            if time_major:
                flags = jnp.swapaxes(flags, 0, 1)  # (time, batch, F)
            xs = jnp.concatenate([xs, flags.astype(xs.dtype)], axis=-1)
        wrapped = regularized_cell(cell, reg, masks.recurrent,
                                   {k: widths[k] for k in masks.zoneout})
    elif reg.changes_step:  # evaluation: zoneout by its expectation
        wrapped = regularized_cell(cell, reg)
    return sequential_unroll(wrapped, params, xs, carry, seq_lengths=seq_lengths,
                             reverse=reverse, unroll=unroll, time_major=time_major,
                             return_activations=return_activations)


def scan_options(fn: str, rates: dict, deterministic: bool | None,
                 return_activations: bool) -> dict:
    """The keyword arguments a Flax module passes its functional layer for the scan's
    options; ``rates`` is empty for layers without them (minGRU, minLSTM)."""
    if not rates:
        if return_activations:
            raise ValueError(f"{fn}: return_activations is only for LSTM, GRU and RNN")
        return {}
    return {**rates, "deterministic": bool(deterministic),
            "return_activations": return_activations}

__all__ = ["Masks", "Regularization", "draw_masks", "regularized_cell", "regularized_unroll"]
