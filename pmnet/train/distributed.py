"""Process-group setup for every way a run is started (deepspeed launcher, torchrun, SLURM, a bare process).

We initialise ``torch.distributed`` ourselves (gloo on CPU, nccl on CUDA) before DeepSpeed
sees it, so a single plain ``python -m pmnet.train`` works without mpi4py (DeepSpeed's
fallback when RANK/WORLD_SIZE/... are missing). DeepSpeed then only wraps the existing
group. We also switch off DeepSpeed's shared-memory CPU all-reduce op: it serves only
tensor-parallel inference, costs a ~25 s C++ build on a cold machine and leaves 66 MB per
rank in /dev/shm that nothing removes (docs/dependencies.md section 2). DeepSpeed documents
``deepspeed.ops.__compatible_ops__`` as a cached dict whose edits persist; marking the op
incompatible makes ``build_shm_op`` return None and the comm falls back to plain gloo.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from pmnet.config import ConfigError

__all__ = ["DistEnv", "setup_distributed", "teardown_distributed", "all_reduce_", "all_reduce_sum", "barrier"]

_SHM_OP = "deepspeed_shm_comm"


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0 owns TensorBoard, the console and the log file."""
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fill_env() -> None:
    """Give a bare single process the variables torch's env:// rendezvous needs."""
    single = "WORLD_SIZE" not in os.environ or os.environ.get("WORLD_SIZE") == "1"
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"] if single else "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        if not single:
            raise RuntimeError("WORLD_SIZE > 1 but MASTER_PORT is not set; start the job with launchers/pretrain.sh")
        os.environ["MASTER_PORT"] = str(_free_port())


def pick_device(preference: str, local_rank: int) -> torch.device:
    """``auto`` means CUDA when present; asking for CUDA without one is a user error."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device='cuda' but no CUDA device is visible")
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _disable_shm_comm_op() -> None:
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[_SHM_OP] = False


def setup_distributed(device_preference: str = "auto", timeout_minutes: int = 30) -> DistEnv:
    """Initialise torch.distributed (and DeepSpeed's comm on top of it) for this process."""
    _fill_env()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1" if world == 1 else world)))
    # mosaicml-streaming partitions by LOCAL_WORLD_SIZE; the deepspeed launcher only sets LOCAL_SIZE.
    os.environ.setdefault("LOCAL_WORLD_SIZE", str(local_world))
    device = pick_device(device_preference, local_rank)
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        device_id = device if device.type == "cuda" else None
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes), device_id=device_id)
    _disable_shm_comm_op()
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(minutes=timeout_minutes))
    nodes = int(os.environ.get("CROSS_SIZE", max(1, world // max(1, local_world))))
    node_rank = int(os.environ.get("CROSS_RANK", os.environ.get("NODE_RANK", rank // max(1, local_world))))
    return DistEnv(rank, world, local_rank, local_world, node_rank, nodes, device, backend)


def teardown_distributed() -> None:
    """Leave the process group (all ranks), so no rank exits while a peer still talks to it."""
    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def all_reduce_(t: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """``t`` reduced in place over all ranks when a group of more than one exists; returns ``t``
    (device tensors stay on the device: no host sync here)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op)
    return t


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of small float lists over all ranks (NaN propagates)."""
    return all_reduce_(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def barrier() -> None:
    """A barrier when a group exists."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), one entry per rank; ``[obj]`` without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
