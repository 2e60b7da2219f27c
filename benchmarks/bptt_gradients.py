"""Gradients through long backpropagation: are they bounded when BPTT spans K chunks? (issue 19)

The trainer cuts the graph between chunks (one backward per chunk). Here the K chunks of a
sample run with the state carried *with* its gradient (no ``state.detach()``), the K chunk
losses are averaged and one backward spans K x ``--chunk-bytes`` bytes. For each variant
(``recurrence``: the model as specified; ``norecurrence``: ``memory_cumsum=False``, the
ablation in which no write reaches a later chunk) and each K of ``--chunks``, a fresh model
(same seed, same initial weights, same byte windows) trains ``--steps`` AdamW steps on real
text, and the script records per step:

* the total and per-chunk losses, the pre-clip global gradient norm and the norm per module
  family (``pmnet.families``), the step time;
* every ``--measure-every`` steps (and at step 1), before the update, with the last chunk's
  loss L_K alone: ``||dL_K / de_k||`` for the byte-embedding output e_k of every chunk k
  (the ratio first / last = ``||dL_K/de_1|| / ||dL_K/de_K||`` is how much of the last chunk's
  gradient reaches the first), the same for the total loss, and ``||dL_K / dPhi||`` for the
  carried group phases (per level) and ``||dL_K / d(K, V)||`` for the carried attention window
  at each chunk boundary.

Without recurrence only the attention window (layers x (W - 1) bytes) reaches back across a
boundary, so the gradient of L_K at chunks K-2 and earlier is exactly 0 (first / last = 0 for
K >= 3), and no phase gradient flows at all: that is the ablation's expected result, not an error.

Recipe (one command, one GPU; real text from ``--text``, default the repository's samples)::

    python benchmarks/bptt_gradients.py --text DIR --out-dir runs/bptt --steps 200 --budget-s 420

``--budget-s`` bounds the whole script: after compiling, the time left is shared over the runs
in proportion to K (each run then reaches about the same step count), a run's unused share
rolls over, and a run stopped early keeps its records (the summary says it was cut short).
CPU smoke test: ``--device cpu --preset tiny --chunk-bytes 128 --chunks 1,3 --steps 3``.

Writes ``bptt_gradients.json`` (config, environment, per-step records, summaries),
``bptt_gradients.md`` (tables) and ``bptt_gradients.png`` to ``--out-dir``; prints the table last.
On CUDA: fp32 master weights, bf16 autocast, flex attention, the compiled fast path
(``pmnet.model.compiled.compile_fast_path``) and fused AdamW; on CPU: fp32, eager.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.errors import DataPipelineError
from data_pipeline.packing import clean_text, encode_document
from data_pipeline.sources import expand_inputs, iter_documents
from pmnet.config import OptimConfig
from pmnet.configtree import ConfigError, apply_overrides, from_dict
from pmnet.families import FAMILIES, param_family
from pmnet.model import PMNetConfig, PMNetForCausalLM, lm_loss
from pmnet.model.compiled import compile_fast_path
from pmnet.model.modeling import raise_recompile_limit
from pmnet.train.engine import lr_at, param_groups

REPO = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, dict[str, Any]] = {"recurrence": {}, "norecurrence": {"memory_cumsum": False}}
OUT_NAME = "bptt_gradients"


class UsageError(Exception):
    """A bad argument or input: reported as one line, exit code 2."""


# ---- data ----------------------------------------------------------------------------------
def load_text_bytes(specs: list[str]) -> Tensor:
    """The documents of ``specs`` (files / folders the data pipeline reads: .txt, .jsonl, .gz ...)
    encoded ``BOS utf8 EOS`` as in the shards and concatenated: a uint8 tensor."""
    try:
        paths = expand_inputs(specs)
        parts = [encode_document(clean_text(doc.text)) for p in paths for doc in iter_documents(p)]
    except DataPipelineError as err:
        raise UsageError(str(err)) from None
    return torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8)


def window_starts(data: Tensor, batch: int, length: int, steps: int, seed: int) -> Tensor:
    """[steps, batch] random window starts in ``data`` (a seeded generator: the same for both variants)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, data.numel() - length + 1, (steps, batch), generator=gen)


