"""PMNet, the byte-level LM with phasor memory (docs/model.md): config, modules, state, interchange format.

Public API::

    from pmnet.model import PMNetConfig, PMNetForCausalLM, PMNetState, save_pretrained, load_pretrained, lm_loss

    model = PMNetForCausalLM(PMNetConfig.from_preset("tiny"))
    model = PMNetForCausalLM.from_pretrained("DIR")  # an interchange / released-model folder
    logits, state = model(ids)            # ids [B, T] int64 -> logits [B, T, V]
    logits, state = model(more, state)    # continue the same streams

This package imports neither deepspeed nor torch.distributed (parallelism lives in pmnet/train).

The package's names are imported on first use (PEP 562): ``pmnet.model.config`` (and so
``pmnet.config``, the launcher's pre-flight) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pmnet.model.config import BOS_ID, EOS_ID, PAD_ID, PRESETS, PMNetConfig
    from pmnet.model.flops import forward_flops_breakdown, forward_flops_per_byte
    from pmnet.model.interchange import (
        RELEASED_CONFIG_KEYS,
        InterchangeError,
        check_state_dict,
        config_from_interchange,
        config_to_interchange,
        load_pretrained,
        read_checkpoint,
        read_config,
        read_weights,
        save_pretrained,
    )
    from pmnet.model.modeling import PMNetForCausalLM, PMNetModel, initial_state, lm_loss, resolve_anchor_levels
    from pmnet.model.state import PMNetState

_SOURCE = {
    "BOS_ID": "pmnet.model.config",
    "EOS_ID": "pmnet.model.config",
    "InterchangeError": "pmnet.model.interchange",
    "PAD_ID": "pmnet.model.config",
    "PMNetConfig": "pmnet.model.config",
    "PMNetForCausalLM": "pmnet.model.modeling",
    "PMNetModel": "pmnet.model.modeling",
    "PMNetState": "pmnet.model.state",
    "PRESETS": "pmnet.model.config",
    "RELEASED_CONFIG_KEYS": "pmnet.model.interchange",
    "check_state_dict": "pmnet.model.interchange",
    "config_from_interchange": "pmnet.model.interchange",
    "config_to_interchange": "pmnet.model.interchange",
    "forward_flops_breakdown": "pmnet.model.flops",
    "forward_flops_per_byte": "pmnet.model.flops",
    "initial_state": "pmnet.model.modeling",
    "lm_loss": "pmnet.model.modeling",
    "load_pretrained": "pmnet.model.interchange",
    "read_checkpoint": "pmnet.model.interchange",
    "read_config": "pmnet.model.interchange",
    "read_weights": "pmnet.model.interchange",
    "resolve_anchor_levels": "pmnet.model.modeling",
    "save_pretrained": "pmnet.model.interchange",
}

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "PRESETS",
    "RELEASED_CONFIG_KEYS",
    "InterchangeError",
    "PMNetConfig",
    "PMNetForCausalLM",
    "PMNetModel",
    "PMNetState",
    "check_state_dict",
    "config_from_interchange",
    "config_to_interchange",
    "forward_flops_breakdown",
    "forward_flops_per_byte",
    "initial_state",
    "lm_loss",
    "load_pretrained",
    "read_checkpoint",
    "read_config",
    "read_weights",
    "resolve_anchor_levels",
    "save_pretrained",
]


def __getattr__(name: str) -> Any:
    if name in _SOURCE:
        value = getattr(importlib.import_module(_SOURCE[name]), name)
        globals()[name] = value  # later reads skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
