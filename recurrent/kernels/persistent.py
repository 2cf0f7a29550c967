"""Persistent Pallas (Triton) kernels for the recurrence of the LSTM and the GRU.

One launch runs every time step of one layer, both directions at once. The grid is
``(directions, H // bh)``: block ``(d, j)`` owns hidden units ``j*bh:(j+1)*bh`` of direction
``d`` and, at every step, computes their gates from the whole previous ``h``. The blocks
of a direction exchange ``h`` through global memory (``hbuf``, which is also the output)
and wait for each other once per step on per-block flags: a grid-wide barrier. That is
only sound while every block of the grid runs at the same time, so the grid never has more
blocks than the GPU has multiprocessors (:func:`plan`).

The backward kernel runs the same way in reverse time. Each block multiplies its units'
gate gradients ``dm_t (batch, G*bh)`` by its rows of ``w_hh`` and writes that share of
``dh_{t-1}`` for every unit; after the barrier, a block sums the shares of its own units
(or, where the shares do not fit, it reads every block's ``dm_t`` and multiplies them by
its columns of ``w_hh``). The weight gradient is one matmul over all steps, outside the
kernel. Where it fits, a block's slice of ``w_hh`` is loaded once and held in shared memory
(:class:`Plan`). Without a VJP to feed, the forward kernel writes only ``h``
(``record=False``).

Off GPU the kernels run in Pallas' interpret mode. The grid then runs one block after
another, so a barrier would wait forever; instead a scan makes one call per time step (the
kernels read their span of steps from ``span_ref``), and the blocks only read the previous
call's ``h``. Where a direction has a single block of units (``bh == H``), no block waits
for another, and one call runs every step, as on the GPU. The kernel body is the same code
that runs on the GPU.

Layouts (``T`` time, ``D`` directions, ``B`` batch padded to a power of two >= 16, ``H``
hidden, ``G`` gates, gate-major columns as in torch):

- ``xp (T, D, B, G*H)``: projected inputs, biases included except the GRU's ``b_hn``.
- ``w (D, H, G*H)`` (forward, ``w_hh`` transposed) and ``(D, G*H, H)`` (backward).
- ``hbuf (T+1, D, B, H)``: slot 0 is ``h_0``, slot ``t+1`` the state after step ``t``; rows
  past their length keep their state (the caller zeroes them in ``y``).
- ``cbuf (T+1, D, B, H)``: the LSTM's cell state, likewise.
- ``xbuf (2, D, B, H)`` (``Plan.half_exchange`` only): ``h`` in the matmuls' half
  precision for the other blocks, slot ``t % 2`` holding the state before step ``t``.
- ``acts (T, D, B, 4*H)``: the LSTM's ``i, f, g, o``; the GRU's ``r, z, n`` and the
  recurrent ``n`` pre-activation ``w_hn h + b_hn``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

GATES = {"lstm": 4, "gru": 3}
MIN_BLOCK = 16  # Triton's smallest matmul side
SPIN_LIMIT = 1 << 22  # a barrier waits at most this many polls, then stops waiting
SHARED_BYTES = 160 << 10  # weights a block may hold on chip (timed: 128 KiB, on an H100)


class Plan(NamedTuple):
    """Static tiling of one layer: ``bh`` hidden units and ``bb`` batch rows per block,
    ``kc`` rows per matmul chunk, ``batch`` the padded batch, ``warps`` per block.

    The forward kernel computes a block's gates in one matmul of ``4*bh`` columns (the
    GRU's padded with a zero gate; :func:`fuse` lays out ``w``), then splits the result.
    Three choices depend on the sizes (:func:`plan`; benchmarks/results/gpu.md and
    gpu_step.md give what each did to the time of a step):

    - ``resident``: a block's slice of ``w_hh`` is loaded once, before the time loop (the
      matmul chunks then unrolled), and stays in shared memory; otherwise it is read from
      L2 at every step.
    - ``scatter`` (backward): each block multiplies its own gate gradients by its own rows
      of ``w_hh``, for every unit, and writes that ``(bb, H)`` share; after the barrier a
      block sums the shares of its units. Otherwise each block reads every block's gate
      gradients, ``(bb, G*H)``, and multiplies them by its columns of ``w_hh``: four times
      the reads, and a product only ``bh`` wide that every warp of the block repeats.
    - ``loads_first`` (forward): a step loads all of ``h`` it needs, ``(bb, H)``, before
      its first matmul chunk, and the chunks are ``kc = H`` rows (one, by default):
      otherwise a step waits on L2 once a chunk, and converts each chunk's operand for the
      tensor cores behind two shared-memory barriers of its own (on an H200 at B16 H512,
      float32, a forward step took 5.3 µs in 8 chunks of 64 rows loaded one by one, 4.7
      with the loads first, 3.5 in one chunk).

    Two choices are untimed on a GPU, off by default (:func:`plan`'s keywords) until they
    measure faster (``benchmarks/bench_step.py``):

    - ``transposed``: the step's matmuls computed transposed, ``w^T h^T`` rather than
      ``h w``: forward, ``(4*bh, H) @ (H, bb)``, whose ``4*bh = 64`` rows let Triton issue
      Hopper's asynchronous warpgroup MMAs (``wgmma``), which read both operands from
      shared memory, where ``bb = 16`` rows give chains of ``mma.sync`` fed from registers
      (the weights read from shared memory into registers at every step); backward, the
      scattered product likewise, ``(H, bh) @ (bh, bb)`` (the gathering backward pass
      keeps its ``(bb, kc) @ (kc, bh)`` chunks, which have no side of 64). A step's sum
      of products is transposed back once.
    - ``ahead``: how many steps ahead the projected inputs (forward) and a block's own
      residuals (backward) are loaded; at 1 a step's loads are issued during the step
      before, which on an H200 left about 1 µs a step waiting on them.
    - ``half_exchange`` (half-precision matmuls only): the forward kernel also writes each
      step's ``h`` in the matmuls' dtype to a two-slot ring, ``xbuf``, and the blocks read
      ``h`` from there: half the bytes from L2 a step. The numbers are the same, since the
      matmul casts ``h`` to that dtype anyway; ``hbuf`` keeps float32 for the outputs and
      the backward pass. Two slots suffice: a block writes slot ``t % 2`` at step ``t + 1``
      only after the barrier that every block reaches once done reading it at step ``t``.
    """

    bh: int
    bb: int
    kc: int
    batch: int
    warps: int
    resident: bool = False
    scatter: bool = False
    loads_first: bool = False
    transposed: bool = False
    ahead: int = 1
    half_exchange: bool = False

    def grid(self, num_dirs, hidden):
        return num_dirs, hidden // self.bh, self.batch // self.bb


def _pow2_at_least(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def plan(kind: str, num_dirs: int, batch: int, hidden: int, num_cores: int,
         split_batch: bool = True, *, resident: bool = True, scatter: bool = True,
         itemsize: int = 4, shared_bytes: int = SHARED_BYTES,
         warps: int | None = None, loads_first: bool = True,
         kc_first: int | None = None, transposed: bool = False,
         ahead: int = 1, half_exchange: bool = False,
         units: int = MIN_BLOCK) -> Plan | None:
    """The tiling for these sizes, or ``None`` when the kernel does not fit them.

    The grid ``num_dirs * (hidden / bh) * (batch / bb)`` must not exceed ``num_cores`` (the
    barrier needs every block resident), and a block's accumulators must fit in registers.
    With ``split_batch`` the batch is split over blocks while the grid still fits, so that
    more of the GPU works on each step. ``warps`` per block: 4, or 8 for large tiles,
    unless given. ``resident``, ``scatter`` and ``loads_first`` (see :class:`Plan`) hold
    where asked for and where they fit: ``resident`` where a block's weights, ``itemsize``
    bytes each, take at most ``min(shared_bytes, SHARED_BYTES)``; ``scatter`` where they
    are resident and its share of the product takes at most 64 registers a thread;
    ``loads_first`` where they are resident (the chunks unrolled) and ``h (bb, H)`` takes
    at most 64 registers a thread.
    ``kc_first``: the rows of a matmul chunk (a power of two; ``None``: ``hidden``) where
    ``loads_first`` holds; elsewhere they depend on ``bb``. ``transposed`` holds where the
    weights are resident (held transposed); ``ahead`` (>= 1) is taken as given;
    ``half_exchange`` holds where the matmuls' operands are half precision (``itemsize``
    2). ``units``: the fewest hidden units a block owns (a power of two, at least 16; more
    units, fewer blocks at the barrier: on an H200, 32 in float32, whose weights then no
    longer fit on chip, took a step from 5.3 to 9.1 µs, and in bfloat16 from 5.0 to 5.7,
    with ``mma.sync``; untimed with ``transposed``).
    """
    if ahead < 1:
        raise ValueError(f"ahead must be at least 1 (steps); got {ahead}")
    if units < MIN_BLOCK or units & (units - 1):
        raise ValueError(f"units must be a power of two of at least {MIN_BLOCK}; got {units}")
    if hidden % MIN_BLOCK:
        return None
    padded = max(MIN_BLOCK, _pow2_at_least(batch))
    bh = units
    while num_dirs * (hidden // bh) > num_cores or hidden % bh:
        bh *= 2
        if bh > hidden:
            return None
    bb = padded
    blocks = num_dirs * (hidden // bh)
    while split_batch and bb > MIN_BLOCK and blocks * (padded // bb) * 2 <= num_cores:
        bb //= 2
    if bb * GATES[kind] * bh > 16384:  # floats of gate accumulators per block
        return None
    resident = resident and 4 * bh * hidden * itemsize <= min(shared_bytes, SHARED_BYTES)
    warps = warps or (4 if bb * bh <= 1024 else 8)
    # (bb, H) in 64 registers a thread, the rows of w on chip (streamed, they spill: 152 B)
    in_registers = bb * hidden <= 64 * 32 * warps
    scatter = scatter and resident and in_registers
    loads_first = loads_first and resident and in_registers
    kc = (kc_first or hidden) if loads_first else max(MIN_BLOCK, min(64, 8192 // bb))
    kc = min(kc, hidden)
    while hidden % kc:
        kc //= 2
    transposed = transposed and resident
    return Plan(bh, bb, kc, padded, warps, resident, scatter, loads_first, transposed, ahead,
                half_exchange and itemsize == 2)


FLAGS = 32  # the first column of a barrier's arrivals in its row of the sync buffer


class _Sync:
    """The grid barrier of the ``nblk`` blocks of one direction and batch tile: row ``r``
    of ``ref``. ``ref[r, 0]`` counts the barriers that gave up waiting; ``ref[r, FLAGS +
    j]`` is the number of barriers block ``j`` has reached (a sequence number: nothing is
    reset). A block raises its own flag, then polls every block's flag with one vector
    load (a warp-wide minimum, no shared memory) until none is behind. On an H200 this
    took a forward step at B16 H512 from 7.1 µs to 5.3 µs, against a counter that every
    block incremented and polled with atomics (benchmarks/results/gpu_step.md)."""

    def __init__(self, ref, d, nblk, interpret):
        self.ref, self.nblk, self.interpret = ref, nblk, interpret
        self.row = d * pl.num_programs(2) + pl.program_id(2)  # a row per batch tile
        self.flag = FLAGS + pl.program_id(1)  # this block's column (read outside any cond)
        # traced rather than literal: interpret mode cannot discharge constants in a loop
        self.zero = d * 0
        self.one = self.zero + 1

    def wait(self, passed, alive):
        """Barrier number ``passed`` (0-based) of this call; ``alive`` is false once a wait has
        timed out, after which the block stops waiting (its results are then wrong, and the
        count in ``ref[r, 0]`` says so) rather than hang the GPU. Returns the new ``alive``."""
        if not self.interpret:
            plt.debug_barrier()  # every thread's stores precede the arrival
        target = passed + 1
        # the atomic publishes this block's stores before its flag (release); the flag only
        # grows, so max sets it (and, unlike an exchange, runs in interpret mode); its
        # result is not read, so the block does not wait for it
        plt.atomic_max(self.ref, (self.row, self.flag), target)
        width = _pow2_at_least(self.nblk)  # columns past nblk hold a large number

        def count():  # how many barriers every block has reached
            return jnp.min(_load(self.ref.at[self.row, pl.ds(FLAGS, width)], self.interpret))

        def poll(state):
            _, spins = state
            return count(), spins + 1

        def waiting(state):
            seen, spins = state
            return (seen < target) & (spins < SPIN_LIMIT) & alive

        seen, _ = jax.lax.while_loop(waiting, poll, poll((self.zero, self.zero)))
        return alive & (seen >= target)

    def report(self, alive):
        @pl.when(jnp.logical_not(alive))
        def _():
            plt.atomic_add(self.ref, (self.row, self.zero), self.one)


def _load(ref, interpret):
    """A load that skips the L1 cache on the GPU: other blocks wrote it during this launch."""
    return ref[...] if interpret else plt.load(ref, volatile=True)


def _dot(a, b, dtype, precision, transposed=False):
    """``a @ b`` with float32 accumulation, operands cast to ``dtype`` (``None``: as given);
    ``transposed``: ``b`` is given as ``b^T`` and the product computed as ``b^T a^T``, i.e.
    ``(N, M)``, the transpose of ``a @ b`` (see ``Plan.transposed``)."""
    if dtype is not None:
        a, b = a.astype(dtype), b.astype(dtype)
    if transposed:
        a, b = b, a.T
    return jnp.dot(a, b, precision=precision, preferred_element_type=jnp.float32)


def _products(pairs, dtype, precision, transposed):
    """``sum(a @ b for a, b in pairs)``, ``(M, N)``; ``transposed``: each ``b`` given as
    ``b^T``, the products summed as ``(N, M)`` and the sum transposed once."""
    total = functools.reduce(jnp.add, (_dot(a, b, dtype, precision, transposed)
                                       for a, b in pairs))
    return total.T if transposed else total


def _accumulate(n, load, fn, init, resident, loads_first=False):
    """``fn(k, acc, load(k))`` for ``k < n``: a loop when long (unless the weights are held
    in unrolled chunks, ``resident``), otherwise unrolled in Python; with ``loads_first``
    (unrolled only) every ``load(k)`` comes before the first ``fn``."""
    if n > 16 and not resident:
        return jax.lax.fori_loop(0, n, lambda k, acc: fn(k, acc, load(k)), init)
    loaded = [load(k) for k in range(n)] if loads_first else None
    for k in range(n):
        init = fn(k, init, loaded[k] if loads_first else load(k))
    return init


def _weights(load, chunks, parts, resident, dtype, transposed=False):
    """``weight(k, g)``: part ``g`` of matmul chunk ``k`` of a block's weights, ``load(k, g)``
    at each use, or (``resident``) every part loaded once, here, before the time loop, and
    cast to ``dtype``; ``transposed`` (resident only): held transposed, for
    ``_dot(..., transposed=True)``."""
    if not resident:
        return load

    def held_part(k, g):
        w = load(k, g) if dtype is None else load(k, g).astype(dtype)
        return w.T if transposed else w

    held = [[held_part(k, g) for g in range(parts)] for k in range(chunks)]
    return lambda k, g: held[k][g]


def _rows(k, kc):
    """Rows ``k*kc:(k+1)*kc``, ``k`` a Python int (unrolled) or traced (a loop)."""
    return pl.ds(k * kc if isinstance(k, int) else pl.multiple_of(k * kc, kc), kc)


def _forward_kernel(span_ref, len_ref, xp_ref, w_ref, bhn_ref, *refs, kind, plan_, hidden,
                    dtype, precision, interpret):
    """``refs``: the inputs aliased to outputs (``hbuf, cbuf, sync``, and ``xbuf`` with
    ``Plan.half_exchange``), then the outputs ``hbuf, cbuf, acts, sync`` (``xbuf``), or
    without ``acts`` when nothing records the gates (inference); ``cbuf`` then gets only
    the last step's state."""
    outs = refs[3 + plan_.half_exchange:]
    if plan_.half_exchange:
        *outs, xbuf_ref = outs
    hbuf_ref, cbuf_ref, *acts_ref, sync_ref = outs
    G, H, bh, kc = GATES[kind], hidden, plan_.bh, plan_.kc
    d, j = pl.program_id(0), pl.program_id(1)
    sync = _Sync(sync_ref, d, hidden // bh, interpret)
    units = pl.ds(j * bh, bh)
    rb = pl.ds(pl.program_id(2) * plan_.bb, plan_.bb)  # this block's batch rows
    lengths = len_ref[rb]  # (bb,)
    first, stop = span_ref[0], span_ref[1]  # this call runs steps first, ..., stop - 1

    def gate_cols(g):
        return pl.ds(g * H + j * bh, bh)

    last = xp_ref.shape[0] - 1

    def inputs(t):  # step t's projected inputs, G x (bb, bh)
        return tuple(xp_ref[jnp.minimum(t, last), d, rb, gate_cols(g)] for g in range(G))

    # one matmul for every gate: this block's 4*bh columns of w (laid out by fuse)
    weight = _weights(lambda k, _: w_ref[d, _rows(k, kc), pl.ds(j * 4 * bh, 4 * bh)],
                      H // kc, 1, plan_.resident, dtype, plan_.transposed)

    def step(t, state):
        c, h_old, xs, alive = state  # own units' carry, inputs of steps t, ..., t+ahead-1
        x = xs[0]

        # h_{t-1} = hbuf[t, d] (B, H) was written by every block at the last step
        def load(k):  # (bb, kc)
            if plan_.half_exchange:
                return _load(xbuf_ref.at[t % 2, d, rb, _rows(k, kc)], interpret)
            return _load(hbuf_ref.at[t, d, rb, _rows(k, kc)], interpret)

        def chunk(k, acc, h_k):
            return acc + _dot(h_k, weight(k, 0), dtype, precision, plan_.transposed)

        shape = (4 * bh, plan_.bb) if plan_.transposed else (plan_.bb, 4 * bh)
        rec = _accumulate(H // kc, load, chunk, jnp.zeros(shape, jnp.float32),
                          plan_.resident, plan_.loads_first)
        rec = jnp.split(rec.T if plan_.transposed else rec, 4, axis=1)[:G]  # G x (bb, bh)
        valid = (t < lengths)[:, None]  # (bb, 1)
        if kind == "lstm":
            i, f, o = (jax.nn.sigmoid(x[g] + rec[g]) for g in (0, 1, 3))
            g_ = jnp.tanh(x[2] + rec[2])
            c_new = jnp.where(valid, f * c + i * g_, c)
            h_new = jnp.where(valid, o * jnp.tanh(c_new), h_old)
            if acts_ref:
                cbuf_ref[t + 1, d, rb, units] = c_new
            gates = (i, f, g_, o)
        else:
            r, z = (jax.nn.sigmoid(x[g] + rec[g]) for g in (0, 1))
            hn = rec[2] + bhn_ref[d, units][None, :]
            n = jnp.tanh(x[2] + r * hn)
            c_new = c
            h_new = jnp.where(valid, (1 - z) * n + z * h_old, h_old)
            gates = (r, z, n, hn)
        hbuf_ref[t + 1, d, rb, units] = h_new
        if plan_.half_exchange:
            xbuf_ref[(t + 1) % 2, d, rb, units] = h_new.astype(xbuf_ref.dtype)
        for g, a in enumerate(gates if acts_ref else ()):
            acts_ref[0][t, d, rb, gate_cols(g)] = a
        # loaded before the barrier, to overlap with the wait (and with later steps)
        xs = (*xs[1:], inputs(t + plan_.ahead))
        alive = jax.lax.cond(t < stop - 1, lambda a: sync.wait(t - first, a), lambda a: a,
                             alive)
        return c_new, h_new, xs, alive

    c0 = cbuf_ref[first, d, rb, units] if kind == "lstm" else jnp.zeros((plan_.bb, bh))
    h0 = hbuf_ref[first, d, rb, units]
    xs = tuple(inputs(first + k if k else first) for k in range(plan_.ahead))  # no "+ 0"
    state = (c0, h0, xs, jnp.bool_(True))
    c, *_, alive = jax.lax.fori_loop(first, stop, step, state)
    if kind == "lstm" and not acts_ref:
        cbuf_ref[stop, d, rb, units] = c
    sync.report(alive)


def _backward_kernel(span_ref, len_ref, w_ref, acts_ref, hbuf_ref, cbuf_ref, dh_ref,
                     min_ref, sin_ref, dpass_in_ref, dc_in_ref, pin_ref,
                     mbuf_ref, dxn_ref, dpass_ref, dc_ref, sync_ref, pbuf_ref, *, kind, plan_,
                     hidden, dtype, precision, interpret):
    del min_ref, sin_ref, dpass_in_ref, dc_in_ref, pin_ref  # aliased to outputs
    G, H, bh, kc = GATES[kind], hidden, plan_.bh, plan_.kc
    d, j = pl.program_id(0), pl.program_id(1)
    sync = _Sync(sync_ref, d, hidden // bh, interpret)
    units = pl.ds(j * bh, bh)
    rb = pl.ds(pl.program_id(2) * plan_.bb, plan_.bb)
    lengths = len_ref[rb]
    first, stop = span_ref[0], span_ref[1]  # this call runs t = stop - 1, ..., first

    def gate_cols(g):
        return pl.ds(g * H + j * bh, bh)

    if plan_.scatter:  # this block's rows of w (D, G*H, H), gate by gate: G x (bh, H)
        weight = _weights(lambda _, g: w_ref[d, gate_cols(g), :], 1, G, plan_.resident, dtype,
                          plan_.transposed)
    else:  # every row of this block's columns, chunk by chunk: (kc, bh)
        weight = _weights(lambda k, _: w_ref[d, _rows(k, kc), units], G * H // kc, 1,
                          plan_.resident, dtype)

    def local(t):  # what step t reads of this block's own: dh_t, gates, states
        t = jnp.maximum(t, 0)
        own = (cbuf_ref[t + 1, d, rb, units], cbuf_ref[t, d, rb, units]) if kind == "lstm" \
            else (hbuf_ref[t, d, rb, units],)
        return (dh_ref[t, d, rb, units], *(acts_ref[t, d, rb, gate_cols(g)] for g in range(4)),
                *own)

    def step(s, state):
        d_pass, dc, ahead, alive = state  # ahead: local(t), ..., local(t - plan_.ahead + 1)
        now = ahead[0]
        t = stop - 1 - s
        if plan_.scatter:  # the products of every block's dm of step t + 1, for own units
            parts = _load(pbuf_ref.at[(t + 1) % 2, d, :, rb, units], interpret)
            rec = jnp.sum(parts, axis=0)  # (nblk, bb, bh) -> (bb, bh)
        else:  # mbuf[t + 1, d] (B, G*H) holds every block's dm of step t + 1
            def load(k):  # (bb, kc)
                return _load(mbuf_ref.at[t + 1, d, rb, _rows(k, kc)], interpret)

            def chunk(k, acc, m_k):
                return acc + _dot(m_k, weight(k, 0), dtype, precision)

            rec = _accumulate(G * H // kc, load, chunk,
                              jnp.zeros((plan_.bb, bh), jnp.float32), plan_.resident)
        dh_t, *a, own = now[0], *now[1:5], now[5:]
        dh = dh_t + d_pass + rec  # (bb, bh)
        valid = (t < lengths)[:, None]
        if kind == "lstm":
            i, f, g_, o = a
            c, c_prev = own
            tc = jnp.tanh(c)
            dct = dc + dh * o * (1 - tc * tc)
            dm = (dct * g_ * i * (1 - i), dct * c_prev * f * (1 - f), dct * i * (1 - g_ * g_),
                  dh * tc * o * (1 - o))
            dc_new = jnp.where(valid, dct * f, dc)
            d_pass_new = jnp.where(valid, 0.0, dh)
        else:
            r, z, n, hn = a
            (h_prev,) = own
            dgn = dh * (1 - z) * (1 - n * n)  # the n pre-activation's gradient
            dm = (dgn * hn * r * (1 - r), dh * (h_prev - n) * z * (1 - z), dgn * r)
            dxn_ref[t, d, rb, units] = jnp.where(valid, dgn, 0.0)
            dc_new = dc
            d_pass_new = jnp.where(valid, dh * z, dh)
        dm = [jnp.where(valid, m, 0.0) for m in dm]
        for g, m in enumerate(dm):
            mbuf_ref[t, d, rb, gate_cols(g)] = m
        if plan_.scatter:  # own rows' share of dm_t @ w_hh, for every unit: (bb, H)
            pbuf_ref[t % 2, d, j, rb, :] = _products(
                [(m, weight(0, g)) for g, m in enumerate(dm)], dtype, precision,
                plan_.transposed)
        # loaded before the barrier, to overlap with the wait (and with later steps)
        ahead = (*ahead[1:], local(t - plan_.ahead))
        alive = jax.lax.cond(t > first, lambda a: sync.wait(s, a), lambda a: a, alive)
        return d_pass_new, dc_new, ahead, alive

    init = (dpass_ref[d, rb, units], dc_ref[d, rb, units],
            tuple(local(stop - 1 - k if k else stop - 1) for k in range(plan_.ahead)),
            jnp.bool_(True))
    d_pass, dc, _, alive = jax.lax.fori_loop(0, stop - first, step, init)
    dpass_ref[d, rb, units] = d_pass
    dc_ref[d, rb, units] = dc
    sync.report(alive)


def _sync_buffer(plan_, num_dirs, hidden):
    """The barriers' memory (:class:`_Sync`): a row per direction and batch tile, zeros but
    for the flag columns past the blocks, which hold a number no step reaches."""
    rows = num_dirs * (plan_.batch // plan_.bb)
    blocks = hidden // plan_.bh
    columns = FLAGS + _pow2_at_least(blocks)
    unused = jnp.arange(columns) >= FLAGS + blocks  # (columns,)
    return jnp.broadcast_to(jnp.where(unused, jnp.iinfo(jnp.int32).max, 0),
                            (rows, columns)).astype(jnp.int32)


def _launch(kernel, grid, outs, aliases, plan_, interpret, time, carried, stitched,
            reverse, *args):
    """Runs ``kernel`` over ``time`` steps: in one call on the GPU, or on the CPU (interpret
    mode) in one call per step, threading the aliased buffers ``carried`` (output indices)
    from call to call and keeping step ``t`` of each output in ``stitched`` from call ``t``.
    ``args`` are the kernel's inputs after the span; returns its outputs. Where the grid
    has one block of units (``grid[1] == 1``), every block's barrier waits only on itself,
    and interpret mode too runs every step in one call."""
    call = pl.pallas_call(
        kernel, out_shape=outs, grid=grid, input_output_aliases=aliases,
        interpret=interpret,
        # num_stages=1: software pipelining would load step t+1's h before the barrier
        # that publishes it (on an H100, 2 stages gave errors of 1e-1)
        compiler_params=plt.CompilerParams(num_warps=plan_.warps, num_stages=1))
    if not interpret or grid[1] == 1:
        return call(jnp.array([0, time], jnp.int32), *args)
    sources = {out: inp for inp, out in aliases.items()}

    def one_step(results, t):
        inputs = list(args)
        for out in carried:
            inputs[sources[out] - 1] = results[out]
        new = call(jnp.stack([t, t + 1]).astype(jnp.int32), *inputs)
        return tuple(r.at[t].set(n[t]) if i in stitched else n
                     for i, (r, n) in enumerate(zip(results, new, strict=True))), None

    initial = tuple(args[sources[i] - 1] if i in sources else jnp.zeros(o.shape, o.dtype)
                    for i, o in enumerate(outs))
    results, _ = jax.lax.scan(one_step, initial, jnp.arange(time), reverse=reverse)
    return results


def fuse(w_t, bh):
    """``w_t (D, H, G*H)``, gate-major columns, laid out for the forward kernel: block ``j``'s
    columns ``j*4*bh:(j+1)*4*bh`` hold its units of each gate, gate by gate; a fourth gate
    of zeros pads the GRU's three. Returns ``(D, H, 4*H)``."""
    num_dirs, hidden, cols = w_t.shape
    gates = w_t.reshape(num_dirs, hidden, cols // hidden, hidden // bh, bh)
    if gates.shape[2] == 3:
        gates = jnp.pad(gates, ((0, 0), (0, 0), (0, 1), (0, 0), (0, 0)))
    return gates.transpose(0, 1, 3, 2, 4).reshape(num_dirs, hidden, 4 * hidden)


def forward(kind, plan_, lengths, xp, w_t, b_hn, h0, c0, *, dtype, precision, interpret,
            record=True):
    """Runs the forward kernel. Returns ``(hbuf, cbuf, acts, sync)`` (see the module doc);
    ``sync[:, 0]`` counts barriers that timed out (nonzero: the results are wrong). Without
    ``record`` (nothing to differentiate) ``acts`` is ``None`` and ``cbuf`` holds only the
    first and last states."""
    if plan_.half_exchange and dtype is None:
        raise ValueError("Plan.half_exchange exchanges h in the matmuls' half-precision "
                         "dtype; got dtype=None (float32)")
    time, num_dirs, batch, _ = xp.shape
    hidden = h0.shape[-1]
    w_t = fuse(w_t, plan_.bh)
    f32 = jax.ShapeDtypeStruct
    hbuf = jnp.zeros((time + 1, num_dirs, batch, hidden), jnp.float32).at[0].set(h0)
    cbuf = jnp.zeros_like(hbuf).at[0].set(c0)
    sync = _sync_buffer(plan_, num_dirs, hidden)
    acts = [f32((time, num_dirs, batch, 4 * hidden), jnp.float32)] if record else []
    outs = (f32(hbuf.shape, jnp.float32), f32(cbuf.shape, jnp.float32), *acts,
            f32(sync.shape, jnp.int32))
    last = len(outs) - 1  # sync
    aliases, carried, exchange = {5: 0, 6: 1, 7: last}, (0, 1, last), ()
    if plan_.half_exchange:  # slot 0: h_0, as the matmul casts it
        exchange = (jnp.zeros((2, *h0.shape), dtype).at[0].set(h0.astype(dtype)),)
        outs += (f32(exchange[0].shape, dtype),)
        aliases, carried = {**aliases, 8: last + 1}, (*carried, last + 1)
    kernel = functools.partial(_forward_kernel, kind=kind, plan_=plan_, hidden=hidden,
                               dtype=dtype, precision=precision, interpret=interpret)
    hbuf, cbuf, *acts, sync = _launch(
        kernel, plan_.grid(num_dirs, hidden), outs, aliases, plan_, interpret,
        time, carried, (2,) if record else (), False,
        lengths, xp, w_t, b_hn, hbuf, cbuf, sync, *exchange)[:last + 1]
    return hbuf, cbuf, (acts or [None])[0], sync


def backward(kind, plan_, lengths, w, acts, hbuf, cbuf, dh, dc_n, *, dtype, precision,
             interpret):
    """Runs the backward kernel over ``dh (T, D, B, H)``, the cotangent of every step's
    state, and ``dc_n (D, B, H)``. Returns ``(dm, dxn, d_pass, dc0, sync)``: ``dm (T, D, B,
    G*H)`` the recurrent matmuls' output cotangents, ``dxn (T, D, B, H)`` the GRU's ``n``
    input cotangent, and the carries' cotangents past step 0 (``d_pass`` still lacks
    ``dm[0] @ w_hh``)."""
    time, num_dirs, batch, hidden = dh.shape
    f32 = jax.ShapeDtypeStruct
    mbuf = jnp.zeros((time + 1, num_dirs, batch, GATES[kind] * hidden), jnp.float32)
    d_pass = jnp.zeros((num_dirs, batch, hidden), jnp.float32)
    sync = _sync_buffer(plan_, num_dirs, hidden)
    # Plan.scatter: each block's (B, H) share of dm @ w_hh, two steps' worth (the barrier
    # between them keeps a slot from being written before all have read it); the blocks
    # padded to a power of two with rows of zeros
    pbuf = jnp.zeros((2, num_dirs, _pow2_at_least(hidden // plan_.bh), batch, hidden)
                     if plan_.scatter else (1,) * 5, jnp.float32)
    outs = (f32(mbuf.shape, jnp.float32), f32(dh.shape, jnp.float32),
            f32(d_pass.shape, jnp.float32), f32(d_pass.shape, jnp.float32),
            f32(sync.shape, jnp.int32), f32(pbuf.shape, jnp.float32))
    kernel = functools.partial(_backward_kernel, kind=kind, plan_=plan_, hidden=hidden,
                               dtype=dtype, precision=precision, interpret=interpret)
    mbuf, dxn, d_pass, dc, sync, _ = _launch(
        kernel, plan_.grid(num_dirs, hidden), outs, {7: 0, 8: 4, 9: 2, 10: 3, 11: 5}, plan_,
        interpret, time, (0, 2, 3, 4, 5), (1,), True,
        lengths, w, acts, hbuf, cbuf, dh, mbuf, sync, d_pass, dc_n, pbuf)
    return mbuf[:time], dxn, d_pass, dc, sync
