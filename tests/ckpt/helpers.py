"""Launch helpers of the checkpoint tests: N CPU ranks of tests/ckpt/ds_worker.py, tool subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import child_env
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
WORKER = Path(__file__).with_name("ds_worker.py")


def run_ranks(
    cmd: list[str], world: int, log_of: Callable[[int], Path], timeout: float, stop_all_on_failure: bool = False
) -> list[int | str]:
    """Start ``cmd`` as ``world`` gloo CPU ranks (env rendezvous on loopback), wait, return the exit codes.

    ``stop_all_on_failure``: once a rank exits non-zero (or is killed), SIGKILL the others, as the
    launcher does (their codes are then negative)."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = child_env(world, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DS_ACCELERATOR="cpu",
                        PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")  # fmt: skip
        log = open(log_of(rank), "w")  # noqa: SIM115 (closed after wait)
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO), log))
    if stop_all_on_failure:
        t0 = time.time()
        while time.time() - t0 < timeout and any(p.poll() is None for p, _ in procs):
            if any(p.poll() not in (None, 0) for p, _ in procs):
                for p, _ in procs:
                    if p.poll() is None:
                        p.kill()
                break
            time.sleep(0.05)
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


def trainer_overrides(shards: Path, root: Path, name: str, **extra: object) -> list[str]:
    """Overrides of configs/demo.yaml for a tiny 2-rank-able CPU run of the real trainer (ZeRO-2, fp32,
    6 steps, checkpoints every 3) on the session shards."""
    from tests.conftest import TINY_SAMPLE_BYTES

    o: dict[str, object] = {
        "train.run_root": root, "train.run_name": name, "data.streams": f"[{{local: {shards}, split: train}}]",
        "data.val_streams": "[]", "data.sample_bytes": TINY_SAMPLE_BYTES, "data.num_workers": 0,
        "train.micro_batch_size": 4, "train.global_batch_size": 8, "train.max_steps": 6, "train.precision": "fp32",
        "train.device": "cpu", "optim.warmup_steps": 2, "eval.interval": 0, "checkpoint.interval": 3,
        "checkpoint.keep_last": 3, "logging.log_interval": 1, "logging.console_interval": 1,
        "logging.memory_diagnostics_interval": 0, "deepspeed.zero_stage": 2,
    }  # fmt: skip
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def trainer_cmd(overrides: list[str]) -> list[str]:
    """``python -m pmnet.train configs/demo.yaml OVERRIDES`` (one process per rank, as the launcher runs it)."""
    return [PY, "-m", "pmnet.train", "configs/demo.yaml", *overrides]


def run_trainer(overrides: list[str], ranks: int, log: Path, timeout: float = 900) -> str:
    """The real trainer on ``ranks`` CPU processes; returns rank 0's log (fails loudly on any bad exit)."""
    codes = run_ranks(trainer_cmd(overrides), ranks, lambda r: log.with_suffix(f".rank{r}.log"), timeout)
    out = log.with_suffix(".rank0.log").read_text(errors="replace")
    if any(c != 0 for c in codes):
        others = "".join(log.with_suffix(f".rank{r}.log").read_text(errors="replace")[-2000:] for r in range(1, ranks))
        raise AssertionError(f"trainer exit codes {codes}\n{out[-4000:]}\n{others}")
    return out


class Payload:
    """Pickles as a call of ``os.system`` (what a malicious checkpoint carries)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


def plant_payload(pt_file: Path, marker: Path, *, rehash: bool = True) -> None:
    """Rewrite a real checkpoint file so that unpickling it runs ``touch MARKER`` (posix.system), and
    (``rehash``) re-hash the checkpoint's manifest.json to match, as an attacker with write access would."""
    import hashlib

    import torch

    obj = torch.load(pt_file, map_location="cpu", weights_only=False)  # a file this test session wrote itself
    obj["payload"] = Payload(f"touch {marker}")
    torch.save(obj, pt_file)
    manifest = pt_file.parent / "manifest.json"
    if rehash and manifest.is_file():
        m = json.loads(manifest.read_text())
        m["files"][pt_file.name] = {"size": pt_file.stat().st_size,
                                    "sha256": hashlib.sha256(pt_file.read_bytes()).hexdigest()}  # fmt: skip
        manifest.write_text(json.dumps(m, indent=1, sort_keys=True) + "\n")
