"""Slow, obvious phasor memory (docs/model.md sections 3-4): the test oracles of the fast path.

Everything here is written the way the equations read: the phase-space scores through
explicit differences ``cos(q - key)``, and the per-group recurrence as a plain loop over
positions that keeps one running sum per group (reduced mod 2 pi at every step, which is
also exactly what streaming one byte at a time does). Nothing here is meant to be fast.

:func:`segmented_prefix_sum` is the exact (fp64) oracle of the fast path's blocked fp32
scan (``scan.blocked_segmented_prefix_sum``).

Shape letters: B batch, T bytes, d hidden, N slots, M phases, R read heads, G = N**k groups.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor, nn

from pmnet.model.scan import TWO_PI
from pmnet.model.state import WriteResult


class WriteModule(Protocol):
    """What the writes read of their module (``memory.PhasorMemoryWrite``)."""

    @property
    def norm(self) -> nn.Module: ...
    @property
    def proj_q(self) -> nn.Linear: ...
    @property
    def proj_k(self) -> nn.Linear: ...
    @property
    def proj_v(self) -> nn.Linear: ...
    @property
    def proj_out(self) -> nn.Linear: ...


class ReadModule(Protocol):
    """What the reads read of their module (``memory.PhasorMemoryRead``)."""

    @property
    def num_heads(self) -> int: ...
    @property
    def norm(self) -> nn.Module: ...
    @property
    def proj_q(self) -> nn.Linear: ...
    @property
    def proj_kv(self) -> nn.Linear: ...
    @property
    def proj_out(self) -> nn.Linear: ...


def phase_features(phi: Tensor) -> Tensor:
    """``[sin phi, cos phi]`` along the last dim: [..., M] -> [..., 2M] (fp32)."""
    return torch.cat([torch.sin(phi), torch.cos(phi)], dim=-1)


def write_reference(
    mod: WriteModule,
    h: Tensor,
    phi: Tensor,
    group: Tensor,
    carried: Tensor,
    *,
    cumsum: bool,
    training: bool,
) -> WriteResult:
    """One memory write, position by position.

    h [B, T, d]; phi [B, T, N, M] fp32 (= Phi + anchors of the current group);
    group [B, T] level-k group ids; carried [B, G, N, M] fp32 group states.
    """
    b, t, n, m = phi.shape
    x = mod.norm(h)
    q = math.pi * torch.tanh(mod.proj_q(x).float())  # [B, T, M]
    theta = math.pi * torch.tanh(mod.proj_out(mod.proj_v(x)).float())  # [B, T, M]
    w_dtype = mod.proj_k.weight.dtype
    key = math.pi * torch.tanh(mod.proj_k(phase_features(phi).to(w_dtype)).float())  # [B, T, N, M]

    # c: how many positions of this sequence share t's group (for the 1/sqrt(c) gradient scale)
    same = group[:, :, None] == group[:, None, :]  # [B, T, T]
    count = same.sum(-1).float()  # [B, T]

    rows = torch.arange(b, device=h.device)
    state = carried.float()  # [B, G, N, M]
    s_list, delta_list, out_list = [], [], []
    for i in range(t):
        score = torch.cos(q[:, i, None, :] - key[:, i]).sum(-1) / math.sqrt(m)  # [B, N]
        s = torch.softmax(score, dim=-1)
        delta = s[:, :, None] * theta[:, i, None, :]  # [B, N, M]
        if training:
            scale = count[:, i].rsqrt()[:, None, None]
            delta = delta.detach() + (delta - delta.detach()) * scale
        if cumsum:
            new = torch.remainder(state[rows, group[:, i]] + delta, TWO_PI)  # [B, N, M]
        else:
            new = torch.remainder(delta, TWO_PI)
        state = state.index_put((rows, group[:, i]), new)  # out of place: autograd sees every step
        s_list.append(s)
        delta_list.append(delta.detach())
        out_list.append(new)
    s_all = torch.stack(s_list, dim=1)  # [B, T, N]
    S = torch.stack(out_list, dim=1)  # [B, T, N, M]
    choice = s_all.detach().argmax(-1)
    return WriteResult(
        phi_increment=S,
        child_group=group * n + choice,
        group_state=state,
        probs=s_all.detach(),
        delta=torch.stack(delta_list, dim=1),
    )


def read_reference(mod: ReadModule, h: Tensor, phi: Tensor) -> Tensor:
    """One memory read with explicit phase differences; h [B, T, d], phi [B, T, N, M] -> [B, T, d]."""
    b, t, n, m = phi.shape
    r = mod.num_heads
    x = mod.norm(h)
    q = (math.pi * torch.tanh(mod.proj_q(x).float())).view(b, t, r, m)  # [B, T, R, M]
    kv = mod.proj_kv(phase_features(phi).to(mod.proj_kv.weight.dtype)).float()  # [B, T, N, 2RM]
    key = (math.pi * torch.tanh(kv[..., : r * m])).view(b, t, n, r, m)  # [B, T, N, R, M]
    val = kv[..., r * m :].reshape(b, t, n, r, m)  # [B, T, N, R, M]
    score = torch.cos(q[:, :, None] - key).sum(-1) / math.sqrt(m)  # [B, T, N, R]
    a = torch.softmax(score, dim=2)  # over the N slots
    out = (a[..., None] * val).sum(2)  # [B, T, R, M]
    return mod.proj_out(out.reshape(b, t, r * m).to(mod.proj_out.weight.dtype))


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
