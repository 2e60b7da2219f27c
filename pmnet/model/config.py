"""PMNet model configuration: the shapes and switches of docs/model.md, with derived values.

Shape legend used across ``pmnet.model`` (docs/model.md notation):
    B batch, T bytes in a chunk, d hidden size, H attention heads, hd head width,
    W sliding window, L layers, P write period, K = L / P memory levels,
    N slots per group, M phase width, R read heads, G groups of a level (N**k).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pmnet.vocab import BOS_ID, EOS_ID, PAD_ID

ATTN_BACKENDS = ("eager", "sdpa", "flex")
ATTN_WINDOWS = ("blocked", "dense")
MEMORY_IMPLS = ("reference", "fast")


@dataclass
class PMNetConfig:
    """Shapes and switches of a PMNet model (docs/model.md sections 2-6)."""

    hidden_size: int = 512
    "d: width of the residual stream."
    intermediate_size: int = 1024
    "Hidden width of the SwiGLU MLP."
    num_hidden_layers: int = 12
    "L: number of decoder layers."
    num_attention_heads: int = 12
    "H: attention heads (H * head_dim may differ from hidden_size)."
    head_dim: int = 64
    "hd: width of one attention head."
    sliding_window: int = 128
    "W: a query at t sees keys t-W+1 .. t (W keys, itself included)."
    rope_theta: float = 1_000_000.0
    "RoPE base."
    rms_norm_eps: float = 1e-6
    "Epsilon of every RMSNorm."
    vocab_size: int = 384
    "Embedding rows (256 byte values, padded for speed)."
    memory_size: int = 512
    "M: phases per memory slot."
    num_memory: int = 4
    "N: slots per memory group (and branching factor of the tree)."
    num_memory_read_heads: int = 4
    "R: read heads of every layer's memory read."
    memory_write_period: int = 3
    "P: a memory write happens at layers l with l % P == 0."
    memory_cumsum: bool = True
    "Recurrence on: S_t is a per-group prefix sum (false = the 'no recurrence' ablation)."
    use_memory: bool = True
    "False gives the 'no memory' ablation: a pure sliding-window transformer."
    attention_dropout: float = 0.0
    "Dropout on attention probabilities during training (the paper's 119M run used 0.1)."
    initializer_range: float = 0.02
    "Std of the normal initialisation of linear weights, embeddings and anchors."
    tie_word_embeddings: bool = True
    "LM head shares the embedding matrix (the released model does)."
    attn_backend: str = "sdpa"
    "Attention implementation: eager (reference), sdpa (masked, CPU), flex (GPU)."
    attn_window: str = "blocked"
    "Window layout of eager / sdpa: blocked (blocks of W queries, O(T x W)) or dense ([T, T] mask, reference)."
    memory_impl: str = "fast"
    "Phasor memory implementation: fast (vectorised) or reference (per-position loop)."
    bos_token_id: int = BOS_ID
    "Id that starts every document."
    eos_token_id: int = EOS_ID
    "Id that ends every document."
    pad_token_id: int = PAD_ID
    "Id of padding (never a target)."

    # ---- derived values -------------------------------------------------
    @property
    def num_levels(self) -> int:
        """K = L / P memory levels."""
        return self.num_hidden_layers // self.memory_write_period

    def groups_at_level(self, k: int) -> int:
        """Groups of level k: N**k."""
        return self.num_memory**k

    @property
    def total_groups(self) -> int:
        """Groups in the whole tree (85 for N = 4, K = 4)."""
        return sum(self.groups_at_level(k) for k in range(self.num_levels))

    @property
    def attn_width(self) -> int:
        """H * hd."""
        return self.num_attention_heads * self.head_dim

    @property
    def receptive_field(self) -> int:
        """Bytes reachable by attention alone: L * W."""
        return self.num_hidden_layers * self.sliding_window

    def validate(self) -> list[str]:
        """Return one message per impossible setting (empty when the config is usable)."""
        errs: list[str] = []
        positive = (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "head_dim", "sliding_window", "vocab_size", "memory_size", "num_memory",
            "num_memory_read_heads", "memory_write_period",
        )  # fmt: skip
        for name in positive:
            v = getattr(self, name)
            if v < 1:
                errs.append(f"{name}={v}: must be >= 1")
        if self.head_dim % 2:
            errs.append(f"head_dim={self.head_dim}: must be even (RoPE rotates pairs)")
        if self.memory_write_period >= 1 and self.num_hidden_layers % self.memory_write_period:
            errs.append(
                f"num_hidden_layers={self.num_hidden_layers}: must be divisible by "
                f"memory_write_period={self.memory_write_period}"
            )
        if self.vocab_size < 256:
            errs.append(f"vocab_size={self.vocab_size}: must be >= 256 (every byte value)")
        if not 0.0 <= self.attention_dropout < 1.0:
            errs.append(f"attention_dropout={self.attention_dropout}: must be in [0, 1)")
        if self.attn_backend not in ATTN_BACKENDS:
            errs.append(f"attn_backend={self.attn_backend!r}: must be one of {ATTN_BACKENDS}")
        if self.attn_window not in ATTN_WINDOWS:
            errs.append(f"attn_window={self.attn_window!r}: must be one of {ATTN_WINDOWS}")
        if self.memory_impl not in MEMORY_IMPLS:
            errs.append(f"memory_impl={self.memory_impl!r}: must be one of {MEMORY_IMPLS}")
        if self.rms_norm_eps <= 0:
            errs.append(f"rms_norm_eps={self.rms_norm_eps}: must be > 0")
        if self.rope_theta <= 0:
            errs.append(f"rope_theta={self.rope_theta}: must be > 0")
        return errs

    def num_parameters(self) -> int:
        """Analytic parameter count, tied head counted once (docs/model.md section 6)."""
        d, m, n, r = self.hidden_size, self.memory_size, self.num_memory, self.num_memory_read_heads
        hw = self.attn_width
        attn = 3 * d * hw + hw * d + 2 * self.head_dim + 2 * d  # q,k,v,o + q/k norms + 2 layer norms
        mlp = 3 * d * self.intermediate_size
        per_layer = attn + mlp
        total = self.vocab_size * d + d  # embedding + final norm
        if not self.tie_word_embeddings:
            total += self.vocab_size * d
        if self.use_memory:
            read = d + (d * r * m + r * m) + (2 * m * 2 * r * m + 2 * r * m) + (r * m * d + d)
            write = d + (d * m + m) + (2 * m * m + m) + (d * m + m) + (m * m + m)
            per_layer += read
            total += self.num_levels * write + self.total_groups * n * m
        return total + self.num_hidden_layers * per_layer

    def flops_per_byte(self, seq_len: int | None = None, training: bool = True) -> float:
        """Analytic matmul FLOPs per byte (x3 for forward + backward when training).

        Counts every matrix product at its real shape: the read projection Wkv runs on
        each of the N slots of every byte, so the total is far above 6 x params.
        Attention counts the W keys a query really sees (fewer near the start of a
        sequence of ``seq_len`` bytes).
        """
        from pmnet.model.flops import forward_flops_per_byte

        fwd = forward_flops_per_byte(self, seq_len)
        return 3.0 * fwd if training else fwd

    # ---- presets and (de)serialisation ----------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> PMNetConfig:
        """A named preset (``pmnet_119m``, ``pmnet_30m``, ``tiny``) with field overrides."""
        key = name.replace("-", "_")
        if key not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[key], **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (for YAML / JSON)."""
        return dataclasses.asdict(self)


PRESETS: dict[str, PMNetConfig] = {
    # The paper's model: 118,970,368 parameters.
    "pmnet_119m": PMNetConfig(attention_dropout=0.1),
    # The controlled study's size (shapes are our choice; 29,921,152 parameters).
    "pmnet_30m": PMNetConfig(hidden_size=384, intermediate_size=512, memory_size=128),
    # Trains in seconds on a CPU; every level of the tree is exercised (K = 2, 1 + 4 groups).
    "tiny": PMNetConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        head_dim=16,
        sliding_window=16,
        memory_size=16,
        num_memory=4,
        num_memory_read_heads=2,
        memory_write_period=2,
    ),
}


WEIGHT_SHAPE_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "head_dim", "vocab_size",
    "memory_size", "num_memory", "num_memory_read_heads", "memory_write_period", "use_memory", "tie_word_embeddings",
)  # fmt: skip
"""Config fields whose change makes existing weights unusable: a resume, ``train.init_from`` or an
interchange import with another value is refused."""
