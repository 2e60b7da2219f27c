"""Fast phasor memory (MODEL.md sections 3-4), checked against ``reference.py`` by the tests.

``write_fast`` / ``read_fast`` take the modules and hand their tensors to the pure functions
of ``fused.py`` (compiled once for all layers when ``fused.set_compiled(True)``):

* Phase-space scores through ``sum_j cos(a_j - b_j) = cos a . cos b + sin a . sin b``
  (``phase_scores`` here: two matmuls in eager; one fused reduction when compiled), so no
  ``[B, T, R, N, M]`` difference tensor is built.
* The read's value half runs once per head on the attention-weighted features (it is
  linear, and the softmax sums to 1): see ``fused.read_core``.
* The per-group inclusive prefix sum is ``scan.blocked_segmented_prefix_sum``: fp32, static
  shapes, blocked so partial sums stay small. ``segmented_prefix_sum`` below (one fp64
  cumsum) is kept as its exact oracle for the tests; inductor cannot compile it.

Phase math (anchors, sin/cos, scores, the scan) is fp32 or wider whatever the compute
dtype; the projections run in the weights' dtype (bf16 in mixed-precision training).

Shape letters: B batch, T bytes, d hidden, N slots, M phases, R read heads, G = N**k groups,
D = N * M (the flattened phases of one group).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from pmnet.model.memory import PhasorMemoryRead, PhasorMemoryWrite, WriteResult

TWO_PI = 2.0 * math.pi


def _no_autocast_bmm(a: Tensor, b: Tensor) -> Tensor:
    """fp32 matmul even inside an autocast region (phase scores must stay fp32)."""
    if a.device.type != "meta" and torch.is_autocast_enabled(a.device.type):
        with torch.autocast(device_type=a.device.type, enabled=False):
            return torch.matmul(a.float(), b.float())
    return torch.matmul(a, b)


def phase_scores(q: Tensor, key: Tensor) -> Tensor:
    """``sum_j cos(q_j - key_n,j)`` for every slot n, as matmuls.

    q [..., M] and key [..., N, M] (same leading dims, fp32) -> [..., N]. Two products
    (cos.cos + sin.sin) rather than one over concatenated features: no [..., N, 2M] copy.
    """
    qc, qs = torch.cos(q).unsqueeze(-1), torch.sin(q).unsqueeze(-1)  # [..., M, 1]
    out = _no_autocast_bmm(torch.cos(key), qc) + _no_autocast_bmm(torch.sin(key), qs)  # [..., N, 1]
    return out.squeeze(-1)


def segmented_prefix_sum(delta: Tensor, group: Tensor, carried: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive prefix sum of ``delta`` within each group, plus the group's carried state, mod 2 pi.

    delta [B, T, D] fp32, group [B, T] int64 in [0, G), carried [B, G, D] fp32.
    Returns S [B, T, D] fp32 in [0, 2 pi) and the new group states [B, G, D] (the value of S
    at each group's last position; the carried value for groups no position reached).

    Static shapes only: a stable ordering by (group, position) is an argsort of
    ``group * T + t``; one cumsum over the sorted sequence; each position subtracts the
    running total where its group's segment starts (found from per-group counts).
    """
    b, t, dim = delta.shape
    g_count = carried.shape[1]
    pos = torch.arange(t, device=delta.device)
    perm = torch.argsort(group * t + pos, dim=1)  # [B, T]
    g_sorted = group.gather(1, perm)  # [B, T] non-decreasing
    d_sorted = delta.gather(1, perm[..., None].expand(b, t, dim)).double()  # [B, T, D]
    csum = d_sorted.cumsum(dim=1)  # [B, T, D] fp64
    counts = torch.zeros(b, g_count, dtype=torch.int64, device=delta.device)
    counts = counts.scatter_add(1, group, torch.ones_like(group))  # [B, G]
    starts = counts.cumsum(1) - counts  # [B, G] first sorted index of each group
    seg_start = starts.gather(1, g_sorted)  # [B, T]
    before = (csum - d_sorted).gather(1, seg_start[..., None].expand(b, t, dim))  # running total before the segment
    s_sorted = csum - before + carried.double().gather(1, g_sorted[..., None].expand(b, t, dim))
    s_sorted = torch.remainder(s_sorted, TWO_PI)  # [B, T, D] fp64
    out = torch.zeros_like(s_sorted).scatter(1, perm[..., None].expand(b, t, dim), s_sorted).float()
    ends = (starts + counts - 1).clamp(min=0)  # [B, G] last sorted index of each group
    last = s_sorted.gather(1, ends[..., None].expand(b, g_count, dim)).float()
    new_state = torch.where((counts > 0)[..., None], last, carried.float())
    return out, new_state


