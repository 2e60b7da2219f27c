"""Removing the /dev/shm entries that a killed mosaicml-streaming run left behind.

streaming's own ``clean_stale_shared_memory()`` unlinks *every* streaming entry, including
those of live runs on the same machine (another job, a parallel test), which breaks them
(docs/dependencies.md section 3). This version removes only entries that no live process maps: streaming keeps
each of its SharedMemory blocks mmapped for the life of the dataset (in the main process and
in every loader worker), so an entry absent from every ``/proc/<pid>/maps`` is stale.

Call it once per node, on local rank 0, before any dataset is built, then barrier. Only
entries owned by this user are considered (others' are neither readable nor removable).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["clean_stale_shared_memory", "streaming_shm_entries", "live_shm_entries"]

_SHM = Path("/dev/shm")
# streaming names its blocks f"{prefix_int:06}_{name}" (streaming.base.shared.prefix._get_path).
_NAMES = (
    "locals",
    "barrier",
    "next_epoch",
    "cache_usage",
    "shard_states",
    "shard_access_times",
    "resume",
    "epoch_shape",
    "epoch_data",
)
_PATTERN = re.compile(r"^\d{6}_(" + "|".join(_NAMES) + r")$")


def streaming_shm_entries(shm_dir: Path = _SHM) -> list[str]:
    """Names of streaming's shared-memory entries in ``shm_dir`` owned by this user."""
    if not shm_dir.is_dir():
        return []
    uid = os.getuid()
    names = []
    for entry in os.scandir(shm_dir):
        try:
            if _PATTERN.match(entry.name) and entry.stat(follow_symlinks=False).st_uid == uid:
                names.append(entry.name)
        except FileNotFoundError:
            continue
    return sorted(names)


def live_shm_entries(shm_dir: Path = _SHM) -> set[str]:
    """Basenames of files under ``shm_dir`` mapped by some process we can inspect."""
    prefix = str(shm_dir).rstrip("/") + "/"
    live: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
                for line in f:
                    i = line.find(prefix)
                    if i >= 0:
                        live.add(line[i + len(prefix) :].rstrip("\n").removesuffix(" (deleted)"))
        except OSError:  # gone, or another user's process (cannot hold our entries anyway)
            continue
    return live


def clean_stale_shared_memory(shm_dir: Path = _SHM) -> list[str]:
    """Unlink streaming's shared-memory entries that no live process maps; return their names."""
    candidates = streaming_shm_entries(shm_dir)
    if not candidates:
        return []
    live = live_shm_entries(shm_dir)
    removed = []
    for name in candidates:
        if name in live:
            continue
        try:
            (shm_dir / name).unlink()
            removed.append(name)
        except FileNotFoundError:
            continue
    return removed
