"""Resuming: same world size is exact; 2 ranks -> 1 rank through a universal checkpoint (fp32 ZeRO-3,
bf16 ZeRO-1) continues the loss curve and the data stream (no sample repeated or skipped); a changed model or batch is refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.ckpt.helpers import launch, run_tool

pytestmark = pytest.mark.multiprocess

# Tolerance of the 2 -> 1 rank resume (fp32 losses): the 1-rank run sums the same gradients in
# another order (local accumulation instead of a 2-rank all-reduce), a ~1e-7 relative change per
# step that the few following steps cannot grow beyond ~1e-5. Measured: identical to 6-7 digits.
REL_TOL = 1e-4


def test_same_world_resume_is_exact(z2_run, tmp_path: Path) -> None:
    """bf16 ZeRO-2, 2 ranks: resume at step 2 and train to 4 = the uninterrupted run, bitwise (losses, logits)."""
    spec = {"stage": 2, "precision": "bf16", "steps": 4, "resume": str(z2_run.ckpt(2)), "run_dir": str(tmp_path / "r"),
            "logits": True}  # fmt: skip
    res = launch(spec, tmp_path / "job", 2)
    ref = z2_run.results[0]
    assert res[0]["resumed_from"] == 2
    assert res[0]["losses"] == {k: v for k, v in ref["losses"].items() if int(k) > 2}
    assert res[0]["logits"] == ref["logits"]
    assert res[0]["samples"] == {k: v for k, v in ref["samples"].items() if int(k) > 2}


def test_two_ranks_to_one_via_universal(z3_run, tmp_path: Path) -> None:
    """fp32 ZeRO-3 on 2 ranks, checkpoint at step 2 -> universal -> 1 rank to step 4: losses equal the
    uninterrupted 2-rank run within REL_TOL, and the samples consumed are exactly the same ones."""
    run = z3_run.copy_to(tmp_path / "run")
    ckpt = run / "checkpoints" / "step_00000002"
    p = run_tool("tools/convert_checkpoint.py", "universal", str(ckpt), "--world-size", "1", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert any("none repeated or skipped" in line for line in out["data_stream"]["lines"])
    p = run_tool("tools/resume.py", str(run), "--check-only", "--json")
    assert json.loads(p.stdout)["checkpoints"][0]["state"] == "valid"  # the manifest now lists universal/
    spec = {"stage": 3, "steps": 4, "resume": str(ckpt), "run_dir": str(tmp_path / "r1"),
            "model": {"memory_impl": "reference"}}  # fmt: skip
    res = launch(spec, tmp_path / "one", 1)[0]
    full = z3_run.results
    ref_losses = {k: v for k, v in full[0]["losses"].items() if int(k) > 2}
    assert res["losses"].keys() == ref_losses.keys()
    for k, v in ref_losses.items():
        assert math.isclose(res["losses"][k], v, rel_tol=REL_TOL), (k, res["losses"][k], v)
    # the 1-rank run consumed, step by step, exactly the samples both ranks consumed together
    for step in ref_losses:
        both = sorted(full[0]["samples"][step] + full[1]["samples"][step])
        assert sorted(res["samples"][step]) == both, step
    seen = [i for s in sorted(res["samples"], key=int) for i in res["samples"][s]]
    before = [i for r in full for s in ("1", "2") for i in r["samples"][s]]
    assert len(set(seen)) == len(seen) and not set(seen) & set(before)  # none repeated
    assert sorted(before + seen) == list(range(len(before) + len(seen)))  # none skipped


def test_zero1_bf16_two_ranks_to_one_via_universal(tmp_path: Path) -> None:
    """bf16 ZeRO-1 (DeepSpeed's BF16_Optimizer, its own checkpoint layout) on 2 ranks, checkpoint at
    step 2 -> universal -> 1 rank to step 4: the losses continue the uninterrupted 2-rank run."""
    spec = {"stage": 1, "precision": "bf16", "steps": 4, "save_at": [2], "run_dir": str(tmp_path / "r")}
    full = launch(spec, tmp_path / "two", 2)
    ckpt = tmp_path / "r" / "checkpoints" / "step_00000002"
    assert list(ckpt.glob("bf16_zero_pp_rank_*_optim_states.pt"))  # the BF16_Optimizer layout
    p = run_tool("tools/convert_checkpoint.py", "universal", str(ckpt), "--world-size", "1", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["data_stream"]["ok"]
    spec = {"stage": 1, "precision": "bf16", "steps": 4, "resume": str(ckpt), "run_dir": str(tmp_path / "r1")}
    res = launch(spec, tmp_path / "one", 1)[0]
    assert res["resumed_from"] == 2
    ref = {k: v for k, v in full[0]["losses"].items() if int(k) > 2}
    assert res["losses"].keys() == ref.keys()
    for k, v in ref.items():  # bf16 weights: the 1-rank sum of the same gradients may round differently
        assert math.isclose(res["losses"][k], v, rel_tol=1e-3), (k, res["losses"][k], v)


class _FakeEngine:
    """Just enough of a DeepSpeed engine for load_checkpoint's checks, which run before any engine call."""

    def __init__(self, cfg, batch: int) -> None:
        from pmnet.model import PMNetForCausalLM

        self.module = PMNetForCausalLM(cfg)
        self._batch = batch

    def train_batch_size(self) -> int:
        return self._batch

    def load_checkpoint(self, *a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("engine.load_checkpoint reached")


def _saved_model(ckpt: Path):
    import yaml

    from pmnet.model import PMNetConfig

    return PMNetConfig(**yaml.safe_load((ckpt / "config.yaml").read_text())["model"])


def test_world_size_change_without_universal_is_refused(z2_run) -> None:
    from pmnet.train.checkpoint import CheckpointError, load_checkpoint

    eng = _FakeEngine(_saved_model(z2_run.ckpt(2)), batch=4)
    with pytest.raises(CheckpointError, match=r"saved on 2 rank\(s\), this run has 1; convert it first"):
        load_checkpoint(eng, z2_run.ckpt(2))


def test_changed_model_shape_or_batch_is_refused(z2_run, tmp_path: Path) -> None:
    import dataclasses

    from pmnet.train.checkpoint import CheckpointError, load_checkpoint

    ckpt = z2_run.copy_to(tmp_path / "run") / "checkpoints" / "step_00000002"
    saved = _saved_model(ckpt)
    eng = _FakeEngine(dataclasses.replace(saved, intermediate_size=192), batch=4)
    with pytest.raises(
        CheckpointError, match="model shape changed since this checkpoint .intermediate_size 128 -> 192"
    ):
        load_checkpoint(eng, ckpt)
    (ckpt / "universal").mkdir()  # as if converted, so the global-batch check is reached
    with pytest.raises(CheckpointError, match="saved with global batch 4, this run has 8"):
        load_checkpoint(_FakeEngine(saved, batch=8), ckpt)


def test_elastic_check_refuses_other_global_batch(z2_run) -> None:
    p = run_tool("tools/convert_checkpoint.py", "universal", str(z2_run.ckpt(2)), "--world-size", "1",
                 "--global-batch-size", "8")  # fmt: skip
    assert p.returncode == 2 and "needs the same global batch" in p.stderr and "Traceback" not in p.stderr
    assert not (z2_run.ckpt(2) / "universal").exists()
