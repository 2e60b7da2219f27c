"""Interchange format (docs/model.md section 7): exact round trip, exact key set, one-line refusals."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pmnet.model import (
    InterchangeError,
    PMNetConfig,
    PMNetForCausalLM,
    config_from_interchange,
    config_to_interchange,
    load_pretrained,
    save_pretrained,
)
from tests.model.model_helpers import build, random_ids, tiny_cfg

# the released model's config.json keys (transformers 4.57.6), spelled out independently of the code
CONFIG_KEYS = {
    "architectures", "attention_bias", "attention_dropout", "auto_map", "bos_token_id", "dtype", "eos_token_id",
    "head_dim", "hidden_act", "hidden_size", "initializer_range", "intermediate_size", "layer_types",
    "max_position_embeddings", "max_window_layers", "memory_cumsum", "memory_size", "memory_write_period",
    "model_type", "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "num_memory",
    "num_memory_read_heads", "rms_norm_eps", "rope_scaling", "rope_theta", "sliding_window", "tie_word_embeddings",
    "transformers_version", "use_cache", "use_sliding_window", "vocab_size",
}  # fmt: skip


def _expected_keys(cfg: PMNetConfig) -> set[str]:
    """The key list of docs/model.md section 7, spelled out independently of the model code."""
    keys = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    keys |= {f"model.memory_embeddings.{k}" for k in range(cfg.num_levels)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        keys |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        keys |= {p + f"self_attn.{x}_proj.weight" for x in "qkvo"} | {p + f"self_attn.{x}_norm.weight" for x in "qk"}
        keys |= {p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
        keys |= {p + "memory_read_module.norm.weight"}
        keys |= {p + f"memory_read_module.proj_{x}.{w}" for x in ("q", "kv", "out") for w in ("weight", "bias")}
        if i % cfg.memory_write_period == 0:
            keys |= {p + "memory_write_module.norm.weight"}
            keys |= {
                p + f"memory_write_module.proj_{x}.{w}" for x in ("q", "k", "v", "out") for w in ("weight", "bias")
            }
    return keys


def test_119m_keys_and_parameter_count() -> None:
    cfg = PMNetConfig.from_preset("pmnet_119m")
    with torch.device("meta"):
        model = PMNetForCausalLM(cfg)
    assert set(model.state_dict()) == _expected_keys(cfg)
    assert sum(p.numel() for p in model.parameters()) == 118_970_368 == cfg.num_parameters()
    assert model.state_dict()["model.memory_embeddings.3"].shape == (64, 4, 512)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.device("meta"):
        small = PMNetForCausalLM(PMNetConfig.from_preset("pmnet_30m"))
    assert sum(p.numel() for p in small.parameters()) == 29_921_152


def test_config_keys_are_exactly_the_format() -> None:
    cfg = PMNetConfig.from_preset("pmnet_119m")
    data = config_to_interchange(cfg)
    assert set(data) == CONFIG_KEYS
    assert data["model_type"] == "PMNet" and data["architectures"] == ["PMNetForCausalLM"]
    # the values under which the released code builds the same model (sliding window on every layer)
    assert data["use_sliding_window"] is True and data["max_window_layers"] == 0
    assert data["layer_types"] == ["sliding_attention"] * 12 and data["sliding_window"] == 128
    assert data["attention_bias"] is False and data["hidden_act"] == "silu" and data["rope_scaling"] is None
    assert data["use_cache"] is False and data["max_position_embeddings"] == 40960
    assert data["num_key_value_heads"] == data["num_attention_heads"] == 12
    assert data["dtype"] == "float32" and data["transformers_version"] == "4.57.6"
    assert data["auto_map"]["AutoConfig"] == "configuration_pmnet.PMNetConfig"
    assert data["auto_map"]["AutoModel"] == "modeling_pmnet.PMNetModel"
    assert data["auto_map"]["AutoModelForCausalLM"] == "modeling_pmnet.PMNetForCausalLM"
    assert "tokenization_pmnet.ByteTokenizer" in data["auto_map"]["AutoTokenizer"]
    assert config_to_interchange(cfg, torch.bfloat16)["dtype"] == "bfloat16"
    back = config_from_interchange({**data, "torch_dtype": "float32", "some_future_key": 1})
    assert back == dataclasses.replace(cfg, attn_backend=back.attn_backend, memory_impl=back.memory_impl)


def test_round_trip_is_exact(tmp_path: Path) -> None:
    model = build(tiny_cfg(), sharpen=3.0).eval()
    save_pretrained(model, tmp_path / "ckpt", model.config)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json", "model.safetensors", "special_tokens_map.json", "tokenizer_config.json"
    ]  # fmt: skip
    loaded, cfg = load_pretrained(tmp_path / "ckpt")
    assert cfg == model.config
    assert load_pretrained(tmp_path / "ckpt", attn_backend="eager")[1].attn_backend == "eager"
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b), k
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = random_ids(2, 30)
    with torch.no_grad():
        assert torch.equal(model(ids)[0], loaded.eval()(ids)[0])


def test_bf16_save(tmp_path: Path) -> None:
    model = build(tiny_cfg())
    save_pretrained(model.state_dict(), tmp_path, model.config, dtype=torch.bfloat16)
    raw = load_file(str(tmp_path / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in raw.values())
    loaded, _ = load_pretrained(tmp_path)
    w = model.state_dict()["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(loaded.state_dict()["model.layers.0.mlp.up_proj.weight"], w.bfloat16().float())


def test_sharded_index_loads(tmp_path: Path) -> None:
    model = build(tiny_cfg())
    save_pretrained(model, tmp_path, model.config)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: tensors[k] for k in ks}, str(tmp_path / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(ks, name))
    index = {"metadata": {"total_size": sum(t.numel() * 4 for t in tensors.values())}, "weight_map": weight_map}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded, _ = load_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(InterchangeError, match="missing"):
        load_pretrained(tmp_path)


def _one_line_refusal(path: Path, match: str) -> None:
    with pytest.raises(InterchangeError) as info:
        load_pretrained(path)
    msg = str(info.value)
    assert "\n" not in msg and re.search(match, msg), msg
    assert isinstance(info.value, ValueError)


def _mutate_weights(path: Path, fn) -> None:
    tensors = load_file(str(path / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_refusals(tmp_path: Path) -> None:
    model = build(tiny_cfg())
    cases = {
        "missing key": lambda t: t.pop("model.layers.1.memory_read_module.proj_kv.bias"),
        "unexpected key": lambda t: t.__setitem__("model.layers.1.memory_write_module.norm.weight", torch.ones(64)),
        "shape mismatch": lambda t: t.__setitem__("model.memory_embeddings.1", torch.zeros(4, 4, 8)),
        "lm_head.weight !=": lambda t: t.__setitem__("lm_head.weight", torch.zeros(384, 64)),
    }
    for i, (match, fn) in enumerate(cases.items()):
        d = tmp_path / str(i)
        save_pretrained(model, d, model.config)
        _mutate_weights(d, fn)
        _one_line_refusal(d, match)
    # a config that disagrees with the weights
    d = tmp_path / "cfg"
    save_pretrained(model, d, model.config)
    for key, value, match in [("memory_size", 32, "shape mismatch"), ("memory_write_period", 1, "missing key")]:
        data = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**data, key: value}))
        _one_line_refusal(d, match)
    data = config_to_interchange(model.config)
    (d / "config.json").write_text(json.dumps({**data, "num_key_value_heads": 2}))
    _one_line_refusal(d, "num_key_value_heads")


def test_save_refuses_a_foreign_state_dict(tmp_path: Path) -> None:
    model = build(tiny_cfg())
    sd = dict(model.state_dict())
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(InterchangeError, match="unexpected"):
        save_pretrained(sd, tmp_path, model.config)
    assert not (tmp_path / "model.safetensors").exists()


def test_save_fills_the_tied_head(tmp_path: Path) -> None:
    model = build(tiny_cfg())
    sd = dict(model.state_dict())
    del sd["lm_head.weight"]
    save_pretrained(sd, tmp_path, model.config)
    assert torch.equal(
        load_file(str(tmp_path / "model.safetensors"))["lm_head.weight"], sd["model.embed_tokens.weight"]
    )
