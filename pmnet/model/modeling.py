"""PMNet: a Qwen3-style sliding-window decoder with a phasor memory tree (docs/model.md sections 2-5).

``logits, state = PMNetForCausalLM(cfg)(ids, state)``: state in, new state out, nothing
hidden. Module names equal the interchange keys of docs/model.md section 7, so
``model.state_dict()`` is the released checkpoint's key set.

Shape letters: B batch, T bytes, d hidden, H heads, hd head width, W window, N slots,
M phases, R read heads, K levels, G = N**k groups of level k, V vocabulary rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pmnet.model.attention import AttentionMask, PMNetAttention, build_attention_mask
from pmnet.model.config import PMNetConfig
from pmnet.model.layers import NormalEmbedding, NormalLinear, RMSNorm, SwiGLU, rope_cos_sin
from pmnet.model.memory import AnchorTree, PhasorMemoryRead, PhasorMemoryWrite, write_diagnostics
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


class LayerMemory(NamedTuple):
    """What a decoder layer's memory takes (shapes for the layer's level k, G = N**k)."""

    phase: Tensor
    "Phi [B, T, N, M] fp32: the phases accumulated by the writes of levels < k (<= k after its write)."
    group: Tensor
    "[B, T] int64: each byte's level-k group."
    anchor: Tensor | None = None
    "E_k[g] [B, T, N, M] fp32, or None (the level's anchors zeroed)."
    carried: Tensor | None = None
    "[B, G, N, M] fp32 group states carried from the previous chunk (write layers; else None)."
    level_read: Tensor | None = None
    """What the level's write layer prepared for its reads (``PhasorMemoryRead.level_input``:
    the slot features of ``Phi + E_k[g]`` on the fast path, the angles on the reference path).
    Phi and the anchors change only at a write, so the P layers of a level read the same
    angles; read-only layers reuse it."""


class LayerOutput(NamedTuple):
    """What a decoder layer returns."""

    hidden: Tensor
    "h [B, T, d] after the layer."
    key: Tensor
    "[B, H, <= W-1, hd] post-RoPE keys to carry to the next chunk."
    value: Tensor
    "[B, H, <= W-1, hd] values to carry."
    phase: Tensor | None
    "Phi after the layer's write (None without memory)."
    child_group: Tensor | None
    "Write layers: [B, T] the level-(k+1) group of each byte; else None."
    group_state: Tensor | None
    "Write layers: [B, G, N, M] the new group states of level k; else None."
    diagnostics: dict[str, Tensor]
    "Detached write scalars (``collect=True`` on write layers; else empty)."
    level_read: Tensor | None
    "What the level's reads take (see :attr:`LayerMemory.level_read`)."


@torch.no_grad()
def init_module_weights(module: nn.Module, std: float) -> None:
    """The initialisation of one module (not its children): N(0, std) for linear and embedding
    weights and the memory anchors, zero biases, ones for norms."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, RMSNorm):
        nn.init.ones_(module.weight)
    elif isinstance(module, AnchorTree):
        for emb in module:
            nn.init.normal_(emb, mean=0.0, std=std)


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
        *,
        past_k: Tensor | None = None,
        past_v: Tensor | None = None,
        memory: LayerMemory | None = None,
        collect: bool = False,
    ) -> LayerOutput:
        """One layer.

        h [B, T, d]; cos/sin [T, hd]; mask: the chunk's attention window; past_k/v [B, H, <=W-1, hd];
        memory: the memory's inputs (layers with memory; ``carried`` on write layers, ``level_read``
        on read-only ones).
        """
        attn_out, new_k, new_v = self.self_attn(self.input_layernorm(h), cos, sin, past_k, past_v, mask)
        h = h + attn_out
        phase = child = state = level_read = None
        diag: dict[str, Tensor] = {}
        if self.has_memory:
            assert memory is not None
            phase, level_read = memory.phase, memory.level_read
            if self.writes:
                assert memory.carried is not None
                res = self.memory_write_module(h, phase, memory.group, memory.carried, memory.anchor)
                child, state = res.child_group, res.group_state
                if collect:
                    diag = write_diagnostics(res, self.level, memory.carried.shape[2])
                # Phi accumulates over levels; the read at this layer already sees the increment
                phase, level_read = self.memory_read_module.level_input(phase, res.phi_increment, memory.anchor)
            assert level_read is not None, "a read-only layer needs its level's write layer before it"
            h = h + self.memory_read_module(h, prepared=level_read)
        h = h + self.mlp(self.post_attention_layernorm(h))
        return LayerOutput(h, new_k, new_v, phase, child, state, diag, level_read)


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
        mem: LayerMemory | None = None
        child: Tensor | None = None
        if cfg.use_memory:
            mem = LayerMemory(
                phase=torch.zeros(b, t, cfg.num_memory, cfg.memory_size, device=ids.device),  # Phi, fp32
                group=torch.zeros(b, t, dtype=torch.int64, device=ids.device),  # root
            )
        new_keys: list[Tensor] = []
        new_values: list[Tensor] = []
        new_phases: list[Tensor] = []
        diagnostics: dict[str, Tensor] = {}
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(cast("Iterable[PMNetDecoderLayer]", self.layers)):
            level = layer.level
            if mem is not None:
                if layer.writes:
                    # routing of level k-1 takes effect from layer kP on
                    group = mem.group if child is None else child
                    # E_k[g]: one lookup serves the P layers of the level
                    anchor = None if level in zeroed else self.memory_embeddings(level, group)
                    mem = mem._replace(group=group, anchor=anchor, carried=state.group_phases[level])
                else:
                    mem = mem._replace(carried=None)
            past_k = state.keys[i] if state.keys else None
            past_v = state.values[i] if state.values else None
            run = partial(checkpoint, layer, use_reentrant=False) if use_ckpt else layer
            out: LayerOutput = run(h, cos, sin, mask, past_k=past_k, past_v=past_v, memory=mem, collect=collect)
            h = out.hidden
            new_keys.append(out.key)
            new_values.append(out.value)
            if mem is not None:
                assert out.phase is not None
                mem = mem._replace(phase=out.phase, level_read=out.level_read)
            if layer.writes:
                assert out.group_state is not None
                child = out.child_group
                new_phases.append(out.group_state)
            diagnostics.update(out.diagnostics)
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
        for mod in self.modules():
            init_module_weights(mod, self.config.initializer_range)
        self.tie_weights()

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each decoder layer in backward (torch.utils.checkpoint, non-reentrant)."""
        self.model.gradient_checkpointing = bool(enabled)

    def compile_layers(self, **compile_kwargs: Any) -> None:
        """``torch.compile`` every decoder layer in place (``nn.Module.compile``: state_dict keys unchanged).

        Defaults to ``fullgraph=True``: the fast path has static shapes only, so a graph
        break is a bug, not a slowdown to live with.
        """
        # every layer shares one code object: write / read-only layers, each level's shapes,
        # training and no-grad eval are separate entries, more than dynamo's default of 8
        raise_recompile_limit(64)
        compile_kwargs.setdefault("fullgraph", True)
        for layer in self.model.layers:
            layer.compile(**compile_kwargs)

    def compile_memory_cores(self, enabled: bool = True) -> None:
        """Run the fast memory's read / write / scan / level cores through ``torch.compile(fullgraph=True)``
        (``fused.py``: compiled once per process, shared by every layer and model); False: eager.

        The switch belongs to this model: its memory modules read it (``compiled_cores``), so a
        second model in the same process (an eager baseline, an ablated variant) is unaffected.
        Inside a layer compiled whole (:meth:`compile_layers`) the eager cores are inlined instead.
        """
        for mod in self.modules():
            if isinstance(mod, PhasorMemoryRead | PhasorMemoryWrite):
                mod.compiled_cores = bool(enabled)

    @property
    def memory_cores_compiled(self) -> bool:
        """Whether :meth:`compile_memory_cores` switched the compiled cores on."""
        return any(
            mod.compiled_cores for mod in self.modules() if isinstance(mod, PhasorMemoryRead | PhasorMemoryWrite)
        )

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> PMNetState:
        """Fresh state for ``batch_size`` new streams: zero phases, empty windows, position 0."""
        param = self.model.embed_tokens.weight
        return initial_state(self.config, batch_size, param.device if device is None else device, param.dtype)

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


def raise_recompile_limit(limit: int) -> None:
    """Let one code object hold ``limit`` compiled versions (dynamo's default is 8).

    One compiled function or module class serves every shape it meets (training, no-grad
    eval, chunks with and without carried keys, each level's group count for the scan).
    """
    import torch._dynamo as dynamo  # only when compiling: importing dynamo costs seconds

    for name in ("recompile_limit", "cache_size_limit"):  # renamed across torch versions
        if hasattr(dynamo.config, name) and getattr(dynamo.config, name) < limit:
            setattr(dynamo.config, name, limit)


def lm_loss(logits: Tensor, targets: Tensor, ignore_index: int = 0) -> Tensor:
    """Next-byte cross entropy in fp32, mean over positions whose target != ignore_index.

    ``logits[:, t]`` predicts ``targets[:, t]`` (the caller shifts). 0 when no target counts.
    """
    flat = logits.float().reshape(-1, logits.shape[-1])
    tgt = targets.reshape(-1)
    total = F.cross_entropy(flat, tgt, ignore_index=ignore_index, reduction="sum")
    count = (tgt != ignore_index).sum().clamp(min=1)
    return total / count
