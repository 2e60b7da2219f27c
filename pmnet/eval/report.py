"""One picture of a training run: training and validation BPB by step, and BPB by position on a book.

What the demo shows at its end (``launchers/demo.sh``); works for any run directory:

    python -m pmnet.eval.report RUN_DIR --books data_pipeline/books [--max-bytes 16384] [--out PNG]

The run's newest valid checkpoint is converted on the fly (``pmnet.eval.loading``), the first book
long enough is scored in chunks with the state carried, and the PNG's path is printed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pmnet.eval import long_context as lc
from pmnet.eval.loading import EvalError, load_model
from pmnet.eval.plotting import _plt
from pmnet.eval.run_logs import read_scalars

__all__ = ["run_report"]


def run_report(run_dir: str | Path, books_dir: str | Path, out: str | Path, *, max_bytes: int = 16384,
               chunk_bytes: int = 4096) -> dict[str, float]:  # fmt: skip
    """Write the PNG ``out``; return the numbers it shows (last train / val BPB, book BPB)."""
    run = Path(run_dir)
    curves = read_scalars(run, ("train/bpb", "eval/bpb"))
    if len(curves["train/bpb"][0]) == 0:
        raise EvalError(f"{run}: no train/bpb scalars in tb/ (did the run log any step?)")
    books, _ = lc.read_books(books_dir, max_bytes, limit=1)
    model, _ = load_model(run)
    res = lc.evaluate_books(model, books, max_bytes=max_bytes, chunk_bytes=chunk_bytes)
    window = max(1, max_bytes // 64)
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for (tag, label), color in zip((("train/bpb", "training"), ("eval/bpb", "validation")), ("C0", "C1")):
        steps, vals = curves[tag]
        if len(steps):
            left.plot(steps, vals, color=color, marker="o" if len(steps) < 20 else None, markersize=3, label=label)
    left.set(xlabel="optimizer step", ylabel="bits per byte", title=f"{run.name}: BPB while training")
    pos = np.arange(1, max_bytes + 1)
    right.plot(pos, res.bpb, color="C2", alpha=0.15, linewidth=0.3)
    right.plot(pos, lc.moving_average(res.bpb, window), color="C2", linewidth=1.8, label=f"moving avg {window} B")
    right.set(xscale="log", xlabel="byte position in the book", ylabel="bits per byte",
              title=f"{books[0].name}: BPB by position (mean {res.mean_bpb:.3f})")  # fmt: skip
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)  # never a half-written PNG where a good one was
    val = curves["eval/bpb"][1]
    return {"train_bpb": float(curves["train/bpb"][1][-1]), "val_bpb": float(val[-1]) if len(val) else float("nan"),
            "book_bpb": res.mean_bpb}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: the run report PNG; prints its path."""
    p = argparse.ArgumentParser(prog="python -m pmnet.eval.report", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory (tb/ and checkpoints/)")
    p.add_argument("--books", required=True, help="directory of *.txt books (the first long enough is used)")
    p.add_argument("--max-bytes", type=int, default=16384, help="bytes of the book scored (default: 16384)")
    p.add_argument("--chunk-bytes", type=int, default=4096, help="bytes per forward, state carried (default: 4096)")
    p.add_argument("--out", default=None, metavar="PNG", help="PNG path (default: RUN_DIR/report.png)")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.run_dir) / "report.png"
    got = run_report(args.run_dir, args.books, out, max_bytes=args.max_bytes, chunk_bytes=args.chunk_bytes)
    print(f"training BPB {got['train_bpb']:.3f}, validation BPB {got['val_bpb']:.3f}, "
          f"{args.max_bytes:,} bytes of the book {got['book_bpb']:.3f}")  # fmt: skip
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    from pmnet.eval.cli import run_cli

    sys.exit(run_cli(main))
