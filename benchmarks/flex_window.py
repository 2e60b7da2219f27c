"""Sliding-window flex attention alone on the GPU: block-mask size and kernel options (a sweep).

The 119M's attention (12 heads of 64, window 128, 8 x 8,192 bytes per micro-batch) costs about
110 ms per optimizer step on the H200 (run 7's profile: backward ~0.9 ms per call, forward
~0.27 ms), several times what its bytes moved and FLOPs need. This times ``flex_attention``
forward and forward + backward for block masks of 128 (``create_block_mask``'s default, what
``pmnet.model.attention`` builds) and 64 positions, with kernel options of a small grid, and
checks every configuration's output and gradients against the default's.

    python benchmarks/flex_window.py [--batch 8 --seq 8192 --heads 12 --head-dim 64 --window 128] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scan_kernel import cuda_ms

CONFIGS: list[tuple[str, int, dict[str, Any] | None]] = [
    ("default", 128, None),
    ("mask64", 64, {"BLOCK_M": 64, "BLOCK_N": 64}),
    (
        "mask64-bwd32",
        64,
        {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_M1": 32, "BLOCK_N1": 64, "BLOCK_M2": 64, "BLOCK_N2": 32},
    ),
    ("mask128-n64", 128, {"BLOCK_M": 128, "BLOCK_N": 64}),
    ("mask128-bwd64", 128, {"BLOCK_M1": 64, "BLOCK_N1": 64, "BLOCK_M2": 64, "BLOCK_N2": 64}),
    ("mask128-bwd64-w8", 128, {"BLOCK_M1": 64, "BLOCK_N1": 128, "BLOCK_M2": 128, "BLOCK_N2": 64, "num_warps": 8}),
    ("mask128-stages2", 128, {"num_stages": 2}),
]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    dev = torch.device("cuda")
    b, h, t, hd, w = args.batch, args.heads, args.seq, args.head_dim, args.window
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (
        torch.randn(b, h, t, hd, device=dev, generator=g, dtype=torch.bfloat16).requires_grad_() for _ in range(3)
    )
    dout = torch.randn(b, h, t, hd, device=dev, generator=g, dtype=torch.bfloat16)

    def mask_mod(bi: torch.Tensor, hi: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return (kv_idx <= q_idx) & (kv_idx > q_idx - w)

    flex = torch.compile(flex_attention, dynamic=False)
    rows: list[dict[str, Any]] = []
    base: list[torch.Tensor] | None = None
    for label, block, options in CONFIGS:
        row: dict[str, Any] = {"config": label, "mask_block": block, "kernel_options": options}
        try:
            mask = create_block_mask(mask_mod, None, None, t, t, device=dev, BLOCK_SIZE=block, _compile=True)
            kw = {"block_mask": mask, "scale": hd**-0.5} | ({"kernel_options": options} if options else {})

            def fwd(kw: dict[str, Any] = kw) -> torch.Tensor:
                with torch.no_grad():
                    return flex(q, k, v, **kw)

            def fwd_bwd(kw: dict[str, Any] = kw) -> list[torch.Tensor]:
                out = flex(q, k, v, **kw)
                return [out.detach(), *torch.autograd.grad(out, (q, k, v), dout)]

            for _ in range(3):
                res = fwd_bwd()
            fwd()
            row["forward_ms"] = cuda_ms(fwd, args.reps, 0)
            row["forward_backward_ms"] = cuda_ms(fwd_bwd, args.reps, 0)
            if base is None:
                base = res
            row["max_diff_vs_default"] = max(float((x.float() - y.float()).abs().max()) for x, y in zip(res, base))
        except Exception as err:  # a configuration flex or Triton refuses (block sizes, shared memory)
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("flex_window: needs a CUDA GPU")
        return 2
    rows = run(args)
    print(
        f"\nflex attention, {args.batch} x {args.heads} heads x {args.seq} x {args.head_dim}, window {args.window}, bf16"
    )
    print(
        "| config | mask block | forward ms | forward+backward ms | max diff vs default |\n| --- | --- | --- | --- | --- |"
    )
    for r in rows:
        if "error" in r:
            print(f"| {r['config']} | {r['mask_block']} | error: {r['error'][:80]} | | |")
        else:
            print(
                f"| {r['config']} | {r['mask_block']} | {r['forward_ms']:.3f} | {r['forward_backward_ms']:.3f} "
                f"| {r['max_diff_vs_default']:.2e} |"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
