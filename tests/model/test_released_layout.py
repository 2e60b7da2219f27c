"""Import of folders laid out as transformers saves the released model; one-line refusals naming file and key.

(The same layout written by transformers' own ``save_pretrained`` is tested in tests/hf/.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pmnet.model import InterchangeError, PMNetForCausalLM, config_to_interchange, load_pretrained, read_checkpoint
from tests.model.model_helpers import build, random_ids, tiny_cfg


def _released_folder(model: PMNetForCausalLM, d: Path, dtype: torch.dtype, shards: int = 1) -> None:
    """What transformers 4.57.6 writes for the released model: no lm_head.weight, the full config key set."""
    d.mkdir(parents=True)
    sd = {k: v.to(dtype).contiguous().clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    data = config_to_interchange(model.config, dtype)
    (d / "config.json").write_text(json.dumps(data, indent=2))
    keys = sorted(sd)
    if shards == 1:
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i::shards]
        save_file({k: sd[k] for k in part}, str(d / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in sd.values())
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )


@pytest.mark.parametrize(("dtype", "shards"), [(torch.float32, 1), (torch.bfloat16, 3), (torch.float16, 1)])
def test_released_layout_loads_with_the_same_logits(tmp_path: Path, dtype: torch.dtype, shards: int) -> None:
    model = build(tiny_cfg(), sharpen=3.0).eval()
    _released_folder(model, tmp_path / "rel", dtype, shards)
    loaded = PMNetForCausalLM.from_pretrained(tmp_path / "rel").eval()
    assert loaded.config == model.config
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # tied back
    ids = random_ids(2, 40)
    ref = model if dtype == torch.float32 else PMNetForCausalLM.from_pretrained(tmp_path / "rel")
    if dtype != torch.float32:  # the reference: the writer's weights rounded to the stored dtype
        ref.load_state_dict({k: v.to(dtype).float() for k, v in model.state_dict().items()})
        ref.eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids)[0], ref(ids)[0])


def test_export_import_export_is_byte_identical(tmp_path: Path) -> None:
    model = build(tiny_cfg(), sharpen=3.0)
    for dtype in (torch.float32, torch.bfloat16):
        a, b = tmp_path / f"a_{str(dtype)[6:]}", tmp_path / f"b_{str(dtype)[6:]}"
        model.save_pretrained(a, dtype=dtype)
        PMNetForCausalLM.from_pretrained(a, dtype=dtype).save_pretrained(b, dtype=dtype)
        for name in ("model.safetensors", "config.json", "tokenizer_config.json", "special_tokens_map.json"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # a released-layout folder (head left out) exports to our layout; that exports back identically
    _released_folder(model, tmp_path / "rel", torch.float32)
    PMNetForCausalLM.from_pretrained(tmp_path / "rel").save_pretrained(tmp_path / "c")
    assert (tmp_path / "c" / "model.safetensors").read_bytes() == (
        tmp_path / "a_float32" / "model.safetensors"
    ).read_bytes()


def _error(path: Path) -> str:
    with pytest.raises(InterchangeError) as info:
        load_pretrained(path)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


REFUSED = [
    ("use_sliding_window", False),
    ("max_window_layers", 2),
    ("layer_types", ["full_attention", "sliding_attention", "sliding_attention", "sliding_attention"]),
    ("attention_bias", True),
    ("hidden_act", "gelu"),
    ("rope_scaling", {"type": "linear", "factor": 2.0}),
    ("num_key_value_heads", 2),
    ("sliding_window", None),
    ("model_type", "qwen3"),
]


@pytest.mark.parametrize(("key", "value"), REFUSED, ids=[k for k, _ in REFUSED])
def test_refused_config_values_name_file_and_key(tmp_path: Path, key: str, value: object) -> None:
    model = build(tiny_cfg())
    model.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, key: value}))
    msg = _error(tmp_path)
    assert str(tmp_path / "config.json") in msg and re.search(rf"\b{key}=", msg), msg


def test_missing_and_broken_files_are_named(tmp_path: Path) -> None:
    model = build(tiny_cfg())
    model.save_pretrained(tmp_path / "ok")
    # no config.json
    (tmp_path / "nocfg").mkdir()
    (tmp_path / "nocfg" / "model.safetensors").write_bytes((tmp_path / "ok" / "model.safetensors").read_bytes())
    assert "config.json not found" in _error(tmp_path / "nocfg") and str(tmp_path / "nocfg") in _error(
        tmp_path / "nocfg"
    )
    # a config.json that is not JSON
    (tmp_path / "nocfg" / "config.json").write_text("{oops")
    assert str(tmp_path / "nocfg" / "config.json") in _error(tmp_path / "nocfg")
    # a truncated model.safetensors (an interrupted download)
    (tmp_path / "nocfg" / "config.json").write_bytes((tmp_path / "ok" / "config.json").read_bytes())
    blob = (tmp_path / "ok" / "model.safetensors").read_bytes()
    for cut in (len(blob) // 2, 5):
        (tmp_path / "nocfg" / "model.safetensors").write_bytes(blob[:cut])
        msg = _error(tmp_path / "nocfg")
        assert str(tmp_path / "nocfg" / "model.safetensors") in msg and "truncated or corrupt" in msg, msg
    # garbage header
    (tmp_path / "nocfg" / "model.safetensors").write_bytes(b"\xff" * 64)
    assert str(tmp_path / "nocfg" / "model.safetensors") in _error(tmp_path / "nocfg")
    # a corrupt shard index
    (tmp_path / "nocfg" / "model.safetensors").unlink()
    (tmp_path / "nocfg" / "model.safetensors.index.json").write_text('{"weight_map": [1, 2]}')
    assert str(tmp_path / "nocfg" / "model.safetensors.index.json") in _error(tmp_path / "nocfg")
    # an untied head that the file lacks
    data = json.loads((tmp_path / "ok" / "config.json").read_text())
    (tmp_path / "ok" / "config.json").write_text(json.dumps({**data, "tie_word_embeddings": False}))
    tensors = load_file(str(tmp_path / "ok" / "model.safetensors"))
    del tensors["lm_head.weight"]
    save_file(tensors, str(tmp_path / "ok" / "model.safetensors"))
    msg = _error(tmp_path / "ok")
    assert "lm_head.weight" in msg and "tie_word_embeddings is false" in msg
    assert str(tmp_path / "ok" / "model.safetensors") in msg


def test_unknown_keys_are_ignored_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = build(tiny_cfg())
    model.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data.pop("tie_word_embeddings")  # transformers leaves out a value equal to its own default (true)
    (tmp_path / "config.json").write_text(json.dumps({**data, "output_router_logits": False, "pad_token_id": 0}))
    with caplog.at_level("DEBUG", logger="pmnet.model.interchange"):
        cfg, sd = read_checkpoint(tmp_path)
    assert cfg.tie_word_embeddings and set(sd) == set(model.state_dict())
    lines = [r.getMessage() for r in caplog.records if "output_router_logits" in r.getMessage()]
    assert len(lines) == 1 and "pad_token_id" not in lines[0], lines
