"""Training loss curves of the fast path and the slow per-position reference (issue 8), on CPU.

Same model init, same batches, same optimizer; only ``memory_impl`` differs. bf16 weights
(phases fp32, as in GPU training) by default. The reference loops over positions, so this
uses the tiny preset and short sequences:

    python benchmarks/fast_vs_reference_curve.py --steps 200 --json benchmarks/results/fast_vs_reference.json

Reports the per-step losses of both and their largest / mean absolute difference. The GPU
version of this check (119M, 8 KiB sequences) was not run in the issue-8 session.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.small_train import load_text, train_losses
from pmnet.model import PMNetConfig, PMNetForCausalLM


def curve(impl: str, steps: int, seq: int, batch: int, dtype: torch.dtype, data: torch.Tensor) -> list[float]:
    """Per-step training losses (nats) of ``memory_impl=impl``."""
    cfg = PMNetConfig.from_preset("tiny", memory_impl=impl, attn_backend="sdpa")
    torch.manual_seed(0)
    model = PMNetForCausalLM(cfg).to(dtype).train()
    return train_losses(model, data, steps, seq, batch, lambda step: 3e-3 * min(1.0, (step + 1) / 20))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    data = load_text()
    result = {"args": {k: str(v) for k, v in vars(args).items()}}
    for impl in ("fast", "reference"):
        t0 = time.time()
        result[impl] = curve(impl, args.steps, args.seq, args.batch, dtype, data)
        result[f"{impl}_seconds"] = time.time() - t0
        print(
            f"{impl}: {result[f'{impl}_seconds']:.0f} s, last-20 mean loss {sum(result[impl][-20:]) / 20:.4f}",
            flush=True,
        )
    diff = [abs(a - b) for a, b in zip(result["fast"], result["reference"])]
    result["max_abs_diff"], result["mean_abs_diff"] = max(diff), sum(diff) / len(diff)
    late = slice(args.steps // 2, None)
    result["mean_bpb_second_half"] = {
        impl: sum(result[impl][late]) / len(result[impl][late]) / math.log(2) for impl in ("fast", "reference")
    }
    print(f"max |loss diff| {result['max_abs_diff']:.4f} nats, mean {result['mean_abs_diff']:.4f}; "
          f"second-half mean BPB {result['mean_bpb_second_half']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
