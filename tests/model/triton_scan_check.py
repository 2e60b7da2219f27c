"""Run under ``TRITON_INTERPRET=1`` (Triton's CPU interpreter): the Triton scan against the fp64
oracle ``reference.segmented_prefix_sum`` and the blocked fp32 scan, values and gradients.
Prints one JSON line of worst errors and checks.

Usage: python -m tests.model.triton_scan_check  (tests/model/test_triton_scan.py launches it).
The interpreter runs a scan element by element in Python, so D stays small.
"""

from __future__ import annotations

import json
import math

import torch

from pmnet.model import triton_scan as ts
from pmnet.model.reference import segmented_prefix_sum
from pmnet.model.scan import blocked_segmented_prefix_sum

TWO_PI = 2 * math.pi
# (B, T, D, G, (BLOCK_T, BLOCK_D, warps, stages)): several groups with empty ones, B > 1, T and D
# not multiples of the blocks; one group; the default blocks with two D blocks; more groups
# than rows; a config with warps and pipelining (the interpreter ignores both)
CASES = [
    (2, 70, 5, 6, (16, 4, 1, 1)),
    (1, 50, 3, 1, (16, 4, 1, 1)),
    (2, 100, 20, 4, (ts.BLOCK_T, ts.BLOCK_D, ts.NUM_WARPS, ts.NUM_STAGES)),
    (2, 40, 2, 64, (8, 2, 1, 1)),
    (1, 45, 3, 3, (16, 2, 2, 2)),
]
# An evaluation chunk (30,720 positions) as in tests/model/test_fast_path.py's precision test of
# the blocked scan: one group or 64, same-sign increments of ~2.4 rad (where fp32 partial sums
# grow fastest) or of random sign.
LONG = [(30720, 1, True), (30720, 64, True), (30720, 1, False)]


def _angle_err(a: torch.Tensor, b: torch.Tensor) -> float:
    d = torch.remainder(a.detach().double() - b.detach().double() + math.pi, TWO_PI) - math.pi
    return float(d.abs().max())


def _inputs(b: int, t: int, dim: int, groups: int, seed: int, same_sign: bool = False):
    g = torch.Generator().manual_seed(seed)
    delta = 3.0 * torch.randn(b, t, dim, generator=g)
    if same_sign:
        delta = delta.abs()
    group = torch.randint(0, groups, (b, t), generator=g)
    if groups > 2:
        group[group == 2] = 1  # group 2 is empty in every sequence
    group[0, : min(t, 40)] = 0  # one group over several chunks
    carried = TWO_PI * torch.rand(b, groups, dim, generator=g)
    return delta, group, carried


def main() -> None:
    worst = {"value": 0.0, "state": 0.0, "d_delta": 0.0, "d_carried": 0.0, "vs_blocked": 0.0}
    checks = {"in_range": True, "empty_groups_exact": True}
    for i, (b, t, dim, groups, blocks) in enumerate(CASES):
        delta, group, carried = _inputs(b, t, dim, groups, seed=i)
        d = delta.clone().requires_grad_()
        c = carried.clone().requires_grad_()
        out, state = ts.segmented_prefix_sum(d, group, c, *blocks)
        d64 = delta.double().requires_grad_()
        c64 = carried.double().requires_grad_()
        ref, ref_state = segmented_prefix_sum(d64, group, c64)
        blk, _ = blocked_segmented_prefix_sum(delta, group, carried)
        worst["value"] = max(worst["value"], _angle_err(out, ref))
        worst["state"] = max(worst["state"], _angle_err(state, ref_state))
        worst["vs_blocked"] = max(worst["vs_blocked"], _angle_err(out, blk))
        checks["in_range"] &= bool(out.min() >= 0 and out.max() < TWO_PI and out.dtype == torch.float32)
        seen = torch.zeros(b, groups, dtype=torch.bool).scatter_(1, group, True)
        checks["empty_groups_exact"] &= bool(torch.equal(state[~seen].detach(), carried[~seen]))
        # gradients: the same smooth loss of S and of the states, fp32 kernel vs fp64 oracle
        w = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(ref)
        w_state = torch.linspace(2, -1, state.numel(), dtype=torch.float64).view_as(ref_state)
        *grads, d_state = torch.autograd.grad(
            (torch.sin(out) * w).sum() + (torch.cos(state) * w_state).sum(), [d, c, state]
        )
        ref_grads = torch.autograd.grad((torch.sin(ref) * w).sum() + (torch.cos(ref_state) * w_state).sum(), [d64, c64])
        for name, a, r in zip(("d_delta", "d_carried"), grads, ref_grads):
            worst[name] = max(worst[name], float((a - r).abs().max() / (1.0 + r.abs().max())))
        # an empty group's carried gradient is exactly the gradient of its state
        checks["empty_groups_exact"] &= bool(torch.equal(grads[1][~seen], d_state[~seen]))
    for t, groups, same_sign in LONG:
        delta, group, carried = _inputs(1, t, 1, groups, seed=t, same_sign=same_sign)
        out, state = ts.segmented_prefix_sum(delta, group, carried, ts.BLOCK_T, 1, 1, 1)
        ref, ref_state = segmented_prefix_sum(delta, group, carried)
        name = f"long_g{groups}_{'same_sign' if same_sign else 'random_sign'}"
        worst[name] = max(_angle_err(out, ref), _angle_err(state, ref_state))
        worst[f"{name}_blocked"] = _angle_err(blocked_segmented_prefix_sum(delta, group, carried)[0], ref)
    # a non-finite increment shows as NaN at its own position
    delta, group, carried = _inputs(1, 20, 2, 2, seed=99)
    delta[0, 5, 1] = float("nan")
    out, _ = ts.segmented_prefix_sum(delta, group, carried, 8, 2, 1, 1)
    checks["nan_at_its_position"] = bool(out[0, 5, 1].isnan() and out[0, 5, 0].isfinite())
    print(json.dumps({**worst, **checks}))


if __name__ == "__main__":
    main()
