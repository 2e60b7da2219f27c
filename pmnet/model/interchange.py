"""The released checkpoint format (docs/model.md section 7): ``config.json`` + safetensors + tokenizer files.

Import (:func:`load_pretrained`, :func:`read_checkpoint`) takes a folder exactly as
transformers' ``save_pretrained`` writes the released model: every key of the released
``config.json`` is accepted, a tied ``lm_head.weight`` may be absent (transformers leaves it
out; it is tied back), weights may be fp32 / bf16 / fp16, in one ``model.safetensors`` or in
shards listed by ``model.safetensors.index.json``. Keys PMNet does not use are ignored (logged
once at debug level); a value PMNet cannot honour (full attention, attention bias, rope
scaling, ...) is refused. Every refusal is one line naming the file and the key.

Export (:func:`save_pretrained`) writes the released key set with values that make the
released code build the same model (``use_sliding_window: true``, ``max_window_layers: 0``,
one ``"sliding_attention"`` per layer), the interchange weights, and the byte-tokenizer
files; each file goes to a temporary name first and is renamed into place, so a crash never
leaves a half-written file under a final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pmnet import release_format as _release
from pmnet.model.config import PMNetConfig
from pmnet.model.modeling import PMNetForCausalLM
from pmnet.release_format import (
    AUTO_MAP,
    CONFIG_NAME,
    INDEX_NAME,
    MAX_POSITION_EMBEDDINGS,
    RELEASED_CONFIG_KEYS,
    SPECIAL_TOKENS_NAME,
    TOKENIZER_CONFIG_NAME,
    TRANSFORMERS_VERSION,
    WEIGHTS_NAME,
    InterchangeError,
    parse_config,
    released_config,
    tokenizer_files,
)

__all__ = [
    "AUTO_MAP", "CONFIG_NAME", "INDEX_NAME", "MAX_POSITION_EMBEDDINGS", "RELEASED_CONFIG_KEYS",
    "SPECIAL_TOKENS_NAME", "TOKENIZER_CONFIG_NAME", "TRANSFORMERS_VERSION", "WEIGHTS_NAME", "InterchangeError",
    "check_state_dict", "config_from_interchange", "config_to_interchange", "expected_shapes", "load_pretrained",
    "read_checkpoint", "read_config", "read_weights", "released_config", "save_pretrained", "tie_missing_head",
    "tokenizer_files", "write_metadata",
]  # fmt: skip

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def config_to_interchange(cfg: PMNetConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """config.json content for ``cfg``: the released key set (plus use_memory only when off)."""
    fields = {key: getattr(cfg, key) for key in _release.FIELD_KEYS}
    return released_config(fields, _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch.")), cfg.use_memory)


def config_from_interchange(data: dict[str, Any], *, where: str = CONFIG_NAME, **overrides: Any) -> PMNetConfig:
    """PMNetConfig from config.json content (the released key set or a subset of it).

    ``where`` names the file in error messages. Unknown keys are ignored (logged at debug
    level); run-time switches (attn_backend, memory_impl, ...) come from ``overrides``.
    """
    fields = {**parse_config(data, where), **overrides}
    try:
        cfg = PMNetConfig(**fields)
    except TypeError as err:  # an override that is not a field
        raise InterchangeError(f"{where}: {err}") from None
    errs = cfg.validate()
    if errs:
        raise InterchangeError(f"{where}: " + "; ".join(errs))
    return cfg


def read_config(path: str | os.PathLike[str], **overrides: Any) -> PMNetConfig:
    """PMNetConfig of an interchange directory's config.json (errors name the file)."""
    f = Path(path) / CONFIG_NAME
    if not f.is_file():
        raise InterchangeError(f"{Path(path)}: {CONFIG_NAME} not found")
    try:
        data = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InterchangeError(f"{f}: invalid JSON ({err})") from None
    return config_from_interchange(data, where=str(f), **overrides)


