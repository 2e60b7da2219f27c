"""The memory write's per-group prefix sum on the GPU: the Triton kernel against the compiled blocked scan.

    python benchmarks/scan_kernel.py [--batch 8 --seq 8192 --dim 2048 --groups 1,4,16,64] [--json OUT.json]
    python benchmarks/scan_kernel.py --sweep [--sweep-groups 16] [--json OUT.json]   # block sizes too

Times (CUDA events, median of ``--reps`` after ``--warmup``), per group count G, at the 119M
model's shapes by default (B = 8, T = 8192, D = N x M = 2048; G = 1, 4, 16, 64 by level):

* ``blocked``: ``scan.blocked_segmented_prefix_sum`` through ``torch.compile(fullgraph=True)``
  (static shapes), what the fast path ran before the kernel;
* ``triton``: ``triton_scan.segmented_prefix_sum`` called eagerly (the sort plus one kernel);
* ``triton-compiled``: the same through ``torch.compile(fullgraph=True)`` (as ``fused.scan_core`` runs it).

Each forward alone and forward + backward (gradients of both outputs with respect to delta and
the carried state), the effective bandwidth of the kernel's forward (one read and one write of
[B, T, D] fp32), and the largest angle difference between the kernel and the blocked scan and
between each and the fp64 oracle (``reference.segmented_prefix_sum``; ``--no-reference`` skips
it). ``--sweep`` also times the kernel for every (BLOCK_T, BLOCK_D, warps, stages) of a grid and
checks each against the defaults. Needs a CUDA GPU (exits with a message otherwise).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmnet.model import triton_scan
from pmnet.model.reference import segmented_prefix_sum
from pmnet.model.scan import blocked_segmented_prefix_sum

TWO_PI = 2 * math.pi
CALLS_PER_STEP = 32  # scan calls per optimizer step of the 119M run (micro-batches x write layers)


def angle_err(a: torch.Tensor, b: torch.Tensor) -> float:
    d = torch.remainder(a.double() - b.double() + math.pi, TWO_PI) - math.pi
    return float(d.abs().max())


def cuda_ms(fn: Callable[[], Any], reps: int, warmup: int) -> float:
    """Median milliseconds of ``fn`` (CUDA events around each call)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def make_inputs(b: int, t: int, dim: int, groups: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Increments like the model's (``s * pi tanh(.)``, |delta| < pi), uniform groups, carried states."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    delta = (
        torch.rand(b, t, dim, device="cuda", generator=g)
        * math.pi
        * torch.tanh(torch.randn(b, t, dim, device="cuda", generator=g))
    )
    group = torch.randint(0, groups, (b, t), device="cuda", generator=g)
    carried = TWO_PI * torch.rand(b, groups, dim, device="cuda", generator=g)
    grad_out = torch.randn(b, t, dim, device="cuda", generator=g)
    grad_state = torch.randn(b, groups, dim, device="cuda", generator=g)
    return delta, group, carried, grad_out, grad_state


def time_scan(scan: Callable, inputs: tuple[torch.Tensor, ...], reps: int, warmup: int) -> dict[str, float]:
    """Forward and forward + backward milliseconds of ``scan(delta, group, carried)``."""
    delta, group, carried, grad_out, grad_state = inputs
    d = delta.clone().requires_grad_()
    c = carried.clone().requires_grad_()

    def forward() -> None:
        with torch.no_grad():
            scan(delta, group, carried)

    def forward_backward() -> None:
        out, state = scan(d, group, c)
        torch.autograd.grad([out, state], [d, c], [grad_out, grad_state])

    return {"fwd_ms": cuda_ms(forward, reps, warmup), "fwd_bwd_ms": cuda_ms(forward_backward, reps, warmup)}


