"""Where hard memory routing decides differently between two runs of the same weights.

A write routes each position to ``argmax_n s_n`` (docs: the model, section 3). Two float
implementations that agree to 1e-6 (GPU vs CPU, flex vs sdpa, chunked vs whole) still pick
different groups where the top two write probabilities are tied to that precision, and the
different group changes the phases every later layer reads at that position. Comparing two
evaluations byte by byte therefore needs to know where routing differed:
:class:`RoutingRecorder` records, for every write of a model, the chosen group and the
top-1 / top-2 probability margin of every position it sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
import torch

from pmnet.model.memory import PhasorMemoryWrite

__all__ = ["RoutingRecorder", "RoutingTrace", "first_difference"]


@dataclass
class RoutingTrace:
    """Per write (level), the routing of every position seen, chunks concatenated in order."""

    groups: list[np.ndarray] = field(default_factory=list)
    "Per level: int64 [B, T] child group chosen at each position."
    margins: list[np.ndarray] = field(default_factory=list)
    "Per level: float32 [B, T] top-1 minus top-2 write probability."


class RoutingRecorder:
    """``with RoutingRecorder(model) as rec: ...``; then ``rec.trace()`` (hooks removed on exit).

    Record one batch of streams (one :func:`pmnet.eval.long_context.evaluate_books` batch):
    the chunks of every forward are concatenated along the position axis.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._writes = [m for m in model.modules() if isinstance(m, PhasorMemoryWrite)]
        self._seen: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {id(m): [] for m in self._writes}
        self._handles: list[Any] = []

    def _hook(self, mod: torch.nn.Module, _inputs: Any, out: Any) -> None:
        top = out.probs.float().topk(2, dim=-1).values
        margin = (top[..., 0] - top[..., 1]).cpu().numpy()
        self._seen[id(mod)].append((out.child_group.cpu().numpy(), margin))

    def __enter__(self) -> RoutingRecorder:
        self._handles = [m.register_forward_hook(self._hook) for m in self._writes]
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def trace(self, length: int | None = None) -> RoutingTrace:
        """The recorded routing, cut to the first ``length`` positions (drops padding of a last chunk)."""
        out = RoutingTrace()
        for m in self._writes:
            seen = self._seen[id(m)]
            if not seen:
                continue
            out.groups.append(np.concatenate([g for g, _ in seen], axis=1)[:, :length])
            out.margins.append(np.concatenate([d for _, d in seen], axis=1)[:, :length])
        return out


def first_difference(a: RoutingTrace, b: RoutingTrace) -> tuple[int, int, float] | None:
    """(position, level, margin) of the earliest position where any level routed differently.

    The level is the lowest one that differs there; margin is the smaller of the two runs'
    top-1 / top-2 margins at that level and position (a near-tie when tiny). None: no difference.
    """
    best: tuple[int, int, float] | None = None
    for level, (ga, gb) in enumerate(zip(a.groups, b.groups, strict=True)):
        where = np.argwhere(ga != gb)
        if not len(where):
            continue
        book, pos = where[np.argmin(where[:, 1])]
        margin = float(min(a.margins[level][book, pos], b.margins[level][book, pos]))
        if best is None or pos < best[0]:
            best = (int(pos), level, margin)
    return best
