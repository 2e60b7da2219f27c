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

import sys
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
    "BOS_ID": "config",
    "EOS_ID": "config",
    "InterchangeError": "interchange",
    "PAD_ID": "config",
    "PMNetConfig": "config",
    "PMNetForCausalLM": "modeling",
    "PMNetModel": "modeling",
    "PMNetState": "state",
    "PRESETS": "config",
    "RELEASED_CONFIG_KEYS": "interchange",
    "check_state_dict": "interchange",
    "config_from_interchange": "interchange",
    "config_to_interchange": "interchange",
    "forward_flops_breakdown": "flops",
    "forward_flops_per_byte": "flops",
    "initial_state": "modeling",
    "lm_loss": "modeling",
    "load_pretrained": "interchange",
    "read_checkpoint": "interchange",
    "read_config": "interchange",
    "read_weights": "interchange",
    "resolve_anchor_levels": "modeling",
    "save_pretrained": "interchange",
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
        # static imports (this package imports nothing by name it builds at run time)
        import pmnet.model.config
        import pmnet.model.flops
        import pmnet.model.interchange
        import pmnet.model.modeling
        import pmnet.model.state  # noqa: F401

        value = getattr(sys.modules[f"{__name__}.{_SOURCE[name]}"], name)
        globals()[name] = value  # later reads skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
