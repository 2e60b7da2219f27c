#!/usr/bin/env python
"""Sample text from a checkpoint with the streaming state; prints prompt + continuation.

    python tools/generate.py CKPT --prompt "Once upon a time" [--new-bytes 256]
        [--temperature 0.8] [--top-k 40] [--seed 0]

The continuation is printed as it is generated (bytes decoded as UTF-8; an invalid
sequence shows as U+FFFD). Generation stops at EOS or after --new-bytes bytes. When stdout is
not a terminal (redirected to a file or a pipe), a progress bar of the bytes generated goes to
stderr; on a terminal the text itself shows the progress. (``--max-bytes``, the older name of
``--new-bytes``, still works; in the other tools ``--max-bytes`` counts bytes scored.)
"""

from __future__ import annotations

import argparse
import codecs
import sys
from collections.abc import Sequence
from pathlib import Path

from pmnet.cli import add_alias
from pmnet.eval.cli import add_model_args, load_model_from_args, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="generate.py", description="Sample bytes from PMNet with the streaming state.")
    p.add_argument(
        "ckpt", metavar="CKPT", help="interchange directory (config.json + model.safetensors) or run directory"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default="", help="prompt text (default: empty, i.e. just BOS)")
    src.add_argument("--prompt-file", default=None, help="read the prompt from this UTF-8 file")
    p.add_argument("--new-bytes", type=int, default=256, help="bytes to generate at most (default: 256)")
    add_alias(p, "--max-bytes", "--new-bytes", dest="new_bytes", type=int)
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest bytes; 0 = all (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--no-bos", action="store_true", help="do not start the prompt with BOS")
    p.add_argument("--ignore-eos", action="store_true", help="never sample EOS; always produce --new-bytes bytes")
    p.add_argument("--no-prompt-echo", action="store_true", help="print only the continuation")
    add_model_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from pmnet.eval.generate import generate
    from pmnet.eval.loading import EvalError

    if args.new_bytes < 0:
        raise EvalError(f"--new-bytes {args.new_bytes}: must be >= 0")
    if args.prompt_file is not None:
        try:
            prompt = Path(args.prompt_file).read_text(encoding="utf-8")
        except OSError as err:
            raise EvalError(f"--prompt-file: {err.strerror}: {args.prompt_file}") from None
    else:
        prompt = args.prompt
    model, _ = load_model_from_args(args.ckpt, args)
    out = sys.stdout
    if not args.no_prompt_echo:
        out.write(prompt)
        out.flush()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    # On a terminal the streamed text is the progress; redirected, a bar on stderr (itself only on a terminal).
    bar = tqdm(total=args.new_bytes, unit="B", desc="generate", disable=None if not out.isatty() else True,
               file=sys.stderr, leave=False)  # fmt: skip

    def emit(b: bytes) -> None:
        bar.update(len(b))
        text = decoder.decode(b)
        if text:
            out.write(text)
            out.flush()

    try:
        generate(
            model,
            prompt.encode("utf-8"),
            new_bytes=args.new_bytes,
            temperature=args.temperature,
            top_k=args.top_k,
            seed=args.seed,
            stop_at_eos=not args.ignore_eos,
            add_bos=not args.no_bos,
            on_bytes=emit,
        )
    finally:
        bar.close()
    out.write(decoder.decode(b"", final=True) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
