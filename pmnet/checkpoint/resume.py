"""Resuming a run: list its checkpoints, repair ``latest``, build the resume command, check elastic resumes.

Library code behind ``tools/resume.py`` and parts of ``tools/convert_checkpoint.py``.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from pmnet.checkpoint.manifest import (
    CONFIG,
    META,
    CheckpointError,
    checkpoints_root,
    rank_file,
    read_json,
    read_latest,
    scan_checkpoints,
    write_latest,
)

__all__ = ["check_elastic", "check_interchange", "resume_command", "resume_report"]


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from None


def resume_command(run_dir: Path, ckpt: Path) -> str:
    """The command that resumes ``run_dir`` (the trainer picks its newest valid checkpoint itself)."""
    run_dir = run_dir.resolve()
    cfg_path = run_dir / CONFIG if (run_dir / CONFIG).is_file() else ckpt / CONFIG
    cfg = _yaml(cfg_path)
    train = cfg.get("train") or {}
    args = ["bash", "launchers/pretrain.sh", str(cfg_path)]
    where = Path(str(train.get("run_root", "runs"))) / str(train.get("run_name", ""))
    if where.resolve() != run_dir:
        args += [f"train.run_root={run_dir.parent}", f"train.run_name={run_dir.name}"]
    meta = read_json(ckpt / META) if (ckpt / META).is_file() else {}
    world = meta.get("world_size")
    if world and (cfg.get("train") or {}).get("device", "auto") == "cpu":
        args += ["--cpu-ranks", str(world)]
    return " ".join(shlex.quote(a) for a in args)


def resume_report(run_dir: str | Path, *, check_only: bool = False, verify_hashes: bool = True) -> dict[str, Any]:
    """Scan a run's checkpoints, point ``latest`` at the newest valid one (unless check_only)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f"{run}: no such run directory")
    root = checkpoints_root(run)
    infos = scan_checkpoints(run, verify_hashes=verify_hashes)
    valid = [i for i in infos if i.state == "valid"]
    newest = valid[-1] if valid else None
    latest_before = read_latest(root) if root.is_dir() else None
    repaired = False
    latest_after = latest_before
    if newest is not None and latest_before != newest.name and not check_only:
        write_latest(root, newest.name)
        repaired = True
        latest_after = newest.name
    for i in infos:
        i.is_latest = i.name == latest_after
    run_dir_for_cmd = root.parent if root.name == "checkpoints" else run
    return {
        "run_dir": str(run),
        "checkpoints": [i.to_dict() for i in infos],
        "newest_valid": str(newest.path) if newest else None,
        "latest_before": latest_before,
        "latest_after": latest_after,
        "latest_ok": newest is not None and latest_before == newest.name,
        "repaired": repaired,
        "check_only": check_only,
        "command": resume_command(run_dir_for_cmd, newest.path) if newest else None,
    }


def check_elastic(
    ckpt_dir: str | Path,
    world_size: int | None = None,
    micro_batch_size: int | None = None,
    global_batch_size: int | None = None,
) -> dict[str, Any]:
    """Whether the data stream continues exactly when resuming ``ckpt_dir`` on ``world_size`` ranks.

    mosaicml-streaming's elastic resumption continues the global sample order only with the
    same global batch (and a fixed num_canonical_nodes, which the saved loader state carries);
    the global batch must also split into whole micro batches on the new ranks. Raises
    CheckpointError (one line) when a given setting breaks that; returns the explanation.
    """
    from pmnet.checkpoint.convert import step_dir_of

    ckpt = step_dir_of(ckpt_dir)
    meta = read_json(ckpt / META) if (ckpt / META).is_file() else {}
    cfg = _yaml(ckpt / CONFIG) if (ckpt / CONFIG).is_file() else {}
    train, data = cfg.get("train") or {}, cfg.get("data") or {}
    g_saved, m_saved = train.get("global_batch_size"), train.get("micro_batch_size")
    g_new, m_new = global_batch_size or g_saved, micro_batch_size or m_saved
    lines = [f"saved on {meta.get('world_size', '?')} rank(s) with global batch {g_saved} (micro {m_saved})"]
    problems = []
    if g_saved is not None and g_new != g_saved:
        problems.append(
            f"global batch {g_new} != saved {g_saved}: mosaicml-streaming's elastic resumption needs the same "
            f"global batch, so samples would be repeated or skipped; keep train.global_batch_size={g_saved}"
        )
    if world_size and g_new and m_new and g_new % (m_new * world_size):
        problems.append(
            f"global batch {g_new} is not a multiple of micro batch {m_new} x {world_size} ranks; "
            f"choose train.micro_batch_size dividing {g_new // world_size if g_new % world_size == 0 else g_new}"
        )
    loader = None
    if (ckpt / rank_file(0)).is_file():
        from pmnet.checkpoint.ptread import PtFile, PtReadError

        try:
            with PtFile(ckpt / rank_file(0)) as pf:
                loader = pf.obj.get("dataloader")
        except PtReadError as err:
            raise CheckpointError(str(err)) from None
    carried = isinstance(loader, dict) and _has_key(loader, "num_canonical_nodes")
    if data.get("task", "bytes") == "bytes" and data.get("num_canonical_nodes") is None and not carried:
        lines.append(
            "warning: data.num_canonical_nodes is unset and the saved loader state does not carry it; "
            "set it to keep the sample order across world sizes"
        )
    if problems:
        raise CheckpointError("; ".join(problems))
    if world_size:
        acc = g_new // (m_new * world_size) if g_new and m_new else "?"
        lines.append(f"resume on {world_size} rank(s): global batch {g_new} = micro {m_new} x accumulation {acc} x "
                     f"{world_size}: the data stream continues with the next sample, none repeated or skipped")  # fmt: skip
    else:
        lines.append(
            f"keep train.global_batch_size={g_saved} on the new world size so the data stream continues exactly"
        )
    return {"ok": True, "lines": lines, "saved_global_batch": g_saved, "global_batch": g_new}


def _has_key(d: Any, key: str) -> bool:
    if isinstance(d, dict):
        return key in d or any(_has_key(v, key) for v in d.values())
    return False


def check_interchange(path: str | Path, config: str = "CONFIG.yaml") -> dict[str, Any]:
    """Load an interchange directory fully (keys, shapes, config) and give the command that trains from it."""
    from pmnet.model import InterchangeError, load_pretrained

    d = Path(path)
    try:
        model, cfg = load_pretrained(d)
    except InterchangeError as err:
        raise CheckpointError(str(err)) from None
    n = sum(p.numel() for p in model.parameters())
    cmd = " ".join(shlex.quote(a) for a in ["bash", "launchers/pretrain.sh", config, f"train.init_from={d.resolve()}"])
    return {"dir": str(d), "num_parameters": n, "model": cfg.to_dict(), "command": cmd}
