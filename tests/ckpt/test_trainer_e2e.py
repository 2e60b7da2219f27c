"""End to end through the real trainer (``python -m pmnet.train``, one process per rank as the launcher's
per-rank mode runs it, gloo on CPU) on shards made by tools/shard_dataset.py from the shipped sample:

* saved on 2 ranks, resumed on 1 (tools/resume.py, tools/convert_checkpoint.py universal): the loss
  curve continues the uninterrupted 2-rank run (relative tolerance REL_TOL) and the data stream
  continues at the exact next sample (loader state equal to the uninterrupted run's);
* interchange export -> ``train.init_from`` -> the model the trainer starts from gives the exported
  model's logits.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.ckpt.helpers import REPO, run_tool
from tests.ckpt.helpers import run_trainer as train
from tests.ckpt.helpers import trainer_overrides as _overrides

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

REL_TOL = 1e-4  # fp32; 2 -> 1 rank changes only the gradient summation order (measured: equal to 5 digits)


def tb_losses(run_dir: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("train/loss")}


def loader_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "rank_00000.pt", weights_only=True)["dataloader"]


def test_saved_on_two_ranks_resumed_on_one(shards: Path, trainer_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "resumed"
    shutil.copytree(trainer_run, run, ignore=shutil.ignore_patterns("tb", "step_00000006"))
    p = run_tool("tools/resume.py", str(run), "--json")  # latest named step 6: repaired to step 3
    rep = json.loads(p.stdout)
    assert p.returncode == 0 and rep["repaired"] and rep["latest_after"] == "step_00000003", p.stdout
    # the printed command is runnable: the launcher's --dry-run resolves it to this run directory
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", DS_ACCELERATOR="cpu")
    dry = subprocess.run(rep["command"] + " --dry-run", shell=True, cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert dry.returncode == 0 and "run_name: resumed" in dry.stdout, dry.stdout[-2000:] + dry.stderr[-2000:]
    p = run_tool("tools/convert_checkpoint.py", "universal", str(run / "checkpoints" / "step_00000003"),
                 "--world-size", "1")  # fmt: skip
    assert p.returncode == 0 and "none repeated or skipped" in p.stdout, p.stderr
    out = train(_overrides(shards, tmp_path, "resumed"), 1, tmp_path / "resumed")
    assert "resumed from" in out and "step_00000003" in out
    ref, got = tb_losses(trainer_run), tb_losses(run)
    assert sorted(got) == [4, 5, 6]
    for step, loss in got.items():
        assert math.isclose(loss, ref[step], rel_tol=REL_TOL), (step, loss, ref[step])
    # the stream continued at the exact next sample: same loader position and counters as uninterrupted
    end_full, end_res = trainer_run / "checkpoints" / "step_00000006", run / "checkpoints" / "step_00000006"
    assert loader_state(end_res) == loader_state(end_full)
    ts_full = json.loads((end_full / "trainer_state.json").read_text())
    ts_res = json.loads((end_res / "trainer_state.json").read_text())
    assert (ts_res["samples_seen"], ts_res["bytes_seen"]) == (ts_full["samples_seen"], ts_full["bytes_seen"])
    p = run_tool("tools/audit_checkpoint.py", "--compare", str(end_full), str(end_res), "--json")
    worst = max(t["rel_l2"] for t in json.loads(p.stdout)["tensors"])
    assert worst < 1e-4, worst
    p = run_tool("tools/audit_checkpoint.py", str(end_res))
    assert p.returncode == 0, p.stdout


def test_interchange_to_init_from(shards: Path, trainer_run: Path, tmp_path: Path) -> None:
    """Export step 6, start a fresh run from it with train.init_from: the trainer's model = the export."""
    from pmnet.model import load_pretrained

    export = tmp_path / "export"
    p = run_tool(
        "tools/convert_checkpoint.py", "interchange", str(trainer_run), "--out", str(export)
    )  # run dir = newest valid
    assert p.returncode == 0, p.stderr
    p = run_tool("tools/convert_checkpoint.py", "start-from", str(export), "--json")
    assert p.returncode == 0 and "train.init_from=" in json.loads(p.stdout)["command"]
    # one step at a vanishing LR: the saved weights are the ones the first step ran with (updates ~1e-30)
    extra = {"train.init_from": export, "train.max_steps": 1, "optim.lr": 1e-30, "optim.warmup_steps": 0,
             "optim.schedule": "constant", "optim.weight_decay": 0.0, "checkpoint.interval": 0}  # fmt: skip
    out = train(_overrides(shards, tmp_path, "init", **extra), 1, tmp_path / "init")
    assert "initialised weights from" in out
    step1 = tmp_path / "init" / "checkpoints" / "step_00000001"
    p = run_tool("tools/convert_checkpoint.py", "interchange", str(step1), "--out", str(tmp_path / "step1"))
    assert p.returncode == 0, p.stderr
    ids = torch.randint(1, 254, (2, 96), generator=torch.Generator().manual_seed(5))
    logits = []
    for d in (export, tmp_path / "step1"):
        model, _ = load_pretrained(d)
        model.eval()
        with torch.no_grad():
            logits.append(model(ids)[0])
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=1e-6)
