"""How long building a PMNet model takes on the CPU (the ``model`` phase of every start).

    python benchmarks/model_build.py --preset pmnet_119m --repeats 5 --json /tmp/model_build.json

Builds ``PMNetForCausalLM(PMNetConfig.from_preset(PRESET))`` ``--repeats`` times in this process
(after one untimed build) and prints the median; run it at two commits to compare them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from pmnet.model import PMNetConfig, PMNetForCausalLM


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="pmnet_119m")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    cfg = PMNetConfig.from_preset(args.preset)
    torch.manual_seed(0)
    PMNetForCausalLM(cfg)  # untimed: first-use costs (allocator, lazy imports)
    runs = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        model = PMNetForCausalLM(cfg)
        runs.append(time.perf_counter() - t)
        del model
    params = sum(p.numel() for p in PMNetForCausalLM(cfg).parameters())
    med = statistics.median(runs)
    print("| preset | parameters | median build s | runs |")
    print("| --- | --- | --- | --- |")
    print(f"| {args.preset} | {params:,} | {med:.3f} | {', '.join(f'{r:.3f}' for r in runs)} |")
    if args.json:
        args.json.write_text(json.dumps({"preset": args.preset, "params": params, "median_s": med, "runs_s": runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
