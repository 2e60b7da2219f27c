"""The public API other packages code against: diagnostics, loss, checkpointing, dtypes, imports."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

import pmnet.model as pm
from pmnet.model import PMNetForCausalLM, PMNetState, lm_loss
from pmnet.model.modeling import LayerMemory
from tests.model.model_helpers import build, random_ids, three_level_cfg, tiny_cfg

MODEL_DIR = Path(pm.__file__).parent


def test_public_names_resolve_lazily_and_match_all() -> None:
    """Every name of ``__all__`` has a home module in the lazy table and is that module's object."""
    import importlib

    assert sorted(pm.__all__) == sorted(pm._SOURCE)
    for name in pm.__all__:
        home = importlib.import_module(f"pmnet.model.{pm._SOURCE[name]}")
        assert getattr(pm, name) is getattr(home, name), name
    with pytest.raises(AttributeError):
        pm.no_such_name  # noqa: B018


def test_no_deepspeed_or_distributed_imports() -> None:
    # every import statement (AST, so docstrings that name them do not count) and any dynamic import
    offenders = []
    for p in MODEL_DIR.glob("*.py"):
        text = p.read_text()
        for node in ast.walk(ast.parse(text)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            offenders += [f"{p.name}: {n}" for n in names if n.startswith(("deepspeed", "torch.distributed"))]
            if isinstance(node, ast.Attribute) and node.attr == "distributed":
                offenders.append(f"{p.name}: .distributed")
        if "import_module" in text or "__import__" in text:
            offenders.append(f"{p.name}: dynamic import")
    assert offenders == []


def test_files_are_short_and_documented() -> None:
    for p in MODEL_DIR.glob("*.py"):
        text = p.read_text()
        assert len(text.splitlines()) < 600, p.name
        assert text.lstrip().startswith('"""'), f"{p.name} has no module docstring"


def test_public_names() -> None:
    for name in ("PMNetConfig", "PMNetForCausalLM", "PMNetState", "save_pretrained", "load_pretrained", "lm_loss"):
        assert hasattr(pm, name)


def test_diagnostics() -> None:
    cfg = three_level_cfg()
    model = build(cfg, sharpen=4.0)
    logits, state = model(random_ids(2, 40), collect_diagnostics=True)
    diag = state.diagnostics
    assert set(diag) == {
        f"memory/level{k}/{n}" for k in range(3) for n in ("routing_entropy", "groups_used", "phase_increment")
    }
    for key, value in diag.items():
        assert value.dim() == 0 and not value.requires_grad, key
    for k in range(3):
        assert 0 <= diag[f"memory/level{k}/routing_entropy"] <= math.log(cfg.num_memory) + 1e-5
        assert 0 < diag[f"memory/level{k}/groups_used"] <= 1
        assert diag[f"memory/level{k}/phase_increment"] > 0
    assert model(random_ids(2, 10))[1].diagnostics is None


def test_lm_loss_ignores_pad_and_is_fp32() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 384, generator=g).bfloat16()
    targets = torch.tensor([[1, 2, 0, 3, 0], [0, 0, 7, 8, 9]])
    loss = lm_loss(logits, targets)
    keep = targets != 0
    expect = torch.nn.functional.cross_entropy(logits.float()[keep], targets[keep])
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expect.item(), rel=1e-6)
    assert lm_loss(logits, torch.zeros_like(targets)).item() == 0.0


def test_activation_checkpointing_same_loss_and_grads_with_dropout_and_state() -> None:
    model = build(tiny_cfg(attention_dropout=0.2), sharpen=3.0).train()
    ids = random_ids(2, 60)
    results = []
    for enabled in (False, True):
        model.set_activation_checkpointing(enabled)
        model.zero_grad()
        torch.manual_seed(7)
        _, state = model(ids[:, :30])
        logits, _ = model(ids[:, 30:], state)  # state carried with its graph
        loss = lm_loss(logits[:, :-1], ids[:, 31:])
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_bf16_model_keeps_phases_fp32() -> None:
    model = build(tiny_cfg()).to(torch.bfloat16).eval()
    with torch.no_grad():
        logits, state = model(random_ids(2, 30))
        logits2, state2 = model(random_ids(2, 30), state)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits2.float()).all()
    assert all(p.dtype == torch.float32 for p in state2.group_phases)
    assert state2.keys[0].dtype == torch.bfloat16


