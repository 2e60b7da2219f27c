#!/usr/bin/env python
"""Audit a PMNet checkpoint, or compare two.

  python tools/audit_checkpoint.py CKPT [--no-hashes] [--verify-data] [--json]
  python tools/audit_checkpoint.py --compare A B [--top N] [--json]

CKPT is a step directory (or a run directory: its newest checkpoint by name). Checks: the
manifest (every file present, sizes, sha256; corrupt file vs lying manifest told apart by the
zip CRC32s), the files expected for the saved world size and ZeRO stage, every tensor finite,
shapes and parameter count against the saved config, optimizer / scheduler / trainer step
agreement, dataloader position vs bytes seen. Prints a summary table (step, bytes seen, loss,
parameter norms per family). --compare: config differences and per-tensor relative L2
difference (A and B may be checkpoints or interchange directories). Exit status 0 when every
check passes, 1 when a check failed, 2 when CKPT cannot be read at all (missing, not a
checkpoint) or on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pmnet.cli import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE


def _pick(path: str) -> Path:
    p = Path(path)
    from pmnet.checkpoint.manifest import checkpoints_root, parse_step

    root = checkpoints_root(p)
    if p.is_dir() and not any(p.glob("*model_states.pt")) and root.is_dir():
        steps = sorted((parse_step(c.name), c) for c in root.iterdir() if parse_step(c.name) is not None)
        if steps:
            return steps[-1][1]
    return p


def _print_audit(rep: dict) -> None:
    print(f"checkpoint {rep['path']}")
    for c in rep["checks"]:
        print(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['name']:<15} {c['detail']}")
    s = rep["summary"]
    print("summary")
    for key in ("step", "bytes_seen", "samples_seen", "loss", "skipped_steps", "num_parameters", "world_size",
                "zero_stage", "precision", "code_version"):  # fmt: skip
        if s.get(key) is not None:
            val = f"{s[key]:,}" if isinstance(s[key], int) else s[key]
            print(f"  {key:<15} {val}")
    if rep["family_norms"]:
        print("parameter L2 norm by family")
        for fam, norm in rep["family_norms"].items():
            print(f"  {fam:<15} {norm:.4f}")
    print("result: " + ("all checks passed" if rep["ok"] else "PROBLEMS FOUND"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="audit_checkpoint.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    p.add_argument(
        "ckpt", metavar="CKPT", nargs="?", help="checkpoint directory (or run directory: its newest) to audit"
    )
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two checkpoints / interchange directories")
    p.add_argument("--top", type=int, default=10, help="--compare: print the N most different tensors (default 10)")
    p.add_argument("--no-hashes", action="store_true", help="skip sha256 verification")
    p.add_argument("--verify-data", action="store_true", help="also verify the training data shards (data_pipeline)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    if bool(args.ckpt) == bool(args.compare):
        p.error("give either CKPT or --compare A B")
    from pmnet.checkpoint.audit import audit_checkpoint, compare_checkpoints
    from pmnet.checkpoint.manifest import CheckpointError
    from pmnet.checkpoint.ptread import PtReadError

    try:
        if args.compare:
            for x in args.compare:
                if not Path(x).is_dir():
                    raise CheckpointError(f"{x}: no such directory")
            res = compare_checkpoints(_pick(args.compare[0]), _pick(args.compare[1]))
            if args.json:
                print(json.dumps(res, indent=1, default=str))
                return 0
            print(f"A = {res['a']}\nB = {res['b']}")
            print(f"config differences: {len(res['config_diffs'])}")
            for d in res["config_diffs"]:
                print(f"  {d['key']}: {d['a']!r} -> {d['b']!r}")
            ts = sorted(res["tensors"], key=lambda t: -(t["rel_l2"] if t["rel_l2"] is not None else float("inf")))
            print(f"tensors: {len(ts)} compared; max relative L2 diff {ts[0]['rel_l2'] if ts else 0:.3e}")
            for t in ts[: args.top]:
                rel = "n/a " + t.get("note", "") if t["rel_l2"] is None else f"{t['rel_l2']:.3e}"
                print(f"  {rel:>12}  {t['name']}")
            for side in ("only_a", "only_b"):
                if res[side]:
                    print(f"{side}: {', '.join(res[side][:10])}")
            return 0
        rep = audit_checkpoint(_pick(args.ckpt), verify_hashes=not args.no_hashes, verify_data=args.verify_data)
    except (CheckpointError, PtReadError, OSError) as err:
        if args.json:
            print(json.dumps({"ok": False, "error": str(err)}))
        print(f"audit_checkpoint.py: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    d = rep.to_dict()
    if args.json:
        print(json.dumps(d, indent=1, default=str))
    else:
        _print_audit(d)
    return EXIT_OK if rep.ok else EXIT_CHECK_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
