"""The released checkpoint format (MODEL.md section 7): ``config.json`` + safetensors.

``save_pretrained`` writes exactly the interchange keys (weights) and config keys, each file
to a temporary name first and renamed into place, so a crash never leaves a half-written
file under the final name. ``load_pretrained`` reads a single ``model.safetensors`` or a
sharded set described by ``model.safetensors.index.json`` (the Hugging Face layout:
``{"metadata": {...}, "weight_map": {key: shard file}}``) and refuses, in one line, any
missing key, unexpected key, shape mismatch or config that disagrees with the weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pmnet.model.config import PMNetConfig
from pmnet.model.modeling import PMNetForCausalLM

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

# config.json key -> PMNetConfig field (the release's names are on the left)
_KEYS = {
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "head_dim": "head_dim",
    "memory_size": "memory_size",
    "num_memory": "num_memory",
    "num_memory_read_heads": "num_memory_read_heads",
    "memory_write_period": "memory_write_period",
    "sliding_window": "sliding_window",
    "rope_theta": "rope_theta",
    "rms_norm_eps": "rms_norm_eps",
    "vocab_size": "vocab_size",
    "tie_word_embeddings": "tie_word_embeddings",
    "attention_dropout": "attention_dropout",
    "initializer_range": "initializer_range",
    "memory_cumsum": "memory_cumsum",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
}
INTERCHANGE_CONFIG_KEYS = (*_KEYS, "num_key_value_heads", "model_type", "architectures")


class InterchangeError(ValueError):
    """A checkpoint that does not match the interchange format or its own config (one-line message)."""


def config_to_interchange(cfg: PMNetConfig) -> dict[str, Any]:
    """config.json content for ``cfg``: the MODEL.md section 7 keys (plus use_memory only when off)."""
    out: dict[str, Any] = {"architectures": ["PMNetForCausalLM"], "model_type": "PMNet"}
    for key, field in _KEYS.items():
        out[key] = getattr(cfg, field)
    out["num_key_value_heads"] = cfg.num_attention_heads
    if not cfg.use_memory:  # a no-memory ablation has no memory weights; the release cannot run it anyway
        out["use_memory"] = False
    return dict(sorted(out.items()))


def config_from_interchange(data: dict[str, Any], **overrides: Any) -> PMNetConfig:
    """PMNetConfig from config.json content; keys outside the format (HF extras) are ignored."""
    if data.get("model_type", "PMNet") != "PMNet":
        raise InterchangeError(f"config.json: model_type {data.get('model_type')!r} is not 'PMNet'")
    missing = [k for k in _KEYS if k not in data]
    if missing:
        raise InterchangeError(f"config.json: missing key(s) {', '.join(missing)}")
    kv_heads = data.get("num_key_value_heads", data["num_attention_heads"])
    if kv_heads != data["num_attention_heads"]:
        raise InterchangeError(
            f"config.json: num_key_value_heads={kv_heads} != num_attention_heads={data['num_attention_heads']} "
            "(grouped-query attention is not part of PMNet)"
        )
    fields = {field: data[key] for key, field in _KEYS.items()}
    if "use_memory" in data:
        fields["use_memory"] = bool(data["use_memory"])
    fields.update(overrides)
    cfg = PMNetConfig(**fields)
    errs = cfg.validate()
    if errs:
        raise InterchangeError("config.json: " + "; ".join(errs))
    return cfg


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
        raise InterchangeError(f"{where}: missing key(s) {_few(missing)} for the config")
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


def save_pretrained(
    model_or_state_dict: nn.Module | dict[str, Tensor],
    out_dir: str | os.PathLike[str],
    cfg: PMNetConfig,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (interchange keys, ``dtype``) atomically; returns out_dir."""
    from safetensors.torch import save_file

    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else dict(model_or_state_dict)
    if cfg.tie_word_embeddings and "lm_head.weight" not in sd and "model.embed_tokens.weight" in sd:
        # consolidated ZeRO state dicts may store a tied tensor once; the format lists both keys
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    check_state_dict(sd, cfg, where="save_pretrained")
    # clone: tied tensors share storage, which safetensors refuses; contiguous CPU copies in dtype
    tensors = {k: v.detach().to(device="cpu", dtype=dtype).contiguous().clone() for k, v in sd.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp_w = out / f".{WEIGHTS_NAME}.tmp{os.getpid()}"
    save_file(tensors, str(tmp_w), metadata={"format": "pt"})
    os.replace(tmp_w, out / WEIGHTS_NAME)
    (out / INDEX_NAME).unlink(missing_ok=True)  # a stale shard index would shadow nothing but confuse readers
    tmp_c = out / f".{CONFIG_NAME}.tmp{os.getpid()}"
    tmp_c.write_text(json.dumps(config_to_interchange(cfg), indent=2) + "\n")
    os.replace(tmp_c, out / CONFIG_NAME)
    return out


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    """One safetensors file (a header and raw bytes: never unpickled); a bad file is one line naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # SafetensorError (rust) and friends: not a user-facing traceback
        raise InterchangeError(f"{path}: not a readable safetensors file ({err})") from None


def read_weights(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """All tensors of a checkpoint directory: ``model.safetensors`` or the shards of its index."""
    d = Path(path)
    if (d / WEIGHTS_NAME).is_file():
        return _load_safetensors(d / WEIGHTS_NAME)
    if not (d / INDEX_NAME).is_file():
        raise InterchangeError(f"{d}: neither {WEIGHTS_NAME} nor {INDEX_NAME} found")
    try:
        weight_map: dict[str, str] = json.loads((d / INDEX_NAME).read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise InterchangeError(f"{d / INDEX_NAME}: not a safetensors index ({err})") from None
    out: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if not (d / shard).is_file():
            raise InterchangeError(f"{d / INDEX_NAME}: shard {shard} is missing")
        part = _load_safetensors(d / shard)
        listed = {k for k, f in weight_map.items() if f == shard}
        if set(part) != listed:
            diff = sorted(set(part) ^ listed)
            raise InterchangeError(f"{d / shard}: keys disagree with the index ({_few(diff)})")
        out.update(part)
    return out


def load_pretrained(
    path: str | os.PathLike[str],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **cfg_overrides: Any,
) -> tuple[PMNetForCausalLM, PMNetConfig]:
    """Model and config from an interchange directory; ``cfg_overrides`` change run-time switches
    (attn_backend, memory_impl, attention_dropout, ...). Weights stay in the model's fp32 unless
    ``dtype`` is given."""
    d = Path(path)
    if not (d / CONFIG_NAME).is_file():
        raise InterchangeError(f"{d}: {CONFIG_NAME} not found")
    try:
        data = json.loads((d / CONFIG_NAME).read_text())
    except json.JSONDecodeError as err:
        raise InterchangeError(f"{d / CONFIG_NAME}: invalid JSON ({err})") from None
    try:
        cfg = config_from_interchange(data, **cfg_overrides)
    except TypeError as err:  # an override that is not a field
        raise InterchangeError(f"load_pretrained: {err}") from None
    sd = read_weights(d)
    check_state_dict(sd, cfg, where=str(d))
    model = PMNetForCausalLM(cfg)
    model.load_state_dict(sd, strict=True)
    model.tie_weights()
    model.to(device=device)
    if dtype is not None:
        model.to(dtype=dtype)
    return model, cfg
