"""Re-hash shards against their ``index.json``: streaming does not re-hash local shards itself.

Used by ``tools/shard_dataset.py --verify``, by ``DataConfig.verify_hashes`` before training,
and by the checkpoint audit. A corrupt compressed shard otherwise fails in a streaming
background thread, where iteration may end early silently or hang (FACTS.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["verify_shards", "split_dirs"]

_CHUNK = 1 << 20


def split_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """The MDS dataset directories under ``root``: itself if it has an index, else train/ and val/."""
    root = Path(root)
    if (root / "index.json").exists():
        return [root]
    return [root / s for s in ("train", "val") if (root / s / "index.json").exists()]


def verify_shards(root: str | os.PathLike[str], *, missing_ok: bool = False) -> list[str]:
    """Problems found (empty list = all good), each naming the shard file.

    ``root`` is a split directory (with index.json) or a sharding output (train/, val/).
    Checks every file the index names that is present: the compressed file against its
    recorded hashes and size, and a decompressed copy (streaming writes one next to a
    local-only shard) against the raw hashes. A shard with neither file is a problem, unless
    ``missing_ok`` (the local cache of a remote stream holds only what was downloaded).
    """
    root = Path(root)
    dirs = split_dirs(root)
    if not dirs:
        return [f"{root}: no index.json (neither here nor in train/ or val/)"]
    problems: list[str] = []
    for d in dirs:
        try:
            with open(d / "index.json", encoding="utf-8") as f:
                index = json.load(f)
        except (OSError, ValueError) as err:
            problems.append(f"{d / 'index.json'}: unreadable ({err})")
            continue
        for shard in index.get("shards", []):
            zip_info, raw_info = shard.get("zip_data"), shard.get("raw_data")
            checked = False
            for info in (zip_info, raw_info):
                if not info:
                    continue
                path = d / info["basename"]
                if not path.exists():
                    continue
                checked = True
                problem = _check_file(path, info)
                if problem:
                    problems.append(problem)
            if not checked and not missing_ok:
                name = (zip_info or raw_info or {}).get("basename", "?")
                problems.append(f"{d / name}: missing")
    return problems


def _check_file(path: Path, info: dict[str, Any]) -> str | None:
    size = path.stat().st_size
    if info.get("bytes") is not None and size != info["bytes"]:
        return f"{path}: size {size} != {info['bytes']} recorded in index.json"
    want: dict[str, str] = info.get("hashes") or {}
    hashers = {algo: _hasher(algo) for algo in want}
    hashers = {a: h for a, h in hashers.items() if h is not None}
    if not hashers:
        return None
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    for algo, h in hashers.items():
        if h.hexdigest() != want[algo]:
            return f"{path}: {algo} mismatch (file changed or corrupt)"
    return None


def _hasher(algo: str) -> Any:
    if algo in hashlib.algorithms_available:
        return hashlib.new(algo)
    if algo.startswith("xxh"):
        import xxhash

        return getattr(xxhash, algo)()
    return None