def window(data: Tensor, starts: Tensor, length: int) -> Tensor:
    """[batch, length] int64 byte ids from ``starts`` [batch]."""
    return data[starts[:, None] + torch.arange(length)].long()


# ---- model ---------------------------------------------------------------------------------
def build_config(preset: str, sets: list[str], device: torch.device) -> PMNetConfig:
    """The preset, attention dropout off (flex on CUDA), then the ``--set key=value`` overrides."""
    try:
        base = PMNetConfig.from_preset(preset, attention_dropout=0.0)
        if device.type == "cuda":
            base = dataclasses.replace(base, attn_backend="flex")
        data = apply_overrides({"model": base.to_dict()}, [f"model.{s}" for s in sets])["model"]
        cfg = from_dict(PMNetConfig, data, "model")
    except (ConfigError, ValueError) as err:
        raise UsageError(str(err)) from None
    errs = cfg.validate()
    if errs:
        raise UsageError("invalid model config: " + "; ".join(errs))
    return cfg


def make_model(cfg: PMNetConfig, variant: str, device: torch.device, seed: int, compiled: bool) -> PMNetForCausalLM:
    """A fresh model of ``variant`` (same seed: the same initial weights for every variant and K)."""
    torch.manual_seed(seed)
    model = PMNetForCausalLM(dataclasses.replace(cfg, **VARIANTS[variant])).to(device).train()
    if compiled:
        # the measurement backpropagates L_K with retain_graph=True before the main backward; AOTAutograd's
        # donated buffers (backward reusing saved tensors' memory) forbid that, so they are off here
        import torch._functorch.config as functorch_config

        functorch_config.donated_buffer = False
        compile_fast_path(model)  # shared graphs per module class + compiled memory cores (as the trainer)
        raise_recompile_limit(64)  # first / later chunk shapes, each level's scan, two variants
    return model


