"""Loading a model for evaluation: from an interchange directory or a training run, plus ablated variants.

Evaluation tools take ``CKPT`` = an interchange directory (``config.json`` +
``model.safetensors``, docs/model.md section 7). A training run directory or one DeepSpeed
checkpoint directory is accepted too: it is converted into a temporary interchange
directory with the library converter ``pmnet.checkpoint.convert.convert_to_interchange``
(streaming, bounded memory), which also picks a run's newest valid checkpoint.
"""

from __future__ import annotations

import atexit
import dataclasses
import shutil
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch

from pmnet.checkpoint.convert import convert_to_interchange
from pmnet.model import InterchangeError, PMNetForCausalLM, load_pretrained
from pmnet.model.compiled import compile_fast_path

__all__ = ["EvalError", "load_model", "interchange_dir", "make_variant", "eval_device", "ABLATIONS"]

ABLATIONS = ("no-recurrence", "no-memory", "zero-root", "zero-leaves", "zero-all")
"""Names of the eval-time ablations (docs/model.md section 3): used by --compare and in labels."""

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class EvalError(RuntimeError):
    """A problem a user can fix (bad path, incompatible flags); tools print it in one line."""


# Models load_model compiled (--compile): make_variant compiles their variants too.
_COMPILED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def eval_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EvalError("--device cuda asked for but no CUDA GPU is visible")
    return torch.device(name)


def _is_interchange(path: Path) -> bool:
    return (path / "config.json").is_file() and (
        (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    )


def interchange_dir(path: str | Path) -> Path:
    """An interchange directory for ``path``; a run / DeepSpeed checkpoint is converted to a temp dir.

    A run directory resolves to its newest valid checkpoint (``pmnet.checkpoint.convert`` decides
    which, skipping incomplete or corrupt ones).
    """
    p = Path(path)
    if not p.exists():
        raise EvalError(f"checkpoint {p} does not exist")
    if not p.is_dir():
        raise EvalError(f"checkpoint {p} is not a directory (expected config.json + model.safetensors)")
    if _is_interchange(p):
        return p
    tmp = tempfile.mkdtemp(prefix="pmnet_eval_")
    atexit.register(shutil.rmtree, tmp, True)  # the converted copy lives only as long as this process
    out = Path(tmp) / "interchange"
    try:
        result = convert_to_interchange(p, out)
    except Exception as err:  # the converter's CheckpointError and friends: one line for the user
        raise EvalError(f"cannot use {p} as a checkpoint: {err}") from None
    print(f"note: converted {p} (step {result.step}) -> {result.out_dir}", file=sys.stderr)
    return out


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: str = "fp32",
    attn_backend: str | None = None,
    attn_window: str = "blocked",
    compile: bool = False,
) -> tuple[torch.nn.Module, Any]:
    """Load ``path`` for inference: ``(model in eval mode on device, PMNetConfig)``.

    ``compile`` (CUDA only) compiles the fast path (``pmnet.model.compiled``): tens of
    seconds once, then several times faster on long streams.

    ``attn_backend`` defaults to ``flex`` on GPU and ``sdpa`` on CPU (the interchange format
    does not store it); ``attn_window`` is the eager/sdpa window layout (blocked: O(T x W),
    dense: the reference mask); ``dtype`` is fp32 or bf16 (the model keeps its phase math in fp32).
    """
    if dtype not in _DTYPES:
        raise EvalError(f"--dtype {dtype!r}: choose fp32 or bf16")
    device = torch.device(device)
    if attn_backend is None:
        # flex (block-sparse sliding window) on GPU; sdpa computes the same on CPU, where flex cannot run
        attn_backend = "flex" if device.type == "cuda" else "sdpa"
    ckpt = interchange_dir(path)
    try:
        model, cfg = load_pretrained(ckpt, attn_backend=attn_backend, attn_window=attn_window)
    except (InterchangeError, ValueError, KeyError, OSError) as err:
        raise EvalError(f"cannot load {ckpt}: {err}") from None
    model = model.to(device=device, dtype=_DTYPES[dtype]).eval()
    if compile:
        if device.type != "cuda":
            raise EvalError("--compile needs a CUDA device")
        compile_fast_path(model)
        _COMPILED.add(model)  # ablated variants built from it get compiled too
    return model, cfg


def make_variant(model: torch.nn.Module, cfg: Any, **changes: Any) -> tuple[torch.nn.Module, Any]:
    """The same weights in a model built with ``changes`` to its config (e.g. ``use_memory=False``).

    Turning memory off drops the memory weights (reads and writes are skipped); any other
    missing or unexpected weight is an error, so a variant never runs half-initialised.
    """
    new_cfg = dataclasses.replace(cfg, **changes)
    param = next(model.parameters())
    variant = PMNetForCausalLM(new_cfg)  # random init is overwritten below; costs seconds at 119M
    result = variant.load_state_dict(model.state_dict(), strict=False)
    if result.missing_keys:
        raise EvalError(f"variant {changes} needs weights the checkpoint lacks: {result.missing_keys[:3]}")
    allowed = ("memory",) if not new_cfg.use_memory else ()
    bad = [k for k in result.unexpected_keys if not any(a in k for a in allowed)]
    if bad:
        raise EvalError(f"variant {changes} has no place for weights {bad[:3]}")
    variant = variant.to(device=param.device, dtype=param.dtype).eval()
    if model in _COMPILED:
        compile_fast_path(variant)
        _COMPILED.add(variant)
    return variant, new_cfg


def ablation_changes(name: str) -> tuple[dict[str, Any], str | None]:
    """(config changes, anchor levels to zero) of an ablation name from :data:`ABLATIONS`."""
    if name == "no-recurrence":
        return {"memory_cumsum": False}, None
    if name == "no-memory":
        return {"use_memory": False}, None
    if name.startswith("zero-") and name[5:] in ("root", "leaves", "all"):
        return {}, name[5:]
    raise EvalError(f"unknown ablation {name!r}; choose from {', '.join(ABLATIONS)}")
