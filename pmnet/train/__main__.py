"""``python -m pmnet.train CONFIG [section.key=value ...] [--allow-change FIELD] [--dry-run [--world-size N]]``.

Launchers start one such process per rank (``launchers/pretrain.sh``); a bare single process
works too. Before the process group is set up, every rank runs the pre-flight
(``pmnet.train.preflight``: data streams, the run directory's saved config). User mistakes (bad
config, missing data, a checkpoint that does not fit, a schedule change on resume that was not
asked for) end with one ``error:`` line and exit code 2; a run stopped by too many non-finite
steps exits 3; a rendezvous port taken by another process exits 98 (EADDRINUSE).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pmnet.config import Config, ConfigError, dump_config, load_config

if TYPE_CHECKING:
    from pmnet.train.loop import Hook

USAGE = (
    "python -m pmnet.train CONFIG [section.key=value ...] [--allow-change FIELD[,FIELD]] "
    "[--dry-run [--world-size N]] [--help-config]"
)
PORT_IN_USE = 98  # exit code when rank 0 cannot bind the rendezvous port (errno EADDRINUSE)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pmnet.train", usage=USAGE, description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", help="YAML run config (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--dry-run", action="store_true", help="print the resolved setup and exit")
    p.add_argument(
        "--world-size", type=int, default=None, help="ranks assumed by --dry-run (default: $WORLD_SIZE or 1)"
    )
    p.add_argument(
        "--allow-change",
        action="append",
        default=[],
        metavar="FIELD[,FIELD]",
        help="accept a resume that changes these schedule / optimizer fields (pmnet.train.preflight.RESUME_GUARDED)",
    )
    p.add_argument("--help-config", action="store_true", help="list every config field with its doc")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_intermixed_args(argv)  # flags may come between the overrides


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a user mistake (one error line, exit 2), not a bug."""
    from data_pipeline.errors import DataPipelineError
    from pmnet.model import InterchangeError
    from pmnet.train.checkpoint import CheckpointError

    return (ConfigError, DataPipelineError, InterchangeError, CheckpointError)


def dry_run(cfg: Config, world_size: int, preflight_notes: list[str] | None = None) -> str:
    """The resolved setup as text: config, size, FLOPs, pre-flight, DeepSpeed JSON (the launcher adds the command)."""
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
        "# pre-flight (data streams, run directory): passed",
        *(preflight_notes or []),
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
    from pmnet.train.preflight import preflight
    from pmnet.train.startup import StartupClock

    clock = StartupClock()
    clock.mark("launch")  # process creation -> here: the interpreter, the config modules (no torch)
    rank0 = os.environ.get("RANK", "0") == "0"
    node_first = os.environ.get("LOCAL_RANK", "0") == "0"  # data paths can differ per node
    try:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            world = args.world_size or int(os.environ.get("WORLD_SIZE", "1"))
            report = preflight(cfg, world, args.allow_change)
            print(dry_run(cfg, world, report.notes))
            return 0
        # before any rank joins the process group or creates the run directory
        report = preflight(cfg, int(os.environ.get("WORLD_SIZE", "1")), args.allow_change)
        clock.mark("pre-flight")
    except ConfigError as err:
        if node_first:
            print(f"error: {err}", file=sys.stderr)
        return 2
    if rank0 and not os.environ.get("PMNET_PREFLIGHT_REPORTED"):
        for line in report.notes:
            print(f"pre-flight: {line}", flush=True)
    from pmnet.train.distributed import teardown_distributed
    from pmnet.train.trainer import train

    user_errors = _user_errors()
    clock.mark("imports")
    env = None
    try:
        env = _setup_distributed(cfg)
        if env is None:
            return PORT_IN_USE
        clock.mark("process group")
        code = train(cfg, env, extra_hooks=extra_hooks, clock=clock)
    except user_errors as err:
        if env is None or env.is_main:
            print(f"error: {err}", file=sys.stderr)
        return 2
    teardown_distributed()
    return code


def _port_in_use(err: BaseException) -> bool:
    text = str(err)
    return "EADDRINUSE" in text or "address already in use" in text.lower()


def _setup_distributed(cfg: Config) -> Any:
    """setup_distributed, or None when rank 0 cannot bind the rendezvous port (said in one line).

    A bare single process picks its own port (bind to port 0), so a port lost to another
    process in the moment between is retried here. Under a launcher, rank 0 writes the port to
    ``$PMNET_PORT_IN_USE_FILE`` (the launcher then relaunches on another port) or says in one
    line that the port given is taken.
    """
    from pmnet.train.distributed import setup_distributed

    own_port = "MASTER_PORT" not in os.environ and os.environ.get("WORLD_SIZE", "1") == "1"
    for attempt in range(3):
        try:
            return setup_distributed(cfg.train.device, cfg.deepspeed.timeout_minutes)
        except RuntimeError as err:
            if not _port_in_use(err):
                raise
            port = os.environ.get("MASTER_PORT", "?")
            if own_port and attempt < 2:
                os.environ.pop("MASTER_PORT", None)
                continue
            marker = os.environ.get("PMNET_PORT_IN_USE_FILE")
            if marker:
                with open(marker, "w", encoding="utf-8") as f:
                    f.write(f"{port}\n")
            else:
                print(
                    f"error: rendezvous port {port} is in use by another process (EADDRINUSE); "
                    "give a free --master-port / MASTER_PORT, or none on a single node (the launcher picks one)",
                    file=sys.stderr,
                )
            return None
    return None


if __name__ == "__main__":
    raise SystemExit(main())
