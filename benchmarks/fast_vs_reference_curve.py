"""Training loss curves of the fast path and the slow per-position reference (issue 8).

Same model init, same batches, same optimizer; only ``memory_impl`` differs. bf16 weights
(phases fp32, as in GPU training) by default. The reference loops over positions, so this
uses short sequences; on the CPU the tiny preset:

    python benchmarks/fast_vs_reference_curve.py --steps 200 --json benchmarks/results/fast_vs_reference.json

and on a GPU the 119M model, the fast path compiled as in training (Triton score kernel):

    python benchmarks/fast_vs_reference_curve.py --preset pmnet_119m --device cuda --compile \
        --seq 128 --batch 8 --lr 6e-4 --text .bench_text --json OUT/fast_vs_reference_119m.json

(``benchmarks/h200_throughput_call.sh OUT curve .bench_text`` runs exactly that; the reference
takes ~0.6 s per step on the H200 at these shapes.)

Reports the per-step losses of both and their largest / mean absolute difference.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.small_train import batches, load_text, train_losses
from pmnet.model import PMNetConfig, PMNetForCausalLM, lm_loss


def _model(impl: str, preset: str, dtype: torch.dtype, device: str) -> PMNetForCausalLM:
    """The run's model with ``memory_impl=impl``: the same init for both paths (seed 0)."""
    cfg = PMNetConfig.from_preset(preset, memory_impl=impl, attn_backend="sdpa", attention_dropout=0.0)
    torch.manual_seed(0)
    return PMNetForCausalLM(cfg).to(dtype).to(device).train()


def _warmup(lr: float) -> Callable[[int], float]:
    return lambda step: lr * min(1.0, (step + 1) / 20)


def curve(
    impl: str,
    steps: int,
    seq: int,
    batch: int,
    dtype: torch.dtype,
    data: torch.Tensor,
    preset: str = "tiny",
    device: str = "cpu",
    lr: float = 3e-3,
    compile_fast: bool = False,
) -> list[float]:
    """Per-step training losses (nats) of ``memory_impl=impl``."""
    model = _model(impl, preset, dtype, device)
    if compile_fast and impl == "fast":
        from pmnet.model.compiled import compile_fast_path

        compile_fast_path(model, "modules")
    t0 = time.time()

    def progress(step: int, loss: float) -> None:
        if (step + 1) % 25 == 0:
            print(f"  {impl} step {step + 1}: loss {loss:.4f} ({time.time() - t0:.0f} s)", flush=True)

    return train_losses(model, data, steps, seq, batch, _warmup(lr), progress)


def cross_check(
    step: int, seq: int, batch: int, dtype: torch.dtype, data: torch.Tensor, preset: str, device: str, lr: float
) -> dict[str, float]:
    """Train the reference ``step`` steps; then the loss of batch ``step + 1`` under both paths,
    both loaded with those weights (nats). Equal losses: a spike of the training trajectory at
    that batch; different ones: the two forward passes disagree."""
    ref = _model("reference", preset, dtype, device)
    train_losses(ref, data, step, seq, batch, _warmup(lr))
    ids = list(batches(data, step + 1, seq, batch))[-1].to(device)
    out = {}
    for impl in ("fast", "reference"):
        model = _model(impl, preset, dtype, device)
        model.load_state_dict(ref.state_dict())
        with torch.no_grad():
            logits, _ = model(ids[:, :-1])
            out[impl] = lm_loss(logits, ids[:, 1:]).item()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--preset", default="tiny", help="model preset (tiny, pmnet_30m, pmnet_119m)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (20 warm-up steps)")
    ap.add_argument("--compile", action="store_true", help="the fast path compiled as in training (CUDA)")
    ap.add_argument(
        "--text", type=Path, default=None, help="training text: a file or a folder (default: FineWeb-Edu head)"
    )
    ap.add_argument(
        "--cross-check-at", type=int, default=0, metavar="K",
        help="instead of the curves: train the reference K steps, then score batch K+1 with both paths from its weights",
    )  # fmt: skip
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    data = load_text(args.text)
    if args.cross_check_at > 0:
        at = args.cross_check_at
        losses = cross_check(at, args.seq, args.batch, dtype, data, args.preset, args.device, args.lr)
        print(f"batch {at + 1} with the reference's weights after step {at}: " + ", ".join(
            f"{impl} {loss:.4f}" for impl, loss in losses.items()))  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "losses": losses}))
        return 0
    result = {"args": {k: str(v) for k, v in vars(args).items()}}
    for impl in ("fast", "reference"):
        t0 = time.time()
        result[impl] = curve(
            impl, args.steps, args.seq, args.batch, dtype, data, args.preset, args.device, args.lr, args.compile
        )
        result[f"{impl}_seconds"] = time.time() - t0
        print(
            f"{impl}: {result[f'{impl}_seconds']:.0f} s, last-20 mean loss {sum(result[impl][-20:]) / len(result[impl][-20:]):.4f}",
            flush=True,
        )
        if args.json:  # what is done so far survives a time limit
            args.json.write_text(json.dumps(result, indent=1))
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
