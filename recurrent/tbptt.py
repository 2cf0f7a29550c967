"""Truncated backpropagation through time for long streams."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from recurrent import checks
from recurrent.framing import clip_lengths
from recurrent.layers import Params


def truncated_bptt(layer: Callable[..., tuple[Any, ...]], params: Params, x: jax.Array,
                   chunk: int, initial_state: Any = None, seq_lengths: jax.Array | None = None,
                   key: jax.Array | None = None, **layer_options: Any) -> tuple[jax.Array, Any]:
    """Runs ``layer`` over ``x`` in chunks of ``chunk`` steps, stopping the gradient of the
    state between chunks, so backpropagation reaches at most ``chunk`` steps back::

        state = stop_gradient(initial_state)
        for start in range(0, time, chunk):
            y[:, start:start + chunk], state = layer(params, x[:, start:start + chunk],
                                                     initial_state=state)
            state = stop_gradient(state)

    The forward values equal one call of ``layer`` over the whole sequence. The chunks run
    in a ``jax.lax.scan`` (a shorter last chunk runs after it). For a stream cut into
    batches, pass the returned state as the next batch's ``initial_state``: it carries no
    gradient, so each batch's training step stays ``chunk`` steps deep.

    Args:
      layer: a forward-only layer function: :func:`recurrent.lstm`, ``gru``, ``rnn``,
        ``mingru`` or ``minlstm`` (bidirectional params are refused: a backward direction
        needs the future of the stream).
      params: its params, one direction.
      x: ``(batch, time, input_size)``.
      chunk: steps per chunk, a positive int.
      initial_state: as the layer's; zeros when ``None``.
      seq_lengths: ``(batch,)`` valid lengths of the whole stream, or ``None``.
      key: PRNG key for the layer's dropout; each chunk uses ``fold_in(key, chunk_index)``,
        so variational dropout draws its per-sequence masks afresh for every chunk.
      **layer_options: passed to ``layer`` (``dropout``, ``dtype``, ``impl``, ...);
        ``return_activations`` is refused (run the layer itself for per-step gates).

    Returns:
      ``(y, state)`` as ``layer`` returns them; ``state`` carries no gradient.
    """
    name = f"truncated_bptt({getattr(layer, '__name__', 'layer')})"
    checks.check_size(name, "chunk", chunk)
    if len(getattr(x, "shape", ())) != 3:
        raise ValueError(f"{name}: x must have shape (batch, time, features); got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if any(len(layer_params) != 1 for layer_params in params):
        raise ValueError(f"{name}: params are bidirectional; truncated BPTT runs forward "
                         f"only (a backward direction needs the future of the stream)")
    if layer_options.get("return_activations"):
        raise ValueError(f"{name}: return_activations is not supported; call the layer "
                         f"itself for per-step gates and states")
    checks.check_seq_lengths(name, seq_lengths, x.shape[0])
    time = x.shape[1]
    num_full = time // chunk
    stream_lengths = None if seq_lengths is None else clip_lengths(seq_lengths, time)

    def run(state, x_chunk, start, index):
        lengths = None if seq_lengths is None else jnp.clip(stream_lengths - start, 0,
                                                            x_chunk.shape[1])
        chunk_key = None if key is None else jax.random.fold_in(key, index)
        state = None if state is None else jax.lax.stop_gradient(state)
        y, state = layer(params, x_chunk, lengths, state, key=chunk_key, **layer_options)
        return jax.lax.stop_gradient(state), y

    # The first chunk runs on its own so that a None initial state gets its structure.
    state, y_first = run(initial_state, x[:, :min(chunk, time)], 0, 0)
    ys = [y_first]
    if num_full > 1:
        rest = x[:, chunk:num_full * chunk].reshape(
            x.shape[0], num_full - 1, chunk, x.shape[2])  # (batch, chunks, chunk, features)
        rest = jnp.swapaxes(rest, 0, 1)  # (chunks, batch, chunk, features)
        starts = chunk * jnp.arange(1, num_full)

        def body(state, inputs):
            x_chunk, start, index = inputs
            return run(state, x_chunk, start, index)

        state, y_rest = jax.lax.scan(body, state, (rest, starts, jnp.arange(1, num_full)))
        y_rest = jnp.swapaxes(y_rest, 0, 1)  # (batch, chunks, chunk, D*H)
        ys.append(y_rest.reshape(x.shape[0], -1, y_rest.shape[-1]))  # (batch, T', D*H)
    if chunk < time and time % chunk:
        state, y_last = run(state, x[:, num_full * chunk:], num_full * chunk, num_full)
        ys.append(y_last)
    return jnp.concatenate(ys, axis=1), state

__all__ = ["truncated_bptt"]
