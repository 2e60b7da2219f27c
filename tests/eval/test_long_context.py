"""tools/eval_long_context.py on real books (../shared/data/books) with a tiny checkpoint.

Books are cut to a few KiB so the whole file runs in well under a minute on 2 cores; the
protocol (truncate, skip short books, chunks with state carried, per-position BPB) is the
same as at 512 KiB.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pmnet.eval import long_context as lc
from pmnet.eval.loading import load_model
from tests.eval.agreement import assert_same_model, evaluate_with_routing
from tests.eval.conftest import run_tool

MAX_BYTES = 2048


@pytest.fixture(scope="module")
def books_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real books cut to 3 KiB and one cut to 1 KiB (too short: must be skipped with a note)."""
    d = tmp_path_factory.mktemp("books")
    src = shared_data / "books"
    for name, size in (("pg10146.txt", 3072), ("pg10002.txt", 3072), ("pg10084.txt", 1024)):
        (d / name).write_bytes((src / name).read_bytes()[:size])
    return d


@pytest.fixture(scope="module")
def full_run(tiny_ckpt: Path, books_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """One CLI run: chunks of 256, every ablation in --compare (the anchor-figure mode)."""
    out = tmp_path_factory.mktemp("lc")
    proc = run_tool(
        "eval_long_context.py", tiny_ckpt, "--books", books_dir, "--max-bytes", MAX_BYTES, "--chunk-bytes", 256,
        "--window", 256, "--out", out,
        "--compare", "no-recurrence", "no-memory", "zero-root", "zero-leaves", "zero-all",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout, proc.stderr


def _bpb(csv_path: Path) -> np.ndarray:
    with open(csv_path) as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["position"]) for r in rows] == list(range(1, len(rows) + 1))
    return np.array([float(r["bpb"]) for r in rows])