def expected_shapes(cfg: PMNetConfig) -> dict[str, tuple[int, ...]]:
    """Every interchange key of ``cfg`` and its shape (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        model = PMNetForCausalLM(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state_dict(sd: dict[str, Tensor], cfg: PMNetConfig, where: str = "checkpoint") -> None:
    """Raise InterchangeError (one line) unless ``sd`` has exactly the keys and shapes of ``cfg``."""
    want = expected_shapes(cfg)
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    if missing:
        why = " (tie_word_embeddings is false: the head is not the embedding)" if "lm_head.weight" in missing else ""
        raise InterchangeError(f"{where}: missing key(s) {_few(missing)} for the config{why}")
    if unexpected:
        raise InterchangeError(f"{where}: unexpected key(s) {_few(unexpected)} for the config")
    bad = [f"{k} {tuple(sd[k].shape)} != {want[k]}" for k in sorted(want) if tuple(sd[k].shape) != want[k]]
    if bad:
        raise InterchangeError(f"{where}: shape mismatch {_few(bad)}")
    if cfg.tie_word_embeddings and not torch.equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"]):
        raise InterchangeError(f"{where}: tie_word_embeddings is true but lm_head.weight != model.embed_tokens.weight")


def _few(items: list[str], n: int = 4) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def tie_missing_head(sd: dict[str, Tensor], cfg: PMNetConfig) -> dict[str, Tensor]:
    """``sd`` with ``lm_head.weight`` = the embedding when the head is tied and left out of the file
    (transformers' save_pretrained writes a tied tensor once; so may a consolidated ZeRO state dict)."""
    if cfg.tie_word_embeddings and "lm_head.weight" not in sd and "model.embed_tokens.weight" in sd:
        sd = {**sd, "lm_head.weight": sd["model.embed_tokens.weight"]}
    return sd


def write_metadata(
    out_dir: str | os.PathLike[str], cfg: PMNetConfig, dtype: torch.dtype | str = torch.float32
) -> list[str]:
    """Write config.json (released key set) and the tokenizer files into ``out_dir`` (atomically each)."""
    if isinstance(dtype, str):
        dtype = {v: k for k, v in _DTYPE_NAMES.items()}[dtype]
    return _release.write_metadata(out_dir, config_to_interchange(cfg, dtype))


def save_pretrained(
    model_or_state_dict: nn.Module | dict[str, Tensor],
    out_dir: str | os.PathLike[str],
    cfg: PMNetConfig,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (interchange keys, ``dtype``) + tokenizer files
    atomically; returns out_dir."""
    from safetensors.torch import save_file

    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else dict(model_or_state_dict)
    sd = tie_missing_head(sd, cfg)  # the format lists both keys (docs/model.md section 7)
    check_state_dict(sd, cfg, where="save_pretrained")
    if dtype not in _DTYPE_NAMES:
        raise InterchangeError(f"save_pretrained: dtype {dtype}: choose float32, bfloat16 or float16")
    # clone: tied tensors share storage, which safetensors refuses; contiguous CPU copies in dtype
    tensors = {k: v.detach().to(device="cpu", dtype=dtype).contiguous().clone() for k, v in sd.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp_w = out / f".{WEIGHTS_NAME}.tmp{os.getpid()}"
    save_file(tensors, str(tmp_w), metadata={"format": "pt"})
    os.replace(tmp_w, out / WEIGHTS_NAME)
    (out / INDEX_NAME).unlink(missing_ok=True)  # a stale shard index would shadow nothing but confuse readers
    write_metadata(out, cfg, dtype)
    return out


def _load_safetensors(f: Path) -> dict[str, Tensor]:
    """All tensors of one safetensors file; a truncated or corrupt file is an error naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(f))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InterchangeError(f"{f}: not a readable safetensors file (truncated or corrupt?): {first}") from None


def read_weights(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """All tensors of a checkpoint directory: ``model.safetensors`` or the shards of its index."""
    d = Path(path)
    if (d / WEIGHTS_NAME).is_file():
        return _load_safetensors(d / WEIGHTS_NAME)
    if not (d / INDEX_NAME).is_file():
        raise InterchangeError(f"{d}: neither {WEIGHTS_NAME} nor {INDEX_NAME} found")
    try:
        weight_map: dict[str, str] = json.loads((d / INDEX_NAME).read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
        raise InterchangeError(f"{d / INDEX_NAME}: not a safetensors index ({type(err).__name__}: {err})") from None
    out: dict[str, Tensor] = {}
    for shard in shards:
        if not (d / shard).is_file():
            raise InterchangeError(f"{d / INDEX_NAME}: shard {shard} is missing")
        part = _load_safetensors(d / shard)
        listed = {k for k, f in weight_map.items() if f == shard}
        if set(part) != listed:
            diff = sorted(set(part) ^ listed)
            raise InterchangeError(f"{d / shard}: keys disagree with the index ({_few(diff)})")
        out.update(part)
    return out


def read_checkpoint(path: str | os.PathLike[str], **cfg_overrides: Any) -> tuple[PMNetConfig, dict[str, Tensor]]:
    """Config and checked state dict (tied head filled in, dtype as stored) of an interchange directory."""
    d = Path(path)
    if not d.is_dir():
        raise InterchangeError(f"{d}: not a directory (expected {CONFIG_NAME} + safetensors)")
    cfg = read_config(d, **cfg_overrides)
    sd = tie_missing_head(read_weights(d), cfg)
    weights = d / WEIGHTS_NAME if (d / WEIGHTS_NAME).is_file() else d / INDEX_NAME
    check_state_dict(sd, cfg, where=f"{weights} (with {CONFIG_NAME})")
    return cfg, sd


def load_pretrained(
    path: str | os.PathLike[str],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **cfg_overrides: Any,
) -> tuple[PMNetForCausalLM, PMNetConfig]:
    """Model and config from an interchange directory; ``cfg_overrides`` change run-time switches
    (attn_backend, memory_impl, attention_dropout, ...). Weights become the model's fp32 (bf16 /
    fp16 files are upcast exactly) unless ``dtype`` is given. ``PMNetForCausalLM.from_pretrained``
    is the same without the config in the result."""
    cfg, sd = read_checkpoint(path, **cfg_overrides)
    model = PMNetForCausalLM(cfg)
    model.load_state_dict(sd, strict=True)
    model.tie_weights()
    model.to(device=device)
    if dtype is not None:
        model.to(dtype=dtype)
    return model, cfg


# ``PMNetForCausalLM.from_pretrained(dir)`` / ``model.save_pretrained(dir)``, as transformers users
# expect. They are attached here, where the file format lives, so that the imports of the model
# package run one way (this module imports modeling; modeling knows nothing of files).
def _from_pretrained(cls: type[PMNetForCausalLM], path: str | os.PathLike[str], **kwargs: Any) -> PMNetForCausalLM:
    """The model of an interchange directory (ours or one transformers saved the released model
    into); ``kwargs`` as :func:`load_pretrained` (device, dtype, run-time config switches)."""
    return load_pretrained(path, **kwargs)[0]


def _save_pretrained(
    self: PMNetForCausalLM, out_dir: str | os.PathLike[str], dtype: torch.dtype = torch.float32
) -> Path:
    """Write the interchange directory (config.json, model.safetensors, tokenizer files)."""
    return save_pretrained(self, out_dir, self.config, dtype=dtype)


setattr(PMNetForCausalLM, "from_pretrained", classmethod(_from_pretrained))  # noqa: B010
setattr(PMNetForCausalLM, "save_pretrained", _save_pretrained)  # noqa: B010
