"""The tail of an optimizer step under DeepSpeed ZeRO-2 bf16: what runs between the last backward and
the next forward, counted in operator launches and timed.

    python benchmarks/step_tail.py [--preset pmnet_119m] [--reps 5] [--json OUT.json]

The H200 trace of the 119M launcher step (benchmarks/RESULTS.md, issue 16, fourth session) showed
the GPU idle for most of the step's last 200 ms while the host issued thousands of small launches,
one group per parameter tensor (258 in the 119M model). Two of them are ours to choose:

* ``bf16.check_grad_overflow``: DeepSpeed's own ZeRO-1/2 non-finite check (about six launches per
  parameter tensor and a host sync), redundant with GuardedAdamW's check. The trainer turns it
  off (``pmnet.train.engine.deepspeed_config``); ``on`` here is DeepSpeed's default.
* ``grad_norm/<family>`` on logged steps: ``grad_norms.family_grad_norms`` (each rank's share,
  one all-reduce) against ``family_grad_norms_reference`` (``safe_get_full_grad`` per parameter:
  a whole-gradient copy and an all-reduce each).

One process (world 1, gloo on CPU, NCCL on a GPU), a real DeepSpeed engine on the model's real
parameter list, a tiny batch (the tail does not depend on the batch). Per variant: operator launches
counted by torch.profiler (aten ops on CPU, kernels and copies on a GPU) and the median wall time over
``--reps`` steps (synchronised on a GPU). On the CPU the times are dominated by arithmetic over the
119M gradient, not launches: read the counts there, the times on a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmnet.config import Config
from pmnet.model import PMNetConfig, PMNetForCausalLM, lm_loss
from pmnet.train.distributed import DistEnv, setup_distributed
from pmnet.train.engine import build_engine, deepspeed_config
from pmnet.train.grad_norms import family_grad_norms, family_grad_norms_reference


def _launches(fn: Callable[[], Any], cuda: bool) -> int:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    events = prof.events()
    if cuda:
        return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return sum(1 for e in events if e.name.startswith("aten::") and e.cpu_parent is None)


def _timed(fn: Callable[[], Any], cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _engine(preset: str, check_overflow: bool, env: DistEnv) -> tuple[Any, PMNetForCausalLM]:
    """The trainer's own engine (``build_engine``: GuardedAdamW, the DeepSpeed config it writes)."""
    cfg = Config(model=PMNetConfig.from_preset(preset))
    cfg.train.precision, cfg.deepspeed.zero_stage = "bf16", 2
    cfg.train.micro_batch_size = cfg.train.global_batch_size = 1
    cfg.deepspeed.check_grad_overflow = check_overflow
    model = PMNetForCausalLM(cfg.model).to(env.device)
    engine, _ = build_engine(cfg, model, env, deepspeed_config(cfg, 1))
    return engine, model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="pmnet_119m")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seq", type=int, default=32, help="bytes per step (the tail does not depend on it)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    env = setup_distributed()  # the trainer's own set-up: one rank, a free port, gloo or NCCL
    device = env.device
    cuda = device.type == "cuda"
    ids = torch.randint(1, 254, (1, args.seq + 1), device=device)
    rows: list[dict[str, Any]] = []
    for check in (True, False):
        engine, model = _engine(args.preset, check, env)
        named = list(engine.module.named_parameters())

        def backward(engine: Any = engine) -> None:
            logits, _ = engine(ids[:, :-1])
            engine.backward(lm_loss(logits.float(), ids[:, 1:]))

        parts: dict[str, Callable[[], Any]] = {}
        if check:  # the norms do not depend on the overflow switch: measured once
            parts["family norms, reference"] = partial(family_grad_norms_reference, named, device)
            parts["family norms, fast"] = partial(family_grad_norms, named, device)
        parts["engine.step()"] = engine.step
        for label, fn in parts.items():
            backward()
            launches = _launches(fn, cuda)
            if label != "engine.step()":
                engine.step()
            times = []
            for _ in range(args.reps):
                backward()
                times.append(_timed(fn, cuda))
                if label != "engine.step()":
                    engine.step()
            name = f"{label} (check_grad_overflow {'on' if check else 'off'})" if label == "engine.step()" else label
            rows.append({"part": name, "launches": launches, "median_ms": 1e3 * statistics.median(times)})
        n_params = sum(1 for _ in model.parameters())
        del engine, model
    print(f"{args.preset}: {n_params} parameter tensors, {'GPU' if cuda else 'CPU'}, ZeRO-2 bf16, world 1")
    print(f"{'part':48s} {'launches':>9s} {'median ms':>10s}")
    for r in rows:
        print(f"{r['part']:48s} {r['launches']:9d} {r['median_ms']:10.2f}")
    if args.json:
        out = {"preset": args.preset, "device": "cuda" if cuda else "cpu", "parameter_tensors": n_params, "rows": rows}
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
