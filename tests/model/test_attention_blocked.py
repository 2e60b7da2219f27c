"""The blocked sliding-window layout (queries in blocks of W, O(T x W)) against the dense
``[T, n_past + T]`` mask it replaces: same values and gradients in fp32, with and without
carried keys, at lengths that are not multiples of W; and its attention dropout."""

from __future__ import annotations

import statistics

import pytest
import torch

from pmnet.model.attention import (
    AttentionMask,
    blocked_is_cheaper,
    blocked_window_mask,
    build_attention_mask,
    eager_attention,
    sdpa_attention,
    window_mask,
)
from tests.model.model_helpers import build, random_ids, three_level_cfg, tiny_cfg, with_cfg

CPU = torch.device("cpu")
FNS = {"eager": eager_attention, "sdpa": sdpa_attention}


def _masks(t: int, n_past: int, w: int, backend: str) -> tuple[AttentionMask, AttentionMask]:
    dense = AttentionMask(backend, n_past, dense=window_mask(t, n_past, w, CPU))
    blocked = AttentionMask(backend, n_past, blocked=blocked_window_mask(t, n_past, w, CPU))
    return dense, blocked


def _qkv(t: int, n_past: int, seed: int = 0, b: int = 2, h: int = 3, hd: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(b, h, t, hd), (b, h, n_past + t, hd), (b, h, n_past + t, hd)]
    return [torch.randn(s, generator=g).requires_grad_() for s in shapes]


def _close(got: torch.Tensor, want: torch.Tensor, what: str, rel: float = 1e-6) -> None:
    # fp32 within rel of the tensor's own scale (gradients reach a few units; 1e-6 is ~4 ulp there)
    tol = rel * max(1.0, want.abs().max().item())
    err = (got - want).abs().max().item()
    assert err <= tol, f"{what}: max |blocked - dense| = {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("w", [4, 8])
def test_blocked_equals_dense_values_and_gradients(backend: str, w: int) -> None:
    fn = FNS[backend]
    for t in (1, 3, 5, 17, 37, 53):  # odd lengths: the last block is partly padding
        for n_past in (0, 1, w - 1, w, w + 3):  # no carry, a partial window, the state's W - 1, more
            q, k, v = _qkv(t, n_past, seed=t * 31 + n_past)
            dense, blocked = _masks(t, n_past, w, backend)
            want = fn(q, k, v, dense, 0.0)
            got = fn(q, k, v, blocked, 0.0)
            assert got.shape == want.shape
            grad_out = torch.randn(want.shape, generator=torch.Generator().manual_seed(t + 7 * n_past))
            want_g = torch.autograd.grad(want, (q, k, v), grad_out)
            got_g = torch.autograd.grad(got, (q, k, v), grad_out)
            where = f"{backend} W={w} T={t} n_past={n_past}"
            _close(got, want, f"values {where}")
            for name, a, b in zip("qkv", got_g, want_g, strict=True):
                # gradients sum over a different number of keys in the two layouts: over 30 random
                # output gradients the worst difference was 1.05e-6 of the scale (sdpa, W=8), so 2e-6
                _close(a, b, f"grad {name} {where}", rel=2e-6)


def test_blocked_mask_sees_exactly_the_window() -> None:
    # every (query, key) pair the dense mask allows appears once in the blocked layout, and no other
    for t, n_past, w in [(1, 0, 4), (9, 3, 4), (16, 4, 4), (23, 7, 8)]:
        dense = window_mask(t, n_past, w, CPU)
        blocked = blocked_window_mask(t, n_past, w, CPU)  # [nb, W, 2W]
        seen = torch.zeros_like(dense, dtype=torch.int64)
        for b, qi, kj in blocked.nonzero().tolist():
            query = b * w + qi
            key = (b - 1) * w + kj + n_past  # index into the [n_past + T] keys
            if query < t:
                assert 0 <= key < n_past + t
                seen[query, key] += 1
        assert torch.equal(seen, dense.long())


