#!/usr/bin/env python
"""Peak RAM of converting a 119M ZeRO-2 checkpoint to the interchange format, vs the fp32 model size.

  python benchmarks/convert_memory.py [--ranks 1|2] [--precision bf16|fp32] [--out FILE.json]
                                      [--workdir DIR] [--keep] [--no-zero-to-fp32]

1. Builds the ``pmnet_119m`` preset with random weights in a DeepSpeed ZeRO-2 engine on CPU
   (gloo, ``--ranks`` processes), takes one optimizer step (so Adam moments exist, as in a
   real checkpoint) and saves it with ``pmnet.train.checkpoint.save_checkpoint``.
2. Runs ``tools/convert_checkpoint.py interchange`` under ``/usr/bin/time -v`` and reads
   "Maximum resident set size" (falls back to ``resource.getrusage`` of the child when
   /usr/bin/time is absent). For comparison it does the same for DeepSpeed's
   ``zero_to_fp32`` and for a bare ``python -c 'import numpy, yaml'`` (the interpreter floor).
3. Prints a table and writes JSON (``--out``, default runs/bench/convert_memory.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def _rank_main(run_dir: str, precision: str) -> None:
    """One rank: build the 119M engine, one step, save a checkpoint (called via --_rank)."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["WORLD_SIZE"])))
    dist.init_process_group("gloo", timeout=timedelta(minutes=30))
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    from pmnet.config import Config
    from pmnet.model import PMNetConfig, PMNetForCausalLM, lm_loss
    from pmnet.train.checkpoint import save_checkpoint

    world = dist.get_world_size()
    mcfg = PMNetConfig.from_preset("pmnet_119m")
    cfg = Config(model=mcfg)
    cfg.train.micro_batch_size, cfg.train.global_batch_size, cfg.train.precision = 1, world, precision
    ds = {"train_batch_size": world, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True,
          "bf16": {"enabled": precision == "bf16"}, "steps_per_print": 2**31 - 1}  # fmt: skip
    torch.manual_seed(0)
    model = PMNetForCausalLM(mcfg)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    plain = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}], lr=1e-4)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds, dist_init_required=False)
    ids = torch.randint(1, 254, (1, 33))
    logits, _ = engine(ids[:, :-1])
    engine.backward(lm_loss(logits.float(), ids[:, 1:]))
    engine.step()
    save_checkpoint(engine, run_dir, 1, trainer_state={"bytes_seen": 32 * world, "samples_seen": world},
                    dataloader_state=None, config=cfg, keep_last=1, keep_every=0)  # fmt: skip
    dist.barrier()
    dist.destroy_process_group()


def make_checkpoint(run_dir: Path, ranks: int, precision: str) -> Path:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(ranks):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(ranks), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO))  # fmt: skip
        procs.append(subprocess.Popen([PY, __file__, "--_rank", str(run_dir), precision], env=env, cwd=REPO))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"convert_memory.py: error: building the checkpoint failed (exit codes {codes})")
    return run_dir / "checkpoints" / "step_00000001"


def peak_rss(cmd: list[str]) -> tuple[int, float, str]:
    """(peak RSS in bytes, seconds, output tail) of a command."""
    env = dict(os.environ, PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu")
    t0 = time.time()
    if Path("/usr/bin/time").is_file():
        p = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=REPO, env=env, capture_output=True, text=True)
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
        if p.returncode != 0 or not m:
            err = p.stderr.split("\tCommand being timed")[0].strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"{' '.join(cmd[1:4])} failed: {err[0]}")
        return int(m.group(1)) * 1024, time.time() - t0, p.stdout[-300:]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if p.returncode != 0:
        err = p.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{' '.join(cmd[1:4])} failed: {err[0]}")
    # ru_maxrss of children is the max over all children so far: valid when this child is the largest
    return max(before, after) * 1024, time.time() - t0, p.stdout[-300:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--ranks", type=int, default=1, choices=[1, 2], help="CPU ranks of the saved checkpoint")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="engine precision (default bf16)")
    ap.add_argument("--out", default="runs/bench/convert_memory.json", help="JSON result file")
    ap.add_argument("--workdir", help="where the checkpoint goes (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint and the converted output")
    ap.add_argument("--no-zero-to-fp32", action="store_true", help="skip measuring DeepSpeed's zero_to_fp32")
    ap.add_argument("--_rank", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._rank:
        _rank_main(*args._rank)
        return 0
    work = Path(args.workdir or tempfile.mkdtemp(prefix="convert_memory-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.time()
        ckpt = make_checkpoint(work / "run", args.ranks, args.precision)
        build_s = time.time() - t0
        meta = json.loads((ckpt / "meta.json").read_text())
        nparams = int(meta["num_parameters"])
        fp32_bytes = nparams * 4
        ckpt_bytes = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
        rows = []
        floor, _, _ = peak_rss([PY, "-c", "import numpy, yaml"])
        rows.append(("python + numpy + yaml (floor)", floor, 0.0))
        out = work / "interchange"
        try:
            rss, secs, _ = peak_rss(
                [PY, "tools/convert_checkpoint.py", "interchange", str(ckpt), "--out", str(out), "--force"]
            )
        except RuntimeError as err:
            raise SystemExit(f"convert_memory.py: error: {err}") from None
        rows.append(("tools/convert_checkpoint.py interchange", rss, secs))
        from safetensors import safe_open

        with safe_open(str(out / "model.safetensors"), framework="np") as f:
            ntensors = len(list(f.keys()))
        if not args.no_zero_to_fp32:
            z = work / "zero_to_fp32"
            # (--safe_serialization refuses the tied embedding / LM head: torch .bin output instead)
            cmd = [PY, "-m", "deepspeed.utils.zero_to_fp32", str(ckpt.parent), str(z), "--tag", ckpt.name]
            try:
                rss2, secs2, _ = peak_rss(cmd)
                rows.append(("deepspeed zero_to_fp32 (reference)", rss2, secs2))
            except RuntimeError as err:
                print(f"note: reference measurement skipped: {err}", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"119M ZeRO-2 checkpoint: {args.ranks} rank(s), {args.precision}, {nparams:,} parameters, "
          f"fp32 size {fp32_bytes / 2**20:.1f} MiB, checkpoint {ckpt_bytes / 2**20:.1f} MiB (built in {build_s:.0f} s)")  # fmt: skip
    print(f"{'command':<42} {'peak RSS MiB':>12} {'x fp32 model':>12} {'seconds':>8}")
    for name, rss, secs in rows:
        print(f"{name:<42} {rss / 2**20:>12.1f} {rss / fp32_bytes:>12.3f} {secs:>8.1f}")
    result = {
        "ranks": args.ranks, "precision": args.precision, "num_parameters": nparams, "fp32_bytes": fp32_bytes,
        "checkpoint_bytes": ckpt_bytes, "interchange_tensors": ntensors,
        "rows": [{"command": n, "peak_rss_bytes": r, "ratio_to_fp32": r / fp32_bytes, "seconds": s} for n, r, s in rows],
        "convert_ratio": rows[1][1] / fp32_bytes, "limit_ratio": 1.5, "measured_with": "/usr/bin/time -v"
        if Path("/usr/bin/time").is_file() else "resource.getrusage(RUSAGE_CHILDREN)",
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"convert peak RSS = {result['convert_ratio']:.3f} x fp32 model size (limit 1.5); wrote {args.out}")
    return 0 if result["convert_ratio"] <= 1.5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
