"""The memory path learns end to end: a byte that attention cannot reach is recalled through it.

``benchmarks/memory_recall_probe.py`` in miniature, launched as a subprocess: recall one key
byte from 34 bytes back with 2 layers x window 8 (attention reaches 16). PMNet must learn it;
the same model without memory cannot beat chance by much (1/16). This catches any break in
write -> recurrence -> read -> gradient that the value-level tests would miss (e.g. a detached
phase or a scan whose gradient is zero).

600 steps, not 300: at 300 the final accuracy depended on the trajectory (seeds 0/1/2 reached
94/94/73% with the dense window mask and 71/93/52% with the blocked one, float-level differences
only), so a pass was luck. At 600 the blocked path reached 100/100/93%.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_memory_recalls_beyond_attention_and_nomem_does_not(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "memory_recall_probe.py"), "--keys", "1", "--distance", "32",
        "--steps", "600", "--eval-every", "200", "--lr", "3e-3", "--variants", "pmnet,nomem", "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = {r["variant"]: r["curve"][-1] for r in json.loads(out.read_text())["results"]}
    chance = 1 / 16
    assert results["pmnet"]["acc"] > 0.9, results
    assert results["nomem"]["acc"] < 3 * chance, results
    assert "memory only" in proc.stdout  # the probe itself says the lookback is out of attention's reach
