"""Small-run evidence for the attention-dropout decision (issue 8 item 4).

flex_attention has no dropout, so the fast (flex) training path needs attention_dropout = 0.
This trains the same small PMNet twice on real text, with attention dropout 0.1 (the paper's
value) and 0.0, both through the sdpa backend (which does support dropout), identical data
order and seeds, and reports held-out BPB at the end:

    python benchmarks/dropout_ablation.py --steps 200 --json benchmarks/dropout_ablation.json

Text: the FineWeb-Edu head shipped in ../shared/data/web (first 90% train, last 10% held out).
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
from pmnet.model import PMNetConfig, PMNetForCausalLM, lm_loss


def run(dropout: float, seed: int, steps: int, seq: int, batch: int, data: torch.Tensor, val: torch.Tensor) -> dict:
    """Train ``steps`` AdamW steps; return train-loss curve (every 10 steps) and held-out BPB."""
    cfg = PMNetConfig.from_preset("tiny", attention_dropout=dropout, attn_backend="sdpa", sliding_window=64)
    torch.manual_seed(seed)
    model = PMNetForCausalLM(cfg).train()
    t0 = time.time()
    # the same batches for both dropout values (small_train seeds its batch generator)
    losses = train_losses(
        model, data, steps, seq, batch,
        lambda step: 3e-3 * min(1.0, (step + 1) / 20) * (0.55 + 0.45 * math.cos(math.pi * step / steps)),
    )  # fmt: skip
    curve = [round(loss / math.log(2), 4) for loss in losses[9::10]]
    model.eval()
    with torch.no_grad():
        n = (val.numel() - 1) // seq
        ids = val[: n * seq + 1]
        x = ids[:-1].view(n, seq)
        y = ids[1:].view(n, seq)
        tot = sum(lm_loss(model(x[i : i + 8])[0], y[i : i + 8]).item() * x[i : i + 8].numel() for i in range(0, n, 8))
    return {"dropout": dropout, "seed": seed, "train_bpb_curve": curve, "val_bpb": tot / x.numel() / math.log(2),
            "seconds": time.time() - t0}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    raw = load_text()
    cut = int(raw.numel() * 0.9)
    rows = []
    for seed in args.seeds:
        for p in (0.1, 0.0):
            r = run(p, seed, args.steps, args.seq, args.batch, raw[:cut], raw[cut:])
            rows.append(r)
            print(f"dropout={r['dropout']:.1f} seed={r['seed']} val_bpb={r['val_bpb']:.4f} ({r['seconds']:.0f} s) "
                  f"train bpb every 10 steps: {r['train_bpb_curve']}", flush=True)  # fmt: skip
    for p in (0.1, 0.0):
        vals = [r["val_bpb"] for r in rows if r["dropout"] == p]
        print(f"dropout={p:.1f} mean val_bpb={sum(vals) / len(vals):.4f} over seeds {args.seeds}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
