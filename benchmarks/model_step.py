"""Time the bare model's training step (forward + backward, no optimizer, no DeepSpeed) per variant.

A fast loop for performance work: which attention backend, memory implementation,
torch.compile and micro-batch give the most bytes/s. The full path (DeepSpeed engine,
optimizer) is ``benchmarks/train_throughput.py``.

    python benchmarks/model_step.py --preset pmnet_119m --seq 8192 --micro 8 \
        --variants flex:fast:compile,flex:fast,sdpa:fast --json out.json

Prints a table (median step time over timed steps, bytes/s, MFU against the bf16 matmul
peak measured in the same run, peak memory) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmnet.model import PMNetConfig, PMNetForCausalLM, lm_loss
from pmnet.train.metrics import measure_matmul_flops


def time_variant(
    preset: str, variant: str, seq: int, micro: int, steps: int, warmup: int, device: torch.device, ckpt: bool
) -> dict:
    """Median seconds per forward+backward of one micro-batch for ``backend:impl[:compile]``."""
    parts = variant.split(":")
    backend, impl = parts[0], parts[1]
    compiled = "compile" in parts[2:]
    cfg = PMNetConfig.from_preset(preset, attn_backend=backend, memory_impl=impl, attention_dropout=0.0)
    torch.manual_seed(0)
    model = PMNetForCausalLM(cfg).to(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = model.to(dtype)
    model.train()
    if ckpt:
        model.set_activation_checkpointing(True)
    if compiled:
        for i, layer in enumerate(model.model.layers):
            model.model.layers[i] = torch.compile(layer)
    ids = torch.randint(1, 254, (micro, seq + 1), device=device)
    inp, tgt = ids[:, :-1], ids[:, 1:]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits, _ = model(inp)
        loss = lm_loss(logits, tgt)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    bytes_per_step = micro * seq
    return {
        "variant": variant,
        "checkpointing": ckpt,
        "micro": micro,
        "seq": seq,
        "step_s": med,
        "bytes_per_s": bytes_per_step / med,
        "flops_per_byte": cfg.flops_per_byte(seq, training=True),
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan"),
        "loss": loss.item(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--variants", default="sdpa:fast", help="comma list of backend:impl[:compile]")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing per layer")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = measure_matmul_flops(device)
    rows = []
    for variant in args.variants.split(","):
        try:
            row = time_variant(
                args.preset, variant, args.seq, args.micro, args.steps, args.warmup, device, args.checkpointing
            )
        except Exception as err:  # a variant that fails (OOM, compile error) is reported, not fatal
            row = {"variant": variant, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
        if "bytes_per_s" in row:
            row["mfu"] = row["bytes_per_s"] * row["flops_per_byte"] / peak if peak else float("nan")
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"device={device} peak_bf16_tflops={peak / 1e12:.0f} preset={args.preset} seq={args.seq} micro={args.micro}")
    print(f"{'variant':<24} {'step ms':>9} {'bytes/s':>11} {'MFU':>6} {'mem GiB':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<24} ERROR {r['error']}")
        else:
            print(
                f"{r['variant']:<24} {r['step_s'] * 1e3:9.1f} {r['bytes_per_s']:11.0f} {r['mfu']:6.1%} "
                f"{r['peak_mem_gib']:8.2f}"
            )
    if args.json:
        args.json.write_text(json.dumps({"peak_flops": peak, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
