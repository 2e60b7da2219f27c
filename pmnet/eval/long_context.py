"""Long-context BPB on books (the paper's PG-19 protocol, docs/model.md section 8).

Each book (a UTF-8 text file) is encoded ``BOS, bytes...`` (NUL bytes dropped, as at
sharding), truncated to ``max_bytes`` predicted bytes, and skipped with a note when it is
shorter. Books are fed in ``chunk_bytes`` chunks with the model state carried, so memory
stays flat however long the stream; the next-byte negative log-likelihood of every byte is
kept per position and averaged over books. Books share one length, so they are batched.

Position p (1-based) in the outputs is the p-th byte of the book, predicted from BOS and
the p - 1 bytes before it.
"""

from __future__ import annotations

import csv
import json
import math
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pmnet.eval.loading import EvalError, ablation_changes, make_variant
from pmnet.eval.plotting import plot_bpb_curves, plot_cumulative_diff

__all__ = [
    "Book",
    "LongContextResult",
    "read_books",
    "evaluate_books",
    "evaluate_with_ablation",
    "moving_average",
    "summary_rows",
    "format_table",
    "write_curve_csv",
    "write_report",
    "write_diff_csv",
    "MEMORY_MARKS",
]

LN2 = math.log(2.0)
BOS = 254
PAD = 0
MEMORY_MARKS = (64 * 1024, 512 * 1024)
"""Stream positions at which peak memory is reported (when the books reach them)."""


@dataclass
class Book:
    """One evaluation text: its name and its bytes (NUL dropped, not yet truncated)."""

    name: str
    data: bytes


@dataclass
class LongContextResult:
    """Per-position summed NLL over books, plus what is needed to report it."""

    nll_sum: np.ndarray
    "float64 [max_bytes]: sum over books of the NLL (nats) of the byte at each position."
    books: list[str]
    "Names of the books evaluated."
    label: str = "model"
    "Name of the model / ablation, for tables and plots."
    peak_memory: dict[int, int] = field(default_factory=dict)
    "Stream position -> peak memory in bytes when the stream had reached it (CUDA allocator or RSS)."
    memory_kind: str = "rss"
    "What peak_memory measures: cuda (torch allocator peak) or rss (process peak resident set)."
    state_bytes: int = 0
    "Bytes held by the carried streaming state at the end (constant in the stream length)."
    seconds: float = 0.0
    "Wall time of the forward passes."

    @property
    def bpb(self) -> np.ndarray:
        """Mean bits per byte at each position (averaged over books)."""
        return self.nll_sum / len(self.books) / LN2

    @property
    def mean_bpb(self) -> float:
        """Mean BPB over all positions and books."""
        return float(self.bpb.mean())

    @property
    def bytes_per_second(self) -> float:
        """Evaluated bytes (all books) per second of forward time."""
        return len(self.books) * len(self.nll_sum) / max(self.seconds, 1e-9)


def read_books(books_dir: str | Path, max_bytes: int, limit: int | None = None) -> tuple[list[Book], list[str]]:
    """Books of ``books_dir`` (``*.txt``, sorted) long enough for ``max_bytes``; and notes on skips.

    A book needs ``max_bytes`` bytes (after dropping NULs) to be scored at every position.
    ``limit`` keeps only the first that many usable books.
    """
    d = Path(books_dir)
    if not d.is_dir():
        raise EvalError(f"--books {d}: not a directory")
    files = sorted(d.glob("*.txt"))
    if not files:
        raise EvalError(f"--books {d}: no *.txt files")
    books: list[Book] = []
    notes: list[str] = []
    for f in files:
        data = f.read_bytes().replace(b"\x00", b"")
        if len(data) < max_bytes:
            notes.append(f"skipped {f.name}: {len(data):,} bytes < --max-bytes {max_bytes:,}")
            continue
        if limit is not None and len(books) >= limit:
            break
        books.append(Book(f.stem, data))
    if not books:
        raise EvalError(f"no book in {d} has at least {max_bytes:,} bytes ({len(notes)} skipped)")
    return books, notes


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda"
    # ru_maxrss is in KiB on Linux: the process's peak resident set so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss"


