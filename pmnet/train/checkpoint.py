"""Crash-safe training checkpoints: the DeepSpeed engine plus everything needed to resume exactly.

``save_checkpoint`` (collective) writes ``<run_dir>/checkpoints/.tmp-step_XXXXXXXX/`` with
``engine.save_checkpoint`` and, beside DeepSpeed's files:

* ``rank_XXXXX.pt`` per rank: python / numpy / torch / CUDA RNG states and the rank's dataloader state;
* ``trainer_state.json`` (step, bytes seen, loss, ...), ``config.yaml`` (the resolved config),
  ``meta.json`` (world size, ZeRO stage, precision, global batch, code version, parameter shapes).

After a barrier every rank hashes a share of the files; rank 0 writes ``manifest.json``
(size and sha256 of every file), renames the directory to ``step_XXXXXXXX``, moves
``latest`` (atomically) and applies retention. A crash at any point leaves the previous
checkpoint and ``latest`` untouched; the half-written ``.tmp-`` directory is reported as
incomplete and removed by the next successful save.

``load_checkpoint`` (collective) refuses a changed model shape in one line, loads the engine
(through the checkpoint's ``universal/`` copy when the world size changed, see
``pmnet.checkpoint.convert.make_universal``), and restores this rank's RNG states. No file runs
code: every rank first checks each pickle of the checkpoint against the allowlist
(:mod:`pmnet.checkpoint.safeload`), and DeepSpeed's own ``torch.load`` calls run weights-only with
that allowlist; our own torch files are read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pmnet.checkpoint.manifest import (
    CONFIG,
    FORMAT,
    MANIFEST,
    META,
    TMP_PREFIX,
    TRAINER_STATE,
    CheckpointError,
    CheckpointInfo,
    atomic_write_text,
    check_checkpoint,
    checkpoints_root,
    fsync_dir,
    hash_files,
    list_files,
    parse_step,
    rank_file,
    read_json,
    read_latest,
    scan_checkpoints,
    step_name,
    utc_now,
    write_latest,
)
from pmnet.checkpoint.manifest import find_latest_valid as _find_latest_valid
from pmnet.checkpoint.ptread import PtReadError
from pmnet.checkpoint.safeload import UnsafeCheckpointError, pickle_files, restricted_torch_load, scan_pickles
from pmnet.checkpoint.version import code_version
from pmnet.config import dump_config
from pmnet.model.config import WEIGHT_SHAPE_FIELDS
from pmnet.train.distributed import all_gather_object, rank_and_world

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "LoadedCheckpoint",
    "apply_retention",
    "code_version",
    "find_latest_valid",
    "load_checkpoint",
    "save_checkpoint",
    "scan_checkpoints",
]


# Model config fields that change parameter shapes (a resume with any of them changed is refused).
@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` restored besides the engine."""

    path: Path
    trainer_state: dict[str, Any]
    dataloader_state: dict[str, Any] | None
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] | None = None  # this rank's saved RNG states (None: the checkpoint has none for it)

    @property
    def step(self) -> int:
        """Optimizer step the checkpoint was written at."""
        return int(self.meta.get("step", self.trainer_state.get("step", 0)))


def _agree(error: str | None) -> None:
    """Every rank learns whether any rank failed; all then raise the first error (no rank hangs)."""
    errors = [e for e in all_gather_object(error) if e]
    if errors:
        raise CheckpointError(errors[0])


def find_latest_valid(run_dir: str | Path, *, verify_hashes: bool = True) -> Path | None:
    """The newest valid checkpoint of a run (sha256-verified, pickles allowlisted), or None.

    Newer checkpoints passed over (incomplete, corrupt, unsafe) are logged as warnings, one
    line each with the reason. Collective when torch.distributed is initialised: rank 0 reads
    and hashes, the others receive its answer (every rank calls it), so a large checkpoint is
    read once, not once per rank.
    """
    return share_rank0_scan(lambda: scan_latest_valid(run_dir, verify_hashes=verify_hashes), run_dir)


def scan_latest_valid(run_dir: str | Path, *, verify_hashes: bool = True) -> Path | None:
    """:func:`find_latest_valid`'s local part (no collective; safe in a thread): this process reads
    and hashes, and logs the checkpoints passed over."""
    import logging

    skipped: list[CheckpointInfo] = []
    found = _find_latest_valid(run_dir, verify_hashes=verify_hashes, skipped=skipped)
    log = logging.getLogger("pmnet.train")
    for info in skipped:
        log.warning(f"not resuming from {info.path}: {info.state}: {info.reason}")
    return found


