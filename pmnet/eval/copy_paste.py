"""Copy-paste evaluation: exact-match and per-byte accuracy by copy length N (docs/model.md section 8).

Greedy decoding of the copy equals teacher forcing here: the greedy output is the exact
copy if and only if, with the true prefix fed, the argmax at every copied position is the
target byte (if all are right, greedy feeds itself exactly the true prefix). So one
teacher-forced forward per sample gives exact match (all argmaxes right) and per-byte
accuracy (share of argmaxes right; this one is the teacher-forced per-byte score).

Samples come from :mod:`data_pipeline.copy_paste` with a seed space training never uses,
N uniform inside each bucket (lo, hi].
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_pipeline.copy_paste import eval_batch, sample_length
from pmnet.eval.loading import EvalError
from pmnet.eval.long_context import format_table
from pmnet.eval.plotting import plot_copy_paste

__all__ = [
    "BucketResult",
    "DEFAULT_EDGES",
    "evaluate_copy_paste",
    "parse_edges",
    "score_predictions",
    "read_csv",
    "table_rows",
    "write_csv",
    "write_report",
]

DEFAULT_EDGES = (0, 128, 256, 384, 512, 640, 768, 896, 1024, 1280, 1536, 2048)
"""Bucket edges of N: fine around 768 (2N = the 1,536-byte receptive field), up to 2048."""


@dataclass
class BucketResult:
    """Accuracy of one model on samples with N in (lo, hi]."""

    label: str
    lo: int
    hi: int
    samples: int
    exact: int
    "Samples whose whole copy is right under greedy decoding."
    correct_bytes: int
    total_bytes: int

    @property
    def exact_match(self) -> float:
        """Share of samples copied exactly."""
        return self.exact / self.samples

    @property
    def byte_accuracy(self) -> float:
        """Share of copied bytes predicted right (pooled over samples)."""
        return self.correct_bytes / self.total_bytes


def parse_edges(text: str) -> list[int]:
    """``"0,128,256"`` -> [0, 128, 256]; strictly increasing, starting at >= 0."""
    try:
        edges = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise EvalError(f"--edges {text!r}: give comma-separated integers") from None
    if len(edges) < 2 or edges[0] < 0 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise EvalError(f"--edges {text!r}: need at least two strictly increasing values >= 0")
    return edges


@torch.inference_mode()
def _score(
    model: torch.nn.Module, ns: list[int], seed: int, start_index: int, chunk_bytes: int, length: int
) -> tuple[int, int]:
    """(exact copies, correct bytes) for one batch of samples with copy lengths ``ns``."""
    device = next(model.parameters()).device
    ids, targets = eval_batch(ns, seed, start_index, length)
    ids, targets = ids.to(device), targets.to(device)
    preds = []
    state = None
    for start in range(0, ids.shape[1], chunk_bytes):  # chunked so long N fits any memory
        logits, state = model(ids[:, start : start + chunk_bytes], state=state)
        preds.append(logits.argmax(-1))
        del logits
    return score_predictions(torch.cat(preds, dim=1), targets)


def score_predictions(pred: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """(exact copies, correct bytes) from argmax predictions and copy targets (0 = not scored).

    A sample is exact iff every scored position's argmax is its target (= greedy copies it).
    """
    mask = targets != 0
    right = ((pred == targets) & mask).sum(1)
    return int((right == mask.sum(1)).sum()), int(right.sum())


def evaluate_copy_paste(
    model: torch.nn.Module,
    *,
    edges: Sequence[int] = DEFAULT_EDGES,
    samples_per_bucket: int = 64,
    batch_size: int = 16,
    seed: int = 1234,
    label: str = "model",
    chunk_bytes: int = 2048,
) -> list[BucketResult]:
    """Accuracy per bucket (lo, hi] of N for ``model``; the same samples for every model and seed."""
    if samples_per_bucket < 1 or batch_size < 1 or chunk_bytes < 1:
        raise EvalError("--samples, --batch-size and --chunk-bytes must be >= 1")
    out = []
    for b, (lo, hi) in enumerate(zip(edges, edges[1:])):
        rng = np.random.default_rng([seed, b])
        ns = sorted(int(n) for n in rng.integers(lo + 1, hi + 1, size=samples_per_bucket))
        exact = correct = 0
        # pad every sample to whole chunks: all forward calls then have one of two shapes (first
        # chunk / later chunk), so compiled attention kernels (dynamic=False) are built twice,
        # not once per length; padding after the sample cannot change causal predictions
        length = -(-(sample_length(hi) - 1) // chunk_bytes) * chunk_bytes + 1
        for i in range(0, len(ns), batch_size):
            part = ns[i : i + batch_size]
            e, c = _score(model, part, seed, b * 1_000_000 + i, chunk_bytes, length)
            exact += e
            correct += c
        out.append(BucketResult(label, lo, hi, len(ns), exact, correct, sum(ns)))
    return out


CSV_COLUMNS = [
    "model",
    "n_lo",
    "n_hi",
    "samples",
    "exact_match",
    "byte_accuracy",
    "exact",
    "correct_bytes",
    "total_bytes",
]


def write_csv(path: str | Path, results: Sequence[BucketResult]) -> None:
    """One row per (model, bucket): label, n_lo, n_hi, samples, exact_match, byte_accuracy and the counts."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for r in results:
            w.writerow([r.label, r.lo, r.hi, r.samples, f"{r.exact_match:.4f}", f"{r.byte_accuracy:.4f}",
                        r.exact, r.correct_bytes, r.total_bytes])  # fmt: skip


