"""Shared builders for the model tests: small configs and seeded models."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from pmnet.model import PMNetConfig, PMNetForCausalLM

# one intra-op thread: on a shared 2-core box, OpenMP barriers of 2 threads spin against other jobs
torch.set_num_threads(1)


def tiny_cfg(**overrides: Any) -> PMNetConfig:
    """The tiny preset (K = 2 levels) with overrides."""
    return PMNetConfig.from_preset("tiny", **overrides)


def three_level_cfg(**overrides: Any) -> PMNetConfig:
    """A tiny config with K = 3 levels (1 + 4 + 16 groups) and W = 8, so chunks cross windows often."""
    base = dict(num_hidden_layers=6, memory_write_period=2, sliding_window=8, memory_size=8, hidden_size=32,
                intermediate_size=64, num_attention_heads=2, head_dim=16)  # fmt: skip
    base.update(overrides)
    return PMNetConfig.from_preset("tiny", **base)


def build(cfg: PMNetConfig, seed: int = 0, sharpen: float = 1.0) -> PMNetForCausalLM:
    """A seeded model; ``sharpen`` > 1 scales the memory weights and anchors so routing is far from uniform."""
    torch.manual_seed(seed)
    model = PMNetForCausalLM(cfg)
    if sharpen != 1.0:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "memory" in name and not name.endswith("norm.weight"):
                    p.mul_(sharpen)
    return model


def with_cfg(model: PMNetForCausalLM, **overrides: Any) -> PMNetForCausalLM:
    """The same weights under a config with different switches (backend, memory_impl, ...)."""
    other = PMNetForCausalLM(dataclasses.replace(model.config, **overrides))
    other.load_state_dict(model.state_dict())
    return other.train(model.training)


def random_ids(b: int, t: int, seed: int = 1) -> torch.Tensor:
    """[B, T] random byte ids (no PAD)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (b, t), generator=g)


def compiled_with_and_without(
    set_enabled: Callable[[bool], None], dtype: torch.dtype = torch.float32
) -> tuple[float, float, float]:
    """A sharpened tiny flex model on CUDA, compiled memory cores, with a kernel switched off then on
    (``set_enabled``): (loss off, loss on, cosine similarity of all parameter gradients)."""
    model = build(tiny_cfg(attn_backend="flex"), sharpen=2.0).cuda().to(dtype)
    ids = random_ids(2, 256).cuda()
    results = []
    for enabled in (False, True):
        set_enabled(enabled)
        try:
            model.compile_memory_cores(True)
            logits, _ = model(ids)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())
            grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
            results.append((loss.item(), torch.cat([g.float().flatten() for g in grads])))
        finally:
            model.compile_memory_cores(False)
            set_enabled(True)
    (l0, g0), (l1, g1) = results
    return l0, l1, float(torch.nn.functional.cosine_similarity(g0, g1, dim=0))


def lower_for_hopper(kernels: list[tuple[Any, dict[str, str], dict[str, Any]]]) -> list[str]:
    """Triton-IR text of each ``(kernel, signature, constexprs)`` lowered for sm_90 on this machine.

    The GPU's compile path run on a CPU: the interpreter does not catch, e.g., a non-constexpr
    global read inside a kernel; this does. Skips the calling test where Triton's internal API moved
    (the GPU tests still compile the kernels)."""
    import pytest

    try:
        from triton._C.libtriton import ir
        from triton.backends.compiler import GPUTarget
        from triton.backends.nvidia.compiler import CUDABackend
        from triton.compiler import ASTSource
    except ImportError as err:
        pytest.skip(f"triton internals unavailable: {err}")
    target = GPUTarget("cuda", 90, 32)
    backend = CUDABackend(target)
    opts = backend.parse_options({})
    ctx = ir.context()
    ir.load_dialects(ctx)
    backend.load_dialects(ctx)
    texts = []
    for fn, sig, consts in kernels:
        src = ASTSource(fn, sig, constexprs=consts)
        module = src.make_ir(target, opts, backend.get_codegen_implementation(opts), backend.get_module_map(), ctx)
        texts.append(str(module))
    return texts


def run_interpreted(module: str) -> dict[str, float]:
    """Run ``python -m module`` under Triton's CPU interpreter (``TRITON_INTERPRET`` is read when the
    kernels are defined, hence a subprocess); returns the JSON of its last stdout line."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", module], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
