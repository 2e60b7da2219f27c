"""Launch helpers of the checkpoint tests: N CPU ranks of tests/ckpt/ds_worker.py, tool subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import child_env
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
WORKER = Path(__file__).with_name("ds_worker.py")


def run_ranks(cmd: list[str], world: int, log_of: Callable[[int], Path], timeout: float) -> list[int | str]:
    """Start ``cmd`` as ``world`` gloo CPU ranks (env rendezvous on loopback), wait, return the exit codes."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = child_env(world, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DS_ACCELERATOR="cpu",
                        PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")  # fmt: skip
        log = open(log_of(rank), "w")  # noqa: SIM115 (closed after wait)
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO), log))
    codes: list[int | str] = []
    for p, log in procs:
        try:
            codes.append(p.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append("timeout")
        log.close()
    return codes


def launch(spec: dict[str, Any], workdir: Path, world: int, timeout: float = 900) -> list[dict[str, Any]]:
    """Run ``world`` ranks of the worker on ``spec``; return each rank's result (fails loudly on any bad exit)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.glob("result_rank*.json"):
        old.unlink()
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    codes = run_ranks([PY, str(WORKER), str(spec_path)], world, lambda r: workdir / f"rank{r}.log", timeout)
    if any(c != 0 for c in codes):
        tails = "\n".join((workdir / f"rank{r}.log").read_text()[-3000:] for r in range(world))
        raise AssertionError(f"worker exit codes {codes}\n{tails}")
    return [json.loads((workdir / f"result_rank{r}.json").read_text()) for r in range(world)]


def run_tool(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run ``python tools/<args>`` from the repo root; returns the completed process."""
    env = dict(os.environ, PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu")
    return subprocess.run([PY, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
