"""The training stream on real shards: batches, epochs, exact resume, ranks, streams, hashes.

Shards come from the real tool; reading goes through the real StreamingDataset /
StreamingDataLoader. Runs that must behave like a restarted trainer are separate processes
(tests/data/loader_worker.py), including the two gloo ranks.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from data_pipeline.dataset import build_train_dataloader, build_val_dataloader
from data_pipeline.errors import DataPipelineError
from data_pipeline.manifest import ShardSettings
from data_pipeline.readback import read_split_samples
from data_pipeline.sharding import ShardJob, run_sharding
from data_pipeline.verify import verify_shards
from pmnet.config import DataConfig, StreamConfig
from tests.conftest import child_env
from tests.data.helpers import REPO, run_tool
from tests.data.loader_worker import read_run, sample_key
from tests.ports import free_port

S = 1025  # sample bytes of the test datasets


def shard_one_doc_per_sample(book: Path, dest: Path, n: int, offset: int = 0) -> Path:
    """``n`` text files cut from a real (ASCII) book, each exactly one S-byte sample once encoded.

    Grouped into several work units (sub-directories) so the merged index is exercised.
    """
    data = book.read_bytes()[offset:]
    assert data.isascii() and len(data) >= n * (S - 2)
    src = dest / "src"
    src.mkdir(parents=True)
    for i in range(n):
        (src / f"doc_{i:04d}.txt").write_bytes(data[i * (S - 2) : (i + 1) * (S - 2)])
    out = dest / "shards"
    settings = ShardSettings(sample_bytes=S, val_fraction=0.0, text_unit_bytes=12 * (S - 2))
    run_sharding(ShardJob([str(src)], str(out), settings, progress=False))
    samples = read_split_samples(out / "train")
    assert len(samples) == n and all(len(s) == S for s in samples)
    return out


def keys_of(out: Path) -> list[str]:
    return [hashlib.sha1(s).hexdigest() for s in read_split_samples(out / "train")]


def data_cfg(out: Path, **kw: Any) -> dict[str, Any]:
    cfg = {"streams": [{"local": str(out), "split": "train"}], "sample_bytes": S, "num_workers": 2}
    cfg.update(kw)
    return cfg


def run_ranks(
    tmp: Path, tag: str, spec: dict[str, Any], world: int, timeout: float = 600
) -> list[list[dict[str, Any]]]:
    """Run loader_worker as ``world`` rank processes (env vars as DeepSpeed/torchrun set them)."""
    spec_path = tmp / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = child_env(world, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                        LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)  # fmt: skip
        out = tmp / f"{tag}.rank{rank}.json"
        cmd = [sys.executable, "-m", "tests.data.loader_worker", str(spec_path), str(out)]
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True), out))
    results = []
    for proc, out in procs:
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p, _ in procs:
                p.kill()
            raise
        # A flaky exit must be visible, not retried (docs/dependencies.md section 2): any non-zero exit fails the test.
        assert proc.returncode == 0, f"{tag}: rank exited {proc.returncode}: {err[-2000:]}"
        results.append(json.loads(out.read_text()))
    return results


@pytest.mark.timeout(600)
def test_batches_shift_and_pad_and_val_order(shared_data: Path, tmp_path: Path) -> None:
    text = (shared_data / "web" / "cc_en_head-0091.jsonl").read_text()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cc.jsonl").write_text(text)
    out = tmp_path / "out"
    settings = ShardSettings(sample_bytes=257, val_fraction=0.5)
    run_sharding(ShardJob([str(tmp_path / "in")], str(out), settings, progress=False))
    cfg = DataConfig(
        streams=[StreamConfig(local=str(out), split="train")],
        val_streams=[StreamConfig(local=str(out), split="val")],
        sample_bytes=257,
        num_workers=0,
        shuffle=False,
    )
    stored = read_split_samples(out / "val")
    assert len(stored[-1]) < 257  # the kept tail: a short final sample
    rng = torch.get_rng_state()
    val = build_val_dataloader(cfg, 4)
    for _ in range(2):  # two passes: same order, the storage order, short last batch kept
        got = []
        for batch in val:
            x, y = batch["input_ids"], batch["targets"]
            assert x.dtype == y.dtype and x.shape[1] == y.shape[1] == 256 and len(x) <= 4
            assert (x[:, 1:] == y[:, :-1]).all()  # targets are the inputs shifted by one
            for xi, yi in zip(x, y):
                got.append(bytes(xi.tolist() + [int(yi[-1])]))
        assert len(got) == len(stored)
        for g, s in zip(got, stored):
            assert g[: len(s)] == s and set(g[len(s) :]) <= {0}  # PAD after a short sample
    train = build_train_dataloader(cfg, 4)
    shapes = {tuple(b["input_ids"].shape) for b in train}
    assert shapes == {(4, 256)}  # drop_last: every training batch is full
    # building and iterating loaders draws nothing from the global generator (dropout's stream)
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.timeout(600)
def test_mid_epoch_resume_with_workers_is_exact(shared_data: Path, tmp_path: Path) -> None:
    """One rank, 2 loader workers, in this process (the 2-rank test below restarts processes)."""
    out = shard_one_doc_per_sample(shared_data / "books" / "pg10146.txt", tmp_path / "ds", 64)
    copy = _fresh_copy(out, tmp_path / "copy")  # streaming refuses two live datasets on one directory
    all_keys = set(keys_of(out))
    state_path = tmp_path / "state.json"

    def run(d: Path, **kw: Any) -> dict[str, Any]:
        return read_run({"data": data_cfg(d, num_workers=2, shuffle=True), "batch": 4, **kw})

    full = run(out, epochs=2)
    e0, e1 = full["passes"]
    assert set(e0) == set(e1) == all_keys and len(e0) == len(e1) == 64
    assert e0 != e1  # the next epoch is reshuffled
    assert [s["epoch"] for s in full["states"]] == [0, 1]
    # Stop after 5 batches (mid-epoch, both workers active) and save the state.
    first = run(copy, max_batches=5, save_state=str(state_path))
    state = json.loads(state_path.read_text())
    assert state["epoch"] == 0 and state["sample_in_epoch"] == 20
    # A new loader (its own directory copy, as the same files would be after a restart) resumes.
    resumed = run(_fresh_copy(out, tmp_path / "copy2"), epochs=2, load_state=str(state_path))
    before, after = first["passes"][0], resumed["passes"][0]
    assert before + after == e0  # as a sequence: none repeated, none skipped, same order
    assert set(before) | set(after) == all_keys and not set(before) & set(after)
    assert resumed["passes"][1] == e1  # and the following epoch is the uninterrupted one
    assert [s["epoch"] for s in resumed["states"]] == [0, 1]

    # A state saved right at the end of an epoch: the first pass is empty, then the next epoch.
    state_path.write_text(json.dumps(full["states"][0]))
    at_end = run(_fresh_copy(out, tmp_path / "copy3"), epochs=2, load_state=str(state_path))
    assert at_end["passes"] == [[], e1]


def _fresh_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.timeout(900)
@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_gloo_ranks_partition_and_resume(shared_data: Path, tmp_path: Path) -> None:
    """2 gloo ranks x 2 loader workers; the resume is a new pair of processes, as after a crash."""
    out = shard_one_doc_per_sample(shared_data / "books" / "pg10146.txt", tmp_path / "ds", 96)
    copies = [_fresh_copy(out, tmp_path / f"copy{i}") for i in range(2)]
    all_keys = set(keys_of(out))
    state_path = tmp_path / "state.json"

    def run(d: Path, **kw: Any) -> dict[str, Any]:
        return {"data": data_cfg(d, num_workers=2, shuffle=True), "batch": 4, **kw}

    # Launch 1, per rank: two uninterrupted epochs; then (another directory) 3 batches and a save.
    launch1 = run_ranks(
        tmp_path, "l1", {"runs": [run(out, epochs=2), run(copies[0], max_batches=3, save_state=str(state_path))]}, 2
    )
    full = [r[0]["passes"] for r in launch1]
    first = [r[1]["passes"][0] for r in launch1]
    for epoch in range(2):
        r0, r1 = full[0][epoch], full[1][epoch]
        assert len(r0) == len(r1) == 48
        assert set(r0) | set(r1) == all_keys and not set(r0) & set(r1)  # a partition of the dataset
    assert full[0][0] != full[0][1]
    state = json.loads(state_path.read_text())
    assert state["epoch"] == 0 and state["sample_in_epoch"] == 2 * 3 * 4
    assert launch1[1][1]["states"][-1] == state  # every rank computes the same state

    # Launch 2: new processes load rank 0's state (what a checkpoint holds) and read on.
    launch2 = run_ranks(tmp_path, "l2", {"runs": [run(copies[1], epochs=2, load_state=str(state_path))]}, 2)
    for rank in range(2):
        after = launch2[rank][0]["passes"]
        assert first[rank] + after[0] == full[rank][0]  # sequences: none repeated, none skipped
        assert after[1] == full[rank][1]  # the next epoch matches too
    resumed = [k for rank in range(2) for k in first[rank] + launch2[rank][0]["passes"][0]]
    assert sorted(resumed) == sorted(all_keys)


@pytest.mark.timeout(600)
def test_streams_mixed_by_proportion_with_remote_cache(shared_data: Path, tmp_path: Path) -> None:
    books = shared_data / "books"
    a = shard_one_doc_per_sample(books / "pg10146.txt", tmp_path / "a", 60)
    b = shard_one_doc_per_sample(books / "pg10146.txt", tmp_path / "b", 40, offset=100_000)
    keys_a, keys_b = set(keys_of(a)), set(keys_of(b))
    cache = tmp_path / "cache"
    cfg = DataConfig(
        # Stream a: a local directory standing in for object storage, read through a local cache.
        streams=[
            StreamConfig(local=str(cache), remote=str(a), split="train", proportion=0.25),
            StreamConfig(local=str(b), split="train", proportion=0.75),
        ],
        sample_bytes=S,
        num_workers=0,
    )
    loader = build_train_dataloader(cfg, 5)
    got = [sample_key(x, y) for batch in loader for x, y in zip(batch["input_ids"], batch["targets"])]
    assert len(got) == 100  # epoch = total size; shares by proportion
    assert sum(k in keys_a for k in got) == 25 and sum(k in keys_b for k in got) == 75
    assert (cache / "train" / "index.json").exists()
    assert any((cache / "train").rglob("shard.*.mds*"))  # the cache was filled from the "remote"


@pytest.mark.timeout(600)
def test_corrupt_shard_is_named_by_verify_tool_and_loader(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "cc.jsonl").write_bytes((shared_data / "web" / "cc_en_head-0174.jsonl").read_bytes())
    out = tmp_path / "out"
    run_sharding(ShardJob([str(src)], str(out), ShardSettings(val_fraction=0.0), progress=False))
    assert verify_shards(out) == []
    shard = next((out / "train").rglob("shard.00000.mds.zstd"))
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    problems = verify_shards(out)
    assert len(problems) == 1 and str(shard) in problems[0] and "mismatch" in problems[0]
    res = run_tool(src, "--out", out, "--val-fraction", "0", "--verify")
    assert res.returncode == 1 and str(shard) in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr
    cfg = DataConfig(streams=[StreamConfig(local=str(out), split="train")], num_workers=0, verify_hashes=True)
    with pytest.raises(DataPipelineError, match=str(shard.name)):
        build_train_dataloader(cfg, 2)


@pytest.mark.timeout(600)
def test_sample_bytes_mismatch_is_refused(shared_data: Path, tmp_path: Path) -> None:
    out = shard_one_doc_per_sample(shared_data / "books" / "pg10146.txt", tmp_path / "ds", 8)
    cfg = DataConfig(streams=[StreamConfig(local=str(out), split="train")], sample_bytes=513, num_workers=0)
    with pytest.raises(DataPipelineError, match="1025 bytes but data.sample_bytes=513"):
        build_train_dataloader(cfg, 2)
    cfg = DataConfig(streams=[StreamConfig(local=str(tmp_path / "nowhere"), split="train")], num_workers=0)
    with pytest.raises(DataPipelineError, match="no index.json"):
        build_train_dataloader(cfg, 2)
