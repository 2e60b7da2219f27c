"""No load path runs code from a checkpoint (issue 15, item 2).

Each test plants a pickle that calls ``posix.system("touch MARKER")`` into a real checkpoint
file written by a real DeepSpeed run (the session's 2-rank ZeRO-2 run, or the real trainer's
run), re-hashes the manifest to match (so only the allowlist can catch it), then drives one
load path: the trainer's auto-resume, ``load_checkpoint`` directly (with and without the
pre-scan), ``train.init_from``, tools/resume.py, tools/audit_checkpoint.py,
tools/convert_checkpoint.py (interchange and universal) and tools/generate.py. Each checks
that the marker file was never created and that the refusal names the file in one line.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tests.ckpt.helpers import PY, WORKER, plant_payload, run_ranks, run_tool, run_trainer, trainer_overrides

pytestmark = pytest.mark.multiprocess

MODEL_FILE = "mp_rank_00_model_states.pt"
REFUSAL = "refusing to unpickle posix.system"


@pytest.fixture
def planted(z2_run, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the ZeRO-2 run whose step 4 model states call os.system; (run dir, marker)."""
    run = z2_run.copy_to(tmp_path / "run")
    marker = tmp_path / "PWNED"
    plant_payload(run / "checkpoints" / "step_00000004" / MODEL_FILE, marker)
    return run, marker


def _one_line_naming(text: str, name: str) -> None:
    lines = [ln for ln in text.strip().splitlines() if name in ln]
    assert lines, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


def test_payload_really_runs_without_the_guard(planted: tuple[Path, Path]) -> None:
    """The planted file is a working exploit: a plain full unpickle (what DeepSpeed does) runs it."""
    run, marker = planted
    torch.load(run / "checkpoints" / "step_00000004" / MODEL_FILE, weights_only=False)
    assert marker.exists()


def test_allowlist_accepts_every_file_deepspeed_writes(z2_run, z3_run) -> None:
    """bf16 ZeRO-2 and fp32 ZeRO-3 checkpoints pass the scan and the weights-only load as they are."""
    from pmnet.checkpoint.manifest import check_checkpoint
    from pmnet.checkpoint.safeload import pickle_files, restricted_torch_load, scan_pickles

    for run in (z2_run, z3_run):
        ckpt = run.ckpt(4)
        files = pickle_files(ckpt)
        assert scan_pickles(files) == len(files) > 0
        assert check_checkpoint(ckpt).state == "valid"
        with restricted_torch_load(str(ckpt)):
            for f in files:
                torch.load(f, map_location="cpu", weights_only=False)  # forced to weights-only inside


def test_restricted_torch_load_overrides_weights_only_false(planted: tuple[Path, Path]) -> None:
    from pmnet.checkpoint.safeload import FORCE_ENV, UnsafeCheckpointError, restricted_torch_load

    run, marker = planted
    f = run / "checkpoints" / "step_00000004" / MODEL_FILE
    original = torch.load
    with pytest.raises(UnsafeCheckpointError) as err, restricted_torch_load("ckpt"):
        torch.load(f, map_location="cpu", weights_only=False)
    msg = str(err.value)
    assert str(f) in msg and "posix.system" in msg and "\n" not in msg
    assert not marker.exists()
    assert torch.load is original and FORCE_ENV not in os.environ  # restored


@pytest.mark.parametrize("check_only", [True, False])
def test_resume_tool_marks_it_unsafe(planted: tuple[Path, Path], check_only: bool) -> None:
    run, marker = planted
    args = ["tools/resume.py", str(run), "--json", *(["--check-only"] if check_only else [])]
    p = run_tool(*args)
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    states = {c["name"]: c for c in rep["checkpoints"]}
    assert states["step_00000004"]["state"] == "unsafe", states
    assert MODEL_FILE in states["step_00000004"]["reason"] and REFUSAL in states["step_00000004"]["reason"]
    assert rep["newest_valid"].endswith("step_00000002")
    assert (run / "checkpoints" / "latest").read_text().strip() == ("step_00000004" if check_only else "step_00000002")
    p = run_tool("tools/resume.py", str(run), "--check-only")
    _one_line_naming(p.stdout, MODEL_FILE)
    assert not marker.exists()


def test_audit_refuses_it(planted: tuple[Path, Path]) -> None:
    run, marker = planted
    p = run_tool("tools/audit_checkpoint.py", str(run / "checkpoints" / "step_00000004"), "--json")
    assert p.returncode == 1, p.stdout[-2000:]
    failed = " | ".join(c["detail"] for c in json.loads(p.stdout)["checks"] if not c["ok"])
    assert MODEL_FILE in failed and REFUSAL in failed, failed
    assert not marker.exists()


@pytest.mark.parametrize("extra", [[], ["--allow-unverified"]])
def test_convert_interchange_refuses_it(planted: tuple[Path, Path], tmp_path: Path, extra: list[str]) -> None:
    """Refused with or without --allow-unverified (that flag accepts missing hashes, never code)."""
    run, marker = planted
    out = tmp_path / "export"
    p = run_tool("tools/convert_checkpoint.py", "interchange", str(run / "checkpoints" / "step_00000004"), "--out", str(out),
                 *extra)  # fmt: skip
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert MODEL_FILE in p.stderr and REFUSAL in p.stderr
    assert not out.exists() and not marker.exists()


def test_convert_interchange_refuses_it_without_manifest(planted: tuple[Path, Path], tmp_path: Path) -> None:
    run, marker = planted
    step = run / "checkpoints" / "step_00000004"
    (step / "manifest.json").unlink()
    p = run_tool(
        "tools/convert_checkpoint.py", "interchange", str(step), "--out", str(tmp_path / "o"), "--allow-unverified"
    )
    assert p.returncode == 2 and MODEL_FILE in p.stderr and "posix.system" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not marker.exists()


