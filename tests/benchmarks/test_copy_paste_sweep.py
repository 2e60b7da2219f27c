"""``benchmarks/copy_paste_sweep.py`` end to end on the CPU, as a user runs it (a subprocess):
two real ``launchers/pretrain.sh`` jobs side by side, their checkpoints evaluated by N bucket,
one summary; then ``--eval-only`` on the same runs, and the one-line refusal of a bad setting.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, child_env

SCRIPT = REPO / "benchmarks" / "copy_paste_sweep.py"


def _sweep(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), "--run-root", str(tmp_path / "runs"),
           "--settings", "smoke", "--device", "cpu", "--samples", "4", *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=child_env())


def test_sweep_trains_both_variants_and_evaluates(tmp_path: Path) -> None:
    # the step limit ends the runs long before the clock: a slow machine only waits longer
    proc = _sweep(tmp_path, "--max-steps", "12", "--train-seconds", "600")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["exit_codes"] == {"smoke_pmnet": 0, "smoke_nomem": 0}
    res = summary["settings"]["smoke"]
    assert {v: info["steps"] for v, info in res["variants"].items()} == {"pmnet": 12, "nomem": 12}
    labels = {row["model"] for row in res["buckets"]}
    assert labels == {"PMNet", "no-memory"}
    his = sorted({int(row["n_hi"]) for row in res["buckets"]})
    assert his == [2, 4, 6]  # the setting's edges
    for row in res["buckets"]:
        assert 0.0 <= float(row["byte_accuracy"]) <= 1.0 and int(row["samples"]) == 4
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "| smoke | 4 | 2..6 | PMNet | 12 |" in text
    for name in ("copy_paste.csv", "copy_paste.png", "train_curves.md", "train_pmnet.log"):
        assert (tmp_path / "out" / "smoke" / name).is_file(), name

    # the same runs evaluated again, without training
    (tmp_path / "out" / "summary.json").unlink()
    proc = _sweep(tmp_path, "--eval-only")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    again = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert again["exit_codes"] == {}
    assert again["settings"]["smoke"]["buckets"] == res["buckets"]  # same checkpoints, same samples


def test_sweep_refuses_unknown_setting(tmp_path: Path) -> None:
    proc = _sweep(tmp_path, "--settings", "nope")
    assert proc.returncode == 2
    assert "unknown setting 'nope'" in proc.stderr
    assert not (tmp_path / "out").exists()
