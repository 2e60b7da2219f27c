"""PMNet: a Qwen3-style sliding-window decoder with a phasor memory tree (MODEL.md sections 2-5).

``logits, state = PMNetForCausalLM(cfg)(ids, state)``: state in, new state out, nothing
hidden. Module names equal the interchange keys of MODEL.md section 7, so
``model.state_dict()`` is the released checkpoint's key set.

Shape letters: B batch, T bytes, d hidden, H heads, hd head width, W window, N slots,
M phases, R read heads, K levels, G = N**k groups of level k, V vocabulary rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pmnet.model.attention import AttentionMask, PMNetAttention, build_attention_mask
from pmnet.model.config import PMNetConfig
from pmnet.model.layers import NormalEmbedding, NormalLinear, RMSNorm, SwiGLU, rope_cos_sin
from pmnet.model.memory import (
    AnchorTree,
    PhasorMemoryRead,
    PhasorMemoryWrite,
    level_read_input,
    write_diagnostics,
)
from pmnet.model.state import PMNetState

AnchorSpec = str | int | Iterable[int | str] | None


def resolve_anchor_levels(cfg: PMNetConfig, spec: AnchorSpec) -> frozenset[int]:
    """Levels whose anchors are zeroed: ints, or "root" (0), "leaves" (K-1), "all", "none"."""
    if spec is None:
        return frozenset()
    items = [spec] if isinstance(spec, str | int) else list(spec)
    k_levels = cfg.num_levels
    out: set[int] = set()
    for item in items:
        if isinstance(item, str):
            named = {"root": [0], "leaves": [k_levels - 1], "all": list(range(k_levels)), "none": []}
            if item not in named:
                raise ValueError(
                    f"anchor level {item!r}: use an int in [0, {k_levels}), 'root', 'leaves', 'all', 'none'"
                )
            out.update(named[item])
        else:
            if not 0 <= int(item) < k_levels:
                raise ValueError(f"anchor level {item}: out of range [0, {k_levels})")
            out.add(int(item))
    return frozenset(out)


class PMNetDecoderLayer(nn.Module):
    """Attention, (write at l % P == 0), read, MLP; each with a pre-norm residual."""

    def __init__(self, cfg: PMNetConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.level = layer_idx // cfg.memory_write_period
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = PMNetAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, cfg.initializer_range)
        self.has_memory = cfg.use_memory
        self.writes = cfg.use_memory and layer_idx % cfg.memory_write_period == 0
        if self.has_memory:
            self.memory_read_module = PhasorMemoryRead(cfg)
        if self.writes:
            self.memory_write_module = PhasorMemoryWrite(cfg)

    def forward(
        self,
        h: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: AttentionMask,
        past_k: Tensor | None,
        past_v: Tensor | None,
        phase: Tensor | None,
        group: Tensor | None,
        anchor: Tensor | None,
        carried: Tensor | None,
        collect: bool = False,
        level_read: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None, dict[str, Tensor], Tensor | None]:
        """One layer.

        h [B, T, d]; cos/sin [T, hd]; mask: the chunk's attention window; past_k/v [B, H, <=W-1, hd]; phase Phi [B, T, N, M] fp32;
        group [B, T] level-k ids; anchor E_k[g] [B, T, N, M] fp32 or None (zeroed); carried [B, G, N, M]
        (write layers); level_read: what the level's write layer prepared for its reads
        (``memory.level_read_input``: the slot features of ``Phi + E_k[g]`` on the fast path,
        the angles themselves on the reference path). Phi and the anchors change only at a
        write, so the P layers of a level read the same angles; read-only layers reuse it.
        Returns (h, new_k, new_v, Phi, child group or None, new group state or None,
        diagnostics, level_read or None).
        """
        attn_out, new_k, new_v = self.self_attn(self.input_layernorm(h), cos, sin, past_k, past_v, mask)
        h = h + attn_out
        child = state = None
        diag: dict[str, Tensor] = {}
        if self.has_memory:
            assert phase is not None and group is not None
            if self.writes:
                assert carried is not None
                res = self.memory_write_module(h, phase, group, carried, anchor)
                child, state = res.child_group, res.group_state
                if collect:
                    diag = write_diagnostics(res, self.level, carried.shape[2])
                # Phi accumulates over levels; the read at this layer already sees the increment
                read_mod = self.memory_read_module
                phase, level_read = level_read_input(
                    read_mod.impl, phase, res.phi_increment, anchor, read_mod.proj_kv.weight.dtype
                )
            assert level_read is not None, "a read-only layer needs its level's write layer before it"
            h = h + self.memory_read_module(h, prepared=level_read)
        h = h + self.mlp(self.post_attention_layernorm(h))
        return h, new_k, new_v, phase, child, state, diag, level_read


class PMNetModel(nn.Module):
    """Embedding, decoder layers, final norm, memory anchors (``model.*`` keys)."""

    def __init__(self, cfg: PMNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = NormalEmbedding(cfg.vocab_size, cfg.hidden_size, cfg.initializer_range)
        self.layers = nn.ModuleList(PMNetDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.use_memory:
            self.memory_embeddings = AnchorTree(cfg)
        self.gradient_checkpointing = False

    def forward(
        self, ids: Tensor, state: PMNetState, collect: bool, zeroed: frozenset[int]
    ) -> tuple[Tensor, PMNetState]:
        """ids [B, T] -> final hidden [B, T, d] (after the last norm) and the new state."""
        cfg = self.cfg
        b, t = ids.shape
        h = self.embed_tokens(ids)  # [B, T, d]
        cos, sin = rope_cos_sin(state.position, t, cfg.head_dim, cfg.rope_theta, ids.device)
        n_past = state.keys[0].shape[-2] if state.keys else 0
        mask = build_attention_mask(cfg, t, n_past, ids.device, self.training)
        phase = group = child = anchor = level_read = None
        if cfg.use_memory:
            phase = torch.zeros(b, t, cfg.num_memory, cfg.memory_size, device=ids.device)  # Phi, fp32
            group = torch.zeros(b, t, dtype=torch.int64, device=ids.device)  # root
        new_keys, new_values, new_phases = [], [], []
        diagnostics: dict[str, Tensor] = {}
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            level = layer.level
            carried = None
            if cfg.use_memory and layer.writes:
                if child is not None:
                    group = child  # routing of level k-1 takes effect from layer kP on
                carried = state.group_phases[level]  # type: ignore[index]  # nn.ModuleList types layer.level as Tensor | Module; it is an int
                # E_k[g]: one lookup serves the P layers of the level
                anchor = None if level in zeroed else self.memory_embeddings(level, group)
            past_k = state.keys[i] if state.keys else None
            past_v = state.values[i] if state.values else None
            args = (h, cos, sin, mask, past_k, past_v, phase, group, anchor, carried, collect, level_read)
            if use_ckpt:
                out = checkpoint(layer, *args, use_reentrant=False)
            else:
                out = layer(*args)
            h, k_i, v_i, phase, new_child, g_state, diag, level_read = out
            new_keys.append(k_i)
            new_values.append(v_i)
            if layer.writes:
                child = new_child
                new_phases.append(g_state)
            diagnostics.update(diag)
        new_state = PMNetState(
            group_phases=new_phases,
            keys=new_keys,
            values=new_values,
            position=state.position + t,
            diagnostics=diagnostics if collect else None,
        )
        return self.norm(h), new_state


class PMNetForCausalLM(nn.Module):
    """PMNet with a (tied) LM head: ``logits, state = model(ids, state)``."""

    def __init__(self, cfg: PMNetConfig) -> None:
        super().__init__()
        errs = cfg.validate()
        if errs:
            raise ValueError("invalid PMNetConfig: " + "; ".join(errs))
        self.config = cfg
        self.model = PMNetModel(cfg)
        self.lm_head = NormalLinear(cfg.hidden_size, cfg.vocab_size, False, cfg.initializer_range)
        # every module initialised itself (see NormalLinear); only the tie is left
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding matrix with the LM head (tie_word_embeddings)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-initialise: N(0, initializer_range) for linears, embedding and anchors; zero biases; ones
        for norms (the constructors already do this; not usable on ZeRO-3 shards)."""
        std = self.config.initializer_range
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, mean=0.0, std=std)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.Embedding):
                nn.init.normal_(mod.weight, mean=0.0, std=std)
            elif isinstance(mod, RMSNorm):
                nn.init.ones_(mod.weight)
        if self.config.use_memory:
            for emb in self.model.memory_embeddings:
                nn.init.normal_(emb, mean=0.0, std=std)
        self.tie_weights()

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each decoder layer in backward (torch.utils.checkpoint, non-reentrant)."""
        self.model.gradient_checkpointing = bool(enabled)

    def compile_layers(self, **compile_kwargs: Any) -> None:
        """``torch.compile`` every decoder layer in place (``nn.Module.compile``: state_dict keys unchanged).

        Defaults to ``fullgraph=True``: the fast path has static shapes only, so a graph
        break is a bug, not a slowdown to live with.
        """
        from pmnet.model.compiled import _raise_recompile_limit

        # every layer shares one code object: write / read-only layers, each level's shapes,
        # training and no-grad eval are separate entries, more than dynamo's default of 8
        _raise_recompile_limit(64)
        compile_kwargs.setdefault("fullgraph", True)
        for layer in self.model.layers:
            layer.compile(**compile_kwargs)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> PMNetState:
        """Fresh state for ``batch_size`` new streams: zero phases, empty windows, position 0."""
        param = self.model.embed_tokens.weight
        return initial_state(self.config, batch_size, param.device if device is None else device, param.dtype)

    @classmethod
    def from_pretrained(cls, path: str | Any, **kwargs: Any) -> PMNetForCausalLM:
        """The model of an interchange directory (ours or one transformers saved the released model
        into); ``kwargs`` as :func:`pmnet.model.interchange.load_pretrained` (device, dtype, run-time
        config switches). The config is ``model.config``."""
        from pmnet.model.interchange import load_pretrained

        return load_pretrained(path, **kwargs)[0]

    def save_pretrained(self, out_dir: str | Any, dtype: torch.dtype = torch.float32) -> Any:
        """Write the interchange directory (config.json, model.safetensors, tokenizer files)."""
        from pmnet.model.interchange import save_pretrained

        return save_pretrained(self, out_dir, self.config, dtype=dtype)

    def forward(
        self,
        ids: Tensor,
        state: PMNetState | None = None,
        *,
        collect_diagnostics: bool = False,
        zero_anchor_levels: AnchorSpec = (),
    ) -> tuple[Tensor, PMNetState]:
        """ids [B, T] int64 -> (logits [B, T, V] in the compute dtype, new state)."""
        if ids.dim() != 2:
            raise ValueError(f"ids must be [B, T], got shape {tuple(ids.shape)}")
        if state is None:
            state = self.init_state(ids.shape[0], ids.device)
        elif (state.keys or state.group_phases) and state.batch_size != ids.shape[0]:
            raise ValueError(f"state is for batch size {state.batch_size}, ids have {ids.shape[0]}")
        zeroed = resolve_anchor_levels(self.config, zero_anchor_levels) if self.config.use_memory else frozenset()
        hidden, new_state = self.model(ids, state, collect_diagnostics, zeroed)
        return self.lm_head(hidden), new_state

    def extra_repr(self) -> str:
        return f"params={sum(p.numel() for p in self.parameters()):,}"


def initial_state(
    cfg: PMNetConfig, batch_size: int, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> PMNetState:
    """Fresh state of ``cfg`` for ``batch_size`` streams: zero fp32 phases, empty windows (``dtype``), position 0."""
    device = torch.device(device)
    phases = [
        torch.zeros(batch_size, cfg.groups_at_level(k), cfg.num_memory, cfg.memory_size, device=device)
        for k in range(cfg.num_levels if cfg.use_memory else 0)
    ]
    empty = (batch_size, cfg.num_attention_heads, 0, cfg.head_dim)
    keys = [torch.zeros(empty, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
    values = [torch.zeros(empty, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
    return PMNetState(group_phases=phases, keys=keys, values=values, position=0)


def lm_loss(logits: Tensor, targets: Tensor, ignore_index: int = 0) -> Tensor:
    """Next-byte cross entropy in fp32, mean over positions whose target != ignore_index.

    ``logits[:, t]`` predicts ``targets[:, t]`` (the caller shifts). 0 when no target counts.
    """
    flat = logits.float().reshape(-1, logits.shape[-1])
    tgt = targets.reshape(-1)
    total = F.cross_entropy(flat, tgt, ignore_index=ignore_index, reduction="sum")
    count = (tgt != ignore_index).sum().clamp(min=1)
    return total / count
