"""The rendezvous port: `make demo` with its old fixed port 29517 taken still runs, and a launch whose
picked port another process takes before rank 0 binds it (EADDRINUSE) is relaunched on a fresh port.

A given port that is taken is one error line: tests/train/test_engine_config.py.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.train.conftest import REPO, SAMPLE_BYTES, launch_env, run_launch


@contextlib.contextmanager
def _listening(port: int) -> Iterator[int]:
    """Hold ``port`` (0: any) as another job's rendezvous server would; an already busy port is just as busy."""
    with socket.socket() as s:
        try:
            s.bind(("", port))
            s.listen()
            yield s.getsockname()[1]
        except OSError:
            yield port


@pytest.mark.slow
@pytest.mark.multiprocess
def test_demo_runs_with_its_old_port_taken_and_after_losing_the_race(shards: Path, tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo_runs"
    demo_dir.mkdir()
    (demo_dir / "demo-data").symlink_to(shards)  # "already sharded": the demo skips its sharding step
    quick = [f"data.sample_bytes={SAMPLE_BYTES}", "train.max_steps=4", "eval.interval=2", "eval.max_batches=2",
             "checkpoint.interval=0", "logging.console_interval=1"]  # fmt: skip
    with _listening(29517), _listening(0) as lost:
        # PMNET_TEST_FIRST_PORT: the launcher's first pick is a port that is (by then) taken
        env = launch_env(PMNET_DEMO_DIR=str(demo_dir), PMNET_TEST_FIRST_PORT=str(lost))
        res = run_launch(["bash", "launchers/demo.sh", *quick], env)
    assert res.rc == 0, res.explain()
    relaunch = [ln for ln in res.out.splitlines() if "relaunching on port" in ln]
    assert len(relaunch) == 1 and f"rendezvous port {lost} was taken" in relaunch[0], res.explain()
    assert "Traceback" not in res.out, res.explain()
    assert "validation (held-out documents): eval at step 2: val bpb" in res.out, res.explain()
    assert (demo_dir / "demo" / "checkpoints" / "step_00000004").is_dir()


_BARE = """
import itertools, sys
import pmnet.train.distributed as d
from pmnet.config import load_config
from pmnet.train.__main__ import _setup_distributed
picks = itertools.chain([int(sys.argv[1])], iter(d._free_port, None))
d._free_port = lambda: next(picks)  # the first port a bare process picks is (by then) taken
env = _setup_distributed(load_config("configs/demo.yaml"))
import os, torch.distributed as dist
print("world", dist.get_world_size(), "port", os.environ["MASTER_PORT"])
"""


def test_bare_trainer_process_retries_a_port_it_lost(tmp_path: Path) -> None:
    """A bare ``python -m pmnet.train`` picks its own rendezvous port; if that one is taken by the
    time the store binds it, it picks another instead of failing."""
    with _listening(0) as lost:
        env = launch_env()
        p = subprocess.run([sys.executable, "-c", _BARE, str(lost)], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    _, world, _, port = p.stdout.strip().splitlines()[-1].split()
    assert world == "1" and port != str(lost)
