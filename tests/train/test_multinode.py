"""Multi-node without a cluster: two node-level launches on this machine (node ranks 0 and 1,
master on loopback) form one job that trains and checkpoints, through DeepSpeed's no-ssh mode
(launchers/pretrain.sh --node-rank) and through the SLURM script with SLURM_* variables set
(a stand-in `srun` that runs its command, as srun does on each node)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.train.conftest import REPO, VENV_BIN, base_overrides, finish, free_port, launch_env, start_launch

STEPS = 4


def as_other_node(cmd: list[str], node: int) -> list[str]:
    """Node 1 gets its own /dev/shm (a private mount namespace), as a second machine has.

    mosaicml-streaming assumes one node per machine: two node-local leaders sharing /dev/shm race
    for the same shared-memory prefix (FileExistsError '/000000_locals').
    """
    if node == 0:
        return cmd
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare to give the second 'node' its own /dev/shm")
    user_ns = [] if os.geteuid() == 0 else ["-r"]
    script = 'mount -t tmpfs -o size=512m tmpfs /dev/shm && exec "$@"'
    return ["unshare", *user_ns, "-m", "--propagation", "private", "sh", "-c", script, "sh", *cmd]


def _check_job(tmp_path: Path, name: str, results: list) -> None:
    for i, res in enumerate(results):
        assert res.rc == 0, f"node {i}: {res.explain()}"
    run = tmp_path / name
    meta = json.loads((run / "checkpoints" / f"step_{STEPS:08d}" / "meta.json").read_text())
    assert meta["world_size"] == 2
    log = (run / "train.log").read_text()
    assert "2 rank(s) on 2 node(s)" in log
    assert "training ended (finished)" in log


def _node_overrides(shards: Path, tmp_path: Path, name: str, node: int) -> list[str]:
    # Both "nodes" share this machine's /dev/shm; streaming refuses two jobs on one local
    # directory, so each node reads its own copy of the shards (as real nodes have their own disks).
    local = tmp_path / f"node{node}-data"
    if not local.exists():
        shutil.copytree(shards, local)
    return base_overrides(local, tmp_path, name, train__max_steps=STEPS, checkpoint__interval=STEPS)


@pytest.mark.multiprocess
def test_two_node_launches_no_ssh(shards: Path, tmp_path: Path) -> None:
    port = str(free_port())
    procs = []
    t0 = time.time()
    for node in (0, 1):
        cmd = ["bash", "launchers/pretrain.sh", "configs/demo.yaml", *_node_overrides(shards, tmp_path, "ns", node),
               "--num-nodes", "2", "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", port,
               "--cpu-ranks", "1"]  # fmt: skip
        log = tmp_path / f"node{node}.log"
        procs.append((start_launch(as_other_node(cmd, node), launch_env(), log), log))
    _check_job(tmp_path, "ns", [finish(p, log, t0) for p, log in procs])


@pytest.mark.multiprocess
def test_two_node_slurm_script(shards: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    # srun runs the command once per node with that node's SLURM_NODEID; here each "node" is one call
    srun.write_text('#!/usr/bin/env bash\nwhile [[ "$1" == -* ]]; do shift; done\nexec "$@"\n')
    srun.chmod(0o755)
    port = str(free_port())
    procs = []
    t0 = time.time()
    for node in (0, 1):
        env = launch_env(
            PATH=f"{bin_dir}:{launch_env()['PATH']}",
            SLURM_JOB_ID="4242",
            SLURM_JOB_NODELIST="127.0.0.1,localhost",
            SLURM_NNODES="2",
            SLURM_NODEID=str(node),
            SLURM_SUBMIT_DIR=str(REPO),
            MASTER_PORT=port,
            PMNET_PYTHON=str(VENV_BIN / "python"),
            PMNET_CPU_RANKS="1",
        )
        cmd = [
            "bash",
            "launchers/slurm/pretrain.sbatch",
            "configs/demo.yaml",
            *_node_overrides(shards, tmp_path, "sl", node),
        ]
        log = tmp_path / f"slurm{node}.log"
        procs.append((start_launch(as_other_node(cmd, node), env, log), log))
    _check_job(tmp_path, "sl", [finish(p, log, t0) for p, log in procs])
