"""Re-hash shards against their ``index.json``: streaming does not re-hash local shards itself.

* :func:`verify_shards`: every file of a dataset, every time (``tools/shard_dataset.py --verify``,
  the checkpoint audit).
* :func:`verify_stream`: what training runs before it builds a dataset (``data.verify_hashes``,
  on by default). Each shard file is hashed once: a file that passed is remembered in
  ``<split>/.pmnet_verified.json`` keyed by its size, mtime, ctime and inode, so a restart
  only stats the files, while a rewritten, replaced or copied file is hashed again. Under
  torch.distributed the ranks split the files to hash (rank 0 decides which, from its view
  of the cache) and all of them stop with the same one-line error naming the first bad file.

Why not streaming's own ``validate_hash`` (measured with mosaicml-streaming 0.13.0, one flipped
byte in one of two zstd shards, 8,154 samples): through a remote + local cache, the epoch simply
ends after 363 samples (the checksum error is only printed by a download thread's callback; the
process exits 0); on a local stream the error reaches the main thread, but after 370 samples were
already read, i.e. mid-run. Only one recorded hash is computed per file, the fastest one
(xxh64 by default; ``sha1``/``sha256`` cost several times more).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["CACHE_NAME", "split_dirs", "verify_shards", "verify_stream"]

_CHUNK = 1 << 20
CACHE_NAME = ".pmnet_verified.json"
# fastest first: one recorded hash is enough to catch a changed byte
_PREFERENCE = ("xxh3_64", "xxh64", "xxh128", "xxh32", "md5", "sha1", "blake2b", "sha256", "sha512")


def split_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """The MDS dataset directories under ``root``: itself if it has an index, else train/ and val/."""
    root = Path(root)
    if (root / "index.json").exists():
        return [root]
    return [root / s for s in ("train", "val") if (root / s / "index.json").exists()]


def _read_index(d: Path) -> dict[str, Any]:
    with open(d / "index.json", encoding="utf-8") as f:
        return json.load(f)


def _shard_files(d: Path, index: dict[str, Any], missing_ok: bool) -> tuple[list[tuple[Path, dict]], list[str]]:
    """(present files with their index entries, problems for shards with no file at all)."""
    files, problems = [], []
    for shard in index.get("shards", []):
        zip_info, raw_info = shard.get("zip_data"), shard.get("raw_data")
        present = [(d / i["basename"], i) for i in (zip_info, raw_info) if i and (d / i["basename"]).exists()]
        files += present
        if not present and not missing_ok:
            name = (zip_info or raw_info or {}).get("basename", "?")
            problems.append(f"{d / name}: missing")
    return files, problems


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
            index = _read_index(d)
        except (OSError, ValueError) as err:
            problems.append(f"{d / 'index.json'}: unreadable ({err})")
            continue
        files, missing = _shard_files(d, index, missing_ok)
        problems += missing
        for path, info in files:
            problem, _ = _check_file(path, info)
            if problem:
                problems.append(problem)
    return problems


def _check_file(path: Path, info: dict[str, Any], *, all_hashes: bool = True) -> tuple[str | None, str | None]:
    """(problem or None, the algorithm that vouched for the file or None when none could)."""
    size = path.stat().st_size
    if info.get("bytes") is not None and size != info["bytes"]:
        return f"{path}: size {size} != {info['bytes']} recorded in index.json", None
    want: dict[str, str] = info.get("hashes") or {}
    algos = [a for a in _PREFERENCE if a in want] + sorted(a for a in want if a not in _PREFERENCE)
    hashers = {a: h for a in algos if (h := _hasher(a)) is not None}
    if not all_hashes:
        hashers = dict(list(hashers.items())[:1])
    if not hashers:
        return None, None
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    for algo, h in hashers.items():
        if h.hexdigest() != want[algo]:
            return f"{path}: {algo} mismatch (file changed or corrupt)", None
    return None, next(iter(hashers))


def _hasher(algo: str) -> Any:
    if algo in hashlib.algorithms_available:
        return hashlib.new(algo)
    if algo.startswith("xxh"):
        import xxhash

        return getattr(xxhash, algo)()
    return None


# ---------------------------------------------------------------- verify once, cached, ranks split the work
def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _load_cache(d: Path) -> dict[str, Any]:
    try:
        data = json.loads((d / CACHE_NAME).read_text(encoding="utf-8"))
        return data["files"] if isinstance(data.get("files"), dict) else {}
    except (OSError, ValueError, KeyError, AttributeError):
        return {}


def _cached_ok(entry: Any, path: Path, info: dict[str, Any]) -> bool:
    """The file is unchanged since it verified, against the hash the index records now."""
    if not isinstance(entry, dict):
        return False
    algo = entry.get("algo")
    try:
        return entry.get("stamp") == _stamp(path) and (info.get("hashes") or {}).get(algo) == entry.get("digest")
    except OSError:
        return False


def _save_cache(d: Path, files: dict[str, Any]) -> None:
    """Best effort (a read-only directory just means hashing again next time); atomic replace."""
    tmp = d / f"{CACHE_NAME}.tmp-{os.getpid()}"
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"version": 1, "files": dict(sorted(files.items()))}, indent=0), encoding="utf-8")
        os.replace(tmp, d / CACHE_NAME)
    except OSError:
        tmp.unlink(missing_ok=True)


def _dist() -> Any:
    """torch.distributed when a process group is up (never imports torch itself)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def verify_stream(
    d: str | os.PathLike[str],
    *,
    missing_ok: bool = False,
    use_cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Problems of one split directory (empty = all good), hashing only files not verified before.

    Every rank calls it when torch.distributed is initialised (a collective): rank 0 lists the
    files to hash, each rank hashes its share, rank 0 records the good ones in the cache, and
    every rank returns the same problems. ``use_cache=False`` hashes every file (nothing recorded).
    The cache file lives in ``cache_dir`` (default ``d``; a read-only ``d`` needs another place).
    """
    d = Path(d)
    cdir = Path(cache_dir) if cache_dir is not None else d
    dist = _dist()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    todo: list[str] = []
    problems: list[str] = []
    cache: dict[str, Any] = {}
    if rank == 0:
        try:
            index = _read_index(d)
            files, problems = _shard_files(d, index, missing_ok)
            cache = _load_cache(cdir) if use_cache else {}
            todo = [i["basename"] for p, i in files if not (use_cache and _cached_ok(cache.get(i["basename"]), p, i))]
        except (OSError, ValueError) as err:
            problems = [f"{d / 'index.json'}: unreadable ({err})"]
    if dist:
        box = [(todo, problems)]
        dist.broadcast_object_list(box, src=0)
        todo, problems = box[0]
    if problems:
        return problems
    mine = todo[rank::world]
    found, entries = _hash_some(d, mine)
    if dist:
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, (found, entries))
    else:
        parts = [(found, entries)]
    problems = [p for f, _ in parts for p in f]
    if rank == 0 and use_cache and todo:
        for _, e in parts:
            cache.update(e)
        keep = {name for name in cache if (d / name).exists()}
        _save_cache(cdir, {k: v for k, v in cache.items() if k in keep})
    return sorted(problems)


def _hash_some(d: Path, names: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Hash the named files of split ``d``: (problems, cache entries of the files that passed)."""
    try:
        index = _read_index(d)
    except (OSError, ValueError) as err:
        return [f"{d / 'index.json'}: unreadable ({err})"], {}
    infos = {}
    for shard in index.get("shards", []):
        for key in ("zip_data", "raw_data"):
            if shard.get(key):
                infos[shard[key]["basename"]] = shard[key]
    problems, entries = [], {}
    for name in names:
        path, info = d / name, infos.get(name)
        try:
            if info is None:
                raise OSError("not in index.json any more")
            stamp = _stamp(path)
            problem, algo = _check_file(path, info, all_hashes=False)
        except OSError as err:
            problems.append(f"{path}: unreadable ({err})")
            continue
        if problem:
            problems.append(problem)
        elif algo is not None and _stamp(path) == stamp:  # unchanged while it was read
            entries[name] = {"stamp": stamp, "algo": algo, "digest": info["hashes"][algo]}
    return problems, entries
