"""The memory read's softmax over slots and attention-weighted slot features in one Triton kernel.

After the phase scores (``triton_scores``), the read (docs/model.md section 4; ``fused.read_core``)
computes, per byte position p and read head r,

    a[p, r, :] = softmax_n(s[p, r, n] / sqrt(M))
    g[p, r, :] = sum_n a[p, r, n] f[p, n, :]          (f = [sin phi, cos phi], [P, N, 2M])

and hands g (in the projection dtype) to the folded value/output GEMM. Compiled by inductor this
was a softmax kernel and a separate reduction that read the [P, N, 2M] features in bf16, widened
them, and wrote g in fp32 before a cast (run 7's profile of a real trainer step: 69 ms of the
1.9 s per optimizer step for the reduction alone, at well under HBM bandwidth); the backward was
three more passes (the feature gradient, ``da = dg . f``, the softmax backward). Here:

* forward, one pass: reads s ([P, R, N] fp32, tiny) and the features once, writes g in the
  features' dtype and the probabilities a (tiny, kept for the backward);
* backward, one pass: reads dg and the features once, writes the feature gradient
  ``df[p, n] = sum_r a[p, r, n] dg[p, r]`` in the features' dtype and the score gradient
  ``ds = a * (da - sum_n a da) / sqrt(M)`` with ``da[p, r, n] = dg[p, r] . f[p, n]``.

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
        rows = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # [BP] byte positions
        rmask = rows < P
        ncols = tl.arange(0, BLOCK_N)
        nmask = ncols < N
        sn_mask = rmask[:, None] & nmask[None, :]
        fcols = tl.arange(0, BLOCK_F)
        for f0 in range(0, F, BLOCK_F):
            fc = f0 + fcols
            fmask = fc < F
            f_off = rows[:, None, None] * (N * F) + ncols[None, :, None] * F + fc[None, None, :]
            f_mask = sn_mask[:, :, None] & fmask[None, None, :]
            feats = tl.load(f_ptr + f_off, mask=f_mask, other=0.0).to(tl.float32)  # [BP, BN, BF]
            for r in tl.static_range(R):
                # the softmax of N scores is recomputed per feature tile: N exps against BN x BF products
                sn_off = rows[:, None] * (R * N) + r * N + ncols[None, :]
                s = tl.load(s_ptr + sn_off, mask=sn_mask, other=0.0) * scale
                s = tl.where(nmask[None, :], s, float("-inf"))
                e = tl.exp(s - tl.max(s, axis=1)[:, None])
                a = e / tl.sum(e, axis=1)[:, None]  # [BP, BN]
                if f0 == 0:
                    tl.store(a_ptr + sn_off, a, mask=sn_mask)
                g = tl.sum(a[:, :, None] * feats, axis=1)  # [BP, BF]
                g_off = rows[:, None] * (R * F) + r * F + fc[None, :]
                tl.store(g_ptr + g_off, g.to(g_ptr.dtype.element_ty), mask=rmask[:, None] & fmask[None, :])

    @triton.jit
    def _bwd_kernel(
        dg_ptr, f_ptr, a_ptr, df_ptr, ds_ptr, P, scale,
        R: tl.constexpr, N: tl.constexpr, F: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        rmask = rows < P
        ncols = tl.arange(0, BLOCK_N)
        nmask = ncols < N
        rcols = tl.arange(0, BLOCK_R)
        sn_mask = rmask[:, None] & nmask[None, :]
        fcols = tl.arange(0, BLOCK_F)
        da = tl.zeros([BLOCK_P, BLOCK_R, BLOCK_N], dtype=tl.float32)  # dg[p, r] . f[p, n]
        for f0 in range(0, F, BLOCK_F):
            fc = f0 + fcols
            fmask = fc < F
            f_off = rows[:, None, None] * (N * F) + ncols[None, :, None] * F + fc[None, None, :]
            f_mask = sn_mask[:, :, None] & fmask[None, None, :]
            feats = tl.load(f_ptr + f_off, mask=f_mask, other=0.0).to(tl.float32)  # [BP, BN, BF]
            df = tl.zeros([BLOCK_P, BLOCK_N, BLOCK_F], dtype=tl.float32)
            for r in tl.static_range(R):
                g_off = rows[:, None] * (R * F) + r * F + fc[None, :]
                dg = tl.load(dg_ptr + g_off, mask=rmask[:, None] & fmask[None, :], other=0.0).to(tl.float32)
                a = tl.load(a_ptr + rows[:, None] * (R * N) + r * N + ncols[None, :], mask=sn_mask, other=0.0)
                part = tl.sum(feats * dg[:, None, :], axis=2)  # [BP, BN]
                da += tl.where(rcols[None, :, None] == r, part[:, None, :], 0.0)
                df += a[:, :, None] * dg[:, None, :]
            tl.store(df_ptr + f_off, df.to(df_ptr.dtype.element_ty), mask=f_mask)
        rn_off = rows[:, None, None] * (R * N) + rcols[None, :, None] * N + ncols[None, None, :]
        rn_mask = rmask[:, None, None] & (rcols[None, :, None] < R) & nmask[None, None, :]
        a3 = tl.load(a_ptr + rn_off, mask=rn_mask, other=0.0)  # [BP, BR, BN]
        dot = tl.sum(a3 * da, axis=2)  # [BP, BR]
        tl.store(ds_ptr + rn_off, a3 * (da - dot[:, :, None]) * scale, mask=rn_mask)


def _blocks(n: int, f: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_F, num_warps): feature tiles of ~4096 elements (BP x BN x BF), at most 256 wide."""
    block_n = triton.next_power_of_2(n)
    block_f = min(triton.next_power_of_2(f), 256)
    block_p = max(1, 4096 // (block_n * block_f))
    return block_p, block_f, 8 if block_p * block_n * block_f >= 4096 else 4


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
    def softmax_weighted(s: Tensor, feats: Tensor, scale: float) -> tuple[Tensor, Tensor]:
        """``(g, a)``: s [P, R, N] fp32 scores, feats [P, N, F] -> g [P, R, F] in feats' dtype, a [P, R, N] fp32.

        ``a = softmax(s * scale)`` over the N slots, ``g[p, r] = sum_n a[p, r, n] feats[p, n]``.
        """
        p, r, n, f = _check(s, feats)
        s, feats = s.float().contiguous(), feats.contiguous()
        g = torch.empty(p, r, f, device=feats.device, dtype=feats.dtype)
        a = torch.empty(p, r, n, device=feats.device, dtype=torch.float32)
        bp, bf, warps = _blocks(n, f)
        _launcher(_fwd_kernel)[(triton.cdiv(p, bp),)](
            s, feats, a, g, p, scale, R=r, N=n, F=f, BLOCK_P=bp, BLOCK_N=triton.next_power_of_2(n),
            BLOCK_F=bf, num_warps=warps,
        )  # fmt: skip
        return g, a

    @triton_op("pmnet::softmax_weighted_backward", mutates_args=())
    def softmax_weighted_backward(dg: Tensor, feats: Tensor, a: Tensor, scale: float) -> tuple[Tensor, Tensor]:
        """(d s [P, R, N] fp32, d feats [P, N, F] in feats' dtype) from d g [P, R, F]."""
        p, r, n, f = _check(a, feats)
        dg, feats, a = dg.contiguous(), feats.contiguous(), a.contiguous()
        df = torch.empty(feats.shape, device=feats.device, dtype=feats.dtype)
        ds = torch.empty(p, r, n, device=feats.device, dtype=torch.float32)
        bp, bf, warps = _blocks(n, f)
        _launcher(_bwd_kernel)[(triton.cdiv(p, bp),)](
            dg, feats, a, df, ds, p, scale, R=r, N=n, F=f, BLOCK_P=bp, BLOCK_R=triton.next_power_of_2(r),
            BLOCK_N=triton.next_power_of_2(n), BLOCK_F=bf, num_warps=warps,
        )  # fmt: skip
        return ds, df

    def _setup_context(ctx, inputs, output) -> None:
        _, feats, scale = inputs
        ctx.save_for_backward(feats, output[1])
        ctx.scale = scale
        ctx.mark_non_differentiable(output[1])

    def _backward(ctx, grad_g: Tensor, _grad_a: Tensor | None):
        feats, a = ctx.saved_tensors
        ds, df = softmax_weighted_backward(grad_g, feats, a, ctx.scale)
        return ds, df, None

    softmax_weighted.register_autograd(_backward, setup_context=_setup_context)


def attention_weighted_features(s: Tensor, feats: Tensor, m: int) -> Tensor:
    """The read's ``g = sum_n softmax(s / sqrt(M))_n f_n`` through the kernels.

    s [..., R, N] fp32 scores, feats [..., N, F] -> g [..., R, F] in feats' dtype (the GEMM's input).
    """
    lead = s.shape[:-2]
    r, n = s.shape[-2:]
    g, _ = softmax_weighted(s.reshape(-1, r, n), feats.reshape(-1, n, feats.shape[-1]), 1.0 / math.sqrt(m))
    return g.view(*lead, r, feats.shape[-1])
