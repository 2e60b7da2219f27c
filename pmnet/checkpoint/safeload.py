"""No checkpoint file runs code: every pickle a load path reads is held to one allowlist.

DeepSpeed 0.19.8 reads its checkpoint files with ``torch.load(weights_only=False)``, i.e. a
full unpickler that calls whatever a file names (``posix.system`` included). Two layers keep
that from ever happening in this stack; both use :data:`pmnet.checkpoint.ptread.ALLOWED_GLOBALS`:

* :func:`scan_pickles` unpickles each ``.pt`` file's ``data.pkl`` with the restricted,
  torch-free unpickler of :mod:`pmnet.checkpoint.ptread` before anything else opens it; a global
  outside the allowlist is a one-line :class:`~pmnet.checkpoint.ptread.PtReadError` naming the
  file and the global. ``manifest.check_checkpoint`` runs it (so ``tools/resume.py``, the
  trainer's choice of checkpoint, convert and eval see such a checkpoint as *unsafe*, never
  valid), and so do ``load_checkpoint`` (on every rank) and ``make_universal``.
* :func:`restricted_torch_load` (a context) makes every ``torch.load`` inside it a
  ``weights_only=True`` load (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``, read by torch at each
  call, overrides DeepSpeed's explicit ``weights_only=False``) that accepts the allowlist's
  DeepSpeed classes too. A file swapped after the scan, or a load path nobody listed, still
  cannot run code: torch's weights-only unpickler refuses it.

``python -m pmnet.checkpoint.safeload MODULE ARGS...`` runs a Python module (DeepSpeed's
``ds_to_universal``) with both layers installed for the whole process.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import runpy
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pmnet.checkpoint.ptread import DEEPSPEED_CLASSES, PtReadError, check_pickle

__all__ = [
    "FORCE_ENV",
    "PICKLE_SUFFIXES",
    "UnsafeCheckpointError",
    "install",
    "pickle_files",
    "restricted_torch_load",
    "scan_pickles",
    "torch_safe_globals",
]

FORCE_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")
"""File names torch.load / pickle readers are pointed at; every such file in a checkpoint is scanned."""


class UnsafeCheckpointError(PtReadError):
    """A checkpoint file that names a pickle global outside the allowlist (one line, names the file)."""


def pickle_files(root: str | Path) -> list[Path]:
    """Every pickle-bearing file (by suffix) under a checkpoint directory, sorted."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.suffix in PICKLE_SUFFIXES and p.is_file())


def scan_pickles(paths: Iterable[str | Path]) -> int:
    """Check each file with the restricted unpickler; returns how many were checked.

    Raises :class:`UnsafeCheckpointError` for the first file naming a global outside the
    allowlist, and :class:`PtReadError` for one that is not a readable torch zip file.
    """
    n = 0
    for path in paths:
        try:
            check_pickle(path)
        except PtReadError as err:
            if "refusing to unpickle" in str(err):
                raise UnsafeCheckpointError(str(err)) from None
            raise
        n += 1
    return n


def torch_safe_globals() -> list[Any]:
    """The allowlist's classes that torch's weights-only unpickler does not accept by itself.

    Tensors, storages, dtypes, ``torch.Size``, ``OrderedDict`` and the builtins of the
    allowlist are torch's own weights-only set; DeepSpeed's bookkeeping classes and numpy
    scalars are added here (imported only when DeepSpeed is installed).
    """
    import numpy as np

    out: list[Any] = [np.dtype]
    try:  # numpy's stubs do not declare the pickling helper `scalar`: looked up by name
        out.append(importlib.import_module("numpy._core.multiarray").scalar)
    except ImportError:  # numpy < 2
        out.append(importlib.import_module("numpy.core.multiarray").scalar)
    for qual in DEEPSPEED_CLASSES:
        module, name = qual.rsplit(".", 1)
        try:
            out.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue  # not in this DeepSpeed version: nothing can need it
    return out


def _unsafe_message(err: BaseException, where: object) -> str:
    """torch's multi-line explanation -> one line: the file and the refused global."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    keys = ("GLOBAL", "global", "WeightsUnpickler error", "Unsupported")
    why = next((ln for ln in lines[1:] if any(k in ln for k in keys)), lines[0] if lines else type(err).__name__)
    return f"{where}: refused by the weights-only loader ({why.rstrip('.')}; no code was run)"


@contextlib.contextmanager
def restricted_torch_load(where: str = "checkpoint") -> Iterator[None]:
    """Inside: every ``torch.load`` is weights-only with the allowlist (DeepSpeed's included).

    Two hooks, so neither a caller's explicit ``weights_only=False`` nor a captured reference
    to ``torch.load`` gets around it: ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` (torch reads it on each
    call) and ``torch.load`` itself wrapped to name the refused file in a one-line
    :class:`UnsafeCheckpointError` (``where`` stands in when the file is unknown).
    """
    import torch

    original = torch.load

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        try:
            return original(f, *args, **kwargs)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(_unsafe_message(err, f)) from None

    before = os.environ.get(FORCE_ENV)
    os.environ[FORCE_ENV] = "1"
    torch.load = load
    try:
        with torch.serialization.safe_globals(torch_safe_globals()):
            yield
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(_unsafe_message(err, where)) from None
    finally:
        torch.load = original
        if before is None:
            os.environ.pop(FORCE_ENV, None)
        else:
            os.environ[FORCE_ENV] = before


def install() -> None:
    """For the whole process: weights-only ``torch.load`` with the allowlist (used by ``-m`` below)."""
    import torch

    os.environ[FORCE_ENV] = "1"
    torch.serialization.add_safe_globals(torch_safe_globals())


def _main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m pmnet.checkpoint.safeload MODULE [ARGS...]", file=sys.stderr)
        return 2
    install()  # process-wide (inherited by forked workers); the context below names refused files
    sys.argv = list(argv)
    try:
        with restricted_torch_load(argv[0]):
            runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
    except UnsafeCheckpointError as err:
        print(err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
