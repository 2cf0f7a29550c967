"""What the persistent GPU kernels cost on chip, compiled here without a GPU.

    pip install triton   # its ptxas; not a dependency of recurrent
    python benchmarks/kernel_resources.py [--out PATH]

Each kernel variant that ``bench_gpu.py`` tunes (``TUNING``: the tilings
:func:`recurrent.kernels.persistent.plan` picks, and with its choices turned off) is
lowered by Pallas for CUDA, compiled by Triton for an H100 (sm_90a) and
assembled by ptxas. The table gives per block: registers per thread, bytes spilled to
local memory, shared memory, and how many bytes each thread loads from global memory in
the time loop (one step; a loop nested in it, such as a barrier's polling, counts once)
and outside it, in how many rounds a step loads what other blocks wrote (see
:func:`_step`), the tensor-core (``mma.sync``) instructions a thread issues in one step, and
the longest chain of them in which each waits for the one before (a step takes at least
that many times an ``mma``'s latency), and Hopper's warpgroup MMAs (``wgmma``, which
``Plan.transposed`` gets from Triton): asynchronous, both operands read from shared
memory, a chain of them on one accumulator issued back to back. A ``w_hh`` slice held on
chip shows as shared memory and as loads outside the loop; streamed, it shows as loads in
the loop.

No timing: that needs the GPU (``bench_gpu.py``). This is how a variant is checked for
spills and residency before device time is spent on it. Triton's own pipeline stands in
for XLA's, which compiles the same IR with nearly the same passes.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
from jax._src.pallas.triton import lowering

from recurrent.kernels import persistent

from bench_gpu import TUNING
from common import RESULTS

# (cell, batch, hidden, directions, matmul dtype): layers of bench_gpu.ROWS
CONFIGS = [("lstm", 16, 512, 1, None), ("lstm", 16, 512, 1, jnp.bfloat16),
           ("lstm", 64, 512, 1, None), ("gru", 64, 512, 1, None), ("lstm", 32, 256, 1, None),
           ("lstm", 64, 512, 2, None), ("lstm", 256, 1024, 1, None),
           ("lstm", 256, 1024, 1, jnp.bfloat16)]
CORES = 132  # an H100 SXM's multiprocessors
TIME = 8  # steps: the loop's body does not depend on it


def triton_ir(kind, batch, hidden, dirs, dtype, overrides):
    """The Triton IR (text) of the forward (recording), inference and backward kernels."""
    itemsize = jnp.dtype(dtype or jnp.float32).itemsize
    tiling = persistent.plan(kind, dirs, batch, hidden, CORES, itemsize=itemsize, **overrides)
    modules = []
    original = lowering.lower_jaxpr_to_triton_module

    def keep(*args, **kwargs):
        result = original(*args, **kwargs)
        modules.append(result.module.operation.get_asm(enable_debug_info=False))
        return result

    f32, gates = jnp.float32, persistent.GATES[kind]
    w_dtype = jnp.dtype(dtype or f32)
    rows = jnp.zeros((TIME, dirs, tiling.batch, hidden), f32)
    state = rows[0]
    lengths = jnp.full((tiling.batch,), TIME, jnp.int32)
    options = dict(dtype=dtype and w_dtype, precision=jax.lax.Precision.DEFAULT,
                   interpret=False)
    xp = jnp.zeros((TIME, dirs, tiling.batch, gates * hidden), f32)
    w_t = jnp.zeros((dirs, hidden, gates * hidden), w_dtype)
    acts = jnp.zeros((TIME, dirs, tiling.batch, 4 * hidden), f32)
    hbuf = jnp.zeros((TIME + 1, dirs, tiling.batch, hidden), f32)
    calls = [
        (functools.partial(persistent.forward, kind, tiling, record=True, **options),
         (lengths, xp, w_t, state[:, 0], state, state)),
        (functools.partial(persistent.forward, kind, tiling, record=False, **options),
         (lengths, xp, w_t, state[:, 0], state, state)),
        (functools.partial(persistent.backward, kind, tiling, **options),
         (lengths, jnp.swapaxes(w_t, 1, 2), acts, hbuf, hbuf, rows, state))]
    lowering.lower_jaxpr_to_triton_module = keep
    try:
        for fn, args in calls:
            jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
    finally:
        lowering.lower_jaxpr_to_triton_module = original
    return tiling, modules


def _step(ptx):
    """What one thread does in the time loop's body (the blocks that LLVM's comments place in
    a loop: the time loop, or one nested in it, which then counts once), and outside it:
    ``(bytes loaded from global memory outside, bytes loaded within, rounds of loads
    within, mma.sync instructions within, the longest chain of them within that each wait
    for the last, wgmma instructions within)``. A round is a run of vector loads of data
    the other blocks wrote (``ld.volatile``) that no barrier interrupts: one wait on L2
    each, in program order."""
    outside = within = rounds = mma = longest = wgmma = 0
    depth = {}  # register -> the most mma instructions its value waited for, in a row
    in_loop, barrier = False, True
    lines = ptx.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\$L__BB\d+_\d+:", line):  # a basic block starts: is it in a loop?
            in_loop = "Loop" in line + (lines[i + 1] if i + 1 < len(lines) else "")
        code = re.sub(r"^\s*@!?%\w+\s+", "", line.split("//")[0]).strip().rstrip(";")
        op, _, args = code.partition(" ")
        found = re.match(r"ld(\.volatile)?\.global\S*?(?:\.v(\d))?\.[bfsu](\d+)$", op)
        if found:
            size = int(found.group(2) or 1) * int(found.group(3)) // 8
            within += size if in_loop else 0
            outside += 0 if in_loop else size
            if in_loop and found.group(1) and found.group(2):
                rounds, barrier = rounds + barrier, False
        barrier = barrier or (in_loop and op.startswith("bar.sync"))
        if not in_loop or not args or op.startswith(("st.", "bra", "bar.", "red.")):
            continue
        first = re.match(r"\s*(\{[^}]*\}|[^,]*)", args).group(1)
        sources = re.findall(r"%\w+", args[len(first):])
        wgmma += op.startswith("wgmma.mma_async")
        is_mma = op.startswith("mma.sync")
        mma += is_mma
        chain = max((depth.get(r, 0) for r in sources), default=0) + is_mma
        for register in re.findall(r"%\w+", first):
            depth[register] = chain
        longest = max(longest, chain)
    return outside, within, rounds, mma, longest, wgmma


def compile_ir(text, warps, workdir, name):
    """Registers, spilled bytes and shared bytes of one kernel on sm_90a, and
    :func:`_step`'s counts."""
    import triton
    from triton.backends.compiler import GPUTarget

    path = workdir / f"{name}.ttir"
    path.write_text(text)
    kernel = triton.compile(str(path), target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": warps, "num_stages": 1})
    ptx = workdir / f"{name}.ptx"
    ptx.write_text(kernel.asm["ptx"])
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    ptxas = next(p for p in (bin_dir / "ptxas-blackwell", bin_dir / "ptxas") if p.exists())
    report = subprocess.run([str(ptxas), "-v", "--gpu-name=sm_90a", str(ptx), "-o",
                             str(workdir / f"{name}.cubin")],
                            capture_output=True, text=True, check=True).stderr
    registers = int(re.search(r"Used (\d+) registers", report).group(1))
    spilled = int(re.search(r"(\d+) bytes spill stores", report).group(1))
    return (registers, spilled, kernel.metadata.shared, *_step(kernel.asm["ptx"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS / "kernel_resources.md")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/recurrent-kernels"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's present default
    import triton

    args.workdir.mkdir(parents=True, exist_ok=True)
    lines = ["# The persistent kernels on chip, compiled for an H100 without one", "",
             f"- command: `python benchmarks/kernel_resources.py`; jax {jax.__version__}, "
             f"Triton {triton.__version__} (sm_90a, num_stages=1); per block, per thread "
             "for registers and loads",
             "- per step: the body of the time loop once; a loop nested in it (the default "
             "backward's matmul chunks when there are more than 16, a barrier's polling) "
             "counts once",
             "- load rounds: runs of loads of what other blocks wrote with no barrier among "
             "them, each a wait on L2 unless ptxas overlaps it with the one before",
             "- no timing: that is `bench_gpu.py` on the GPU", "",
             "| cell, B, H, dirs, dtype | variant | tiling | kernel | registers | spilled B "
             "| shared KB | loaded B outside the loop | loaded B per step | load rounds per step "
             "| mma.sync per step | longest mma.sync chain | wgmma per step |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind, batch, hidden, dirs, dtype in CONFIGS:
        for variant, overrides in TUNING.items():
            label = (f"{kind.upper()}, {batch}, {hidden}, {dirs}, "
                     f"{jnp.dtype(dtype or jnp.float32).name}")
            try:
                tiling, modules = triton_ir(kind, batch, hidden, dirs, dtype, overrides)
            except Exception as e:  # a variant the lowering refuses: say so, go on
                lines.append(f"| {label} | {variant} | lowering failed: "
                             f"{type(e).__name__}: {str(e)[:120]} |")
                continue
            shape = " ".join(f"{k}={v}" for k, v in tiling._asdict().items()
                             if k in ("bh", "bb", "kc", "warps") or v and k != "batch")
            for name, text in zip(("forward", "inference", "backward"), modules,
                                  strict=True):
                try:
                    regs, spill, shared, before, within, rounds, mma, chain, wg = compile_ir(
                        text, tiling.warps, args.workdir,
                        re.sub(r"\W+", "_", f"{label}_{variant}_{name}"))
                    cells = (f"{regs} | {spill} | {shared / 1024:.0f} | {before} | {within} "
                             f"| {rounds} | {mma} | {chain} | {wg}")
                except Exception as e:
                    cells = f"failed: {type(e).__name__}: {str(e)[:120]} | | | | | | | |"
                lines.append(f"| {label} | {variant} | {shape} | {name} | {cells} |")
                print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