@torch.inference_mode()
def evaluate_books(
    model: torch.nn.Module,
    books: Sequence[Book],
    *,
    max_bytes: int,
    chunk_bytes: int = 30720,
    batch_size: int = 8,
    zero_anchor_levels: Sequence[int] = (),
    label: str = "model",
    memory_marks: Sequence[int] = MEMORY_MARKS,
    pad_tail: bool | None = None,
    progress: bool = False,
) -> LongContextResult:
    """Per-position NLL of the first ``max_bytes`` bytes of every book, fed in chunks with state.

    ``pad_tail`` (default: on CUDA) runs a shorter last chunk padded to ``chunk_bytes``: flex
    attention and compiled graphs specialise on the length, and compiling a new one for each
    tail length cost 9-50 s per call on the H200 (64 KiB = 2 chunks + 4,096 bytes) against
    0.17 s for a chunk. On the CPU, where nothing is specialised, the padding would be waste.
    ``progress`` shows a bar of bytes scored on a terminal (tqdm, on stderr).
    """
    if chunk_bytes < 1 or max_bytes < 1:
        raise EvalError("--chunk-bytes and --max-bytes must be >= 1")
    device = next(model.parameters()).device
    if pad_tail is None:
        pad_tail = device.type == "cuda"
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    nll_sum = np.zeros(max_bytes, dtype=np.float64)
    peaks: dict[int, int] = {}
    kind = "rss"
    state_bytes = 0
    marks = sorted({m for m in memory_marks if m <= max_bytes} | {max_bytes})
    start_time = time.perf_counter()
    bar = tqdm(total=len(books) * max_bytes, unit="B", unit_scale=True, desc=label, disable=None if progress else True)
    for b0 in range(0, len(books), batch_size):
        group = books[b0 : b0 + batch_size]
        rows = [np.frombuffer(bytes([BOS]) + bk.data[:max_bytes], dtype=np.uint8) for bk in group]
        ids = torch.from_numpy(np.stack(rows).astype(np.int64)).to(device)
        state = None
        acc = torch.zeros(max_bytes, dtype=torch.float64, device=device)
        for start in range(0, max_bytes, chunk_bytes):
            stop = min(start + chunk_bytes, max_bytes)
            x = ids[:, start:stop]
            if pad_tail and start > 0 and stop - start < chunk_bytes:
                # the last, shorter chunk runs at the full chunk length (PAD after it; causal, so the
                # real positions are unchanged): one shape for every chunk, no compilation per length
                x = F.pad(x, (0, chunk_bytes - (stop - start)), value=PAD)
            logits, state = model(x, state=state, zero_anchor_levels=tuple(zero_anchor_levels))
            nll = F.cross_entropy(
                logits[:, : stop - start].float().flatten(0, 1),
                ids[:, start + 1 : stop + 1].flatten(),
                reduction="none",
            ).view(len(group), -1)
            acc[start:stop] += nll.double().sum(0)
            del logits, nll
            bar.update(len(group) * (stop - start))
            if b0 == 0:  # memory marks are read on the first batch (later batches repeat it)
                for m in marks:
                    if start < m <= stop:
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                        peaks[m], kind = _peak_memory(device)
        nll_sum += acc.cpu().numpy()
        if state is not None and hasattr(state, "num_bytes"):
            state_bytes = state.num_bytes()
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return LongContextResult(
        nll_sum=nll_sum,
        books=[bk.name for bk in books],
        label=label,
        peak_memory=peaks,
        memory_kind=kind,
        state_bytes=state_bytes,
        seconds=time.perf_counter() - start_time,
    )


