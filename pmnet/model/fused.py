"""The fast path's memory read and write as pure tensor functions ("cores"), optionally torch.compile'd.

Layering: ``scan.py`` (the blocked fp32 prefix sum), ``triton_scan.py`` / ``triton_scores.py``
(GPU kernels) <- this file (the cores) <-
``memory.py`` (the modules: they unpack their weights and call :func:`cores`) <-
``modeling.py``. The slow oracles of everything here live in ``reference.py``.

Why pure functions of tensors (weights passed in, no modules): ``torch.compile`` guards a
module argument on its identity, so compiling a read of the module would compile once per
layer (12 times); a function of tensors compiles once per shape and is shared by every
layer. ``fullgraph=True``: nothing in here breaks a graph (static shapes, fp32 scan).
Whether a model runs the compiled cores is the model's switch
(``PMNetForCausalLM.compile_memory_cores``), read by its memory modules; the compiled
functions themselves are made once per process (:func:`cores`) and shared by all models.

Math is docs/model.md sections 3-4, unchanged; three rewrites make it cheap:

* Scores never materialise [B, T, R, N, M]: eager, through
  ``sum_j cos(q_j - k_j) = cos q . cos k + sin q . sin k`` as matmuls
  (:func:`phase_scores`); compiled, as one fused reduction of ``cos(q - k)`` that reads
  the key projection once (fewest transcendentals; see ``phase_scores_fused``); for bf16 keys
  on the GPU, one Triton kernel per direction with tanh folded in (``triton_scores``).
* The read's value half is linear: ``sum_n a_rn (Wv_r f_n + bv_r) = Wv_r (sum_n a_rn f_n) + bv_r``
  (the softmax sums to 1), so the value projection runs once per head on the
  attention-weighted features ``g_r = sum_n a_rn f_n`` instead of on every slot: the read
  projection on the N slots shrinks from 2RM to RM outputs, and the value half costs
  R x 2M x M per byte instead of N x 2M x RM; where that saves products (d < 2M, the 119M
  model) it is folded into the output projection (``value_out_weights``: one [d, R x 2M] GEMM
  per byte). The interchange weights are unchanged:
  ``proj_kv.weight`` rows [0, RM) are the key half, rows [RM, 2RM) the value half
  (head r's values are rows RM + rM .. RM + (r+1)M).
* The P reads of a level see the same angles ``Phi + S + E_k[g]``: ``level_core`` computes
  their slot features once per level, fused with ``Phi + S``, and the reads take the features
  (``read_core``); the write adds its anchors inside its own graph (``write_core``). No
  [B, T, N, M] fp32 sum round-trips through memory between graphs in forward.

The per-group inclusive prefix sum is ``scan.blocked_segmented_prefix_sum`` (fp32, static
shapes, blocked so partial sums stay small); on the GPU (fp32 increments) one Triton kernel
per direction (``triton_scan``: reads the increments once, writes S once, sums in fixed-point
turns). Its exact oracle is the fp64 ``reference.segmented_prefix_sum``, which inductor cannot
compile.

Precision: phase arithmetic (anchors + state, sin/cos, scores, softmax, the scan) is fp32;
matmul inputs are cast to the weights' dtype (bf16 in training); the phase features enter
the projections in that dtype, as in the reference.

Shape letters: B batch, T bytes, d hidden, N slots, M phases, R read heads, G groups,
D = N * M (the flattened phases of one group).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pmnet.model import triton_scan, triton_scores
from pmnet.model.scan import TWO_PI, blocked_segmented_prefix_sum


def _no_autocast_bmm(a: Tensor, b: Tensor) -> Tensor:
    """fp32 matmul even inside an autocast region (phase scores must stay fp32)."""
    if a.device.type != "meta" and torch.is_autocast_enabled(a.device.type):
        with torch.autocast(device_type=a.device.type, enabled=False):
            return torch.matmul(a.float(), b.float())
    return torch.matmul(a, b)


def phase_scores(q: Tensor, key: Tensor) -> Tensor:
    """``sum_j cos(q_j - key_n,j)`` for every slot n, as matmuls (the eager form).

    q [..., M] and key [..., N, M] (same leading dims, fp32) -> [..., N]. Two products
    (cos.cos + sin.sin) rather than one over concatenated features: no [..., N, 2M] copy.
    """
    qc, qs = torch.cos(q).unsqueeze(-1), torch.sin(q).unsqueeze(-1)  # [..., M, 1]
    out = _no_autocast_bmm(torch.cos(key), qc) + _no_autocast_bmm(torch.sin(key), qs)  # [..., N, 1]
    return out.squeeze(-1)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Same arithmetic as ``layers.RMSNorm``: fp32 statistics, result in x's dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (weight.float() * xf).to(x.dtype)


def phase_features(phi: Tensor, dtype: torch.dtype) -> Tensor:
    """``[sin phi, cos phi]`` (fp32 math) cast to the projection dtype: [..., M] -> [..., 2M]."""
    return torch.cat([torch.sin(phi), torch.cos(phi)], dim=-1).to(dtype)


def phase_scores_fused(q: Tensor, key: Tensor) -> Tensor:
    """``sum_j cos(q_j - key_n,j)``: q [..., M], key [..., N, M] fp32 -> [..., N].

    Compiled: the difference form itself, fused into one reduction (the [..., N, M]
    differences live only in registers). The H200 profile showed this kernel bound by
    accurate fp32 transcendentals, not memory: the identity form costs cos and sin of the
    key plus cos and sin of q (recomputed per slot), i.e. 4 per element besides tanh; the
    difference form costs 1 (and 1 sin in backward). Eager: the identity as two matmuls,
    which avoids materialising the differences.
    """
    if torch.compiler.is_compiling():
        return torch.cos(q.unsqueeze(-2) - key).sum(-1)
    return phase_scores(q, key)


def tanh_key_scores(q_pre: Tensor, k_pre: Tensor, heads: int) -> Tensor:
    """``sum_j cos(pi tanh(q_pre_r,j) - pi tanh(k_pre_n,rM+j))``: the query and key projections' outputs,
    q_pre [..., R*M] and k_pre [..., N, R*M] -> [..., R, N] fp32.

    bf16 / fp16 keys on the GPU: one Triton kernel each way (``triton_scores``), which squashes
    both; otherwise both are squashed in fp32 and scored by :func:`phase_scores_fused`.
    """
    if triton_scores.available(k_pre):
        return triton_scores.fused_scores(q_pre, k_pre, heads)
    *lead, n, rm = k_pre.shape
    m = rm // heads
    q = (math.pi * torch.tanh(q_pre.float())).view(*lead, heads, m)  # [..., R, M]
    key = (math.pi * torch.tanh(k_pre.float())).view(*lead, n, heads, m).transpose(-3, -2)
    return phase_scores_fused(q, key)  # [..., R, N]


def weighted_features(a: Tensor, feats: Tensor) -> Tensor:
    """``g_r = sum_n a_rn f_n``: a [B, T, R, N] fp32, feats [B, T, N, 2M] -> [B, T, R, 2M] fp32.

    Compiled: one fused reduction over the N slots (the features read in their projection
    dtype, widened in registers, never stored in fp32); eager: a batched matmul.
    """
    if torch.compiler.is_compiling():
        return (a.unsqueeze(-1) * feats.float().unsqueeze(2)).sum(3)
    return torch.matmul(a, feats.float())


def level_core(
    phase: Tensor, increment: Tensor | None, anchor: Tensor | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """What the reads of one level share, in one fused pass: ``(Phi', [sin phi, cos phi])``.

    ``Phi' = Phi + S`` (the level's write increment; None for none) and ``phi = Phi' + E_k[g]``
    (None: zeroed anchors), the features cast to the projection dtype: phase [B, T, N, M] fp32
    -> (Phi' fp32, feats [B, T, N, 2M]). The P reads of a level see the same angles, so they
    take these features instead of each recomputing them from phi: one elementwise pass per
    level replaces the eager fp32 adds of Phi + S and Phi + E_k[g] and P feature passes, and
    in backward the P reads' feature gradients meet before one sin/cos backward.
    """
    if increment is not None:
        phase = phase + increment
    phi = phase if anchor is None else phase + anchor
    return phase, phase_features(phi, dtype)


def read_core(
    h: Tensor,
    feats: Tensor,
    norm_w: Tensor,
    wq: Tensor,
    bq: Tensor,
    wkv: Tensor,
    bkv: Tensor,
    wo: Tensor,
    bo: Tensor,
    eps: float,
    heads: int,
) -> Tensor:
    """Memory read (docs/model.md section 4) from the slot features of :func:`level_core`.

    h [B, T, d], feats [B, T, N, 2M] (``[sin phi, cos phi]`` in the weights' dtype) -> [B, T, d].
    """
    b, t, n, m2 = feats.shape
    m = m2 // 2
    r = heads
    rm = r * m
    x = rms_norm(h, norm_w, eps)
    q_pre = F.linear(x, wq, bq)  # [B, T, RM]: R heads of M, before pi tanh
    k_pre = F.linear(feats, wkv[:rm], bkv[:rm])  # [B, T, N, RM]: key half only, before pi tanh
    a = torch.softmax(tanh_key_scores(q_pre, k_pre, r) / math.sqrt(m), dim=-1)  # [B, T, R, N]
    g = weighted_features(a, feats)  # [B, T, R, 2M]: attention-weighted features per head
    if fold_value_out(wo.shape[0], m):
        w_eff, b_eff = value_out_weights(wkv, bkv, wo, bo, r)
        return F.linear(g.reshape(b, t, 2 * rm).to(wo.dtype), w_eff, b_eff)
    wv = wkv[rm:].view(r, m, 2 * m)  # head r's value rows
    val = torch.einsum("btrf,rmf->btrm", g.to(wkv.dtype), wv) + bkv[rm:].view(r, m)  # [B, T, R, M]
    return F.linear(val.reshape(b, t, rm).to(wo.dtype), wo, bo)


def fold_value_out(hidden: int, m: int) -> bool:
    """Whether folding Wv into Wo saves products: 2M x d per head and byte folded, against
    2M x M + M x d unfolded, i.e. when d < 2M (119M: d = 512, M = 512; not the 30M or tiny)."""
    return hidden < 2 * m


def value_out_weights(wkv: Tensor, bkv: Tensor, wo: Tensor, bo: Tensor, heads: int) -> tuple[Tensor, Tensor]:
    """The read's value half and output projection folded into one matrix (both are linear).

    ``out = sum_r Wo_r (Wv_r g_r + bv_r) + bo = [Wo_1 Wv_1, ..., Wo_R Wv_R] [g_1; ...; g_R] + (Wo bv + bo)``:
    one [d, R x 2M] GEMM per byte instead of a per-head batched GEMM (with its layout copies)
    plus the [d, R x M] output projection. The fold itself (R products of [d, M] x [M, 2M],
    about 1 GFLOP) runs once per call in fp32, and is rounded once to the weights' dtype.
    Returns (w_eff [d, R x 2M], b_eff [d]).
    """
    d = wo.shape[0]
    rm = wkv.shape[0] // 2
    m = rm // heads
    wo_h = wo.float().view(d, heads, m)  # column r*M + j of Wo multiplies head r's value j
    wv = wkv[rm:].float().view(heads, m, 2 * m)  # head r's value rows
    w_eff = torch.einsum("drm,rmf->drf", wo_h, wv).reshape(d, heads * 2 * m)
    b_eff = bo.float() + wo.float() @ bkv[rm:].float()
    return w_eff.to(wo.dtype), b_eff.to(wo.dtype)


def write_core(
    h: Tensor,
    phase: Tensor,
    anchor: Tensor | None,
    norm_w: Tensor,
    wq: Tensor,
    bq: Tensor,
    wk: Tensor,
    bk: Tensor,
    wv: Tensor,
    bv: Tensor,
    wo: Tensor,
    bo: Tensor,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """Dense part of a write (docs/model.md section 3): (write softmax s [B, T, N], delta [B, T, N, M]) fp32.

    The write sees ``phi = Phi + E_k[g]`` (phase [B, T, N, M] fp32, anchor the same shape or None),
    added here so that the sum never round-trips through memory.
    """
    phi = phase if anchor is None else phase + anchor
    m = phi.shape[-1]
    x = rms_norm(h, norm_w, eps)
    q_pre = F.linear(x, wq, bq)  # [B, T, M], before pi tanh
    theta = math.pi * torch.tanh(F.linear(F.linear(x, wv, bv), wo, bo).float())  # [B, T, M]
    k_pre = F.linear(phase_features(phi, wk.dtype), wk, bk)  # [B, T, N, M], before pi tanh
    s = torch.softmax(tanh_key_scores(q_pre, k_pre, 1).squeeze(-2) / math.sqrt(m), dim=-1)  # [B, T, N]
    return s, s[..., None] * theta[:, :, None, :]


def scan_core(delta: Tensor, group: Tensor, carried: Tensor, training: bool) -> tuple[Tensor, Tensor]:
    """Gradient scale 1/sqrt(c) (training) and the per-group prefix sum.

    delta [B, T, N, M], group [B, T], carried [B, G, N, M] -> (S [B, T, N, M], state [B, G, N, M]).
    The Triton kernel (``triton_scan``) where it applies (CUDA, fp32), else the blocked scan.
    """
    b, t, n, m = delta.shape
    if training:
        delta = grad_scaled(delta, group, carried.shape[1])  # same value, gradient / sqrt(c)
    scan = triton_scan.segmented_prefix_sum if triton_scan.available(delta) else blocked_segmented_prefix_sum
    s, state = scan(delta.reshape(b, t, n * m), group, carried.reshape(b, -1, n * m))
    return s.view(b, t, n, m), state.view(carried.shape)


def scan_free(delta: Tensor, group: Tensor, carried: Tensor, training: bool) -> tuple[Tensor, Tensor]:
    """The write without recurrence (``memory_cumsum=False``, an ablation; eager only): S = delta.

    The 1/sqrt(c) gradient scale still applies in training; the state still records S at each
    group's last position (unused by the recurrence). Same shapes as :func:`scan_core`.
    """
    b, t, n, m = delta.shape
    s = torch.remainder(grad_scaled(delta, group, carried.shape[1]) if training else delta, TWO_PI)
    vals, present = last_of_group(s.reshape(b, t, n * m), group, carried.shape[1])
    state = torch.where(present[..., None], vals, carried.reshape(b, -1, n * m)).view(carried.shape)
    return s, state


def grad_scaled(delta: Tensor, group: Tensor, g_count: int) -> Tensor:
    """delta with its gradient divided by sqrt(c), c = positions of the sequence in the same group."""
    b = delta.shape[0]
    counts = torch.zeros(b, g_count, dtype=delta.dtype, device=delta.device)
    counts = counts.scatter_add(1, group, torch.ones_like(delta[..., 0, 0]))  # [B, G]
    scale = counts.gather(1, group).rsqrt()[..., None, None]  # [B, T, 1, 1]
    return delta.detach() + (delta - delta.detach()) * scale


def last_of_group(x: Tensor, group: Tensor, g_count: int) -> tuple[Tensor, Tensor]:
    """x [B, T, D] at the last position of each group -> ([B, G, D], present [B, G])."""
    b, t, dim = x.shape
    pos = torch.arange(t, device=x.device).expand(b, t)
    last = torch.full((b, g_count), -1, dtype=torch.int64, device=x.device).scatter_reduce(
        1, group, pos, reduce="amax", include_self=True
    )
    vals = x.gather(1, last.clamp(min=0)[..., None].expand(b, g_count, dim))
    return vals, last >= 0


class Cores(NamedTuple):
    """The four cores, eager or compiled: ``cores(compiled).read(...)``."""

    read: Callable[..., Tensor]
    "read_core"
    write: Callable[..., tuple[Tensor, Tensor]]
    "write_core"
    scan: Callable[..., tuple[Tensor, Tensor]]
    "scan_core"
    level: Callable[..., tuple[Tensor, Tensor]]
    "level_core"


EAGER = Cores(read=read_core, write=write_core, scan=scan_core, level=level_core)


@functools.cache
def _compiled_cores() -> Cores:
    """The cores through ``torch.compile(fullgraph=True)``, made once per process: every layer
    of every model shares the compiled graphs (compilation itself happens at the first call)."""
    return Cores(
        read=torch.compile(read_core, fullgraph=True, dynamic=False),
        write=torch.compile(write_core, fullgraph=True, dynamic=False),
        # the scan's group count differs per level: automatic dynamic shapes settle after 2 compiles
        scan=torch.compile(scan_core, fullgraph=True, dynamic=None),
        level=torch.compile(level_core, fullgraph=True, dynamic=False),
    )


def cores(compiled: bool) -> Cores:
    """The cores to call: compiled when asked, except while dynamo already traces the caller
    (a whole decoder layer compiled: the eager cores are inlined into its graph)."""
    if compiled and not torch.compiler.is_compiling():
        return _compiled_cores()
    return EAGER
