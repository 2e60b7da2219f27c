"""Stops, crashes and kills, then auto-resume with the same command, end bitwise equal to an uninterrupted
run: 2 gloo CPU ranks through launchers/pretrain.sh, ZeRO-2, attention dropout on (every training step
draws from the torch RNG, so a shifted RNG stream changes the weights), eval on (the val loader is built
and iterated).

All runs share one command line (max_steps=1000, so the LR schedule is the same whatever the
interruption, stopped at STEPS by ``train.stop_at_step``; checkpoints every 2 steps):

* A (module fixture): STEPS steps in one go.
* T: SIGTERM to the launcher's process group mid-run -> a checkpoint and exit 0; relaunch -> STEPS.
* K: three SIGKILLs, each followed by a relaunch of the same command:
  1. rank 1 is SIGKILLed inside the step-4 checkpoint write (a hook of ``tests/fault_train.py``, the two
     ranks started directly, as the launcher's per-rank mode does) -> step 2 stays valid, the relaunch
     resumes there;
  2. the whole job (process group) is SIGKILLed once step 5 is logged, between checkpoints;
  3. the whole job is SIGKILLed as soon as its first checkpoint is published.

The final checkpoints are compared byte for byte: every tensor and value of every ``.pt`` file
(weights, each rank's ZeRO optimizer partition, each rank's python / numpy / torch RNG states and
loader position, read without unpickling code by ``pmnet.checkpoint.ptread``) and the trainer counters.
Every loss any launch logged equals the uninterrupted run's loss at that step (redone steps included).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pmnet.checkpoint.ptread import PtFile, Stub, TensorRef
from pmnet.train.checkpoint import find_latest_valid
from tests.ckpt.helpers import PY, run_ranks
from tests.train.conftest import (
    Result,
    base_overrides,
    finish,
    free_port,
    launch_env,
    pretrain_cmd,
    read_scalars,
    start_launch,
)

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

STEPS = 10


def _overrides(shards: Path, root: Path, name: str) -> list[str]:
    return base_overrides(
        shards, root, name, train__max_steps=1000, train__stop_at_step=STEPS, deepspeed__zero_stage=2,
        checkpoint__interval=2, checkpoint__keep_last=10, model__attention_dropout=0.1, eval__interval=5,
        eval__max_batches=2,
    )  # fmt: skip


def _cmd(shards: Path, root: Path, name: str) -> list[str]:
    return pretrain_cmd("configs/demo.yaml", _overrides(shards, root, name), "--cpu-ranks", "2")


def _launch(
    cmd: list[str], log: Path, train_log: Path, kill_when: Callable[[str], bool] | None = None, **env: str
) -> tuple[Result, str, bool]:
    """Run the command (a fresh MASTER_PORT in the environment, as a scheduler sets it); with
    ``kill_when``, SIGKILL the whole job once it returns True on the train.log text this launch added.
    Returns the result, that text and whether the job was killed while still running."""
    start = train_log.stat().st_size if train_log.is_file() else 0
    t0 = time.time()
    # one thread per rank in every launch: the fault run (run_ranks) uses one too, and the numbers match bitwise
    p = start_launch(cmd, launch_env(MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1", **env), log)
    killed = False

    def new_text() -> str:
        if not train_log.is_file():
            return ""
        with open(train_log, encoding="utf-8", errors="replace") as fh:
            fh.seek(start)
            return fh.read()

    while kill_when is not None and p.poll() is None and time.time() - t0 < 900:
        if kill_when(new_text()):
            killed = _kill_job(p.pid)
            break
        time.sleep(0.05)
    return finish(p, log, t0), new_text(), killed


def _kill_job(pid: int) -> bool:
    """SIGKILL the launcher script and everything under it at once, as a preemption does (the
    DeepSpeed launcher runs in its own session, so the script's process group alone is not the job);
    wait until they are gone. False when the job had already ended."""
    import psutil

    try:
        top = psutil.Process(pid)
        procs = [*top.children(recursive=True), top]
    except psutil.NoSuchProcess:
        return False
    if top.status() == psutil.STATUS_ZOMBIE:
        return False
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    t0 = time.time()
    while time.time() - t0 < 30 and any(_alive(proc) for proc in procs[:-1]):  # the script: finish() reaps it
        time.sleep(0.05)
    return True


def _alive(proc: Any) -> bool:
    import psutil

    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _resumed_step(text: str) -> int | None:
    for line in text.splitlines():
        if "resumed from" in line and " at step " in line:
            return int(line.split(" at step ")[1].split()[0])
    return None


def checkpoint_leaves(ckpt: Path) -> dict[str, Any]:
    """Every value in every .pt file of a checkpoint, by path; tensors as (dtype, shape, sha256 of the bytes)."""
    out: dict[str, Any] = {}
    for f in sorted(ckpt.glob("*.pt")):
        with PtFile(f) as pf:

            def walk(o: Any, path: str, pf: PtFile = pf) -> None:
                if isinstance(o, TensorRef):
                    out[path] = (o.dtype, o.shape, hashlib.sha256(pf.read(o).tobytes()).hexdigest())
                elif isinstance(o, dict):
                    for k, v in o.items():
                        walk(v, f"{path}/{k}")
                elif isinstance(o, list | tuple):
                    for i, v in enumerate(o):
                        walk(v, f"{path}[{i}]")
                elif isinstance(o, Stub):
                    walk(dict(vars(o)), f"{path}<{o.qualname}>")
                else:
                    out[path] = repr(o)  # repr: floats compare bit-exactly (nan, -0.0)

            walk(pf.obj, f.name)
    return out


def assert_checkpoints_bitwise_equal(a: Path, b: Path) -> None:
    la, lb = checkpoint_leaves(a), checkpoint_leaves(b)
    kinds = ("module/", "optim_states.pt", "/rng/", "/dataloader/")
    for kind in kinds:  # the comparison covers what it claims to
        assert any(kind in k for k in la), f"no {kind!r} entries in {a}"
    diff = sorted(k for k in la.keys() | lb.keys() if la.get(k) != lb.get(k))
    assert not diff, f"{len(diff)} of {len(la)} values differ between {a} and {b}, e.g. {diff[:8]}"
    ta, tb = (json.loads((c / "trainer_state.json").read_text()) for c in (a, b))
    assert ta == tb


def _losses(run: Path) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for step, value in read_scalars(run / "tb")["train/loss"]:
        out.setdefault(step, []).append(value)
    return out


@pytest.fixture(scope="module")
def uninterrupted(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume_runs")
    res, _, _ = _launch(_cmd(shards, root, "a"), root / "a.log", root / "a" / "train.log")
    assert res.rc == 0, res.explain()
    return root / "a"


def _final(run: Path) -> Path:
    return run / "checkpoints" / f"step_{STEPS:08d}"


def test_sigterm_then_resume_equals_uninterrupted(shards: Path, uninterrupted: Path, tmp_path: Path) -> None:
    cmd, train_log = _cmd(shards, tmp_path, "t"), tmp_path / "t" / "train.log"
    log = tmp_path / "t1.log"
    t0 = time.time()
    p = start_launch(cmd, launch_env(MASTER_PORT=str(free_port())), log)
    while time.time() - t0 < 240 and p.poll() is None:
        if train_log.is_file() and "step      3/" in train_log.read_text():
            break
        time.sleep(0.1)
    assert p.poll() is None, finish(p, log, t0).explain()
    os.killpg(p.pid, signal.SIGTERM)  # the whole process group, as `timeout` and SLURM do
    t1 = finish(p, log, t0)
    assert t1.rc == 0, t1.explain()
    text = train_log.read_text()
    assert "stop requested by a signal" in text and "training ended (signal)" in text, t1.explain()
    stopped = find_latest_valid(tmp_path / "t")
    assert stopped is not None, t1.explain()
    s = int(stopped.name.split("_")[1])
    assert 3 <= s < STEPS, f"SIGTERM came too late to test a resume (stopped at step {s})"
    t2, text2, _ = _launch(cmd, tmp_path / "t2.log", train_log)
    assert t2.rc == 0, t2.explain()
    assert _resumed_step(text2) == s, t2.explain()
    started = [ln for ln in text2.splitlines() if "first step done" in ln]  # the restart's cost, by phase
    assert len(started) == 1 and "resume " in started[0] and "first step " in started[0], started
    assert_checkpoints_bitwise_equal(_final(uninterrupted), _final(tmp_path / "t"))


def test_three_sigkills_then_resume_bitwise_equal(shards: Path, uninterrupted: Path, tmp_path: Path) -> None:
    cmd, run = _cmd(shards, tmp_path, "k"), tmp_path / "k"
    train_log, root = run / "train.log", run / "checkpoints"

    # 1. rank 1 dies inside the step-4 checkpoint write: step 2 stays the valid one
    fault = [PY, "-m", "tests.fault_train", "configs/demo.yaml", *_overrides(shards, tmp_path, "k"),
             "--kill-in-checkpoint", "4:1"]  # fmt: skip
    codes = run_ranks(fault, 2, lambda r: tmp_path / f"k1.rank{r}.log", timeout=300, stop_all_on_failure=True)
    k1 = Result(-1, (tmp_path / "k1.rank1.log").read_text(errors="replace"), 0.0)
    assert codes[1] == -signal.SIGKILL and "killing rank 1 inside the step-4" in k1.out, f"{codes}\n{k1.explain()}"
    assert (root / "latest").read_text().strip() == "step_00000002", k1.explain()
    assert find_latest_valid(run).name == "step_00000002"
    assert not (root / "step_00000004").exists()
    assert any(p.name.startswith(".tmp") for p in root.iterdir()), "the half-written checkpoint should be left"

    # 2. resume from 2; SIGKILL the job once step 5 is logged (mid-interval: steps after 4 are lost)
    k2, text2, killed = _launch(cmd, tmp_path / "k2.log", train_log, lambda t: "step      5/" in t)
    assert killed, f"the run ended before the kill\n{k2.explain()}"
    assert _resumed_step(text2) == 2, k2.explain()

    # 3. resume from the newest valid checkpoint; SIGKILL the job once it has published a checkpoint
    s2 = int(find_latest_valid(run).name.split("_")[1])
    assert 4 <= s2 < STEPS - 2, f"the second kill came too late (checkpoint {s2})\n{k2.explain()}"
    k3, text3, killed = _launch(cmd, tmp_path / "k3.log", train_log, lambda t: "checkpoint saved:" in t)
    assert killed, f"the run ended before the kill\n{k3.explain()}"
    assert _resumed_step(text3) == s2, k3.explain()

    # 4. resume to the end
    s3 = int(find_latest_valid(run).name.split("_")[1])
    assert s2 < s3 < STEPS, k3.explain()
    k4, text4, _ = _launch(cmd, tmp_path / "k4.log", train_log)
    assert k4.rc == 0, k4.explain()
    assert _resumed_step(text4) == s3, k4.explain()

    assert_checkpoints_bitwise_equal(_final(uninterrupted), _final(run))
    # every step any launch logged (redone ones too) had the uninterrupted run's loss (a killed launch
    # may not have flushed its last events; the last launch wrote all of its steps)
    ref, got = _losses(uninterrupted), _losses(run)
    assert set(range(s3 + 1, STEPS + 1)) <= set(got), sorted(got)
    bad = {s: (v, ref[s]) for s, vs in got.items() for v in vs if v != ref[s][0]}
    assert not bad, bad
