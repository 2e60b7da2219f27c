"""Each corruption is detected and named by audit_checkpoint.py and skipped by resume.py (real subprocess runs).

Source: the session's 2-rank ZeRO-2 run with checkpoints at steps 2 and 4; each test corrupts
step 4 of a private copy. resume.py must fall back to step 2, repair ``latest`` (not with
--check-only), and audit must exit 1 naming the file and the kind of damage.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ckpt.helpers import run_tool

pytestmark = pytest.mark.multiprocess


def _optim(d: Path, rank: int) -> Path:
    (p,) = d.glob(f"*zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")  # bf16_ prefix in bf16 runs
    return p


def flip_byte(d: Path) -> str:
    p = _optim(d, 1)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the tensor data of the fp32 partition / Adam moments
    p.write_bytes(bytes(data))
    return f"{p.name}: corrupt data, member data/"


def truncate(d: Path) -> str:
    p = d / "mp_rank_00_model_states.pt"
    os.truncate(p, p.stat().st_size // 2)
    return "mp_rank_00_model_states.pt: truncated"


def delete(d: Path) -> str:
    (d / "rank_00001.pt").unlink()
    return "rank_00001.pt: deleted"


def drop_manifest(d: Path) -> str:
    (d / "manifest.json").unlink()
    return "manifest.json missing"


def lying_manifest(d: Path) -> str:
    name = _optim(d, 0).name
    m = json.loads((d / "manifest.json").read_text())
    m["files"][name]["sha256"] = "0" * 64
    (d / "manifest.json").write_text(json.dumps(m))
    return f"manifest.json lies about {name}"


CASES: dict[str, Callable[[Path], str]] = {
    "flipped_byte_in_zero_partition": flip_byte,
    "truncated_file": truncate,
    "deleted_file": delete,
    "missing_manifest": drop_manifest,
    "lying_manifest": lying_manifest,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_corruption_named_by_audit_and_skipped_by_resume(case: str, z2_run, tmp_path: Path) -> None:
    run = z2_run.copy_to(tmp_path / "run")
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000004"
    expected = CASES[case](ckpts / "step_00000004")

    p = run_tool("tools/audit_checkpoint.py", str(ckpts / "step_00000004"), "--json")
    assert p.returncode == 1, p.stdout[-2000:]
    rep = json.loads(p.stdout)
    failed = " | ".join(c["detail"] for c in rep["checks"] if not c["ok"])
    assert expected in failed, failed
    assert rep["checks"][0]["name"] == "manifest" and not rep["checks"][0]["ok"]

    p = run_tool("tools/resume.py", str(run), "--check-only", "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    states = {c["name"]: c for c in rep["checkpoints"]}
    assert states["step_00000004"]["state"] == "corrupt" and states["step_00000002"]["state"] == "valid"
    assert rep["newest_valid"].endswith("step_00000002") and not rep["repaired"]
    assert (ckpts / "latest").read_text().strip() == "step_00000004"  # --check-only changed nothing

    p = run_tool("tools/resume.py", str(run))
    assert p.returncode == 0 and "repaired" in p.stdout and "corrupt" in p.stdout, p.stdout
    assert (ckpts / "latest").read_text().strip() == "step_00000002"
    assert "launchers/pretrain.sh" in p.stdout


def test_incomplete_save_is_listed_and_never_chosen(z2_run, tmp_path: Path) -> None:
    """A save killed mid-write leaves only .tmp-step_X (latest untouched); resume lists it as incomplete."""
    import shutil

    run = z2_run.copy_to(tmp_path / "run")
    ckpts = run / "checkpoints"
    shutil.copytree(ckpts / "step_00000004", ckpts / ".tmp-step_00000006")
    (ckpts / ".tmp-step_00000006" / "manifest.json").unlink()
    p = run_tool("tools/resume.py", str(run), "--json")
    rep = json.loads(p.stdout)
    states = {c["name"]: c["state"] for c in rep["checkpoints"]}
    assert states == {"step_00000002": "valid", "step_00000004": "valid", ".tmp-step_00000006": "incomplete"}
    assert rep["latest_ok"] and rep["newest_valid"].endswith("step_00000004")


def test_no_valid_checkpoint_exits_nonzero(tmp_path: Path) -> None:
    (tmp_path / "run" / "checkpoints" / ".tmp-step_00000001").mkdir(parents=True)
    p = run_tool("tools/resume.py", str(tmp_path / "run"))
    assert p.returncode == 1 and "no valid checkpoint" in p.stderr and "Traceback" not in p.stderr
    p = run_tool("tools/resume.py", str(tmp_path / "missing"))
    assert p.returncode == 2 and "no such run directory" in p.stderr  # unusable input: exit 2


@pytest.mark.parametrize("case", ["missing_manifest", "flipped_byte_in_zero_partition", "lying_manifest"])
def test_convert_refuses_unverifiable_input_unless_allowed(case: str, z2_run, tmp_path: Path) -> None:
    """No manifest or a hash mismatch: convert exits 2 in one line naming the problem and the flag, writes
    nothing; ``--allow-unverified`` converts it and says so in the result's notes."""
    run = z2_run.copy_to(tmp_path / "run")
    step = run / "checkpoints" / "step_00000004"
    CASES[case](step)
    out = tmp_path / "export"
    p = run_tool("tools/convert_checkpoint.py", "interchange", str(step), "--out", str(out))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "--allow-unverified" in p.stderr and str(step) in p.stderr and not out.exists()
    assert ("manifest.json missing" if case == "missing_manifest" else "sha256 differs") in p.stderr
    p = run_tool(
        "tools/convert_checkpoint.py", "interchange", str(step), "--out", str(out), "--allow-unverified", "--json"
    )
    assert p.returncode == 0, p.stderr
    notes = json.loads(p.stdout)["notes"]
    assert any(n.startswith("unverified input") for n in notes) and (out / "model.safetensors").is_file()
