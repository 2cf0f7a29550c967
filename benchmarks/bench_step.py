"""Where a step of the persistent GPU kernel goes: the kernel timed whole and with parts of
its step left out, in one process, on one GPU.

    python benchmarks/bench_step.py [--repeats 15] [--calls 10] [--out PATH]

Each row times :func:`recurrent.kernels.persistent.forward` (inference: it writes only
``h``) or its backward kernel alone, for one LSTM layer, with random inputs. Rows marked
"left out" replace a part of the kernel's step (through this module's patches, not
options of the library) and compute wrong numbers on purpose; the differences between
rows say what each part costs per step:

- ``no barrier``: blocks do not wait for each other (each step reads whatever ``h`` is
  there): the barrier's cost, the arrival and the wait;
- ``no matmul``: the recurrent matmul is replaced by a row sum of ``h``: the loads of
  ``h`` from the other blocks stay, the tensor-core work and the weights' shared-memory
  reads go;
- ``no exchange, no matmul``: neither ``h`` is loaded nor a matmul done: what is left is
  the barrier, the projected inputs' loads, the gates and the stores.

Each part is timed for the plan variants of ``VARIANTS`` (:class:`persistent.Plan`).

Timing is what a training loop sees: ``--calls`` calls issued back to back and one sync,
divided by the number of calls (``pipelined``), median of ``--repeats``; per step in µs.
Results go to ``benchmarks/results/gpu_step.md`` (or ``--out``) with the card and versions.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from recurrent.kernels import persistent

from common import RESULTS, machine, pipelined_ms

# (batch, time, hidden, matmul dtype): the goal rows
SIZES = [(16, 512, 512, None), (16, 512, 512, jnp.bfloat16), (64, 256, 512, None)]
QUICK_SIZES = [(16, 8, 32, None), (16, 8, 32, jnp.bfloat16)]


@contextlib.contextmanager
def _patched(**parts):
    """Within: the named functions of :mod:`persistent` replaced (``name=function``)."""
    saved = {name: getattr(persistent, name) for name in parts}
    for name, fn in parts.items():
        setattr(persistent, name, fn)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(persistent, name, fn)


def _no_wait(self, passed, alive):
    del self
    return alive & (passed >= 0)  # traced, as a real wait's result: Triton lowers no literal


class _NoBarrier(persistent._Sync):
    wait = _no_wait


def _row_sum(a, b, dtype, precision, transposed=False):
    """Stands in for ``a @ b`` (``persistent._dot``): uses every loaded element of ``a``, no
    tensor cores."""
    del dtype, precision
    sums = jnp.sum(a.astype(jnp.float32), axis=1, keepdims=True)  # (M, 1)
    return (jnp.broadcast_to(sums.T, (b.shape[0], a.shape[0])) if transposed
            else jnp.broadcast_to(sums, (a.shape[0], b.shape[1])))


def _zero_dot(a, b, dtype, precision, transposed=False):
    del dtype, precision
    shape = (b.shape[0], a.shape[0]) if transposed else (a.shape[0], b.shape[1])
    return jnp.zeros(shape, jnp.float32)


def _zero_float_loads(ref, interpret):
    """Float refs (``h``) read as zeros; the barrier's integer flags still loaded."""
    if jnp.issubdtype(ref.dtype, jnp.floating):
        return jnp.zeros(ref.shape, ref.dtype)
    return _ORIGINAL_LOAD(ref, interpret)