def compare(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The three variants per group count: times and differences."""
    rows = []
    gb = 2 * args.batch * args.seq * args.dim * 4 / 1e9  # one read + one write of [B, T, D] fp32
    for groups in args.groups:
        inputs = make_inputs(args.batch, args.seq, args.dim, groups, seed=groups)
        delta, group, carried = inputs[:3]
        variants = {
            "blocked": torch.compile(blocked_segmented_prefix_sum, fullgraph=True, dynamic=False),
            "triton": triton_scan.segmented_prefix_sum,
            "triton-compiled": torch.compile(triton_scan.segmented_prefix_sum, fullgraph=True, dynamic=False),
        }
        outs = {}
        for name, scan in variants.items():
            row = {"G": groups, "variant": name, **time_scan(scan, inputs, args.reps, args.warmup)}
            row["fwd_GB_per_s"] = gb / (row["fwd_ms"] / 1e3)
            with torch.no_grad():
                outs[name] = scan(delta, group, carried)
            rows.append(row)
        diff = max(angle_err(a, b) for a, b in zip(outs["triton"], outs["blocked"]))
        diff_c = max(angle_err(a, b) for a, b in zip(outs["triton"], outs["triton-compiled"]))
        ref = None if args.no_reference else segmented_prefix_sum(delta.double(), group, carried.double())
        for row in rows[-3:]:
            row["max_diff_triton_vs_blocked"] = diff
            row["max_diff_triton_eager_vs_compiled"] = diff_c
            if ref is not None:
                row["max_err_vs_fp64"] = max(angle_err(a, b) for a, b in zip(outs[row["variant"]], ref))
        del ref, outs, inputs
        torch.cuda.empty_cache()
    return rows


def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The kernel (eager) for every block configuration of the grid, per group count in ``--sweep-groups``."""
    rows = []
    grid = itertools.product((32, 64, 128), (16, 32, 64), (1, 2, 4), (1, 2))
    configs = [c for c in grid if c[0] * c[1] // (32 * c[2]) <= 128]  # at most 128 elements per thread
    for groups in args.sweep_groups:
        inputs = make_inputs(args.batch, args.seq, args.dim, groups, seed=groups)
        delta, group, carried = inputs[:3]
        with torch.no_grad():
            base = triton_scan.segmented_prefix_sum(delta, group, carried)
        for cfg in configs:

            def scan(d, g, c, cfg=cfg):
                return triton_scan.segmented_prefix_sum(d, g, c, *cfg)

            try:
                row = {"G": groups, "block_t": cfg[0], "block_d": cfg[1], "warps": cfg[2], "stages": cfg[3]}
                row |= time_scan(scan, inputs, args.reps, args.warmup)
                with torch.no_grad():
                    out = scan(delta, group, carried)
                row["max_diff_vs_default"] = max(angle_err(a, b) for a, b in zip(out, base))
            except Exception as err:  # a configuration Triton cannot compile (shared memory, registers)
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--dim", type=int, default=2048, help="D = N x M phases per group (119M: 4 x 512)")
    ap.add_argument("--groups", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64])
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--no-reference", action="store_true", help="skip the fp64 oracle (saves GPU memory)")
    ap.add_argument("--sweep", action="store_true", help="also time a grid of block configurations")
    ap.add_argument("--sweep-groups", type=lambda s: [int(x) for x in s.split(",")], default=[16])
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("scan_kernel.py: needs a CUDA GPU (the Triton scan runs only there); none is visible")
    if triton_scan.triton is None:
        sys.exit("scan_kernel.py: triton is not installed")
    triton_scan.set_enabled(True)

    rows = compare(args)
    print(
        f"B={args.batch} T={args.seq} D={args.dim}, {torch.cuda.get_device_name()}, "
        f"default blocks (BLOCK_T, BLOCK_D, warps, stages) = "
        f"{(triton_scan.BLOCK_T, triton_scan.BLOCK_D, triton_scan.NUM_WARPS, triton_scan.NUM_STAGES)}"
    )
    print(
        f"{'G':>3} {'variant':<16} {'fwd ms':>8} {'fwd+bwd ms':>11} {'fwd GB/s':>9} {'vs blocked':>11} {'vs fp64':>9}"
    )
    for r in rows:
        ref = f"{r['max_err_vs_fp64']:9.1e}" if "max_err_vs_fp64" in r else f"{'-':>9}"
        print(
            f"{r['G']:>3} {r['variant']:<16} {r['fwd_ms']:8.3f} {r['fwd_bwd_ms']:11.3f} {r['fwd_GB_per_s']:9.0f} "
            f"{r['max_diff_triton_vs_blocked']:11.1e} {ref}"
        )
    mean = {
        v: statistics.mean(r["fwd_bwd_ms"] for r in rows if r["variant"] == v) for v in ("blocked", "triton-compiled")
    }
    print(
        f"mean forward + backward over G: blocked {mean['blocked']:.3f} ms, triton (compiled) "
        f"{mean['triton-compiled']:.3f} ms; x {CALLS_PER_STEP} calls per 119M step: "
        f"{CALLS_PER_STEP * (mean['blocked'] - mean['triton-compiled']):.1f} ms saved"
    )
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    if args.sweep:
        result["sweep"] = sweep(args)
        ok = [r for r in result["sweep"] if "error" not in r]
        print(
            f"{'G':>3} {'BLOCK_T':>7} {'BLOCK_D':>7} {'warps':>5} {'stages':>6} {'fwd ms':>8} {'fwd+bwd ms':>11} {'diff':>8}"
        )
        for r in sorted(ok, key=lambda r: r["fwd_bwd_ms"])[:15]:
            print(
                f"{r['G']:>3} {r['block_t']:>7} {r['block_d']:>7} {r['warps']:>5} {r['stages']:>6} "
                f"{r['fwd_ms']:8.3f} {r['fwd_bwd_ms']:11.3f} {r['max_diff_vs_default']:8.1e}"
            )
        failed = [r for r in result["sweep"] if "error" in r]
        if failed:
            print(f"{len(failed)} configurations failed to compile or run (see the JSON)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
