"""``benchmarks/window_attention.py logs``, the A/B reader of the H200 call script, on launcher console
lines: warm-up lines skipped, a profiled step and those after it left out, ratios to the first log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, child_env

LINE = "step {s:6d}/12 | loss 3.2 | bpb 4.6 | lr 3.30e-04 | gnorm 0.9 | {r} | mfu 60.0% | 1.9 s/step | data 0% | eta 1s"


def _log(path: Path, rates: dict[int, str]) -> Path:
    path.write_text("noise\n" + "\n".join(LINE.format(s=s, r=r) for s, r in rates.items()) + "\n")
    return path


def test_medians_skip_warmup_and_profiled_steps(tmp_path: Path) -> None:
    a = _log(tmp_path / "a.log", {1: "6.4 kB/s", 2: "280.0 kB/s", 4: "290.0 kB/s", 6: "300.0 kB/s", 8: "100.0 kB/s"})
    b = _log(tmp_path / "b.log", {1: "5.0 kB/s", 2: "0.56 MB/s", 4: "0.58 MB/s", 6: "0.60 MB/s", 8: "0.01 MB/s"})
    out = tmp_path / "m.json"
    cmd = [sys.executable, "benchmarks/window_attention.py", "logs", str(a), str(b), "--skip", "1",
           "--before-step", "8", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["logs"]["rows"]
    assert [r["bytes_per_s"] for r in rows] == [290_000.0, 580_000.0]
    assert "2.000x" in proc.stdout
