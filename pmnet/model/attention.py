"""Sliding-window causal self-attention with carried keys/values (MODEL.md section 2).

Three interchangeable backends compute the same thing:

* ``eager``: explicit scores, mask and softmax in fp32 (the reference and test oracle);
* ``sdpa``: ``F.scaled_dot_product_attention`` with a boolean window mask (CPU, and the
  GPU fallback when attention dropout is on in training);
* ``flex``: ``flex_attention`` with a sliding-window block mask, so work is proportional
  to T x W, not T x T (GPU; on CPU it runs torch's unfused eager version, slow but exact).

A query at absolute position t sees keys at positions p with ``t - W < p <= t``. The
first ``n_past`` keys come from the previous chunk (the state), so key index j holds
position ``position - n_past + j`` and query index i holds ``position + i``.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pmnet.model.config import PMNetConfig
from pmnet.model.layers import RMSNorm, apply_rope


def window_mask(t_q: int, n_past: int, window: int, device: torch.device) -> Tensor:
    """Boolean ``[T, n_past + T]``: True where query i may attend key j."""
    qi = torch.arange(t_q, device=device)[:, None]
    kj = torch.arange(n_past + t_q, device=device)[None, :] - n_past  # key offset relative to the chunk start
    return (kj <= qi) & (kj > qi - window)


def eager_attention(q: Tensor, k: Tensor, v: Tensor, n_past: int, window: int, dropout_p: float) -> Tensor:
    """Reference: fp32 scores ``[B, H, T, n_past+T]``, masked softmax, dropout, values."""
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # [B, H, T, Tk]
    mask = window_mask(q.shape[-2], n_past, window, q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, v.float()).to(q.dtype)  # [B, H, T, hd]


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, n_past: int, window: int, dropout_p: float) -> Tensor:
    """``scaled_dot_product_attention`` with the boolean window mask."""
    mask = window_mask(q.shape[-2], n_past, window, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=q.shape[-1] ** -0.5)


@functools.lru_cache(maxsize=64)
def _block_mask(t_q: int, n_past: int, window: int, device: torch.device) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        rel = kv_idx - n_past
        return (rel <= q_idx) & (rel > q_idx - window)

    return create_block_mask(mask_mod, None, None, t_q, n_past + t_q, device=device)


@functools.cache
def _compiled_flex() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


_warned_flex_dropout = False
_warned_flex_cpu_grad = False


def flex_attention_backend(q: Tensor, k: Tensor, v: Tensor, n_past: int, window: int, dropout_p: float) -> Tensor:
    """``flex_attention`` with a sliding-window block mask (compiled on CUDA, unfused eager on CPU).

    flex_attention has no dropout: with dropout on (training) this call falls back to
    sdpa, once warned, so the 119M preset's attention_dropout=0.1 still means what it says.
    On CPU flex has no backward: a differentiable CPU call also falls back to sdpa (warned once).
    """
    global _warned_flex_dropout, _warned_flex_cpu_grad
    if dropout_p > 0.0:
        if not _warned_flex_dropout:
            warnings.warn(
                "flex_attention has no dropout: using sdpa while attention_dropout > 0 in training", stacklevel=2
            )
            _warned_flex_dropout = True
        return sdpa_attention(q, k, v, n_past, window, dropout_p)
    block_mask = _block_mask(q.shape[-2], n_past, window, q.device)
    scale = q.shape[-1] ** -0.5
    if q.is_cuda:
        return _compiled_flex()(q, k, v, block_mask=block_mask, scale=scale)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        if not _warned_flex_cpu_grad:
            warnings.warn(
                "flex_attention has no CPU backward: using sdpa for this differentiable CPU call", stacklevel=2
            )
            _warned_flex_cpu_grad = True
        return sdpa_attention(q, k, v, n_past, window, dropout_p)
    from torch.nn.attention.flex_attention import flex_attention

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "called without torch.compile": expected on CPU
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale)


BACKENDS = {"eager": eager_attention, "sdpa": sdpa_attention, "flex": flex_attention_backend}


class PMNetAttention(nn.Module):
    """q/k/v/o projections, per-head q/k RMSNorm, RoPE, sliding window over carried + new keys."""

    def __init__(self, cfg: PMNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, hw = cfg.hidden_size, cfg.attn_width
        self.q_proj = nn.Linear(d, hw, bias=False)
        self.k_proj = nn.Linear(d, hw, bias=False)
        self.v_proj = nn.Linear(d, hw, bias=False)
        self.o_proj = nn.Linear(hw, d, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, past_k: Tensor | None, past_v: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, d] -> (out [B, T, d], new past keys, new past values [B, H, <=W-1, hd])."""
        cfg = self.cfg
        b, t, _ = x.shape
        shape = (b, t, cfg.num_attention_heads, cfg.head_dim)
        q = self.q_norm(self.q_proj(x).view(shape)).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_norm(self.k_proj(x).view(shape)).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        if past_k is not None and past_k.shape[-2] > 0:
            n_past = past_k.shape[-2]
            k_all = torch.cat([past_k.to(k.dtype), k], dim=-2)  # [B, H, n_past+T, hd]
            v_all = torch.cat([past_v.to(v.dtype), v], dim=-2)
        else:
            n_past, k_all, v_all = 0, k, v
        dropout_p = cfg.attention_dropout if self.training else 0.0
        out = BACKENDS[cfg.attn_backend](q, k_all, v_all, n_past, cfg.sliding_window, dropout_p)
        out = out.transpose(1, 2).reshape(b, t, cfg.attn_width)
        keep = cfg.sliding_window - 1
        # clone: a slice would keep the whole chunk's keys alive, and the state must stay W-1 long
        new_k = k_all[:, :, k_all.shape[-2] - min(keep, k_all.shape[-2]) :].clone()
        new_v = v_all[:, :, v_all.shape[-2] - min(keep, v_all.shape[-2]) :].clone()
        return self.o_proj(out), new_k, new_v
