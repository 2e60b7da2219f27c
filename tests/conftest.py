"""Shared pytest set-up: GPU tests skip on machines without CUDA; every test gets its own TMPDIR;
every process a test starts gets the launcher's thread settings (:func:`child_env`)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_SAMPLE_BYTES = 129  # 128 input bytes: K=4 gives chunks of 32 (> the tiny window of 16)
# ../shared/data beside the checkout; PMNET_SHARED_DATA points elsewhere (a GPU machine gets only
# the repository: carry the books in an ignored folder and point a folder with books/ at it)
SHARED_DATA = Path(os.environ.get("PMNET_SHARED_DATA") or REPO.parent / "shared" / "data").resolve()


def thread_env(ranks: int = 1) -> dict[str, str]:
    """The thread settings ``launchers/pretrain.sh`` gives each of ``ranks`` processes on this machine.

    One OpenMP pool per process over its share of the cores (``nproc / ranks``), and, without
    a GPU, idle OpenMP threads that sleep instead of spinning (a spinning pool makes a shared
    2-core machine 10-50x slower). tests/test_launch.py checks this against the launcher.
    """
    cores = len(os.sched_getaffinity(0))
    env = {"OMP_NUM_THREADS": str(max(1, cores // max(1, ranks)))}
    if not list(Path("/dev").glob("nvidia[0-9]*")):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def child_env(ranks: int = 1, **extra: str) -> dict[str, str]:
    """The environment of a process a test starts, one of ``ranks`` running at once.

    This process's environment (which already carries the settings for one process, see the
    end of this file) with the thread settings for ``ranks`` processes, then ``extra``.
    """
    return {**os.environ, **thread_env(ranks), **extra}


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _private_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Lock files of mosaicml-streaming (and other temp files) stay inside the test's tmp_path."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real text); tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped sample text sharded once per session with the data tool (train/ and val/ MDS)."""
    out = tmp_path_factory.mktemp("shards") / "demo"
    cmd = [sys.executable, "tools/shard_dataset.py", "data_pipeline/samples", "--out", str(out),
           "--sample-bytes", str(TINY_SAMPLE_BYTES), "--val-fraction", "0.09", "--no-progress"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=900)
    return out


# Every child process inherits the launcher's thread settings for one process (a value set
# before pytest starts wins); a test that starts several processes at once uses child_env(ranks),
# and a launcher started by a test divides the cores among its ranks itself (launch_env). Set
# before torch is first imported: OpenMP reads them when it loads.
for _key, _value in thread_env(1).items():
    os.environ.setdefault(_key, _value)
if not _has_cuda():
    # DeepSpeed would probe for accelerators in every process otherwise.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
