"""End to end on CPU: the copy-paste recipe through the real launcher, then the eval tool on the run.

Shrunk by overrides (tiny model, N <= 16, 6 steps) so it takes well under a minute; the
recipe, the trainer's call into data_pipeline.copy_paste, checkpointing and the run
directory -> interchange conversion inside eval_copy_paste are the real ones.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eval.conftest import REPO, run_tool


@pytest.mark.slow
def test_copy_paste_recipe_trains_and_evaluates(tmp_path: Path) -> None:
    overrides = [
        "model.preset=tiny", "model.attn_backend=sdpa", "data.sample_bytes=65", "data.copy_paste.min_n=2",
        "data.copy_paste.max_n=16", "train.max_steps=6", "train.micro_batch_size=4", "train.global_batch_size=4",
        "train.precision=fp32", "train.device=cpu", "optim.warmup_steps=1", "checkpoint.interval=3",
        f"train.run_root={tmp_path / 'runs'}", "logging.log_interval=1",
    ]  # fmt: skip
    env = {**os.environ, "PMNET_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", "launchers/pretrain.sh", "configs/copy_paste_30m.yaml", *overrides,
         "--cpu-ranks", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = tmp_path / "runs" / "copy_paste_30m"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    log = (run / "train.log").read_text()
    assert "gnorm" in log and "training ended (finished) at step 6" in log
    # the run directory itself is a valid CKPT for the evaluation tools (converted on the fly)
    out = tmp_path / "eval"
    ev = run_tool("eval_copy_paste.py", run, "--labels", "tiny", "--edges", "0,8,16", "--samples", "4", "--out", out)
    assert ev.returncode == 0, ev.stderr
    assert "note: converted" in ev.stderr
    with open(out / "copy_paste.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2
    curves = subprocess.run(
        [sys.executable, "-m", "pmnet.eval.run_logs", str(run), "--labels", "tiny", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert curves.returncode == 0, curves.stderr
    with open(out / "train_curves.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]  # grad norm logged at every step
    assert all(0 < float(r["grad_norm"]) < 1e3 for r in rows)
