"""What every command line of the project has in common: exit codes, flag aliases, one-line errors.

Conventions (``tools/*.py``, ``python -m pmnet.train``, ``python -m pmnet.eval.*``):

* inputs are positional, named by what they are (``CKPT``, ``RUN_DIR``, ``DIR``, ``INPUT``);
  an output path is ``--out``;
* a flag name means one thing in every tool (``--max-bytes``: bytes *scored*; ``--new-bytes``:
  bytes *generated*);
* exit status: :data:`EXIT_OK` 0 = done; :data:`EXIT_CHECK_FAILED` 1 = the tool ran and what it
  checked has a problem (an audit check failed, no valid checkpoint, a shard hash mismatch),
  or it failed in a way no user input explains (a bug; Python's own status for an uncaught error);
  :data:`EXIT_USAGE` 2 = the tool could not do what was asked because of its arguments or its
  input (argparse usage errors, a missing or refused path, a corrupt or unsafe checkpoint, a bad
  config); 3 = a training run stopped after too many non-finite steps (``pmnet.train``);
  :data:`EXIT_INTERRUPTED` 130 = Ctrl-C. Every error is one line on stderr, no traceback.

This module imports nothing heavy (``tools/shard_dataset.py`` uses it without torch).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

__all__ = [
    "EXIT_OK",
    "EXIT_CHECK_FAILED",
    "EXIT_INTERNAL",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "DeprecatedAlias",
    "add_alias",
]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: stores into the new flag's ``dest`` and prints one ``note:`` line.

    Hidden from ``--help``; the note names the new spelling so scripts can be updated.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, **kwargs: Any) -> None:
        self.new = new
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        print(f"{parser.prog}: note: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_alias(parser: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs: Any) -> None:
    """Accept ``old`` as a hidden, deprecated spelling of ``new`` (same ``dest``; ``kwargs``: type, nargs)."""
    parser.add_argument(old, dest=dest, action=DeprecatedAlias, new=new, default=argparse.SUPPRESS, **kwargs)
