"""Cost of verifying every shard before training reads it, against the 119M run's step time.

    python benchmarks/shard_verify.py [--inputs PATHS...] [--min-mb 100] [--repeats 5] [--json OUT.json]

Shards: real text (``../shared/data`` web + books, else the demo sample in the repo; the input
files are copied under new names until they hold ``--min-mb`` MB, so the timing is over many
shards rather than a few milliseconds) written by
``data_pipeline.sharding.run_sharding`` with the defaults of the 119M recipe (8193-byte samples,
zstd, xxh64), then decompressed next to the originals as mosaicml-streaming does for a local
stream, so both files of every shard exist (the worst case: both are verified).

Measured (median of ``--repeats``, warm page cache):
* ``verify_stream(use_cache=False)``: every file hashed (a first start);
* ``verify_stream()`` again: a restart with the cache (stat calls only);
* the raw speed of each hash on the same bytes in memory, for reference (sha1 if re-sharded so).

Related to training: the 119M config trains at ~266k bytes/s on one H200 (64 x 8192 input
bytes per step, ~1.97 s). Verification hashes ``ratio`` file bytes per training byte (zip +
raw over sample bytes), so its cost as a fraction of training time is
``266e3 * ratio / throughput``, paid once per file before its first use (at start), not per step.
The CPU doing it is this machine's; a GPU host's cores are usually faster.
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
from data_pipeline.sharding import ShardJob, run_sharding  # noqa: E402
from data_pipeline.verify import CACHE_NAME, verify_stream  # noqa: E402

TRAIN_BYTES_PER_S = 266e3  # 119M on one H200 (benchmarks/RESULTS.md)
STEP_BYTES = 64 * 8192  # global batch 64 x 8192 input bytes
SAMPLE_BYTES = 8193


def default_inputs() -> list[Path]:
    shared = Path(os.environ.get("PMNET_SHARED_DATA") or REPO.parent / "shared" / "data")
    if shared.is_dir():
        return sorted((shared / "web").glob("*.jsonl")) + sorted((shared / "books").glob("pg*.txt"))
    return [REPO / "data_pipeline" / "samples"]


def grow(inputs: list[Path], dest: Path, min_bytes: float) -> Path:
    """Copies of the input files (under new names) until they hold ``min_bytes``."""
    files = [f for x in inputs for f in (sorted(x.rglob("*")) if x.is_dir() else [x]) if f.is_file()]
    dest.mkdir(parents=True)
    total, k = 0, 0
    while total < min_bytes:
        for f in files:
            shutil.copy(f, dest / f"c{k:03d}_{f.name}")
            total += f.stat().st_size
        k += 1
    return dest


def decompress_like_streaming(split: Path) -> int:
    """Write each shard's raw file next to its zstd file (what streaming does on first read)."""
    import zstandard

    index = json.loads((split / "index.json").read_text())
    n = 0
    for shard in index["shards"]:
        raw, z = shard["raw_data"], shard.get("zip_data")
        if z and not (split / raw["basename"]).exists():
            data = zstandard.ZstdDecompressor().decompress((split / z["basename"]).read_bytes())
            (split / raw["basename"]).write_bytes(data)
            n += 1
    return n


def file_bytes(split: Path) -> tuple[int, int, int]:
    """(bytes of all shard files present, samples, shards)."""
    index = json.loads((split / "index.json").read_text())
    total = 0
    for shard in index["shards"]:
        for key in ("zip_data", "raw_data"):
            info = shard.get(key)
            if info and (split / info["basename"]).exists():
                total += (split / info["basename"]).stat().st_size
    return total, sum(s["samples"] for s in index["shards"]), len(index["shards"])


