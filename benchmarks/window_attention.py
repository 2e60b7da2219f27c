"""Dense vs blocked sliding-window attention (issue 20): the same model, both layouts, one run.

    python benchmarks/window_attention.py cpu [--json OUT.json]            # both parts below
    python benchmarks/window_attention.py eval [--books DIR] [--max-bytes 61440] [--n-books 4]
    python benchmarks/window_attention.py train [--preset tiny] [--seq 8192] [--micro 2]
    python benchmarks/window_attention.py train --device cuda --preset pmnet_119m --micro 8 \\
        --variants flex/0,sdpa-blocked/0.1,sdpa-dense/0.1          # bare model on the GPU
    python benchmarks/window_attention.py logs A.log B.log [--skip 5]  # launcher logs: median bytes/s

* ``eval``: long-context evaluation through ``pmnet.eval.long_context.evaluate_books`` (what
  ``tools/eval_long_context.py`` runs) of a tiny-preset model saved as an interchange
  checkpoint and loaded with ``load_model`` (``--ckpt`` takes a trained one; speed does not
  depend on the weights), chunks of 30,720 bytes with the state carried, once with the
  dense window mask and once blocked. Books: ``--books``, else ``$PMNET_SHARED_DATA/books`` or
  ``../shared/data/books`` beside the checkout, else pieces of the repository's sample text.
  Also reports the largest per-position BPB difference between the two (they compute the same).
* ``train``: one training step (forward, backward, AdamW step) of the bare model at
  ``--seq`` bytes per sequence, per variant ``backend-window/dropout`` (backend eager, sdpa or
  flex; window blocked or dense; flex has no window layout and no dropout).
* ``logs``: the median ``kB/s`` / ``MB/s`` of the console lines of ``launchers/pretrain.sh``
  runs (after ``--skip`` warm-up lines, before ``--before-step``), e.g. the 119M config with attention_dropout 0.1 vs 0.0
  (``benchmarks/h200_throughput_call.sh OUT dropout``).

Every mode prints a table and writes ``--json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pmnet.eval import long_context as lc  # noqa: E402
from pmnet.eval.loading import load_model  # noqa: E402
from pmnet.model import PMNetConfig, PMNetForCausalLM, lm_loss, save_pretrained  # noqa: E402

SAMPLE = REPO / "data_pipeline" / "samples" / "fineweb_edu_sample10BT_head_1MB.txt.gz"


def find_books(arg: str | None, max_bytes: int, n_books: int, tmp: Path) -> tuple[Path, str]:
    """A directory of *.txt books: ``arg``, the shared books, or pieces of the repository's sample."""
    if arg:
        return Path(arg), "given"
    shared = Path(os.environ.get("PMNET_SHARED_DATA") or REPO.parent / "shared" / "data") / "books"
    if shared.is_dir() and any(shared.glob("*.txt")):
        return shared, "shared books"
    text = gzip.decompress(SAMPLE.read_bytes())
    out = tmp / "sample_books"
    out.mkdir()
    for i in range(min(n_books, len(text) // max_bytes)):
        (out / f"sample_{i}.txt").write_bytes(text[i * max_bytes : (i + 1) * max_bytes])
    return out, f"pieces of {SAMPLE.relative_to(REPO)}"


def bench_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Long-context evaluation, dense then blocked, same books and weights."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ckpt = args.ckpt
        if ckpt is None:
            torch.manual_seed(0)
            model = PMNetForCausalLM(PMNetConfig.from_preset("tiny"))
            ckpt = tmp / "tiny"
            save_pretrained(model, ckpt, model.config)
        books_dir, source = find_books(args.books, args.max_bytes, args.n_books, tmp)
        books, _ = lc.read_books(books_dir, args.max_bytes, args.n_books)
        rows, curves = [], {}
        for window in ("blocked", "dense"):  # blocked first: peak RSS is per process, so its figure is its own
            model, cfg = load_model(ckpt, device="cpu", attn_backend="sdpa", attn_window=window)
            cpu0 = time.process_time()
            res = lc.evaluate_books(
                model, books, max_bytes=args.max_bytes, chunk_bytes=args.chunk_bytes, batch_size=args.batch_size
            )
            cpu_s = time.process_time() - cpu0
            curves[window] = res.bpb
            rows.append(
                {
                    "window": window,
                    "bytes": len(books) * args.max_bytes,
                    "seconds": res.seconds,
                    "bytes_per_s": res.bytes_per_second,
                    "cpu_seconds": cpu_s,
                    "bytes_per_cpu_s": len(books) * args.max_bytes / cpu_s,
                    "peak_rss_mib": max(res.peak_memory.values()) / 2**20,
                    "mean_bpb": res.mean_bpb,
                }
            )
    rate = {r["window"]: r["bytes_per_s"] for r in rows}
    cpu_rate = {r["window"]: r["bytes_per_cpu_s"] for r in rows}
    speedup = rate["blocked"] / rate["dense"]
    cpu_speedup = cpu_rate["blocked"] / cpu_rate["dense"]
    gap = np.abs(curves["dense"] - curves["blocked"])
    print(
        f"long-context eval: {len(books)} books x {args.max_bytes:,} bytes ({source}), chunks of "
        f"{args.chunk_bytes:,}, batch {args.batch_size}, W={cfg.sliding_window}, {torch.get_num_threads()} threads"
    )
    print(
        f"{'window':<8} {'wall s':>8} {'bytes/s':>10} {'CPU s':>8} {'bytes/CPU-s':>12} {'peak RSS MiB':>13} {'BPB':>7}"
    )
    for r in rows:
        print(
            f"{r['window']:<8} {r['seconds']:8.1f} {r['bytes_per_s']:10,.0f} {r['cpu_seconds']:8.1f} "
            f"{r['bytes_per_cpu_s']:12,.0f} {r['peak_rss_mib']:13,.0f} {r['mean_bpb']:7.4f}"
        )
    print(
        f"blocked / dense: {speedup:.1f}x bytes/s, {cpu_speedup:.1f}x bytes per CPU-second; "
        f"per-position |BPB difference| mean {gap.mean():.2e}, max {gap.max():.2e}"
    )
    return {
        "books": [b.name for b in books],
        "book_source": source,
        "max_bytes": args.max_bytes,
        "chunk_bytes": args.chunk_bytes,
        "batch_size": args.batch_size,
        "rows": rows,
        "speedup": speedup,
        "cpu_speedup": cpu_speedup,
        "mean_abs_bpb_diff": float(gap.mean()),
        "max_abs_bpb_diff": float(gap.max()),
    }


def parse_variant(text: str) -> tuple[str, str, float]:
    """``sdpa-blocked/0.1`` -> ("sdpa", "blocked", 0.1); ``flex/0`` -> ("flex", "blocked", 0.0)."""
    name, _, drop = text.partition("/")
    backend, _, window = name.partition("-")
    return backend, window or "blocked", float(drop or 0.0)


def time_train_step(
    preset: str, variant: str, seq: int, micro: int, steps: int, warmup: int, device: torch.device
) -> dict[str, Any]:
    """Median seconds of forward + backward + AdamW step of one micro-batch of ``seq`` bytes."""
    backend, window, dropout = parse_variant(variant)
    cfg = PMNetConfig.from_preset(preset, attn_backend=backend, attn_window=window, attention_dropout=dropout)
    torch.manual_seed(0)
    model = PMNetForCausalLM(cfg).to(device)
    if device.type == "cuda":
        model = model.to(torch.bfloat16)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(1, 254, (micro, seq + 1), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, cpu_times = [], []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        logits, _ = model(ids[:, :-1])
        loss = lm_loss(logits, ids[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    med = statistics.median(times)
    cpu_med = statistics.median(cpu_times)
    return {
        "variant": variant,
        "seq": seq,
        "micro": micro,
        "step_s": med,
        "bytes_per_s": micro * seq / med,
        "cpu_step_s": cpu_med,
        "bytes_per_cpu_s": micro * seq / cpu_med,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "loss": loss.item(),
    }


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    """Training step per variant (dense first: it is the baseline of the ratio column)."""
    device = torch.device(args.device)
    rows = []
    for variant in args.variants.split(","):
        try:
            row = time_train_step(args.preset, variant, args.seq, args.micro, args.steps, args.warmup, device)
        except Exception as err:  # OOM or a compile failure is reported, not fatal
            row = {"variant": variant, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base, cpu_base = rows[0].get("bytes_per_s"), rows[0].get("bytes_per_cpu_s")
    print(f"training step: preset {args.preset}, {args.micro} x {args.seq:,} bytes, {device}, median of {args.steps}")
    print(f"{'variant':<20} {'step s':>8} {'bytes/s':>10} {'vs first':>9} {'CPU s':>8} {'vs first':>9} {'mem GiB':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<20} ERROR {r['error']}")
            continue
        ratio = r["bytes_per_s"] / base if base else float("nan")
        cpu_ratio = r["bytes_per_cpu_s"] / cpu_base if cpu_base else float("nan")
        mem = f"{r['peak_mem_gib']:8.2f}" if r["peak_mem_gib"] is not None else f"{'-':>8}"
        print(
            f"{r['variant']:<20} {r['step_s']:8.3f} {r['bytes_per_s']:10,.0f} {ratio:8.2f}x "
            f"{r['cpu_step_s']:8.3f} {cpu_ratio:8.2f}x {mem}"
        )
    return {"preset": args.preset, "seq": args.seq, "micro": args.micro, "device": str(device), "rows": rows}


_RATE = re.compile(r"step +(\d+)/\d+ \|.*\| ([0-9.]+) (kB|MB)/s")


def bench_logs(args: argparse.Namespace) -> dict[str, Any]:
    """Median bytes/s of each launcher log's console lines after ``--skip`` warm-up lines (and, with
    ``--before-step N``, before step N: a profiled step and the one after it are slower)."""
    rows = []
    for log in args.logs:
        rates = []
        for line in Path(log).read_text(errors="replace").splitlines():
            m = _RATE.search(line)
            if m and (args.before_step <= 0 or int(m.group(1)) < args.before_step):
                rates.append(float(m.group(2)) * (1e3 if m.group(3) == "kB" else 1e6))
        kept = rates[args.skip :]
        rows.append({"log": str(log), "lines": len(rates), "bytes_per_s": statistics.median(kept) if kept else None})
    base = rows[0]["bytes_per_s"]
    print(f"{'log':<48} {'lines':>6} {'median bytes/s':>15} {'vs first':>9}")
    for r in rows:
        rate = r["bytes_per_s"]
        ratio = f"{rate / base:8.3f}x" if rate and base else f"{'-':>9}"
        print(f"{r['log']:<48} {r['lines']:>6} {rate or float('nan'):15,.0f} {ratio}")
    return {"skip": args.skip, "before_step": args.before_step, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["cpu", "eval", "train", "logs"])
    ap.add_argument("logs", nargs="*", help="logs mode: launcher console logs (the first is the baseline)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    e = ap.add_argument_group("eval")
    e.add_argument("--ckpt", default=None, help="interchange checkpoint (default: a fresh tiny-preset model)")
    e.add_argument("--books", default=None, help="directory of *.txt books")
    e.add_argument("--n-books", type=int, default=4)
    e.add_argument("--max-bytes", type=int, default=61440, help="bytes per book (default: two 30,720-byte chunks)")
    e.add_argument("--chunk-bytes", type=int, default=30720)
    e.add_argument("--batch-size", type=int, default=4)
    t = ap.add_argument_group("train")
    t.add_argument("--preset", default="tiny")
    t.add_argument("--seq", type=int, default=8192)
    t.add_argument("--micro", type=int, default=2)
    t.add_argument("--steps", type=int, default=2)
    t.add_argument("--warmup", type=int, default=1)
    t.add_argument("--device", default="cpu")
    t.add_argument(
        "--variants",
        default="sdpa-dense/0,sdpa-blocked/0,sdpa-blocked/0.1",
        help="comma list of backend[-window]/dropout (the first is the baseline)",
    )
    ap.add_argument("--skip", type=int, default=5, help="logs mode: warm-up console lines left out")
    ap.add_argument(
        "--before-step", type=int, default=0, help="logs mode: only lines of steps before this one (0: all)"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"mode": args.mode, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.mode == "logs":
        if not args.logs:
            ap.error("logs mode needs at least one log file")
        out["logs"] = bench_logs(args)
    if args.mode in ("cpu", "eval"):
        out["eval"] = bench_eval(args)
    if args.mode in ("cpu", "train"):
        out["train"] = bench_train(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
