"""Phasor memory modules: the write (one per level) and the read (every layer).

The modules own the parameters (their names are the interchange keys of docs/model.md
section 7); the arithmetic lives in ``fused.py`` (the fast cores, pure tensor functions) and,
as the slow oracle, in ``reference.py``; ``cfg.memory_impl`` picks one. On the fast path a
module hands its weights to the cores, compiled when its ``compiled_cores`` is set
(``PMNetForCausalLM.compile_memory_cores``). Imports run one way: scan <- fused, reference
<- memory <- modeling.

Per byte position t the forward carries a group id g_t (level-k group, [B, T] int64)
and a phase tensor Phi_t ([B, T, N, M] fp32). A layer of level k sees the angles
``phi = Phi + E_k[g]`` (anchors of the byte's current group).

Where docs/model.md leaves a layout open, this is our reading (and the released format's
natural one):
* slot features are ``[sin phi, cos phi]`` concatenated on the last dim (sin first);
* the read's ``proj_q`` output [R*M] is R heads of M (head-major), and ``proj_kv``'s
  output [2*R*M] is all R keys (head-major) followed by all R values;
* a write layer updates Phi before that layer's read, so the read at layer kP already
  sees the level-k increment, still with the level-k anchors (routing to the child
  group takes effect from layer (k+1)P on).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pmnet.model import fused
from pmnet.model.config import PMNetConfig
from pmnet.model.layers import NormalLinear, RMSNorm
from pmnet.model.reference import read_reference, write_reference
from pmnet.model.state import WriteResult

__all__ = [
    "AnchorTree",
    "PhasorMemoryRead",
    "PhasorMemoryWrite",
    "WriteResult",
    "read_fast",
    "read_fast_features",
    "uniform_entropy",
    "write_diagnostics",
    "write_fast",
]


class AnchorTree(nn.ParameterList):
    """The anchors ``E_k`` [N**k, N, M] of every level (keys ``memory_embeddings.{k}``).

    Looked up through this module's own ``forward`` so that parameter-gathering hooks
    (DeepSpeed ZeRO-3 fetches a module's parameters when the module is called) see the use.
    """

    def __init__(self, cfg: PMNetConfig) -> None:
        n, m, std = cfg.num_memory, cfg.memory_size, cfg.initializer_range
        # initialised before wrapping: ZeRO-3's zero.Init partitions them when the list is built
        super().__init__(
            nn.Parameter(torch.empty(cfg.groups_at_level(k), n, m).normal_(0.0, std)) for k in range(cfg.num_levels)
        )

    __call__ = nn.Module.__call__  # ParameterList forbids calls; we want the Module call (and its hooks)

    def forward(self, level: int, group: Tensor) -> Tensor:
        """E_level[g] as fp32 angles: group [B, T] -> [B, T, N, M]."""
        table = self[level]
        g_count, n, m = table.shape
        return F.embedding(group, table.float().reshape(g_count, n * m)).view(*group.shape, n, m)


class PhasorMemoryWrite(nn.Module):
    """Write of one level: phase-space attention over the N slots, hard routing, per-group recurrence."""

    def __init__(self, cfg: PMNetConfig) -> None:
        super().__init__()
        d, m, std = cfg.hidden_size, cfg.memory_size, cfg.initializer_range
        self.impl = cfg.memory_impl
        self.cumsum = cfg.memory_cumsum
        self.compiled_cores = False  # fast path through the compiled cores (PMNetForCausalLM.compile_memory_cores)
        self.norm = RMSNorm(d, cfg.rms_norm_eps)
        self.proj_q = NormalLinear(d, m, True, std)
        self.proj_k = NormalLinear(2 * m, m, True, std)
        self.proj_v = NormalLinear(d, m, True, std)
        self.proj_out = NormalLinear(m, m, True, std)

    def forward(
        self, h: Tensor, phi: Tensor, group: Tensor, carried: Tensor, anchor: Tensor | None = None
    ) -> WriteResult:
        """h [B, T, d], phi [B, T, N, M] fp32, group [B, T], carried [B, G, N, M] fp32.

        The write sees ``phi + anchor`` (anchor E_k[g] the same shape as phi, or None); the fast
        path adds them inside its fused graph.
        """
        if self.impl == "fast":
            return write_fast(
                self,
                h,
                phi,
                group,
                carried,
                cumsum=self.cumsum,
                training=self.training,
                anchor=anchor,
                compiled=self.compiled_cores,
            )
        phi = phi if anchor is None else phi + anchor
        return write_reference(self, h, phi, group, carried, cumsum=self.cumsum, training=self.training)


class PhasorMemoryRead(nn.Module):
    """Read of one layer: R heads of phase-space attention over the N slots of the byte's group."""

    def __init__(self, cfg: PMNetConfig) -> None:
        super().__init__()
        d, m, r = cfg.hidden_size, cfg.memory_size, cfg.num_memory_read_heads
        std = cfg.initializer_range
        self.impl = cfg.memory_impl
        self.num_heads = r
        self.compiled_cores = False  # fast path through the compiled cores (PMNetForCausalLM.compile_memory_cores)
        self.norm = RMSNorm(d, cfg.rms_norm_eps)
        self.proj_q = NormalLinear(d, r * m, True, std)
        self.proj_kv = NormalLinear(2 * m, 2 * r * m, True, std)
        self.proj_out = NormalLinear(r * m, d, True, std)

    def forward(self, h: Tensor, phi: Tensor | None = None, *, prepared: Tensor | None = None) -> Tensor:
        """h [B, T, d], phi [B, T, N, M] fp32 -> [B, T, d].

        ``prepared``: instead of phi, what :meth:`level_input` made of it for the reads of a
        level (the fast path: phi's slot features; the reference path: phi itself).
        """
        fast = self.impl == "fast"
        if prepared is not None:
            if fast:
                return read_fast_features(self, h, prepared, compiled=self.compiled_cores)
            return read_reference(self, h, prepared)
        assert phi is not None
        return read_fast(self, h, phi, compiled=self.compiled_cores) if fast else read_reference(self, h, phi)

    def level_input(self, phase: Tensor, increment: Tensor | None, anchor: Tensor | None) -> tuple[Tensor, Tensor]:
        """After a level's write: ``(Phi + S, what the level's reads take)``.

        The reads see ``phi = Phi + S + E_k[g]`` (increment S or anchor E_k[g] None: left out).
        Fast path: the second item is phi's slot features ``[sin phi, cos phi]`` in the weights'
        dtype, computed once for the level's P reads in one fused pass (``fused.level_core``);
        reference path: phi.
        """
        if self.impl == "fast":
            return fused.cores(self.compiled_cores).level(phase, increment, anchor, self.proj_kv.weight.dtype)
        if increment is not None:
            phase = phase + increment
        return phase, phase if anchor is None else phase + anchor


def write_fast(
    mod: PhasorMemoryWrite,
    h: Tensor,
    phi: Tensor,
    group: Tensor,
    carried: Tensor,
    *,
    cumsum: bool,
    training: bool,
    anchor: Tensor | None = None,
    compiled: bool = False,
) -> WriteResult:
    """Vectorised memory write; same arguments and result as ``reference.write_reference``.

    ``anchor`` (E_k[g], [B, T, N, M] fp32) is added to ``phi`` inside the fused write when given;
    ``compiled``: through the torch.compile'd cores.
    """
    n = phi.shape[2]
    run = fused.cores(compiled)
    w = (mod.proj_q, mod.proj_k, mod.proj_v, mod.proj_out)
    params = [p for lin in w for p in (lin.weight, lin.bias)]
    s, delta = run.write(h, phi, anchor, mod.norm.weight, *params, mod.norm.eps)
    S, state = run.scan(delta, group, carried, training) if cumsum else fused.scan_free(delta, group, carried, training)
    choice = s.detach().argmax(-1)  # [B, T]
    return WriteResult(
        phi_increment=S, child_group=group * n + choice, group_state=state, probs=s.detach(), delta=delta.detach()
    )


def read_fast(mod: PhasorMemoryRead, h: Tensor, phi: Tensor, *, compiled: bool = False) -> Tensor:
    """Vectorised memory read; h [B, T, d], phi [B, T, N, M] fp32 -> [B, T, d]."""
    _, feats = fused.cores(compiled).level(phi, None, None, mod.proj_kv.weight.dtype)
    return read_fast_features(mod, h, feats, compiled=compiled)


def read_fast_features(mod: PhasorMemoryRead, h: Tensor, feats: Tensor, *, compiled: bool = False) -> Tensor:
    """The read from precomputed slot features (:meth:`PhasorMemoryRead.level_input`):
    feats [B, T, N, 2M] -> [B, T, d]."""
    lin = (mod.proj_q, mod.proj_kv, mod.proj_out)
    params = [p for x in lin for p in (x.weight, x.bias)]
    return fused.cores(compiled).read(h, feats, mod.norm.weight, *params, mod.norm.eps, mod.num_heads)


@torch.no_grad()
def write_diagnostics(res: WriteResult, level: int, num_memory: int) -> dict[str, Tensor]:
    """Detached scalars of one write (cheap; logged per level by the trainer).

    * routing_entropy: mean over positions of the entropy of s (nats; ln N = uniform).
    * groups_used: share of the N**(k+1) child groups (the routing targets) that received
      at least one position of the chunk, per sequence, averaged over the batch.
    * phase_increment: mean |delta| over positions, slots and phases (radians).
    """
    p = res.probs.float()
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean()
    n_child = num_memory ** (level + 1)
    b = res.child_group.shape[0]
    hit = torch.zeros(b, n_child, device=p.device).scatter_(1, res.child_group, 1.0)
    prefix = f"memory/level{level}/"
    return {
        prefix + "routing_entropy": entropy,
        prefix + "groups_used": hit.mean(),
        prefix + "phase_increment": res.delta.abs().mean(),
    }


def uniform_entropy(num_memory: int) -> float:
    """ln N: the routing entropy of a uniform write softmax."""
    return math.log(num_memory)
