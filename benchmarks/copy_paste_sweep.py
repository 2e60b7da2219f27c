"""Copy-paste beyond attention's reach at several sizes at once, each inside one wall-clock budget (issue 19).

For every setting (a model size, an attention reach R = layers x window, and copy lengths N
up to a multiple of R) this trains PMNet and the same model without memory on the copy-paste
task (data_pipeline/copy_paste.py; lookback 2N, so for N > R/2 attention alone cannot see the
byte to copy), all runs side by side as separate ``launchers/pretrain.sh`` jobs, each stopped
by SIGTERM after ``--train-seconds`` (it checkpoints and exits cleanly). Then every run is
evaluated by N bucket (``tools/eval_copy_paste.py``: exact match and per-byte accuracy under
greedy decoding), its training curves are read back from TensorBoard
(``python -m pmnet.eval.run_logs``), and one summary table covers all settings.

    python benchmarks/copy_paste_sweep.py --out OUT                       # on one GPU, ~10 min
    python benchmarks/copy_paste_sweep.py --out OUT --settings tiny_r16 --train-seconds 300

Outputs under OUT: ``summary.md`` and ``summary.json`` (every setting: accuracy by N bucket
for both variants, the share of buckets beyond R/2 where PMNet beats the no-memory model,
steps trained, loss and gradient norms), and per setting a folder with copy_paste.{csv,md,png},
train_curves.{csv,md,png} and both train logs. The runs themselves (checkpoints, TensorBoard)
stay under ``--run-root``.

Why side by side: these models are small, so one of them leaves an H200 mostly idle (each step
is bound by kernel launches on the CPU); six jobs share the GPU at little cost to each. The
learning-rate schedule is constant after warmup so that a run cut by the clock ends at the
same learning rate whenever it is cut (the steps reached are reported).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pmnet.checkpoint.manifest import checkpoints_root, parse_step, read_latest  # noqa: E402

BASE_CONFIG = "configs/copy_paste_30m.yaml"


@dataclass(frozen=True)
class Setting:
    """One model size and task range: PMNet and its no-memory twin share everything else."""

    name: str
    model: dict[str, object]
    "Overrides of the ``model`` section (on top of configs/copy_paste_30m.yaml)."
    reach: int
    "R = layers x window: the farthest byte attention alone can see."
    max_n: int
    start_n: int
    curriculum_samples: int
    edges: tuple[int, ...]
    micro_batch: int = 32
    lr: float = 1e-3
    extra: dict[str, object] = field(default_factory=dict)

    def overrides(self) -> list[str]:
        """``section.key=value`` overrides of this setting's runs (variant and device aside)."""
        sample_bytes = 3 * self.max_n + 3  # the longest sample (3N + 2) fits the inputs + 1 target byte
        out = [f"model.{k}={v}" for k, v in self.model.items()]
        out += [
            "data.copy_paste.min_n=2",
            f"data.copy_paste.max_n={self.max_n}",
            f"data.copy_paste.curriculum_samples={self.curriculum_samples}",
            f"data.copy_paste.curriculum_start_n={self.start_n}",
            f"data.sample_bytes={sample_bytes}",
            f"train.micro_batch_size={self.micro_batch}",
            f"train.global_batch_size={self.micro_batch}",
            f"optim.lr={self.lr}",
        ]
        return out + [f"{k}={v}" for k, v in self.extra.items()]


