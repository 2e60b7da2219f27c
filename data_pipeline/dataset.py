"""The training stream: byte samples from MDS shards as (input_ids, targets), exactly resumable.

``build_train_dataloader`` is what the trainer uses::

    loader = build_train_dataloader(cfg.data, cfg.train.micro_batch_size)
    loader.load_state_dict(saved)          # optional: continue with exactly the next sample
    while step < max_steps:
        for batch in loader:               # one pass = (the rest of) one epoch
            batch["input_ids"], batch["targets"]   # LongTensor[B, S-1] each
        # leaving the for loop normally = end of epoch; the next `for` starts the next epoch

Ranks and loader workers are partitioned by mosaicml-streaming from the environment
(RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, as DeepSpeed / torchrun set them). When
torch.distributed is initialised, building a dataset runs a barrier: every rank must build its
loaders at the same point. Call ``clean_stale_shared_memory()`` on local rank 0 (then a barrier)
before the first dataset is built; it removes only entries no live process maps (shm.py).

Epoch tracking: the epoch counter lives in the dataset's shared memory. Every new
``iter(loader)`` starts the next epoch, unless a state was loaded with ``load_state_dict``, in
which case it continues that epoch at the saved sample. A state saved exactly at the end of an
epoch resumes with one *empty* pass (nothing left of that epoch), then the next epoch as in the
uninterrupted run: an empty pass is normal, not an error. Each epoch is reshuffled
(seed + epoch); with ``drop_last`` the few samples that do not fill a last batch differ per
epoch. Build each loader once per process and iterate it many times: streaming refuses a second
live dataset on the same directory. ``loader.state_dict()`` returns
``{"epoch", "sample_in_epoch", "num_canonical_nodes", "shuffle_seed", "initial_physical_nodes"}``
(streaming's format; save it in every checkpoint). Rank 0's state is enough: ranks advance in
step, and it counts this rank's yielded samples times the world size. Every rank loads it.

The classes come from ``data_pipeline.streaming_core``: streaming's own dataset classes imported
without the package's dataset zoos, and a copy of its ``StreamingDataLoader`` that does not
import transformers (together 3.5 s less per rank start).

Why a dict batch: StreamingDataLoader counts resume samples from the first value of a dict
batch; a tuple would make it count wrongly (docs/dependencies.md section 3).

RNG: a loader never draws from the global torch generator (each has its own, see
``loader_generator``), so building or iterating loaders leaves the training RNG streams alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.errors import DataPipelineError
from data_pipeline.manifest import MANIFEST_NAME, read_json
from data_pipeline.shm import clean_stale_shared_memory
from data_pipeline.streaming_core import Stream, StreamingDataLoader, StreamingDataset
from data_pipeline.verify import verify_shards, verify_stream
from data_pipeline.writer import COLUMN
from pmnet.vocab import PAD_ID

__all__ = [
    "ByteSampleDataset",
    "build_train_dataloader",
    "build_val_dataloader",
    "build_streams",
    "sample_to_example",
    "clean_stale_shared_memory",
    "verify_shards",
]


def sample_to_example(raw: bytes, sample_bytes: int) -> dict[str, torch.Tensor]:
    """One stored sample -> ``{"input_ids": [S-1], "targets": [S-1]}`` (int64).

    A short sample (the tail of a stream) is padded with PAD=0; its padded targets are 0, which
    the loss ignores.
    """
    n = len(raw)
    if n > sample_bytes:
        raise DataPipelineError(
            f"a stored sample has {n} bytes but data.sample_bytes={sample_bytes}: "
            "the shards were written with a larger --sample-bytes"
        )
    ids = np.full(sample_bytes, PAD_ID, dtype=np.int64)
    ids[:n] = np.frombuffer(raw, dtype=np.uint8)
    t = torch.from_numpy(ids)
    return {"input_ids": t[:-1], "targets": t[1:]}


class ByteSampleDataset(StreamingDataset):
    """A StreamingDataset of packed byte samples; each item is a dict of two LongTensors.

    All of StreamingDataset's keyword arguments (streams, shuffle, shuffle_seed, batch_size ...)
    pass through; ``sample_bytes`` is the stored sample length (seq_len + 1).
    """

    def __init__(self, *, sample_bytes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sample_bytes = sample_bytes

    def get_item(self, sample_id: int, retry: int = 7) -> dict[str, torch.Tensor]:
        """Sample ``sample_id`` of the whole (multi-stream) dataset as model input and targets
        (``retry``: as StreamingDataset.get_item, whose signature this keeps)."""
        return sample_to_example(super().get_item(sample_id, retry)[COLUMN], self.sample_bytes)


def _stream_dir(local: str, split: str | None) -> Path:
    return Path(local) / split if split else Path(local)


def _check_stream(cfg_stream: Any, sample_bytes: int, verify: bool, where: str, use_cache: bool = True) -> None:
    """Refuse, in one line, a local stream that is missing, mismatched or corrupt.

    ``verify``: every shard file is checked against index.json before the dataset is built,
    once per file (:func:`data_pipeline.verify.verify_stream`; ranks split the work). A remote
    stream that is a local path (a read-only or shared directory) is verified at its source,
    with the cache record kept in the local cache directory; the files already in the local
    cache are checked too. An object-store remote (``s3://`` ...) is checked only for what is
    already cached: shards downloaded during the run are not verified before use.
    """
    if cfg_stream.remote:
        d = _stream_dir(cfg_stream.local, cfg_stream.split) if cfg_stream.local else None
        src = _local_remote(cfg_stream.remote, cfg_stream.split)
        if verify and src is not None and (src / "index.json").exists():
            _raise_problems(
                where, verify_stream(src, use_cache=use_cache, cache_dir=d / ".pmnet_source" if d else None)
            )
        if verify and d is not None and (d / "index.json").exists():
            _raise_problems(where, verify_stream(d, missing_ok=True, use_cache=use_cache))
        return  # the cache fills on demand; streaming checks the index it downloads
    d = _stream_dir(cfg_stream.local, cfg_stream.split)
    if not (d / "index.json").exists():
        raise DataPipelineError(f"{where}: no index.json in {d} (run tools/shard_dataset.py first)")
    if not os.access(d, os.W_OK):
        # A local-only stream decompresses each shard next to the original (docs/dependencies.md section 3).
        raise DataPipelineError(
            f"{where}: {d} is not writable, and streaming decompresses shards next to them; "
            "set remote: <that directory> and local: <a writable cache directory> instead"
        )
    manifest = d.parent / MANIFEST_NAME if cfg_stream.split else d / MANIFEST_NAME
    if not manifest.exists():
        manifest = d.parent / MANIFEST_NAME
    if manifest.exists():
        stored = read_json(manifest).get("sample_bytes")
        if stored is not None and stored != sample_bytes:
            raise DataPipelineError(
                f"{where}: shards in {d} hold samples of {stored} bytes but data.sample_bytes={sample_bytes}"
            )
    if verify:
        _raise_problems(where, verify_stream(d, use_cache=use_cache))


def _local_remote(remote: str, split: str | None) -> Path | None:
    """The split directory of a remote given as a local path (``/x`` or ``file:///x``), else None."""
    if remote.startswith("file://"):
        remote = remote[len("file://") :]
    elif "://" in remote:
        return None
    return _stream_dir(remote, split)


def _raise_problems(where: str, problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataPipelineError(
            f"{where}: shard verification failed: {problems[0]}{more}; not training on it "
            "(re-shard, or restore the file from a good copy)"
        )


def build_streams(
    streams_cfg: list[Any], sample_bytes: int, verify: bool, where: str, *, use_cache: bool = True
) -> list[Stream]:
    """streaming ``Stream`` objects for config streams (local, or remote with local cache)."""
    if not streams_cfg:
        raise DataPipelineError(f"{where}: no streams configured")
    out = []
    for i, s in enumerate(streams_cfg):
        _check_stream(s, sample_bytes, verify, f"{where}[{i}]", use_cache)
        out.append(
            Stream(
                remote=s.remote or None,
                local=s.local or None,
                split=s.split or None,
                proportion=s.proportion,
            )
        )
    return out


def _loader(dataset: ByteSampleDataset, data_cfg: Any, batch_size: int, drop_last: bool) -> StreamingDataLoader:
    workers = data_cfg.num_workers
    extra: dict[str, Any] = {}
    if workers > 0:
        extra["prefetch_factor"] = data_cfg.prefetch_factor
        # fork: workers inherit imported streaming; under spawn each re-imports it (~1.7 s).
        extra["multiprocessing_context"] = "fork"
    return StreamingDataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        generator=loader_generator(data_cfg.shuffle_seed),
        **extra,
    )


def loader_generator(seed: int) -> torch.Generator:
    """The loader's own torch generator (seeded from the data seed).

    Every ``iter(loader)`` draws the workers' base seed from ``loader.generator``; without one
    torch draws it from the *global* generator, so creating an iterator (a new epoch, a resume, a
    validation pass) would shift the training RNG stream that dropout draws from, and a resumed run
    would no longer repeat the uninterrupted one. Our datasets draw no random numbers in workers
    (shuffling is streaming's, seeded by ``shuffle_seed``), so the base seed affects no sample.
    """
    return torch.Generator().manual_seed(int(seed))


def build_train_dataloader(data_cfg: Any, micro_batch_size: int, *, seed_offset: int = 0) -> StreamingDataLoader:
    """The training loader over ``data_cfg.streams`` (see the module docstring for the protocol).

    Batches are ``{"input_ids": LongTensor[B, S-1], "targets": LongTensor[B, S-1]}`` with
    S = data_cfg.sample_bytes; ``drop_last`` keeps every batch exactly micro_batch_size long
    (streaming gives every rank the same number of samples, so ranks stay in step).
    ``seed_offset`` shifts the shuffle seed (e.g. a fresh data order for a restarted run).
    """
    if micro_batch_size < 1:
        raise DataPipelineError(f"micro_batch_size={micro_batch_size}: must be >= 1")
    streams = build_streams(data_cfg.streams, data_cfg.sample_bytes, data_cfg.verify_hashes, "data.streams",
                            use_cache=data_cfg.verify_cache)  # fmt: skip
    kwargs: dict[str, Any] = {}
    if data_cfg.predownload is not None:
        kwargs["predownload"] = data_cfg.predownload
    if data_cfg.cache_limit is not None:
        kwargs["cache_limit"] = data_cfg.cache_limit
    dataset = ByteSampleDataset(
        sample_bytes=data_cfg.sample_bytes,
        streams=streams,
        shuffle=data_cfg.shuffle,
        shuffle_seed=data_cfg.shuffle_seed + seed_offset,
        shuffle_algo=data_cfg.shuffle_algo,
        num_canonical_nodes=data_cfg.num_canonical_nodes,
        batch_size=micro_batch_size,
        **kwargs,
    )
    return _loader(dataset, data_cfg, micro_batch_size, drop_last=True)


def build_val_dataloader(data_cfg: Any, micro_batch_size: int) -> StreamingDataLoader:
    """The validation loader over ``data_cfg.val_streams``: no shuffle, same order every pass.

    Each new iteration starts again from the first sample (each is a new, unshuffled epoch), so
    evaluating ``max_batches`` batches always sees the same samples. The last batch may be short.
    """
    if micro_batch_size < 1:
        raise DataPipelineError(f"micro_batch_size={micro_batch_size}: must be >= 1")
    streams = build_streams(data_cfg.val_streams, data_cfg.sample_bytes, data_cfg.verify_hashes, "data.val_streams",
                            use_cache=data_cfg.verify_cache)  # fmt: skip
    dataset = ByteSampleDataset(
        sample_bytes=data_cfg.sample_bytes,
        streams=streams,
        shuffle=False,
        num_canonical_nodes=data_cfg.num_canonical_nodes,
        batch_size=micro_batch_size,
    )
    return _loader(dataset, data_cfg, micro_batch_size, drop_last=False)


def world_from_env() -> tuple[int, int]:
    """(rank, world_size) as streaming will see them (for logs and tests)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
