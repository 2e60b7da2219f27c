"""The DeepSpeed engine built from the typed config: JSON, parameter groups, AdamW, LR schedule.

Design choices (each keeps one mechanism per concern):

* The optimizer is a torch AdamW passed to DeepSpeed as a client optimizer
  (``zero_allow_untested_optimizer``): fused on CUDA, plain on CPU, so nothing is compiled.
* The LR is a pure function of the optimizer step, set on the param groups by the trainer
  before every step. Nothing about it needs saving, and a skipped step cannot shift it.
* Truncated BPTT: each of the K chunks of a sample is one DeepSpeed micro-step, so
  DeepSpeed's ``gradient_accumulation_steps`` is ``accumulation x K`` and its 1/gas loss
  scaling makes the update the mean over every chunk of the global batch. DeepSpeed's
  ``train_batch_size`` therefore counts chunks, not samples.
* Non-finite steps: :class:`GuardedAdamW` refuses to update when any rank saw a non-finite
  gradient or loss (one all-reduced flag). DeepSpeed's own overflow check may skip first
  (then its global norm reads inf); the trainer treats both the same.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pmnet.config import Config, OptimConfig
from pmnet.families import FAMILIES, param_family
from pmnet.model import PMNetForCausalLM
from pmnet.model.compiled import compile_fast_path
from pmnet.model.memory import PhasorMemoryRead, PhasorMemoryWrite
from pmnet.train.distributed import DistEnv, all_reduce_

__all__ = [
    "FAMILIES",
    "GuardedAdamW",
    "accumulation_steps",
    "build_engine",
    "deepspeed_config",
    "lr_at",
    "param_family",
    "param_groups",
]


def _ndim(p: nn.Parameter) -> int:
    # Under ZeRO-3 a partitioned parameter is an empty 1-D tensor; ds_shape keeps the real one.
    shape = getattr(p, "ds_shape", None)
    return len(shape) if shape is not None else p.dim()


def no_weight_decay(name: str, p: nn.Parameter) -> bool:
    """Norm weights, biases (all < 2-D) and the memory anchors are not decayed."""
    return _ndim(p) < 2 or param_family(name) == "anchors"


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed matrices, and everything that must not be decayed."""
    decay: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if no_weight_decay(name, p) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": plain, "weight_decay": 0.0, "name": "no_decay"},
    ]


