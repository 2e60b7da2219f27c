"""One work unit -> MDS sub-directories (train/<unit>, val/<unit>), and merging their indexes.

A *work unit* is one parquet or jsonl file, or a run of consecutive plain-text files (one
document each) grouped up to ``text_unit_bytes``. Each unit is one packing stream per split,
so its shards depend only on its inputs and the settings: never on the worker count or on
scheduling. That is what makes a restarted run produce the same content as an uninterrupted
one, and makes a unit the unit of restart.

Crash safety: a unit is written under ``<staging>/partial/<unit>``, then its split
directories are renamed into place, and only then is its done-marker
``<staging>/units/<unit>.json`` written. A unit without a marker is discarded and redone.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline.errors import DataPipelineError
from data_pipeline.manifest import ShardSettings, read_json, write_json_atomic
from data_pipeline.packing import SamplePacker, clean_text, encode_document, split_of
from data_pipeline.sources import DocFilter, format_of, iter_documents

__all__ = ["WorkUnit", "plan_units", "process_unit", "discard_unit", "merge_split_index", "SPLITS", "COLUMN"]

SPLITS = ("train", "val")
# One MDS column holding the sample's bytes; the dataset turns it into ids.
COLUMN = "ids"
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class WorkUnit:
    """A group of inputs packed as one stream."""

    index: int
    inputs: tuple[Path, ...]
    size: int

    @property
    def name(self) -> str:
        """Sub-directory name of this unit inside train/ and val/."""
        return f"u{self.index:05d}"


def plan_units(inputs: list[Path], text_unit_bytes: int) -> list[WorkUnit]:
    """Deterministic units from the sorted input list (same inputs -> same units)."""
    units: list[WorkUnit] = []
    group: list[Path] = []
    group_size = 0

    def flush() -> None:
        nonlocal group, group_size
        if group:
            units.append(WorkUnit(len(units), tuple(group), group_size))
            group, group_size = [], 0

    for path in inputs:
        size = path.stat().st_size
        fmt = format_of(path)
        if fmt is not None and fmt[0] == "text":
            if group and group_size + size > text_unit_bytes:
                flush()
            group.append(path)
            group_size += size
        else:
            flush()
            units.append(WorkUnit(len(units), (path,), size))
    flush()
    return units


def discard_unit(staging: Path, unit: WorkUnit) -> None:
    """Remove everything a crashed attempt at ``unit`` may have left."""
    for p in (staging / "partial" / unit.name, *(staging / s / unit.name for s in SPLITS)):
        if p.exists():
            shutil.rmtree(p)
    marker = staging / "units" / f"{unit.name}.json"
    if marker.exists():
        marker.unlink()


def process_unit(
    unit: WorkUnit,
    settings: ShardSettings,
    staging: Path,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Read, filter, encode, split, pack and write one unit; return its counts (also the marker)."""
    from streaming import MDSWriter

    discard_unit(staging, unit)
    work = staging / "partial" / unit.name
    work.mkdir(parents=True)
    doc_filter = DocFilter(settings.min_int_score, settings.min_chars, settings.language)
    packers = {s: SamplePacker(settings.sample_bytes) for s in SPLITS}
    writers: dict[str, Any] = {}
    documents = dict.fromkeys(SPLITS, 0)
    payload = dict.fromkeys(SPLITS, 0)
    samples = dict.fromkeys(SPLITS, 0)
    dropped: dict[str, int] = {}
    tail_dropped = dict.fromkeys(SPLITS, 0)

    def emit(split: str, sample: bytes) -> None:
        writer = writers.get(split)
        if writer is None:
            # Created lazily: a unit with no val documents leaves no empty val directory.
            writer = writers[split] = MDSWriter(
                out=str(work / split),
                columns={COLUMN: "bytes"},
                compression=settings.compression,
                hashes=list(settings.hashes),
                size_limit=settings.shard_size_limit,
            )
        writer.write({COLUMN: sample})
        samples[split] += 1

    inputs_info = []
    # The input's sha256 (for the manifest) is computed in a thread while the input is
    # processed: hashlib releases the GIL, so it costs no time on the critical path.
    hasher = ThreadPoolExecutor(max_workers=1)
    try:
        for path in unit.inputs:
            digest = hasher.submit(_sha256, path)
            for doc in iter_documents(path, progress):
                text = clean_text(doc.text)
                reason = doc_filter.reason(doc if text is doc.text else _with_text(doc, text))
                if reason is not None:
                    dropped[reason] = dropped.get(reason, 0) + 1
                    continue
                split = split_of(doc.doc_id, text, settings.val_fraction)
                encoded = encode_document(text)
                documents[split] += 1
                payload[split] += len(encoded)
                for sample in packers[split].add(encoded):
                    emit(split, sample)
            inputs_info.append({"path": str(path), "size": path.stat().st_size, "sha256": digest.result()})
        for split in SPLITS:
            pending = packers[split].pending
            tail = packers[split].finish(settings.keep_tail)
            if tail is not None:
                emit(split, tail)
            elif pending:
                tail_dropped[split] = pending
        for writer in writers.values():
            writer.finish()
        writers.clear()
        for split in SPLITS:
            if (work / split).exists():
                os.replace(work / split, staging / split / unit.name)
    except OSError as err:
        raise DataPipelineError(f"unit {unit.name} ({unit.inputs[0]}): write failed: {err}") from None
    finally:
        hasher.shutdown(wait=True, cancel_futures=True)
    stats = {
        "unit": unit.name,
        "inputs": inputs_info,
        "documents": documents,
        "dropped": dropped,
        "bytes": payload,
        "samples": samples,
        "tail_bytes_dropped": tail_dropped,
    }
    write_json_atomic(staging / "units" / f"{unit.name}.json", stats)
    shutil.rmtree(work, ignore_errors=True)
    return stats


def _with_text(doc: Any, text: str) -> Any:
    from dataclasses import replace

    return replace(doc, text=text)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def merge_split_index(split_dir: Path, unit_names: list[str]) -> int:
    """Write ``split_dir/index.json`` listing every unit's shards in unit order; return the count.

    Same result as streaming's ``merge_index`` (basenames prefixed with the sub-directory), but
    in a fixed order, with no temp-dir warnings, and written atomically.
    """
    shards: list[dict[str, Any]] = []
    for name in unit_names:
        index = split_dir / name / "index.json"
        if not index.exists():
            continue
        for shard in read_json(index)["shards"]:
            for key in ("raw_data", "zip_data", "raw_meta", "zip_meta"):
                if shard.get(key):
                    shard[key]["basename"] = f"{name}/{shard[key]['basename']}"
            shards.append(shard)
    if shards:
        write_json_atomic(split_dir / "index.json", {"version": 2, "shards": shards})
    return len(shards)
