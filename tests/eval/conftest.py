"""Fixtures of the evaluation tests: a tiny interchange checkpoint and a runner for the tools."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pmnet.model import PMNetConfig, PMNetForCausalLM, save_pretrained

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny PMNet (seed 0) saved in the interchange format.

    Random weights are enough here: every property tested (files written, chunking
    invariance, ablations changing the numbers, text printed) holds for any weights.
    Training even a few dozen steps costs minutes on the shared 2-core test machine.
    """
    torch.manual_seed(0)
    cfg = PMNetConfig.from_preset("tiny")
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_pretrained(PMNetForCausalLM(cfg), out, cfg)
    return out


@pytest.fixture(scope="session")
def tiny_ckpt_nomem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny shapes without memory (a second model for the copy-paste plot)."""
    torch.manual_seed(1)
    cfg = PMNetConfig.from_preset("tiny", use_memory=False)
    out = tmp_path_factory.mktemp("ckpt") / "tiny_nomem"
    save_pretrained(PMNetForCausalLM(cfg), out, cfg)
    return out


def run_tool(script: str, *args: str | Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    """Run ``tools/<script>`` as a user would (a fresh interpreter), capturing its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PMNET_DEBUG", None)
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )
