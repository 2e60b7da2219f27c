"""Stops and crashes, then auto-resume, give the same weights as an uninterrupted run (bitwise, CPU).

All runs share one schedule (max_steps=1000, stopped at STEPS by ``train.stop_at_step``), so any
interruption point can be compared with the uninterrupted run:

* A: STEPS steps in one go.
* T: SIGTERM to the launcher's process group mid-run -> a checkpoint and exit 0; relaunch -> resumes to STEPS.
* C: checkpoints every 2 steps; rank 1 is SIGKILLed inside the step-4 checkpoint write -> step 2
  stays valid and `latest` names it; relaunch -> resumes from step 2 to STEPS.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from pmnet.train.checkpoint import find_latest_valid
from tests.train.conftest import (
    base_overrides,
    finish,
    free_port,
    launch_env,
    model_weights,
    pretrain_cmd,
    read_scalars,
    run_launch,
    start_launch,
)

STEPS = 8


def _overrides(shards: Path, tmp_path: Path, name: str, **extra: object) -> list[str]:
    return base_overrides(
        shards, tmp_path, name, train__max_steps=1000, train__stop_at_step=STEPS, deepspeed__zero_stage=2, **extra
    )


def _cmd(ov: list[str]) -> list[str]:
    return pretrain_cmd("configs/demo.yaml", ov, "--cpu-ranks", "2", "--master-port", str(free_port()))


def _differing(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.multiprocess
def test_sigterm_and_crash_then_resume_equal_uninterrupted(shards: Path, tmp_path: Path) -> None:
    a = run_launch(_cmd(_overrides(shards, tmp_path, "a")), launch_env())
    assert a.rc == 0, a.explain()
    wa = model_weights(tmp_path / "a" / "checkpoints" / f"step_{STEPS:08d}")
    loss_a = dict(read_scalars(tmp_path / "a" / "tb")["train/loss"])

    # T: SIGTERM to the launcher once step 2 is logged
    ov_t = _overrides(shards, tmp_path, "t")
    log, t0 = tmp_path / "t1.log", time.time()
    p = start_launch(_cmd(ov_t), launch_env(), log)
    train_log = tmp_path / "t" / "train.log"
    while time.time() - t0 < 900 and p.poll() is None:
        if train_log.is_file() and "step      2/" in train_log.read_text():
            break
        time.sleep(0.2)
    assert p.poll() is None, finish(p, log, t0).explain()
    os.killpg(p.pid, signal.SIGTERM)  # the whole process group, as `timeout` and SLURM do
    t1 = finish(p, log, t0)
    assert t1.rc == 0, t1.explain()
    text = train_log.read_text()
    assert "stop requested by a signal" in text and "training ended (signal)" in text, t1.explain()
    stopped = find_latest_valid(tmp_path / "t")
    assert stopped is not None, t1.explain()
    s = int(stopped.name.split("_")[1])
    assert 2 <= s < STEPS, f"SIGTERM came too late to test a resume (stopped at step {s})"
    t2 = run_launch(_cmd(ov_t), launch_env())
    assert t2.rc == 0, t2.explain()
    assert "resumed from" in t2.out and f"at step {s} " in t2.out, t2.explain()
    wt = model_weights(tmp_path / "t" / "checkpoints" / f"step_{STEPS:08d}")
    assert not _differing(wa, wt), f"resumed after SIGTERM at {s}: weights differ: {_differing(wa, wt)}"
    assert dict(read_scalars(tmp_path / "t" / "tb")["train/loss"])[STEPS] == loss_a[STEPS]

    # C: rank 1 dies inside the step-4 checkpoint
    ov_c = _overrides(shards, tmp_path, "c", checkpoint__interval=2)
    c1 = run_launch(_cmd(ov_c), launch_env(PMNET_TEST_KILL_IN_CHECKPOINT="4:1"))
    assert c1.rc != 0, "the launcher must report the killed rank"
    root = tmp_path / "c" / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_00000002", c1.explain()
    assert find_latest_valid(tmp_path / "c").name == "step_00000002"
    assert not (root / "step_00000004").exists()
    assert any(p.name.startswith(".tmp") for p in root.iterdir()), "the half-written checkpoint should be left"
    c2 = run_launch(_cmd(ov_c), launch_env())
    assert c2.rc == 0, c2.explain()
    assert "at step 2 " in c2.out, c2.explain()
    assert find_latest_valid(tmp_path / "c").name == f"step_{STEPS:08d}"
    wc = model_weights(root / f"step_{STEPS:08d}")
    assert not _differing(wa, wc), f"resumed after the crash: weights differ: {_differing(wa, wc)}"
