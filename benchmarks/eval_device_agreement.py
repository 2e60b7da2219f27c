"""Why per-position BPB differs between two ways of running the same weights (issue 16, item 4).

``tests/eval/test_eval_gpu.py::test_flex_on_gpu_matches_sdpa_on_cpu`` compares flex attention
on the GPU (chunks of 4,096) with sdpa on the CPU (one chunk). This script runs the same
random tiny checkpoint under several settings and, for each pair, separates the causes:

* the per-position BPB difference (mean and max),
* hard-routing flips: positions whose group index (``argmax_n s_n`` of a write) differs,
  with the write's top-1 / top-2 probability margin at the flip (a near-tie if tiny),
* the largest difference at positions before the first flip (pure float noise).

Settings: ``cpu-sdpa-16k`` (the test's reference), ``cpu-sdpa-4k`` (chunking alone),
``cpu-eager-4k``; on a GPU also ``cuda-sdpa-4k`` (device alone), ``cuda-flex-4k`` (the test's
subject) and ``cuda-flex-16k``.

    python benchmarks/eval_device_agreement.py --books BOOKS_DIR [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmnet.eval import long_context as lc
from pmnet.eval.loading import load_model
from pmnet.eval.routing import RoutingRecorder
from pmnet.model import PMNetConfig, PMNetForCausalLM, save_pretrained
from pmnet.model.memory import PhasorMemoryWrite


def run(ckpt: Path, books: list[lc.Book], device: str, backend: str, chunk: int, max_bytes: int) -> dict[str, Any]:
    """Per-position BPB plus every write's routing and probability margin, concatenated over chunks."""
    model, _ = load_model(ckpt, device=device, attn_backend=backend)
    with RoutingRecorder(model) as rec:
        res = lc.evaluate_books(model, books, max_bytes=max_bytes, chunk_bytes=chunk)
    trace = rec.trace(max_bytes)
    return {"bpb": res.bpb, "mean": res.mean_bpb, "groups": trace.groups, "margins": trace.margins}


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Differences between two runs of the same books (b is compared against a)."""
    diff = np.abs(a["bpb"] - b["bpb"])
    flips = []
    for level, (ga, gb) in enumerate(zip(a["groups"], b["groups"])):
        where = np.argwhere(ga != gb)  # (book, position) pairs
        margin = np.minimum(a["margins"][level], b["margins"][level])
        flips.append({
            "level": level,
            "count": int(len(where)),
            "first_position": int(where[:, 1].min()) if len(where) else None,
            "max_margin_at_flip": float(margin[ga != gb].max()) if len(where) else None,
            "median_margin_overall": float(np.median(margin)),
        })  # fmt: skip
    firsts = [f["first_position"] for f in flips if f["first_position"] is not None]
    first = min(firsts) if firsts else len(diff)
    worst = int(diff.argmax())
    return {
        "mean_bpb_diff": abs(a["mean"] - b["mean"]),
        "max_position_diff": float(diff.max()),
        "worst_position": worst,
        "positions_over_0.05": int((diff > 0.05).sum()),
        "positions_over_1e-3": int((diff > 1e-3).sum()),
        "first_flip_position": first if firsts else None,
        "max_diff_before_first_flip": float(diff[: max(first, 1)].max()),
        "flips": flips,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--books", type=Path, required=True)
    ap.add_argument("--max-bytes", type=int, default=16384)
    ap.add_argument("--limit", type=int, default=2)
    ap.add_argument(
        "--write-gain",
        type=float,
        default=1.0,
        help="scale the writes' q/k projection weights (decisive routing: no near-ties)",
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    books, _ = lc.read_books(args.books, args.max_bytes, limit=args.limit)
    torch.manual_seed(0)  # the same random tiny checkpoint as tests/eval/conftest.py
    cfg = PMNetConfig.from_preset("tiny")
    tmp = Path(tempfile.mkdtemp(prefix="agree_"))
    model = PMNetForCausalLM(cfg)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, PhasorMemoryWrite):
                mod.proj_q.weight.mul_(args.write_gain)
                mod.proj_k.weight.mul_(args.write_gain)
    save_pretrained(model, tmp / "tiny", cfg)
    settings = {"cpu-sdpa-16k": ("cpu", "sdpa", 16384), "cpu-sdpa-4k": ("cpu", "sdpa", 4096),
                "cpu-eager-4k": ("cpu", "eager", 4096)}  # fmt: skip
    if torch.cuda.is_available():
        settings |= {"cuda-sdpa-4k": ("cuda", "sdpa", 4096), "cuda-flex-4k": ("cuda", "flex", 4096),
                     "cuda-flex-16k": ("cuda", "flex", 16384)}  # fmt: skip
    runs = {name: run(tmp / "tiny", books, *s, args.max_bytes) for name, s in settings.items()}
    ref = runs["cpu-sdpa-16k"]
    pairs = {name: compare(ref, r) for name, r in runs.items() if name != "cpu-sdpa-16k"}
    if "cuda-flex-4k" in runs:
        pairs["cuda-flex-4k vs cuda-sdpa-4k"] = compare(runs["cuda-sdpa-4k"], runs["cuda-flex-4k"])
    print(f"reference cpu-sdpa-16k: mean BPB {ref['mean']:.5f} over {len(books)} books x {args.max_bytes} bytes")
    print(
        "| vs reference | mean diff | max pos diff | >0.05 | >1e-3 | flips per level | first flip | max diff before |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, c in pairs.items():
        flips = "/".join(str(f["count"]) for f in c["flips"])
        print(f"| {name} | {c['mean_bpb_diff']:.2e} | {c['max_position_diff']:.4f} | {c['positions_over_0.05']} | "
              f"{c['positions_over_1e-3']} | {flips} | {c['first_flip_position']} | {c['max_diff_before_first_flip']:.2e} |")  # fmt: skip
    for name, c in pairs.items():
        margins = [f"{f['max_margin_at_flip']:.1e}" for f in c["flips"] if f["count"]]
        if margins:
            print(f"{name}: largest top-1/top-2 margin at a flip, per level with flips: {', '.join(margins)} "
                  f"(median margin overall {c['flips'][0]['median_margin_overall']:.2e})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"max_bytes": args.max_bytes, "books": len(books), "pairs": pairs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