def write_fast(
    mod: PhasorMemoryWrite,
    h: Tensor,
    phi: Tensor,
    group: Tensor,
    carried: Tensor,
    *,
    cumsum: bool,
    training: bool,
    anchor: Tensor | None = None,
) -> WriteResult:
    """Vectorised memory write; same arguments and result as ``reference.write_reference``.

    ``anchor`` (E_k[g], [B, T, N, M] fp32) is added to ``phi`` inside the fused write when given.
    """
    from pmnet.model import fused
    from pmnet.model.memory import WriteResult

    b, t, n, m = phi.shape
    w = (mod.proj_q, mod.proj_k, mod.proj_v, mod.proj_out)
    params = [p for lin in w for p in (lin.weight, lin.bias)]
    s, delta = fused.run("write", h, phi, anchor, mod.norm.weight, *params, mod.norm.eps)
    if cumsum:
        S, state = fused.run("scan", delta, group, carried, training)
    else:
        # no recurrence: S = delta (the 1/sqrt(c) gradient scale still applies in training)
        S = torch.remainder(_grad_scaled(delta, group, carried.shape[1]) if training else delta, TWO_PI)
        # the state still records S at each group's last position (unused by the recurrence)
        vals, present = _last_of_group(S.reshape(b, t, n * m), group, carried.shape[1])
        state = torch.where(present[..., None], vals, carried.reshape(b, -1, n * m)).view(carried.shape)
    choice = s.detach().argmax(-1)  # [B, T]
    return WriteResult(
        phi_increment=S, child_group=group * n + choice, group_state=state, probs=s.detach(), delta=delta.detach()
    )


def _grad_scaled(delta: Tensor, group: Tensor, g_count: int) -> Tensor:
    """delta with its gradient divided by sqrt(c), c = positions of the sequence in the same group."""
    b = delta.shape[0]
    counts = torch.zeros(b, g_count, dtype=delta.dtype, device=delta.device)
    counts = counts.scatter_add(1, group, torch.ones_like(delta[..., 0, 0]))  # [B, G]
    scale = counts.gather(1, group).rsqrt()[..., None, None]  # [B, T, 1, 1]
    return delta.detach() + (delta - delta.detach()) * scale


def _last_of_group(x: Tensor, group: Tensor, g_count: int) -> tuple[Tensor, Tensor]:
    """x [B, T, D] at the last position of each group -> ([B, G, D], present [B, G])."""
    b, t, dim = x.shape
    pos = torch.arange(t, device=x.device).expand(b, t)
    last = torch.full((b, g_count), -1, dtype=torch.int64, device=x.device).scatter_reduce(
        1, group, pos, reduce="amax", include_self=True
    )
    vals = x.gather(1, last.clamp(min=0)[..., None].expand(b, g_count, dim))
    return vals, last >= 0


def read_fast(mod: PhasorMemoryRead, h: Tensor, phi: Tensor) -> Tensor:
    """Vectorised memory read; h [B, T, d], phi [B, T, N, M] fp32 -> [B, T, d]."""
    _, feats = level_inputs(phi, None, None, mod.proj_kv.weight.dtype)
    return read_fast_features(mod, h, feats)


def read_fast_features(mod: PhasorMemoryRead, h: Tensor, feats: Tensor) -> Tensor:
    """The read from precomputed slot features (:func:`level_inputs`): feats [B, T, N, 2M] -> [B, T, d]."""
    from pmnet.model import fused

    lin = (mod.proj_q, mod.proj_kv, mod.proj_out)
    params = [p for x in lin for p in (x.weight, x.bias)]
    return fused.run("read", h, feats, mod.norm.weight, *params, mod.norm.eps, mod.num_heads)


def level_inputs(
    phase: Tensor, increment: Tensor | None, anchor: Tensor | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``(Phi + S, features of Phi + S + E_k[g])`` in one fused pass (``fused.level_core``)."""
    from pmnet.model import fused

    return fused.run("level", phase, increment, anchor, dtype)
