"""GPU checks of the fast path: flex vs eager (fp32 and bf16), streaming, compiled layers.

Marked ``gpu``: skipped on machines without CUDA (tests/conftest.py).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pmnet.model import PMNetConfig, lm_loss
from tests.model.model_helpers import build, random_ids, three_level_cfg, tiny_cfg, with_cfg

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")


def _chunked(model, ids, n_chunks):
    state, outs = None, []
    for part in torch.tensor_split(ids, n_chunks, dim=1):
        logits, state = model(part, state)
        outs.append(logits)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("cfg_fn", [tiny_cfg, three_level_cfg])
def test_flex_equals_eager_fp32_values_and_grads(cfg_fn) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    eager = build(cfg_fn(attn_backend="eager"), sharpen=4.0).to(CUDA)
    flex = with_cfg(eager, attn_backend="flex").to(CUDA)
    ids = random_ids(2, 300).to(CUDA)  # several 128-blocks: the block mask really skips blocks
    out = []
    for model in (eager, flex):
        logits, _ = model(ids)
        loss = lm_loss(logits[:, :-1], ids[:, 1:])
        out.append((logits, torch.autograd.grad(loss, list(model.parameters()))))
    assert (out[0][0] - out[1][0]).abs().max() < 1e-4
    for a, b in zip(out[0][1], out[1][1]):
        assert (a - b).abs().max() <= 1e-4 * (1 + a.abs().max())


@pytest.mark.parametrize("n_chunks", [1, 2, 7])
def test_flex_streaming_on_gpu(n_chunks: int) -> None:
    model = build(tiny_cfg(attn_backend="flex"), sharpen=4.0).to(CUDA).eval()
    ids = random_ids(2, 300).to(CUDA)
    with torch.no_grad():
        full, _ = model(ids)
        assert (_chunked(model, ids, n_chunks) - full).abs().max() < 1e-4


def test_bf16_flex_close_to_fp32_eager_and_phases_fp32() -> None:
    ref = build(tiny_cfg(attn_backend="eager"), sharpen=2.0).to(CUDA).eval()
    fast = with_cfg(ref, attn_backend="flex").to(CUDA, torch.bfloat16).eval()
    ids = random_ids(2, 256).to(CUDA)
    with torch.no_grad():
        a, _ = ref(ids)
        b, state = fast(ids)
    assert b.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in state.group_phases)
    la = torch.log_softmax(a.float(), -1)
    lb = torch.log_softmax(b.float(), -1)
    assert (la.exp() * (la - lb)).sum(-1).mean() < 1e-2  # KL(fp32 || bf16) per byte, nats


def test_scan_exact_with_tf32_enabled() -> None:
    # the per-group scan has no matmul, so TF32 cannot round the phases. (The whole model is no
    # test of that: its projections do round under TF32, and with sharpened weights a rounding
    # difference flips the hard write routing, so fast and reference states then differ.)
    from pmnet.model.reference import segmented_prefix_sum
    from pmnet.model.scan import blocked_segmented_prefix_sum

    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        g = torch.Generator().manual_seed(0)
        delta = 3.0 * torch.randn(2, 1000, 8, generator=g)
        group = torch.randint(0, 5, (2, 1000), generator=g)
        carried = 6.28 * torch.rand(2, 5, 8, generator=g)
        out, state = blocked_segmented_prefix_sum(delta.to(CUDA), group.to(CUDA), carried.to(CUDA))
        ref_out, ref_state = segmented_prefix_sum(delta.double(), group, carried.double())
        assert (torch.sin(out.cpu().double()) - torch.sin(ref_out)).abs().max() < 1e-4
        assert (torch.sin(state.cpu().double()) - torch.sin(ref_state)).abs().max() < 1e-4
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False


@pytest.mark.parametrize("backend", ["flex", "sdpa"])
def test_compiled_decoder_layers_match_eager(backend: str) -> None:
    # torch.compile(fullgraph=True) of every decoder layer: no graph break, same numbers.
    # Values are compared in eval mode: compiled kernels round differently (~1e-7), and in a
    # near-tie of the write softmax the hard argmax may then pick another child group.
    cfg = dataclasses.replace(three_level_cfg(), attn_backend=backend)
    model = build(cfg, sharpen=4.0).to(CUDA).eval()
    ids = random_ids(2, 256).to(CUDA)
    with torch.no_grad():
        base, _ = model(ids)
        model.compile_layers()
        logits, _ = model(ids)
    assert (logits - base).abs().max() < 1e-3
    model.train()
    logits, _ = model(ids)
    lm_loss(logits[:, :-1], ids[:, 1:]).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_119m_training_step_bf16_flex() -> None:
    cfg = PMNetConfig.from_preset("pmnet_119m", attn_backend="flex", attention_dropout=0.0)
    model = build(cfg).to(CUDA, torch.bfloat16).train()
    model.set_activation_checkpointing(True)
    ids = random_ids(1, 1024).to(CUDA)
    _, state = model(ids[:, :512])
    logits, state = model(ids[:, 512:], state.detach())
    loss = lm_loss(logits[:, :-1], ids[:, 513:])
    loss.backward()
    assert torch.isfinite(loss) and 5.0 < loss.item() < 7.0  # about ln 384 at init
