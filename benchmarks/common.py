"""What every benchmark script shares: interleaved timing, a description of the machine, and
the flax and jitted-closure setup the speed comparisons time."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

RESULTS = Path(__file__).parent / "results"
PAUSE_S = 0.05


def time_ms(fn) -> float:
    """Wall time of one ``fn()`` in ms, waiting for JAX's asynchronous results."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return (time.perf_counter() - start) * 1e3


def measure(fns: dict, repeats: int) -> dict:
    """Median ms of each zero-argument callable in ``fns``, after two warm-up calls each.

    The callables take turns within every repetition, in an order that rotates, with a
    pause before each so that threads still spinning (torch's OpenMP workers, XLA's Eigen
    pool) do not steal the cores of the next one, and load from other processes hits all
    of them alike.
    """
    for fn in fns.values():  # compile and warm up
        jax.block_until_ready(fn())
        jax.block_until_ready(fn())
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(PAUSE_S)
            times[name].append(time_ms(fns[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def measure_gpu(fns: dict, repeats: int, calls: int = 10, sync=jax.block_until_ready) -> dict:
    """Median ms a call of each zero-argument callable in ``fns``, as a training loop sees
    it: ``calls`` calls issued back to back, then one ``sync(outputs)``, divided by
    ``calls`` (``calls=1``: one synced call's latency). No pauses: an idle GPU lowers its
    clocks. The callables take turns within every repetition, in an order that rotates;
    ``sync`` is a dict of a function per name where the callables are not JAX's (torch:
    ``torch.cuda.synchronize``).
    """
    syncs = sync if isinstance(sync, dict) else dict.fromkeys(fns, sync)
    for name, fn in fns.items():  # compile and warm up
        for _ in range(2):
            syncs[name]([fn() for _ in range(calls)])
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, start = fns[name], time.perf_counter()
            syncs[name]([fn() for _ in range(calls)])
            times[name].append((time.perf_counter() - start) * 1e3 / calls)
    return {name: statistics.median(t) for name, t in times.items()}


def pipelined_ms(fn, calls: int = 10, repeats: int = 15) -> float:
    """:func:`measure_gpu` of one JAX callable."""
    return measure_gpu({"fn": fn}, repeats, calls)["fn"]


class FlaxStack(nn.Module):
    """``layers`` flax ``RNN``s, each ``Bidirectional`` when asked: flax's equivalent of
    ``torch.nn.LSTM(num_layers=layers, bidirectional=...)``."""

    cell: str
    hidden: int
    layers: int
    bidirectional: bool

    @nn.compact
    def __call__(self, x):  # (batch, time, features) -> (batch, time, D * hidden)
        make = nn.OptimizedLSTMCell if self.cell == "lstm" else nn.GRUCell
        for _ in range(self.layers):
            rnn = nn.RNN(make(self.hidden))
            if self.bidirectional:
                rnn = nn.Bidirectional(rnn, nn.RNN(make(self.hidden)))
            x = rnn(x)
        return x


def jax_fns(apply, params, x, argnums=0):
    """Jitted zero-argument ``forward()`` and ``training()`` closures: ``apply(params, x)``
    and the gradient of ``sum(apply(params, x))`` with respect to ``argnums``."""
    fwd = jax.jit(apply)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(apply(p, x)), argnums=argnums))
    return (lambda: fwd(params, x)), (lambda: grad(params, x))


def machine() -> str:
    """CPU model (or accelerator), core count, jax and flax versions and today's date."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = jax.devices()[0]
    where = model if device.platform == "cpu" else f"{device.device_kind} (host {model})"
    return (f"{where}, {os.cpu_count()} cores; jax {jax.__version__}, "
            f"flax {version('flax')}; {datetime.date.today()}")
