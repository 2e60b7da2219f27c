"""Shared plumbing of the evaluation CLIs: common flags and one-line errors.

Every tool's ``main`` runs inside :func:`run_cli`: a problem is printed as one
``error: ...`` line on stderr. Exit status (``pmnet.cli``): 2 for a bad argument or input (a
missing or unloadable checkpoint, a bad option value: what argparse's usage errors exit with),
1 for anything unexpected (the line says so). Set ``PMNET_DEBUG=1`` to get the full traceback
instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pmnet.cli import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--device, --dtype, --attn-backend, --attn-window, --compile (shared by every tool that loads a checkpoint)."""
    g = p.add_argument_group("model")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N (default: auto)")
    g.add_argument(
        "--dtype", default="fp32", choices=["fp32", "bf16"], help="compute dtype; phases stay fp32 (default: fp32)"
    )
    g.add_argument(
        "--attn-backend",
        default=None,
        choices=["eager", "sdpa", "flex"],
        help="attention implementation (default: flex on GPU, sdpa on CPU)",
    )
    g.add_argument(
        "--attn-window",
        default="blocked",
        choices=["blocked", "dense"],
        help="eager/sdpa window layout: blocked (O(T x window)) or dense (the [T, T] mask reference) (default: blocked)",
    )
    g.add_argument(
        "--compile", action="store_true", help="torch.compile the fast path (CUDA; worth it for long streams)"
    )


def load_model_from_args(ckpt: str, args: argparse.Namespace) -> tuple[Any, Any]:
    """:func:`~pmnet.eval.loading.load_model` of ``ckpt`` with the flags of :func:`add_model_args`."""
    from pmnet.eval.loading import eval_device, load_model

    return load_model(
        ckpt,
        device=eval_device(args.device),
        dtype=args.dtype,
        attn_backend=args.attn_backend,
        attn_window=args.attn_window,
        compile=args.compile,
    )


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; turn any exception into one ``error:`` line: exit status 2 for a user
    error (:class:`~pmnet.eval.loading.EvalError`, ``ValueError`` such as a checkpoint or config
    refusal, ``OSError``), 1 for anything else."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except Exception as err:
        if os.environ.get("PMNET_DEBUG"):
            raise
        from pmnet.eval.loading import EvalError

        msg = " ".join(str(err).split()) or type(err).__name__
        if isinstance(err, (EvalError, ValueError, OSError)):
            print(f"error: {msg}", file=sys.stderr)
            return EXIT_USAGE
        print(f"error: {msg} (unexpected {type(err).__name__}; PMNET_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
