"""The memory read's softmax over slots and attention-weighted slot features in one Triton kernel.

After the phase scores (``triton_scores``), the read (docs/model.md section 4; ``fused.read_core``)
computes, per byte position p and read head r,

    a[p, r, :] = softmax_n(s[p, r, n] / sqrt(M))
    g[p, r, :] = sum_n a[p, r, n] f[p, n, :]          (f = [sin phi, cos phi], [P, N, 2M])

and hands g (in the projection dtype) to the folded value/output GEMM. Compiled by inductor this
was a softmax kernel and a separate reduction that read the [P, N, 2M] features in bf16, widened
them, and wrote g in fp32 before a cast (run 7's profile of a real trainer step: 69 ms of the
1.9 s per optimizer step for the reduction alone, at well under HBM bandwidth). Here:

* forward, one pass: reads s ([P, R, N] fp32, tiny) and the features once, writes g in the
  features' dtype and the probabilities a (tiny, kept for the backward);
* backward: one pass reads dg and the features and writes the score gradient
  ``ds = a * (da - sum_n a da) * scale`` with ``da[p, r, n] = dg[p, r] . f[p, n]``; the feature
  gradient ``df[p, n] = sum_r a[p, r, n] dg[p, r]`` stays in torch (:func:`feature_grad`), where
  inductor fuses it with the sum of the features' other gradient (the key projection's). A
  kernel that also wrote df left that sum as a separate pass and was slower overall (H200).

All arithmetic is fp32 (accurate ``exp``; no approximate instructions), so the kernels serve
fp32 inputs as well and match :func:`softmax_weighted_reference` to rounding. They run in
Triton's CPU interpreter (``TRITON_INTERPRET=1``) for the CPU tests, like ``triton_scores``.
The op is a ``torch.library.triton_op``: ``torch.compile(fullgraph=True)`` traces through it.
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

ENV_SWITCH = "PMNET_TRITON_READ"
"Set to 0 to fall back to the inductor-compiled softmax and reduction (A/B benchmarks)."
_STATE = {"enabled": os.environ.get(ENV_SWITCH, "1") != "0"}


def set_enabled(enabled: bool) -> None:
    """Use the fused kernels where they apply (default: on unless ``PMNET_TRITON_READ=0``)."""
    _STATE["enabled"] = bool(enabled)


def available(feats: Tensor) -> bool:
    """Whether the kernels serve these slot features: CUDA, a float dtype, triton present, switched on."""
    return (
        triton is not None
        and _STATE["enabled"]
        and feats.is_cuda
        and feats.dtype in (torch.bfloat16, torch.float16, torch.float32)
    )


def softmax_weighted_reference(s: Tensor, feats: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Plain torch, fp32: s [P, R, N], feats [P, N, F] -> (g [P, R, F] in feats' dtype, a [P, R, N] fp32)."""
    a = torch.softmax(s.float() * scale, dim=-1)
    return torch.matmul(a, feats.float()).to(feats.dtype), a


