"""Small building blocks of the PMNet backbone: fp32 RMSNorm, RoPE and the SwiGLU MLP.

Shape letters follow docs/model.md (B batch, T bytes, d hidden, H heads, hd head width).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NormalLinear(nn.Linear):
    """nn.Linear initialised N(0, std) with zero bias inside its own ``__init__``.

    Initialising in the constructor (not in a later pass over the model) matters under
    DeepSpeed ZeRO-3's ``zero.Init``, which partitions each module's parameters as soon as
    its constructor returns: a later ``normal_`` would touch an empty shard. nn.Linear's own
    Kaiming-uniform initialisation, which ours would overwrite, is skipped (it was 80% of the
    119M model's construction time).
    """

    std: float | None = None  # None while nn.Linear.__init__ runs: its reset_parameters() is skipped

    def __init__(self, in_features: int, out_features: int, bias: bool, std: float) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.std = std
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, std) weight, zero bias."""
        if self.std is None:
            return
        with torch.no_grad():
            nn.init.normal_(self.weight, mean=0.0, std=self.std)
            if self.bias is not None:
                nn.init.zeros_(self.bias)


class NormalEmbedding(nn.Embedding):
    """nn.Embedding initialised N(0, std) in its constructor (see NormalLinear)."""

    std: float | None = None

    def __init__(self, num_embeddings: int, embedding_dim: int, std: float) -> None:
        super().__init__(num_embeddings, embedding_dim)
        self.std = std
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, std)."""
        if self.std is None:
            return
        with torch.no_grad():
            nn.init.normal_(self.weight, mean=0.0, std=self.std)


class RMSNorm(nn.Module):
    """``w * x / sqrt(mean(x^2) + eps)`` computed in fp32 whatever the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * xf).to(dtype)


def rope_cos_sin(
    position: int, length: int, head_dim: int, theta: float, device: torch.device
) -> tuple[Tensor, Tensor]:
    """cos and sin ``[T, hd]`` for absolute positions ``position .. position+T-1`` (rotate-half layout).

    Computed in fp32 the way the Hugging Face Qwen3 code does, so our angles match the
    released model's bit for bit at every position; the values depend only on the
    absolute position, so chunked streaming sees exactly the angles of one pass.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    pos = torch.arange(position, position + length, dtype=torch.int64, device=device).float()
    freqs = pos[:, None] * inv_freq[None, :]  # [T, hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [T, hd]
    return emb.cos(), emb.sin()


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) over the last dim's two halves."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` [B, H, T, hd] by the angles ``cos/sin`` [T, hd] (fp32 math, result in x's dtype)."""
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``, no biases (Qwen3 MLP)."""

    def __init__(self, hidden_size: int, intermediate_size: int, std: float) -> None:
        super().__init__()
        self.gate_proj = NormalLinear(hidden_size, intermediate_size, False, std)
        self.up_proj = NormalLinear(hidden_size, intermediate_size, False, std)
        self.down_proj = NormalLinear(intermediate_size, hidden_size, False, std)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
