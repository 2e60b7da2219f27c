"""The fast phasor memory equals the slow per-position reference: values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from pmnet.model.fused import phase_scores
from pmnet.model.memory import PhasorMemoryRead, PhasorMemoryWrite, read_fast, write_fast
from pmnet.model.reference import read_reference, segmented_prefix_sum, write_reference
from pmnet.model.scan import blocked_segmented_prefix_sum
from tests.model.model_helpers import build, random_ids, three_level_cfg

TWO_PI = 2 * math.pi


def _write_inputs(cfg, b: int = 2, t: int = 40, groups: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, t, cfg.hidden_size, generator=g, requires_grad=True)
    phi = (3 * torch.randn(b, t, cfg.num_memory, cfg.memory_size, generator=g)).requires_grad_()
    group = torch.randint(0, groups, (b, t), generator=g)
    group[0, :5] = 3  # a run of one group, and some groups left empty
    carried = (TWO_PI * torch.rand(b, groups, cfg.num_memory, cfg.memory_size, generator=g)).requires_grad_()
    return h, phi, group, carried


def _sharp_module(cls, cfg, seed: int = 0):
    torch.manual_seed(seed)
    mod = cls(cfg)
    with torch.no_grad():
        for p in mod.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5)  # large weights: scores far from uniform, phases wrap past 2 pi
            elif p is not getattr(mod.norm, "weight", None):
                p.normal_(0, 0.5)
    return mod


@pytest.mark.parametrize("scan", [segmented_prefix_sum, blocked_segmented_prefix_sum], ids=["fp64", "blocked"])
def test_segmented_prefix_sum_matches_loop(scan) -> None:
    g = torch.Generator().manual_seed(0)
    b, t, dim, groups = 3, 50, 5, 7
    delta = 4 * torch.randn(b, t, dim, generator=g)  # big steps: wraps around 2 pi often
    group = torch.randint(0, groups, (b, t), generator=g)
    carried = TWO_PI * torch.rand(b, groups, dim, generator=g)
    out, state = (
        scan(delta, group, carried, block=8) if scan is blocked_segmented_prefix_sum else scan(delta, group, carried)
    )
    ref = carried.double().clone()
    expect = torch.zeros(b, t, dim, dtype=torch.float64)
    for i in range(b):
        for j in range(t):
            ref[i, group[i, j]] = torch.remainder(ref[i, group[i, j]] + delta[i, j].double(), TWO_PI)
            expect[i, j] = ref[i, group[i, j]]
    assert (out.double() - expect).abs().max() < 1e-5
    assert (state.double() - ref).abs().max() < 1e-5
    assert out.min() >= 0 and out.max() < TWO_PI


def test_phase_scores_identity() -> None:
    g = torch.Generator().manual_seed(0)
    q = 4 * torch.randn(3, 2, 8, generator=g)
    key = 4 * torch.randn(3, 2, 5, 8, generator=g)
    direct = torch.cos(q[:, :, None, :] - key).sum(-1)
    assert (phase_scores(q, key) - direct).abs().max() < 1e-5


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cumsum", [True, False])
def test_write_fast_equals_reference(training: bool, cumsum: bool) -> None:
    cfg = three_level_cfg()
    mod = _sharp_module(PhasorMemoryWrite, cfg)
    h, phi, group, carried = _write_inputs(cfg)
    outs, grads = [], []
    for fn in (write_reference, write_fast):
        res = fn(mod, h, phi, group, carried, cumsum=cumsum, training=training)
        # a loss touching every output: S through sin (wrap-invariant), and the group states
        loss = (
            torch.sin(res.phi_increment) * torch.linspace(-1, 1, res.phi_increment.numel()).view_as(res.phi_increment)
        ).sum()
        loss = loss + torch.cos(res.group_state).sum()
        params = [h, phi, carried, *mod.parameters()]
        grads.append(torch.autograd.grad(loss, params, allow_unused=True))
        outs.append(res)
    ref, fast = outs
    assert torch.equal(ref.child_group, fast.child_group)
    assert (torch.sin(ref.phi_increment) - torch.sin(fast.phi_increment)).abs().max() < 1e-5
    assert (torch.cos(ref.group_state) - torch.cos(fast.group_state)).abs().max() < 1e-5
    assert (ref.probs - fast.probs).abs().max() < 1e-5
    assert len(torch.unique(fast.child_group % cfg.num_memory)) == cfg.num_memory  # every slot chosen somewhere
    for gr, gf in zip(*grads):
        if gr is None:
            assert gf is None or gf.abs().max() == 0
            continue
        assert (gr - gf).abs().max() <= 1e-4 * (1 + gr.abs().max()), "gradient mismatch"


def test_gradient_scale_is_one_over_sqrt_count() -> None:
    # delta_t depends only on h_t (and phi_t): the training-mode gradient w.r.t. h_t is the
    # eval-mode one divided by sqrt(c_t), c_t = positions of the sequence in t's group.
    cfg = three_level_cfg()
    mod = _sharp_module(PhasorMemoryWrite, cfg)
    h, phi, group, carried = _write_inputs(cfg, groups=4)
    w = torch.randn(2, 40, cfg.num_memory, cfg.memory_size)
    gh = {}
    for training in (True, False):
        res = write_fast(mod, h, phi, group, carried, cumsum=True, training=training)
        gh[training] = torch.autograd.grad((torch.sin(res.phi_increment) * w).sum(), h)[0]
    count = (group[:, :, None] == group[:, None, :]).sum(-1).float()  # [B, T]
    expect = gh[False] / count.sqrt()[..., None]
    assert (gh[True] - expect).abs().max() < 1e-5 * expect.abs().max()
    assert (count > 1).any()  # the scale is really exercised


def test_read_fast_equals_reference() -> None:
    cfg = three_level_cfg()
    mod = _sharp_module(PhasorMemoryRead, cfg)
    h, phi, _, _ = _write_inputs(cfg)
    outs = []
    for fn in (read_reference, read_fast):
        out = fn(mod, h, phi)
        outs.append((out, torch.autograd.grad((out * out).sum(), [h, phi, *mod.parameters()])))
    (o_r, g_r), (o_f, g_f) = outs
    assert (o_r - o_f).abs().max() < 1e-5
    for a, b in zip(g_r, g_f):
        assert (a - b).abs().max() <= 1e-4 * (1 + a.abs().max())


@pytest.mark.parametrize("training", [True, False])
def test_model_fast_equals_reference(training: bool) -> None:
    cfg = three_level_cfg()
    fast = build(cfg, sharpen=4.0).train(training)
    ref = build(cfg.__class__(**{**cfg.to_dict(), "memory_impl": "reference"}), sharpen=4.0).train(training)
    ids = random_ids(2, 48)
    out = {}
    for name, model in (("fast", fast), ("ref", ref)):
        logits, state = model(ids, collect_diagnostics=True)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        grads = torch.autograd.grad(loss, list(model.parameters()))
        out[name] = (logits, state, grads)
    assert (out["fast"][0] - out["ref"][0]).abs().max() < 1e-4
    # routing reaches every level: more than one group is used at each level below the root
    diag = out["fast"][1].diagnostics
    for k in range(cfg.num_levels):
        assert diag[f"memory/level{k}/groups_used"] > 1.0 / cfg.num_memory ** (k + 1)
    for a, b in zip(out["ref"][2], out["fast"][2]):
        assert (a - b).abs().max() <= 1e-4 * (1 + a.abs().max())