def evaluate_with_ablation(
    model: torch.nn.Module,
    cfg: Any,
    books: Sequence[Book],
    *,
    no_recurrence: bool = False,
    no_memory: bool = False,
    zero_anchors: str | None = None,
    **kwargs: Any,
) -> LongContextResult:
    """:func:`evaluate_books` on ``model`` with eval-time ablations applied (docs/model.md section 3)."""
    from pmnet.model import resolve_anchor_levels

    changes: dict[str, Any] = {}
    parts = []
    if no_recurrence:
        changes["memory_cumsum"] = False
        parts.append("no-recurrence")
    if no_memory:
        changes["use_memory"] = False
        parts.append("no-memory")
    levels: tuple[int, ...] = ()
    if zero_anchors:
        if no_memory:
            raise EvalError("--zero-anchors has no effect with --no-memory (there are no anchors)")
        levels = tuple(resolve_anchor_levels(cfg, zero_anchors))
        parts.append(f"zero-{zero_anchors}")
    if (no_recurrence or zero_anchors) and not cfg.use_memory:
        raise EvalError("this checkpoint has no memory: --no-recurrence / --zero-anchors do not apply")
    variant = make_variant(model, cfg, **changes)[0] if changes else model
    kwargs.setdefault("label", "+".join(parts) or "model")
    return evaluate_books(variant, books, zero_anchor_levels=levels, **kwargs)


def evaluate_named_ablation(
    model: torch.nn.Module, cfg: Any, books: Sequence[Book], name: str, **kwargs: Any
) -> LongContextResult:
    """One ablation by name (``no-recurrence``, ``no-memory``, ``zero-root|leaves|all``)."""
    changes, anchors = ablation_changes(name)
    return evaluate_with_ablation(
        model,
        cfg,
        books,
        no_recurrence=changes.get("memory_cumsum") is False,
        no_memory=changes.get("use_memory") is False,
        zero_anchors=anchors,
        label=name,
        **kwargs,
    )


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    window = max(1, int(window))
    c = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def range_edges(max_bytes: int, first: int = 1024) -> list[int]:
    """Edges 0, 1 KiB, 2 KiB, 4 KiB, ... doubling up to ``max_bytes`` (its last edge)."""
    edges = [0]
    e = first
    while e < max_bytes:
        edges.append(e)
        e *= 2
    edges.append(max_bytes)
    return edges


def _fmt_bytes(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 and n else str(n)


def summary_rows(results: Sequence[LongContextResult], edges: Sequence[int] | None = None) -> list[list[str]]:
    """Rows [range, mean BPB per result...] over position ranges, then the overall mean."""
    max_bytes = len(results[0].nll_sum)
    edges = list(edges) if edges is not None else range_edges(max_bytes)
    rows = []
    for lo, hi in zip(edges, edges[1:]):
        rows.append(
            [f"{_fmt_bytes(lo) if lo else '1'}-{_fmt_bytes(hi)}"] + [f"{r.bpb[lo:hi].mean():.4f}" for r in results]
        )
    rows.append(["all"] + [f"{r.mean_bpb:.4f}" for r in results])
    return rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-markdown table (readable as plain text too)."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def memory_lines(result: LongContextResult) -> list[str]:
    """Human lines: peak memory at each mark and the carried state's size."""
    what = "CUDA allocator peak" if result.memory_kind == "cuda" else "process peak RSS"
    out = [
        f"peak memory ({what}) at {m // 1024} KiB: {b / 2**20:,.1f} MiB" for m, b in sorted(result.peak_memory.items())
    ]
    if result.state_bytes:
        out.append(f"carried state: {result.state_bytes / 2**20:,.2f} MiB per batch of books")
    return out


def write_curve_csv(path: str | Path, result: LongContextResult, window: int) -> None:
    """CSV: position (1-based), BPB averaged over books, trailing moving average of BPB."""
    bpb = result.bpb
    ma = moving_average(bpb, window)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["position", "bpb", f"bpb_moving_avg_{window}"])
        for i in range(len(bpb)):
            w.writerow([i + 1, f"{bpb[i]:.6f}", f"{ma[i]:.6f}"])


