"""The sharding run: check inputs, resume or refuse, run units in parallel, merge, publish.

Layout of a finished output ``OUT``::

    OUT/manifest.json             inputs (path, size, sha256), settings, counts, byte ids, version
    OUT/train/index.json          merged index over OUT/train/u00000/, u00001/, ...
    OUT/val/index.json            (absent when no document went to val)

Until the run completes everything lives in the sibling staging directory
``.OUT.partial`` (with ``settings.json`` and one done-marker per finished unit), so an existing
output is never touched by a failed or interrupted run, and rerunning the same command resumes:
finished units are skipped, partial ones discarded. The finished staging directory is renamed
onto ``OUT`` at the end (the old output, with ``--overwrite``, is moved aside first, then deleted).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import multiprocessing as mp
import os
import queue
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from data_pipeline.errors import DataPipelineError, ShardVerifyError
from data_pipeline.manifest import (
    MANIFEST_NAME,
    TOOL_NAME,
    TOOL_VERSION,
    ShardSettings,
    byte_ids,
    describe_differences,
    input_identity,
    read_json,
    write_json_atomic,
)
from data_pipeline.sources import check_input, expand_inputs
from data_pipeline.verify import verify_shards
from data_pipeline.writer import SPLITS, WorkUnit, discard_unit, merge_split_index, plan_units, process_unit

__all__ = ["ShardJob", "run_sharding", "staging_dir", "verify_output"]

_PROGRESS_EVERY_BYTES = 1 << 20
_LOCK_WAIT_S = 10.0  # a killed run's workers may need a moment to die and release the lock


@dataclass
class ShardJob:
    """One invocation of the shard tool."""

    inputs: list[str]
    output: str
    settings: ShardSettings = field(default_factory=ShardSettings)
    workers: int = 1
    overwrite: bool = False
    verify: bool = False
    progress: bool = True


def _is_old_copy(path: Path, out: Path) -> bool:
    return any(p.parent == out.parent and p.name.startswith(f".{out.name}.old-") for p in path.parents)


def staging_dir(output: Path) -> Path:
    """Where an unfinished run of ``output`` keeps its work (a hidden sibling)."""
    return output.parent / f".{output.name}.partial"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_sharding(job: ShardJob) -> dict[str, Any]:
    """Run (or resume, or confirm up to date) one sharding job; return the manifest."""
    settings = job.settings
    settings.validate()
    if job.workers < 1:
        raise DataPipelineError(f"--workers {job.workers}: must be >= 1")
    inputs = expand_inputs(job.inputs)
    out = Path(job.output).resolve()
    # An output inside an input directory must not become input (its index.json would read as
    # jsonl): files under the output, its staging directory, or an old copy are skipped.
    own = (out, staging_dir(out))
    inputs = [p for p in inputs if not any(p == o or o in p.parents for o in own) and not _is_old_copy(p, out)]
    if not inputs:
        raise DataPipelineError(f"INPUT {' '.join(job.inputs)}: no input left outside the output directory")
    for path in inputs:
        check_input(path)
    state = {"settings": settings.to_dict(), "inputs": [input_identity(p) for p in inputs]}
    # Refusals and "up to date" are decided read-only, before even the lock file is created.
    done = _preflight(job, out, state)
    if done is not None:
        return done
    with _exclusive(out):
        done = _preflight(job, out, state)  # again: another run may have finished meanwhile
        if done is not None:
            return done
        return _run_locked(job, inputs, out, state)


def lock_path(out: Path) -> Path:
    """The lock file of a run writing ``out`` (a hidden sibling, present only while a run holds it)."""
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One run per output at a time: an flock on the sibling ``.OUT.lock``, removed on release.

    The kernel drops the flock when the holder dies, so a crashed run never blocks the next one
    (its lock file stays until the next run of the same output ends). Removing the file on
    release is safe because a run that got the flock checks that the path still names the file
    it locked (another run may have removed it meanwhile) and otherwise starts over.
    """
    path = lock_path(out)
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise DataPipelineError(f"--out {out}: cannot write ({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() > deadline:
                raise DataPipelineError(f"--out {out}: another shard_dataset run is writing it") from None
            time.sleep(0.1)
            continue
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder before us removed it: lock the new file
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding the flock: a waiter then sees a stale file and retries
        os.close(fd)


def _preflight(job: ShardJob, out: Path, state: dict[str, Any]) -> dict[str, Any] | None:
    """Without writing anything: the manifest if up to date, a refusal, or None (work to do)."""
    staging = staging_dir(out)
    if out.exists():
        manifest_path = out / MANIFEST_NAME
        if manifest_path.exists():
            old = read_json(manifest_path)
            old_state = {"settings": old.get("settings"), "inputs": old.get("input_identities")}
            if old_state == state and not job.overwrite:
                _verify_or_raise(out, job.verify)
                n = old["totals"]["samples"]
                _log(f"{out}: up to date ({n['train']} train + {n['val']} val samples); nothing to do")
                return old
            if not job.overwrite:
                raise DataPipelineError(
                    f"output {out} was written with other settings ({describe_differences(old_state, state)}); "
                    "use --overwrite to replace it"
                )
        elif not out.is_dir():
            raise DataPipelineError(f"--out {out}: exists and is not a directory")
        elif any(out.iterdir()):
            raise DataPipelineError(
                f"--out {out}: a non-empty directory that is not a shard_dataset output (no {MANIFEST_NAME}); "
                "choose another path or empty it"
            )
    if staging.exists():
        settings_path = staging / "settings.json"
        old_state = read_json(settings_path) if settings_path.exists() else {}
        if old_state != state and not job.overwrite:
            raise DataPipelineError(
                f"an interrupted run with other settings is in {staging} "
                f"({describe_differences(old_state, state)}); use --overwrite to discard it"
            )
    return None


def _run_locked(job: ShardJob, inputs: list[Path], out: Path, state: dict[str, Any]) -> dict[str, Any]:
    settings = job.settings
    staging = staging_dir(out)
    if staging.exists():
        settings_path = staging / "settings.json"
        if not settings_path.exists() or read_json(settings_path) != state:
            shutil.rmtree(staging)  # only reached with --overwrite (_preflight refuses otherwise)

    try:
        for sub in ("units", "partial", *SPLITS):
            (staging / sub).mkdir(parents=True, exist_ok=True)
        write_json_atomic(staging / "settings.json", state)
    except OSError as err:
        raise DataPipelineError(f"--out {out}: cannot write ({err.strerror or err})") from None

    units = plan_units(inputs, settings.text_unit_bytes)
    stats = _run_units(units, settings, staging, job.workers, job.progress)
    manifest = _finish(units, stats, state, staging, out, job)
    return manifest


def _run_units(
    units: list[WorkUnit], settings: ShardSettings, staging: Path, workers: int, show_progress: bool
) -> dict[str, dict[str, Any]]:
    stats: dict[str, dict[str, Any]] = {}
    pending: list[WorkUnit] = []
    for unit in units:
        marker = staging / "units" / f"{unit.name}.json"
        if marker.exists():
            stats[unit.name] = read_json(marker)
        else:
            discard_unit(staging, unit)
            pending.append(unit)
    total = sum(u.size for u in units)
    done_bytes = sum(u.size for u in units if u.name in stats)
    if stats:
        _log(f"resuming: {len(stats)} of {len(units)} work units already done")

    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: worker processes are forked after this
    bar = tqdm(
        total=total,
        initial=done_bytes,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="shard",
        disable=not show_progress,
        file=sys.stderr,
        smoothing=0.1,
        dynamic_ncols=True,
        # In a log file (no terminal) a line every 10 s, not ten per second.
        mininterval=0.2 if sys.stderr.isatty() else 10.0,
    )
    try:
        if workers == 1 or len(pending) <= 1:
            for unit in pending:
                stats[unit.name] = process_unit(unit, settings, staging, bar.update)
        else:
            stats.update(_run_pool(pending, settings, staging, workers, bar))
    finally:
        bar.close()
    return stats


def _run_pool(
    pending: list[WorkUnit], settings: ShardSettings, staging: Path, workers: int, bar: Any
) -> dict[str, dict[str, Any]]:
    import streaming  # noqa: F401  (imported once here: forked workers inherit it, ~2-6 s each otherwise)

    # fork: workers inherit the imported modules. ProcessPoolExecutor rather than
    # multiprocessing.Pool: a worker killed by the OOM killer breaks the pool (BrokenProcessPool)
    # instead of leaving its task pending forever.
    ctx = mp.get_context("fork")
    progress_q = ctx.Queue()
    results: dict[str, dict[str, Any]] = {}
    # Largest units first: the run ends sooner when the big ones do not start last.
    order = sorted(pending, key=lambda u: (-u.size, u.index))
    ex = ProcessPoolExecutor(min(workers, len(pending)), mp_context=ctx, initializer=_init_worker,
                             initargs=(progress_q,))  # fmt: skip
    try:
        futures = {ex.submit(_worker_unit, u, settings, staging): u for u in order}
        while futures:
            _drain(progress_q, bar, timeout=0.2)
            for fut in [f for f in futures if f.done()]:
                unit = futures.pop(fut)
                try:
                    results[unit.name] = fut.result()  # re-raises a worker's DataPipelineError
                except BrokenProcessPool:
                    raise DataPipelineError(
                        f"a worker process died (killed, out of memory?) while units such as {unit.name} "
                        f"({unit.inputs[0]}) were in progress; rerun the same command to resume"
                    ) from None
        _drain(progress_q, bar, timeout=0.05)  # the last messages: the bar ends at 100%
    except BaseException:
        # Error or Ctrl-C: stop now. Workers ignore SIGINT and would finish their unit first.
        for proc in list(getattr(ex, "_processes", {}).values()):
            proc.kill()
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
    return results


def _drain(q: Any, bar: Any, timeout: float) -> None:
    try:
        bar.update(q.get(timeout=timeout))
        while True:
            bar.update(q.get_nowait())
    except queue.Empty:
        pass


_worker_q: Any = None


def _init_worker(q: Any) -> None:
    global _worker_q
    _worker_q = q
    # Ctrl-C reaches the whole process group: only the parent handles it (and terminates the
    # pool), so the user sees one line instead of a traceback per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Die with the parent: an orphaned worker of a killed run would keep writing into staging
    # while the rerun redoes the same unit. PR_SET_PDEATHSIG = 1 (Linux).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    if os.getppid() == 1:  # the parent already died between fork and prctl
        os._exit(1)


def _worker_unit(unit: WorkUnit, settings: ShardSettings, staging: Path) -> dict[str, Any]:
    pending = 0

    def progress(n: int) -> None:
        # Batch the messages: one queue put per MiB keeps IPC out of the hot loop.
        nonlocal pending
        pending += n
        if pending >= _PROGRESS_EVERY_BYTES:
            _worker_q.put(pending)
            pending = 0

    stats = process_unit(unit, settings, staging, progress)
    if pending:
        _worker_q.put(pending)
    return stats


def _finish(
    units: list[WorkUnit],
    stats: dict[str, dict[str, Any]],
    state: dict[str, Any],
    staging: Path,
    out: Path,
    job: ShardJob,
) -> dict[str, Any]:
    names = [u.name for u in units]
    shards = {}
    for split in SPLITS:
        split_dir = staging / split
        shards[split] = merge_split_index(split_dir, names)
        if shards[split] == 0:
            shutil.rmtree(split_dir, ignore_errors=True)
    manifest = _build_manifest(units, stats, state, shards)
    write_json_atomic(staging / MANIFEST_NAME, manifest)
    shutil.rmtree(staging / "partial", ignore_errors=True)
    if job.verify:
        _verify_or_raise(staging, True)
    shutil.rmtree(staging / "units", ignore_errors=True)
    (staging / "settings.json").unlink(missing_ok=True)
    _publish(staging, out)
    t = manifest["totals"]
    _log(
        f"{out}: {t['samples']['train']} train + {t['samples']['val']} val samples of {job.settings.sample_bytes} "
        f"bytes from {t['documents']['train'] + t['documents']['val']} documents "
        f"({sum(t['dropped'].values())} dropped)"
    )
    for split in SPLITS:
        if t["samples"][split] == 0:
            # an empty split has no directory: a run that names it as a stream would fail later
            _log(f"note: the {split} split is empty, so {out}/{split} was not written (see --val-fraction)")
    return manifest


def _build_manifest(
    units: list[WorkUnit], stats: dict[str, dict[str, Any]], state: dict[str, Any], shards: dict[str, int]
) -> dict[str, Any]:
    totals: dict[str, Any] = {
        "documents": dict.fromkeys(SPLITS, 0),
        "bytes": dict.fromkeys(SPLITS, 0),
        "samples": dict.fromkeys(SPLITS, 0),
        "tail_bytes_dropped": dict.fromkeys(SPLITS, 0),
        "dropped": {},
        "shards": shards,
    }
    inputs: list[dict[str, Any]] = []
    for unit in units:
        s = stats[unit.name]
        for key in ("documents", "bytes", "samples", "tail_bytes_dropped"):
            for split in SPLITS:
                totals[key][split] += s[key][split]
        for reason, n in s["dropped"].items():
            totals["dropped"][reason] = totals["dropped"].get(reason, 0) + n
        inputs.extend({**i, "unit": unit.name} for i in s["inputs"])
    return {
        "tool": TOOL_NAME,
        "tool_version": TOOL_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "byte_ids": byte_ids(),
        "sample_bytes": state["settings"]["sample_bytes"],
        "settings": state["settings"],
        "filters": {k: state["settings"][k] for k in ("min_int_score", "min_chars", "language")},
        "column": "ids",
        "splits": [s for s in SPLITS if shards[s]],
        "totals": totals,
        "inputs": inputs,
        "input_identities": state["inputs"],
        "units": [stats[u.name] for u in units],
    }


def _verify_or_raise(root: Path, verify: bool) -> None:
    if not verify:
        return
    problems = verify_shards(root)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ShardVerifyError(f"verify: {problems[0]}{more}")
    _log(f"verify: all shard hashes match ({root})")


def verify_output(output: str | os.PathLike[str]) -> dict[str, Any]:
    """Re-hash every shard of a finished output against its index.json (no input needed); return
    its manifest. Raises :class:`ShardVerifyError` naming the first bad file."""
    out = Path(output)
    if not (out / MANIFEST_NAME).is_file():
        what = "does not exist" if not out.exists() else f"is not a shard_dataset output (no {MANIFEST_NAME})"
        raise DataPipelineError(f"--out {out}: {what}")
    manifest = read_json(out / MANIFEST_NAME)
    _verify_or_raise(out, True)
    return manifest


def _publish(staging: Path, out: Path) -> None:
    """Move the finished staging directory onto ``out`` with renames only."""
    old = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