@pytest.mark.parametrize("with_manifest", [True, False])
def test_convert_universal_refuses_it(planted: tuple[Path, Path], with_manifest: bool) -> None:
    """ds_to_universal unpickles with weights_only=False: the file must never reach it."""
    run, marker = planted
    step = run / "checkpoints" / "step_00000004"
    if not with_manifest:
        (step / "manifest.json").unlink()
    p = run_tool("tools/convert_checkpoint.py", "universal", str(step))
    assert p.returncode == 2 and MODEL_FILE in p.stderr and "posix.system" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not (step / "universal").exists() and not marker.exists()


def test_safeload_runner_makes_a_module_load_weights_only(planted: tuple[Path, Path], tmp_path: Path) -> None:
    """``python -m pmnet.checkpoint.safeload MODULE``: even a module that calls torch.load(weights_only=False)
    directly on the file (as ds_to_universal does) cannot run it."""
    run, marker = planted
    mod = tmp_path / "naive_loader.py"
    mod.write_text("import sys, torch\ntorch.load(sys.argv[1], weights_only=False)\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{Path(__file__).resolve().parents[2]}")
    import subprocess

    f = run / "checkpoints" / "step_00000004" / MODEL_FILE
    p = subprocess.run([PY, "-m", "pmnet.checkpoint.safeload", "naive_loader", str(f)], env=env, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert p.returncode == 1 and str(f) in p.stderr and "posix.system" in p.stderr, p.stderr
    assert not marker.exists()


def test_generate_refuses_it(planted: tuple[Path, Path]) -> None:
    run, marker = planted
    p = run_tool("tools/generate.py", str(run / "checkpoints" / "step_00000004"), "--new-bytes", "4")
    assert p.returncode == 2 and MODEL_FILE in p.stderr and "posix.system" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and not marker.exists()


@pytest.mark.parametrize("skip_scan", [False, True])
def test_load_checkpoint_refuses_it_on_every_rank(planted: tuple[Path, Path], tmp_path: Path, skip_scan: bool) -> None:
    """``load_checkpoint`` called directly on the planted step (2 ranks, ZeRO-2). With ``skip_scan`` the
    worker disables the pre-scan, so DeepSpeed's own torch.load meets the file: weights-only stops it."""
    run, marker = planted
    spec = {"stage": 2, "precision": "bf16", "steps": 6, "resume": str(run / "checkpoints" / "step_00000004"),
            "run_dir": str(tmp_path / "unused"), "skip_scan": skip_scan}  # fmt: skip
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    codes = run_ranks([PY, str(WORKER), str(spec_path)], 2, lambda r: tmp_path / f"rank{r}.log", 300)
    logs = [(tmp_path / f"rank{r}.log").read_text(errors="replace") for r in range(2)]
    assert all(c != 0 for c in codes), (codes, logs[0][-3000:])
    for log in logs:
        want = "refused by the weights-only loader" if skip_scan else REFUSAL
        assert MODEL_FILE in log and want in log and "posix.system" in log, log[-3000:]
    assert not marker.exists()


def test_init_from_never_unpickles(planted: tuple[Path, Path], tmp_path: Path) -> None:
    """``train.init_from`` reads safetensors only: a pickle in its place (or a DeepSpeed step directory
    with a planted payload) is refused in one line naming the path."""
    from pmnet.config import Config, ConfigError
    from pmnet.model import PMNetConfig, PMNetForCausalLM, save_pretrained
    from pmnet.train.trainer import load_init_weights
    from tests.ckpt.helpers import Payload

    marker = tmp_path / "PWNED"
    cfg = Config(model=PMNetConfig.from_preset("tiny"))
    model = PMNetForCausalLM(cfg.model)
    export = tmp_path / "export"
    save_pretrained(model, export, cfg.model)
    (export / "model.safetensors").write_bytes(pickle.dumps({"w": Payload(f"touch {marker}")}))
    cfg.train.init_from = str(export)
    with pytest.raises(ConfigError) as err:
        load_init_weights(model, cfg)
    assert str(export) in str(err.value) and "\n" not in str(err.value)
    run, ds_marker = planted  # a DeepSpeed step directory is no interchange directory: refused, not read
    cfg.train.init_from = str(run / "checkpoints" / "step_00000004")
    with pytest.raises(ConfigError) as err:
        load_init_weights(model, cfg)
    assert cfg.train.init_from in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists() and not ds_marker.exists()


@pytest.mark.slow
def test_trainer_auto_resume_skips_it(shards: Path, trainer_run: Path, tmp_path: Path) -> None:
    """The real trainer (2 ranks) in a run directory whose newest checkpoint (step 6) carries the payload:
    it says why it skips step 6, resumes from step 3, never runs the payload, and writes a clean step 6."""
    run = tmp_path / "full"
    shutil.copytree(trainer_run, run, ignore=shutil.ignore_patterns("tb"))
    marker = tmp_path / "PWNED"
    step6 = run / "checkpoints" / "step_00000006"
    plant_payload(step6 / MODEL_FILE, marker)
    out = run_trainer(trainer_overrides(shards, tmp_path, "full"), 2, tmp_path / "resume")
    assert not marker.exists()
    skip = [ln for ln in out.splitlines() if "not resuming from" in ln]
    assert len(skip) == 1 and "step_00000006" in skip[0] and "unsafe" in skip[0], out[-3000:]
    assert MODEL_FILE in skip[0] and REFUSAL in skip[0]
    assert "resumed from" in out and "step_00000003" in out
    p = run_tool("tools/audit_checkpoint.py", str(step6))
    assert p.returncode == 0, p.stdout[-2000:]  # the re-trained step 6 replaced the planted one


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
