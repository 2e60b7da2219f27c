"""Pre-flight: what can be checked before any rank starts, checked in one process, read-only.

``preflight(cfg)`` is called by ``launchers/pretrain.sh`` (through ``python -m
pmnet.train.preflight``, once, before the DeepSpeed launcher starts), by ``--dry-run``, and by
the trainer itself at start (so a bare ``python -m pmnet.train`` is protected too). It never
creates the run directory, and raises a one-line :class:`ConfigError` for:

* a data stream whose directory or ``index.json`` is missing or unreadable, that is not an
  MDS index of byte samples, or whose stored sample size (the shard headers; the dataset's
  ``manifest.json``) differs from ``data.sample_bytes``;
* a resume whose config changes a field the saved optimizer / LR-scheduler state depends on
  (:data:`RESUME_GUARDED`), unless each such field is named with ``--allow-change``;
* a resume that changes the model shape or the global batch (never loadable / never exact).

Other differences between the saved config and the new one are reported as one note line.
A remote stream (``remote: s3://...``) is checked through its local cache where that holds
an index already; what could not be checked is said in a note. Shard contents are not hashed
here (that is ``data.verify_hashes``, at loader build). This module imports neither torch
distributed nor DeepSpeed (``pmnet.config`` still imports torch through ``pmnet.model``).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pmnet.checkpoint.manifest import CONFIG, CheckpointError, find_latest_valid
from pmnet.config import Config, ConfigError, load_config, validate_config
from pmnet.configtree import to_dict
from pmnet.model.config import WEIGHT_SHAPE_FIELDS

__all__ = ["RESUME_GUARDED", "Preflight", "preflight", "check_streams", "config_changes", "main"]

# The fields a resume must keep unless a change is asked for by name (``--allow-change FIELD``).
# The LR of every step is recomputed from them (engine.lr_at), so a change moves the LR curve
# under the resumed step; the loaded optimizer state brings back its saved betas / eps / weight
# decay, so a change of those would silently not take effect.
RESUME_GUARDED: dict[str, str] = {
    "train.max_steps": "the cosine / WSD schedule spans max_steps, so the LR jumps at the resumed step",
    "optim.schedule": "the LR curve changes shape at the resumed step",
    "optim.lr": "the LR jumps at the resumed step",
    "optim.min_lr_ratio": "the LR floor moves",
    "optim.warmup_steps": "the LR curve shifts",
    "optim.decay_fraction": "the WSD decay moves",
    "optim.betas": "the loaded optimizer state keeps its saved betas",
    "optim.eps": "the loaded optimizer state keeps its saved eps",
    "optim.weight_decay": "the loaded optimizer state keeps its saved weight decay",
}
# Where the run is, not what it does: a copied run directory resumes under another name.
_LOCATION = ("train.run_root", "train.run_name")


@dataclass
class Preflight:
    """What the checks found: ``notes`` (one line each) to show; nothing here is an error."""

    notes: list[str] = field(default_factory=list)
    resume_from: Path | None = None


def preflight(cfg: Config, world_size: int | None = None, allow_change: list[str] | tuple[str, ...] = ()) -> Preflight:
    """Every pre-launch check for ``cfg`` (read-only); raises ConfigError naming the first problem."""
    validate_config(cfg, world_size)
    allow = _parse_allow(allow_change)
    out = Preflight()
    out.notes += check_streams(cfg)
    if cfg.train.init_from:
        init = Path(cfg.train.init_from)
        if not (init / "config.json").is_file():
            raise ConfigError(f"train.init_from={str(init)!r}: no config.json there (an interchange directory)")
    _check_run_dir(cfg, allow, out)
    return out


# ------------------------------------------------------------------------------------------ data


def check_streams(cfg: Config) -> list[str]:
    """Check every stream the run reads (training; validation when eval is on); returns notes."""
    d = cfg.data
    groups = []
    if d.task == "bytes":
        groups.append(("data.streams", d.streams))
    if cfg.eval.interval > 0:
        groups.append(("data.val_streams", d.val_streams))
    notes: list[str] = []
    for name, streams in groups:
        for i, s in enumerate(streams):
            note = _check_stream(s, d.sample_bytes, cfg.train.tbptt_chunks, f"{name}[{i}]")
            if note:
                notes.append(note)
    return notes


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _join(base: str, split: str | None) -> Path:
    base = base[len("file://") :] if base.startswith("file://") else base
    return Path(base) / split if split else Path(base)


def _check_stream(s: Any, sample_bytes: int, chunks: int, where: str) -> str | None:
    if s.remote and _is_url(s.remote):
        cache = _join(s.local, s.split) if s.local else None
        if cache is None or not (cache / "index.json").is_file():
            return f"{where}: remote {s.remote} not checked before download (no cached index.json yet)"
        stored = _check_index_dir(cache, sample_bytes, chunks, where, shards_optional=True)
        size = f"{stored}-byte samples" if stored else "sample size not checked: no shard cached yet"
        return f"{where}: checked the cached index of remote {s.remote} in {cache} ({size})"
    if s.remote:  # a local directory standing in for remote storage; local is the cache
        _check_index_dir(_join(s.remote, s.split), sample_bytes, chunks, where, shards_optional=False)
        if s.local:
            _check_creatable(Path(s.local), where)
        return None
    d = _join(s.local, s.split)
    _check_index_dir(d, sample_bytes, chunks, where, shards_optional=False)
    if not os.access(d, os.W_OK):
        raise ConfigError(
            f"{where}: {d} is not writable, and streaming decompresses shards next to them; "
            "set remote: <that directory> and local: <a writable cache directory> instead"
        )
    return None


def _check_creatable(path: Path, where: str) -> None:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ConfigError(f"{where}: cache directory {path} cannot be created or written ({existing} is not writable)")


def _check_index_dir(d: Path, sample_bytes: int, chunks: int, where: str, *, shards_optional: bool) -> int | None:
    """Check an MDS split directory; returns the stored sample size (None: could not be read)."""
    if not d.is_dir():
        raise ConfigError(f"{where}: {d} does not exist")
    index_path = d / "index.json"
    if not index_path.is_file():
        hint = ""
        if (d / "train" / "index.json").is_file():
            hint = " (it has train/: set split: train)"
        raise ConfigError(f"{where}: no index.json in {d}{hint}; shard the data with tools/shard_dataset.py first")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{where}: {index_path} is unreadable ({err})") from None
    shards = index.get("shards") if isinstance(index, dict) else None
    if not isinstance(shards, list) or not shards:
        raise ConfigError(f"{where}: {index_path} is not an MDS index with shards")
    for k, shard in enumerate(shards):
        if not isinstance(shard, dict) or shard.get("format") != "mds":
            fmt = shard.get("format") if isinstance(shard, dict) else shard
            raise ConfigError(f"{where}: {index_path}: shard {k} has format {fmt!r}, not 'mds'")
        if shard.get("column_names") != ["ids"] or shard.get("column_encodings") != ["bytes"]:
            raise ConfigError(
                f"{where}: {index_path}: shard {k} has columns {shard.get('column_names')} "
                f"({shard.get('column_encodings')}), not the one 'ids' bytes column of tools/shard_dataset.py"
            )
    stored = _stored_sample_bytes(d, shards, sample_bytes, where, shards_optional)
    if stored is not None and stored != sample_bytes:
        fits = (stored - 1) % chunks == 0
        how = (
            f"set data.sample_bytes={stored}"
            if fits
            else f"data.sample_bytes={stored} would also need train.tbptt_chunks dividing {stored - 1}"
        )
        raise ConfigError(
            f"{where}: shards in {d} hold samples of {stored} bytes but data.sample_bytes={sample_bytes}; {how}, "
            f"or reshard with --sample-bytes {sample_bytes}"
        )
    return stored


def _stored_sample_bytes(
    d: Path, shards: list[dict[str, Any]], sample_bytes: int, where: str, optional: bool
) -> int | None:
    """The sample size the shards were written with (None: unknown), from the shard headers first.

    Every sample of a packed stream but its last is full, so a shard of two or more samples
    shows the size exactly; otherwise the dataset's ``manifest.json`` says it, if there is one.
    """
    longest = 0
    for shard in shards[:8]:
        sizes = _shard_sample_sizes(d, shard, where, optional)
        if sizes is None:
            continue
        longest = max(longest, *sizes)
        if len(sizes) >= 2:
            return max(sizes)
    for m in (d / "manifest.json", d.parent / "manifest.json"):
        if m.is_file():
            try:
                stored = json.loads(m.read_text(encoding="utf-8")).get("sample_bytes")
            except (OSError, UnicodeDecodeError, ValueError, AttributeError):
                break
            if isinstance(stored, int) and stored >= longest:
                return stored
            break
    return longest if longest > sample_bytes else None


def _shard_sample_sizes(d: Path, shard: dict[str, Any], where: str, optional: bool) -> list[int] | None:
    """Sample lengths from an MDS shard's header (count + offsets), decompressing only that."""
    n = shard.get("samples")
    if not isinstance(n, int) or n < 1:
        return None
    need = 4 + 4 * (n + 1)
    raw, zipped = shard.get("raw_data") or {}, shard.get("zip_data") or {}
    head = None
    if raw.get("basename") and (d / raw["basename"]).is_file():
        with open(d / raw["basename"], "rb") as f:
            head, path = f.read(need), d / raw["basename"]
    elif zipped.get("basename") and (d / zipped["basename"]).is_file():
        path = d / zipped["basename"]
        if not str(shard.get("compression") or "").startswith("zstd"):
            return None  # only zstd is read here; streaming still checks the rest
        head = _zstd_head(path, need, where)
    else:
        if optional:
            return None
        name = zipped.get("basename") or raw.get("basename") or "?"
        raise ConfigError(f"{where}: shard {d / name} is missing (index.json lists it)")
    if len(head) < need or struct.unpack_from("<I", head)[0] != n:
        raise ConfigError(f"{where}: {path}: truncated or corrupt shard header (index.json says {n} samples)")
    offsets = struct.unpack_from(f"<{n + 1}I", head, 4)
    # each sample: a uint32 length prefix of the one variable-size column, then the bytes
    return [offsets[i + 1] - offsets[i] - 4 for i in range(n)]


