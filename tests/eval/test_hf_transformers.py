"""pmnet.hf: transformers' Auto classes load our exports and transformers-written folders; generate(); state.

Real transformers 4.57.6 code on both sides: ``save_pretrained`` of the registered model writes
the folder (no lm_head.weight, as the released model's), ``from_pretrained`` reads ours.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only: never the hub
transformers = pytest.importorskip("transformers")

import pmnet.hf  # noqa: E402  (registers model_type "PMNet")
from pmnet.eval.generate import generate as pmnet_generate  # noqa: E402
from pmnet.model import RELEASED_CONFIG_KEYS, InterchangeError, PMNetForCausalLM  # noqa: E402
from tests.model.model_helpers import build, random_ids, tiny_cfg  # noqa: E402

AutoConfig, AutoModelForCausalLM, AutoTokenizer = (
    transformers.AutoConfig,
    transformers.AutoModelForCausalLM,
    transformers.AutoTokenizer,
)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[PMNetForCausalLM, Path]:
    model = build(tiny_cfg(), sharpen=3.0).eval()
    out = tmp_path_factory.mktemp("hf") / "ours"
    model.save_pretrained(out)
    return model, out


def test_auto_classes_load_our_export_with_the_same_logits(export: tuple[PMNetForCausalLM, Path]) -> None:
    model, d = export
    assert type(AutoConfig.from_pretrained(d)) is pmnet.hf.PMNetHFConfig
    hf = AutoModelForCausalLM.from_pretrained(d).eval()
    assert type(hf) is pmnet.hf.PMNetHFForCausalLM
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()  # tied
    ids = random_ids(2, 40)
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, model(ids)[0])


def test_transformers_save_pretrained_writes_the_released_layout(
    export: tuple[PMNetForCausalLM, Path], tmp_path: Path
) -> None:
    """A folder written by transformers' own save_pretrained: released key set, no lm_head.weight;
    pmnet.model imports it with the logits of the model that wrote it."""
    model, d = export
    hf = AutoModelForCausalLM.from_pretrained(d).eval()
    hf.save_pretrained(tmp_path / "hf")
    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert "lm_head.weight" not in weights and "model.embed_tokens.weight" in weights
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert set(written) == set(RELEASED_CONFIG_KEYS), set(written) ^ set(RELEASED_CONFIG_KEYS)
    assert written["use_sliding_window"] is True and written["layer_types"] == ["sliding_attention"] * 4
    loaded = PMNetForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = random_ids(1, 50, seed=3)
    with torch.no_grad():
        assert torch.equal(loaded(ids)[0], hf(ids).logits)
    # bf16, sharded: transformers' own shard writer and index
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", max_shard_size="20KB")
    assert (tmp_path / "bf16" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "bf16").glob("model-*.safetensors"))) > 1
    from_bf16 = PMNetForCausalLM.from_pretrained(tmp_path / "bf16").eval()
    hf_bf16 = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(from_bf16(ids)[0], hf_bf16(ids).logits)


def test_tokenizer_and_greedy_generate_match_streaming_generate(export: tuple[PMNetForCausalLM, Path]) -> None:
    model, d = export
    tok = AutoTokenizer.from_pretrained(d)
    assert type(tok) is pmnet.hf.ByteTokenizer
    enc = tok("héllo", return_tensors="pt")
    assert enc["input_ids"].tolist() == [[254, *"héllo".encode()]]
    assert tok.decode(enc["input_ids"][0], skip_special_tokens=True) == "héllo"
    hf = AutoModelForCausalLM.from_pretrained(d).eval()
    prompt = "Once upon a time"
    out = hf.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=24, do_sample=False)
    new = out[0, len(prompt) + 1 :].tolist()
    ours = pmnet_generate(model, prompt.encode(), new_bytes=24, temperature=0)
    assert bytes(b for b in new if b != 255) == ours  # the same bytes (EOS ends both)
    assert all(b not in (0, 254) and b < 256 for b in new)


def test_state_carries_across_calls(export: tuple[PMNetForCausalLM, Path]) -> None:
    model, d = export
    hf = AutoModelForCausalLM.from_pretrained(d).eval()
    ids = random_ids(1, 70, seed=5)
    with torch.no_grad():
        full = model(ids)[0]
        cache = pmnet.hf.PMNetCache()
        parts = [hf(ids[:, a:b], cache_params=cache).logits for a, b in ((0, 23), (23, 24), (24, 70))]
        assert cache.position == 70
        state_bytes = cache.state.num_bytes()
        torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)
        # generate continues the cached stream; it consumed all returned bytes but the last one
        cache = pmnet.hf.PMNetCache()
        out = hf.generate(ids[:, :30], cache_params=cache, max_new_tokens=6, do_sample=False)
        assert cache.position == out.shape[1] - 1 and cache.state.num_bytes() == state_bytes
        more = torch.cat([out[:, -1:], ids[:, 30:40]], 1)
        out2 = hf.generate(more, cache_params=cache, max_new_tokens=4, do_sample=False)
        one_pass = hf.generate(torch.cat([out, ids[:, 30:40]], 1), max_new_tokens=4, do_sample=False)
        assert torch.equal(out2[:, more.shape[1] :], one_pass[:, out.shape[1] + 10 :])
    with pytest.raises(ValueError, match="attention_mask"):
        hf(ids, attention_mask=torch.zeros_like(ids))


def test_unusable_config_is_refused_naming_the_key(export: tuple[PMNetForCausalLM, Path], tmp_path: Path) -> None:
    _, d = export
    for f in d.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "use_sliding_window": False}))
    with pytest.raises(InterchangeError, match="use_sliding_window=false") as info:
        AutoModelForCausalLM.from_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value)
