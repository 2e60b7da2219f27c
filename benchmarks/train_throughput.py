"""Training throughput through the real DeepSpeed engine, and long-context evaluation speed (issue 8).

Training mode builds the engine exactly as ``python -m pmnet.train`` does
(``pmnet.config.load_config`` -> ``engine.build_model`` -> ``engine.build_engine``: ZeRO from
the config, bf16, GuardedAdamW fused) and times whole optimizer steps (forward, backward,
``engine.step()``) with CUDA events: median of ``--steps`` after ``--warmup``. One optimizer
step = one micro-batch here (global batch = micro batch), so every timed step includes the
optimizer. Bytes are synthetic random bytes (speed does not depend on the text).

    python benchmarks/train_throughput.py --config configs/pmnet_119m.yaml \
        --variants fast:eager:4,fast:modules:8,reference:eager:1:1024 --long-context --json out.json

A variant is ``impl:compile:micro[:seq[:ckpt]]``: impl fast|fast-inductor|reference
(``fast-inductor``: the fast path with the Triton phase-score kernel switched off, for A/B), compile
eager|modules|layers (``pmnet.model.compiled.compile_fast_path``), ckpt 0|1 (activation
checkpointing per layer). MFU = bytes/s x FLOPs/byte / peak, where the peak is the bf16
matmul rate measured in the same process (8192^3, median of CUDA-event-timed repeats), and
FLOPs/byte are reported two ways, clearly labelled:

* ``mfu_analytic``: ``PMNetConfig.flops_per_byte`` (docs/model.md: the read projection on all
  N slots), the issue's yardstick;
* ``mfu_executed``: the FLOPs the fast path really runs (``executed_flops_per_byte``: the
  read's value half runs once per head, not per slot), for the reference path the analytic ones.

Long-context mode (``--long-context``): books from ``--books`` (first L bytes of each book
that has L), fed in chunks of ``--chunk`` bytes with the state carried, no grad; the last
chunk is padded to the full chunk (padding positions are not scored, and nothing follows
them), so every chunk has one shape. bf16 weights (phases fp32), compiled, at 64 KiB and
512 KiB: bytes/s and peak memory; fp32 eager on the same books for the BPB comparison.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmnet.model import PMNetConfig, PMNetForCausalLM, lm_loss
from pmnet.model.compiled import compile_fast_path
from pmnet.model.flops import forward_flops_per_byte
from pmnet.train.metrics import measure_matmul_flops

_T0 = time.time()
DEV = {"type": "cuda"}  # "cpu" with --cpu-smoke: checks the harness (tiny config) without a GPU


def on_gpu() -> bool:
    """Whether this run measures a GPU (else: the CPU smoke test of the harness)."""
    return DEV["type"] == "cuda"


class StepTimer:
    """CUDA events on the GPU (the issue's timing), perf_counter in the CPU smoke test."""

    def __enter__(self) -> StepTimer:
        if on_gpu():
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if on_gpu():
            self.end.record()
            torch.cuda.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1e3
        else:
            self.seconds = time.perf_counter() - self.t0


def elapsed() -> float:
    """Seconds since the script started (the --budget-s guard)."""
    return time.time() - _T0


def executed_flops_per_byte(cfg: PMNetConfig, seq: int | None, training: bool = True) -> float:
    """Matmul FLOPs/byte the fast path runs (``flops.py`` with ``implementation="fast"``).

    The key half of the read projection runs on every slot, the value half once per head on
    the attention-weighted features (folded into the output projection where d < 2M, as for
    the 119M model); the per-call fold is negligible at training sizes and not counted.
    The reference path runs the analytic (docs/model.md) products.
    """
    impl = "fast" if cfg.memory_impl == "fast" else "model"
    fwd = forward_flops_per_byte(cfg, seq, implementation=impl)
    return 3.0 * fwd if training else fwd


def _free() -> None:
    gc.collect()
    if on_gpu():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if on_gpu() else float("nan")


def _sync() -> None:
    if on_gpu():
        torch.cuda.synchronize()


def time_training(config: str, variant: str, steps: int, warmup: int, peak: float, extra: list[str]) -> dict:
    """One variant through the DeepSpeed engine: median step time, bytes/s, MFU, peak memory."""
    from pmnet.config import load_config
    from pmnet.model import triton_scores
    from pmnet.train.distributed import setup_distributed
    from pmnet.train.engine import build_engine, build_model, deepspeed_config

    parts = variant.split(":")
    impl, mode, micro = parts[0], parts[1], int(parts[2])
    triton_scores.set_enabled(impl != "fast-inductor")
    impl = impl.removesuffix("-inductor")
    seq = int(parts[3]) if len(parts) > 3 else 8192
    ckpt = len(parts) > 4 and parts[4] == "1"
    overrides = [
        f"model.memory_impl={impl}",
        "model.attn_backend=flex",
        "model.attention_dropout=0.0",  # flex has no dropout (configs/pmnet_119m.yaml says why)
        "train.compile=false",  # the variant says how to compile
        f"train.micro_batch_size={micro}",
        f"train.global_batch_size={micro}",
        f"train.activation_checkpointing={str(ckpt).lower()}",
        f"data.sample_bytes={seq + 1}",
        *extra,
    ]
    cfg = load_config(config, overrides)
    # each variant builds its own model: the compiled memory cores are switched per model
    # (compile_fast_path -> PMNetForCausalLM.compile_memory_cores), so an eager variant after
    # a compiled one runs eager
    env = setup_distributed(DEV["type"])
    ds_config = deepspeed_config(cfg, env.world_size)
    _free()
    model = build_model(cfg, ds_config)
    engine, _ = build_engine(cfg, model, env, ds_config)
    ids = torch.randint(1, 254, (micro, seq + 1), device=env.device)
    inp, tgt = ids[:, :-1], ids[:, 1:]
    eager_loss = None
    if mode != "eager":
        with torch.no_grad():  # the same first batch through the eager fast path: a check on the compiled one
            eager_loss = lm_loss(engine(inp)[0], tgt).item()
        compile_fast_path(model, mode)  # type: ignore[arg-type]
    times, losses = [], []
    t_first = time.time()
    for i in range(warmup + steps):
        with StepTimer() as timer:
            logits, _ = engine(inp)
            loss = lm_loss(logits, tgt)
            engine.backward(loss)
            engine.step()
        losses.append(loss.item())
        if i == 0:
            first_s = time.time() - t_first  # includes compilation
        if i >= warmup:
            times.append(timer.seconds)
    med = statistics.median(times)
    bps = micro * seq / med
    analytic = cfg.model.flops_per_byte(seq, training=True)
    executed = executed_flops_per_byte(cfg.model, seq)
    row = {
        "variant": variant, "impl": impl, "compile": mode, "micro": micro, "seq": seq, "checkpointing": ckpt,
        "zero_stage": cfg.deepspeed.zero_stage, "step_s": med, "step_times_s": times, "first_step_s": first_s,
        "bytes_per_s": bps, "flops_per_byte_analytic": analytic, "flops_per_byte_executed": executed,
        "mfu_analytic": bps * analytic / peak, "mfu_executed": bps * executed / peak,
        "peak_mem_gib": _peak_gib(), "losses": losses, "eager_first_loss": eager_loss,
    }  # fmt: skip
    del engine, model, logits, loss
    _free()
    triton_scores.set_enabled(True)
    return row


def _load_books(books: Path, length: int, max_books: int) -> torch.Tensor | None:
    """[B, length] bytes: the first ``length`` bytes of each book that has them."""
    rows = []
    for p in sorted(books.glob("*.txt")):
        data = p.read_bytes()
        if len(data) >= length:
            rows.append(torch.tensor(list(data[:length]), dtype=torch.int64))
        if len(rows) == max_books:
            break
    return torch.stack(rows) if rows else None


@torch.no_grad()
def eval_stream(model: PMNetForCausalLM, ids: torch.Tensor, chunk: int) -> tuple[float, float, float]:
    """Chunked evaluation with the state carried: (mean BPB, seconds, peak GiB)."""
    ids = ids.to(DEV["type"])
    b, total = ids.shape
    gc.collect()
    if on_gpu():  # no empty_cache: a short stream would pay the allocator's cudaMallocs inside the timing
        torch.cuda.reset_peak_memory_stats()
    state = None
    nll = torch.zeros((), dtype=torch.float64, device=ids.device)
    count = 0
    _sync()
    t0 = time.perf_counter()
    for s in range(0, total - 1, chunk):
        x = ids[:, s : s + chunk]
        y = ids[:, s + 1 : s + chunk + 1]
        if x.shape[1] < chunk or y.shape[1] < chunk:  # pad the last chunk: one shape for all chunks
            y = torch.nn.functional.pad(y, (0, chunk - y.shape[1]), value=0)
            x = torch.nn.functional.pad(x, (0, chunk - x.shape[1]), value=0)
        logits, state = model(x, state)
        flat = logits.float().reshape(-1, logits.shape[-1])
        nll += torch.nn.functional.cross_entropy(flat, y.reshape(-1), ignore_index=0, reduction="sum").double()
        count += int((y != 0).sum())
    _sync()
    secs = time.perf_counter() - t0
    return float(nll) / count / math.log(2), secs, _peak_gib()


def long_context(
    preset: str, books: Path, chunk: int, max_books: int, weights: str | None, modes: str = "fp32,bf16"
) -> list[dict]:
    """bf16 compiled at 64 KiB and 512 KiB; fp32 eager at 64 KiB (BPB reference and fp32 speed)."""
    cfg = PMNetConfig.from_preset(preset, attn_backend="flex", memory_impl="fast")
    torch.manual_seed(0)
    base = PMNetForCausalLM(cfg).eval()
    if weights:
        from pmnet.model.interchange import load_pretrained

        base = load_pretrained(weights).eval()
    sd = base.state_dict()
    rows = []
    lengths = {"64KiB": 65536, "512KiB": 524288} if on_gpu() else {"64KiB": 4 * chunk, "512KiB": 16 * chunk}
    data = {k: _load_books(books, v, max_books) for k, v in lengths.items()}
    # fp32 eager first
    m32 = base.to(DEV["type"]).float()
    first = next(v for v in data.values() if v is not None)
    if "fp32" in modes:
        eval_stream(m32, first[:, : 2 * chunk + 1], chunk)  # warm-up: flex compiles for the first / later chunks
    if "fp32" in modes and data["64KiB"] is not None:
        bpb, secs, mem = eval_stream(m32, data["64KiB"], chunk)
        n = data["64KiB"].numel()
        rows.append({"mode": "fp32-eager", "length": "64KiB", "books": data["64KiB"].shape[0], "bpb": bpb,
                     "seconds": secs, "bytes_per_s": n / secs, "peak_mem_gib": mem})  # fmt: skip
    del m32
    if "bf16" not in modes:
        return rows
    model = PMNetForCausalLM(cfg).eval()
    model.load_state_dict(sd)
    model = model.to(DEV["type"]).to(torch.bfloat16)
    if on_gpu():
        compile_fast_path(model)
    eval_stream(model, first[:, : 2 * chunk + 1], chunk)  # compile: first chunk (no past) and a later one
    for name in ("64KiB", "512KiB"):
        if data[name] is None:
            continue
        bpb, secs, mem = eval_stream(model, data[name], chunk)
        n = data[name].numel()
        rows.append({"mode": "bf16-compiled", "length": name, "books": data[name].shape[0], "bpb": bpb,
                     "seconds": secs, "bytes_per_s": n / secs, "peak_mem_gib": mem})  # fmt: skip
    return rows


def profile_steps(preset: str, micro: int, seq: int, mode: str, path: Path, top: int = 25) -> str:
    """torch.profiler over 2 bare fwd+bwd steps (after 2 warm-up steps): top kernels by CUDA time."""
    from torch.profiler import ProfilerActivity, profile

    from pmnet.train.profiling import device_time_by_family

    cfg = PMNetConfig.from_preset(preset, attn_backend="flex", memory_impl="fast", attention_dropout=0.0)
    torch.manual_seed(0)
    model = PMNetForCausalLM(cfg).cuda().to(torch.bfloat16).train()
    if mode != "eager":
        compile_fast_path(model, mode)  # type: ignore[arg-type]
    ids = torch.randint(1, 254, (micro, seq + 1), device="cuda")

    def step() -> None:
        logits, _ = model(ids[:, :-1])
        lm_loss(logits, ids[:, 1:]).backward()
        model.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    times = []
    for _ in range(3):
        with StepTimer() as timer:
            step()
        times.append(timer.seconds)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    table = events.table(sort_by="self_device_time_total", row_limit=top, max_name_column_width=90)
    table = device_time_by_family(events, 2) + "\n" + table
    bare = statistics.median(times)
    head = f"# bare model (no DeepSpeed, no optimizer), {mode}, micro={micro}, seq={seq}: 2 fwd+bwd steps profiled"
    head += f"\n# median of 3 CUDA-event-timed steps before profiling: {bare * 1e3:.1f} ms = {micro * seq / bare:.0f} bytes/s"
    path.write_text(f"{head}\n{table}\n")
    print(head, flush=True)
    model.cpu()
    _free()
    return table


def print_table(result: dict) -> None:
    """The short human-readable summary (last thing printed)."""
    print(f"\npeak bf16 matmul {result['peak_flops'] / 1e12:.0f} TFLOP/s (measured in this run)")
    print(
        f"{'variant':<28} {'step ms':>8} {'bytes/s':>9} {'MFU an.':>8} {'MFU ex.':>8} {'mem GiB':>8} {'1st s':>6}  loss0 (eager check)"
    )
    for r in result["training"]:
        if "error" in r:
            print(f"{r['variant']:<28} ERROR {r['error'][:150]}")
            continue
        print(f"{r['variant']:<28} {r['step_s'] * 1e3:8.1f} {r['bytes_per_s']:9.0f} {r['mfu_analytic']:8.1%} "
              f"{r['mfu_executed']:8.1%} {r['peak_mem_gib']:8.2f} {r['first_step_s']:6.0f}  {r['losses'][0]:.4f} "
              f"({r['eager_first_loss']})")  # fmt: skip
    for r in result["long_context"]:
        if "error" in r:
            print(f"long-context ERROR {r['error'][:200]}")
            continue
        print(f"eval {r['mode']:<14} {r['length']:>7} x{r['books']} books: {r['bytes_per_s']:9.0f} bytes/s "
              f"bpb {r['bpb']:.4f} peak {r['peak_mem_gib']:.2f} GiB")  # fmt: skip


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/pmnet_119m.yaml")
    ap.add_argument("--variants", default="fast:modules:8", help="comma list of impl:compile:micro[:seq[:ckpt]]")
    ap.add_argument("--override", action="append", default=[], help="extra config override (section.key=value)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--long-context", action="store_true")
    ap.add_argument("--lc-modes", default="fp32,bf16", help="long-context runs: fp32 (eager), bf16 (compiled)")
    ap.add_argument("--preset", default="pmnet_119m")
    ap.add_argument("--books", type=Path, default=Path(".bench_books"))
    ap.add_argument("--max-books", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=30720)
    ap.add_argument("--weights", default=None, help="interchange weights for long-context mode (default: init)")
    ap.add_argument("--profile", default="", help="comma list of mode[:micro] to profile (eager:4,modules:8)")
    ap.add_argument("--profile-micro", type=int, default=4)
    ap.add_argument("--out-dir", type=Path, default=Path("."))
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip sections that start after this many seconds")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--cpu-smoke", action="store_true", help="check the harness on CPU (use a tiny config)")
    args = ap.parse_args(argv)
    if args.cpu_smoke:
        DEV["type"] = "cpu"
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    elif not torch.cuda.is_available():
        print("train_throughput.py needs a CUDA GPU (or --cpu-smoke)", file=sys.stderr)
        return 2
    import torch._dynamo as dynamo

    for name in ("cache_size_limit", "recompile_limit"):  # one module class serves every shape here
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, 64)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/inductor_cache")
    peak = measure_matmul_flops(torch.device("cuda")) if on_gpu() else 1e12  # CPU smoke: a nominal 1 TFLOP/s
    result: dict[str, Any] = {"peak_flops": peak, "training": [], "long_context": [], "profiles": {}}
    result["torch"] = torch.__version__
    result["device"] = torch.cuda.get_device_name() if on_gpu() else "cpu (smoke test)"

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))

    for variant in filter(None, args.variants.split(",")):
        if elapsed() > args.budget_s:
            result["training"].append({"variant": variant, "error": "skipped: time budget"})
            continue
        try:
            slow = variant.startswith("reference")  # ~40x slower: one warm-up step, one timed
            steps, warmup = (1, 1) if slow else (args.steps, args.warmup)
            row = time_training(args.config, variant, steps, warmup, result["peak_flops"], args.override)
        except Exception as err:  # a variant that fails (OOM, compile error) is reported, not fatal
            row = {"variant": variant, "error": _error(err)}
            _free()
        print(json.dumps({k: v for k, v in row.items() if k not in ("losses", "step_times_s")}), flush=True)
        result["training"].append(row)
        save()
    for spec in filter(None, args.profile.split(",")):
        if elapsed() > args.budget_s:
            break
        mode, _, micro = spec.partition(":")
        try:
            path = args.out_dir / f"profile_{mode}.txt"
            profile_steps(args.preset, int(micro or args.profile_micro), 8192, mode, path)
            result["profiles"][mode] = str(path)
        except Exception as err:
            result["profiles"][mode] = _error(err)
        save()
    if args.long_context and elapsed() < args.budget_s:
        try:
            result["long_context"] = long_context(
                args.preset, args.books, args.chunk, args.max_books, args.weights, args.lc_modes
            )
        except Exception as err:
            result["long_context"] = [{"error": _error(err)}]
        print(json.dumps(result["long_context"]), flush=True)
        save()
    print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
