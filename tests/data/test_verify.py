"""Corrupt shards are caught by default, once per file (issue 15, item 3).

Real shards of real text (``tools/shard_dataset.py`` through the library), the default
``DataConfig`` (``verify_hashes`` on), the real loader builder, and the real trainer on 2 gloo
ranks for the case that matters: a flipped byte stops the run before any step, naming the shard.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import data_pipeline.verify as verify_mod
from data_pipeline.dataset import build_train_dataloader
from data_pipeline.errors import DataPipelineError
from data_pipeline.manifest import ShardSettings
from data_pipeline.sharding import ShardJob, run_sharding
from data_pipeline.verify import CACHE_NAME, verify_stream
from pmnet.config import DataConfig, StreamConfig


@pytest.fixture(scope="module")
def web_shards(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real web text sharded once for this module (several shards)."""
    src = tmp_path_factory.mktemp("web_src")
    for f in sorted((shared_data / "web").glob("cc_en_head-*.jsonl")):
        shutil.copy(f, src / f.name)
    out = tmp_path_factory.mktemp("web") / "shards"
    run_sharding(
        ShardJob([str(src)], str(out), ShardSettings(val_fraction=0.0, shard_size_limit=1 << 16), progress=False)
    )
    return out


def _flip(path: Path, *, keep_mtime: bool = False) -> None:
    st = path.stat()
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    if keep_mtime:  # as bit rot or a careless copy tool would: only ctime tells
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record which files verify_stream hashes (the real hashing still runs)."""
    seen: list[Path] = []
    real = verify_mod._check_file

    def spy(path: Path, info: dict, **kw: object) -> tuple:
        seen.append(path)
        return real(path, info, **kw)

    monkeypatch.setattr(verify_mod, "_check_file", spy)
    return seen


def test_default_config_refuses_a_flipped_byte(web_shards: Path, tmp_path: Path) -> None:
    out = shutil.copytree(web_shards, tmp_path / "ds")
    shard = sorted((out / "train").rglob("shard.*.mds.zstd"))[1]
    _flip(shard)
    cfg = DataConfig(streams=[StreamConfig(local=str(out), split="train")], num_workers=0)
    assert cfg.verify_hashes  # the default
    with pytest.raises(DataPipelineError) as err:
        build_train_dataloader(cfg, 2)
    msg = str(err.value)
    assert str(shard) in msg and "mismatch" in msg and "\n" not in msg


def test_each_file_is_hashed_once_and_again_when_it_changes(
    web_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = shutil.copytree(web_shards, tmp_path / "ds") / "train"
    seen = _count_hashing(monkeypatch)
    n_files = len(list(d.rglob("shard.*.mds*")))
    assert n_files >= 3
    assert verify_stream(d) == [] and len(seen) == n_files and (d / CACHE_NAME).is_file()
    seen.clear()
    assert verify_stream(d) == [] and seen == []  # a restart only stats the files
    victim = sorted(d.rglob("shard.*.mds.zstd"))[0]
    _flip(victim, keep_mtime=True)  # same size, same mtime: the ctime still differs
    problems = verify_stream(d)
    assert seen == [victim] and len(problems) == 1 and str(victim) in problems[0]
    seen.clear()
    assert verify_stream(d) != [] and seen == [victim]  # a bad file is never recorded as good
    seen.clear()
    assert verify_stream(d, use_cache=False) != [] and len(seen) == n_files  # data.verify_cache=false


def test_verification_off_is_a_named_choice(web_shards: Path, tmp_path: Path) -> None:
    out = shutil.copytree(web_shards, tmp_path / "ds")
    _flip(sorted((out / "train").rglob("shard.*.mds.zstd"))[0])
    cfg = DataConfig(streams=[StreamConfig(local=str(out), split="train")], num_workers=0, verify_hashes=False)
    build_train_dataloader(cfg, 2)  # builds: the user asked for no verification by name


@pytest.mark.multiprocess
@pytest.mark.timeout(600)
def test_trainer_stops_before_training_on_a_corrupt_shard(shards: Path, tmp_path: Path) -> None:
    """Real trainer, 2 ranks: the ranks split the hashing, both stop before step 1, and rank 0 names the
    shard in one line; no checkpoint is written."""
    from tests.ckpt.helpers import run_ranks, trainer_cmd, trainer_overrides

    data = shutil.copytree(shards, tmp_path / "data")
    shard = sorted((data / "train").rglob("shard.*.mds.zstd"))[-1]
    _flip(shard)
    cmd = trainer_cmd(trainer_overrides(data, tmp_path, "run"))
    codes = run_ranks(cmd, 2, lambda r: tmp_path / f"rank{r}.log", 300)
    logs = [(tmp_path / f"rank{r}.log").read_text(errors="replace") for r in range(2)]
    assert all(c != 0 for c in codes), (codes, logs[0][-3000:])
    lines = [ln for ln in logs[0].splitlines() if str(shard) in ln]  # rank 0 reports; every rank exits non-zero
    assert len(lines) == 1 and "shard verification failed" in lines[0] and "mismatch" in lines[0], logs[0][-3000:]
    assert "Traceback" not in logs[0] and "training ended" not in logs[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_remote_stream_on_a_path_is_verified_at_its_source(web_shards: Path, tmp_path: Path) -> None:
    """``{remote: DIR, local: CACHE}`` (a read-only or shared directory read through a cache): the source
    files are verified before streaming downloads anything, the record kept in the cache directory.
    (streaming's own validate_hash would end the epoch early without an error: measured, see verify.py.)"""
    src = shutil.copytree(web_shards, tmp_path / "src")
    shard = sorted((src / "train").rglob("shard.*.mds.zstd"))[0]
    _flip(shard)
    cache = tmp_path / "cache"
    cfg = DataConfig(streams=[StreamConfig(remote=str(src), local=str(cache), split="train")], num_workers=0)
    with pytest.raises(DataPipelineError) as err:
        build_train_dataloader(cfg, 2)
    assert str(shard) in str(err.value) and "\n" not in str(err.value)
    assert not list(cache.rglob("shard.*"))  # nothing was downloaded