def share_rank0_scan(scan: Callable[[], Path | None], run_dir: str | Path) -> Path | None:
    """:func:`find_latest_valid`'s collective part: ``scan()`` runs on rank 0 only (or in a single
    process) and every rank returns its answer; an error there is raised on every rank. Call it
    from the thread that issues the process's other collectives (their order must agree)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return scan()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            found = scan()
            box[0] = ("ok", str(found) if found else None)
        except Exception as err:  # every rank must learn of it, or the others wait forever
            box[0] = ("error", f"{type(err).__name__}: {err}")
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise CheckpointError(f"scanning {run_dir} for checkpoints failed on rank 0: {value}")
    return Path(value) if value else None


# ---------------------------------------------------------------- small pieces
def capture_rng_state() -> dict[str, Any]:
    """RNG states of python, numpy, torch (CPU) and every CUDA device, in weights_only-safe types."""
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)  # legacy=True (the default): the MT19937 5-tuple
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _param_shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    """Full parameter shapes (ZeRO-3 partitioned parameters report ``ds_shape``)."""
    out = {}
    for name, p in module.named_parameters():
        shape = getattr(p, "ds_shape", None) or p.shape
        out[name] = [int(s) for s in shape]
    return out


def _engine_info(engine: Any) -> dict[str, Any]:
    zero = int(engine.zero_optimization_stage()) if hasattr(engine, "zero_optimization_stage") else 0
    if getattr(engine, "bfloat16_enabled", lambda: False)():
        precision = "bf16"
    elif getattr(engine, "fp16_enabled", lambda: False)():
        precision = "fp16"
    else:
        precision = "fp32"
    return {
        "zero_stage": zero,
        "precision": precision,
        "train_batch_size": int(engine.train_batch_size()),
        "micro_batch_size": int(engine.train_micro_batch_size_per_gpu()),
        "gradient_accumulation_steps": int(engine.gradient_accumulation_steps()),
        "global_steps": int(getattr(engine, "global_steps", 0)),
    }


def _json_text(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, indent=1, sort_keys=True, allow_nan=True) + "\n"
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{what}: not JSON-serialisable ({err})") from None


# ---------------------------------------------------------------- save
def save_checkpoint(
    engine: Any,
    run_dir: str | Path,
    step: int,
    *,
    trainer_state: dict[str, Any],
    dataloader_state: dict[str, Any] | None,
    config: Any,
    keep_last: int,
    keep_every: int,
) -> Path:
    """Write a complete checkpoint of ``engine`` at ``step`` (every rank calls); returns its final path."""
    rank, world = rank_and_world()
    root = checkpoints_root(run_dir)
    final_name = step_name(step)
    tmp_name = TMP_PREFIX + final_name
    tmp, final = root / tmp_name, root / final_name

    # 1. a clean temporary directory (a crashed attempt at the same step may have left one)
    err = None
    if rank == 0:
        try:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
        except OSError as e:
            err = f"{tmp}: cannot prepare the checkpoint directory ({e})"
    _agree(err)

    # 2. DeepSpeed's files (collective), then ours
    engine.save_checkpoint(str(root), tag=tmp_name, save_latest=False)
    err = None
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"rank": rank, "world_size": world, "rng": capture_rng_state(), "dataloader": dataloader_state},
            tmp / rank_file(rank),
        )
        if rank == 0:
            meta = {
                "format": FORMAT,
                "step": int(step),
                "world_size": world,
                **_engine_info(engine),
                "code_version": code_version(),
                "torch_version": torch.__version__,
                "deepspeed_version": _deepspeed_version(),
                "created_utc": utc_now(),
                "param_shapes": _param_shapes(engine.module),
                "num_parameters": _count_unique_params(engine.module),
            }
            (tmp / META).write_text(_json_text(meta, META), encoding="utf-8")
            (tmp / TRAINER_STATE).write_text(_json_text({"step": int(step), **trainer_state}, TRAINER_STATE))
            (tmp / CONFIG).write_text(dump_config(config), encoding="utf-8")
    except (OSError, CheckpointError, RuntimeError) as e:
        err = f"rank {rank}: writing {tmp}: {e}"
    _agree(err)

    # 3. every rank hashes (and fsyncs) a share of the files; rank 0 writes the manifest
    err, part = None, {}
    # rank 0's listing is the one every rank works from (another node's view of a shared
    # filesystem may lag), and the manifest is checked against it below
    files = all_gather_object(list_files(tmp) if rank == 0 else None)[0]
    try:
        part = hash_files(tmp, files[rank::world], fsync=True)
    except OSError as e:
        err = f"rank {rank}: hashing {tmp}: {e}"
    parts = all_gather_object((err, part))
    _agree(next((e for e, _ in parts if e), None))

    err = None
    if rank == 0:
        try:
            entries: dict[str, Any] = {}
            for _, p in parts:
                entries.update(p)
            if sorted(entries) != files:
                raise CheckpointError(f"hashed {len(entries)} of {len(files)} files (ranks disagree on the listing)")
            manifest = {"format": FORMAT, "step": int(step), "world_size": world, "created_utc": utc_now(),
                        "files": dict(sorted(entries.items()))}  # fmt: skip
            atomic_write_text(tmp / MANIFEST, _json_text(manifest, MANIFEST))
            _publish(root, tmp, final)
            apply_retention(root, keep_last=keep_last, keep_every=keep_every, protect={final_name}, current=step)
        except (OSError, CheckpointError) as e:
            err = f"publishing {final}: {e}"
    _agree(err)
    return final


def _publish(root: Path, tmp: Path, final: Path) -> None:
    """Rename the finished directory into place, then move ``latest`` (the commit point)."""
    old = None
    if final.exists():  # re-saving a step (e.g. after resuming from an older checkpoint)
        old = root / f".del-{final.name}-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(root)
    write_latest(root, final.name)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def apply_retention(
    root: str | Path, *, keep_last: int, keep_every: int, protect: set[str] | None = None, current: int | None = None
) -> list[str]:
    """Delete old checkpoints: keep the newest ``keep_last`` up to step ``current`` (default: the newest),
    every multiple of ``keep_every``, the one ``latest`` names and ``protect``. Also removes stale temporary
    directories (and those of a universal conversion that crashed over 6 hours ago), and checkpoints of later steps than ``current`` that are not valid (left by an abandoned
    attempt, e.g. the corrupt one a resume skipped); valid later ones are left alone. Returns deleted names."""
    root = Path(root)
    keep = set(protect or ())
    latest = read_latest(root)
    if latest:
        keep.add(latest)
    finals = sorted((s, p) for p in root.iterdir() if p.is_dir() and (s := parse_step(p.name)) is not None)
    if current is None:
        current = finals[-1][0] if finals else 0  # no finals: nothing is past or future
    past = [(s, p) for s, p in finals if s <= current]
    future = [p for s, p in finals if s > current]
    keep.update(p.name for _, p in past[-max(keep_last, 1) :])
    if keep_every > 0:
        keep.update(p.name for s, p in past if s % keep_every == 0)
    keep.update(p.name for p in future if check_checkpoint(p, verify_hashes=False).state == "valid")
    doomed = [p for _, p in finals if p.name not in keep]
    doomed += [p for p in root.iterdir() if p.is_dir() and p.name.startswith((TMP_PREFIX, ".del-"))]
    # a universal conversion may be running right now (tools/convert_checkpoint.py): only old leftovers go
    stale = time.time() - 6 * 3600
    doomed += [p for p in root.iterdir() if p.name.startswith(".universal-") and p.stat().st_mtime < stale]
    deleted = []
    for p in doomed:
        trash = p if p.name.startswith(".del-") else root / f".del-{p.name.lstrip('.')}-{os.getpid()}"
        try:
            if trash != p:
                os.replace(p, trash)  # never leave a half-deleted directory under a checkpoint name
            shutil.rmtree(trash)
            deleted.append(p.name)
        except OSError:
            pass
    return deleted


def _deepspeed_version() -> str:
    try:
        import deepspeed

        return str(deepspeed.__version__)
    except Exception:
        return "unknown"


def _count_unique_params(module: torch.nn.Module) -> int:
    total = 0
    for p in module.parameters():  # parameters() yields a tied tensor once
        total += int(getattr(p, "ds_numel", 0) or p.numel())
    return total


# ---------------------------------------------------------------- load
def _check_shapes(ckpt: Path, meta: dict[str, Any], saved_cfg: dict[str, Any], engine: Any, expected: Any) -> None:
    """Refuse (one line) when the model to load into has other shapes than the saved one."""
    module = engine.module
    cur_cfg = None
    if expected is not None:
        cur_cfg = getattr(expected, "model", expected)
    elif hasattr(module, "config"):
        cur_cfg = module.config
    saved_model = saved_cfg.get("model") or {}
    if cur_cfg is not None and saved_model:
        diffs = [
            f"{k} {saved_model[k]} -> {getattr(cur_cfg, k)}"
            for k in WEIGHT_SHAPE_FIELDS
            if k in saved_model and hasattr(cur_cfg, k) and saved_model[k] != getattr(cur_cfg, k)
        ]
        if diffs:
            raise CheckpointError(
                f"{ckpt}: model shape changed since this checkpoint ({', '.join(diffs)}); "
                "start a new run directory (or train.init_from= converted weights) instead of resuming"
            )
    saved_shapes = meta.get("param_shapes") or {}
    if saved_shapes:
        cur = _param_shapes(module)
        for name in sorted(set(saved_shapes) | set(cur)):
            a, b = saved_shapes.get(name), cur.get(name)
            if a != b:
                raise CheckpointError(
                    f"{ckpt}: model shape changed since this checkpoint: parameter {name} saved {a}, model has {b}"
                )


def _unsafe_reason(ckpt: Path) -> str | None:
    """None when every pickle under ``ckpt`` passes the allowlist, else the one-line refusal."""
    try:
        scan_pickles(pickle_files(ckpt))
    except PtReadError as err:
        return f"refusing to load the checkpoint: {err}"
    return None


def _load_engine(engine: Any, ckpt: Path, universal: bool, load_optimizer: bool) -> Any:
    """DeepSpeed's load of the engine state (from ``universal/`` when the world size changed)."""
    if universal:
        prev = engine._config.load_universal_checkpoint
        engine._config.load_universal_checkpoint = True
        try:
            path, _ = engine.load_checkpoint(
                str(ckpt), tag="universal", load_optimizer_states=load_optimizer,
                load_lr_scheduler_states=load_optimizer,
            )  # fmt: skip
        finally:
            engine._config.load_universal_checkpoint = prev
        return path
    path, _ = engine.load_checkpoint(
        str(ckpt.parent), tag=ckpt.name, load_optimizer_states=load_optimizer,
        load_lr_scheduler_states=load_optimizer,
    )  # fmt: skip
    return path


