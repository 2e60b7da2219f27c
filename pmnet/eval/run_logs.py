"""Training curves of finished runs (loss and pre-clip gradient norm per step) from TensorBoard events.

The copy-paste experiment reports that the gradient norm stays bounded; this reads
``train/loss`` and ``train/grad_norm`` of each run directory's ``tb/`` and writes a CSV, a
PNG (one line per run) and a short table (max / median / last gradient norm).

    python -m pmnet.eval.run_logs RUN_DIR [RUN_DIR ...] --labels a b --out DIR
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pmnet.eval.cli import run_cli
from pmnet.eval.loading import EvalError
from pmnet.eval.long_context import format_table
from pmnet.eval.plotting import _plt

TAGS = ("train/loss", "train/grad_norm")


def read_scalars(run_dir: str | Path, tags: Sequence[str] = TAGS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tag -> (steps, values) from every event file under ``<run_dir>/tb`` (later writes win on a step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = Path(run_dir) / "tb"
    if not tb.is_dir():
        raise EvalError(f"{run_dir}: no TensorBoard directory tb/")
    merged: dict[str, dict[int, float]] = {t: {} for t in tags}
    # one accumulator per file: a resumed run appends a new events file to the same directory
    for f in sorted(tb.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        have = set(acc.Tags().get("scalars", []))
        for t in tags:
            if t in have:
                merged[t].update({e.step: e.value for e in acc.Scalars(t)})
    out = {}
    for t, d in merged.items():
        steps = np.array(sorted(d), dtype=np.int64)
        out[t] = (steps, np.array([d[s] for s in steps], dtype=np.float64))
    return out


def summarise(runs: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], out_dir: str | Path) -> str:
    """Write ``train_curves.csv`` / ``train_curves.png``; return the grad-norm table (markdown)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train_curves.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "step", "loss", "grad_norm"])
        for label, sc in runs.items():
            loss = dict(zip(*sc["train/loss"]))
            gn = dict(zip(*sc["train/grad_norm"]))
            for s in sorted(set(loss) | set(gn)):
                w.writerow([label, int(s), f"{loss.get(s, float('nan')):.6f}", f"{gn.get(s, float('nan')):.6f}"])
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for i, (label, sc) in enumerate(runs.items()):
        for ax, tag in zip(axes, TAGS):
            steps, vals = sc[tag]
            ax.plot(steps, vals, color=f"C{i}", linewidth=0.8, label=label)
    axes[0].set_ylabel("training loss (nats/byte, copied span)")
    axes[1].set_ylabel("global grad norm (pre-clip)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "train_curves.png")
    plt.close(fig)
    rows = []
    for label, sc in runs.items():
        steps, norms = sc["train/grad_norm"]
        _, losses = sc["train/loss"]
        if len(norms) == 0:
            rows.append([label, "0", "-", "-", "-", "-"])
            continue
        finite = norms[np.isfinite(norms)]
        rows.append(
            [
                label,
                str(int(steps[-1])),
                f"{finite.max():.3f}",
                f"{np.median(finite):.3f}",
                f"{norms[-1]:.3f}",
                f"{losses[-1]:.4f}" if len(losses) else "-",
            ]
        )
    return format_table(["run", "steps logged", "max grad norm", "median", "last", "last loss"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: curves and grad-norm table of one or more run directories."""
    p = argparse.ArgumentParser(prog="python -m pmnet.eval.run_logs", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (each with tb/)")
    p.add_argument("--labels", nargs="+", default=None, help="one name per RUN_DIR (default: directory names)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (train_curves.csv/.png/.md)")
    args = p.parse_args(argv)
    labels = args.labels or [Path(r).name for r in args.runs]
    if len(labels) != len(args.runs):
        raise EvalError(f"--labels: {len(labels)} names for {len(args.runs)} runs")
    table = summarise({lab: read_scalars(r) for lab, r in zip(labels, args.runs)}, args.out)
    (Path(args.out) / "train_curves.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
