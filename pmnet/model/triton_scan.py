"""The memory write's per-group prefix sum as one Triton kernel per direction (GPU fast path).

Same contract as ``scan.blocked_segmented_prefix_sum`` and its fp64 oracle
``reference.segmented_prefix_sum`` (docs/model.md section 3)::

    S_t = carried[g_t] + sum_{tau <= t, g_tau == g_t} delta_tau  (mod 2 pi),

new_state[g] = S at group g's last position (``carried[g]`` where no position has group g),
and ``mod`` has gradient 1. delta [B, T, D] fp32, group [B, T] int64 in [0, G) (not checked: an
out-of-range group would index out of bounds), carried [B, G, D] fp32.

Design. Torch sorts the positions by (group, position) (a stable sort of the [B, T] group ids
gives the permutation and the sorted ids, int32). One kernel, grid (B, D / BLOCK_D), walks the
sorted order of its batch row in chunks of BLOCK_T rows, one [BLOCK_T, BLOCK_D] tile at a time:
it gathers the rows ``delta[b, perm[i], d-block]`` (contiguous along D), adds ``carried[g]`` at
each group's first row and, at row 0, the running sum of the previous chunk where its group goes
on, scans the tile by group (``tl.associative_scan`` over (group id, sum) pairs: the ids are
sorted, so "same id as the left neighbour" makes it a segmented scan), stores S at position
``perm[i]`` and, at each group's last row, its state. The forward reads delta once and writes S
once; the [B, T] index tensors and the [B, G, D] states are small (L2 traffic).

The backward is the same kernel walking the sorted order backwards, on fp32: the gradient of S
plus ``d new_state[g]`` entering at each group's last row (the first one met backwards),
scanned by group, is ``d delta``; its value at each group's first row is ``d carried[g]``
(``d new_state[g]`` for empty groups). Forward and backward differ only in the direction, the
tensors given as ``init`` / ``last`` and the number format, so one kernel serves both.

Number format of the forward: fixed-point turns. Each angle becomes
``n = round(x * 2**32 / 2 pi) mod 2**32`` in an int32 (the product in fp64 with 2**32 / 2 pi
split into two fp32 constants, so it is exact to ~1e-16; rounded by adding 1.5 * 2**52 and
keeping the low mantissa bits). Integer sums are exact and wrap mod 2**32, which is mod 2 pi:
no reduction step, nothing grows, no rounding accumulates over the T / BLOCK_T chunks. Errors:
<= 2**-33 turn (7e-10 rad) per increment from the conversion (unbiased: ~1e-7 rad over 30,720
same-group increments, 2e-5 in the impossible worst case where all round the same way), plus
the final conversion of S to fp32 (<= 1 ulp of 2 pi, 4.8e-7 rad). The blocked fp32 scan is
off by ~1e-4 rad there. Accurate math only (no approximate instructions). A non-finite increment
gives NaN at its own position only (the integer sum cannot carry a NaN further; a model whose
increments are not finite has a non-finite hidden state, hence loss, anyway). |delta| must stay
below ~3e6 rad (the model's are below pi).

Expected cost at the 119M shapes (B = 8, T = 8192, D = 2048), not measured here
(``benchmarks/scan_kernel.py`` measures it and sweeps the block sizes on a GPU): each direction
reads and writes the [B, T, D] fp32 tensor once (512 MiB + 512 MiB, ~0.22 ms at 4.8 TB/s),
plus 16 bytes of indices per row and program from L2; the inductor blocked scan costs about
2.4 ms forward + backward. Compiled for sm_90 (on a CPU, ptxas of Triton 3.8), the defaults
(BLOCK_T = 64, BLOCK_D = 16, one warp, no pipelining: 1024 programs, 4 KiB tiles, so ~32 KiB of
loads in flight per SM) take ~50 instructions per element forward (4 of them fp64: the
conversion to turns) and ~30 backward, with ~160 registers and no spills, so the issue time
(~0.2 ms forward if the SMs issue every cycle) is close to the memory time; the scan's warp
shuffles (~5 per element) are the largest single item. BLOCK_D >= 32 with one warp
takes fewer instructions per element but makes fewer programs; more warps split the rows and
the scan then crosses warps through shared memory (~70 instructions per element);
``num_stages`` > 1 pipelines the loads through cp.async (~30% more instructions, more bytes in
flight). The kernel also runs under Triton's CPU interpreter (``TRITON_INTERPRET=1``), which is
how the CPU tests check it.
"""

from __future__ import annotations

import os
import struct

import torch
from torch import Tensor

try:  # triton ships with CUDA builds of torch; CPU-only installs may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on installs without triton
    triton = None

from pmnet.model.scan import TWO_PI

ENV_SWITCH = "PMNET_TRITON_SCAN"
"Set to 0 to fall back to the inductor-compiled blocked scan (A/B benchmarks); see also :func:`set_enabled`."
_STATE = {"enabled": os.environ.get(ENV_SWITCH, "1") != "0"}
BLOCK_T = 64
"Sorted rows per chunk (one sequential step of a program)."
BLOCK_D = 16
"Phases per program (64-byte row pieces)."
NUM_WARPS = 1
NUM_STAGES = 1
"Chunks whose loads are in flight at once (> 1: Triton's cp.async loop pipelining)."

# Phases as fixed-point fractions of a turn: n = round(x / 2 pi * 2**32) mod 2**32 in an int32.
# Integer sums are exact and wrap mod 2**32, i.e. mod 2 pi for free. 2**32 / 2 pi is split in
# two fp32 numbers so that x * _TURN_HI is exact in fp64 and the split's error is ~1e-16.


def _fp32(x: float) -> float:
    """x rounded to the nearest fp32 number."""
    return struct.unpack("f", struct.pack("f", x))[0]


_TURN = 2.0**32 / TWO_PI
_TURN_HI = _fp32(_TURN)
_TURN_LO = _fp32(_TURN - _TURN_HI)
_MAGIC = 1.5 * 2.0**52  # t + _MAGIC rounds t to an integer kept in the low mantissa bits (|t| < 2**51)

if triton is not None:  # kernels may read only constexpr globals
    _TURN_HI_K = tl.constexpr(_TURN_HI)
    _TURN_LO_K = tl.constexpr(_TURN_LO)
    _MAGIC_K = tl.constexpr(_MAGIC)
    _ANGLE_HI_K = tl.constexpr(TWO_PI / 2.0**16)  # the angle of one unit of the high / low 16 bits
    _ANGLE_LO_K = tl.constexpr(TWO_PI / 2.0**32)
    _TWO_PI_K = tl.constexpr(TWO_PI)


def set_enabled(enabled: bool) -> None:
    """Use the kernel where it applies (default: on unless ``PMNET_TRITON_SCAN=0``)."""
    _STATE["enabled"] = bool(enabled)


def available(delta: Tensor) -> bool:
    """Whether the kernel serves this scan: CUDA fp32 increments, triton present, not switched off."""
    return triton is not None and _STATE["enabled"] and delta.is_cuda and delta.dtype == torch.float32