def test_writes_csv_png_table_and_skips_short_books(full_run: tuple[Path, str, str]) -> None:
    out, stdout, stderr = full_run
    for name in ("long_context.csv", "long_context.png", "long_context_summary.md", "long_context.json",
                 "long_context_diff.csv", "long_context_diff.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    assert (out / "long_context.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bpb = _bpb(out / "long_context.csv")
    assert len(bpb) == MAX_BYTES and np.isfinite(bpb).all()
    with open(out / "long_context.csv") as fh:
        assert next(csv.reader(fh)) == ["position", "bpb", "bpb_moving_avg_256"]
    assert "note: skipped pg10084.txt" in stderr
    summary = json.loads((out / "long_context.json").read_text())
    assert summary["books"] == ["pg10002", "pg10146"]
    assert abs(summary["runs"]["model"]["mean_bpb"] - bpb.mean()) < 1e-5
    # the printed table: ranges 1-1K, 1K-2K and the overall mean, one column per run
    assert "| positions (bytes) | model BPB | no-recurrence BPB" in stdout
    first_cells = [line.split("|")[1].strip() for line in stdout.splitlines() if line.startswith("|")]
    assert first_cells[2:5] == ["1-1K", "1K-2K", "all"]
    assert "peak memory (process peak RSS) at 2 KiB" in stdout


def test_ablation_flags_change_the_result(
    full_run: tuple[Path, str, str], tiny_ckpt: Path, books_dir: Path, tmp_path: Path
) -> None:
    out, _, _ = full_run
    runs = json.loads((out / "long_context.json").read_text())["runs"]
    base = runs["model"]["mean_bpb"]
    for abl in ("no-recurrence", "no-memory", "zero-root", "zero-leaves", "zero-all"):
        assert abs(runs[abl]["mean_bpb"] - base) > 1e-6, abl
    with open(out / "long_context_diff.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == MAX_BYTES
    final = rows[-1]
    for abl in ("no-recurrence", "no-memory", "zero-root", "zero-leaves", "zero-all"):
        assert abs(float(final[f"cum_bpb_diff_{abl}"]) - (runs[abl]["mean_bpb"] - base) * MAX_BYTES) < 0.05
    # the direct flags (not --compare) ablate the evaluated model itself
    proc = run_tool(
        "eval_long_context.py", tiny_ckpt, "--books", books_dir, "--max-bytes", MAX_BYTES, "--chunk-bytes", 256,
        "--no-recurrence", "--zero-anchors", "root", "--out", tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    flagged = json.loads((tmp_path / "long_context.json").read_text())["runs"]
    assert list(flagged) == ["no-recurrence+zero-root"]
    assert abs(flagged["no-recurrence+zero-root"]["mean_bpb"] - base) > 1e-6


def test_chunked_equals_unchunked(
    full_run: tuple[Path, str, str], tiny_ckpt: Path, books_dir: Path, tmp_path: Path
) -> None:
    out, _, _ = full_run
    proc = run_tool(
        "eval_long_context.py", tiny_ckpt, "--books", books_dir, "--max-bytes", MAX_BYTES,
        "--chunk-bytes", MAX_BYTES, "--out", tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    chunked, whole = _bpb(out / "long_context.csv"), _bpb(tmp_path / "long_context.csv")
    # per-position BPB agrees to float tolerance (CSV keeps 6 decimals)
    assert np.abs(chunked - whole).max() < 1e-4
    assert abs(chunked.mean() - whole.mean()) < 1e-5


def test_library_chunking_and_zero_anchor_levels(tiny_ckpt: Path, books_dir: Path) -> None:
    """In-process: uneven chunk sizes give the same NLL; zeroing anchors = asking for all levels."""
    torch.set_num_threads(1)  # tiny matmuls: a second thread only adds contention on a shared machine
    model, cfg = load_model(tiny_ckpt)
    books, notes = lc.read_books(books_dir, 600)
    assert len(books) == 3 and not notes
    a = lc.evaluate_books(model, books, max_bytes=600, chunk_bytes=600)
    b = lc.evaluate_books(model, books, max_bytes=600, chunk_bytes=150, batch_size=2)
    assert np.abs(a.nll_sum - b.nll_sum).max() < 1e-3
    # a short last chunk padded to the chunk length (the GPU default: one compiled shape) scores the same
    padded = lc.evaluate_books(model, books, max_bytes=600, chunk_bytes=250, pad_tail=True)
    assert np.abs(a.nll_sum - padded.nll_sum).max() < 1e-3
    zero_all = lc.evaluate_with_ablation(model, cfg, books, zero_anchors="all", max_bytes=600, chunk_bytes=600)
    explicit = lc.evaluate_books(model, books, max_bytes=600, chunk_bytes=600, zero_anchor_levels=[0, 1])
    assert np.array_equal(zero_all.nll_sum, explicit.nll_sum)


def test_moving_average_and_ranges() -> None:
    x = np.arange(1.0, 7.0)
    assert np.allclose(lc.moving_average(x, 3), [1, 1.5, 2, 3, 4, 5])
    assert lc.range_edges(5000) == [0, 1024, 2048, 4096, 5000]


def test_errors_are_one_line(tiny_ckpt: Path, books_dir: Path, tmp_path: Path) -> None:
    proc = run_tool("eval_long_context.py", tmp_path / "nope", "--books", books_dir)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_tool("eval_long_context.py", tiny_ckpt, "--books", books_dir, "--max-bytes", 10**7)
    assert proc.returncode == 2 and "no book" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_tool("eval_long_context.py", "--help")
    assert proc.returncode == 0 and "--zero-anchors" in proc.stdout and "--compare" in proc.stdout


def test_eager_and_sdpa_are_the_same_model(tiny_ckpt_decisive: Path, shared_data: Path) -> None:
    """Two attention backends on the CPU: float noise only, routing differences only at ties.

    The CPU twin of the GPU test of flex vs sdpa (tests/eval/test_eval_gpu.py), with the same check.
    """
    torch.set_num_threads(1)
    books, _ = lc.read_books(shared_data / "books", 8192, limit=2)
    eager, _ = load_model(tiny_ckpt_decisive, attn_backend="eager")
    sdpa, _ = load_model(tiny_ckpt_decisive, attn_backend="sdpa")
    assert_same_model(evaluate_with_routing(sdpa, books, 8192, 8192), evaluate_with_routing(eager, books, 8192, 4096))
