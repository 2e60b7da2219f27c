"""A sharder killed with SIGKILL mid-run, rerun with the same command, equals an uninterrupted run.

The kill is real (``os.kill(pid, SIGKILL)`` on the tool's main process, with 2 workers that
must die with it), and it lands after some work units finished and while others are partial.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_pipeline.readback import read_split_samples
from data_pipeline.sharding import staging_dir
from tests.data.helpers import REPO, TOOL, load_cli, run_tool

cli_main = load_cli().main


def _corpus(shared: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for p in sorted((shared / "web").glob("*.json*")):
        shutil.copy(p, dest / p.name)
    for p in sorted((shared / "books").glob("pg*.txt")):
        shutil.copy(p, dest / p.name)
    return dest


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted(shared_data: Path, tmp_path: Path) -> None:
    corpus = _corpus(shared_data, tmp_path / "corpus")
    # Small text units: the 13 books become several units, so there is something to resume.
    args = [str(corpus), "--sample-bytes", "2049", "--val-fraction", "0.1", "--workers", "2",
            "--text-unit-bytes", "1500000"]  # fmt: skip

    killed_out = tmp_path / "killed"
    staging = staging_dir(killed_out)
    proc = subprocess.Popen(
        [sys.executable, str(TOOL), *args, "--out", str(killed_out), "--no-progress"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((staging / "units").glob("u*.json"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the tool ended before it could be killed: {proc.stderr.read() if proc.stderr else ''}"
    worker_pids = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # The pool workers die with their parent (they would otherwise keep writing into staging).
    t0 = time.monotonic()
    while any(_alive(p) for p in worker_pids) and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    assert not any(_alive(p) for p in worker_pids)
    done = sorted(p.stem for p in (staging / "units").glob("u*.json"))
    assert not killed_out.exists()  # nothing published
    n_units = len(json.loads((staging / "settings.json").read_text())["inputs"])  # inputs >= units
    assert 2 <= len(done) < n_units

    res = run_tool(*args, "--out", killed_out)
    assert res.returncode == 0, res.stderr
    assert f"resuming: {len(done)} of " in res.stderr
    assert not staging.exists()

    clean_out = tmp_path / "clean"  # the uninterrupted run, in this process (saves an interpreter start)
    assert cli_main([*args, "--out", str(clean_out), "--no-progress"]) == 0

    for split in ("train", "val"):
        assert read_split_samples(killed_out / split) == read_split_samples(clean_out / split)
        assert _tree(killed_out / split) == _tree(clean_out / split)  # byte-identical shards and index
    m_killed = json.loads((killed_out / "manifest.json").read_text())
    m_clean = json.loads((clean_out / "manifest.json").read_text())
    for m in (m_killed, m_clean):
        m.pop("created")
    assert m_killed == m_clean


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_ctrl_c_is_one_line_and_keeps_finished_units(shared_data: Path, tmp_path: Path) -> None:
    """SIGINT to the whole process group (what Ctrl-C does): no traceback from any worker."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for copy in range(3):  # enough work that the interrupt lands mid-run
        for p in sorted((shared_data / "books").glob("pg*.txt")):
            shutil.copy(p, corpus / f"{copy}_{p.name}")
    out = tmp_path / "out"
    args = [str(corpus), "--out", str(out), "--workers", "2", "--text-unit-bytes", "1000000"]
    proc = subprocess.Popen(
        [sys.executable, str(TOOL), *args, "--no-progress"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    units = staging_dir(out) / "units"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and not list(units.glob("u*.json")):
        time.sleep(0.02)
    assert proc.poll() is None, "the tool ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["shard_dataset: interrupted; rerun the same command to resume"]
    assert not out.exists() and list(units.glob("u*.json"))  # finished units kept for the rerun


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_a_killed_worker_fails_the_run_in_one_line(shared_data: Path, tmp_path: Path) -> None:
    """The OOM killer takes one worker: the run stops with one line instead of hanging."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for copy in range(3):
        for p in sorted((shared_data / "books").glob("pg*.txt")):
            shutil.copy(p, corpus / f"{copy}_{p.name}")
    out = tmp_path / "out"
    args = [str(corpus), "--out", str(out), "--workers", "2", "--text-unit-bytes", "1000000"]
    proc = subprocess.Popen([sys.executable, str(TOOL), *args, "--no-progress"], cwd=REPO, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    units = staging_dir(out) / "units"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and not list(units.glob("u*.json")):
        time.sleep(0.02)
    assert proc.poll() is None, "the tool ended before a worker could be killed"
    workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    os.kill(int(workers[0]), signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "a worker process died" in lines[0] and "rerun the same command" in lines[0]
    assert not out.exists()
