"""Long-context evaluation speed through the library path, call by call (issue 16, item 3).

Loads the model the way ``tools/eval_long_context.py`` does (``load_model``: interchange
weights, dtype, ``compile``) and times :func:`pmnet.eval.long_context.evaluate_books`
repeatedly on the same books: a sequence of lengths (default 64 KiB, 64 KiB, 512 KiB,
64 KiB), each with the wall time of every chunk-forward and the number of graphs dynamo
compiled during it, so a per-call cost (compilation of a new chunk length, set-up) shows
as a slow first chunk or a compile count, not as a lower average.

    python benchmarks/eval_rate.py --books BOOKS_DIR [--preset pmnet_119m] [--dtype bf16]
        [--compile] [--lengths 65536,65536,524288,65536] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmnet.eval import long_context as lc
from pmnet.eval.loading import load_model
from pmnet.model import PMNetConfig, PMNetForCausalLM, save_pretrained


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--books", type=Path, required=True)
    ap.add_argument("--preset", default="pmnet_119m")
    ap.add_argument("--weights", type=Path, default=None, help="interchange directory (default: random init)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--chunk-bytes", type=int, default=30720)
    ap.add_argument("--lengths", default="65536,65536,524288,65536")
    ap.add_argument("--limit", type=int, default=5, help="books (batched together)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    lengths = [int(x) for x in args.lengths.split(",")]
    books, _ = lc.read_books(args.books, max(lengths), limit=args.limit)
    ckpt = args.weights
    if ckpt is None:
        torch.manual_seed(0)
        cfg = PMNetConfig.from_preset(args.preset)
        ckpt = Path(tempfile.mkdtemp(prefix="eval_rate_")) / "model"
        save_pretrained(PMNetForCausalLM(cfg), ckpt, cfg)
    t0 = time.perf_counter()
    model, _ = load_model(ckpt, device=args.device, dtype=args.dtype, compile=args.compile)
    load_s = time.perf_counter() - t0
    chunk_times: list[float] = []
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def pre(_m: Any, _i: Any) -> None:
        sync()
        chunk_times.append(-time.perf_counter())

    def post(_m: Any, _i: Any, _o: Any) -> None:
        sync()
        chunk_times[-1] += time.perf_counter()

    model.register_forward_pre_hook(pre)
    model.register_forward_hook(post)
    rows = []
    for i, length in enumerate(lengths):
        chunk_times.clear()
        before = _graphs()
        res = lc.evaluate_books(model, books, max_bytes=length, chunk_bytes=args.chunk_bytes)
        rows.append({
            "call": i + 1, "length": length, "books": len(books), "seconds": res.seconds,
            "bytes_per_s": res.bytes_per_second, "bpb": res.mean_bpb, "graphs_compiled": _graphs() - before,
            "chunk_seconds": [round(t, 4) for t in chunk_times],
        })  # fmt: skip
    print(f"{args.preset} {args.dtype} compile={args.compile} on {args.device}; load {load_s:.1f} s; "
          f"{len(books)} books, chunks of {args.chunk_bytes}")  # fmt: skip
    print("| call | length | bytes/s | seconds | graphs compiled | first chunk s | median chunk s | last chunk s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cs = sorted(r["chunk_seconds"])
        print(f"| {r['call']} | {r['length']:,} | {r['bytes_per_s'] / 1e3:.1f}k | {r['seconds']:.2f} | "
              f"{r['graphs_compiled']} | {r['chunk_seconds'][0]:.3f} | {cs[len(cs) // 2]:.3f} | "
              f"{r['chunk_seconds'][-1]:.3f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "load_s": load_s,
                                         "calls": rows}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
