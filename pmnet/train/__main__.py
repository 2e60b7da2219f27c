"""``python -m pmnet.train CONFIG [section.key=value ...] [--dry-run [--world-size N]]``.

Launchers start one such process per rank (``launchers/pretrain.sh``); a bare single process
works too. User mistakes (bad config, missing data, a checkpoint that does not fit) end with
one ``error:`` line and exit code 2; a run stopped by too many non-finite steps exits 3.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pmnet.config import Config, ConfigError, dump_config, load_config, validate_config

if TYPE_CHECKING:
    from pmnet.train.loop import Hook

USAGE = "python -m pmnet.train CONFIG [section.key=value ...] [--dry-run [--world-size N]] [--help-config]"


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pmnet.train", usage=USAGE, description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", help="YAML run config (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--dry-run", action="store_true", help="print the resolved setup and exit")
    p.add_argument(
        "--world-size", type=int, default=None, help="ranks assumed by --dry-run (default: $WORLD_SIZE or 1)"
    )
    p.add_argument("--help-config", action="store_true", help="list every config field with its doc")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConfigError]
    for module, name in (
        ("data_pipeline.errors", "DataPipelineError"),
        ("pmnet.model", "InterchangeError"),
        ("pmnet.train.checkpoint", "CheckpointError"),
    ):
        with contextlib.suppress(ImportError, AttributeError):
            errors.append(getattr(__import__(module, fromlist=[name]), name))
    return tuple(errors)


def dry_run(cfg: Config, world_size: int) -> str:
    """The resolved setup as text: config, size, FLOPs, DeepSpeed JSON (the launcher adds the command)."""
    from pmnet.train.engine import accumulation_steps, deepspeed_config

    t = cfg.train
    chunk = cfg.tbptt_chunk_bytes()
    lines = [
        "# resolved config",
        dump_config(cfg).rstrip(),
        "",
        f"parameters:            {cfg.model.num_parameters():,}",
        f"training FLOPs/byte:   {cfg.model.flops_per_byte(chunk, training=True):,.0f} (chunk of {chunk} bytes)",
        f"world size:            {world_size}",
        f"micro batch x accum:   {t.micro_batch_size} x {accumulation_steps(cfg, world_size)} per rank "
        f"(global batch {t.global_batch_size} samples = {t.global_batch_size * (cfg.data.sample_bytes - 1):,} bytes)",
        f"truncated BPTT:        K={t.tbptt_chunks} chunks of {chunk} bytes",
        f"run directory:         {os.path.join(t.run_root, t.run_name)}",
        "",
        "# DeepSpeed config",
        json.dumps(deepspeed_config(cfg, world_size), indent=2),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None, extra_hooks: Sequence[Hook] = ()) -> int:
    """Entry point; returns the exit code. ``extra_hooks`` go to :func:`~pmnet.train.trainer.train`
    (a wrapper's seam: ``tests/fault_train.py`` injects faults so)."""
    # DeepSpeed 0.19 calls collectives torch 2.14 deprecates: one FutureWarning per call site and rank
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    if args.help_config:
        from pmnet.config import main as config_main

        return config_main(["--help-config"])
    if args.config is None:
        print(f"usage: {USAGE}", file=sys.stderr)
        return 2
    if "=" in args.config:
        print(f"error: the first argument must be the config file, got {args.config!r}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            world = args.world_size or int(os.environ.get("WORLD_SIZE", "1"))
            validate_config(cfg, world)
            print(dry_run(cfg, world))
            return 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from pmnet.train.distributed import setup_distributed, teardown_distributed
    from pmnet.train.trainer import train

    user_errors = _user_errors()
    env = None
    try:
        validate_config(cfg, int(os.environ.get("WORLD_SIZE", "1")))
        env = setup_distributed(cfg.train.device, cfg.deepspeed.timeout_minutes)
        code = train(cfg, env, extra_hooks=extra_hooks)
    except user_errors as err:
        if env is None or env.is_main:
            print(f"error: {err}", file=sys.stderr)
        return 2
    teardown_distributed()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
