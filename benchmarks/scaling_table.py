"""Scaling table of launcher runs (issue 17): one row per run directory, read from its TensorBoard
events and its step profile.

Each run directory is a real ``launchers/pretrain.sh`` run (any number of GPUs, any ZeRO stage)
with ``logging.profile_at_step`` set. Per run: ranks, ZeRO stage, median bytes/s over the logged
windows after the first (compilation), bytes/s per GPU, efficiency against the one-GPU run of the
same stage (or the first row), peak GPU memory, and the share of profiled GPU time in
communication kernels (NCCL) from ``profile/steps_*.txt``.

    python benchmarks/scaling_table.py RUN_DIR [RUN_DIR ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmnet.eval.run_logs import read_scalars

COMM_FAMILY = "communication (NCCL/gloo)"


def _comm_share(run: Path) -> float | None:
    """Share of profiled device time in the communication family (its row of the profile table)."""
    for prof in sorted((run / "profile").glob("steps_*.txt")):
        row = re.search(re.escape(COMM_FAMILY) + r"\s+[\d.]+ ms\s+([\d.]+)%", prof.read_text(errors="replace"))
        if row:
            return float(row.group(1)) / 100
    return None


def run_row(run: Path) -> dict[str, Any]:
    """One run directory -> its row (world size from the log line, stage from the saved config)."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    log = (run / "train.log").read_text(errors="replace")
    ranks = re.search(r"(\d+) rank\(s\) on (\d+) node", log)
    world = int(ranks.group(1)) if ranks else 1
    sc = read_scalars(run, ("perf/bytes_per_s", "perf/gpu_mem_gb", "train/loss"))
    rates = sc["perf/bytes_per_s"][1]
    steady = rates[1:] if len(rates) > 1 else rates  # the first window holds the compilation
    mem = sc["perf/gpu_mem_gb"][1]
    rate = float(np.median(steady)) if len(steady) else float("nan")
    return {
        "run": run.name, "gpus": world, "zero_stage": int(cfg["deepspeed"]["zero_stage"]),
        "bytes_per_s": rate, "bytes_per_s_per_gpu": rate / world,
        "peak_gpu_mem_gb": float(mem.max()) if len(mem) else None, "comm_share": _comm_share(run),
        "losses": [round(float(x), 4) for x in sc["train/loss"][1][:10]],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = [run_row(r) for r in args.runs]
    for r in rows:
        base = next((b for b in rows if b["zero_stage"] == r["zero_stage"] and b["gpus"] == 1), rows[0])
        r["efficiency"] = r["bytes_per_s_per_gpu"] / base["bytes_per_s_per_gpu"]
    print("| run | GPUs | ZeRO | bytes/s | per GPU | efficiency | peak GB | comm share | first losses |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mem = f"{r['peak_gpu_mem_gb']:.1f}" if r["peak_gpu_mem_gb"] is not None else "-"
        comm = f"{100 * r['comm_share']:.1f}%" if r["comm_share"] is not None else "-"
        print(f"| {r['run']} | {r['gpus']} | {r['zero_stage']} | {r['bytes_per_s'] / 1e3:.1f}k | "
              f"{r['bytes_per_s_per_gpu'] / 1e3:.1f}k | {100 * r['efficiency']:.1f}% | {mem} | {comm} | "
              f"{' '.join(f'{x:.3f}' for x in r['losses'][:4])} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