def autocast_for(device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA (fp32 master weights); fp32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _norm(t: Tensor | None) -> Tensor:
    return torch.zeros(()) if t is None else torch.linalg.vector_norm(t.detach().float()).cpu()


def _group_norm(ts: list[Tensor | None]) -> Tensor:
    """The norm of several tensors taken together."""
    return torch.stack([_norm(t) for t in ts]).norm() if ts else torch.zeros(())


def family_norms(model: torch.nn.Module) -> dict[str, float]:
    """Pre-clip gradient norm per module family (parameter names are the interchange keys)."""
    sq: dict[str, Tensor] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            fam = param_family(name)
            sq[fam] = sq.get(fam, 0) + p.grad.detach().double().pow(2).sum()
    return {f: math.sqrt(float(v)) for f, v in sq.items()}


# ---- one optimizer step ---------------------------------------------------------------------
class EmbedTap:
    """Keeps the byte-embedding output of every forward call (they stay in the graph)."""

    def __init__(self, model: PMNetForCausalLM) -> None:
        self.outputs: list[Tensor] = []
        self._handle = model.model.embed_tokens.register_forward_hook(lambda _m, _i, out: self.outputs.append(out))

    def close(self) -> None:
        self._handle.remove()
        self.outputs = []


def measure_gradients(
    last_loss: Tensor, embeds: list[Tensor], boundaries: list[Any]
) -> tuple[dict[str, Any], list[Tensor]]:
    """``||dL_K/de_k||``, ``||dL_K/dPhi||`` and ``||dL_K/d(K,V)||`` at each boundary (graph retained).

    Returns the record and the embeddings to read the total loss's gradient from after the
    main backward (``retain_grad`` is set only now, so the L_K pass does not fill them).
    """
    phases = [list(s.group_phases) for s in boundaries]
    kvs = [[*s.keys, *s.values] for s in boundaries]
    inputs: list[Tensor] = [*embeds, *(p for ps in phases for p in ps), *(t for ts in kvs for t in ts)]
    wanted = [t for t in inputs if t.requires_grad]
    got = torch.autograd.grad(last_loss, wanted, retain_graph=True, allow_unused=True) if wanted else []
    grad_of: dict[int, Tensor | None] = {id(t): g for t, g in zip(wanted, got, strict=True)}
    de = [float(_norm(grad_of.get(id(e)))) for e in embeds]
    rec: dict[str, Any] = {
        "dLK_de": de,
        "ratio_first_last": de[0] / de[-1] if de[-1] > 0 else float("nan"),
        "dLK_dphase": [[float(_norm(grad_of.get(id(p)))) for p in ps] for ps in phases],
        "dLK_dphase_total": [float(_group_norm([grad_of.get(id(p)) for p in ps])) for ps in phases],
        "dLK_dkv": [float(_group_norm([grad_of.get(id(t)) for t in ts])) for ts in kvs],
    }
    del got, grad_of
    for e in embeds:
        if e.requires_grad:
            e.retain_grad()
    return rec, embeds


def train_step(
    model: PMNetForCausalLM, window: Tensor, chunk: int, k_chunks: int, measure: bool, device: torch.device
) -> tuple[dict[str, Any], Tensor]:
    """Forward K chunks with the state carried with its gradient, one backward of the mean loss.

    Returns the record and the (unclipped) total loss; gradients are left in ``.grad``.
    """
    ids = window.to(device, non_blocking=True)
    tap = EmbedTap(model) if measure else None
    state = model.init_state(ids.shape[0], device)
    losses: list[Tensor] = []
    boundaries = []
    try:
        with autocast_for(device):
            for k in range(k_chunks):
                logits, state = model(ids[:, k * chunk : (k + 1) * chunk], state)  # no detach: BPTT spans K chunks
                losses.append(lm_loss(logits, ids[:, k * chunk + 1 : (k + 1) * chunk + 1]))
                del logits
                if measure and k < k_chunks - 1:
                    boundaries.append(state)
        del state
        total = torch.stack(losses).mean()
        rec: dict[str, Any] = {}
        embeds: list[Tensor] = []
        if tap is not None:
            rec, embeds = measure_gradients(losses[-1], tap.outputs, boundaries)
        boundaries.clear()
        total.backward()
        if tap is not None:
            de_total = [float(_norm(e.grad)) for e in embeds]
            rec["dLtotal_de"] = de_total
            rec["ratio_first_last_total"] = de_total[0] / de_total[-1] if de_total[-1] > 0 else float("nan")
    finally:
        if tap is not None:
            tap.close()
    record = {"loss": float(total.detach()), "chunk_losses": [float(x) for x in torch.stack(losses).detach().cpu()]}
    if rec:
        record["measure"] = rec
    return record, total.detach()


def run_one(
    args: argparse.Namespace,
    cfg: PMNetConfig,
    variant: str,
    k_chunks: int,
    data: Tensor,
    device: torch.device,
    share_s: float,
) -> dict[str, Any]:
    """Train a fresh model for ``args.steps`` steps (fewer when its time share runs out)."""
    run: dict[str, Any] = {"variant": variant, "chunks": k_chunks, "backprop_bytes": k_chunks * args.chunk_bytes}
    run.update(steps_requested=args.steps, time_share_s=share_s, records=[])
    length = k_chunks * args.chunk_bytes + 1
    starts = window_starts(data, args.batch, length, args.steps, args.seed * 1_000_003 + k_chunks)
    model = make_model(cfg, variant, device, args.seed, compiled=args.compile)
    optim_cfg = OptimConfig(lr=args.lr, warmup_steps=args.warmup, weight_decay=args.weight_decay)
    opt = torch.optim.AdamW(
        param_groups(model, optim_cfg.weight_decay), lr=args.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps,
        fused=True if device.type == "cuda" else None,
    )  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    last_s = 0.0
    run["cut_short"] = False
    try:
        for step in range(args.steps):
            if step > 0 and time.perf_counter() - start + last_s > share_s:
                run["cut_short"] = True
                break
            t0 = time.perf_counter()
            lr = lr_at(step, args.steps, optim_cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            measure = step == 0 or (step + 1) % args.measure_every == 0
            rec, loss = train_step(
                model, window(data, starts[step], length), args.chunk_bytes, k_chunks, measure, device
            )
            rec["family_norms"] = family_norms(model)
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, args.clip))  # the pre-clip global norm
            rec["skipped"] = not (math.isfinite(gnorm) and math.isfinite(float(loss)))
            if not rec["skipped"]:  # a non-finite step is recorded, not taken
                opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            last_s = time.perf_counter() - t0
            run["records"].append({"step": step + 1, "lr": lr, "grad_norm": gnorm, "step_s": last_s, **rec})
            if args.log_every and (step + 1) % args.log_every == 0:
                print(f"  {variant} K={k_chunks} step {step + 1}: loss {rec['loss']:.4f} grad {gnorm:.3f} "
                      f"{last_s * 1e3:.0f} ms", flush=True)  # fmt: skip
    except Exception as err:  # an OOM or a compile error is reported for this run; the next runs still go
        traceback.print_exc()
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        run["error"] = f"{type(err).__name__}: {first}"
    run["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    run["wall_s"] = time.perf_counter() - start
    del model, opt, params
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    run["summary"] = summarize(run)
    return run


def warm_up(cfg: PMNetConfig, args: argparse.Namespace, data: Tensor, device: torch.device) -> float:
    """Compile outside the runs' time shares: fwd + bwd of 2 chunks (first and later chunk shapes),
    with a measurement, for each variant, on throwaway models (dynamo shares graphs across instances)."""
    t0 = time.perf_counter()
    length = 2 * args.chunk_bytes + 1
    ids = window(data, window_starts(data, args.batch, length, 1, args.seed)[0], length)
    for variant in args.variants:
        model = make_model(cfg, variant, device, args.seed, compiled=True)
        train_step(model, ids, args.chunk_bytes, 2, True, device)
        del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    return time.perf_counter() - t0


# ---- summaries and reports ------------------------------------------------------------------
def _finite(xs: list[Any]) -> list[float]:
    return [float(x) for x in xs if isinstance(x, int | float) and math.isfinite(x)]


def _stats(xs: list[Any]) -> dict[str, Any]:
    vals = _finite(xs)
    if not vals:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(vals), "median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    """Medians / extremes of a run's records (non-finite values counted, left out of the statistics)."""
    recs = run["records"]
    out: dict[str, Any] = {"steps": len(recs), "cut_short": run["cut_short"]}
    if not recs:
        return out
    losses = _finite([r["loss"] for r in recs])
    norms = [r["grad_norm"] for r in recs]
    meas = [r["measure"] for r in recs if "measure" in r]
    out["final_loss"] = statistics.mean(losses[-10:]) if losses else None
    out["grad_norm"] = {**_stats(norms), "last": norms[-1]}
    out["nonfinite_steps"] = sum(1 for r in recs if r["skipped"])
    out["family_median"] = {
        f: statistics.median(v)
        for f in (*FAMILIES, "other")
        if (v := _finite([r["family_norms"].get(f) for r in recs]))
    }
    out["ratio_first_last"] = _stats([m["ratio_first_last"] for m in meas])
    out["ratio_first_last_total"] = _stats([m["ratio_first_last_total"] for m in meas])
    out["ratio_first_last_zero"] = sum(1 for m in meas if m["ratio_first_last"] == 0.0)
    out["state_grad_boundary1"] = _stats([m["dLK_dphase_total"][0] for m in meas if m["dLK_dphase_total"]])
    out["kv_grad_boundary1"] = _stats([m["dLK_dkv"][0] for m in meas if m["dLK_dkv"]])
    out["step_s_median"] = statistics.median(r["step_s"] for r in recs)
    return out


def _fmt(x: Any, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec) if isinstance(x, int | float) else str(x)


def tables(runs: list[dict[str, Any]]) -> str:
    """The Markdown tables (main + per-family medians)."""
    head = ("| variant | K | backprop bytes | steps | final loss (last 10) | grad norm median / max / last "
            "| dL_K/de first/last median [min, max] | dL_K/dPhi boundary 1 (median) | dL_K/dKV boundary 1 (median) |")  # fmt: skip
    lines = [head, "|" + "---|" * 9]
    for r in runs:
        s = r.get("summary", {})
        steps = f"{s.get('steps', 0)}/{r['steps_requested']}" + (" (cut short)" if s.get("cut_short") else "")
        if "error" in r:
            steps += f" ERROR {r['error'][:80]}"
        g, q = s.get("grad_norm", {}), s.get("ratio_first_last", {})
        lines.append(
            f"| {r['variant']} | {r['chunks']} | {r['backprop_bytes']:,} | {steps} | {_fmt(s.get('final_loss'), '.4f')} "
            f"| {_fmt(g.get('median'))} / {_fmt(g.get('max'))} / {_fmt(g.get('last'))} "
            f"| {_fmt(q.get('median'))} [{_fmt(q.get('min'))}, {_fmt(q.get('max'))}] "
            f"| {_fmt(s.get('state_grad_boundary1', {}).get('median'))} | {_fmt(s.get('kv_grad_boundary1', {}).get('median'))} |"
        )
    fams = [f for f in (*FAMILIES, "other") if any(f in r.get("summary", {}).get("family_median", {}) for r in runs)]
    lines += ["", "Median pre-clip gradient norm per module family:", ""]
    lines += ["| variant | K | " + " | ".join(fams) + " |", "|" + "---|" * (2 + len(fams))]
    for r in runs:
        fm = r.get("summary", {}).get("family_median", {})
        lines.append(f"| {r['variant']} | {r['chunks']} | " + " | ".join(_fmt(fm.get(f)) for f in fams) + " |")
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    c, m = result["config"], result["model"]
    reach = m["num_hidden_layers"] * (m["sliding_window"] - 1)
    zero_k = 2 + -(-reach // c["chunk_bytes"])  # chunks 2 .. K-1 must span more than the reach
    return "\n".join([
        "# Gradients through long backpropagation (benchmarks/bptt_gradients.py)", "",
        f"{c['preset']} on {result['env']['device_name']}, chunks of {c['chunk_bytes']:,} bytes, batch {c['batch']}, "
        f"lr {c['lr']:g} (warmup {c['warmup']}), clip {c['clip']:g}; one backward through all K chunks "
        "(state carried with its gradient). Norms are pre-clip. dL_K/de: gradient of the last chunk's loss "
        "at the byte-embedding output of the first chunk over the last (0: nothing reaches the first chunk). "
        f"Attention alone reaches {reach:,} bytes back (layers x (window - 1)), so without the recurrence "
        f"the ratio is 0 wherever the first chunk lies farther back than that (here: K >= {zero_k}).", "",
        tables(result["runs"]), "",
    ])  # fmt: skip


def plot(result: dict[str, Any], path: Path) -> None:
    """Grad norm vs step, first/last ratio vs step (log y), and dL_K/de_k by chunk at the last measurement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    ks = sorted({r["chunks"] for r in result["runs"]})
    colors = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(ks)}
    for r in result["runs"]:
        recs = r["records"]
        if not recs:
            continue
        style = dict(color=colors[r["chunks"]], ls="-" if r["variant"] == "recurrence" else "--")
        label = f"{r['variant']} K={r['chunks']}"
        axes[0].plot([x["step"] for x in recs], [x["grad_norm"] for x in recs], label=label, **style)
        pts = [(x["step"], x["measure"]["ratio_first_last"]) for x in recs if "measure" in x]
        pts = [(s, v) for s, v in pts if isinstance(v, float) and math.isfinite(v) and v > 0]
        if pts and r["chunks"] > 1:
            axes[1].plot(*zip(*pts, strict=True), marker="o", label=label, **style)
        last = [x["measure"]["dLK_de"] for x in recs if "measure" in x]
        if last and r["chunks"] > 1:
            vals = [(i + 1, v) for i, v in enumerate(last[-1]) if v > 0]
            if vals:
                axes[2].plot(*zip(*vals, strict=True), marker="o", label=label, **style)
    axes[0].set(xlabel="step", ylabel="pre-clip grad norm", title="global gradient norm", yscale="log")
    axes[1].set(xlabel="step", ylabel="||dL_K/de_1|| / ||dL_K/de_K||", title="first / last chunk (0 not shown)")
    axes[1].set_yscale("log")
    axes[2].set(xlabel="chunk k", ylabel="||dL_K/de_k||", title="last chunk's gradient by chunk (last measurement)")
    axes[2].set_yscale("log")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _json_safe(x: Any) -> Any:
    """NaN / inf as strings (strict JSON has no such numbers)."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def environment(device: torch.device) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        sha = commit.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"torch": torch.__version__, "python": sys.version.split()[0], "device_name": name, "git_commit": sha}


# ---- command line ---------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--text",
        nargs="+",
        default=[str(REPO / "data_pipeline" / "samples")],
        help="text files or folders (.txt, .jsonl, .gz ...; default: the repository's samples)",
    )
    ap.add_argument("--out-dir", type=Path, default=Path("runs/bptt_gradients"))
    ap.add_argument("--preset", default="pmnet_119m", help="model preset (tiny for a CPU smoke test)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model config override")
    ap.add_argument("--variants", default="recurrence,norecurrence")
    ap.add_argument("--chunks", default="1,2,4,8", help="comma list of K (chunks per backward)")
    ap.add_argument("--chunk-bytes", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--measure-every", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=20, help="linear warmup steps (then cosine to 10%%)")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ap.add_argument(
        "--compile", choices=("auto", "on", "off"), default="auto", help="compiled fast path (auto: on CUDA)"
    )
    ap.add_argument("--budget-s", type=float, default=None, help="time budget of the whole script (seconds)")
    ap.add_argument("--log-every", type=int, default=10, help="progress line every N steps (0: none)")
    args = ap.parse_args(argv)
    try:
        args.chunks = [int(k) for k in args.chunks.split(",") if k.strip()]
    except ValueError:
        raise UsageError(f"--chunks {args.chunks!r}: expected a comma list of integers") from None
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad or not args.variants:
        raise UsageError(f"--variants: unknown {bad}; choose from {list(VARIANTS)}")
    checks = {"--chunks": min(args.chunks, default=0), "--chunk-bytes": args.chunk_bytes, "--batch": args.batch,
              "--steps": args.steps, "--measure-every": args.measure_every}  # fmt: skip
    for flag, value in checks.items():
        if value < 1:
            raise UsageError(f"{flag}: must be >= 1 (got {value})")
    return args


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    try:
        args = parse_args(argv)
        device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        )
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: CUDA is not available")
        args.compile = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
        cfg = build_config(args.preset, args.set, device)
        data = load_text_bytes(args.text)
        need = max(args.chunks) * args.chunk_bytes + 1
        if data.numel() < need:
            raise UsageError(f"--text holds {data.numel():,} bytes; a window of K={max(args.chunks)} needs {need:,}")
        args.out_dir.mkdir(parents=True, exist_ok=True)
    except (UsageError, OSError) as err:
        print(f"bptt_gradients: {err}", file=sys.stderr)
        return 2
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result: dict[str, Any] = {"config": config, "model": cfg.to_dict(), "env": environment(device), "runs": []}
    result["text_bytes"] = data.numel()
    print(f"{args.preset} on {result['env']['device_name']}: {data.numel():,} bytes of text; runs "
          f"{args.variants} x K={args.chunks}, {args.steps} steps each", flush=True)  # fmt: skip
    result["compile_s"] = warm_up(cfg, args, data, device) if args.compile else 0.0
    if args.compile:
        print(f"compiled in {result['compile_s']:.0f} s", flush=True)
    plan = [(v, k) for k in args.chunks for v in args.variants]  # pairs first: a cut budget keeps comparisons
    json_path = args.out_dir / f"{OUT_NAME}.json"
    for i, (variant, k) in enumerate(plan):
        left = math.inf if args.budget_s is None else args.budget_s - (time.perf_counter() - t_start)
        share = max(0.0, left) * k / sum(kk for _, kk in plan[i:])
        print(f"run {i + 1}/{len(plan)}: {variant} K={k} ({k * args.chunk_bytes:,} bytes of backprop)", flush=True)
        run = run_one(args, cfg, variant, k, data, device, share)
        result["runs"].append(run)
        write_atomic(json_path, json.dumps(_json_safe(result), indent=1))
    result["wall_s"] = time.perf_counter() - t_start
    write_atomic(json_path, json.dumps(_json_safe(result), indent=1))
    write_atomic(args.out_dir / f"{OUT_NAME}.md", markdown(result))
    plot(result, args.out_dir / f"{OUT_NAME}.png")
    print(f"\nwrote {json_path}, .md, .png ({result['wall_s']:.0f} s)\n")
    print(tables(result["runs"]))
    return 0 if any(r["records"] for r in result["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
