"""Speed of the lm-evaluation-harness model by batch size (lm_eval's ``--batch_size``).

Synthetic requests the size of real ones, text cut from the repository's sample documents,
scored through :class:`pmnet.eval.harness.PMNetLM` at each batch size:

* ``loglikelihood``: ``--questions`` multiple-choice contexts of 200-2000 bytes, each with 4
  continuations of 5-50 bytes (batch size 1 is the streaming path that feeds a context once
  for its 4 continuations; larger sizes run right-padded batches of whole rows);
* ``loglikelihood_rolling`` (``--docs`` > 0): documents of 500-4000 bytes.

Each size is timed ``--repeats`` times after one untimed warm-up call; a table per request type
gives the median, requests/s, the speedup over the first batch size and the largest difference
of a score from the first size's (a check that the numbers are the same).

    python benchmarks/harness_batching.py [--preset tiny | --weights CKPT] [--device cuda]
        [--dtype bf16] [--questions 48] [--docs 16] [--batch-sizes 1,4,16] [--json out.json]

Needs the ``eval`` extra (lm_eval).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pmnet.eval.harness import PMNetLM  # noqa: E402
from pmnet.model import PMNetConfig, PMNetForCausalLM, save_pretrained  # noqa: E402

SAMPLE = REPO / "data_pipeline" / "samples" / "c4_en_sample_30docs.jsonl.gz"


def sample_text() -> str:
    """The shipped sample's documents joined, ASCII only (cuts of it are the requests)."""
    with gzip.open(SAMPLE, "rt") as f:
        return " ".join(json.loads(line)["text"] for line in f).encode("ascii", "ignore").decode()


def make_requests(text: str, questions: int, seed: int) -> list[SimpleNamespace]:
    """``questions`` contexts of 200-2000 bytes, 4 continuations of 5-50 bytes each, as lm_eval
    ``loglikelihood`` requests (``args = (context, continuation)``); cuts of ``text``."""
    rng = random.Random(seed)
    reqs = []
    for _ in range(questions):
        n = rng.randint(200, 2000)
        start = rng.randrange(0, len(text) - n)
        context = text[start : start + n]
        for _ in range(4):
            m = rng.randint(5, 50)
            k = rng.randrange(0, len(text) - m)
            reqs.append(SimpleNamespace(args=(context, text[k : k + m])))
    return reqs


def make_documents(text: str, docs: int, seed: int) -> list[SimpleNamespace]:
    """``docs`` ``loglikelihood_rolling`` requests of 500-4000 bytes of ``text``."""
    rng = random.Random(seed + 1)
    out = []
    for _ in range(docs):
        n = rng.randint(500, 4000)
        start = rng.randrange(0, len(text) - n)
        out.append(SimpleNamespace(args=(text[start : start + n],)))
    return out


def time_sizes(lm: PMNetLM, kind: str, reqs: list[SimpleNamespace], sizes: list[int], repeats: int) -> list[dict]:
    """Median time of ``lm.<kind>(reqs)`` at each batch size, and its scores' largest difference
    (and greedy flags' disagreements) from the first size's."""
    fn = getattr(lm, kind)
    rows: list[dict[str, Any]] = []
    reference: list[tuple[float, bool]] | None = None
    for bs in sizes:
        lm.batch_size = bs
        fn(reqs[: max(4, bs)], disable_tqdm=True)  # warm-up (allocator, kernels)
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn(reqs, disable_tqdm=True)
            seconds.append(time.perf_counter() - t0)
        scored = [r if isinstance(r, tuple) else (r, True) for r in out]
        if reference is None:
            reference = scored
        med = statistics.median(seconds)
        rows.append({
            "kind": kind, "batch_size": bs, "median_s": med, "seconds": seconds, "requests_per_s": len(reqs) / med,
            "max_abs_diff_vs_first": max(abs(a[0] - b[0]) for a, b in zip(scored, reference)),
            "greedy_mismatches_vs_first": sum(a[1] != b[1] for a, b in zip(scored, reference)),
        })  # fmt: skip
    for r in rows:
        r["speedup"] = r["requests_per_s"] / rows[0]["requests_per_s"]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", help="random-init model preset (when no --weights)")
    ap.add_argument("--weights", type=Path, default=None, help="a checkpoint (as the harness's pretrained=)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--chunk-bytes", type=int, default=4096)
    ap.add_argument("--questions", type=int, default=48, help="contexts (4 requests each)")
    ap.add_argument("--docs", type=int, default=16, help="loglikelihood_rolling documents (0: none)")
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    ckpt = args.weights
    if ckpt is None:
        torch.manual_seed(args.seed)
        cfg = PMNetConfig.from_preset(args.preset)
        ckpt = Path(tempfile.mkdtemp(prefix="harness_batching_")) / "model"
        save_pretrained(PMNetForCausalLM(cfg), ckpt, cfg)
    lm = PMNetLM(pretrained=str(ckpt), device=args.device, dtype=args.dtype, chunk_bytes=args.chunk_bytes)
    text = sample_text()
    reqs = make_requests(text, args.questions, args.seed)
    docs = make_documents(text, args.docs, args.seed)
    rows = time_sizes(lm, "loglikelihood", reqs, sizes, args.repeats)
    if docs:
        rows += time_sizes(lm, "loglikelihood_rolling", docs, sizes, args.repeats)

    n_bytes = sum(len(c.encode()) + len(x.encode()) for c, x in (r.args for r in reqs))
    print(f"{args.weights or args.preset} {args.dtype} on {lm.device} (threads {torch.get_num_threads()}); "
          f"chunks of {args.chunk_bytes}; median of {args.repeats}")  # fmt: skip
    print(f"loglikelihood: {len(reqs)} requests ({args.questions} contexts x 4), {n_bytes:,} bytes; "
          f"loglikelihood_rolling: {len(docs)} documents, {sum(len(d.args[0]) for d in docs):,} bytes")  # fmt: skip
    print(f"| request type | batch size | requests/s | speedup vs {sizes[0]} | median s | max abs diff vs {sizes[0]} "
          "| greedy diffs |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['kind']} | {r['batch_size']} | {r['requests_per_s']:.1f} | {r['speedup']:.2f}x | "
              f"{r['median_s']:.2f} | {r['max_abs_diff_vs_first']:.1e} | {r['greedy_mismatches_vs_first']} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: str(v) for k, v in vars(args).items()}, "device": str(lm.device),
            "torch_threads": torch.get_num_threads(), "rows": rows,
        }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
