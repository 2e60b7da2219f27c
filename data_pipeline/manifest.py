"""Sharding settings, input identities and ``manifest.json``: what an output was built from.

The settings plus the identity (path, size, mtime) of every input decide the content of the
shards. A rerun compares them with what the output (or a partial run) recorded: the same
means resume or "up to date", different means refuse unless ``--overwrite``. The worker count
is deliberately *not* part of it: the content does not depend on it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_pipeline.errors import DataPipelineError
from pmnet.vocab import BOS_ID, EOS_ID, PAD_ID

__all__ = [
    "TOOL_NAME",
    "TOOL_VERSION",
    "MANIFEST_NAME",
    "ShardSettings",
    "input_identity",
    "describe_differences",
    "write_json_atomic",
    "read_json",
    "byte_ids",
]

TOOL_NAME = "pmnet/tools/shard_dataset.py"
# Bump when the stored content for the same settings changes (it invalidates old outputs).
TOOL_VERSION = "1.0.0"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ShardSettings:
    """Everything that decides the content of the shards."""

    sample_bytes: int = 8193
    val_fraction: float = 0.005
    keep_tail: bool = True
    min_int_score: int | None = None
    min_chars: int = 0
    language: str | None = None
    shard_size_limit: int = 1 << 26
    compression: str = "zstd"
    # xxh64 by default: it detects corruption as well as sha1 at a fraction of the cost (sha1
    # over every raw and compressed shard costs ~15% of the tool's throughput on 2 cores).
    hashes: tuple[str, ...] = field(default=("xxh64",))
    text_unit_bytes: int = 1 << 26

    def validate(self) -> None:
        """Refuse impossible values in one line naming the option."""
        if self.sample_bytes < 2:
            raise DataPipelineError(f"--sample-bytes {self.sample_bytes}: must be >= 2 (one input and one target)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataPipelineError(f"--val-fraction {self.val_fraction}: must be in [0, 1)")
        if self.min_chars < 0:
            raise DataPipelineError(f"--min-chars {self.min_chars}: must be >= 0")
        if self.shard_size_limit < self.sample_bytes:
            raise DataPipelineError(
                f"--shard-size {self.shard_size_limit}: must be at least sample_bytes ({self.sample_bytes})"
            )
        bad = [h for h in self.hashes if h not in _hash_names()]
        if bad or not self.hashes or list(self.hashes) != sorted(set(self.hashes)):
            raise DataPipelineError(f"--hashes {','.join(self.hashes)}: give sorted, distinct names such as sha1,xxh64")
        if self.text_unit_bytes < 1:
            raise DataPipelineError(f"--text-unit-bytes {self.text_unit_bytes}: must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples become lists)."""
        d = asdict(self)
        d["hashes"] = list(self.hashes)
        d["tool_version"] = TOOL_VERSION
        return d


def _hash_names() -> set[str]:
    """The hash names MDSWriter accepts (streaming.base.hashing), without importing streaming."""
    import hashlib

    import xxhash

    return {a for a in hashlib.algorithms_available if not a.startswith("shake_")} | set(xxhash.algorithms_available)


def byte_ids() -> dict[str, int]:
    """The special byte ids written into every manifest (docs/model.md section 1)."""
    return {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID}


def input_identity(path: Path) -> dict[str, Any]:
    """Cheap identity of an input (hashing terabytes just to detect a change would be too slow)."""
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def describe_differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """A short human summary of how two recorded states differ (first few differences)."""
    diffs: list[str] = []
    old_s, new_s = old.get("settings", {}), new.get("settings", {})
    for key in sorted(set(old_s) | set(new_s)):
        if old_s.get(key) != new_s.get(key):
            diffs.append(f"{key} {old_s.get(key)!r} -> {new_s.get(key)!r}")
    old_i = {i["path"]: i for i in old.get("inputs", [])}
    new_i = {i["path"]: i for i in new.get("inputs", [])}
    added = sorted(set(new_i) - set(old_i))
    removed = sorted(set(old_i) - set(new_i))
    changed = sorted(p for p in set(old_i) & set(new_i) if old_i[p] != new_i[p])
    if added:
        diffs.append(f"{len(added)} new input(s), e.g. {added[0]}")
    if removed:
        diffs.append(f"{len(removed)} input(s) no longer given, e.g. {removed[0]}")
    if changed:
        diffs.append(f"{len(changed)} input(s) changed on disk, e.g. {changed[0]}")
    return "; ".join(diffs[:4]) or "unknown difference"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON via a temp file + fsync + rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """Load JSON, turning a damaged file into a one-line error."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise DataPipelineError(f"{path}: unreadable JSON ({err})") from None