def test_layout_choice() -> None:
    cfg = tiny_cfg()  # W = 16, blocked by default
    w = cfg.sliding_window
    assert cfg.attn_window == "blocked"
    assert build_attention_mask(cfg, 1, w - 1, CPU, training=False).dense is not None  # a generation step
    assert build_attention_mask(cfg, 30720, w - 1, CPU, training=False).blocked is not None
    assert not blocked_is_cheaper(w, w - 1, w) and blocked_is_cheaper(3 * w, w - 1, w)
    import dataclasses

    dense_cfg = dataclasses.replace(cfg, attn_window="dense")
    assert build_attention_mask(dense_cfg, 3000, w - 1, CPU, training=False).blocked is None
    assert dataclasses.replace(cfg, attn_window="sparse").validate()


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_model_blocked_equals_dense_streaming_with_gradients(backend: str) -> None:
    # the whole model over three chunks (carried keys between them): logits and weight gradients
    dense = build(three_level_cfg(attn_backend=backend, attn_window="dense"), sharpen=4.0)
    blocked = with_cfg(dense, attn_window="blocked")
    ids = random_ids(2, 101)
    outs = []
    for model in (dense, blocked):
        state, logits = None, []
        for part in torch.tensor_split(ids, [45, 78], dim=1):  # 45, 33, 23 bytes: > 2W, odd
            out, state = model(part, state)
            logits.append(out)
        full = torch.cat(logits, dim=1)
        full.square().mean().backward()
        outs.append((full, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (want, want_g), (got, got_g) = outs
    _close(got, want, "logits")
    assert want_g.keys() == got_g.keys()
    for name in want_g:
        _close(got_g[name], want_g[name], f"grad {name}")


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_blocked_dropout_is_seeded_and_unbiased(backend: str) -> None:
    fn = FNS[backend]
    t, n_past, w, p = 21, 5, 8, 0.25
    q, k, v = (x.detach() for x in _qkv(t, n_past, seed=3, b=1, h=2, hd=8))
    dense, blocked = _masks(t, n_past, w, backend)
    clean = fn(q, k, v, dense, 0.0)  # the dropout-free reference

    torch.manual_seed(11)
    first = fn(q, k, v, blocked, p)
    torch.manual_seed(11)
    again = fn(q, k, v, blocked, p)
    assert torch.equal(first, again)  # the same seed gives the same result
    assert (first - clean).abs().max() > 1e-3  # dropout really acts

    n = 400
    samples = []
    for seed in range(n):
        torch.manual_seed(seed)
        samples.append(fn(q, k, v, blocked, p))
    stack = torch.stack(samples).double()  # [n, B, H, T, hd]
    mean, std = stack.mean(0), stack.std(0)
    # z-score of the mean of n samples; the bound is a normal quantile with a Bonferroni
    # correction over all elements at a 1e-6 false-alarm rate
    z = (mean - clean.double()).abs() / (std / n**0.5).clamp_min(1e-12)
    bound = statistics.NormalDist().inv_cdf(1 - 1e-6 / (2 * z.numel()))
    assert z.max().item() < bound, f"max z {z.max().item():.2f} >= {bound:.2f}"


def test_flex_with_dropout_falls_back_to_blocked_sdpa() -> None:
    cfg = tiny_cfg(attn_backend="flex", attention_dropout=0.1)
    mask = build_attention_mask(cfg, 512, 0, CPU, training=True)
    assert mask.backend == "sdpa" and mask.blocked is not None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocked_sdpa_on_cuda(dtype: torch.dtype) -> None:
    # the CUDA kernels (memory-efficient attention with a broadcast mask, with and without
    # dropout), eager and compiled as the training path compiles PMNetAttention
    cuda = torch.device("cuda")
    t, n_past, w = 301, 127, 128  # the 119M window, the state's W - 1 carried keys, a partial last block
    q, k, v = (x.detach().to(cuda, dtype).requires_grad_() for x in _qkv(t, n_past, b=2, h=4, hd=64))
    dense = AttentionMask("sdpa", n_past, dense=window_mask(t, n_past, w, cuda))
    blocked = AttentionMask("sdpa", n_past, blocked=blocked_window_mask(t, n_past, w, cuda))
    want = sdpa_attention(q, k, v, dense, 0.0)
    got = sdpa_attention(q, k, v, blocked, 0.0)
    grad_out = torch.randn_like(want)
    rel = 1e-5 if dtype == torch.float32 else 2e-2
    for a, b in zip(
        (got, *torch.autograd.grad(got, (q, k, v), grad_out)),
        (want, *torch.autograd.grad(want, (q, k, v), grad_out)),
        strict=True,
    ):
        assert (a - b).abs().max().item() <= rel * max(1.0, b.abs().max().item())
    compiled = torch.compile(sdpa_attention, fullgraph=True)
    outs = []
    for fn in (sdpa_attention, sdpa_attention, compiled, compiled):
        torch.manual_seed(5)
        out = fn(q, k, v, blocked, 0.1)
        out.float().square().sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(q.grad).all()
        q.grad = None
        outs.append(out.detach())
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[2], outs[3])  # seeded
    assert (outs[0].float() - want.detach().float()).abs().max() > 1e-3  # dropout acts
