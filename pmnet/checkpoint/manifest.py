"""Checkpoint directories on disk: names, the manifest, the ``latest`` pointer and validity checks.

A run keeps its checkpoints under ``<run_dir>/checkpoints/``::

    checkpoints/
      step_00001000/          one finished checkpoint (DeepSpeed files + ours + manifest.json)
      .tmp-step_00002000/     a checkpoint being written (or left by a crash): never loaded
      latest                  text file naming the newest good checkpoint; moved last

A checkpoint is *valid* when its ``manifest.json`` parses, every file it lists is present
with the listed size (and sha256 when hashes are verified), no unlisted file lies beside
them, the files expected for the saved world size and ZeRO stage are all listed, and every
pickle in it names only allowlisted globals (:mod:`pmnet.checkpoint.safeload`; a checkpoint that
fails only this is *unsafe*: loading it with DeepSpeed would run the code it names).
This module needs neither DeepSpeed nor torch.distributed (tools and tests use it alone).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CHECKPOINTS",
    "LATEST",
    "MANIFEST",
    "META",
    "TMP_PREFIX",
    "CheckpointError",
    "CheckpointInfo",
    "atomic_write_text",
    "check_checkpoint",
    "checkpoints_root",
    "expected_files",
    "find_latest_valid",
    "hash_files",
    "list_files",
    "parse_step",
    "rank_file",
    "read_json",
    "read_latest",
    "scan_checkpoints",
    "sha256_file",
    "step_name",
    "write_latest",
    "zip_crc_problem",
]

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
META = "meta.json"
TRAINER_STATE = "trainer_state.json"
CONFIG = "config.yaml"
LATEST = "latest"
TMP_PREFIX = ".tmp-"
FORMAT = "pmnet-checkpoint-v1"
STEP_RE = re.compile(r"^step_(\d{8,})$")

State = Literal["valid", "incomplete", "corrupt", "unsafe"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, read or used; the message is one line naming the file."""


def step_name(step: int) -> str:
    """Directory name of the checkpoint of optimizer step ``step``: ``step_00001234``."""
    if step < 0:
        raise CheckpointError(f"step={step}: must be >= 0")
    return f"step_{step:08d}"


def parse_step(name: str) -> int | None:
    """The step of a final checkpoint directory name, None for anything else."""
    m = STEP_RE.match(name)
    return int(m.group(1)) if m else None


def rank_file(rank: int) -> str:
    """Name of the per-rank state file (RNG states, dataloader state) of ``rank``."""
    return f"rank_{rank:05d}.pt"


def checkpoints_root(run_dir: str | Path) -> Path:
    """``<run_dir>/checkpoints``; a path that already is a checkpoints directory is returned as is."""
    run_dir = Path(run_dir)
    if run_dir.name == CHECKPOINTS or (not (run_dir / CHECKPOINTS).exists() and (run_dir / LATEST).is_file()):
        return run_dir
    return run_dir / CHECKPOINTS


