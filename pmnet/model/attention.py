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
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pmnet.model.config import PMNetConfig
from pmnet.model.layers import NormalLinear, RMSNorm, apply_rope


def window_mask(t_q: int, n_past: int, window: int, device: torch.device) -> Tensor:
    """Boolean ``[T, n_past + T]``: True where query i may attend key j."""
    qi = torch.arange(t_q, device=device)[:, None]
    kj = torch.arange(n_past + t_q, device=device)[None, :] - n_past  # key offset relative to the chunk start
    return (kj <= qi) & (kj > qi - window)


@dataclass
class AttentionMask:
    """The window of one forward call, built once and shared by every layer (all carry n_past keys)."""

    backend: str
    "Backend that runs: cfg.attn_backend, or sdpa where flex cannot (dropout, CPU backward)."
    n_past: int
    "Carried keys in front of the chunk's own."
    dense: Tensor | None = None
    "[T, n_past + T] bool (eager, sdpa)."
    block: Any = None
    "flex BlockMask (flex)."


@functools.lru_cache(maxsize=32)
def _block_mask(t_q: int, n_past: int, window: int, device: torch.device) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        rel = kv_idx - n_past
        return (rel <= q_idx) & (rel > q_idx - window)

    # compiled mask construction on CUDA never materialises the [T, n_past + T] mask
    return create_block_mask(mask_mod, None, None, t_q, n_past + t_q, device=device, _compile=device.type == "cuda")


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, stacklevel=3)


def build_attention_mask(
    cfg: PMNetConfig, t_q: int, n_past: int, device: torch.device, training: bool
) -> AttentionMask:
    """Pick the backend that can run this call and build its mask once.

    flex_attention has no dropout, so a training call with attention_dropout > 0 runs sdpa
    (the 119M preset's 0.1 keeps its meaning); on CPU flex has no backward, so a call that
    needs gradients runs sdpa too. Both are warned once.
    """
    backend = cfg.attn_backend
    if backend == "flex":
        if training and cfg.attention_dropout > 0:
            _warn_once("flex_attention has no dropout: using sdpa while attention_dropout > 0 in training")
            backend = "sdpa"
        elif device.type != "cuda" and torch.is_grad_enabled():
            _warn_once("flex_attention has no CPU backward: using sdpa for differentiable CPU calls")
            backend = "sdpa"
    if backend == "flex":
        return AttentionMask(backend, n_past, block=_block_mask(t_q, n_past, cfg.sliding_window, device))
    return AttentionMask(backend, n_past, dense=window_mask(t_q, n_past, cfg.sliding_window, device))


def eager_attention(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, dropout_p: float) -> Tensor:
    """Reference: fp32 scores ``[B, H, T, n_past+T]``, masked softmax, dropout, values."""
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # [B, H, T, Tk]
    scores = scores.masked_fill(~mask.dense, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, v.float()).to(q.dtype)  # [B, H, T, hd]


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, dropout_p: float) -> Tensor:
    """``scaled_dot_product_attention`` with the boolean window mask."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense, dropout_p=dropout_p, scale=q.shape[-1] ** -0.5)


@functools.cache
def _compiled_flex() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_attention_backend(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, dropout_p: float) -> Tensor:
    """``flex_attention`` with the sliding-window block mask: compiled on CUDA (inlined when the
    caller is already being compiled), torch's unfused version on CPU (inference only)."""
    from torch.nn.attention.flex_attention import flex_attention

    scale = q.shape[-1] ** -0.5
    if torch.compiler.is_compiling():
        # inside a caller's graph: inlined there (and dynamo cannot trace warnings.catch_warnings)
        return flex_attention(q, k, v, block_mask=mask.block, scale=scale)
    if q.is_cuda:
        return _compiled_flex()(q, k, v, block_mask=mask.block, scale=scale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "called without torch.compile": expected on CPU
        return flex_attention(q, k, v, block_mask=mask.block, scale=scale)


BACKENDS = {"eager": eager_attention, "sdpa": sdpa_attention, "flex": flex_attention_backend}


class PMNetAttention(nn.Module):
    """q/k/v/o projections, per-head q/k RMSNorm, RoPE, sliding window over carried + new keys."""

    def __init__(self, cfg: PMNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, hw = cfg.hidden_size, cfg.attn_width
        self.q_proj = NormalLinear(d, hw, False, cfg.initializer_range)
        self.k_proj = NormalLinear(d, hw, False, cfg.initializer_range)
        self.v_proj = NormalLinear(d, hw, False, cfg.initializer_range)
        self.o_proj = NormalLinear(hw, d, False, cfg.initializer_range)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, past_k: Tensor | None, past_v: Tensor | None, mask: AttentionMask
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
        if mask.n_past > 0:
            assert past_k is not None and past_v is not None and past_k.shape[-2] == mask.n_past
            k_all = torch.cat([past_k.to(k.dtype), k], dim=-2)  # [B, H, n_past+T, hd]
            v_all = torch.cat([past_v.to(v.dtype), v], dim=-2)
        else:
            k_all, v_all = k, v
        dropout_p = cfg.attention_dropout if self.training else 0.0
        out = BACKENDS[mask.backend](q, k_all, v_all, mask, dropout_p)
        out = out.transpose(1, 2).reshape(b, t, cfg.attn_width)
        keep = min(cfg.sliding_window - 1, k_all.shape[-2])
        # clone: a slice would keep the whole chunk's keys alive, and the state must stay W-1 long
        new_k = k_all[:, :, k_all.shape[-2] - keep :].clone()
        new_v = v_all[:, :, v_all.shape[-2] - keep :].clone()
        return self.o_proj(out), new_k, new_v