# Attention reach R and N up to 2R-4R: for N in (R/2, max_n] only the memory can copy.
SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        # the CPU miniature (2 layers x window 8, R = 16) with N up to 2R instead of 0.75R
        Setting(
            "tiny_r16",
            {"preset": "tiny", "num_hidden_layers": 2, "sliding_window": 8, "memory_size": 32},
            reach=16, max_n=32, start_n=8, curriculum_samples=96_000, edges=(2, 4, 8, 12, 16, 24, 32, 48),
        ),
        # the same attention, twice the phases, N up to 4R
        Setting(
            "tiny_r16_n64",
            {"preset": "tiny", "num_hidden_layers": 2, "sliding_window": 8, "memory_size": 64},
            reach=16, max_n=64, start_n=8, curriculum_samples=128_000, edges=(4, 8, 16, 24, 32, 48, 64, 96),
        ),
        # the 30M width (d 384, M 128, 4 read heads) with 2 layers x window 16: R = 32, N up to 4R
        Setting(
            "w384_r32",
            {"preset": "pmnet_30m", "num_hidden_layers": 2, "sliding_window": 16},
            reach=32, max_n=128, start_n=8, curriculum_samples=128_000, edges=(4, 8, 16, 32, 48, 64, 96, 128, 192),
        ),
        # a few seconds on a CPU: what the tests run
        Setting(
            "smoke",
            {"preset": "tiny", "num_hidden_layers": 1, "sliding_window": 4, "memory_size": 8, "hidden_size": 32},
            reach=4, max_n=6, start_n=2, curriculum_samples=0, edges=(2, 4, 6), micro_batch=8,
        ),
    )
}  # fmt: skip
DEFAULT_SETTINGS = ("tiny_r16", "tiny_r16_n64", "w384_r32")
VARIANTS = {"pmnet": ("PMNet", []), "nomem": ("no-memory", ["model.use_memory=false"])}
CPU_OVERRIDES = [
    "train.device=cpu",
    "train.precision=fp32",
    "train.compile=false",
    "model.attn_backend=sdpa",
    "deepspeed.zero_stage=0",
]
COMMON = [
    "model.memory_write_period=1",  # a write in every layer: levels = layers (2 layers: 1 + 4 groups)
    "model.attn_backend=sdpa",  # blocked window: exact, and no flex block padding for 100-byte samples
    "optim.schedule=constant",
    "optim.warmup_steps=100",
    "train.max_steps=1000000",  # the clock stops the runs
    "checkpoint.interval=2000",
    "checkpoint.keep_last=1",
    "logging.log_interval=10",
    "logging.console_interval=200",
    "logging.memory_diagnostics_interval=0",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="output directory (tables, plots, logs)")
    p.add_argument("--settings", default=",".join(DEFAULT_SETTINGS), help=f"comma-separated, of {sorted(SETTINGS)}")
    p.add_argument("--variants", default="pmnet,nomem", help="comma-separated, of pmnet,nomem")
    p.add_argument("--train-seconds", type=float, default=450.0, help="wall clock per run, compilation included")
    p.add_argument("--max-steps", type=int, default=0, help="also stop at this step (0: the clock alone)")
    p.add_argument("--stop-grace", type=float, default=60.0, help="seconds the runs get to checkpoint after SIGTERM")
    p.add_argument("--eval-only", action="store_true", help="evaluate the runs already under --run-root (no training)")
    p.add_argument("--samples", type=int, default=128, help="evaluation samples per N bucket (default: 128)")
    p.add_argument("--run-root", default="runs/copy_paste_sweep", help="where the run directories go")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--python", default=sys.executable, help="the Python of the runs (default: this one)")
    args = p.parse_args(argv)
    for name in args.settings.split(","):
        if name not in SETTINGS:
            p.error(f"--settings: unknown setting {name!r}; choose from {sorted(SETTINGS)}")
    for v in args.variants.split(","):
        if v not in VARIANTS:
            p.error(f"--variants: unknown variant {v!r}; choose from {sorted(VARIANTS)}")
    return args


def device_of(choice: str) -> str:
    if choice != "auto":
        return choice
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def launch(args: argparse.Namespace, setting: Setting, variant: str, device: str, log: Path) -> subprocess.Popen:
    """Start one training job (its own process group, so the clock can stop it cleanly)."""
    cmd = ["bash", "launchers/pretrain.sh", BASE_CONFIG, *COMMON, *setting.overrides(), *VARIANTS[variant][1]]
    if device == "cpu":
        cmd += CPU_OVERRIDES
    if args.max_steps:
        cmd.append(f"train.stop_at_step={args.max_steps}")
    cmd += [f"train.run_root={Path(args.run_root).resolve()}", f"train.run_name={setting.name}_{variant}"]
    env = dict(os.environ, PMNET_PYTHON=args.python, PYTHONUNBUFFERED="1")
    with log.open("w") as fh:  # the child keeps its own copy of the descriptor
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        return subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop_all(procs: dict[str, subprocess.Popen], grace_s: float) -> dict[str, int]:
    """SIGTERM to every launcher at once (each rank checkpoints at its next step and exits), then
    one shared grace period; a job still there after it is killed (exit -9). A job stuck before
    its first step (in compilation, say) sees the signal only at a step boundary."""
    for proc in procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.poll() is None for p in procs.values()):
        time.sleep(1.0)
    codes = {}
    for name, proc in procs.items():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            codes[name] = -9
        else:
            codes[name] = proc.returncode
    return codes


def train_all(args: argparse.Namespace, jobs: list[tuple[Setting, str]], device: str, out: Path) -> dict[str, int]:
    """Start every job, let them run until the clock (or their own step limit) ends them, stop them."""
    procs = {}
    for setting, variant in jobs:
        name = f"{setting.name}_{variant}"
        procs[name] = launch(args, setting, variant, device, out / f"launch_{name}.log")
        print(f"started {name}", flush=True)
    deadline = time.monotonic() + args.train_seconds
    while time.monotonic() < deadline and any(p.poll() is None for p in procs.values()):
        time.sleep(2.0)
    codes = stop_all(procs, args.stop_grace)
    for name, code in codes.items():
        print(f"{name}: exit {code}", flush=True)
    return codes


def run_tool(args: argparse.Namespace, cmd: list[str], log: Path) -> int:
    with log.open("a") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        return subprocess.run([args.python, *cmd], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT).returncode


def last_step(run_dir: Path) -> int:
    """The optimizer step of the run's latest checkpoint (0: none)."""
    name = read_latest(checkpoints_root(run_dir))
    return (parse_step(name) or 0) if name else 0


