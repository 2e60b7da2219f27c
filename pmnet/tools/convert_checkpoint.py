#!/usr/bin/env python
"""Convert PMNet checkpoints.

  interchange CKPT --out DIR
                         DeepSpeed checkpoint (ZeRO 0-3, any ranks; a step directory or a run
                         directory = its newest valid checkpoint) -> config.json (the released
                         model's key set) + safetensors + byte-tokenizer files (docs/model.md
                         section 7), streamed: peak RAM far below one fp32 model copy;
                         a progress bar of the bytes written on a terminal (stderr).
  universal CKPT         add CKPT/universal (DeepSpeed universal checkpoint) so the run resumes
                         on a different number of ranks; checks the data-stream condition.
                         (No progress bar: DeepSpeed's ds_to_universal runs in a subprocess
                         whose output is kept for the error line.)
  start-from DIR         check an interchange directory (ours, or the released model's folder as
                         transformers saved it) and print the command that starts a run from it
                         (train.init_from=DIR, fresh optimizer).

Exit status 0 on success, 2 when the input is refused (a missing, damaged or unsafe checkpoint,
an existing output without --force) or on a usage error. --json prints one JSON object on
stdout. (The older spelling ``interchange CKPT OUT`` still works.)
"""

from __future__ import annotations

import argparse
import json
import sys

from pmnet.cli import EXIT_OK, EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="convert_checkpoint.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])  # fmt: skip
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("interchange", help="DeepSpeed checkpoint -> interchange safetensors")
    a.add_argument("ckpt", metavar="CKPT", help="checkpoint directory (step_XXXXXXXX) or run directory")
    a.add_argument("--out", metavar="DIR", help="output directory (must not exist unless --force)")
    a.add_argument("out_positional", nargs="?", metavar="OUT", help=argparse.SUPPRESS)  # deprecated spelling
    a.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weights dtype (default fp32)")
    a.add_argument("--max-shard-size", default="5GB", help="split into shards + index above this (default 5GB)")
    a.add_argument(
        "--config", help="run config YAML or interchange config.json (default: the checkpoint's config.yaml)"
    )
    a.add_argument("--force", action="store_true", help="replace an existing DIR (only once the new one is complete)")
    a.add_argument("--allow-unverified", action="store_true",
                   help="convert even without manifest.json or with a size/sha256 mismatch (a bare DeepSpeed "
                        "directory, a damaged copy); default: refuse. Pickles are checked either way")  # fmt: skip
    a.add_argument("--json", action="store_true", help="machine-readable output")
    u = sub.add_parser("universal", help="add a universal checkpoint for resuming on another number of ranks")
    u.add_argument("ckpt", metavar="CKPT", help="checkpoint directory (step_XXXXXXXX) or run directory")
    u.add_argument("--world-size", type=int, help="ranks the run will resume on (checks the data-stream condition)")
    u.add_argument("--micro-batch-size", type=int, help="micro batch of the resumed run (default: the saved one)")
    u.add_argument("--global-batch-size", type=int, help="global batch of the resumed run (default: the saved one)")
    u.add_argument("--workers", type=int, default=2, help="ds_to_universal extract workers (default 2)")
    u.add_argument("--force", action="store_true", help="rebuild an existing universal/")
    u.add_argument("--json", action="store_true", help="machine-readable output")
    s = sub.add_parser("start-from", help="check an interchange directory; print the command that trains from it")
    s.add_argument("dir", metavar="DIR", help="interchange directory (config.json + safetensors)")
    s.add_argument("--config", default="CONFIG.yaml", help="run config to print in the command")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cmd == "interchange":
        if args.out_positional is not None:
            if args.out is not None:
                parser.error("interchange: give the output once (--out DIR)")
            print(f"convert_checkpoint.py: note: 'interchange CKPT OUT' is deprecated, use "
                  f"'interchange CKPT --out {args.out_positional}'", file=sys.stderr)  # fmt: skip
            args.out = args.out_positional
        if args.out is None:
            parser.error("interchange: the output directory is required (--out DIR)")
    from pmnet.checkpoint.manifest import CheckpointError

    try:
        if args.cmd == "interchange":
            from pmnet.checkpoint.convert import convert_to_interchange

            res = convert_to_interchange(args.ckpt, args.out, dtype=args.dtype, max_shard_size=args.max_shard_size,
                                         force=args.force, config_path=args.config, allow_unverified=args.allow_unverified,
                                         progress=not args.json)  # fmt: skip
            out = res.to_dict()
            text = (f"wrote {res.out_dir}: {', '.join(res.files)} ({res.num_tensors} tensors, "
                    f"{res.num_parameters:,} parameters, {res.total_bytes / 1e6:.1f} MB {args.dtype}; "
                    f"from ZeRO-{res.zero_stage} on {res.world_size} rank(s), step {res.step})")  # fmt: skip
            text += "".join(f"\nnote: {n}" for n in res.notes)
        elif args.cmd == "universal":
            from pmnet.checkpoint.convert import make_universal
            from pmnet.checkpoint.resume import check_elastic

            notes = check_elastic(args.ckpt, args.world_size, args.micro_batch_size, args.global_batch_size)
            dest = make_universal(args.ckpt, workers=args.workers, force=args.force)
            out = {"universal": str(dest), "data_stream": notes}
            text = f"wrote {dest}\n" + "\n".join(notes["lines"])
        else:
            from pmnet.checkpoint.resume import check_interchange

            out = check_interchange(args.dir, args.config)
            text = (f"{out['dir']}: {out['num_parameters']:,} parameters, config ok\n"
                    f"start a run from it (fresh optimizer):\n  {out['command']}")  # fmt: skip
    except (CheckpointError, OSError) as err:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": str(err)}))
        print(f"convert_checkpoint.py: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps({"ok": True, **out}, indent=1, default=str))
    else:
        print(text)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
