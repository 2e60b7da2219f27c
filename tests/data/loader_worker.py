"""A training-loader process for the tests: one rank, as the trainer would run it.

    python -m tests.data.loader_worker SPEC.json OUT.json

SPEC: {"runs": [RUN, ...]}, each RUN {"data": {DataConfig fields; streams as dicts}, "batch": B,
"load_state": path|null, "save_state": path|null, "max_batches": n|null, "epochs": e,
"reference_loader": bool (streaming's own StreamingDataLoader over the same dataset)}, run one
after the other in this process (each on its own shard directory: streaming refuses two live
datasets on one directory). A run reads ``epochs`` passes of ``for batch in loader`` (stopping
after ``max_batches`` batches in total when given). OUT.json: per run, the sha1 of every sample
in order per pass, the loader's state_dict after each pass, and streaming's shm prefix.
With WORLD_SIZE > 1 it first joins a gloo process group, as DeepSpeed would.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import torch


def sample_key(input_ids: torch.Tensor, targets: torch.Tensor) -> str:
    """sha1 of the stored sample bytes (input_ids + last target, PAD kept)."""
    full = torch.cat([input_ids, targets[-1:]]).to(torch.uint8).numpy().tobytes()
    return hashlib.sha1(full).hexdigest()


def read_run(run: dict) -> dict:
    """Build a loader as the trainer does, optionally load a state, read, report."""
    from data_pipeline.dataset import build_train_dataloader
    from pmnet.config import DataConfig, StreamConfig

    data = dict(run["data"])
    data["streams"] = [StreamConfig(**s) for s in data.get("streams", [])]
    data["val_streams"] = [StreamConfig(**s) for s in data.get("val_streams", [])]
    loader = build_train_dataloader(DataConfig(**data), run["batch"])
    if run.get("reference_loader"):  # the class data_pipeline.streaming_core copies, same arguments
        from streaming import StreamingDataLoader

        ours = loader
        loader = StreamingDataLoader(
            ours.dataset, batch_size=ours.batch_size, num_workers=ours.num_workers, drop_last=ours.drop_last,
            generator=ours.generator, prefetch_factor=ours.prefetch_factor,
            multiprocessing_context=ours.multiprocessing_context,
        )  # fmt: skip
    if run.get("load_state"):
        with open(run["load_state"]) as f:
            loader.load_state_dict(json.load(f))
    passes: list[list[str]] = []
    states: list[dict] = []
    n = 0
    limit = run.get("max_batches")
    for _ in range(run.get("epochs", 1)):
        keys: list[str] = []
        for batch in loader:
            assert set(batch) == {"input_ids", "targets"}
            for x, y in zip(batch["input_ids"], batch["targets"]):
                keys.append(sample_key(x, y))
            n += 1
            if limit is not None and n >= limit:
                break
        passes.append(keys)
        states.append(loader.state_dict())
        if limit is not None and n >= limit:
            break
    if run.get("save_state") and os.environ.get("RANK", "0") == "0":  # as a checkpoint is saved
        with open(run["save_state"], "w") as f:
            json.dump(states[-1], f)
    return {"passes": passes, "states": states, "shm_prefix": loader.dataset._shm_prefix_int}


def main() -> None:
    spec_path, out_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=world)
    results = [read_run(run) for run in spec["runs"]]
    with open(out_path, "w") as f:
        json.dump(results, f)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
