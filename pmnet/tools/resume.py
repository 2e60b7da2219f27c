#!/usr/bin/env python
"""List a run's checkpoints (valid / incomplete / corrupt / unsafe, and why), point `latest` at the
newest valid one, and print the exact command that resumes the run.

A checkpoint is unsafe when one of its pickles names a global outside the allowlist
(pmnet/checkpoint/ptread.py): loading it would run code, so it is never chosen. Pickles are
checked even with --no-hashes (only tensor metadata is read: milliseconds).

  python tools/resume.py RUN_DIR [--check-only] [--no-hashes] [--json]

Exit status: 0 when a valid checkpoint exists (latest now points at it, or would with
--check-only), 1 when none is valid, 2 when RUN_DIR is unusable (missing, not a run) or on a
usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pmnet.cli import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="resume.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="run directory (holding checkpoints/) or its checkpoints/ directory"
    )
    p.add_argument("--check-only", action="store_true", help="report only; change nothing (latest stays as it is)")
    p.add_argument("--no-hashes", action="store_true", help="check sizes only, skip sha256 (fast, weaker)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    from pmnet.checkpoint.manifest import CheckpointError
    from pmnet.checkpoint.resume import resume_report

    try:
        rep = resume_report(args.run_dir, check_only=args.check_only, verify_hashes=not args.no_hashes)
    except (CheckpointError, OSError) as err:
        if args.json:
            print(json.dumps({"ok": False, "error": str(err)}))
        print(f"resume.py: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    ok = rep["newest_valid"] is not None
    if args.json:
        print(json.dumps({"ok": ok, **rep}, indent=1))
        return EXIT_OK if ok else EXIT_CHECK_FAILED
    rows = rep["checkpoints"]
    if not rows:
        print(f"{args.run_dir}: no checkpoints")
    else:
        w = max(len(r["name"]) for r in rows)
        print(f"{'':2}{'checkpoint':<{w}}  {'step':>8}  {'state':<10}  reason")
        for r in rows:
            mark = "->" if r["is_latest"] else ""
            step = "" if r["step"] is None else r["step"]
            print(f"{mark:2}{r['name']:<{w}}  {step:>8}  {r['state']:<10}  {r['reason']}")
    if not ok:
        print("no valid checkpoint: the run would start from scratch", file=sys.stderr)
        return EXIT_CHECK_FAILED
    newest = Path(rep["newest_valid"]).name
    if rep["latest_ok"]:
        print(f"latest -> {newest} (already correct)")
    elif rep["repaired"]:
        print(f"latest -> {newest} (repaired; was {rep['latest_before'] or 'absent'})")
    else:
        print(f"latest names {rep['latest_before'] or 'nothing'}; would point it at {newest} (--check-only: unchanged)")
    print(f"resume with:\n  {rep['command']}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
