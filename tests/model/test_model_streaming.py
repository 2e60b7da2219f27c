"""Streaming: chunks with carried state give the logits of one pass; the state stays constant in size."""

from __future__ import annotations

import pytest
import torch

from tests.model.model_helpers import build, random_ids, three_level_cfg, tiny_cfg, with_cfg


def _chunked(model, ids: torch.Tensor, n_chunks: int) -> torch.Tensor:
    state, outs = None, []
    for part in torch.tensor_split(ids, n_chunks, dim=1):
        logits, state = model(part, state)
        outs.append(logits)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex"])
@pytest.mark.parametrize("n_chunks", [1, 2, 7])
def test_chunks_equal_one_pass(backend: str, n_chunks: int) -> None:
    # T = 90 with W = 16: 7 chunks of ~13 bytes are shorter than W - 1, so the carried
    # window is partly filled at first and then spans two earlier chunks.
    model = build(tiny_cfg(attn_backend=backend), sharpen=4.0).eval()
    ids = random_ids(2, 90)
    with torch.no_grad():
        full, _ = model(ids)
        chunked = _chunked(model, ids, n_chunks)
    assert (chunked - full).abs().max().item() < 1e-4


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("cumsum", [True, False])
def test_chunks_equal_one_pass_three_levels(impl: str, cumsum: bool) -> None:
    model = build(three_level_cfg(memory_impl=impl, memory_cumsum=cumsum), sharpen=4.0).eval()
    ids = random_ids(2, 60)
    with torch.no_grad():
        full, _ = model(ids)
        for n in (2, 7):
            assert (_chunked(model, ids, n) - full).abs().max().item() < 1e-4


def test_backends_agree() -> None:
    model = build(tiny_cfg(attn_backend="eager"), sharpen=4.0).eval()
    ids = random_ids(2, 50)
    with torch.no_grad():
        ref, _ = model(ids)
        for backend in ("sdpa", "flex"):
            out, _ = with_cfg(model, attn_backend=backend).eval()(ids)
            assert (out - ref).abs().max().item() < 1e-5, backend


def test_gradients_flow_across_chunks_until_detached() -> None:
    model = build(tiny_cfg())
    ids = random_ids(1, 40)
    _, state = model(ids[:, :20])
    logits, _ = model(ids[:, 20:], state)
    grads = torch.autograd.grad(logits.sum(), state.group_phases[0], retain_graph=True)
    assert grads[0].abs().sum() > 0
    detached = state.detach()
    assert all(not t.requires_grad for t in [*detached.group_phases, *detached.keys, *detached.values])


def test_state_size_is_constant() -> None:
    model = build(tiny_cfg()).eval()
    ids = random_ids(2, 200)
    sizes = []
    state = None
    with torch.no_grad():
        for part in torch.split(ids, 40, dim=1):
            _, state = model(part, state)
            sizes.append(state.num_bytes())
    assert state.position == 200
    assert len(set(sizes)) == 1
    w = model.config.sliding_window
    assert state.keys[0].shape == (2, model.config.num_attention_heads, w - 1, model.config.head_dim)
    assert [tuple(p.shape) for p in state.group_phases] == [(2, 1, 4, 16), (2, 4, 4, 16)]
    assert all(p.dtype == torch.float32 and p.min() >= 0 and p.max() < 2 * torch.pi for p in state.group_phases)


def test_init_state_equals_none() -> None:
    model = build(tiny_cfg()).eval()
    ids = random_ids(2, 30)
    with torch.no_grad():
        a, _ = model(ids)
        b, _ = model(ids, model.init_state(2, "cpu"))
    assert torch.equal(a, b)


def test_state_batch_mismatch_is_refused() -> None:
    model = build(tiny_cfg()).eval()
    with torch.no_grad():
        _, state = model(random_ids(2, 10))
        with pytest.raises(ValueError, match="batch size"):
            model(random_ids(3, 10), state)


def test_long_stream_chunked_stays_close() -> None:
    # 8 KiB in chunks of 1000 with large (sharpened) increments that wrap 2 pi thousands of
    # times: the fp32 scan's rounding (about 1e-4 rad) is all that separates the two runs.
    model = build(tiny_cfg(), sharpen=4.0).eval()
    ids = random_ids(2, 8192)
    with torch.no_grad():
        full, s_full = model(ids)
        state, outs = None, []
        for part in torch.split(ids, 1000, dim=1):
            logits, state = model(part, state)
            outs.append(logits)
    diff = (torch.cat(outs, 1) - full).abs().max().item()
    print(f"\n[streaming 8 KiB, 1000-byte chunks] max |logit diff| {diff:.2e}")
    assert diff < 2e-3
    for a, b in zip(s_full.group_phases, state.group_phases):
        wrapped = torch.remainder(a - b + torch.pi, 2 * torch.pi) - torch.pi
        assert wrapped.abs().max() < 1e-2
