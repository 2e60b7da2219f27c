#!/usr/bin/env python
"""Long-context BPB of a checkpoint on books (the paper's PG-19 protocol), with ablations.

    python tools/eval_long_context.py CKPT --books ../shared/data/books [--max-bytes 524288]
        [--chunk-bytes 30720] [--no-recurrence] [--no-memory] [--zero-anchors root|leaves|all]
        [--compare zero-root zero-leaves zero-all] [--out DIR]

Writes ``<out>/<name>.csv`` (position, BPB, moving average), ``<name>.png`` (log x),
``<name>_summary.md`` (mean BPB over position ranges, peak memory) and ``<name>.json``, and
prints the table. ``--compare ABL ...`` also evaluates each ablation and plots the cumulative
BPB difference of each against the model (``<name>_diff.csv`` / ``<name>_diff.png``).
CKPT is an interchange directory (config.json + model.safetensors) or a training run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pmnet.eval.cli import add_model_args, load_model_from_args, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eval_long_context.py",
        description="Per-position bits per byte on long books, fed in chunks with the model state carried.",
    )
    p.add_argument(
        "ckpt", metavar="CKPT", help="interchange directory (config.json + model.safetensors) or run directory"
    )
    p.add_argument("--books", required=True, help="directory of *.txt books (UTF-8)")
    p.add_argument(
        "--max-bytes",
        type=int,
        default=524288,
        help="bytes scored per book; shorter books are skipped (default: 524288)",
    )
    p.add_argument(
        "--chunk-bytes", type=int, default=30720, help="bytes per forward call, state carried between (default: 30720)"
    )
    p.add_argument("--batch-size", type=int, default=8, help="books evaluated side by side (default: 8)")
    p.add_argument("--max-books", type=int, default=None, help="use at most this many books (default: all long enough)")
    p.add_argument(
        "--window", type=int, default=1024, help="moving-average window in bytes for CSV and plot (default: 1024)"
    )
    p.add_argument("--out", default="runs/eval/long_context", help="output directory (default: runs/eval/long_context)")
    p.add_argument("--name", default="long_context", help="file name stem of the outputs (default: long_context)")
    a = p.add_argument_group("ablations (applied to the evaluated model)")
    a.add_argument("--no-recurrence", action="store_true", help="S_t = delta_t instead of the per-group prefix sum")
    a.add_argument("--no-memory", action="store_true", help="skip every memory write and read (sliding-window model)")
    a.add_argument(
        "--zero-anchors", choices=["root", "leaves", "all"], default=None, help="zero the anchors of these levels"
    )
    a.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="ABL",
        help="also evaluate these ablations (no-recurrence, no-memory, zero-root, zero-leaves, zero-all) and plot "
        "the cumulative BPB difference of each against the model",
    )
    add_model_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pmnet.eval import long_context as lc
    from pmnet.eval.loading import ABLATIONS, EvalError, eval_device

    for abl in args.compare:
        if abl not in ABLATIONS:
            raise EvalError(f"--compare {abl!r}: choose from {', '.join(ABLATIONS)}")
    if args.batch_size < 1 or args.window < 1:
        raise EvalError("--batch-size and --window must be >= 1")
    books, notes = lc.read_books(args.books, args.max_bytes, args.max_books)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    device = eval_device(args.device)
    model, cfg = load_model_from_args(args.ckpt, args)
    common = dict(max_bytes=args.max_bytes, chunk_bytes=args.chunk_bytes, batch_size=args.batch_size, progress=True)
    print(
        f"evaluating {len(books)} book(s) x {args.max_bytes:,} bytes on {device} ({args.dtype}), chunks of {args.chunk_bytes:,}",
        file=sys.stderr,
    )
    base = lc.evaluate_with_ablation(
        model,
        cfg,
        books,
        no_recurrence=args.no_recurrence,
        no_memory=args.no_memory,
        zero_anchors=args.zero_anchors,
        **common,
    )
    others = [lc.evaluate_named_ablation(model, cfg, books, name, **common) for name in args.compare]

    text, written = lc.write_report(
        args.out,
        args.name,
        base,
        others,
        checkpoint=str(args.ckpt),
        max_bytes=args.max_bytes,
        chunk_bytes=args.chunk_bytes,
        window=args.window,
        notes=notes,
    )
    print(text)
    print("wrote " + ", ".join(map(str, written)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
