"""Safety: a NaN on one rank is skipped by all ranks and counted in TensorBoard; too many in a row
stop the run with a checkpoint (SIGTERM is tested with resume, in test_resume.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pmnet.train.checkpoint import find_latest_valid
from tests.train.conftest import (
    base_overrides,
    launch_env,
    model_weights,
    pretrain_cmd,
    read_scalars,
    run_launch,
)


@pytest.mark.multiprocess
def test_nan_steps_are_skipped_counted_and_too_many_stop(shards: Path, tmp_path: Path) -> None:
    # step 2: one skip; steps 5, 6, 7: three in a row = max_consecutive_skips -> stop at 7 (exit 3)
    ov = base_overrides(
        shards, tmp_path, "nan", train__max_steps=20, train__max_consecutive_skips=3,
        train__inject_nan_at_steps="[2,5,6,7]", deepspeed__zero_stage=2,
    )  # fmt: skip
    res = run_launch(
        pretrain_cmd("configs/demo.yaml", ov, "--cpu-ranks", "2"), launch_env()
    )  # the launcher picks the port
    assert res.rc == 3, res.explain()
    assert "stopping: 3 consecutive steps had a non-finite loss or gradient" in res.out, res.explain()
    scalars = read_scalars(tmp_path / "nan" / "tb")
    skipped = dict(scalars["train/skipped_steps"])
    assert skipped[2] == 1 and skipped[5] == 2 and skipped[7] == 4
    assert skipped.get(1, 0) == 0 and skipped[3] == 1
    assert math.isnan(dict(scalars["train/loss"])[2])
    assert math.isfinite(dict(scalars["train/loss"])[3])
    ckpt = find_latest_valid(tmp_path / "nan")
    assert ckpt is not None and ckpt.name == "step_00000007"
    weights = model_weights(ckpt)
    assert all(torch.isfinite(w).all() for w in weights.values())
