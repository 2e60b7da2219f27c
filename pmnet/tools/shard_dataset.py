"""Shard text corpora into byte-level MDS samples for PMNet training (a thin CLI).

    python tools/shard_dataset.py INPUT [INPUT ...] --out DIR [--workers 2]
    python tools/shard_dataset.py --out DIR --verify        (re-hash an existing output)

Reads FineWeb-Edu parquet, jsonl / jsonl.gz / jsonl.zst (``text`` field) and plain text files
(.txt, .txt.gz: one document per file); writes DIR/train, DIR/val (mosaicml-streaming MDS,
zstd, hashed) and DIR/manifest.json. Rerun the same command after a crash or Ctrl-C to resume.
All the work is in ``data_pipeline`` (sharding.py, writer.py, sources.py, packing.py).

Exit status: 0 done (or up to date), 1 --verify found a shard that does not match its index,
2 a bad option or input (one ``error:`` line; nothing written), 130 interrupted.
(``--input PATH ...`` and ``--output DIR``, the older spellings, still work.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from data_pipeline.errors import DataPipelineError, ShardVerifyError
from data_pipeline.manifest import ShardSettings
from pmnet.cli import EXIT_CHECK_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, add_alias


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, exit 2, like every other refusal of this tool.
        print(f"shard_dataset: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _size(text: str) -> int:
    from streaming.base.util import bytes_to_int

    try:
        return int(bytes_to_int(text))
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64mb)") from None


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (also used by the tests)."""
    d = ShardSettings()
    p = _Parser(prog="shard_dataset.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="files, directories or globs (none: --verify only)")
    p.add_argument("--out", metavar="DIR", help="output directory (train/, val/, manifest.json); required")
    add_alias(p, "--input", "INPUT (positional)", dest="old_inputs", nargs="+")
    add_alias(p, "--output", "--out", dest="out")
    p.add_argument("--workers", type=int, default=1, help="worker processes, parallel over inputs (default 1)")
    p.add_argument(
        "--sample-bytes",
        type=int,
        default=d.sample_bytes,
        help=f"bytes per sample = seq_len + 1 (default {d.sample_bytes})",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help=f"share of documents sent to val (default {d.val_fraction})",
    )
    p.add_argument("--min-int-score", type=int, default=None, help="drop parquet/jsonl rows with int_score below")
    p.add_argument("--min-chars", type=int, default=0, help="drop documents shorter than this many characters")
    p.add_argument("--language", default=None, help="keep only this language where a record states one")
    tail = p.add_mutually_exclusive_group()
    tail.add_argument(
        "--keep-tail",
        dest="keep_tail",
        action="store_true",
        default=True,
        help="keep each stream's short last sample, padded with PAD at training (default)",
    )
    tail.add_argument(
        "--drop-tail", dest="keep_tail", action="store_false", help="drop each stream's short last sample"
    )
    p.add_argument(
        "--shard-size", type=_size, default=d.shard_size_limit, help="uncompressed shard size limit (default 64mb)"
    )
    p.add_argument(
        "--text-unit-bytes",
        type=_size,
        default=d.text_unit_bytes,
        help="plain-text files are grouped into work units of about this size (default 64mb)",
    )
    p.add_argument(
        "--hashes",
        default=",".join(d.hashes),
        help=f"shard hashes recorded in index.json, comma-separated, sorted (default {','.join(d.hashes)})",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an output written with other settings")
    p.add_argument(
        "--verify",
        action="store_true",
        help="re-hash every shard against index.json at the end; without INPUT: of the existing output DIR",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse, run, and turn every user-facing problem into one line on stderr (exit 2; 1 for --verify)."""
    p = build_parser()
    args = p.parse_intermixed_args(argv)  # INPUTs may come before, between or after the options
    inputs = [*args.inputs, *getattr(args, "old_inputs", [])]
    if args.out is None:
        p.error("the output directory is required (--out DIR)")
    from data_pipeline.sharding import ShardJob, run_sharding, verify_output

    if not inputs:
        if not args.verify:
            p.error("give INPUT files, directories or globs (or --verify alone to check an existing --out)")
        return _exit_code(lambda: verify_output(args.out))

    settings = ShardSettings(
        sample_bytes=args.sample_bytes,
        val_fraction=args.val_fraction,
        keep_tail=args.keep_tail,
        min_int_score=args.min_int_score,
        min_chars=args.min_chars,
        language=args.language,
        shard_size_limit=args.shard_size,
        text_unit_bytes=args.text_unit_bytes,
        hashes=tuple(h.strip() for h in args.hashes.split(",") if h.strip()),
    )
    job = ShardJob(
        inputs=inputs,
        output=args.out,
        settings=settings,
        workers=args.workers,
        overwrite=args.overwrite,
        verify=args.verify,
        progress=args.progress,
    )
    return _exit_code(lambda: run_sharding(job))


def _exit_code(work: Callable[[], object]) -> int:
    """Run ``work``; a failed shard check exits 1, any other data problem 2 (one line each)."""
    try:
        work()
    except ShardVerifyError as err:
        print(f"shard_dataset: error: {err}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except DataPipelineError as err:
        print(f"shard_dataset: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("shard_dataset: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