def _zstd_head(path: Path, need: int, where: str) -> bytes:
    import zstandard

    out = bytearray()
    try:
        with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as reader:
            while len(out) < need:
                chunk = reader.read(need - len(out))
                if not chunk:
                    break
                out += chunk
    except zstandard.ZstdError as err:
        raise ConfigError(f"{where}: {path}: not a readable zstd shard ({err})") from None
    return bytes(out)


# ------------------------------------------------------------------------------------------ run directory


def _parse_allow(names: list[str] | tuple[str, ...]) -> set[str]:
    allow = {n.strip() for raw in names for n in raw.split(",") if n.strip()}
    unknown = sorted(allow - set(RESUME_GUARDED))
    if unknown:
        raise ConfigError(
            f"--allow-change {','.join(unknown)}: not a guarded field; guarded: {', '.join(RESUME_GUARDED)}"
        )
    return allow


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{"section.key": (saved, new)}`` for every field present in both that differs (location aside)."""
    a, b = _flat(saved), _flat(new)
    return {k: (a[k], b[k]) for k in b if k in a and a[k] != b[k] and k not in _LOCATION}


def _show(v: Any) -> str:
    return json.dumps(v, separators=(",", ":")) if isinstance(v, (list, dict)) else str(v)


def _describe(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in changes.items())


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _check_run_dir(cfg: Config, allow: set[str], out: Preflight) -> None:
    run_dir = Path(cfg.train.run_root) / cfg.train.run_name
    if not run_dir.is_dir():
        return
    new = to_dict(cfg)
    try:
        ckpt = find_latest_valid(run_dir, verify_hashes=False)
    except (OSError, CheckpointError):
        ckpt = None
    if ckpt is not None and not cfg.checkpoint.resume:
        out.notes.append(
            f"checkpoint.resume=false: starting fresh in {run_dir}, which has checkpoints up to {ckpt.name}"
        )
        ckpt = None
    if ckpt is None:
        saved = _read_yaml(run_dir / CONFIG)
        changes = config_changes(saved, new) if saved else {}
        if changes:
            out.notes.append(f"{run_dir} has no checkpoint to resume; its {CONFIG} differs: {_describe(changes)}")
        return
    saved = _read_yaml(ckpt / CONFIG) or _read_yaml(run_dir / CONFIG)
    out.resume_from = ckpt
    if saved is None:
        out.notes.append(f"resuming {ckpt}: its {CONFIG} is unreadable, so config changes were not checked")
        return
    changes = config_changes(saved, new)
    where = f"resuming {run_dir} from {ckpt.name}"
    shape = {k: v for k, v in changes.items() if k.startswith("model.") and k.split(".", 1)[1] in WEIGHT_SHAPE_FIELDS}
    if shape:
        raise ConfigError(
            f"{where}: the model shape changed ({_describe(shape)}), so its weights do not fit; "
            "keep the saved values, or start a new train.run_name (train.init_from=<export> to start from these weights)"
        )
    if "train.global_batch_size" in changes:
        a, _ = changes["train.global_batch_size"]
        raise ConfigError(
            f"{where}: train.global_batch_size changed ({_describe({'train.global_batch_size': changes['train.global_batch_size']})}); "
            f"the data stream only continues exactly with the same global batch: set train.global_batch_size={a}"
        )
    guarded = {k: v for k, v in changes.items() if k in RESUME_GUARDED and _matters(k, saved, new)}
    refused = {k: v for k, v in guarded.items() if k not in allow}
    if refused:
        why = "; ".join(f"{k}: {RESUME_GUARDED[k]}" for k in refused)
        raise ConfigError(
            f"{where} with a changed schedule / optimizer setting: {_describe(refused)} ({why}); "
            f"keep the saved values, or accept the change with --allow-change {','.join(refused)}"
        )
    if changes:
        accepted = f" (accepted by --allow-change: {', '.join(guarded)})" if guarded else ""
        out.notes.append(f"{where}: config differs from the checkpoint's: {_describe(changes)}{accepted}")
    else:
        out.notes.append(f"{where}: config unchanged")


def _matters(key: str, saved: dict[str, Any], new: dict[str, Any]) -> bool:
    """A schedule field that neither config's schedule reads is not a change of the schedule."""
    kinds = {(saved.get("optim") or {}).get("schedule"), (new.get("optim") or {}).get("schedule")}
    if key == "optim.decay_fraction":
        return "wsd" in kinds
    if key == "optim.min_lr_ratio":
        return kinds != {"constant"}
    return True


# ------------------------------------------------------------------------------------------ CLI

USAGE = "python -m pmnet.train.preflight CONFIG [section.key=value ...] [--world-size N] [--allow-change FIELD[,FIELD]]"


def main(argv: list[str] | None = None) -> int:
    """Run the pre-flight; notes to stdout, a problem as one ``error:`` line on stderr (exit 2)."""
    p = argparse.ArgumentParser(
        prog="python -m pmnet.train.preflight", usage=USAGE, description=__doc__.split("\n\n")[0]
    )
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--world-size", type=int, default=None)
    p.add_argument("--allow-change", action="append", default=[], metavar="FIELD[,FIELD]")
    p.add_argument("--quiet", action="store_true", help="print nothing unless there is a problem")
    args = p.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    if "=" in args.config:
        print(f"error: the first argument must be the config file, got {args.config!r}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
        report = preflight(cfg, args.world_size, args.allow_change)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        for line in report.notes:
            print(f"pre-flight: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