if triton is not None:

    @triton.jit
    def _fwd_kernel(
        s_ptr, f_ptr, a_ptr, g_ptr, P, scale,
        R: tl.constexpr, N: tl.constexpr, F: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr,
    ):  # fmt: skip
        # 2-D tiles only: a first version reduced a [BP, BN, BF] tile over its middle axis and ran
        # 13x slower than inductor on the H200 (9.5 ms per call at the 119M shapes)
        rows = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # [BP] byte positions
        rmask = rows < P
        ncols = tl.arange(0, BLOCK_N)
        nmask = ncols < N
        sn_mask = rmask[:, None] & nmask[None, :]
        fcols = tl.arange(0, BLOCK_F)
        for r in tl.static_range(R):
            sn_off = rows[:, None] * (R * N) + r * N + ncols[None, :]
            s = tl.load(s_ptr + sn_off, mask=sn_mask, other=0.0) * scale
            s = tl.where(nmask[None, :], s, float("-inf"))
            e = tl.exp(s - tl.max(s, axis=1)[:, None])
            a = e / tl.sum(e, axis=1)[:, None]  # [BP, BN]
            tl.store(a_ptr + sn_off, a, mask=sn_mask)
            for f0 in range(0, F, BLOCK_F):
                fc = f0 + fcols
                fmask = rmask[:, None] & (fc[None, :] < F)
                g = tl.zeros([BLOCK_P, BLOCK_F], dtype=tl.float32)
                # the features of a block are read once from memory; heads after the first find them in cache
                for n in tl.static_range(N):
                    a_n = tl.sum(tl.where(ncols[None, :] == n, a, 0.0), axis=1)  # [BP]
                    f = tl.load(f_ptr + rows[:, None] * (N * F) + n * F + fc[None, :], mask=fmask, other=0.0)
                    g += a_n[:, None] * f.to(tl.float32)
                g_off = rows[:, None] * (R * F) + r * F + fc[None, :]
                tl.store(g_ptr + g_off, g.to(g_ptr.dtype.element_ty), mask=fmask)

    @triton.jit
    def _ds_kernel(
        dg_ptr, f_ptr, a_ptr, ds_ptr, P, scale,
        R: tl.constexpr, N: tl.constexpr, F: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        rmask = rows < P
        ncols = tl.arange(0, BLOCK_N)
        rcols = tl.arange(0, BLOCK_R)
        fcols = tl.arange(0, BLOCK_F)
        da = tl.zeros([BLOCK_P, BLOCK_R, BLOCK_N], dtype=tl.float32)  # dg[p, r] . f[p, n]
        for f0 in range(0, F, BLOCK_F):
            fc = f0 + fcols
            fmask = rmask[:, None] & (fc[None, :] < F)
            for r in tl.static_range(R):
                dg = tl.load(dg_ptr + rows[:, None] * (R * F) + r * F + fc[None, :], mask=fmask, other=0.0)
                dg = dg.to(tl.float32)  # [BP, BF]; the heads after the first find the features in cache
                for n in tl.static_range(N):
                    f = tl.load(f_ptr + rows[:, None] * (N * F) + n * F + fc[None, :], mask=fmask, other=0.0)
                    part = tl.sum(dg * f.to(tl.float32), axis=1)  # [BP]
                    hit = (rcols[None, :, None] == r) & (ncols[None, None, :] == n)
                    da += tl.where(hit, part[:, None, None], 0.0)
        rn_off = rows[:, None, None] * (R * N) + rcols[None, :, None] * N + ncols[None, None, :]
        rn_mask = rmask[:, None, None] & (rcols[None, :, None] < R) & (ncols[None, None, :] < N)
        a = tl.load(a_ptr + rn_off, mask=rn_mask, other=0.0)  # [BP, BR, BN]
        dot = tl.sum(a * da, axis=2)  # [BP, BR]
        tl.store(ds_ptr + rn_off, a * (da - dot[:, :, None]) * scale, mask=rn_mask)


def _blocks(f: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_F, num_warps): 2-D tiles of ~4096 elements, at most 1024 features wide."""
    block_f = min(triton.next_power_of_2(f), 1024)
    block_p = max(1, 4096 // block_f)
    return block_p, block_f, 8 if block_p * block_f >= 4096 else 4


def _check(s: Tensor, feats: Tensor) -> tuple[int, int, int, int]:
    p, r, n = s.shape
    if feats.dim() != 3 or feats.shape[:2] != (p, n):
        raise ValueError(f"softmax_weighted: scores {tuple(s.shape)} and features {tuple(feats.shape)}")
    return p, r, n, feats.shape[2]


if triton is not None:
    from torch.library import triton_op, wrap_triton

    _INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

    def _launcher(kernel):
        """``wrap_triton`` (traceable by torch.compile), except under Triton's CPU interpreter."""
        return kernel if _INTERPRETED else wrap_triton(kernel)

    @triton_op("pmnet::softmax_weighted", mutates_args=())
    def softmax_weighted(s: Tensor, feats: Tensor, scale: float, compiled: bool = False) -> tuple[Tensor, Tensor]:
        """``(g, a)``: s [P, R, N] fp32 scores, feats [P, N, F] -> g [P, R, F] in feats' dtype, a [P, R, N] fp32.

        ``a = softmax(s * scale)`` over the N slots, ``g[p, r] = sum_n a[p, r, n] feats[p, n]``.
        ``compiled``: the caller is being compiled (picks the backward's form of the feature gradient).
        """
        p, r, n, f = _check(s, feats)
        s, feats = s.float().contiguous(), feats.contiguous()
        g = torch.empty(p, r, f, device=feats.device, dtype=feats.dtype)
        a = torch.empty(p, r, n, device=feats.device, dtype=torch.float32)
        bp, bf, warps = _blocks(f)
        _launcher(_fwd_kernel)[(triton.cdiv(p, bp),)](
            s, feats, a, g, p, scale, R=r, N=n, F=f, BLOCK_P=bp, BLOCK_N=triton.next_power_of_2(n),
            BLOCK_F=bf, num_warps=warps,
        )  # fmt: skip
        return g, a

    @triton_op("pmnet::softmax_weighted_score_grad", mutates_args=())
    def softmax_weighted_score_grad(dg: Tensor, feats: Tensor, a: Tensor, scale: float) -> Tensor:
        """d s [P, R, N] fp32 from d g [P, R, F]: ``a * (da - sum_n a da) * scale``, ``da = dg . f``."""
        p, r, n, f = _check(a, feats)
        dg, feats, a = dg.contiguous(), feats.contiguous(), a.contiguous()
        ds = torch.empty(p, r, n, device=feats.device, dtype=torch.float32)
        bp, bf, warps = _blocks(f)
        _launcher(_ds_kernel)[(triton.cdiv(p, bp),)](
            dg, feats, a, ds, p, scale, R=r, N=n, F=f, BLOCK_P=bp, BLOCK_R=triton.next_power_of_2(r),
            BLOCK_N=triton.next_power_of_2(n), BLOCK_F=bf, num_warps=warps,
        )  # fmt: skip
        return ds

    def _setup_context(ctx, inputs, output) -> None:
        _, feats, scale, compiled = inputs
        ctx.save_for_backward(feats, output[1])
        ctx.scale, ctx.compiled = scale, compiled
        ctx.mark_non_differentiable(output[1])

    def _backward(ctx, grad_g: Tensor, _grad_a: Tensor | None):
        feats, a = ctx.saved_tensors
        ds = softmax_weighted_score_grad(grad_g, feats, a, ctx.scale)
        df = feature_grad(a, grad_g, ctx.compiled).to(feats.dtype)
        return ds, df, None, None

    softmax_weighted.register_autograd(_backward, setup_context=_setup_context)


def feature_grad(a: Tensor, dg: Tensor, compiled: bool) -> Tensor:
    """``df[p, n] = sum_r a[p, r, n] dg[p, r]`` in fp32: a [P, R, N], dg [P, R, F] -> [P, N, F].

    Left to torch, not a kernel: compiled, as a broadcast product summed over the R heads, which
    inductor fuses with the sum of this gradient and the key projection's (a separate add pass
    over [P, N, F] otherwise: 0.2 ms per read on the H200, about what a kernel would save);
    eager, a batched matmul (no [P, R, N, F] temporary).
    """
    if compiled:
        return (a.unsqueeze(-1) * dg.float().unsqueeze(2)).sum(1)
    return torch.matmul(a.transpose(1, 2), dg.float())


def attention_weighted_features(s: Tensor, feats: Tensor, m: int) -> Tensor:
    """The read's ``g = sum_n softmax(s / sqrt(M))_n f_n`` through the kernels.

    s [..., R, N] fp32 scores, feats [..., N, F] -> g [..., R, F] in feats' dtype (the GEMM's input).
    """
    lead = s.shape[:-2]
    r, n = s.shape[-2:]
    compiled = torch.compiler.is_compiling()
    g, _ = softmax_weighted(s.reshape(-1, r, n), feats.reshape(-1, n, feats.shape[-1]), 1.0 / math.sqrt(m), compiled)
    return g.view(*lead, r, feats.shape[-1])
