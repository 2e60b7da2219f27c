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
def tiny_ckpt_decisive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random tiny model with its writes' q/k projections x50: decisive routing.

    At random init the write softmax is nearly uniform (median top-1/top-2 margin 2.5e-4), so
    two float implementations route hundreds of positions differently and a comparison of them
    measures tie-breaking; x50 spreads the phase scores (median margin 2.2e-2), as training
    does, and leaves a handful of exact ties (benchmarks/eval_device_agreement.py).
    """
    from pmnet.model.memory import PhasorMemoryWrite

    torch.manual_seed(0)
    cfg = PMNetConfig.from_preset("tiny")
    model = PMNetForCausalLM(cfg)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, PhasorMemoryWrite):
                mod.proj_q.weight.mul_(50.0)
                mod.proj_k.weight.mul_(50.0)
    out = tmp_path_factory.mktemp("ckpt") / "tiny_decisive"
    save_pretrained(model, out, cfg)
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