if triton is not None:

    @triton.jit
    def _combine(key_a, sum_a, key_b, sum_b):
        """Segmented sum: b's running sum plus a's where both have the same group id.

        Associative on sorted group ids (a run of equal ids is contiguous)."""
        return key_b, sum_b + tl.where(key_a == key_b, sum_a, 0)

    @triton.jit
    def _to_turns(x):
        """fp32 angles -> int32 fixed-point turns, ``round(x * 2**32 / 2 pi) mod 2**32`` (error <= 1 unit)."""
        x = x.to(tl.float64)
        t = x * _TURN_HI_K + x * _TURN_LO_K  # the first product is exact (24 x 24 bits)
        return (t + _MAGIC_K).to(tl.int64, bitcast=True).to(tl.int32)  # low 32 bits = round(t) mod 2**32

    @triton.jit
    def _to_angle(n):
        """int32 turns (read as unsigned) -> fp32 angle in [0, 2 pi); 16-bit halves made exact by bit tricks."""
        hi = (((n >> 16) & 0xFFFF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0  # 2**23 + hi - 2**23
        lo = ((n & 0xFFFF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
        a = hi * _ANGLE_HI_K + lo * _ANGLE_LO_K
        return tl.where(a >= _TWO_PI_K, a - _TWO_PI_K, a)  # 2 pi (1 - 2**-32) rounds up to fp32(2 pi)

    @triton.jit
    def _scan_kernel(
        x_ptr, perm_ptr, key_ptr, init_ptr, out_ptr, last_ptr, T, G, D,
        REVERSE: tl.constexpr, PHASE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
        STAGES: tl.constexpr,
    ):  # fmt: skip
        """One (batch row, D block): walk the sorted rows (backwards if REVERSE) in chunks of BLOCK_T.

        x, out [B, T, D] fp32 in position order; perm, key [B, T] int32 (sorted order); init, last
        [B, G, D]: ``init[g]`` enters at the first row of group g met, ``last[g]`` (fp32) is written
        at the last one (it holds the fp32 init beforehand, for groups with no row). PHASE: x are
        angles summed in int32 turns (``init`` in turns too), else plain fp32 sums."""
        b = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        cmask = cols < D
        rows = tl.arange(0, BLOCK_T)
        row_base = b * T
        if PHASE:
            run = tl.zeros([BLOCK_D], dtype=tl.int32)  # the running sum at the previous chunk's last row
        else:
            run = tl.zeros([BLOCK_D], dtype=tl.float32)
        for c0 in tl.range(0, T, BLOCK_T, num_stages=STAGES):  # STAGES > 1: loads run ahead (cp.async)
            j = c0 + rows  # processing index
            valid = j < T
            if REVERSE:
                s = T - 1 - j
                before = s + 1  # the sorted row processed just before this one
                after = s - 1
            else:
                s = j
                before = s - 1
                after = s + 1
            p = tl.load(perm_ptr + row_base + s, mask=valid, other=0)
            key = tl.load(key_ptr + row_base + s, mask=valid, other=-1)
            key_before = tl.load(key_ptr + row_base + before, mask=valid & (before >= 0) & (before < T), other=-1)
            key_after = tl.load(key_ptr + row_base + after, mask=valid & (after >= 0) & (after < T), other=-1)
            first = key != key_before  # the group's first row in processing order
            final = valid & (key != key_after)  # and its last
            mask = valid[:, None] & cmask[None, :]
            x_off = (row_base + p)[:, None] * D + cols[None, :]  # int64
            g_off = (b * G + key)[:, None] * D + cols[None, :]
            x = tl.load(x_ptr + x_off, mask=mask, other=0.0)
            init = tl.load(init_ptr + g_off, mask=mask & first[:, None], other=0)
            go_on = ((rows == 0) & ~first)[:, None]  # row 0 continues the previous chunk's group
            if PHASE:
                v = _to_turns(x)
            else:
                v = x
            v = v + tl.where(go_on, run[None, :], init)
            keys = tl.broadcast_to(key[:, None], [BLOCK_T, BLOCK_D])
            _, v = tl.associative_scan((keys, v), 0, _combine)
            if PHASE:
                # a non-finite increment shows at its own position (its turns are garbage, not NaN)
                val = _to_angle(v) + (x - x)
            else:
                val = v
            tl.store(out_ptr + x_off, val, mask=mask)
            tl.store(last_ptr + g_off, val, mask=mask & final[:, None])
            run = tl.sum(tl.where((rows == BLOCK_T - 1)[:, None], v, 0), axis=0)  # exact: one term and zeros


def to_turns(x: Tensor) -> Tensor:
    """fp32 angles -> int32 fixed-point turns (``round(x * 2**32 / 2 pi) mod 2**32``, two's complement), in torch."""
    n = torch.remainder(torch.round(x.double() * _TURN), 2.0**32)
    return torch.where(n >= 2.0**31, n - 2.0**32, n).to(torch.int32)


def _check(x: Tensor, perm: Tensor, key: Tensor, init: Tensor) -> tuple[int, int, int, int]:
    b, t, d = x.shape
    g = init.shape[1]
    if perm.shape != (b, t) or key.shape != (b, t) or init.shape != (b, g, d):
        raise ValueError(
            f"segmented scan: delta {tuple(x.shape)}, perm {tuple(perm.shape)}, groups {tuple(key.shape)}, "
            f"carried {tuple(init.shape)} (want [B, T, D], [B, T], [B, T], [B, G, D])"
        )
    return b, t, d, g


if triton is not None:
    from torch.library import triton_op, wrap_triton

    # Triton chose interpreted or compiled kernels when it defined them (above, at import).
    _INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

    def _launcher(kernel):
        """``wrap_triton`` (traceable by torch.compile), except under Triton's CPU interpreter,
        whose kernels older torch (2.11) refuses to wrap; nothing compiles there anyway."""
        return kernel if _INTERPRETED else wrap_triton(kernel)

    def _run(x: Tensor, perm: Tensor, key: Tensor, init: Tensor, phase: bool, blocks: tuple[int, int, int, int]):
        b, t, d, g = _check(x, perm, key, init)
        x, init = x.float().contiguous(), init.float().contiguous()
        out = torch.empty_like(x)
        last = init.clone()  # groups with no row keep init
        block_t, block_d, warps, stages = blocks
        _launcher(_scan_kernel)[(b, triton.cdiv(d, block_d))](
            x, perm.contiguous(), key.contiguous(), to_turns(init) if phase else init, out, last, t, g, d,
            REVERSE=not phase, PHASE=phase, BLOCK_T=block_t, BLOCK_D=block_d, STAGES=stages, num_warps=warps,
        )  # fmt: skip
        return out, last

    @triton_op("pmnet::segmented_phase_scan", mutates_args=())
    def segmented_phase_scan(
        delta: Tensor,
        perm: Tensor,
        key: Tensor,
        carried: Tensor,
        block_t: int,
        block_d: int,
        num_warps: int,
        num_stages: int,
    ) -> tuple[Tensor, Tensor]:
        """(S [B, T, D], new state [B, G, D]) from delta [B, T, D], the sorting permutation and
        sorted group ids [B, T] int32, carried [B, G, D] (all fp32)."""
        return _run(delta, perm, key, carried, True, (block_t, block_d, num_warps, num_stages))

    @triton_op("pmnet::segmented_phase_scan_backward", mutates_args=())
    def segmented_phase_scan_backward(
        grad: Tensor,
        grad_state: Tensor,
        perm: Tensor,
        key: Tensor,
        block_t: int,
        block_d: int,
        num_warps: int,
        num_stages: int,
    ) -> tuple[Tensor, Tensor]:
        """(d delta [B, T, D], d carried [B, G, D]) from d S and d new state."""
        return _run(grad, perm, key, grad_state, False, (block_t, block_d, num_warps, num_stages))

    def _setup_context(ctx, inputs, output) -> None:
        delta, perm, key, carried, *blocks = inputs
        ctx.save_for_backward(perm, key)
        ctx.shapes = (delta.shape, carried.shape)
        ctx.blocks = blocks

    def _backward(ctx, grad: Tensor | None, grad_state: Tensor | None):
        perm, key = ctx.saved_tensors
        x_shape, g_shape = ctx.shapes
        if grad is None:
            grad = torch.zeros(x_shape, device=perm.device)
        if grad_state is None:
            grad_state = torch.zeros(g_shape, device=perm.device)
        d_delta, d_carried = segmented_phase_scan_backward(grad, grad_state, perm, key, *ctx.blocks)
        return d_delta, None, None, d_carried, None, None, None, None

    segmented_phase_scan.register_autograd(_backward, setup_context=_setup_context)


def segmented_prefix_sum(
    delta: Tensor,
    group: Tensor,
    carried: Tensor,
    block_t: int = BLOCK_T,
    block_d: int = BLOCK_D,
    num_warps: int = NUM_WARPS,
    num_stages: int = NUM_STAGES,
) -> tuple[Tensor, Tensor]:
    """Inclusive per-group prefix sum of ``delta`` plus the carried group state, mod 2 pi (the kernel).

    delta [B, T, D] fp32, group [B, T] int64 in [0, G), carried [B, G, D] fp32 -> (S [B, T, D] in
    [0, 2 pi), new group states [B, G, D]); the contract of ``reference.segmented_prefix_sum``.
    Block sizes: powers of two (see the module docstring for the defaults).
    """
    if triton is None:
        raise RuntimeError("the Triton scan needs triton (see triton_scan.available)")
    key, perm = torch.sort(group, dim=1, stable=True)  # sorted by (group, position)
    return segmented_phase_scan(
        delta.float(),
        perm.to(torch.int32),
        key.to(torch.int32),
        carried.float(),
        block_t,
        block_d,
        num_warps,
        num_stages,
    )
