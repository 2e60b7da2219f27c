"""One rank of a small DeepSpeed job on CPU (gloo) for the checkpoint tests.

Run by the tests as ``python tests/ckpt/ds_worker.py SPEC.json`` with RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT set (see ``helpers.launch``). It builds a tiny
PMNet engine, optionally resumes from a checkpoint, trains, saves where asked, and writes
``result_rank{R}.json`` (per-step losses, the samples each step consumed, logits of a
fixed input) next to the spec. The data stream is a deterministic list of samples
indexed by a global position (the dataloader state), split over ranks per step.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch


def _sample(i: int, nbytes: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randint(1, 254, (nbytes,), generator=g)


def main() -> None:
    spec_path = Path(sys.argv[1])
    spec = json.loads(spec_path.read_text())
    import torch.distributed as dist

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(minutes=5))
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # no JIT build, no /dev/shm leftovers
    deepspeed.init_distributed(dist_backend="gloo")
    from pmnet.config import Config
    from pmnet.model import PMNetConfig, PMNetForCausalLM, lm_loss
    from pmnet.train.checkpoint import load_checkpoint, save_checkpoint
    from pmnet.train.grad_norms import family_grad_norms, family_grad_norms_reference

    rank, world = dist.get_rank(), dist.get_world_size()
    stage, micro, gbatch = spec["stage"], spec.get("micro", 2), spec.get("global_batch", 4)
    mcfg = PMNetConfig.from_preset("tiny", **spec.get("model", {}))
    cfg = Config(model=mcfg)
    cfg.train.micro_batch_size, cfg.train.global_batch_size = micro, gbatch
    cfg.train.precision = spec.get("precision", "fp32")
    cfg.deepspeed.zero_stage = stage
    gas = gbatch // (micro * world)
    ds_cfg = {
        "train_batch_size": gbatch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": gas,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": cfg.train.precision == "bf16", "check_grad_overflow": False},  # as pmnet.train.engine
        "steps_per_print": 2**31 - 1,
    }
    if cfg.train.precision == "bf16" and stage > 0:  # as pmnet.train.engine: fp32 accumulation (ZeRO-1: BF16_Optimizer)
        ds_cfg["data_types"] = {"grad_accum_dtype": "fp32"}
    torch.manual_seed(spec.get("seed", 0))
    with deepspeed.zero.Init(config_dict_or_path=ds_cfg, enabled=stage == 3):  # as pmnet.train.engine does
        model = PMNetForCausalLM(mcfg)
    decay = [p for n, p in model.named_parameters() if len(getattr(p, "ds_shape", p.shape)) >= 2]
    plain = [p for n, p in model.named_parameters() if len(getattr(p, "ds_shape", p.shape)) < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}], lr=3e-3)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds_cfg, dist_init_required=False)

    nbytes = spec.get("sample_bytes", 33)
    step, pos = 0, 0
    result: dict = {"rank": rank, "world": world, "losses": {}, "samples": {}}
    if spec.get("resume"):
        if spec.get("skip_scan"):  # test of the second layer: DeepSpeed's own torch.load meets the file
            import pmnet.train.checkpoint as ckpt_mod

            ckpt_mod._unsafe_reason = lambda ckpt: None
        loaded = load_checkpoint(engine, spec["resume"], load_optimizer=spec.get("load_optimizer", True))
        step, pos = loaded.trainer_state["step"], loaded.dataloader_state["position"]
        result["resumed_from"] = step
        if spec.get("debug_optim"):
            inner = engine.optimizer.optimizer
            dbg = []
            flats = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None) or [
                q for g in inner.param_groups for q in g["params"]
            ]
            for p in flats:
                st = inner.state.get(p, {})
                dbg.append(
                    [
                        float(p.detach().double().pow(2).sum()),
                        float(st["exp_avg"].double().pow(2).sum()) if "exp_avg" in st else None,
                        float(st["exp_avg_sq"].double().sum()) if "exp_avg_sq" in st else None,
                        float(st.get("step", -1)),
                    ]
                )
            result["dbg"] = dbg
            result["lr"] = [g["lr"] for g in inner.param_groups]
    while step < spec["steps"]:
        taken, loss_sum = [], 0.0
        for micro_i in range(gas):
            base = pos + (micro_i * world + rank) * micro
            idx = list(range(base, base + micro))
            taken += idx
            batch = torch.stack([_sample(i, nbytes) for i in idx])
            logits, _ = engine(batch[:, :-1])
            loss = lm_loss(logits.float(), batch[:, 1:])
            loss_sum += loss.item()
            engine.backward(loss)
            if spec.get("family_norms") and micro_i == gas - 1:  # both are collectives: every rank calls them
                named = list(engine.module.named_parameters())
                result.setdefault("family_norms", {})[step + 1] = {
                    "fast": family_grad_norms(named, torch.device("cpu")),
                    "reference": family_grad_norms_reference(named, torch.device("cpu")),
                }
            engine.step()
        pos += gbatch
        step += 1
        lt = torch.tensor([loss_sum], dtype=torch.float64)
        dist.all_reduce(lt)
        result["losses"][step] = lt.item() / (world * gas)  # mean over the whole global batch
        result["samples"][step] = taken
        if step in spec.get("save_at", []):
            save_checkpoint(
                engine, spec["run_dir"], step,
                trainer_state={"bytes_seen": pos * (nbytes - 1), "samples_seen": pos, "loss": result["losses"][step]},
                dataloader_state={"position": pos}, config=cfg,
                keep_last=spec.get("keep_last", 3), keep_every=spec.get("keep_every", 0),
            )  # fmt: skip
    if spec.get("logits"):
        engine.eval()
        with torch.no_grad():
            x = torch.stack([_sample(10**6 + i, nbytes) for i in range(2)])[:, :-1]
            logits, _ = engine(x)
        result["logits"] = logits.float().tolist()
    (spec_path.parent / f"result_rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Every rank has written its result and passed the barrier. Skip interpreter finalization:
    # a 2-rank bf16 ZeRO-1 worker once died there with SIGABRT ("terminate called without an
    # active exception", after its last output; not reproduced in 14 reruns), the teardown abort
    # of gloo / DeepSpeed threads that pytorch/pytorch#179291 describes.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