def load_checkpoint(
    engine: Any,
    ckpt_dir: str | Path,
    *,
    load_optimizer: bool = True,
    expected_config: Any = None,
    strict_data: bool = True,
) -> LoadedCheckpoint:
    """Restore ``engine`` and this rank's RNG states from a checkpoint (every rank calls).

    ``expected_config`` (a Config or PMNetConfig) sharpens the shape check's message; the
    parameter shapes are compared in any case. ``strict_data`` refuses a changed global batch
    (mosaicml-streaming's elastic resumption needs the same one to continue the stream exactly).
    """
    ckpt = Path(ckpt_dir).resolve()
    rank, world = rank_and_world()
    if not (ckpt / MANIFEST).is_file():
        raise CheckpointError(f"{ckpt}: not a finished checkpoint ({MANIFEST} missing)")
    meta = read_json(ckpt / META)
    trainer_state = read_json(ckpt / TRAINER_STATE)
    try:
        import yaml

        saved_cfg = yaml.safe_load((ckpt / CONFIG).read_text(encoding="utf-8")) or {}
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{ckpt / CONFIG}: unreadable ({err})") from None
    _check_shapes(ckpt, meta, saved_cfg, engine, expected_config)

    saved_world = int(meta.get("world_size", world))
    # ZeRO-0 keeps the whole optimizer in mp_rank_00_model_states.pt: any world size loads it directly
    universal = saved_world != world and int(meta.get("zero_stage", 1)) > 0
    if universal and not (ckpt / "universal").is_dir():
        raise CheckpointError(
            f"{ckpt}: saved on {saved_world} rank(s), this run has {world}; convert it first: "
            f"python tools/convert_checkpoint.py universal {ckpt}"
        )
    cur_batch = int(engine.train_batch_size())
    saved_batch = int(meta.get("train_batch_size", cur_batch))
    _agree(_unsafe_reason(ckpt))  # before DeepSpeed opens any file; every rank checks its own view
    if strict_data and saved_batch != cur_batch:
        raise CheckpointError(
            f"{ckpt}: saved with global batch {saved_batch}, this run has {cur_batch}: the data stream "
            f"(mosaicml-streaming elastic resumption) only continues exactly with the same global batch; "
            f"set train.global_batch_size={saved_batch}"
        )

    try:
        with restricted_torch_load(str(ckpt)):
            path = _load_engine(engine, ckpt, universal, load_optimizer)
    except UnsafeCheckpointError as err:
        raise CheckpointError(f"refusing to load the checkpoint: {err}") from None
    if path is None:
        raise CheckpointError(f"{ckpt}: DeepSpeed could not load the engine state")

    own = ckpt / rank_file(rank)
    src = own if own.is_file() else ckpt / rank_file(0)
    try:
        rank_state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt pickle raises many types
        raise CheckpointError(f"{src}: unreadable ({type(err).__name__}: {err})") from None
    if own.is_file():
        restore_rng_state(rank_state["rng"])
    return LoadedCheckpoint(
        path=ckpt,
        trainer_state=trainer_state,
        dataloader_state=rank_state.get("dataloader"),
        config=saved_cfg,
        meta=meta,
        rng=rank_state["rng"] if own.is_file() else None,
    )
