"""The explicit streaming state of PMNet (docs/model.md section 5).

A stream longer than one chunk is fed as consecutive calls
``logits, state = model(chunk, state)``. Everything the next chunk needs is in a
:class:`PMNetState`; its size does not depend on how long the stream already is:

* per memory level k: the group phases S, ``[B, G=N**k, N, M]`` fp32 angles in [0, 2 pi)
  (the value of the prefix sum at the last position routed to each group);
* per decoder layer: the last ``W - 1`` attention keys (after RoPE) and values,
  ``[B, H, <= W-1, hd]`` (fewer at the start of a stream);
* ``position``: the absolute position of the next byte (RoPE and the window mask).

The model never detaches the state: the trainer calls :meth:`PMNetState.detach` at a
truncated-BPTT boundary, so gradients can flow across chunks when it wants them to.

:class:`WriteResult` is what one memory write hands on inside a call: the phase increment,
the routing to the next level and the new group states (which end up in ``group_phases``).
Both memory paths (``reference.py``, ``fused.py`` through ``memory.py``) return it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor


class WriteResult(NamedTuple):
    """What one memory write produces (shapes for level k, G = N**k).

    A named tuple: DeepSpeed ZeRO-3 and torch.compile see its tensors without help.
    """

    phi_increment: Tensor
    "S [B, T, N, M] fp32 in [0, 2 pi): added to Phi."
    child_group: Tensor
    "[B, T] int64: N * g + argmax_n s_n, the group used from level k+1 on."
    group_state: Tensor
    "[B, G, N, M] fp32: S at each group's last position (the carried state)."
    probs: Tensor
    "[B, T, N] detached write softmax s (diagnostics)."
    delta: Tensor
    "[B, T, N, M] detached increments s_n * theta (diagnostics)."


@dataclass
class PMNetState:
    """Carried state of one batch of streams (constant size in the stream length)."""

    group_phases: list[Tensor] = field(default_factory=list)
    "Per level k: [B, N**k, N, M] fp32 angles (empty list when memory is off)."
    keys: list[Tensor] = field(default_factory=list)
    "Per layer: [B, H, <= W-1, hd] post-RoPE keys of the most recent bytes (oldest first)."
    values: list[Tensor] = field(default_factory=list)
    "Per layer: [B, H, <= W-1, hd] values matching ``keys``."
    position: int = 0
    "Absolute position of the next byte of the stream."
    diagnostics: dict[str, Tensor] | None = None
    "Detached scalars of the call that produced this state (``collect_diagnostics=True``)."

    @property
    def batch_size(self) -> int:
        """B of the streams this state belongs to."""
        if self.keys:
            return self.keys[0].shape[0]
        if self.group_phases:
            return self.group_phases[0].shape[0]
        raise ValueError("empty PMNetState has no batch size")

    def detach(self) -> PMNetState:
        """A new state with every tensor cut from the autograd graph (truncated BPTT)."""
        return dataclasses.replace(
            self,
            group_phases=[p.detach() for p in self.group_phases],
            keys=[k.detach() for k in self.keys],
            values=[v.detach() for v in self.values],
            diagnostics=None if self.diagnostics is None else {k: v.detach() for k, v in self.diagnostics.items()},
        )

    def to(self, device: torch.device | str) -> PMNetState:
        """A new state on ``device`` (dtypes unchanged)."""
        return dataclasses.replace(
            self,
            group_phases=[p.to(device) for p in self.group_phases],
            keys=[k.to(device) for k in self.keys],
            values=[v.to(device) for v in self.values],
            diagnostics=None if self.diagnostics is None else {k: v.to(device) for k, v in self.diagnostics.items()},
        )

    def num_bytes(self) -> int:
        """Bytes held by the state's tensors (a check that memory stays flat)."""
        tensors = [*self.group_phases, *self.keys, *self.values]
        return sum(t.numel() * t.element_size() for t in tensors)
