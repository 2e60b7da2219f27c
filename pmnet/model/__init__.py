"""PMNet, the byte-level LM with phasor memory (MODEL.md): config, modules, state, interchange format.

Public API::

    from pmnet.model import PMNetConfig, PMNetForCausalLM, PMNetState, save_pretrained, load_pretrained, lm_loss

    model = PMNetForCausalLM(PMNetConfig.from_preset("tiny"))
    logits, state = model(ids)            # ids [B, T] int64 -> logits [B, T, V]
    logits, state = model(more, state)    # continue the same streams

This package imports neither deepspeed nor torch.distributed (parallelism lives in pmnet/train).
"""

from pmnet.model.config import BOS_ID, EOS_ID, PAD_ID, PRESETS, PMNetConfig
from pmnet.model.flops import forward_flops_breakdown, forward_flops_per_byte
from pmnet.model.interchange import (
    InterchangeError,
    check_state_dict,
    config_from_interchange,
    config_to_interchange,
    load_pretrained,
    read_weights,
    save_pretrained,
)
from pmnet.model.modeling import PMNetForCausalLM, PMNetModel, lm_loss, resolve_anchor_levels
from pmnet.model.state import PMNetState

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "PRESETS",
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
    "lm_loss",
    "load_pretrained",
    "read_weights",
    "resolve_anchor_levels",
    "save_pretrained",
]
