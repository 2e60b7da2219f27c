"""Sliding-window causal self-attention with carried keys/values (docs/model.md section 2).

Three interchangeable backends compute the same thing:

* ``eager``: explicit scores, mask and softmax in fp32 (the reference and test oracle);
* ``sdpa``: ``F.scaled_dot_product_attention`` (CPU, and the GPU path when attention
  dropout is on in training);
* ``flex``: ``flex_attention`` with a sliding-window block mask, so work is proportional
  to T x W, not T x T (GPU; on CPU it runs torch's unfused eager version, slow but exact).

``eager`` and ``sdpa`` lay the window out in one of two ways (``cfg.attn_window``):

* ``dense``: one boolean mask ``[T, n_past + T]``; every score is computed, O(T^2) work
  and memory (the simple reference);
* ``blocked`` (default): queries in blocks of W, each block against the 2W keys it can
  reach (the block before and its own; the carried keys stand in front of block 0), with
  one ``[nb, W, 2W]`` mask, so work and memory are O(T x W). Chunks too short for that to
  save work (generation steps) use the dense mask.

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


def blocked_window_mask(t_q: int, n_past: int, window: int, device: torch.device) -> Tensor:
    """Boolean ``[nb, W, 2W]`` (nb = ceil(T / W)): True where query i of block b may attend key j of
    the block's 2W keys (:func:`to_blocks`).

    Block b holds queries ``bW .. bW + W - 1`` (chunk offsets) and keys at offsets
    ``(b - 1)W .. bW + W - 1``, so query i sees keys i + 1 .. i + W in every block. Block 0's
    first keys are padding in front of the carried ones (offsets below ``-n_past``), masked
    too; padding behind the chunk is always in a query's future.
    """
    w = window
    nb = -(-t_q // w)
    qi = torch.arange(w, device=device)[:, None]
    kj = torch.arange(2 * w, device=device)[None, :]
    base = (kj > qi) & (kj <= qi + w)  # [W, 2W]
    mask = base.expand(nb, w, 2 * w).clone()
    mask[0] &= kj >= w - min(n_past, w)  # [2W] broadcast over the block's queries
    return mask


def blocked_is_cheaper(t_q: int, n_past: int, window: int) -> bool:
    """Whether the blocked layout computes fewer scores than the dense ``[T, n_past + T]`` mask."""
    nb = -(-t_q // window)
    return nb * window * 2 * window < t_q * (n_past + t_q)


def to_blocks(q: Tensor, k: Tensor, v: Tensor, window: int) -> tuple[Tensor, Tensor, Tensor]:
    """q [B, H, T, hd], k/v [B, H, n_past + T, hd] -> q [B, H, nb, W, hd], k/v [B, H, nb, 2W, hd].

    Keys are padded to start W before the chunk (carried keys farther back are invisible) and
    to end at nb * W; block b takes key slots ``bW .. bW + 2W`` of that (a copy: 2x the keys).
    """
    w = window
    t = q.shape[-2]
    n_past = k.shape[-2] - t
    nb = -(-t // w)
    keep = min(n_past, w)
    q = F.pad(q, (0, 0, 0, nb * w - t)).unflatten(-2, (nb, w))

    def blocks(x: Tensor) -> Tensor:
        x = F.pad(x[..., n_past - keep :, :], (0, 0, w - keep, nb * w - t)).unflatten(-2, (nb + 1, w))
        return torch.cat([x[..., :-1, :, :], x[..., 1:, :, :]], dim=-2)  # [B, H, nb, 2W, hd]

    return q, blocks(k), blocks(v)


def from_blocks(out: Tensor, t_q: int) -> Tensor:
    """[B, H, nb, W, hd] -> [B, H, T, hd] (drops the padded queries of the last block)."""
    return out.flatten(-3, -2)[..., :t_q, :]


@dataclass
class AttentionMask:
    """The window of one forward call, built once and shared by every layer (all carry n_past keys)."""

    backend: str
    "Backend that runs: cfg.attn_backend, or sdpa where flex cannot (dropout, CPU backward)."
    n_past: int
    "Carried keys in front of the chunk's own."
    dense: Tensor | None = None
    "[T, n_past + T] bool (eager, sdpa with the dense layout)."
    blocked: Tensor | None = None
    "[nb, W, 2W] bool (eager, sdpa with the blocked layout; see blocked_window_mask)."
    block: Any = None
    "flex BlockMask (flex)."

    @property
    def window(self) -> int:
        """W of the blocked layout."""
        assert self.blocked is not None
        return self.blocked.shape[-2]


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
    """Pick the backend and window layout that can run this call and build its mask once.

    flex_attention has no dropout, so a training call with attention_dropout > 0 runs sdpa
    (the 119M preset's 0.1 keeps its meaning; with the blocked layout it costs about what
    flex does); on CPU flex has no backward, so a call that needs gradients runs sdpa too.
    Both are warned once. eager / sdpa use ``cfg.attn_window``; the blocked layout gives way
    to the dense mask for chunks where it would compute more scores (T <= W: generation).
    """
    backend = cfg.attn_backend
    w = cfg.sliding_window
    if backend == "flex":
        if training and cfg.attention_dropout > 0:
            _warn_once(
                f"flex_attention has no dropout: using sdpa ({cfg.attn_window} window) "
                "while attention_dropout > 0 in training"
            )
            backend = "sdpa"
        elif device.type != "cuda" and torch.is_grad_enabled():
            _warn_once("flex_attention has no CPU backward: using sdpa for differentiable CPU calls")
            backend = "sdpa"
    if backend == "flex":
        return AttentionMask(backend, n_past, block=_block_mask(t_q, n_past, w, device))
    if cfg.attn_window == "blocked" and blocked_is_cheaper(t_q, n_past, w):
        return AttentionMask(backend, n_past, blocked=blocked_window_mask(t_q, n_past, w, device))
    return AttentionMask(backend, n_past, dense=window_mask(t_q, n_past, w, device))


def _eager_core(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, dropout_p: float) -> Tensor:
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # [..., Tq, Tk]
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, v.float()).to(q.dtype)


def eager_attention(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, dropout_p: float) -> Tensor:
    """Reference: fp32 scores ``[B, H, T, n_past+T]`` (dense) or ``[B, H, nb, W, 2W]`` (blocked),
    masked softmax, dropout, values."""
    if mask.blocked is None:
        assert mask.dense is not None  # AttentionMask holds one of the two layouts
        return _eager_core(q, k, v, mask.dense, dropout_p)  # [B, H, T, hd]
    qb, kb, vb = to_blocks(q, k, v, mask.window)
    return from_blocks(_eager_core(qb, kb, vb, mask.blocked, dropout_p), q.shape[-2])


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask, dropout_p: float) -> Tensor:
    """``scaled_dot_product_attention`` with the window mask (dense), or over the query blocks
    (blocked: the nb blocks take the place of the head axis, B*H that of the batch)."""
    scale = q.shape[-1] ** -0.5
    if mask.blocked is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense, dropout_p=dropout_p, scale=scale)
    qb, kb, vb = (x.flatten(0, 1) for x in to_blocks(q, k, v, mask.window))  # [B*H, nb, W or 2W, hd]
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask.blocked, dropout_p=dropout_p, scale=scale)
    return from_blocks(out.unflatten(0, q.shape[:2]), q.shape[-2])


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
