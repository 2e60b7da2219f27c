"""Pre-clip gradient norms per module family (``grad_norm/<family>`` in TensorBoard) under DeepSpeed.

:func:`family_grad_norms` reads each rank's own share of every gradient where DeepSpeed keeps it
(ZeRO-1/2: the parameter's fragment of the flat fp32 partition; ZeRO-3: the local partition;
without ZeRO: ``p.grad``, the same on every rank), sums squares per family with one fused norm
per family, and adds the ranks' sums with a single all-reduce of a few numbers.

:func:`family_grad_norms_reference` is the slow oracle it is tested against: DeepSpeed's public
``safe_get_full_grad`` per parameter, which under ZeRO-1/2 allocates the whole gradient and
all-reduces it, one collective per parameter tensor (258 for the 119M model; on the H200 this
tail kept the GPU idle for tens of milliseconds on every logged step).

Both are collectives under ZeRO: every rank calls them at the same point, after the last
backward of a step and before ``engine.step()`` (DeepSpeed frees the partition's gradients there).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from pmnet.families import FAMILIES, param_family
from pmnet.train.distributed import all_reduce_

_SLOTS = (*FAMILIES, "other")


def local_grad_share(p: nn.Parameter) -> tuple[Tensor | None, bool]:
    """(this rank's part of ``p``'s gradient, whether the ranks' parts are disjoint and must be summed).

    Follows the order of ``deepspeed.utils.safe_get_full_grad``: BF16_Optimizer and ZeRO-1/2 keep
    a fragment per parameter in the rank's flat partition (None: the rank owns none of ``p``);
    without ZeRO ``p.grad`` is whole and identical on every rank; ZeRO-3 has a local partition.
    """
    if getattr(p, "_hp_grad", None) is not None or (p.grad is None and hasattr(p, "_hp_mapping")):
        mapping = p._hp_mapping  # type: ignore[attr-defined]
        if mapping is None:
            return None, True
        frag = mapping.get_lp_grad_fragment(p._index_in_param_group).flatten()  # type: ignore[attr-defined]
        if frag.numel() == p.numel():  # BF16_Optimizer keeps the whole buffer; this rank owns a slice
            addr = mapping.lp_fragment_address
            frag = frag.narrow(0, addr.start, addr.numel)
        return frag, True
    if p.grad is not None:
        return p.grad, False
    if hasattr(p, "ds_id"):
        from deepspeed.utils import safe_get_local_grad

        return safe_get_local_grad(p), True
    return None, False


def family_grad_norms(named_params: Iterable[tuple[str, nn.Parameter]], device: torch.device) -> dict[str, float]:
    """L2 norm of the gradient per family (``pmnet.families``; "other" only when non-zero).

    One ``_foreach_norm`` per family and kind of share, one all-reduce of 8 float64 numbers.
    """
    shares: dict[tuple[int, bool], list[Tensor]] = {}
    for name, p in named_params:  # gradients need no detach: nothing here records autograd history
        g, disjoint = local_grad_share(p)
        if g is not None and g.numel() > 0:
            shares.setdefault((_SLOTS.index(param_family(name)), disjoint), []).append(
                g if g.dtype == torch.float32 else g.float()
            )
    sq = torch.zeros(2, len(_SLOTS), dtype=torch.float64, device=device)  # row 0: disjoint, row 1: whole
    for (slot, disjoint), grads in shares.items():
        norms = torch._foreach_norm(grads)
        sq[0 if disjoint else 1, slot] = torch.stack(norms).double().pow(2).sum()
    all_reduce_(sq[0])  # the disjoint parts only: a whole gradient is counted once, as DeepSpeed returns it
    total = sq.sum(0).tolist()
    return {f: math.sqrt(v) for f, v in zip(_SLOTS, total, strict=True) if f != "other" or v > 0}


def family_grad_norms_reference(
    named_params: Iterable[tuple[str, nn.Parameter]], device: torch.device
) -> dict[str, float]:
    """The same numbers through ``deepspeed.utils.safe_get_full_grad`` (whole gradients, float64)."""
    from deepspeed.utils import safe_get_full_grad

    sq = {f: torch.zeros((), dtype=torch.float64, device=device) for f in _SLOTS}
    for name, p in named_params:
        g = safe_get_full_grad(p)
        if g is not None:
            sq[param_family(name)] += g.detach().double().pow(2).sum()
    return {f: math.sqrt(v.item()) for f, v in sq.items() if f != "other" or v.item() > 0}
