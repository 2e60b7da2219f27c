"""What the trainer's imports cost on this machine: each heavy package in a fresh interpreter.

A restart of a long run pays the imports of every rank again (``perf/startup/imports_s``).
This times ``import X`` for the trainer's module and the packages under it, each in its own
fresh ``python`` process (so nothing is shared between them), ``--repeats`` times, and prints
the median per row; ``--tree`` adds the largest cumulative entries of ``python -X importtime``
for the trainer's module (which package pulls in which).

    python benchmarks/import_time.py --json /tmp/import_time.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = (
    "pass",  # the interpreter alone: start and exit, the baseline every row includes
    "pmnet.train.preflight",  # the launcher's pre-flight process (no torch)
    "torch",
    "deepspeed",
    "streaming",  # the whole package: its text / vision / multimodal zoos, transformers, torchvision
    "data_pipeline.streaming_core",  # what the data path imports of streaming (the zoos deferred)
    "pmnet.model.modeling",  # the model (torch, torch._inductor for the Triton kernels)
    "pmnet.train.trainer",  # everything a rank imports before it builds the model
)


def time_import(module: str) -> float:
    """Wall seconds of a fresh ``python -c "import module"`` (interpreter start and exit included)."""
    body = "pass" if module == "pass" else f"import {module}"
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", body], cwd=ROOT, capture_output=True, text=True, check=False)
    took = time.perf_counter() - t
    return took if out.returncode == 0 else float("nan")


def import_tree(module: str, top: int) -> list[tuple[float, float, str]]:
    """The ``top`` largest (cumulative s, self s, name) rows of ``-X importtime`` for ``module``."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = line[len("import time:") :].split("|", 2)
        rows.append((int(cum_us) / 1e6, int(self_us) / 1e6, name.strip()))
    rows.sort(reverse=True)
    return rows[:top]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per module (median)")
    p.add_argument("--tree", type=int, default=25, help="largest -X importtime rows shown (0: none)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    time_import("pmnet.train.trainer")  # one untimed pass: the files into the page cache
    rows = []
    print("| import | median s | runs |")
    print("| --- | --- | --- |")
    for module in MODULES:
        runs = [time_import(module) for _ in range(args.repeats)]
        med = statistics.median(runs)
        rows.append({"module": module, "median_s": med, "runs_s": runs})
        print(f"| {module} | {med:.2f} | {', '.join(f'{r:.2f}' for r in runs)} |", flush=True)
    tree = import_tree("pmnet.train.trainer", args.tree) if args.tree else []
    if tree:
        print("\n-X importtime, pmnet.train.trainer, largest cumulative:")
        for cum, own, name in tree:
            print(f"  {cum:7.2f} s cumulative {own:6.2f} s self  {name}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"python": sys.executable, "imports": rows, "tree": tree}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
