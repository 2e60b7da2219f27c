"""Per-group inclusive prefix sum of phase increments in fp32, with static shapes (compilable).

docs/model.md section 3: ``S_t = carried[g_t] + sum_{tau <= t, g_tau == g_t} delta_tau  (mod 2 pi)``.

``reference.segmented_prefix_sum`` (the oracle) does this with one fp64 cumsum over the whole
(group-sorted) sequence: partial sums grow to T x pi, so fp32 would lose about 1e-3 rad at
T = 32k, and inductor cannot compile the fp64 gather kernels it needs. Here the cumsum is
blocked so that no fp32 number ever grows large:

1. sort the positions by (group, position) (a stable argsort of ``g * T + t``, static shape);
2. inclusive cumsum inside blocks of ``block`` sorted positions: |L| <= block x pi;
3. the block totals, reduced mod 2 pi, get an exclusive prefix sum over blocks, itself
   computed the same way (blocked, reduced mod 2 pi at every level), so it stays < 2 pi x
   ``block``;
4. a position's segmented sum is ``(E[blk(i)] - E[blk(s-1)]) + (L(i) - L(s-1))`` with s its
   group's first sorted index: inside one block the E terms cancel exactly, so most
   positions see only the rounding of a short local cumsum.

Error against the fp64 scan (tests/model/test_fast_path.py): ~1e-5 rad at T = 1000; at an
evaluation chunk of T = 30,720 about 1e-4 rad for increments of random sign and 3e-4 rad
worst case for same-sign increments of ~2.4 rad (partial sums grow fastest). The fp32
per-step reference loop rounds at every one of its T steps, so it is no more exact.
Gradients flow through gathers and cumsums; ``remainder`` has gradient 1, as in the reference.

On the GPU with fp32 increments, ``fused.scan_core`` runs ``triton_scan.segmented_prefix_sum``
instead (same contract, one kernel per direction, exact fixed-point sums); this function stays
the path everywhere else and the kernel's comparison in the tests and the benchmark.

Shape letters: B batch, T positions, D = N x M flattened phases, G groups, C block.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TWO_PI = 2.0 * math.pi
DEFAULT_BLOCK = 32  # worst case at T = 30k: 3e-4 rad (64: 5.6e-4, 16: 2.5e-4); cost is flat in the block
# 2 pi split Cody-Waite style: _C1 has 8 significant bits, so k * _C1 is exact in fp32 for
# |k| < 2**16, and x - k * _C1 is exact (Sterbenz); fp32(2 pi) alone is 1.7e-7 too large,
# an error that a long scan would pick up once per wrap (2e-3 rad after 12k wraps).
_C1 = 6.28125
_C2 = 2.0 * math.pi - _C1


def mod_2pi(x: Tensor) -> Tensor:
    """``x mod 2 pi`` in [0, 2 pi) for fp32 x of moderate size (|x| < 2**16 x 2 pi); gradient 1."""
    k = torch.floor(x * (1.0 / TWO_PI)).detach()
    r = (x - k * _C1) - k * _C2
    # x / 2 pi can round across an integer: fold the few results just outside the range back
    r = torch.where(r < 0, r + TWO_PI, r)
    return torch.where(r >= TWO_PI, r - TWO_PI, r)


def _exclusive_mod_prefix(tot: Tensor, block: int) -> Tensor:
    """Exclusive prefix sum over dim 1 of ``tot`` [B, n, D] (entries in [0, 2 pi)), mod 2 pi.

    Recursive blocking keeps every fp32 partial sum below 2 pi x ``block``.
    """
    b, n, dim = tot.shape
    if n <= block:
        return mod_2pi(tot.cumsum(1) - tot)
    nb = -(-n // block)
    padded = torch.nn.functional.pad(tot, (0, 0, 0, nb * block - n))  # zero totals at the end
    xb = padded.view(b, nb, block, dim)
    local = xb.cumsum(2)  # [B, nb, C, D] inclusive, < 2 pi x C
    local_excl = local - xb
    outer = _exclusive_mod_prefix(mod_2pi(local[:, :, -1]), block)  # [B, nb, D]
    out = mod_2pi(outer[:, :, None] + local_excl)
    return out.view(b, nb * block, dim)[:, :n]


def blocked_segmented_prefix_sum(
    delta: Tensor, group: Tensor, carried: Tensor, block: int = DEFAULT_BLOCK
) -> tuple[Tensor, Tensor]:
    """Inclusive per-group prefix sum of ``delta`` plus the carried group state, mod 2 pi, in fp32.

    delta [B, T, D] fp32, group [B, T] int64 in [0, G), carried [B, G, D] fp32.
    Returns (S [B, T, D] in [0, 2 pi), new group states [B, G, D]: S at each group's last
    position, the carried value for groups that no position reached). Same contract as
    ``reference.segmented_prefix_sum``.
    """
    b, t, dim = delta.shape
    g_count = carried.shape[1]
    dev = delta.device
    pos = torch.arange(t, device=dev)
    perm = torch.argsort(group * t + pos, dim=1)  # [B, T]; keys are unique, so the order is stable
    inv = torch.argsort(perm, dim=1)  # sorted index of each position (the inverse permutation)
    g_sorted = group.gather(1, perm)  # [B, T] non-decreasing
    x = delta.float().gather(1, perm[..., None].expand(b, t, dim))  # [B, T, D]

    nb = -(-t // block)
    tp = nb * block
    xb = torch.nn.functional.pad(x, (0, 0, 0, tp - t)).view(b, nb, block, dim)
    local = xb.cumsum(2).view(b, tp, dim)  # inclusive within the block, |.| <= C x pi
    # block totals from a (pairwise) sum, not the cumsum's last entry: rounding of the totals is
    # what accumulates over blocks, and a tree sum rounds less than a running one
    excl = _exclusive_mod_prefix(mod_2pi(xb.sum(2)), block)  # [B, nb, D]

    counts = torch.zeros(b, g_count, dtype=torch.int64, device=dev).scatter_add(1, group, torch.ones_like(group))
    starts = counts.cumsum(1) - counts  # [B, G] first sorted index of each group
    seg_start = starts.gather(1, g_sorted)  # [B, T]
    prev = (seg_start - 1).clamp(min=0)  # sorted index just before the segment
    has_prev = (seg_start > 0)[..., None]
    # E of each sorted position's block, by broadcasting (no index arithmetic: inductor's CPU
    # backend miscompiled ``arange(T) // block`` as a gather index in training graphs)
    e_full = excl[:, :, None, :].expand(b, nb, block, dim).reshape(b, tp, dim)
    e_here = e_full[:, :t]
    e_prev = e_full.gather(1, prev[..., None].expand(b, t, dim))
    l_here = local[:, :t]
    l_prev = local.gather(1, prev[..., None].expand(b, t, dim))
    zero = torch.zeros((), dtype=x.dtype, device=dev)
    # Exactly 0 when the segment starts inside this block (the E terms are the same float).
    seg = (e_here - torch.where(has_prev, e_prev, zero)) + (l_here - torch.where(has_prev, l_prev, zero))
    s_sorted = mod_2pi(seg + carried.float().gather(1, g_sorted[..., None].expand(b, t, dim)))

    out = s_sorted.gather(1, inv[..., None].expand(b, t, dim))  # back to position order
    ends = (starts + counts - 1).clamp(min=0)  # [B, G] last sorted index of each group
    last = s_sorted.gather(1, ends[..., None].expand(b, g_count, dim))
    new_state = torch.where((counts > 0)[..., None], last, carried.float())
    return out, new_state
