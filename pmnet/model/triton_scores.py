"""Phase-space scores of a tanh-squashed key projection in one Triton kernel (GPU fast path).

Both memory modules score a query against the N slots of a byte's group as

    score[p, r, n] = sum_j cos(q[p, r, j] - pi * tanh(k_pre[p, n, r*M + j]))

(docs/model.md sections 3-4: the write with R = 1, the read with R heads). ``k_pre`` is the key
projection's output (bf16 in training, [P, N, R*M]: the largest tensor of the model, 1 GiB per
read layer of the 119M model at 65,536 bytes). Compiled by inductor, the forward, the
backward of the cosine and the backward of the tanh were three kernels bound by accurate
fp32 transcendentals (52 ms of a 286 ms step on the H200). Here the forward reads ``k_pre``
once and writes only the [P, R, N] scores; the backward reads it once more, recomputes tanh
and sin, and writes ``d k_pre`` in the key's dtype and ``d q`` in fp32: two passes, each about
memory bound. The kernels also take the query projection's output and apply the query's
``pi tanh`` (accurate math: it runs once per query tile, shared by the N slots) and its
backward themselves, so the squashed fp32 query and its fp32 gradient never round-trip through
memory; ``d q`` is the gradient of the projection's output, in its dtype.

``fast=True`` (used only for bf16 / fp16 keys) evaluates tanh, sin and cos with the GPU's
approximate instructions (``tanh.approx.f32``: relative error ~2^-11, below the bf16 input's
own 2^-8 rounding; ``sin/cos.approx.f32``: absolute error ~1e-6 on the |q - key| <= 2 pi
met here). ``fast=False`` uses accurate math and runs in Triton's CPU interpreter
(``TRITON_INTERPRET=1``), which is how the CPU tests check the kernels' indexing and
gradients against plain torch (:func:`scores_reference`).

The ops are ``torch.library.triton_op``s, so ``torch.compile(fullgraph=True)`` traces through
them (no graph break) and autograd uses :func:`_backward`.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

try:  # triton ships with CUDA builds of torch; CPU-only installs may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on installs without triton
    triton = None

PI = math.pi
PI_K = tl.constexpr(math.pi) if triton is not None else PI  # kernels may read only constexpr globals
ENV_SWITCH = "PMNET_TRITON_SCORES"
"Set to 0 to fall back to the inductor-compiled scores (A/B benchmarks); see also :func:`set_enabled`."
_STATE = {"enabled": os.environ.get(ENV_SWITCH, "1") != "0"}


def set_enabled(enabled: bool) -> None:
    """Use the fused kernel where it applies (default: on unless ``PMNET_TRITON_SCORES=0``)."""
    _STATE["enabled"] = bool(enabled)


def scores_reference(q_pre: Tensor, k_pre: Tensor, heads: int) -> Tensor:
    """Plain torch, fp32 or wider: the projections' outputs q_pre [P, R*M] and k_pre [P, N, R*M],
    both squashed to ``pi tanh`` -> [P, R, N] (the oracle for the tests)."""
    p, n, rm = k_pre.shape
    m = rm // heads
    dtype = torch.promote_types(q_pre.dtype, torch.float32)
    q = PI * torch.tanh(q_pre.to(dtype))
    key = PI * torch.tanh(k_pre.to(dtype)).view(p, n, heads, m).transpose(1, 2)  # [P, R, N, M]
    return torch.cos(q.view(p, heads, 1, m) - key).sum(-1)


def available(k_pre: Tensor) -> bool:
    """Whether the fused kernel serves this key: CUDA, bf16 / fp16, triton present, not switched off."""
    return triton is not None and _STATE["enabled"] and k_pre.is_cuda and k_pre.dtype in (torch.bfloat16, torch.float16)


if triton is not None:

    @triton.jit
    def _tanh(x, FAST: tl.constexpr):
        if FAST:
            return tl.inline_asm_elementwise(
                "tanh.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
            )
        else:
            # exp overflows to inf for x > ~44 (giving 1) and underflows to 0 below (giving -1)
            return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)

    @triton.jit
    def _cos(x, FAST: tl.constexpr):
        if FAST:
            return tl.inline_asm_elementwise(
                "cos.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
            )
        else:
            return tl.cos(x)

    @triton.jit
    def _sin(x, FAST: tl.constexpr):
        if FAST:
            return tl.inline_asm_elementwise(
                "sin.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
            )
        else:
            return tl.sin(x)

    @triton.jit
    def _scores_fwd_kernel(
        q_ptr, k_ptr, s_ptr, P,
        R: tl.constexpr, N: tl.constexpr, M: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FAST: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # [BP] byte positions
        r = tl.program_id(1)  # read head
        rmask = rows < P
        cols = tl.arange(0, BLOCK_M)
        ncols = tl.arange(0, BLOCK_N)
        acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
        for m0 in range(0, M, BLOCK_M):
            c = m0 + cols
            mask = rmask[:, None] & (c[None, :] < M)
            q = tl.load(q_ptr + rows[:, None] * (R * M) + r * M + c[None, :], mask=mask, other=0.0).to(tl.float32)
            q = PI_K * _tanh(q, False)  # the query projection's output, squashed (accurate: once for the N slots)
            for n in tl.static_range(N):
                k_off = rows[:, None] * (N * R * M) + n * (R * M) + r * M + c[None, :]
                k = tl.load(k_ptr + k_off, mask=mask, other=0.0).to(tl.float32)
                part = tl.sum(tl.where(mask, _cos(q - PI_K * _tanh(k, FAST), FAST), 0.0), axis=1)  # [BP]
                acc += tl.where(ncols[None, :] == n, part[:, None], 0.0)
        s_off = rows[:, None] * (R * N) + r * N + ncols[None, :]
        tl.store(s_ptr + s_off, acc, mask=rmask[:, None] & (ncols[None, :] < N))

    @triton.jit
    def _scores_bwd_kernel(
        q_ptr, k_ptr, ds_ptr, dq_ptr, dk_ptr, P,
        R: tl.constexpr, N: tl.constexpr, M: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr, FAST: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        r = tl.program_id(1)
        rmask = rows < P
        cols = tl.arange(0, BLOCK_M)
        for m0 in range(0, M, BLOCK_M):
            c = m0 + cols
            mask = rmask[:, None] & (c[None, :] < M)
            q_off = rows[:, None] * (R * M) + r * M + c[None, :]
            tq = _tanh(tl.load(q_ptr + q_off, mask=mask, other=0.0).to(tl.float32), False)
            q = PI_K * tq
            dq = tl.zeros([BLOCK_P, BLOCK_M], dtype=tl.float32)
            for n in tl.static_range(N):
                g = tl.load(ds_ptr + rows * (R * N) + r * N + n, mask=rmask, other=0.0)  # [BP]
                k_off = rows[:, None] * (N * R * M) + n * (R * M) + r * M + c[None, :]
                k = tl.load(k_ptr + k_off, mask=mask, other=0.0).to(tl.float32)
                t = _tanh(k, FAST)
                gs = g[:, None] * _sin(q - PI_K * t, FAST)  # d cos(q - key) / d key = sin(q - key)
                dq -= gs
                tl.store(dk_ptr + k_off, (gs * (PI_K * (1.0 - t * t))).to(dk_ptr.dtype.element_ty), mask=mask)
            dq = dq * (PI_K * (1.0 - tq * tq))  # through the query's pi tanh: d of the projection's output
            tl.store(dq_ptr + q_off, dq.to(dq_ptr.dtype.element_ty), mask=mask)


def _blocks(m: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_M, num_warps): tiles of ~4096 elements, at most 512 phases wide."""
    block_m = min(triton.next_power_of_2(m), 512)
    block_p = max(1, 4096 // block_m)
    return block_p, block_m, 8 if block_p * block_m >= 4096 else 4


def _check(q: Tensor, k_pre: Tensor, heads: int) -> tuple[int, int, int]:
    p, n, rm = k_pre.shape
    if q.shape != (p, rm) or rm % heads:
        raise ValueError(f"phase scores: q {tuple(q.shape)} and k_pre {tuple(k_pre.shape)} with {heads} heads")
    return p, n, rm // heads


if triton is not None:
    from torch.library import triton_op, wrap_triton

    # Triton chose interpreted or compiled kernels when it defined them (above, at import).
    _INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

    def _launcher(kernel):
        """``wrap_triton`` (traceable by torch.compile), except under Triton's CPU interpreter,
        whose kernels older torch (2.11) refuses to wrap; nothing compiles there anyway."""
        return kernel if _INTERPRETED else wrap_triton(kernel)

    @triton_op("pmnet::phase_scores_tanh", mutates_args=())
    def phase_scores_tanh(q: Tensor, k_pre: Tensor, heads: int, fast: bool) -> Tensor:
        """``sum_j cos(pi tanh(q_j) - pi tanh(k_pre_n,j))``: the projections' outputs q [P, R*M] and
        k_pre [P, N, R*M] (any float dtypes) -> [P, R, N] fp32."""
        p, n, m = _check(q, k_pre, heads)
        q, k_pre = q.contiguous(), k_pre.contiguous()
        out = torch.empty(p, heads, n, device=q.device, dtype=torch.float32)
        bp, bm, warps = _blocks(m)
        grid = (triton.cdiv(p, bp), heads)
        _launcher(_scores_fwd_kernel)[grid](
            q, k_pre, out, p, R=heads, N=n, M=m, BLOCK_P=bp, BLOCK_M=bm,
            BLOCK_N=triton.next_power_of_2(n), FAST=fast, num_warps=warps,
        )  # fmt: skip
        return out

    @triton_op("pmnet::phase_scores_tanh_backward", mutates_args=())
    def phase_scores_tanh_backward(
        q: Tensor, k_pre: Tensor, grad: Tensor, heads: int, fast: bool
    ) -> tuple[Tensor, Tensor]:
        """(d q [P, R*M] in q's dtype, d k_pre [P, N, R*M] in k_pre's dtype) from d scores [P, R, N]."""
        p, n, m = _check(q, k_pre, heads)
        q, k_pre, grad = q.contiguous(), k_pre.contiguous(), grad.float().contiguous()
        dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
        dk = torch.empty(k_pre.shape, device=q.device, dtype=k_pre.dtype)
        bp, bm, warps = _blocks(m)
        grid = (triton.cdiv(p, bp), heads)
        _launcher(_scores_bwd_kernel)[grid](
            q, k_pre, grad, dq, dk, p, R=heads, N=n, M=m, BLOCK_P=bp, BLOCK_M=bm, FAST=fast, num_warps=warps,
        )  # fmt: skip
        return dq, dk

    def _setup_context(ctx, inputs, output) -> None:
        q, k_pre, heads, fast = inputs
        ctx.save_for_backward(q, k_pre)
        ctx.heads, ctx.fast = heads, fast

    def _backward(ctx, grad: Tensor):
        q, k_pre = ctx.saved_tensors
        dq, dk = phase_scores_tanh_backward(q, k_pre, grad, ctx.heads, ctx.fast)
        return dq, dk, None, None

    phase_scores_tanh.register_autograd(_backward, setup_context=_setup_context)


def fused_scores(q_pre: Tensor, k_pre: Tensor, heads: int) -> Tensor:
    """The kernel for the GPU fast path (approximate transcendentals: bf16 / fp16 keys only).

    q_pre [..., R*M] and k_pre [..., N, R*M]: the query and key projections' outputs, both
    squashed to ``pi tanh`` inside the kernel -> [..., R, N] fp32.
    """
    lead = k_pre.shape[:-2]
    n, rm = k_pre.shape[-2:]
    out = phase_scores_tanh(q_pre.reshape(-1, rm), k_pre.reshape(-1, n, rm), heads, True)
    return out.view(*lead, heads, n)
