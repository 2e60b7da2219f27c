"""Throughput of the shard tool against a floor measured in the same run, with 1 and 2 workers.

    python benchmarks/shard_throughput.py [--inputs PATHS...] [--repeats 3] [--json OUT.json]

*Floor*: what any sharder must do with the same inputs: read them (the same pyarrow / json
readers), encode every document ``BOS utf8 EOS``, and zstd-compress the same bytes (level 3,
in shard-sized pieces, like MDSWriter), with the same number of worker processes over the
same inputs; no packing, no MDS, no hashing, no files written.
*Tool*: ``data_pipeline.sharding.run_sharding`` (what the CLI runs, minus interpreter start),
writing real shards.

MB/s = input file bytes / wall seconds (the progress bar's unit). Floor and tool runs
alternate and each figure is the median of ``--repeats``, so load from other processes on a
shared machine hits both alike. Without ``--inputs``, the corpus is FineWeb-Edu-schema parquet
built from the real text in ../shared/data (falls back to the demo sample shipped in the repo).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_pipeline.manifest import ShardSettings  # noqa: E402
from data_pipeline.packing import clean_text, encode_document  # noqa: E402
from data_pipeline.sharding import ShardJob, run_sharding  # noqa: E402
from data_pipeline.sources import expand_inputs, iter_documents  # noqa: E402

TARGET = 0.80


def build_corpus(dest: Path, files: int, mb_per_file: float) -> list[Path]:
    """FineWeb-Edu-schema parquet files of real text, repeated to size with fresh ids.

    All the real text available (~9.5 MB: web documents and books) is cycled, so a repeat
    is ~9.5 MB away, beyond zstd level 3's window: compression sees text, not copies.
    """
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    shared = REPO.parent / "shared" / "data"
    texts: list[str] = []
    if shared.is_dir():
        for p in sorted((shared / "web").glob("*.jsonl")):
            with open(p, encoding="utf-8") as f:
                texts += [json.loads(line)["text"] for line in f if line.strip()]
        texts += [p.read_text(encoding="utf-8", errors="replace") for p in sorted((shared / "books").glob("pg*.txt"))]
    else:
        with gzip.open(REPO / "data_pipeline" / "samples" / "fineweb_edu_sample10BT_head_1MB.txt.gz", "rt") as f:
            whole = f.read()
        texts += [whole[i : i + 5000] for i in range(0, len(whole), 5000)]
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    target = int(mb_per_file * 1e6)
    for k in range(files):
        rows, size, i = [], 0, 0
        while size < target:
            t = texts[(i + k * 101) % len(texts)]
            rows.append({"text": t, "id": f"<urn:uuid:bench-{k}-{i}>", "int_score": 3, "language": "en"})
            size += len(t.encode("utf-8"))
            i += 1
        path = dest / f"part-{k:03d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=256, compression="snappy")
        paths.append(path)
    return paths


def _floor_one(path: str, chunk: int) -> int:
    import zstandard

    cctx = zstandard.ZstdCompressor(level=3)
    buf = bytearray()
    out = 0
    for doc in iter_documents(Path(path)):
        buf += encode_document(clean_text(doc.text))
        if len(buf) >= chunk:
            out += len(cctx.compress(bytes(buf)))
            buf.clear()
    if buf:
        out += len(cctx.compress(bytes(buf)))
    return out


def run_floor(paths: list[Path], workers: int, chunk: int) -> float:
    """Seconds to read + encode + compress all inputs with ``workers`` processes."""
    t0 = time.perf_counter()
    if workers == 1:
        for p in paths:
            _floor_one(str(p), chunk)
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            pool.starmap(_floor_one, [(str(p), chunk) for p in paths])
    return time.perf_counter() - t0


def run_tool(paths: list[Path], workers: int, out: Path, settings: ShardSettings) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # the tool's one-line summary, every repeat
        run_sharding(ShardJob([str(p) for p in paths], str(out), settings, workers=workers, progress=False))
    dt = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", nargs="+", help="inputs to shard (default: a built parquet corpus)")
    ap.add_argument("--files", type=int, default=4, help="parquet files in the built corpus")
    ap.add_argument("--mb-per-file", type=float, default=40.0, help="text MB per built parquet file")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=str(REPO / "runs" / "benchmarks" / "shard_throughput.json"))
    args = ap.parse_args(argv)

    settings = ShardSettings()
    with tempfile.TemporaryDirectory(prefix="shard_bench_") as tmp_s:
        tmp = Path(tmp_s)
        paths = (
            expand_inputs(args.inputs) if args.inputs else build_corpus(tmp / "corpus", args.files, args.mb_per_file)
        )
        in_bytes = sum(p.stat().st_size for p in paths)
        # Warm the page cache and the imports (streaming: seconds) once, outside the timings.
        run_floor(paths, 1, settings.shard_size_limit)
        run_tool(paths, 1, tmp / "out", settings)
        rows: list[dict[str, Any]] = []
        for w in args.workers:
            floor_s, tool_s = [], []
            for _ in range(args.repeats):
                floor_s.append(run_floor(paths, w, settings.shard_size_limit))
                tool_s.append(run_tool(paths, w, tmp / "out", settings))
            f_mbs = in_bytes / 1e6 / statistics.median(floor_s)
            t_mbs = in_bytes / 1e6 / statistics.median(tool_s)
            rows.append(
                {
                    "workers": w,
                    "floor_MBps": round(f_mbs, 2),
                    "tool_MBps": round(t_mbs, 2),
                    "ratio": round(t_mbs / f_mbs, 3),
                    "meets_target": t_mbs / f_mbs >= TARGET,
                    "floor_seconds": [round(x, 3) for x in floor_s],
                    "tool_seconds": [round(x, 3) for x in tool_s],
                }
            )
    print(f"inputs: {len(paths)} files, {in_bytes / 1e6:.1f} MB; median of {args.repeats}; target ratio >= {TARGET}")
    print(f"{'workers':>7} | {'floor MB/s':>10} | {'tool MB/s':>9} | {'tool/floor':>10} | target")
    for r in rows:
        ok = "ok" if r["meets_target"] else "BELOW"
        print(f"{r['workers']:>7} | {r['floor_MBps']:>10.2f} | {r['tool_MBps']:>9.2f} | {r['ratio']:>10.3f} | {ok}")
    result = {
        "benchmark": "shard_throughput",
        "inputs": [str(p) for p in paths] if args.inputs else f"{len(paths)} built parquet files",
        "input_bytes": in_bytes,
        "repeats": args.repeats,
        "target_ratio": TARGET,
        "cpu_count": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "rows": rows,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
