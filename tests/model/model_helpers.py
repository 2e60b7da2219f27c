"""Shared builders for the model tests: small configs and seeded models."""

from __future__ import annotations

import dataclasses
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