def cumulative_diff(base: LongContextResult, other: LongContextResult) -> np.ndarray:
    """Cumulative sum over positions of (BPB of ``other`` - BPB of ``base``): extra bits so far."""
    return np.cumsum(other.bpb - base.bpb)


def write_diff_csv(path: str | Path, base: LongContextResult, others: Sequence[LongContextResult]) -> None:
    """CSV: position, then one cumulative-BPB-difference column per ablation (vs ``base``)."""
    cols = [cumulative_diff(base, o) for o in others]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["position"] + [f"cum_bpb_diff_{o.label}" for o in others])
        for i in range(len(base.nll_sum)):
            w.writerow([i + 1] + [f"{c[i]:.6f}" for c in cols])


def write_report(
    out_dir: str | Path,
    name: str,
    base: LongContextResult,
    others: Sequence[LongContextResult] = (),
    *,
    checkpoint: str,
    max_bytes: int,
    chunk_bytes: int,
    window: int,
    notes: Sequence[str] = (),
) -> tuple[str, list[Path]]:
    """Write the evaluation's files under ``out_dir`` (stem ``name``); return the summary text and the paths.

    ``<name>.csv`` (position, BPB, moving average of ``base``), ``<name>.png`` (every run, log x),
    ``<name>_summary.md`` (mean BPB over position ranges, peak memory, throughput: the text
    returned) and ``<name>.json``; with ``others`` (ablations of the same books) also
    ``<name>_diff.csv`` / ``<name>_diff.png``: the cumulative BPB difference of each against ``base``.
    """

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / name
    n_books = len(base.books)
    write_curve_csv(f"{stem}.csv", base, window)
    runs = [base, *others]
    plot_bpb_curves(
        f"{stem}.png",
        [(r.label, r.bpb, moving_average(r.bpb, window)) for r in runs],
        title=f"BPB vs position ({n_books} books, chunks of {chunk_bytes:,} B)",
        window=window,
    )
    rows = summary_rows(runs)
    table = format_table(["positions (bytes)"] + [f"{r.label} BPB" for r in runs], rows)
    speed = f"throughput: {base.bytes_per_second:,.0f} bytes/s ({base.seconds:.1f} s for {base.label})"
    lines = [table, "", *memory_lines(base), speed, f"books: {', '.join(base.books)}", *(f"note: {n}" for n in notes)]
    written = [Path(f"{stem}.csv"), Path(f"{stem}.png"), Path(f"{stem}_summary.md"), Path(f"{stem}.json")]
    if others:
        write_diff_csv(f"{stem}_diff.csv", base, others)
        diffs = [(o.label, cumulative_diff(base, o)) for o in others]
        plot_cumulative_diff(
            f"{stem}_diff.png", diffs, title=f"Cumulative BPB difference vs {base.label} ({n_books} books)"
        )
        diff_rows = [[lab, f"{cum[-1]:.2f}", f"{cum[-1] / len(cum):+.4f}"] for lab, cum in diffs]
        lines += ["", format_table(["ablation", "cumulative extra bits", "mean BPB change"], diff_rows)]
        written += [Path(f"{stem}_diff.csv"), Path(f"{stem}_diff.png")]
    text = "\n".join(lines)
    Path(f"{stem}_summary.md").write_text(text + "\n", encoding="utf-8")
    summary = {
        "checkpoint": checkpoint,
        "max_bytes": max_bytes,
        "chunk_bytes": chunk_bytes,
        "books": base.books,
        "skipped": list(notes),
        "runs": {
            r.label: {
                "mean_bpb": r.mean_bpb,
                "ranges": {row[0]: float(row[1 + i]) for row in rows[:-1]},
                "seconds": r.seconds,
                "bytes_per_second": r.bytes_per_second,
                "peak_memory_bytes": {str(k): v for k, v in r.peak_memory.items()},
                "memory_kind": r.memory_kind,
            }
            for i, r in enumerate(runs)
        },
    }
    Path(f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return text, written