def evaluate(args: argparse.Namespace, setting: Setting, variants: list[str], device: str, out: Path) -> dict:
    """Evaluate the setting's runs (those with a checkpoint) and read their curves back."""
    sdir = out / setting.name
    sdir.mkdir(parents=True, exist_ok=True)
    root = Path(args.run_root).resolve()
    runs = [(v, root / f"{setting.name}_{v}") for v in variants if last_step(root / f"{setting.name}_{v}")]
    result: dict = {"reach": setting.reach, "max_n": setting.max_n, "overrides": setting.overrides(), "variants": {}}
    for v in variants:
        d = root / f"{setting.name}_{v}"
        result["variants"][v] = {"steps": last_step(d)}
        if not result["variants"][v]["steps"]:
            result["variants"][v]["note"] = "no checkpoint: the run never reached a step boundary"
        if (d / "train.log").is_file():
            shutil.copy(d / "train.log", sdir / f"train_{v}.log")
    if not runs:
        result["error"] = "no run has a checkpoint"
        return result
    log = sdir / "eval.log"
    edges = ",".join(str(e) for e in (0, *setting.edges))
    cmd = ["tools/eval_copy_paste.py", *[str(d) for _, d in runs], "--labels", *[VARIANTS[v][0] for v, _ in runs]]
    cmd += [
        "--edges",
        edges,
        "--samples",
        str(args.samples),
        "--out",
        str(sdir),
        "--receptive-field",
        str(setting.reach),
    ]
    cmd += ["--device", device, "--chunk-bytes", "4096"]
    result["eval_exit"] = run_tool(args, cmd, log)
    curves = ["-m", "pmnet.eval.run_logs", *[str(d) for _, d in runs], "--labels", *[VARIANTS[v][0] for v, _ in runs]]
    result["curves_exit"] = run_tool(args, [*curves, "--out", str(sdir)], log)
    result["buckets"] = read_buckets(sdir / "copy_paste.csv")
    result["curves"] = read_curves(sdir / "train_curves.md")
    return result


def read_buckets(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as fh:
        return list(csv.DictReader(fh))


def read_curves(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def beyond_reach(result: dict) -> dict[str, float]:
    """Mean exact / byte accuracy over the buckets that lie wholly beyond attention (lo >= R/2), per model."""
    acc: dict[str, list[tuple[float, float]]] = {}
    for row in result.get("buckets", []):
        if int(row["n_lo"]) >= result["reach"] // 2 and int(row["n_hi"]) <= result["max_n"]:
            acc.setdefault(row["model"], []).append((float(row["exact_match"]), float(row["byte_accuracy"])))
    return {f"{k} {m}": sum(x[i] for x in v) / len(v) for k, v in acc.items() for i, m in enumerate(("exact", "byte"))}


def write_summary(out: Path, results: dict, args: argparse.Namespace, device: str, codes: dict[str, int]) -> str:
    lines = [
        "# Copy-paste sweep",
        "",
        f"Device {device}; {args.train_seconds:.0f} s of wall clock per run (compilation included), runs side by side; "
        f"{args.samples} evaluation samples per N bucket; exact = the whole copy right under greedy decoding.",
        "",
        "| setting | R | N trained | variant | steps | exact / byte % for N in (R/2, max N] |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, res in results.items():
        means = beyond_reach(res)
        for v, info in res["variants"].items():
            label = VARIANTS[v][0]
            ex, by = means.get(f"{label} exact"), means.get(f"{label} byte")
            acc = "-" if ex is None else f"{100 * ex:.1f} / {100 * by:.1f}"
            steps = info["steps"] or "0 (no checkpoint)"
            lines.append(f"| {name} | {res['reach']} | 2..{res['max_n']} | {label} | {steps} | {acc} |")
    lines.append("")
    for name, res in results.items():
        table = out / name / "copy_paste.md"
        lines += [f"## {name} (R = {res['reach']})", "", table.read_text() if table.is_file() else "(no table)", ""]
        if res.get("curves"):
            lines += ["Training curves:", "", res["curves"], ""]
    lines += ["Exit codes of the training jobs (0 = stopped by the clock with a checkpoint):", ""]
    lines += [f"* {k}: {v}" for k, v in codes.items()]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = device_of(args.device)
    settings = [SETTINGS[s] for s in args.settings.split(",")]
    variants = args.variants.split(",")
    t0 = time.monotonic()
    codes = {} if args.eval_only else train_all(args, [(s, v) for s in settings for v in variants], device, out)
    train_s = time.monotonic() - t0
    results = {s.name: evaluate(args, s, variants, device, out) for s in settings}
    summary = {
        "device": device,
        "train_seconds": args.train_seconds,
        "train_wall_s": round(train_s, 1),
        "total_wall_s": round(time.monotonic() - t0, 1),
        "exit_codes": codes,
        "settings": results,
        "beyond_reach": {name: beyond_reach(res) for name, res in results.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(write_summary(out, results, args, device, codes))
    return 0 if all(res.get("eval_exit") == 0 for res in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
