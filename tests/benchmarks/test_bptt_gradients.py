"""``benchmarks/bptt_gradients.py`` end to end on the CPU, as a user runs it (a subprocess).

The tiny model's attention reaches 4 layers x 15 bytes = 60 bytes back, less than a chunk of 64:
with K = 3 chunks and no recurrence nothing of the last chunk's loss can reach the first chunk's
bytes or any carried phase (exactly 0); with the recurrence it must (> 0).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, child_env

SCRIPT = REPO / "benchmarks" / "bptt_gradients.py"


def _finite(x: object) -> bool:
    return isinstance(x, float | int) and math.isfinite(x)


def test_bptt_gradients_cpu_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--preset", "tiny", "--chunk-bytes", "64",
           "--chunks", "1,3", "--steps", "3", "--measure-every", "1", "--out-dir", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "bptt_gradients.json").read_text())
    runs = {(r["variant"], r["chunks"]): r for r in result["runs"]}
    assert set(runs) == {(v, k) for v in ("recurrence", "norecurrence") for k in (1, 3)}
    for run in runs.values():
        assert "error" not in run, run.get("error")
        assert [r["step"] for r in run["records"]] == [1, 2, 3]
        assert run["backprop_bytes"] == 64 * run["chunks"]
        for rec in run["records"]:
            assert _finite(rec["loss"]) and _finite(rec["grad_norm"]) and rec["grad_norm"] > 0
            assert len(rec["chunk_losses"]) == run["chunks"]
            assert rec["family_norms"] and all(_finite(v) for v in rec["family_norms"].values())
            m = rec["measure"]  # measured every step
            assert len(m["dLK_de"]) == len(m["dLtotal_de"]) == run["chunks"]
            assert m["dLK_de"][-1] > 0 and len(m["dLK_dphase"]) == run["chunks"] - 1
        assert run["summary"]["steps"] == 3 and not run["summary"]["cut_short"]
    assert all(r["measure"]["ratio_first_last"] == 1.0 for r in runs["recurrence", 1]["records"])
    for rec in runs["recurrence", 3]["records"]:
        m = rec["measure"]
        assert m["ratio_first_last"] > 0 and m["dLK_dphase_total"][0] > 0
        assert m["ratio_first_last_total"] > m["ratio_first_last"]  # L_1 itself reaches chunk 1 directly
    for rec in runs["norecurrence", 3]["records"]:
        m = rec["measure"]
        assert m["ratio_first_last"] == 0.0 and m["dLK_de"][0] == 0.0
        assert m["dLK_dphase_total"] == [0.0, 0.0]  # no phase gradient without the recurrence
        assert m["dLK_de"][1] > 0  # the attention window still reaches back one chunk
    assert runs["norecurrence", 3]["summary"]["ratio_first_last_zero"] == 3
    md = (out / "bptt_gradients.md").read_text()
    assert "| norecurrence | 3 |" in md and "memory_read" in md
    assert (out / "bptt_gradients.png").stat().st_size > 10_000
    tail = proc.stdout.rstrip().splitlines()[-4:]  # the tables are printed last
    assert tail[0].startswith("| recurrence | 1 |") and tail[-1].startswith("| norecurrence | 3 |"), tail


def test_bptt_gradients_bad_text_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--preset", "tiny", "--text", str(tmp_path / "missing"),
           "--out-dir", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=child_env())
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "missing" in proc.stderr, proc.stderr
    assert not out.exists()