def timed(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def hash_speeds(blob: bytes, repeats: int) -> dict[str, float]:
    """MB/s of each hash over ``blob`` in 1 MiB chunks (as verify reads files)."""
    import xxhash

    out = {}
    makers = {"xxh64": xxhash.xxh64, "xxh3_64": xxhash.xxh3_64, "sha1": hashlib.sha1, "sha256": hashlib.sha256}
    view = memoryview(blob)
    for name, make in makers.items():

        def run(make: Any = make) -> None:
            h = make()
            for i in range(0, len(view), 1 << 20):
                h.update(view[i : i + (1 << 20)])
            h.hexdigest()

        out[name] = len(blob) / timed(run, repeats) / 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", nargs="*", type=Path, help="text/jsonl/parquet inputs (default: ../shared/data)")
    p.add_argument("--min-mb", type=float, default=100.0, help="copy the inputs up to this size (default 100)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "shard_verify.json")
    args = p.parse_args(argv)
    inputs = args.inputs or default_inputs()
    work = Path(tempfile.mkdtemp(prefix="shard_verify_"))
    try:
        corpus = grow(inputs, work / "corpus", args.min_mb * 1e6)
        out = work / "shards"
        settings = ShardSettings(sample_bytes=SAMPLE_BYTES, val_fraction=0.0)
        run_sharding(ShardJob([str(corpus)], str(out), settings, progress=False))
        split = out / "train"
        decompress_like_streaming(split)
        nbytes, samples, shards = file_bytes(split)
        payload = samples * SAMPLE_BYTES
        assert verify_stream(split, use_cache=False) == []
        first = timed(lambda: verify_stream(split, use_cache=False), args.repeats)
        verify_stream(split)  # fills the cache
        assert (split / CACHE_NAME).is_file()
        restart = timed(lambda: verify_stream(split), args.repeats)
        blob = b"".join(f.read_bytes() for f in sorted(split.rglob("shard.*")))
        speeds = hash_speeds(blob, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    throughput = nbytes / first / 1e6  # MB/s of shard files, end to end (open, read, hash)
    ratio = nbytes / payload  # file bytes hashed per training byte
    fraction = TRAIN_BYTES_PER_S * ratio / (throughput * 1e6)
    per_step_s = STEP_BYTES * (SAMPLE_BYTES / (SAMPLE_BYTES - 1)) * ratio / (throughput * 1e6)
    result = {
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "inputs": [str(x) for x in inputs],
        "shards": shards,
        "samples": samples,
        "payload_bytes": payload,
        "shard_file_bytes": nbytes,
        "hashed_bytes_per_training_byte": ratio,
        "verify_first_start_s": first,
        "verify_throughput_MBps": throughput,
        "verify_restart_with_cache_s": restart,
        "hash_MBps_in_memory": speeds,
        "train_bytes_per_s_119m_h200": TRAIN_BYTES_PER_S,
        "verify_seconds_per_119m_step_of_data": per_step_s,
        "step_seconds_119m_h200": STEP_BYTES / TRAIN_BYTES_PER_S,
        "verify_cost_fraction_of_training_time": fraction,
        "target_fraction": 0.01,
        "ok": fraction < 0.01,
    }
    rows = [
        ("shards / samples", f"{shards} / {samples}"),
        ("shard file bytes (zstd + raw)", f"{nbytes / 1e6:.1f} MB"),
        ("hashed bytes per training byte", f"{ratio:.3f}"),
        ("verify, first start (all files)", f"{first * 1e3:.1f} ms = {throughput:,.0f} MB/s"),
        ("verify, restart (cache)", f"{restart * 1e3:.2f} ms"),
        *[(f"{k} in memory", f"{v:,.0f} MB/s") for k, v in speeds.items()],
        (
            "verify time per 119M step of data",
            f"{per_step_s * 1e3:.3f} ms (step ~{STEP_BYTES / TRAIN_BYTES_PER_S:.2f} s)",
        ),
        ("cost / training time (119M, H200)", f"{fraction:.2e} = {fraction * 100:.4f} % (target < 1 %)"),
    ]
    w = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
