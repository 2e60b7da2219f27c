"""Checkpoint directory bookkeeping without DeepSpeed: names, latest, scan states, retention, bf16 rounding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pmnet.checkpoint.manifest import (
    CheckpointError,
    check_checkpoint,
    find_latest_valid,
    hash_files,
    list_files,
    read_latest,
    scan_checkpoints,
    step_name,
    write_latest,
)
from pmnet.checkpoint.ptread import PtFile, fp32_to_bf16_bits
from pmnet.train.checkpoint import apply_retention


def fake_ckpt(root: Path, step: int, *, world: int = 1) -> Path:
    """A structurally complete checkpoint of ZeRO stage 1 (small files, real manifest)."""
    d = root / step_name(step)
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"step": step, "world_size": world, "zero_stage": 1}))
    (d / "trainer_state.json").write_text(json.dumps({"step": step}))
    (d / "config.yaml").write_text("model: {}\n")
    # small real torch files: a checkpoint's pickles are checked against the allowlist
    torch.save({"module": {"w": torch.zeros(25)}}, d / "mp_rank_00_model_states.pt")
    for r in range(world):
        torch.save({"rank": r}, d / f"rank_{r:05d}.pt")
        torch.save(
            {"optimizer_state_dict": {"step": torch.ones(3)}}, d / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"
        )
    files = hash_files(d, list_files(d))
    (d / "manifest.json").write_text(json.dumps({"step": step, "files": files}))
    return d


def test_names_and_latest(tmp_path: Path) -> None:
    assert step_name(12) == "step_00000012"
    with pytest.raises(CheckpointError):
        step_name(-1)
    root = tmp_path / "checkpoints"
    root.mkdir()
    assert read_latest(root) is None
    write_latest(root, "step_00000012")
    assert read_latest(root) == "step_00000012"
    assert [p.name for p in root.iterdir()] == ["latest"]  # no temporary file left behind


def test_scan_states_and_latest_valid(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    fake_ckpt(root, 1)
    fake_ckpt(root, 2, world=2)
    bad = fake_ckpt(root, 3)
    (bad / "trainer_state.json").write_text('{"step": 4}')  # same size, other bytes
    (root / ".tmp-step_00000004").mkdir()
    infos = {i.name: i for i in scan_checkpoints(tmp_path)}
    assert infos["step_00000001"].state == "valid"
    assert infos["step_00000002"].state == "valid" and infos["step_00000002"].world_size == 2
    assert infos["step_00000003"].state == "corrupt" and "trainer_state.json: sha256" in infos["step_00000003"].reason
    assert infos[".tmp-step_00000004"].state == "incomplete" and infos[".tmp-step_00000004"].step == 4
    assert find_latest_valid(tmp_path) == root / "step_00000002"
    # sizes only: the same-size change goes unnoticed, by design of --no-hashes
    assert find_latest_valid(tmp_path, verify_hashes=False) == root / "step_00000003"


def test_expected_files_and_unlisted(tmp_path: Path) -> None:
    d = fake_ckpt(tmp_path / "checkpoints", 5, world=2)
    m = json.loads((d / "manifest.json").read_text())
    del m["files"]["zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    (d / "manifest.json").write_text(json.dumps(m))
    assert "not in manifest.json" in check_checkpoint(d).reason
    (d / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    info = check_checkpoint(d)
    assert info.state == "corrupt" and "expected for world size 2" in info.reason


def test_retention_keeps_last_every_latest(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for s in (100, 200, 300, 400, 500, 600):
        fake_ckpt(root, s)
    (root / ".tmp-step_00000700").mkdir()
    write_latest(root, "step_00000200")
    deleted = apply_retention(root, keep_last=2, keep_every=300, protect={"step_00000600"})
    left = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert left == ["step_00000200", "step_00000300", "step_00000500", "step_00000600"]
    assert sorted(deleted) == [".tmp-step_00000700", "step_00000100", "step_00000400"]


def test_bf16_rounding_matches_torch() -> None:
    x = torch.randn(10000) * torch.logspace(-30, 30, 10000)
    x[:4] = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0])
    got = fp32_to_bf16_bits(x.numpy())
    want = x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(got, want)


def test_ptread_refuses_code(tmp_path: Path) -> None:
    import collections

    p = tmp_path / "x.pt"
    torch.save({"a": torch.arange(5, dtype=torch.float32), "b": collections.OrderedDict(c=1)}, p)
    with PtFile(p) as f:
        assert np.array_equal(f.read(f.obj["a"]), np.arange(5, dtype=np.float32))
    torch.save({"evil": collections.Counter()}, p)  # any class outside the allowlist is refused
    with pytest.raises(ValueError, match="refusing to unpickle collections.Counter"):
        PtFile(p)


def test_retention_after_a_resume_from_an_older_step(tmp_path: Path) -> None:
    """Saving step 400 after resuming past a corrupt step 500: the corrupt later one goes, a valid later one stays."""
    root = tmp_path / "checkpoints"
    for s in (100, 200, 300, 500, 600):
        fake_ckpt(root, s)
    (root / "step_00000500" / "meta.json").write_text("{}")  # size changed: corrupt
    fake_ckpt(root, 400)
    write_latest(root, "step_00000400")
    deleted = apply_retention(root, keep_last=2, keep_every=0, protect={"step_00000400"}, current=400)
    left = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert left == ["step_00000300", "step_00000400", "step_00000600"]
    assert sorted(deleted) == ["step_00000100", "step_00000200", "step_00000500"]
