"""Session fixtures of the checkpoint tests: small real DeepSpeed runs on 2 CPU ranks (gloo), reused.

* ``z2_run``: tiny PMNet, ZeRO-2, bf16, 4 steps, checkpoints at steps 2 and 4 (the reference
  uninterrupted run for resume tests and the source of the corruption tests).
* ``z3_run``: tiny PMNet, ZeRO-3, fp32, 4 steps, checkpoints at steps 2 and 4, logits of a fixed input
  (reference memory implementation, see the fixture).
* ``trainer_run``: the real trainer (``python -m pmnet.train``) on the session shards, 2 ranks, ZeRO-2,
  fp32, 6 steps, checkpoints at steps 3 and 6 (the uninterrupted reference of the end-to-end tests).

Tests copy a run directory before changing anything in it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.ckpt.helpers import launch, run_trainer, trainer_overrides


class Run:
    """A finished worker job: its run directory and per-rank results."""

    def __init__(self, run_dir: Path, results: list[dict[str, Any]]) -> None:
        self.run_dir = run_dir
        self.results = results

    def ckpt(self, step: int) -> Path:
        return self.run_dir / "checkpoints" / f"step_{step:08d}"

    def copy_to(self, dest: Path) -> Path:
        """A private copy of the run directory (tests corrupt copies, never the shared one)."""
        shutil.copytree(self.run_dir, dest)
        return dest


@pytest.fixture(scope="session")
def z2_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    work = tmp_path_factory.mktemp("z2")
    spec = {
        "stage": 2,
        "precision": "bf16",
        "steps": 4,
        "save_at": [2, 4],
        "run_dir": str(work / "run"),
        "logits": True,
    }
    return Run(work / "run", launch(spec, work / "job", 2))


@pytest.fixture(scope="session")
def z3_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    work = tmp_path_factory.mktemp("z3")
    # memory_impl=reference: the fast path hands child-module weights to pure functions, which
    # ZeRO-3 never gathers (backward fails with a 0-size weight as of model commit 6d07b6c).
    spec = {"stage": 3, "precision": "fp32", "steps": 4, "save_at": [2, 4], "run_dir": str(work / "run"), "logits": True,
            "model": {"memory_impl": "reference"}}  # fmt: skip
    return Run(work / "run", launch(spec, work / "job", 2))


@pytest.fixture(scope="session")
def trainer_run(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted reference: 2 ranks, ZeRO-2, 6 steps, checkpoints at steps 3 and 6 (its run directory)."""
    root = tmp_path_factory.mktemp("e2e_runs")
    run_trainer(trainer_overrides(shards, root, "full"), 2, root / "full")
    return root / "full"
