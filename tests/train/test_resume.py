"""Resume equals uninterrupted (bitwise on CPU), and a rank SIGKILLed inside a checkpoint write
leaves the previous checkpoint valid and `latest` on it; the next launch resumes from there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pmnet.train.checkpoint import find_latest_valid
from tests.train.conftest import (
    base_overrides,
    free_port,
    launch_env,
    model_weights,
    pretrain_cmd,
    read_scalars,
    run_launch,
)

STEPS = 8


def _launch(ov: list[str], **env: str):
    cmd = pretrain_cmd("configs/demo.yaml", ov, "--cpu-ranks", "2", "--master-port", str(free_port()))
    return run_launch(cmd, launch_env(**env))


def _same(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.multiprocess
def test_resume_equals_uninterrupted_and_crash_in_checkpoint(shards: Path, tmp_path: Path) -> None:
    # A: STEPS steps in one go
    a = _launch(base_overrides(shards, tmp_path, "a", deepspeed__zero_stage=2))
    assert a.rc == 0, a.explain()

    # B: stop cleanly at STEPS/2 (schedule still spans STEPS), then relaunch the same run directory
    ov_b = base_overrides(shards, tmp_path, "b", deepspeed__zero_stage=2)
    b1 = _launch([*ov_b, f"train.stop_at_step={STEPS // 2}"])
    assert b1.rc == 0, b1.explain()
    assert find_latest_valid(tmp_path / "b").name == f"step_{STEPS // 2:08d}"
    b2 = _launch(ov_b)
    assert b2.rc == 0, b2.explain()
    assert f"resumed from {(tmp_path / 'b' / 'checkpoints' / f'step_{STEPS // 2:08d}').resolve()}" in b2.out or (
        f"at step {STEPS // 2}" in b2.out
    ), b2.explain()

    wa = model_weights(tmp_path / "a" / "checkpoints" / f"step_{STEPS:08d}")
    wb = model_weights(tmp_path / "b" / "checkpoints" / f"step_{STEPS:08d}")
    assert not _same(wa, wb), f"resumed weights differ from uninterrupted ones: {_same(wa, wb)}"
    la, lb = read_scalars(tmp_path / "a" / "tb")["train/loss"], read_scalars(tmp_path / "b" / "tb")["train/loss"]
    assert dict(la)[STEPS] == dict(lb)[STEPS]

    # C: checkpoints every 2 steps; rank 1 is SIGKILLed inside the step-4 checkpoint write
    ov_c = base_overrides(shards, tmp_path, "c", deepspeed__zero_stage=2, checkpoint__interval=2)
    c1 = _launch(ov_c, PMNET_TEST_KILL_IN_CHECKPOINT="4:1")
    assert c1.rc != 0, "the launcher should report the killed rank"
    root = tmp_path / "c" / "checkpoints"
    assert (root / "latest").read_text().strip().endswith("step_00000002"), c1.explain()
    assert (
        find_latest_valid(tmp_path / "c") == (root / "step_00000002").resolve()
        or find_latest_valid(tmp_path / "c").name == "step_00000002"
    )
    assert not (root / "step_00000004").exists()
    c2 = _launch(ov_c)
    assert c2.rc == 0, c2.explain()
    assert "at step 2" in c2.out, c2.explain()
    assert find_latest_valid(tmp_path / "c").name == f"step_{STEPS:08d}"
    # the crash-and-resume run is the same computation as A
    wc = model_weights(root / f"step_{STEPS:08d}")
    assert not _same(wa, wc), f"crash-resumed weights differ from uninterrupted ones: {_same(wa, wc)}"