def read_csv(path: str | Path) -> list[BucketResult]:
    """The results a ``write_csv`` file holds (to merge models evaluated in separate runs).

    Files from before the count columns give counts rebuilt from the rounded shares.
    Raises ValueError naming the file on a malformed one.
    """
    out = []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for i, row in enumerate(rows, start=2):
        try:
            samples = int(row["samples"])
            if row.get("exact") not in (None, ""):
                exact, correct, total = int(row["exact"]), int(row["correct_bytes"]), int(row["total_bytes"])
            else:
                exact = round(float(row["exact_match"]) * samples)
                correct, total = round(float(row["byte_accuracy"]) * 10**6), 10**6
            out.append(BucketResult(row["model"], int(row["n_lo"]), int(row["n_hi"]), samples, exact, correct, total))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: line {i} is not a copy-paste result row ({type(err).__name__}: {err})") from None
    if not out:
        raise ValueError(f"{path}: no copy-paste result rows")
    return out


def table_rows(results: Sequence[BucketResult]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per bucket, exact-match / per-byte % for each model."""
    labels = list(dict.fromkeys(r.label for r in results))
    buckets = list(dict.fromkeys((r.lo, r.hi) for r in results))
    by = {(r.label, r.lo, r.hi): r for r in results}
    header = ["N"] + [f"{lab} exact / byte %" for lab in labels]
    rows = []
    for lo, hi in buckets:
        cells = [f"({lo}, {hi}]"]
        for lab in labels:
            r = by.get((lab, lo, hi))  # merged results may bucket N differently
            cells.append(f"{100 * r.exact_match:5.1f} / {100 * r.byte_accuracy:5.1f}" if r else "-")
        rows.append(cells)
    return header, rows


def write_report(
    out_dir: str | Path,
    name: str,
    results: Sequence[BucketResult],
    *,
    receptive_field: int | None,
    source: str,
) -> tuple[str, list[Path]]:
    """Write ``<name>.csv``, ``<name>.png`` (one line per model) and ``<name>.md`` (the table and a
    note) under ``out_dir``; return the printed text and the paths. ``source`` says where the
    samples came from (``seed 1234``, ``merged from ...``) for the note."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / name
    write_csv(f"{stem}.csv", results)
    series = []
    for label in dict.fromkeys(r.label for r in results):
        rs = [r for r in results if r.label == label]
        series.append((label, [r.hi for r in rs], [r.exact_match for r in rs], [r.byte_accuracy for r in rs]))
    plot_copy_paste(f"{stem}.png", series, receptive_field=receptive_field)
    header, rows = table_rows(results)
    counts = sorted({r.samples for r in results})
    per_bucket = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    note = f"{per_bucket} samples per bucket, {source}; exact = all N bytes right under greedy decoding"
    if receptive_field:
        note += f"; attention alone reaches {receptive_field} bytes (N <= {receptive_field // 2})"
    text = format_table(header, rows) + "\n\n" + note
    Path(f"{stem}.md").write_text(text + "\n", encoding="utf-8")
    return text, [Path(f"{stem}.csv"), Path(f"{stem}.png"), Path(f"{stem}.md")]
