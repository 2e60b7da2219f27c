"""The released checkpoint's ``config.json`` and tokenizer files, as plain data (docs/model.md section 7).

Torch-free on purpose: the streaming DeepSpeed converter (``pmnet.checkpoint.convert``) writes
these files without importing torch. ``pmnet.model.interchange`` builds on it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LOG = logging.getLogger("pmnet.model.interchange")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SPECIAL_TOKENS_NAME = "special_tokens_map.json"
TRANSFORMERS_VERSION = "4.57.6"
"The transformers version the released model was saved with (written as ``transformers_version``)."
MAX_POSITION_EMBEDDINGS = 40960
"The released config's max_position_embeddings (RoPE has no table: PMNet runs past it)."

# config.json key -> PMNetConfig field (the release's names are on the left)
FIELD_KEYS = {
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
# keys transformers' save_pretrained may leave out (equal to its own PretrainedConfig default)
_HF_DEFAULTS = {"tie_word_embeddings": True}
AUTO_MAP = {
    "AutoConfig": "configuration_pmnet.PMNetConfig",
    "AutoModel": "modeling_pmnet.PMNetModel",
    "AutoModelForCausalLM": "modeling_pmnet.PMNetForCausalLM",
    "AutoTokenizer": ["tokenization_pmnet.ByteTokenizer", None],
}
"auto_map of the released config.json: the released code's modules (``trust_remote_code``)."
RELEASED_CONFIG_KEYS = tuple(
    sorted(
        {  # a set: head_dim is both a field key and a released key
            *FIELD_KEYS,
            "architectures",
            "attention_bias",
            "auto_map",
            "dtype",
            "head_dim",
            "hidden_act",
            "layer_types",
            "max_position_embeddings",
            "max_window_layers",
            "model_type",
            "num_key_value_heads",
            "rope_scaling",
            "transformers_version",
            "use_cache",
            "use_sliding_window",
        }  # fmt: skip
    )
)
"Every key of the released model's config.json (transformers 4.57.6): what :func:`save_pretrained` writes."
# accepted and not needed to build the model: recorded by transformers, or fixed by the format
_IGNORED = {"architectures", "auto_map", "dtype", "torch_dtype", "transformers_version", "use_cache",
            "max_position_embeddings", "model_type", "_name_or_path", "pad_token_id"}  # fmt: skip


class InterchangeError(ValueError):
    """A checkpoint that does not match the interchange format or its own config (one-line message)."""


def released_config(fields: Mapping[str, Any], dtype: str = "float32", use_memory: bool = True) -> dict[str, Any]:
    """The released config.json content for the docs/model.md section 7 ``fields`` (config.json names).

    Values of the extra keys are the ones under which the released code builds PMNet:
    sliding-window attention on every layer, no attention bias, SwiGLU (silu), no rope scaling.
    """
    out: dict[str, Any] = {k: fields[k] for k in FIELD_KEYS}
    layers = int(fields["num_hidden_layers"])
    out.update(
        architectures=["PMNetForCausalLM"],
        attention_bias=False,
        auto_map=AUTO_MAP,
        dtype=dtype,
        hidden_act="silu",
        layer_types=["sliding_attention"] * layers,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        max_window_layers=0,
        model_type="PMNet",
        num_key_value_heads=fields["num_attention_heads"],
        rope_scaling=None,
        transformers_version=TRANSFORMERS_VERSION,
        use_cache=False,
        use_sliding_window=True,
    )
    if not use_memory:  # a no-memory ablation has no memory weights; the released code cannot run it
        out["use_memory"] = False
    return dict(sorted(out.items()))


def _refuse_unsupported(data: Mapping[str, Any], where: str) -> None:
    """One line naming the first key whose value the PMNet modules cannot honour."""
    layers = data["num_hidden_layers"]

    def bad(key: str, why: str) -> InterchangeError:
        return InterchangeError(f"{where}: {key}={json.dumps(data[key])} is not supported ({why})")

    if data.get("model_type", "PMNet") != "PMNet":
        raise bad("model_type", "not a PMNet checkpoint: model_type must be 'PMNet'")
    if data.get("use_sliding_window", True) is not True:
        raise bad("use_sliding_window", "PMNet attends through a sliding window on every layer")
    if data.get("max_window_layers", 0) not in (0, None):
        raise bad("max_window_layers", "must be 0: every layer uses the sliding window")
    types = data.get("layer_types")
    if types is not None and (not isinstance(types, list) or types != ["sliding_attention"] * layers):
        raise bad("layer_types", f"must be {layers} x 'sliding_attention'")
    if not isinstance(data["sliding_window"], int) or isinstance(data["sliding_window"], bool):
        raise bad("sliding_window", "an int window is required")
    if data.get("attention_bias", False) is not False:
        raise bad("attention_bias", "PMNet's attention projections have no bias")
    if data.get("hidden_act", "silu") != "silu":
        raise bad("hidden_act", "the MLP is SwiGLU: silu")
    if data.get("rope_scaling") is not None:
        raise bad("rope_scaling", "plain RoPE only")
    kv_heads = data.get("num_key_value_heads", data["num_attention_heads"])
    if kv_heads != data["num_attention_heads"]:
        raise bad("num_key_value_heads", f"!= num_attention_heads={data['num_attention_heads']}; grouped-query "
                  "attention is not part of PMNet")  # fmt: skip
    if data.get("pad_token_id", 0) not in (0, None):
        raise bad("pad_token_id", "PAD is byte 0")


def parse_config(data: Any, where: str = CONFIG_NAME) -> dict[str, Any]:
    """The PMNetConfig field values of config.json content; refuses (one line naming ``where`` and
    the key) what PMNet cannot honour. Unknown keys are ignored and logged once at debug level."""
    if not isinstance(data, dict):
        raise InterchangeError(f"{where}: expected a JSON object, got {type(data).__name__}")
    data = {**_HF_DEFAULTS, **data}
    missing = [k for k in FIELD_KEYS if k not in data]
    if missing:
        raise InterchangeError(f"{where}: missing key(s) {', '.join(missing)}")
    _refuse_unsupported(data, where)
    unknown = sorted(set(data) - set(FIELD_KEYS) - set(RELEASED_CONFIG_KEYS) - _IGNORED - {"use_memory"})
    if unknown:
        LOG.debug("%s: ignoring key(s) PMNet does not use: %s", where, ", ".join(unknown))
    fields = {field: data[key] for key, field in FIELD_KEYS.items()}
    if "use_memory" in data:
        fields["use_memory"] = bool(data["use_memory"])
    return fields


def tokenizer_files(pad_id: int = 0, bos_id: int = 254, eos_id: int = 255) -> dict[str, dict[str, Any]]:
    """The byte-tokenizer files a transformers user expects next to the weights (name -> JSON content).

    Ids are UTF-8 byte values; ``<pad>`` = 0, ``<bos>`` = 254, ``<eos>`` = 255 (docs/model.md section 1).
    ``pmnet.hf.ByteTokenizer`` reads them; ``auto_map`` names the released code's tokenizer.
    """
    special = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}
    ids = {"<pad>": pad_id, "<bos>": bos_id, "<eos>": eos_id}
    added = {
        str(i): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }  # fmt: skip
        for tok, i in sorted(ids.items(), key=lambda kv: kv[1])
    }
    tok_cfg = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "auto_map": {"AutoTokenizer": AUTO_MAP["AutoTokenizer"]},
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITION_EMBEDDINGS,
        "tokenizer_class": "ByteTokenizer",
        **special,
    }
    return {TOKENIZER_CONFIG_NAME: tok_cfg, SPECIAL_TOKENS_NAME: special}


def _write_json(path: Path, content: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)


def write_metadata(out_dir: str | os.PathLike[str], config: Mapping[str, Any]) -> list[str]:
    """Write the tokenizer files and ``config`` (config.json content) into ``out_dir``, each to a
    temporary name renamed into place; returns the names written (config.json last)."""
    out = Path(out_dir)
    files = tokenizer_files(0, config["bos_token_id"], config["eos_token_id"])
    for name, content in files.items():
        _write_json(out / name, content)
    _write_json(out / CONFIG_NAME, dict(config))
    return [*files, CONFIG_NAME]
