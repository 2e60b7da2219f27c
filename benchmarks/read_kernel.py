"""The memory read's fused softmax / weighted-feature kernels against inductor's code, alone (GPU).

Times the compiled read core (``fused.cores(True).read``: norm, query, key projection, phase
scores, softmax, weighted features, folded value/output GEMM) at one model's shapes with the
kernels of ``pmnet/model/triton_read.py`` switched off and on, forward and forward + backward,
in one process one after the other (CUDA events, median of ``--reps`` after warm-up), with the
largest difference between the two in the output and in every gradient, and the peak memory.

    python benchmarks/read_kernel.py [--preset pmnet_119m] [--batch 8] [--seq 8192] [--reps 20] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmnet.model import PMNetConfig, fused, triton_read


def _inputs(cfg: PMNetConfig, b: int, t: int, dev: torch.device) -> list[torch.Tensor]:
    """h, slot features and the read's weights in bf16 (the training dtype), random."""
    d, m, r, n = cfg.hidden_size, cfg.memory_size, cfg.num_memory_read_heads, cfg.num_memory
    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape: int, std: float = 0.02) -> torch.Tensor:
        return (torch.randn(*shape, device=dev, generator=g) * std).to(torch.bfloat16).requires_grad_()

    feats = torch.sin(torch.rand(b, t, n, m, device=dev, generator=g) * 6.28)
    feats = torch.cat([feats, (1 - feats**2).sqrt()], -1).to(torch.bfloat16).requires_grad_()
    h = rnd(b, t, d, std=1.0)
    norm_w = torch.ones(d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    return [h, feats, norm_w, rnd(r * m, d), rnd(r * m), rnd(2 * r * m, 2 * m), rnd(2 * r * m), rnd(d, r * m), rnd(d)]


def _time(fn: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run(cfg: PMNetConfig, b: int, t: int, reps: int) -> dict[str, Any]:
    dev = torch.device("cuda")
    args = _inputs(cfg, b, t, dev)
    read = fused.cores(True).read
    eps, heads = cfg.rms_norm_eps, cfg.num_memory_read_heads
    results: dict[str, Any] = {}
    outs: dict[bool, list[torch.Tensor]] = {}
    dout = torch.randn(b, t, cfg.hidden_size, device=dev, dtype=torch.bfloat16)
    for enabled in (False, True):
        triton_read.set_enabled(enabled)

        def fwd() -> torch.Tensor:
            with torch.no_grad():
                return read(*args, eps, heads)

        def fwd_bwd() -> list[torch.Tensor]:
            out = read(*args, eps, heads)
            return [out.detach(), *torch.autograd.grad(out, args, dout)]

        for _ in range(3):  # compile and warm up
            fwd_bwd()
        fwd()
        torch.cuda.reset_peak_memory_stats()
        label = "kernel" if enabled else "inductor"
        results[label] = {
            "forward_ms": _time(fwd, reps),
            "forward_backward_ms": _time(fwd_bwd, reps),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        }
        outs[enabled] = fwd_bwd()
    triton_read.set_enabled(True)
    names = ["out", "h", "feats", "norm_w", "wq", "bq", "wkv", "bkv", "wo", "bo"]
    results["max_rel_diff"] = {
        name: float((x.float() - y.float()).abs().max() / (y.float().abs().max() + 1e-30))
        for name, x, y in zip(names, outs[True], outs[False], strict=True)
    }
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="pmnet_119m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("read_kernel: needs a CUDA GPU (the kernels are GPU code; their CPU tests run in the interpreter)")
        return 2
    cfg = PMNetConfig.from_preset(args.preset)
    res = run(cfg, args.batch, args.seq, args.reps)
    print(f"read core, {args.preset}, {args.batch} x {args.seq} bytes, bf16, compiled (median of {args.reps})")
    print("| path | forward ms | forward+backward ms | peak GiB |\n| --- | --- | --- | --- |")
    for label in ("inductor", "kernel"):
        row = res[label]
        print(f"| {label} | {row['forward_ms']:.3f} | {row['forward_backward_ms']:.3f} | {row['peak_gib']:.2f} |")
    print(
        "max relative difference kernel vs inductor:",
        json.dumps({k: f"{v:.2e}" for k, v in res["max_rel_diff"].items()}),
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"preset": args.preset, "batch": args.batch, "seq": args.seq, **res}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
