"""The docstring templates of the layer functions of :mod:`recurrent.layers`: the Args
and Returns every layer shares, appended by :func:`document`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])

LAYER_DOC = """
    Args:
      params: from ``init_{fn}`` or ``interop.{fn}_from_torch``.
      x: ``(batch, time, input_size)``, or ``(time, batch, input_size)`` when
        ``batch_first=False``.
      seq_lengths: ``(batch,)`` integer valid lengths (right padding), like a packed
        sequence in torch: outputs past a length are zero, the final state is the state at
        the last valid step, and the backward direction starts at each sequence's own last
        valid step. Clipped to ``[0, time]`` at run time (in any integer dtype, without
        wrapping). Padded steps are zeroed before anything reads them, so their values,
        NaN or inf included, change no output or gradient. ``None``: all steps are valid.
      initial_state: {state_in}; zeros when ``None``. Arrays of shape ``(num_layers *
        num_directions, hidden_size)`` or ``(num_layers * num_directions, 1,
        hidden_size)`` are one state for every sequence, broadcast over the batch: pass
        such an array from your params to learn the initial state.
      dropout: probability in ``[0, 1)`` of zeroing an output of every layer but the
        last (as torch); needs ``key``. Pass 0 at inference.
      key: PRNG key for dropout.
      batch_first: whether ``x`` and ``y`` put batch first.
      dtype: dtype of the matmuls (``jnp.bfloat16`` or ``None`` for the params' dtype);
        they accumulate in float32, the state stays float32 and ``y`` is cast to ``dtype``.
      unroll: scan steps per loop iteration (``jax.lax.scan``'s ``unroll``; the fast path
        runs the largest divisor of ``time`` not above it); ``None``:
        :func:`default_unroll` (8 on a GPU, 1 elsewhere).
      impl: {impl_doc}
      remat_chunk: with ``impl="fast"`` (and ``"auto"``, which then takes the XLA path),
        rematerialise the scan in chunks of this many steps: training memory then grows
        with ``time`` only through the layer's inputs and outputs, at the cost of running
        the forward pass twice. ``None``: store every step. Ignored by the other
        ``impl`` s.{options_doc}

    Returns:
      ``(y, {state_out})``: ``y`` is ``(batch, time, num_directions * hidden_size)``
      (``[forward, backward]`` on the last axis); {state_desc} ``(num_layers *
      num_directions, batch, hidden_size)``, index ``layer * num_directions + direction``.
{returns_doc}"""


NONLINEAR_IMPL_DOC = """``"auto"`` (the default: ``"pallas"`` where
        :func:`recurrent.kernels.layer.configure` finds it faster, which is only on a
        lone CUDA GPU, else ``"fast"``), ``"fast"`` (both directions in one XLA scan with
        a hand-written VJP, see :mod:`recurrent.fast`), ``"pallas"`` (the persistent GPU
        kernel of :mod:`recurrent.kernels` for the plain LSTM and the GRU; in interpret
        mode, slowly, off GPU; ``ValueError`` where the sizes do not fit), ``"reference"``
        (one :func:`recurrent.unroll.unroll` per layer and direction, differentiated by
        JAX), or ``"deer"`` / ``"quasi_deer"``: every step at once by Newton iterations over
        associative scans with the full / diagonal Jacobian
        (:func:`recurrent.deer.deer_unroll`), which fall back to the scan when they do not
        converge and pay off only on parallel hardware. All agree to float32 rounding (DEER
        to its tolerance, 1e-5)."""
LINEAR_IMPL_DOC = """``"parallel"`` (the log-space associative scan of
        :func:`recurrent.minimal.parallel_unroll`) or ``"reference"`` (the sequential
        scan over ``step``). They agree to float32 rounding."""
H_STATE = ("``h_0`` of shape ``(num_layers * num_directions, batch, hidden_size)``", "h_n",
            "``h_n`` is")


OPTIONS_DOC = """
      input_dropout: variational dropout (Gal & Ghahramani 2016) of every layer's input:
        the probability in ``[0, 1)`` of zeroing a feature, with one mask per sequence,
        layer and direction reused at every step; kept features are scaled by ``1 / (1 -
        input_dropout)``. Needs ``key``.
      recurrent_dropout: the same on the hidden state fed to the recurrent matmuls
        (``h @ w_hh.T``); the carried state and ``y`` are not dropped.
      hidden_zoneout: zoneout (Krueger et al. 2017): the probability that a unit of ``h``
        keeps its previous value at a step, drawn per step and unit. Needs ``key``.{cell_zoneout}
      deterministic: a Python bool; evaluation: no dropout of any kind (``dropout``
        included) and each zoneout by its expectation, ``h = p * h_prev + (1 - p) *
        h_new``; no ``key`` needed.
      return_activations: also return every gate and state at every step."""
OPTIONS_NOTE = """
    Note:
      A positive zoneout, a positive dropout in training, or ``return_activations`` runs
      the scan of ``impl="reference"``, also when ``impl="auto"`` (the default) or
      ``"fast"`` is asked for; ``"pallas"`` and the DEER impls refuse them. Otherwise
      ``impl`` runs as without them. Layer ``l``, direction ``d`` draws its masks by
      :func:`recurrent.regularize.draw_masks` from ``fold_in(split(key)[1], l *
      num_directions + d)``; ``dropout`` then uses ``split(key)[0]``. A learnable initial
      state: see ``initial_state``."""
CELL_ZONEOUT_DOC = """
      cell_zoneout: zoneout of the cell state ``c``, as ``hidden_zoneout`` (the new ``h``
        is computed from the new ``c`` before either is zoned out)."""
ACTIVATIONS_DOC = """\
      With ``return_activations``, a third element ``activations[layer][direction]``: a
      dict of ``(batch, time, hidden_size)`` arrays (``(time, batch, hidden_size)`` unless
      ``batch_first``), {keys}: the gates after their nonlinearity and the new state at
      every step (the zoned-out state under zoneout), zero past ``seq_lengths`` and indexed
      by input position in both directions (the backward direction's final state is at
      its ``t = 0``).
"""


def document(fn_name: str, state_in: str, state_out: str, state_desc: str,
              impl_doc: str = NONLINEAR_IMPL_DOC,
              activations: str | None = None) -> Callable[[_F], _F]:
    """Appends the shared Args and Returns; ``activations`` names the keys of
    ``return_activations`` for the layers with the scan's options."""
    options_doc = returns_doc = ""
    if activations is not None:
        cell_zoneout = CELL_ZONEOUT_DOC if fn_name == "lstm" else ""
        options_doc = OPTIONS_DOC.format(cell_zoneout=cell_zoneout)
        returns_doc = ACTIVATIONS_DOC.format(keys=activations) + OPTIONS_NOTE

    def wrap(f: _F) -> _F:
        f.__doc__ = (f.__doc__ or "") + LAYER_DOC.format(
            fn=fn_name, state_in=state_in, state_out=state_out, state_desc=state_desc,
            impl_doc=impl_doc, options_doc=options_doc, returns_doc=returns_doc)
        return f

    return wrap


__all__ = ["H_STATE", "LINEAR_IMPL_DOC", "document"]
