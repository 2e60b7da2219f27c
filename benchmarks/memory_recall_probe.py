"""Does the phasor memory learn to store and recall bytes that attention cannot reach? (issue 7)

A diagnostic for the copy-paste plateau: the smallest task where memory is the only path.
A sample is ``BOS, K key bytes, D filler bytes, SEP, the K key bytes again``; loss and accuracy
count only the K recalled bytes. The byte that predicts key i the second time sits K + D + 1
positions after key i, so with D + K + 1 > layers x window attention alone cannot see it
(a no-memory model stays at chance, 1/A). Keys are drawn from an alphabet of A byte values.

Variants (same seed, same batches): ``pmnet`` (the model as specified), ``nomem`` (no memory:
the floor), ``norecur`` (memory without the per-group recurrence: S_t = delta_t, so nothing
written earlier reaches a later read; also a floor). Plain torch, CPU, fast path.

    python benchmarks/memory_recall_probe.py --keys 1 --distance 32 --steps 3000 --json out.json

Prints recall accuracy per evaluation point and variant; writes JSON.
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

from pmnet.model import PMNetConfig, PMNetForCausalLM

BOS, SEP, FILLER = 254, ord("|"), ord(".")
VARIANTS = {"pmnet": {}, "nomem": {"use_memory": False}, "norecur": {"memory_cumsum": False}}


def probe_config(window: int, layers: int, memory_size: int, write_period: int, **extra: object) -> PMNetConfig:
    """A tiny PMNet (hidden 64) whose attention reaches ``layers * window`` bytes back."""
    base = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4, head_dim=16,
        sliding_window=window, memory_size=memory_size, num_memory=4, num_memory_read_heads=2,
        memory_write_period=write_period, memory_impl="fast", attn_backend="eager", attention_dropout=0.0,
    )  # fmt: skip
    base.update(extra)
    return PMNetConfig.from_preset("tiny", **base)


def make_batch(batch: int, keys: int, distance: int, alphabet: int, gen: torch.Generator) -> tuple[torch.Tensor, slice]:
    """[B, 2K + D + 2] samples and the slice of input positions that predict the recalled keys."""
    key = torch.randint(0, alphabet, (batch, keys), generator=gen) + ord("A")
    fill = torch.full((batch, distance), FILLER)
    ids = torch.cat([torch.full((batch, 1), BOS), key, fill, torch.full((batch, 1), SEP), key], dim=1)
    start = keys + distance + 1  # input position of SEP: predicts key 0
    return ids, slice(start, start + keys)


def recall_loss(model: PMNetForCausalLM, ids: torch.Tensor, span: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross entropy over the recalled bytes, their greedy accuracy)."""
    logits, _ = model(ids[:, :-1])
    pred = logits[:, span].float()
    target = ids[:, span.start + 1 : span.stop + 1]
    loss = torch.nn.functional.cross_entropy(pred.flatten(0, 1), target.flatten())
    return loss, (pred.argmax(-1) == target).float().mean()


def train_variant(name: str, args: argparse.Namespace) -> dict:
    """Train one variant; accuracy on fresh batches at every evaluation point."""
    cfg = probe_config(args.window, args.layers, args.memory_size, args.write_period, **VARIANTS[name])
    torch.manual_seed(args.seed)
    model = PMNetForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed + 1)
    eval_gen = torch.Generator().manual_seed(args.seed + 2)
    eval_ids, span = make_batch(512, args.keys, args.distance, args.alphabet, eval_gen)
    curve, t0 = [], time.time()
    for step in range(1, args.steps + 1):
        warm = min(1.0, step / max(1, args.steps // 20))
        for g in opt.param_groups:
            g["lr"] = args.lr * warm
        ids, span = make_batch(args.batch, args.keys, args.distance, args.alphabet, gen)
        loss, _ = recall_loss(model, ids, span)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                ev_loss, ev_acc = recall_loss(model, eval_ids, span)
            model.train()
            curve.append({"step": step, "loss": float(ev_loss), "acc": float(ev_acc), "grad_norm": gnorm})
            print(f"  {name:<8} step {step:>5}  recall loss {float(ev_loss):.3f}  acc {float(ev_acc):6.1%}  "
                  f"gnorm {gnorm:.3f}  ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
    return {"variant": name, "curve": curve, "seconds": time.time() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1, help="K bytes to recall")
    ap.add_argument("--alphabet", type=int, default=16, help="key byte values (chance = 1/alphabet)")
    ap.add_argument("--distance", type=int, default=32, help="filler bytes between the keys and SEP")
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--memory-size", type=int, default=32, help="M phases per slot")
    ap.add_argument("--write-period", type=int, default=1, help="P: K = layers / P levels")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="pmnet,nomem,norecur")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    reach = args.layers * args.window
    lookback = args.keys + args.distance + 1
    print(f"recall {args.keys} key byte(s) of {args.alphabet} values from {lookback} bytes back; attention reaches "
          f"{reach} ({'memory only' if lookback > reach else 'attention can reach it'}); chance {1 / args.alphabet:.1%}")  # fmt: skip
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = [train_variant(v, args) for v in args.variants.split(",") if v]
    print(f"\n{'variant':<9} {'final acc':>9} {'best acc':>9} {'final loss':>10}  (chance {1 / args.alphabet:.1%}, "
          f"loss ln A = {math.log(args.alphabet):.3f})")  # fmt: skip
    for r in results:
        last, best = r["curve"][-1], max(c["acc"] for c in r["curve"])
        print(f"{r['variant']:<9} {last['acc']:9.1%} {best:9.1%} {last['loss']:10.3f}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