_ORIGINAL_LOAD = persistent._load
PARTS = {
    "whole step": {},
    "no barrier (left out)": {"_Sync": _NoBarrier},
    "no matmul (left out)": {"_dot": _row_sum},
    "no exchange, no matmul (left out)": {"_dot": _zero_dot, "_load": _zero_float_loads},
    "no barrier, no exchange, no matmul (left out)": {
        "_Sync": _NoBarrier, "_dot": _zero_dot, "_load": _zero_float_loads},
}
FORWARD = tuple(PARTS)
BACKWARD = ("whole step", "no barrier (left out)")
WHOLE = ("whole step",)
# plan variants (persistent.plan's keywords), with the parts of the forward and the
# backward kernel to time
VARIANTS = {
    "h loaded in chunks of 64 rows, one by one": ({"loads_first": False}, FORWARD, BACKWARD),
    **{f"h loaded first, chunks of {kc} rows": ({"kc_first": kc}, WHOLE, WHOLE)
       for kc in (64, 128, 256)},
    "default: h loaded first, one chunk": ({}, FORWARD, BACKWARD),
    # not yet timed (persistent.Plan): the whole step of each, forward and backward
    "transposed matmuls (wgmma)": ({"transposed": True}, FORWARD, BACKWARD),
    "inputs 2 steps ahead": ({"ahead": 2}, WHOLE, WHOLE),
    "inputs 3 steps ahead": ({"ahead": 3}, WHOLE, WHOLE),
    "transposed, 2 ahead": ({"transposed": True, "ahead": 2}, WHOLE, WHOLE),
    "h exchanged in half precision": ({"half_exchange": True}, WHOLE, WHOLE),
    "all three": ({"transposed": True, "ahead": 2, "half_exchange": True}, WHOLE, WHOLE),
    "32 units a block, transposed": ({"units": 32, "transposed": True}, WHOLE, WHOLE),
}


def _forward_fn(plan_, batch, time_steps, hidden, dtype, parts, seed=0):
    """A jitted zero-argument call of the inference kernel with the ``parts`` patched in."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    xp = jax.random.normal(keys[0], (time_steps, 1, plan_.batch, 4 * hidden))
    w_t = jax.random.normal(keys[1], (1, hidden, 4 * hidden)) / hidden ** 0.5
    h0 = jax.random.normal(keys[2], (1, plan_.batch, hidden))
    lengths = jnp.full((plan_.batch,), time_steps, jnp.int32)
    interpret = jax.devices()[0].platform != "gpu"
    fn = jax.jit(functools.partial(
        persistent.forward, "lstm", plan_, dtype=dtype, precision=jax.lax.Precision.DEFAULT,
        interpret=interpret, record=False))
    args = (lengths, xp, w_t.astype(dtype or jnp.float32), jnp.zeros((1, hidden)), h0, h0)
    with _patched(**parts):
        compiled = fn.lower(*args).compile()  # the patches are read while tracing
    return lambda: compiled(*args)


def _backward_fn(plan_, batch, time_steps, hidden, dtype, parts, seed=0):
    """A jitted zero-argument call of the backward kernel with the ``parts`` patched in."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    shape = (time_steps, 1, plan_.batch, hidden)
    acts = jax.nn.sigmoid(jax.random.normal(keys[0], (time_steps, 1, plan_.batch, 4 * hidden)))
    hbuf = jax.random.normal(keys[1], (time_steps + 1, 1, plan_.batch, hidden))
    w = jax.random.normal(keys[2], (1, 4 * hidden, hidden)) / hidden ** 0.5
    dh = jax.random.normal(keys[3], shape)
    lengths = jnp.full((plan_.batch,), time_steps, jnp.int32)
    interpret = jax.devices()[0].platform != "gpu"
    fn = jax.jit(functools.partial(
        persistent.backward, "lstm", plan_, dtype=dtype, precision=jax.lax.Precision.DEFAULT,
        interpret=interpret))
    args = (lengths, w.astype(dtype or jnp.float32), acts, hbuf, hbuf, dh, hbuf[0])
    with _patched(**parts):
        compiled = fn.lower(*args).compile()
    return lambda: compiled(*args)


