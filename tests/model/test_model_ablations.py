"""Ablations: no memory is a pure sliding-window transformer; anchor zeroing acts only where it should."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from pmnet.model import PMNetForCausalLM, resolve_anchor_levels
from tests.model.model_helpers import build, random_ids, three_level_cfg, tiny_cfg


def _plain_swa_logits(sd: dict[str, torch.Tensor], cfg, ids: torch.Tensor) -> torch.Tensor:
    """A sliding-window Qwen3-style decoder written straight from docs/model.md section 2 (no PMNet code)."""

    def rms(x, w):
        return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.rms_norm_eps))

    t = ids.shape[1]
    hd, heads = cfg.head_dim, cfg.num_attention_heads
    pos = torch.arange(t, dtype=torch.float64)
    inv = cfg.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.cat([pos[:, None] * inv, pos[:, None] * inv], -1).float()  # [T, hd]

    def rope(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * ang.cos() + torch.cat([-x2, x1], -1) * ang.sin()

    allowed = torch.tensor([[0 <= i - j < cfg.sliding_window for j in range(t)] for i in range(t)])
    h = sd["model.embed_tokens.weight"][ids]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        x = rms(h, sd[p + "input_layernorm.weight"])
        q = (x @ sd[p + "self_attn.q_proj.weight"].T).view(1, t, heads, hd)
        k = (x @ sd[p + "self_attn.k_proj.weight"].T).view(1, t, heads, hd)
        v = (x @ sd[p + "self_attn.v_proj.weight"].T).view(1, t, heads, hd)
        q = rope(rms(q, sd[p + "self_attn.q_norm.weight"]).transpose(1, 2))  # [1, H, T, hd]
        k = rope(rms(k, sd[p + "self_attn.k_norm.weight"]).transpose(1, 2))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v.transpose(1, 2)
        h = h + att.transpose(1, 2).reshape(1, t, -1) @ sd[p + "self_attn.o_proj.weight"].T
        x = rms(h, sd[p + "post_attention_layernorm.weight"])
        gate, up = x @ sd[p + "mlp.gate_proj.weight"].T, x @ sd[p + "mlp.up_proj.weight"].T
        h = h + (F.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
    return rms(h, sd["model.norm.weight"]) @ sd["lm_head.weight"].T


def test_no_memory_is_a_plain_sliding_window_transformer() -> None:
    cfg = tiny_cfg(use_memory=False, attn_backend="sdpa")
    model = build(cfg).eval()
    assert not any("memory" in k for k in model.state_dict())
    ids = random_ids(1, 40)  # longer than W = 16
    with torch.no_grad():
        ours, state = model(ids)
        plain = _plain_swa_logits(model.state_dict(), cfg, ids)
    assert (ours - plain).abs().max() < 1e-4
    assert state.group_phases == []


def test_silent_memory_equals_no_memory_model() -> None:
    # same backbone weights; memory reads that output zero leave exactly the no-memory model
    mem = build(tiny_cfg(), sharpen=4.0).eval()
    with torch.no_grad():
        for layer in mem.model.layers:
            layer.memory_read_module.proj_out.weight.zero_()
            layer.memory_read_module.proj_out.bias.zero_()
    plain = PMNetForCausalLM(dataclasses.replace(mem.config, use_memory=False)).eval()
    missing, unexpected = plain.load_state_dict(mem.state_dict(), strict=False)
    assert not missing and all("memory" in k for k in unexpected)
    ids = random_ids(2, 50)
    with torch.no_grad():
        assert torch.equal(mem(ids)[0], plain(ids)[0])


def test_resolve_anchor_levels() -> None:
    cfg = three_level_cfg()
    assert resolve_anchor_levels(cfg, "root") == {0}
    assert resolve_anchor_levels(cfg, "leaves") == {2}
    assert resolve_anchor_levels(cfg, "all") == {0, 1, 2}
    assert resolve_anchor_levels(cfg, ["root", 1]) == {0, 1}
    assert resolve_anchor_levels(cfg, ()) == frozenset()
    with pytest.raises(ValueError):
        resolve_anchor_levels(cfg, [3])
    with pytest.raises(ValueError):
        resolve_anchor_levels(cfg, "trunk")


def _layer_outputs(model, ids, zero):
    outs = []
    hooks = [layer.register_forward_hook(lambda m, i, o: outs.append(o[0])) for layer in model.model.layers]
    try:
        with torch.no_grad():
            logits, state = model(ids, zero_anchor_levels=zero)
    finally:
        for hk in hooks:
            hk.remove()
    return outs, logits, state


@pytest.mark.parametrize("level", [0, 1, 2])
def test_anchor_zeroing_acts_from_its_level_on(level: int) -> None:
    # Anchors E_k enter only in layers kP .. kP+P-1 (and, through Phi and routing, later ones):
    # zeroing them leaves every layer before kP and every level < k's memory state untouched,
    # and changes layer kP, the memory of levels >= k and the logits.
    cfg = three_level_cfg()
    model = build(cfg, sharpen=4.0).eval()
    ids = random_ids(2, 40)
    base_h, base_logits, base_state = _layer_outputs(model, ids, ())
    h, logits, state = _layer_outputs(model, ids, [level])
    first = level * cfg.memory_write_period
    for i in range(first):
        assert torch.equal(h[i], base_h[i]), f"layer {i} changed"
    assert not torch.equal(h[first], base_h[first])
    for k in range(cfg.num_levels):
        same = torch.equal(state.group_phases[k], base_state.group_phases[k])
        assert same == (k < level), f"level {k} state"
    assert not torch.equal(logits, base_logits)


def test_zeroing_equals_zero_anchor_weights() -> None:
    model = build(three_level_cfg(), sharpen=4.0).eval()
    ids = random_ids(2, 30)
    with torch.no_grad():
        a, _ = model(ids, zero_anchor_levels="all")
        for emb in model.model.memory_embeddings:
            emb.zero_()
        b, _ = model(ids)
    assert torch.equal(a, b)


def test_no_recurrence_uses_only_the_own_increment() -> None:
    # memory_cumsum = false: S_t = delta_t, so a byte's memory ignores earlier bytes; with
    # attention reduced to the byte itself (W = 1) logits depend on that byte alone
    cfg = three_level_cfg(memory_cumsum=False, sliding_window=1)
    model = build(cfg, sharpen=4.0).eval()
    ids = random_ids(1, 30)
    shuffled = ids[:, torch.randperm(30)]
    with torch.no_grad():
        a, _ = model(ids)
        b, _ = model(shuffled)
        rec, _ = build(dataclasses.replace(cfg, memory_cumsum=True), sharpen=4.0).eval()(shuffled)
    order = {int(v): i for i, v in enumerate(shuffled[0])}
    for i, v in enumerate(ids[0]):
        assert torch.allclose(a[0, i], b[0, order[int(v)]], atol=1e-5)
    assert not torch.allclose(rec, b, atol=1e-3)  # with recurrence, earlier bytes matter
