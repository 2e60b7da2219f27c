"""The code version recorded with every checkpoint: the git commit (with ``+dirty``) or the package version."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__all__ = ["code_version"]

_REPO = Path(__file__).resolve().parents[2]


@functools.cache
def code_version() -> str:
    """``git:<sha>[+dirty]`` when run from a git checkout, else ``pmnet <version>``."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return f"git:{sha}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"pmnet {version('pmnet')}"
        except PackageNotFoundError:
            return "unknown"
