"""Where a start's time goes (:class:`StartupClock`); imports nothing heavy, so the entry point
can start the clock before torch is imported."""

from __future__ import annotations

import re
import time

import psutil

__all__ = ["StartupClock"]


class StartupClock:
    """Where a start's time goes, process start -> first step done, phase by phase.

    A restart of a long run pays all of it again, so the total (``perf/startup_s``) is split:
    ``mark(phase)`` closes a phase at the wall-clock time it is called. The first phase runs from
    the process's creation to the first mark: ``python -m pmnet.train`` marks ``launch`` (the
    launcher's hand-off and the interpreter) right at its start.
    """

    def __init__(self) -> None:
        self.t0 = psutil.Process().create_time()
        self._last = self.t0
        self.phases: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        """Close ``phase`` now (a repeated name adds to it)."""
        now = time.time()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self._last
        self._last = now

    def total(self) -> float:
        """Seconds since the process started."""
        return time.time() - self.t0

    def scalars(self) -> dict[str, float]:
        """``perf/startup/<phase>_s`` for each phase (``launch and imports`` -> ``launch_and_imports``)."""
        return {f"perf/startup/{re.sub(r'[^0-9a-z]+', '_', k.lower())}_s": v for k, v in self.phases.items()}

    def summary(self) -> str:
        """``imports 8.1 s, model 1.2 s, ...`` in the order the phases ran."""
        return ", ".join(f"{k} {v:.1f} s" for k, v in self.phases.items())
