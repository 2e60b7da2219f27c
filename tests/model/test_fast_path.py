"""Issue 8's fast path: the blocked fp32 scan, the compiled cores, fullgraph compilation.

Oracles: ``reference.segmented_prefix_sum`` (one fp64 cumsum: exact up to fp64 rounding)
for the scan, the eager fast path (itself checked against ``reference.py`` in
test_model_memory.py) for the compiled one, and the reference model for values and grads.
"""

from __future__ import annotations

import math

import pytest
import torch

from pmnet.model import fused, lm_loss
from pmnet.model.compiled import compile_fast_path
from pmnet.model.memory import PhasorMemoryRead, read_fast
from pmnet.model.reference import read_reference, segmented_prefix_sum
from pmnet.model.scan import blocked_segmented_prefix_sum, mod_2pi
from tests.model.model_helpers import build, random_ids, three_level_cfg, with_cfg

TWO_PI = 2 * math.pi


def _angle_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max distance on the circle between two angle tensors."""
    d = torch.remainder(a.double() - b.double() + math.pi, TWO_PI) - math.pi
    return d.abs().max().item()


def _scan_inputs(b: int, t: int, dim: int, groups: int, scale: float, seed: int = 0, same_sign: bool = False):
    g = torch.Generator().manual_seed(seed)
    delta = scale * torch.randn(b, t, dim, generator=g)
    if same_sign:
        delta = delta.abs()
    group = torch.randint(0, groups, (b, t), generator=g)
    carried = TWO_PI * torch.rand(b, groups, dim, generator=g)
    return delta, group, carried


def test_mod_2pi_range_and_value() -> None:
    x = torch.linspace(-5000.0, 5000.0, 200_001)
    r = mod_2pi(x)
    assert r.min() >= 0 and r.max() < TWO_PI
    assert _angle_err(r, torch.remainder(x.double(), TWO_PI)) < 2e-6
    # exact multiples of fp32(2 pi) land near 0 or near 2 pi, never outside
    k = torch.arange(-50, 50, dtype=torch.float32) * TWO_PI
    assert mod_2pi(k).min() >= 0 and mod_2pi(k).max() < TWO_PI


@pytest.mark.parametrize(
    ("b", "t", "dim", "groups", "block"),
    [(2, 50, 5, 7, 64), (2, 50, 5, 7, 8), (3, 200, 4, 5, 4), (1, 333, 3, 1, 16), (2, 64, 6, 64, 16)],
)
def test_blocked_scan_matches_fp64(b: int, t: int, dim: int, groups: int, block: int) -> None:
    # block=4 with t=200: three levels of recursion in the block-total prefix; t=333: a partial block
    delta, group, carried = _scan_inputs(b, t, dim, groups, scale=4.0)
    group[0, : min(t, 9)] = 0  # a run of one group crossing block boundaries
    out, state = blocked_segmented_prefix_sum(delta, group, carried, block=block)
    ref_out, ref_state = segmented_prefix_sum(delta, group, carried)
    assert _angle_err(out, ref_out) < 2e-5
    assert _angle_err(state, ref_state) < 2e-5
    assert out.min() >= 0 and out.max() < TWO_PI
    assert out.dtype == torch.float32 and state.dtype == torch.float32
    # groups no position reached keep the carried state exactly
    seen = torch.zeros(b, groups, dtype=torch.bool).scatter_(1, group, True)
    assert torch.equal(state[~seen], carried[~seen])


def test_blocked_scan_gradients_match_fp64() -> None:
    delta, group, carried = _scan_inputs(2, 150, 4, 6, scale=3.0)
    grads = []
    for fn in (segmented_prefix_sum, lambda d, g, c: blocked_segmented_prefix_sum(d, g, c, block=16)):
        d = delta.clone().requires_grad_()
        c = carried.clone().requires_grad_()
        out, state = fn(d, group, c)
        w = torch.linspace(-1, 1, out.numel()).view_as(out)
        loss = (torch.sin(out) * w).sum() + torch.cos(state).sum()
        grads.append(torch.autograd.grad(loss, [d, c]))
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize(("groups", "same_sign", "tol"), [(1, True, 5e-4), (64, True, 2e-4), (1, False, 2e-4)])
def test_blocked_scan_long_chunk_precision(groups: int, same_sign: bool, tol: float) -> None:
    # An evaluation chunk (30,720 bytes); same-sign increments of ~2.4 rad make partial sums
    # grow fastest (the worst case for fp32). The fp32 per-step reference loop has errors of
    # the same order (fp32 rounding at every step), so this bounds the fast path's drift.
    delta, group, carried = _scan_inputs(1, 30720, 8, groups, scale=3.0, same_sign=same_sign)
    out, state = blocked_segmented_prefix_sum(delta, group, carried)
    ref_out, ref_state = segmented_prefix_sum(delta, group, carried)
    assert _angle_err(out, ref_out) < tol
    assert _angle_err(state, ref_state) < tol


def _random_read(cfg):
    """A memory read with weights large enough that its phases matter (seeded)."""
    torch.manual_seed(0)
    mod = PhasorMemoryRead(cfg)
    with torch.no_grad():
        for p in mod.parameters():
            if p is not mod.norm.weight:
                p.normal_(0, 0.5)
    return mod


@pytest.mark.parametrize("memory_size", [8, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_read_value_half_once_per_head(dtype: torch.dtype, memory_size: int) -> None:
    # sum_n a_rn (Wv_r f_n + bv_r) == Wv_r (sum_n a_rn f_n) + bv_r: the fast read against the
    # per-slot reference, in fp32 (tight) and with bf16 weights (bf16 rounding only);
    # M = 32 > d / 2 takes the branch that folds Wv into Wo (fused.fold_value_out), M = 8 not
    cfg = three_level_cfg(memory_size=memory_size)
    assert fused.fold_value_out(cfg.hidden_size, memory_size) == (memory_size == 32)
    mod = _random_read(cfg)
    mod = mod.to(dtype)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 24, cfg.hidden_size, generator=g).to(dtype)
    phi = 3 * torch.randn(2, 24, cfg.num_memory, cfg.memory_size, generator=g)
    fast, ref = read_fast(mod, h, phi).float(), read_reference(mod, h, phi).float()
    tol = 1e-5 * (1 + ref.abs().max().item()) if dtype == torch.float32 else 0.05 * ref.abs().max().item()
    assert (fast - ref).abs().max() < tol


@pytest.mark.parametrize("with_anchor", [True, False])
def test_level_features_read_matches_reference(with_anchor: bool) -> None:
    # The fast path prepares a level's reads once (Phi + S and the slot features of
    # Phi + S + E_k[g], fused.level_core); a read from those features equals the reference read
    # of the angles, values and gradients with respect to Phi, S and the anchors (fp32)
    cfg = three_level_cfg(memory_size=16)
    mod = _random_read(cfg)
    g = torch.Generator().manual_seed(2)
    b, t, n, m = 2, 20, cfg.num_memory, cfg.memory_size
    h = torch.randn(b, t, cfg.hidden_size, generator=g)
    leaves = [3 * torch.randn(b, t, n, m, generator=g) for _ in range(3)]  # Phi, S, E_k[g]
    w = torch.randn(b, t, cfg.hidden_size, generator=g)
    results = []
    for impl in ("fast", "reference"):
        mod.impl = impl
        phase, inc, anchor = (x.clone().requires_grad_() for x in leaves)
        new_phase, read_in = mod.level_input(phase, inc, anchor if with_anchor else None)
        out = mod(h, prepared=read_in)
        loss = (out * w).sum() + torch.sin(new_phase).sum()
        grads = torch.autograd.grad(loss, [phase, inc, anchor], allow_unused=True)
        results.append((out.detach(), new_phase.detach(), grads))
    (o1, p1, g1), (o2, p2, g2) = results
    assert (o1 - o2).abs().max() < 1e-5 * (1 + o2.abs().max())
    assert torch.equal(p1, p2)
    for a, r in zip(g1, g2):
        if r is None:
            assert a is None or not with_anchor
            continue
        assert (a - r).abs().max() < 1e-4 * (1 + r.abs().max())


def _loss_and_grads(model, ids):
    logits, _ = model(ids)
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
    )
    return logits.detach().float(), torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)


@pytest.mark.slow
def test_compiled_cores_equal_eager_and_reference_cpu() -> None:
    # compile_memory_cores: read / write / scan through torch.compile(fullgraph=True) (inductor
    # on CPU); logits and gradients equal the eager fast path and the per-position reference
    cfg = three_level_cfg(attn_backend="sdpa", memory_size=32)  # d < 2M: the folded value/out projection
    model = build(cfg, sharpen=4.0).train()
    ref = with_cfg(model, memory_impl="reference")
    ids = random_ids(2, 48)
    ref_logits, ref_grads = _loss_and_grads(ref, ids)
    eager_logits, eager_grads = _loss_and_grads(model, ids)
    model.compile_memory_cores(True)
    assert model.memory_cores_compiled
    comp_logits, comp_grads = _loss_and_grads(model, ids)
    assert (comp_logits - eager_logits).abs().max() < 1e-5
    assert (comp_logits - ref_logits).abs().max() < 1e-4
    for r, e, c in zip(ref_grads, eager_grads, comp_grads):
        if r is None:
            continue
        assert (c - e).abs().max() <= 1e-5 * (1 + e.abs().max())
        assert (c - r).abs().max() <= 1e-4 * (1 + r.abs().max())


@pytest.mark.slow
def test_compiled_scan_training_many_blocks_cpu() -> None:
    # Regression: inductor (CPU) miscompiled ``arange(T) // block`` used as a gather index in
    # the training graph, so positions past the first block read garbage block prefixes. With
    # T = 150 (5 blocks of 32, a partial one) values and gradients must equal eager.
    delta, group, carried = _scan_inputs(2, 150, 6, 5, scale=3.0)
    fn = torch.compile(blocked_segmented_prefix_sum, fullgraph=True, dynamic=False)
    outs = []
    for f in (blocked_segmented_prefix_sum, fn):
        d = delta.clone().requires_grad_()
        out, state = f(d, group, carried)
        w = torch.linspace(-1, 1, out.numel()).view_as(out)
        (g,) = torch.autograd.grad((torch.sin(out) * w).sum() + torch.cos(state).sum(), [d])
        outs.append((out, state, g))
    (o1, s1, g1), (o2, s2, g2) = outs
    assert _angle_err(o1, o2) < 1e-5 and _angle_err(s1, s2) < 1e-5
    assert (g1 - g2).abs().max() < 1e-5 * (1 + g1.abs().max())


@pytest.mark.slow
def test_decoder_layer_compiles_fullgraph_cpu() -> None:
    # torch.compile(fullgraph=True) of whole decoder layers (a write layer and a read-only one,
    # memory cores inlined) raises on any graph break; the numbers equal eager.
    cfg = three_level_cfg(attn_backend="sdpa", num_hidden_layers=2, memory_write_period=2)
    model = build(cfg, sharpen=4.0).train()
    ids = random_ids(2, 32)
    eager_logits, eager_grads = _loss_and_grads(model, ids)
    compile_fast_path(model, "layers")
    comp_logits, comp_grads = _loss_and_grads(model, ids)
    assert (comp_logits - eager_logits).abs().max() < 1e-5
    for e, c in zip(eager_grads, comp_grads):
        if e is not None:
            assert (c - e).abs().max() <= 1e-5 * (1 + e.abs().max())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compile_fast_path_gpu_matches_reference(dtype: torch.dtype) -> None:
    # the training configuration of the GPU path (flex, compiled modules + cores) against the
    # per-position reference with eager attention in fp32: fp32 tight, bf16 within bf16 noise
    cfg = three_level_cfg(attn_backend="flex")
    model = build(cfg, sharpen=4.0).cuda().train()
    ref = with_cfg(model, memory_impl="reference", attn_backend="eager").cuda()
    ids = random_ids(2, 256).cuda()
    ref_logits, ref_grads = _loss_and_grads(ref, ids)
    fast = model.to(dtype)
    compile_fast_path(fast)
    logits, grads = _loss_and_grads(fast, ids)
    if dtype == torch.float32:
        assert (logits - ref_logits).abs().max() < 1e-4
        for r, c in zip(ref_grads, grads):
            if r is not None:
                assert (c.float() - r).abs().max() <= 1e-4 * (1 + r.abs().max())
    else:
        # not a max: with sharpened weights bf16 rounding flips the hard write routing at a few
        # positions (CPU eager bf16 shows the same), so compare the bulk and the loss
        # (CPU eager bf16 of this model: max |diff| 0.43, KL 2e-4 nats/byte, loss within 1e-4)
        la, lb = torch.log_softmax(ref_logits, -1), torch.log_softmax(logits.float(), -1)
        assert (la.exp() * (la - lb)).sum(-1).mean() < 1e-2  # KL(fp32 reference || bf16), nats/byte
        loss, ref_loss = (lm_loss(x.float()[:, :-1], ids[:, 1:]) for x in (logits, ref_logits))
        assert abs(loss - ref_loss) < 0.01 * ref_loss


def test_compile_layers_survives_many_layer_variants_cpu() -> None:
    # all decoder layers share one code object; write / read-only layers x levels x eval / train
    # x two models exceeded dynamo's default of 8 entries (H200, test_model_gpu, run 5)
    import dataclasses

    import torch._dynamo as dynamo

    name = "recompile_limit" if hasattr(dynamo.config, "recompile_limit") else "cache_size_limit"
    saved = getattr(dynamo.config, name)
    setattr(dynamo.config, name, 8)
    try:
        for backend in ("eager", "sdpa"):
            model = build(dataclasses.replace(three_level_cfg(), attn_backend=backend), sharpen=4.0).eval()
            ids = random_ids(2, 256)
            model.compile_layers(backend="eager")  # dynamo's guards and recompiles, no inductor
            with torch.no_grad():
                model(ids)
            model.train()
            logits, _ = model(ids)
            lm_loss(logits[:, :-1], ids[:, 1:]).backward()
    finally:
        torch._dynamo.reset()
        setattr(dynamo.config, name, saved)
