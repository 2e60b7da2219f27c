"""PMNet, the byte-level LM with phasor memory (docs/model.md): config, modules, state, interchange format.

Public API::

    from pmnet.model import PMNetConfig, PMNetForCausalLM, PMNetState, save_pretrained, load_pretrained, lm_loss

    model = PMNetForCausalLM(PMNetConfig.from_preset("tiny"))
    model = PMNetForCausalLM.from_pretrained("DIR")  # an interchange / released-model folder
    logits, state = model(ids)            # ids [B, T] int64 -> logits [B, T, V]
    logits, state = model(more, state)    # continue the same streams

This package imports neither deepspeed nor torch.distributed (parallelism lives in pmnet/train).
"""

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
