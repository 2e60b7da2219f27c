"""Safety: a NaN on one rank is skipped by all ranks and counted in TensorBoard; too many in a row
stop the run with a checkpoint (SIGTERM is tested with resume, in test_resume.py).

The NaNs come from a hook (``tests/fault_train.py``): 2 gloo CPU ranks of ``python -m tests.fault_train``,
each started as the launcher's per-rank mode starts ``python -m pmnet.train``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pmnet.train.checkpoint import find_latest_valid
from tests.ckpt.helpers import PY, run_ranks
from tests.train.conftest import base_overrides, model_weights, read_scalars


@pytest.mark.multiprocess
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_nan_steps_are_skipped_counted_and_too_many_stop(precision: str, shards: Path, tmp_path: Path) -> None:
    # step 2: one skip; steps 5, 6, 7: three in a row = max_consecutive_skips -> stop at 7 (exit 3).
    # bf16: DeepSpeed's own ZeRO-2 overflow check is off (pmnet.train.engine), GuardedAdamW decides alone.
    ov = base_overrides(
        shards, tmp_path, "nan", train__max_steps=20, train__max_consecutive_skips=3, deepspeed__zero_stage=2,
        train__device="cpu", train__precision=precision,
    )  # fmt: skip
    cmd = [PY, "-m", "tests.fault_train", "configs/demo.yaml", *ov, "--nan-at", "2,5,6,7"]
    codes = run_ranks(cmd, 2, lambda r: tmp_path / f"rank{r}.log", timeout=900)
    out = (tmp_path / "rank0.log").read_text(errors="replace")
    assert codes == [3, 3], f"exit codes {codes}\n{out[-6000:]}"
    assert "stopping: 3 consecutive steps had a non-finite loss or gradient" in out, out[-6000:]
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
