"""Read stored samples straight from MDS shards, in index order, without a StreamingDataset.

For audits and tests: it needs no shared memory, writes nothing next to the shards (a
local-only StreamingDataset decompresses into the shard directory), and its order is the
storage order (unit by unit, sample by sample), which is the order packing produced.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["iter_split_samples", "read_split_samples"]


def _shard_bytes(split_dir: Path, shard: dict) -> bytes:
    raw = shard.get("raw_data") or {}
    raw_path = split_dir / raw.get("basename", "")
    if raw and raw_path.is_file():
        return raw_path.read_bytes()
    zip_info = shard.get("zip_data")
    if not zip_info:
        raise FileNotFoundError(f"{raw_path}: missing")
    data = (split_dir / zip_info["basename"]).read_bytes()
    compression = (shard.get("compression") or "").split(":")[0]
    if compression != "zstd":
        raise ValueError(f"{zip_info['basename']}: unsupported compression {shard.get('compression')!r}")
    import zstandard

    return zstandard.ZstdDecompressor().decompress(data, max_output_size=raw.get("bytes") or 0)


def iter_split_samples(split_dir: str | os.PathLike[str]) -> Iterator[bytes]:
    """Every sample's stored bytes (the single ``ids`` column), in index order."""
    split_dir = Path(split_dir)
    with open(split_dir / "index.json", encoding="utf-8") as f:
        index = json.load(f)
    for shard in index["shards"]:
        if shard.get("format") != "mds" or shard.get("column_names") != ["ids"]:
            raise ValueError(f"{split_dir}: not a byte-sample MDS shard (columns {shard.get('column_names')})")
        data = _shard_bytes(split_dir, shard)
        # MDS joint shard: uint32 count, uint32 offsets[count+1], then samples; a sample with one
        # variable-size column starts with its uint32 size.
        n = int(np.frombuffer(data[:4], np.uint32)[0])
        offsets = np.frombuffer(data[4 : 4 + 4 * (n + 1)], np.uint32)
        for i in range(n):
            yield data[int(offsets[i]) + 4 : int(offsets[i + 1])]


def read_split_samples(split_dir: str | os.PathLike[str]) -> list[bytes]:
    """All samples of a split directory as a list (small datasets only)."""
    return list(iter_split_samples(split_dir))
