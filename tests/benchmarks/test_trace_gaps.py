"""``benchmarks/trace_gaps.py`` as a user runs it, on Chrome traces written in torch.profiler's format
with known idle gaps (overlapping streams merged), and its one-line refusal of a trace without GPU work."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, child_env

SCRIPT = REPO / "benchmarks" / "trace_gaps.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=child_env())  # fmt: skip


def test_idle_time_and_tail_ops_of_a_known_trace(tmp_path: Path) -> None:
    rng = random.Random(3)
    events, end, idle = [], 1000.0, 0.0
    for i in range(200):  # pairs on two streams: the second kernel overlaps the first (no gap between them)
        gap = rng.choice([0.0, 5.0, 40.0])
        t = end + gap
        idle += gap
        a, b = rng.uniform(200.0, 900.0), rng.uniform(200.0, 900.0)
        events.append({"ph": "X", "cat": "kernel", "name": f"k{i % 3}", "ts": t, "dur": a, "tid": 7})
        events.append({"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoD", "ts": t + a / 2, "dur": b, "tid": 8})
        end = max(t + a, t + a / 2 + b)
    end = max(e["ts"] + e["dur"] for e in events)
    events.append({"ph": "X", "cat": "cpu_op", "name": "aten::isfinite", "ts": end - 50.0, "dur": 20.0, "tid": 1})
    events.append({"ph": "X", "cat": "cpu_op", "name": "aten::amax", "ts": end - 45.0, "dur": 5.0, "tid": 1})  # nested
    trace = tmp_path / "trace.json.gz"
    with gzip.open(trace, "wt") as f:
        json.dump({"traceEvents": events}, f)
    out = tmp_path / "gaps.json"
    proc = _run(str(trace), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    assert abs(got["idle_ms"] - idle / 1e3) < 1e-6 and idle > 0
    assert abs(sum(got["buckets_ms"]) - got["idle_ms"]) < 0.01 * got["idle_ms"] + 1e-6
    assert abs(got["span_ms"] - (end - 1000.0) / 1e3) < 1e-6
    assert sum(ms for _, _, ms in got["by_next"]) > 0
    assert [row[0] for row in got["tail_host_ops"]] == ["aten::isfinite"]  # the nested amax is not top-level
    assert "idle" in proc.stdout


def test_trace_without_gpu_work_is_refused_in_one_line(tmp_path: Path) -> None:
    trace = tmp_path / "cpu.json"
    trace.write_text(json.dumps({"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 5}]}))
    proc = _run(str(trace))
    assert proc.returncode != 0 and proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
    missing = _run(str(tmp_path / "nope.json"))
    assert missing.returncode != 0 and "nope.json" in missing.stderr and "Traceback" not in missing.stderr
