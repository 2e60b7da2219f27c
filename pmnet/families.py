"""Module families of PMNet parameters, from their interchange keys (docs/model.md section 7).

One split shared by the trainer (grad norm per family, weight-decay exclusions) and the
checkpoint audit (parameter norms per family). Imports nothing heavy: the audit runs without torch.
"""

from __future__ import annotations

FAMILIES = ("attention", "mlp", "memory_write", "memory_read", "anchors", "embedding", "norms")


def param_family(name: str) -> str:
    """Family of a parameter key; "other" for a key that belongs to none."""
    if "memory_embeddings" in name:
        return "anchors"
    if "memory_write_module" in name:
        return "memory_write"
    if "memory_read_module" in name:
        return "memory_read"
    if "self_attn" in name:
        return "attention"
    if ".mlp." in name:
        return "mlp"
    if "embed_tokens" in name or "lm_head" in name:
        return "embedding"
    if "norm" in name:
        return "norms"
    return "other"