def rows(sizes, variants, repeats, calls, budget, start, whole=False, with_backward=False):
    """Table lines for every size, plan variant and part, as they are timed; ``whole``: the
    whole forward step only, and ``with_backward`` the backward kernel's whole step too."""
    device = jax.devices()[0]
    cores = device.core_count if device.platform == "gpu" else 132
    for batch, time_steps, hidden, dtype in sizes:
        itemsize = jnp.dtype(dtype or jnp.float32).itemsize
        name = f"B{batch} T{time_steps} H{hidden} {jnp.dtype(dtype or jnp.float32).name}"
        default = persistent.plan("lstm", 1, batch, hidden, cores, itemsize=itemsize)
        for variant in variants:
            options, forward, backward_parts = VARIANTS[variant]
            plan_ = persistent.plan("lstm", 1, batch, hidden, cores, itemsize=itemsize,
                                    **options)
            if options and plan_ == default:  # e.g. half_exchange in float32
                yield f"| {name} | {variant} | | | the default plan at this size | |"
                continue
            if default.resident and not plan_.resident:  # e.g. 32 units in float32
                yield f"| {name} | {variant} | | | its weights no longer fit on chip | |"
                continue
            cases = [(f"forward, {part}", _forward_fn, PARTS[part])
                     for part in (WHOLE if whole else forward)]
            cases += [(f"backward, {part}", _backward_fn, PARTS[part])
                      for part in ((WHOLE if with_backward else ()) if whole else backward_parts)]
            for label, make, patches in cases:
                if time.perf_counter() - start > budget:
                    yield f"| {name} | {variant} | | {label} | skipped: over the budget | |"
                    continue
                try:
                    ms = pipelined_ms(make(plan_, batch, time_steps, hidden, dtype, patches),
                                      calls, repeats)
                    yield (f"| {name} | {variant} | {_tiling(plan_)} | {label} | {ms:.3f} | "
                           f"{ms * 1e3 / time_steps:.2f} |")
                except Exception as e:  # a part the lowering refuses: say so, go on
                    yield (f"| {name} | {variant} | {_tiling(plan_)} | {label} | error: "
                           f"{type(e).__name__}: {str(e)[:200]} | |")


def _tiling(plan_):
    return (f"bh={plan_.bh} bb={plan_.bb} kc={plan_.kc} resident={plan_.resident} "
            f"loads_first={plan_.loads_first} transposed={plan_.transposed} "
            f"ahead={plan_.ahead} half_exchange={plan_.half_exchange} warps={plan_.warps}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--budget", type=float, default=240.0,
                        help="seconds after which no new row is started")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU dry run)")
    parser.add_argument("--variants", default=None,
                        help="which of VARIANTS to time, by number, e.g. 0,2,3")
    parser.add_argument("--whole", action="store_true",
                        help="time the whole forward step only, no parts, no backward")
    parser.add_argument("--with-backward", action="store_true",
                        help="with --whole: the backward kernel's whole step too")
    parser.add_argument("--sizes", default=None,
                        help="which of SIZES to time, by number, e.g. 0,2")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_step.md")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    start = time.perf_counter()
    lines = ["# Where a step of the persistent kernel goes", "",
             f"- machine: {machine()}",
             f"- command: `{' '.join(['python benchmarks/bench_step.py', *argv])}`; "
             f"pipelined: {args.calls} calls "
             f"back to back, one sync, median of {args.repeats}; one LSTM layer, one "
             "direction; rows marked 'left out' compute wrong numbers on purpose", "",
             "| size | variant | tiling | kernel, part | ms a call | µs a step |",
             "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    sizes = SIZES
    if args.sizes:
        sizes = [sizes[int(i)] for i in args.sizes.split(",")]
    if args.quick:  # a dry run: whatever sizes were asked for
        sizes = QUICK_SIZES
    variants = list(VARIANTS)
    if args.variants:
        variants = [variants[int(i)] for i in args.variants.split(",")]
    for line in rows(sizes, variants, args.repeats, args.calls, args.budget, start,
                     args.whole, args.with_backward):
        lines.append(line)
        print(line, flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    print(f"total {time.perf_counter() - start:.0f} s; written to {args.out}")


if __name__ == "__main__":
    main()