def sha256_file(path: str | Path, chunk: int = 8 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def list_files(ckpt_dir: str | Path) -> list[str]:
    """Every regular file under ``ckpt_dir`` (relative POSIX paths, sorted), manifest excluded."""
    root = Path(ckpt_dir)
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def hash_files(root: str | Path, rels: list[str], *, fsync: bool = False) -> dict[str, dict[str, Any]]:
    """``{rel: {"size", "sha256"}}`` for the given files (optionally fsync'd first, for crash safety)."""
    root = Path(root)
    out: dict[str, dict[str, Any]] = {}
    for rel in rels:
        path = root / rel
        if fsync:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        out[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so a rename inside it survives a power loss (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing or malformed one is a one-line CheckpointError."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable JSON ({err})") from None


def read_latest(root: str | Path) -> str | None:
    """The checkpoint name the ``latest`` file of a checkpoints directory names (None if absent)."""
    path = Path(root) / LATEST
    try:
        name = path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return name or None


def write_latest(root: str | Path, name: str) -> None:
    """Point ``latest`` at checkpoint ``name`` (atomic replace)."""
    atomic_write_text(Path(root) / LATEST, name + "\n")


def expected_files(meta: dict[str, Any]) -> list[list[str]]:
    """Files a checkpoint of this world size / ZeRO stage must hold; each entry lists accepted names."""
    world = int(meta.get("world_size", 0))
    stage = int(meta.get("zero_stage", 0))
    need: list[list[str]] = [[META], [TRAINER_STATE], [CONFIG]]
    need += [[rank_file(r)] for r in range(world)]
    if stage == 3:
        need += [[f"zero_pp_rank_{r}_mp_rank_00_model_states.pt"] for r in range(world)]
    else:
        need.append(["mp_rank_00_model_states.pt"])
    if stage >= 1:
        need += [
            [f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt", f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"]
            for r in range(world)
        ]
    return need


def zip_crc_problem(path: Path) -> str | None:
    """None if every zip member's CRC32 matches, else which member (or why the zip is unreadable)."""
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                crc = 0
                with z.open(info) as f:
                    while block := f.read(1 << 24):
                        crc = zlib.crc32(block, crc)
                if crc != info.CRC:
                    return f"member {info.filename.split('/', 1)[-1]} fails its CRC32"
    except zipfile.BadZipFile as err:
        m = re.search(r"Bad CRC-32 for file '[^/']*/?([^']*)'", str(err))
        return f"member {m.group(1)} fails its CRC32 (changed bytes)" if m else f"zip structure broken ({err})"
    except (OSError, EOFError) as err:
        return f"unreadable ({err})"
    return None


@dataclass
class CheckpointInfo:
    """One directory under ``checkpoints/`` and what :func:`check_checkpoint` found."""

    path: Path
    name: str
    step: int | None
    state: State
    reason: str
    is_latest: bool = False
    world_size: int | None = None
    zero_stage: int | None = None
    universal: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def check_checkpoint(path: str | Path, *, verify_hashes: bool = True) -> CheckpointInfo:
    """Classify one checkpoint directory as valid, incomplete or corrupt, with the reason."""
    path = Path(path)
    name = path.name
    step = parse_step(name)
    info = CheckpointInfo(path=path, name=name, step=step, state="valid", reason="ok")

    def bad(state: State, reason: str) -> CheckpointInfo:
        info.state, info.reason = state, reason
        return info

    if name.startswith(TMP_PREFIX):
        info.step = parse_step(name[len(TMP_PREFIX) :])
        return bad("incomplete", "temporary directory: the save never finished (crash or kill while writing)")
    if step is None:
        return bad("corrupt", f"{name}: not a checkpoint name (step_XXXXXXXX)")
    if not path.is_dir():
        return bad("corrupt", f"{name}: not a directory")
    mpath = path / MANIFEST
    if not mpath.is_file():
        return bad("corrupt", f"{MANIFEST} missing")
    try:
        manifest = read_json(mpath)
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not a mapping")
    except (CheckpointError, KeyError, TypeError) as err:
        return bad("corrupt", f"{MANIFEST} unreadable: {err}")
    if manifest.get("step") is not None and manifest.get("step") != step:
        return bad("corrupt", f"{MANIFEST} says step {manifest.get('step')} but the directory is {name}")
    for rel, entry in sorted(files.items()):
        fpath = path / rel
        if not fpath.is_file():
            return bad("corrupt", f"{rel}: listed in {MANIFEST} but missing")
        size = fpath.stat().st_size
        if size != entry.get("size"):
            return bad(
                "corrupt", f"{rel}: size {size} bytes, {MANIFEST} says {entry.get('size')} (truncated or changed)"
            )
    unlisted = [rel for rel in list_files(path) if rel not in files]
    if unlisted:
        return bad("corrupt", f"{unlisted[0]}: present but not in {MANIFEST} ({len(unlisted)} unlisted file(s))")
    try:
        meta = read_json(path / META)
    except CheckpointError as err:
        return bad("corrupt", str(err).replace(str(path) + "/", ""))
    info.world_size = meta.get("world_size")
    info.zero_stage = meta.get("zero_stage")
    info.universal = (path / "universal").is_dir()
    for names in expected_files(meta):
        if not any(n in files for n in names):
            return bad(
                "corrupt",
                f"{names[-1]}: expected for world size {info.world_size} / ZeRO stage {info.zero_stage} "
                f"but not in {MANIFEST}",
            )
    if verify_hashes:
        for rel, entry in sorted(files.items()):
            digest = sha256_file(path / rel)
            if digest != entry.get("sha256"):
                why = "file changed, or the manifest lies"
                if rel.endswith(".pt"):
                    crc = zip_crc_problem(path / rel)
                    why = f"corrupt: {crc}" if crc else f"{MANIFEST} lies: the file passes its zip CRC32s"
                return bad("corrupt", f"{rel}: sha256 differs from {MANIFEST} ({why})")
    return _check_pickles(path, files, info)


def _check_pickles(path: Path, files: dict[str, Any], info: CheckpointInfo) -> CheckpointInfo:
    """Every listed pickle file passes the restricted unpickler (milliseconds: metadata only)."""
    from pmnet.checkpoint.ptread import PtReadError
    from pmnet.checkpoint.safeload import PICKLE_SUFFIXES, UnsafeCheckpointError, scan_pickles

    for rel in sorted(files):
        if not rel.endswith(PICKLE_SUFFIXES):
            continue
        try:
            scan_pickles([path / rel])
        except UnsafeCheckpointError as err:
            info.state, info.reason = "unsafe", str(err).replace(str(path) + "/", "")
            return info
        except PtReadError as err:
            info.state, info.reason = "corrupt", str(err).replace(str(path) + "/", "")
            return info
    return info


def _candidates(root: Path) -> list[Path]:
    """Checkpoint directories (final and temporary) under a checkpoints root, oldest step first."""
    out = []
    for entry in root.iterdir() if root.is_dir() else []:
        name = entry.name[len(TMP_PREFIX) :] if entry.name.startswith(TMP_PREFIX) else entry.name
        if entry.is_dir() and parse_step(name) is not None:
            out.append((parse_step(name), entry.name.startswith(TMP_PREFIX), entry.name, entry))
    return [e[-1] for e in sorted(out)]


def scan_checkpoints(run_dir: str | Path, *, verify_hashes: bool = True) -> list[CheckpointInfo]:
    """Every checkpoint directory (final and temporary) of a run, oldest step first."""
    root = checkpoints_root(run_dir)
    latest = read_latest(root)
    infos = []
    for entry in _candidates(root):
        info = check_checkpoint(entry, verify_hashes=verify_hashes)
        info.is_latest = entry.name == latest
        infos.append(info)
    return infos


def find_latest_valid(
    run_dir: str | Path, *, verify_hashes: bool = True, skipped: list[CheckpointInfo] | None = None
) -> Path | None:
    """The newest valid checkpoint of a run (by step), or None; older ones are not even read.

    ``skipped`` (when given) receives the newer checkpoints passed over (incomplete, corrupt,
    unsafe) with their reasons, for the caller to report."""
    for entry in reversed(_candidates(checkpoints_root(run_dir))):
        info = check_checkpoint(entry, verify_hashes=verify_hashes)
        if info.state == "valid":
            return entry
        if skipped is not None:
            skipped.append(info)
    return None


def utc_now() -> str:
    """ISO-8601 UTC time stamp."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