def test_state_to_and_detach() -> None:
    model = build(tiny_cfg())
    _, state = model(random_ids(2, 20), collect_diagnostics=True)
    moved = state.to("cpu").detach()
    assert isinstance(moved, PMNetState) and moved.position == 20
    assert all(not t.requires_grad for t in moved.group_phases)
    assert state.group_phases[0].requires_grad  # the original is untouched


def test_decoder_layer_traces_without_graph_breaks() -> None:
    # the fast path has static shapes only: dynamo captures a whole decoder layer in one graph
    model = build(tiny_cfg(attn_backend="sdpa"))
    layer = model.model.layers[0]
    b, t, cfg = 2, 24, model.config
    from pmnet.model.attention import build_attention_mask
    from pmnet.model.layers import rope_cos_sin

    cos, sin = rope_cos_sin(0, t, cfg.head_dim, cfg.rope_theta, torch.device("cpu"))
    mask = build_attention_mask(cfg, t, 0, torch.device("cpu"), training=True)
    memory = LayerMemory(
        phase=torch.zeros(b, t, cfg.num_memory, cfg.memory_size), group=torch.zeros(b, t, dtype=torch.long),
        anchor=model.model.memory_embeddings(0, torch.zeros(b, t, dtype=torch.long)),
        carried=torch.zeros(b, 1, cfg.num_memory, cfg.memory_size),
    )  # fmt: skip
    args = (torch.randn(b, t, cfg.hidden_size), cos, sin, mask)
    compiled_layer = torch.compile(layer, backend="eager", fullgraph=True)
    out = compiled_layer(*args, memory=memory)  # training mode, with grad: the path the trainer compiles
    out.hidden.sum().backward()
    eager = layer(*args, memory=memory)
    assert torch.allclose(eager.hidden, out.hidden, atol=1e-5) and torch.allclose(eager.phase, out.phase, atol=1e-5)


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ValueError, match="memory_write_period"):
        PMNetForCausalLM(tiny_cfg(memory_write_period=3))


def test_compile_layers_keeps_keys_and_numbers() -> None:
    model = build(tiny_cfg(), sharpen=3.0).eval()
    ids = random_ids(2, 40)
    keys = list(model.state_dict())
    with torch.no_grad():
        base, _ = model(ids)
        model.compile_layers(backend="eager")  # dynamo capture only: no C++ build on CPU
        out, _ = model(ids)
    assert list(model.state_dict()) == keys
    assert (base - out).abs().max() < 1e-5


def test_initialisation_at_construction() -> None:
    # each module initialises itself in its constructor (what ZeRO-3's zero.Init needs)
    cfg = three_level_cfg(initializer_range=0.02)
    torch.manual_seed(0)
    model = PMNetForCausalLM(cfg)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        elif "norm" in name:
            assert torch.equal(p, torch.ones_like(p)), name
        elif p.numel() >= 1000:
            assert abs(p.std().item() - 0.02) < 0.003 and abs(p.mean().item()) < 0.003, name


def test_autocast_bf16_keeps_phase_math_fp32() -> None:
    model = build(tiny_cfg())
    ids = random_ids(2, 40)
    ref, _ = model(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(ids)
    lm_loss(logits[:, :-1], ids[:, 1:]).backward()
    assert logits.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in state.group_phases)
    lp, lq = torch.log_softmax(ref.float(), -1), torch.log_softmax(logits.float(), -1)
    assert (lp.exp() * (lp - lq)).sum(-1).mean() < 1e-3  # KL(fp32 || bf16) per byte, nats