def lr_at(step: int, total_steps: int, o: OptimConfig) -> float:
    """LR for optimizer step ``step`` (0-based): linear warmup, then cosine / WSD / constant."""
    if o.warmup_steps > 0 and step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    floor = o.lr * o.min_lr_ratio
    if o.schedule == "constant":
        return o.lr
    if o.schedule == "cosine":
        span = max(1, total_steps - o.warmup_steps)
        progress = min(1.0, (step - o.warmup_steps) / span)
        return floor + (o.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # wsd: stable at the peak, then a linear decay over the last decay_fraction of the run
    decay_steps = max(1, round(total_steps * o.decay_fraction))
    start = total_steps - decay_steps
    if step < start:
        return o.lr
    return o.lr + (floor - o.lr) * min(1.0, (step - start + 1) / decay_steps)


def accumulation_steps(cfg: Config, world_size: int) -> int:
    """Micro-batches per rank per optimizer step (before multiplying by the K chunks)."""
    return cfg.train.global_batch_size // (cfg.train.micro_batch_size * world_size)


def deepspeed_config(cfg: Config, world_size: int) -> dict[str, Any]:
    """The JSON DeepSpeed reads, derived from the typed config (nothing else configures it)."""
    t, ds = cfg.train, cfg.deepspeed
    gas = accumulation_steps(cfg, world_size) * t.tbptt_chunks
    zero: dict[str, Any] = {
        "stage": ds.zero_stage,
        "overlap_comm": ds.overlap_comm,
        "contiguous_gradients": True,
        "reduce_bucket_size": ds.reduce_bucket_size,
        "allgather_bucket_size": ds.allgather_bucket_size,
    }
    if ds.zero_stage == 3:
        # One optimizer sub-group, so GuardedAdamW's skip decision covers the whole step.
        zero.update(stage3_prefetch_bucket_size=ds.stage3_prefetch_bucket_size, sub_group_size=int(1e12))
    if ds.offload_optimizer and ds.zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    out: dict[str, Any] = {
        "train_batch_size": t.micro_batch_size * gas * world_size,  # counts TBPTT chunks
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": gas,
        "gradient_clipping": float(t.grad_clip),
        # check_grad_overflow (default off): GuardedAdamW makes the skip decision (one norm over the
        # partition, one all-reduce), as DeepSpeed already leaves it in fp32 and under ZeRO-3. Its own
        # ZeRO-1/2 bf16 check costs about six kernels per parameter tensor plus a host sync every step
        # (the H200 trace of the 119M step: some 1,500 launches in the step's tail, the GPU idle).
        "bf16": {"enabled": t.precision == "bf16", "check_grad_overflow": ds.check_grad_overflow},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "dump_state": False,
    }
    if t.precision == "bf16" and ds.zero_stage > 0:  # DeepSpeed has no fp32 accumulation without ZeRO
        out["data_types"] = {"grad_accum_dtype": "fp32" if ds.grad_accum_fp32 else "bf16"}
    return out


class GuardedAdamW(torch.optim.AdamW):
    """AdamW that skips its update when any rank has a non-finite gradient (or was told to skip).

    DeepSpeed calls ``step`` on every rank's partition at the same point, so the one flag
    all-reduce inside it is matched on all ranks.
    """

    def __init__(self, params: Any, *, device: torch.device, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._device = device
        self.force_skip: bool | torch.Tensor = False
        """Set by the trainer before the boundary step: True, or a device flag (non-zero: a loss on
        this rank was not finite). A flag costs no host sync where it is set: it is read here, in
        the one sync this step makes."""
        self.skipped = False
        "Whether the last call skipped (identical on all ranks)."

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        flags = [torch.as_tensor(self.force_skip, device=self._device).float().reshape(1)]
        if grads:
            norms = torch.stack([n.float() for n in torch._foreach_norm(grads)])
            flags.append((~torch.isfinite(norms)).any().float().reshape(1))
        bad = all_reduce_(torch.cat(flags).max().double().reshape(1), dist.ReduceOp.MAX)
        self.skipped = bool(bad.item() > 0)
        if self.skipped:
            return None
        return super().step(closure)


def build_model(cfg: Config, ds_config: dict[str, Any]) -> nn.Module:
    """The model; under ZeRO-3 built inside ``deepspeed.zero.Init`` so no rank holds it whole."""
    import deepspeed

    torch.manual_seed(cfg.train.seed)
    with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=cfg.deepspeed.zero_stage == 3):
        model = PMNetForCausalLM(cfg.model)
    model.set_activation_checkpointing(cfg.train.activation_checkpointing)
    if cfg.train.compile and cfg.train.device != "cpu" and torch.cuda.is_available():
        # shared compiled graphs for all layers + compiled memory cores, or whole layers (pmnet/model/compiled.py)
        compile_fast_path(model, cfg.train.compile_mode)
    if cfg.deepspeed.zero_stage == 3 and cfg.model.use_memory:
        # The fused memory paths read their sub-modules' weights directly (norm.weight, proj_*.weight)
        # without calling those sub-modules, so ZeRO-3 must gather the whole memory module at its
        # forward instead of hooking each child. The write returns a NamedTuple (WriteResult), whose
        # tensors ZeRO-3 finds like those of any tuple.
        from deepspeed.utils import set_z3_leaf_modules

        set_z3_leaf_modules(model, [PhasorMemoryRead, PhasorMemoryWrite])
    return model


def build_engine(cfg: Config, model: nn.Module, env: DistEnv, ds_config: dict[str, Any]) -> tuple[Any, GuardedAdamW]:
    """Wrap ``model`` in a DeepSpeed engine with a GuardedAdamW client optimizer."""
    import deepspeed

    o = cfg.optim
    on_gpu = env.device.type == "cuda" and not cfg.deepspeed.offload_optimizer
    optimizer = GuardedAdamW(
        param_groups(model, o.weight_decay),
        device=env.device,
        lr=lr_at(0, cfg.train.max_steps, o),
        betas=(o.betas[0], o.betas[1]),
        eps=o.eps,
        fused=True if on_gpu else None,
    )
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config, dist_init_required=False)
    return engine, optimizer


def set_lr(engine: Any, lr: float) -> None:
    """Put ``lr`` on every param group DeepSpeed's optimizer exposes (they are the client's groups)."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
