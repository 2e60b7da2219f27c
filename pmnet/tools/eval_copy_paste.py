#!/usr/bin/env python
"""Copy-paste accuracy by copy length N for one or more checkpoints (docs/model.md section 8).

    python tools/eval_copy_paste.py CKPT [CKPT ...] [--labels pmnet no-memory]
        [--edges 0,128,...,2048] [--samples 64] [--out DIR]

For each bucket (lo, hi] of N, samples N uniformly, runs the model teacher-forced and
scores exact match (every copied byte is the argmax, i.e. greedy decoding copies it all)
and per-byte accuracy. Writes ``<out>/copy_paste.csv``, ``copy_paste.png`` (one line per
model) and ``copy_paste.md`` (the table, also printed). Every model sees the same samples.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pmnet.eval.cli import add_model_args, load_model_from_args, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eval_copy_paste.py", description="Copy-paste exact-match and per-byte accuracy by N."
    )
    p.add_argument("ckpts", metavar="CKPT", nargs="*", help="interchange directories (or run directories)")
    p.add_argument(
        "--merge",
        nargs="+",
        default=[],
        metavar="CSV",
        help="also include the models of earlier copy_paste.csv files (e.g. runs evaluated on other machines)",
    )
    p.add_argument(
        "--receptive-field",
        type=int,
        default=None,
        help="attention's reach in bytes for the plot's marker (default: from the checkpoints)",
    )
    p.add_argument(
        "--labels", nargs="+", default=None, help="one name per CKPT for table and plot (default: directory names)"
    )
    p.add_argument(
        "--edges",
        default=",".join(str(e) for e in (0, 128, 256, 384, 512, 640, 768, 896, 1024, 1280, 1536, 2048)),
        help="bucket edges of N, comma-separated; buckets are (lo, hi] (default: up to 2048, fine near 768)",
    )
    p.add_argument("--samples", type=int, default=64, help="samples per bucket (default: 64)")
    p.add_argument("--batch-size", type=int, default=16, help="samples per forward (default: 16)")
    p.add_argument(
        "--chunk-bytes",
        type=int,
        default=2048,
        help="bytes per forward call, state carried; samples are padded to whole chunks (default: 2048)",
    )
    p.add_argument("--seed", type=int, default=1234, help="seed of the evaluation samples (default: 1234)")
    p.add_argument("--out", default="runs/eval/copy_paste", help="output directory (default: runs/eval/copy_paste)")
    p.add_argument("--name", default="copy_paste", help="file name stem of the outputs (default: copy_paste)")
    add_model_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pmnet.eval import copy_paste as cp
    from pmnet.eval.loading import EvalError, eval_device

    edges = cp.parse_edges(args.edges)
    if not args.ckpts and not args.merge:
        raise EvalError("give at least one CKPT or --merge CSV")
    merged: list[cp.BucketResult] = []
    for path in args.merge:
        if not Path(path).is_file():
            raise EvalError(f"--merge: {path} is not a file")
        try:
            merged += cp.read_csv(path)
        except (ValueError, OSError) as err:
            raise EvalError(str(err)) from None
    labels = args.labels or [Path(c).name or str(c) for c in args.ckpts]
    if len(labels) != len(args.ckpts):
        raise EvalError(f"--labels: got {len(labels)} names for {len(args.ckpts)} checkpoints")
    if len(set(labels)) != len(labels):
        raise EvalError(f"--labels must be distinct, got {labels}")
    clash = sorted({r.label for r in merged} & set(labels))
    if clash:
        raise EvalError(f"--merge: model name(s) {clash} appear in a CSV and among the checkpoints")
    device = eval_device(args.device)
    results: list[cp.BucketResult] = []
    receptive_fields = set()
    for ckpt, label in zip(args.ckpts, labels):
        model, cfg = load_model_from_args(ckpt, args)
        receptive_fields.add(cfg.receptive_field)
        print(f"evaluating {label} ({ckpt}) on {device}", file=sys.stderr)
        res = cp.evaluate_copy_paste(
            model,
            edges=edges,
            samples_per_bucket=args.samples,
            batch_size=args.batch_size,
            seed=args.seed,
            label=label,
            chunk_bytes=args.chunk_bytes,
        )
        results += res
        del model
    results = merged + results
    rf = args.receptive_field or (receptive_fields.pop() if len(receptive_fields) == 1 else None)
    csvs = ", ".join(f"{Path(m).parent.name}/{Path(m).name}" for m in args.merge)  # copy_paste.csv alone says little
    source = f"seed {args.seed}" if args.ckpts else f"merged from {csvs}"
    text, written = cp.write_report(args.out, args.name, results, receptive_field=rf, source=source)
    print(text)
    print("wrote " + ", ".join(map(str, written)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
