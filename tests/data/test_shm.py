"""Stale shared memory of a SIGKILLed streaming run is cleaned; a live run's is left alone."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from data_pipeline.dataset import build_train_dataloader
from data_pipeline.shm import clean_stale_shared_memory, streaming_shm_entries
from pmnet.config import DataConfig, StreamConfig
from tests.data.helpers import REPO
from tests.data.test_dataset import S, shard_one_doc_per_sample

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from data_pipeline.dataset import build_train_dataloader
    from pmnet.config import DataConfig, StreamConfig
    cfg = DataConfig(streams=[StreamConfig(local=sys.argv[1], split="train")], sample_bytes={S}, num_workers=2)
    loader = build_train_dataloader(cfg, 2)
    it = iter(loader)
    next(it)
    with open(sys.argv[2], "w") as f:
        f.write(str(loader.dataset._shm_prefix_int))
    while True:  # keep the dataset (and its loader workers) alive until killed
        for _ in it:
            time.sleep(0.2)
        it = iter(loader)
    """
).format(S=S)


def _start_holder(shards: Path, flag: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(shards), str(flag)], cwd=REPO, text=True,
                            stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (flag.exists() and flag.read_text()) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    return proc, f"{int(flag.read_text()):06d}_"


@pytest.mark.timeout(600)
@pytest.mark.multiprocess
def test_clean_removes_only_what_no_live_process_maps(shared_data: Path, tmp_path: Path) -> None:
    shards = shard_one_doc_per_sample(shared_data / "books" / "pg10146.txt", tmp_path / "ds", 200)
    proc, prefix = _start_holder(shards, tmp_path / "prefix")
    try:
        mine = [n for n in streaming_shm_entries() if n.startswith(prefix)]
        assert f"{prefix}locals" in mine and f"{prefix}next_epoch" in mine
        removed = clean_stale_shared_memory()
        assert not [n for n in removed if n.startswith(prefix)]  # the live run keeps all of its blocks
        assert set(mine) <= set(streaming_shm_entries())
        assert proc.poll() is None  # and it keeps reading
    finally:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for child in children:  # the loader workers, as an OOM kill of the whole job would
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGKILL)
    time.sleep(0.5)
    stale = [n for n in streaming_shm_entries() if n.startswith(prefix)]
    assert f"{prefix}locals" in stale  # SIGKILL leaves them behind
    removed = clean_stale_shared_memory()
    assert set(stale) <= set(removed)
    assert not [n for n in streaming_shm_entries() if n.startswith(prefix)]

    # The same directory is usable again right away.
    cfg = DataConfig(streams=[StreamConfig(local=str(shards), split="train")], sample_bytes=S, num_workers=0)
    batch = next(iter(build_train_dataloader(cfg, 2)))
    assert batch["input_ids"].shape == (2, S - 1)
