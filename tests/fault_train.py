"""``python -m pmnet.train`` with injected faults, for the tests (the trainer itself has no fault switches).

    python -m tests.fault_train CONFIG [section.key=value ...] [--nan-at 2,5,6] [--kill-in-checkpoint STEP:RANK]

Every other argument goes to ``pmnet.train``'s ``main`` unchanged; the faults are hooks
(:class:`pmnet.train.loop.Hook`) passed as its ``extra_hooks``. One process per rank, started as
the launcher's per-rank mode starts ``python -m pmnet.train`` (``RANK``, ``WORLD_SIZE``, ...).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from pmnet.train.loop import Hook, Trainer
from pmnet.train.metrics import LOG


class NanLossAt(Hook):
    """Make the last rank's loss NaN at these optimizer steps (1-based): every rank must then skip
    the update (the flags are all-reduced), and the run counts it."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        trainer.__dict__.pop("chunk_loss", None)  # back to the class's method
        if step in self.steps and trainer.env.rank == trainer.env.world_size - 1:
            clean = trainer.chunk_loss

            def nan_loss(logits: Any, targets: Any) -> Any:
                return clean(logits, targets) * float("nan")

            trainer.chunk_loss = nan_loss  # type: ignore[method-assign]


class KillInCheckpoint(Hook):
    """SIGKILL rank ``rank`` right after its DeepSpeed files of step ``step``'s checkpoint are written
    (before the checkpoint is complete: no manifest, not published)."""

    def __init__(self, step: int, rank: int) -> None:
        self.step, self.rank = step, rank

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.env.rank != self.rank:
            return
        engine = trainer.engine
        original = engine.save_checkpoint

        def save_then_die(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if trainer.state.step == self.step:
                LOG.warning(f"fault_train: killing rank {self.rank} inside the step-{self.step} checkpoint")
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        engine.save_checkpoint = save_then_die


def split_args(argv: list[str]) -> tuple[list[Hook], list[str]]:
    """(the fault hooks, the arguments left for ``pmnet.train``)."""
    p = argparse.ArgumentParser(prog="python -m tests.fault_train", add_help=False)
    p.add_argument("--nan-at", default="", help="comma-separated optimizer steps")
    p.add_argument("--kill-in-checkpoint", default="", metavar="STEP:RANK")
    ours, rest = p.parse_known_args(argv)
    hooks: list[Hook] = []
    if ours.nan_at:
        hooks.append(NanLossAt({int(s) for s in ours.nan_at.split(",")}))
    if ours.kill_in_checkpoint:
        step, rank = ours.kill_in_checkpoint.split(":")
        hooks.append(KillInCheckpoint(int(step), int(rank)))
    return hooks, rest


def main(argv: list[str] | None = None) -> int:
    from pmnet.train.__main__ import main as train_main

    hooks, rest = split_args(list(sys.argv[1:] if argv is None else argv))
    return train_main(rest, extra_hooks=hooks)


if __name__ == "__main__":
    raise SystemExit(main())
