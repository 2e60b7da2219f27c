"""Run under ``TRITON_INTERPRET=1`` (Triton's CPU interpreter): the fused phase-score kernels
against plain torch, values and gradients, accurate-math mode. Prints one JSON line of max errors.

Usage: python -m tests.model.triton_scores_check  (tests/model/test_triton_scores.py launches it).
"""

from __future__ import annotations

import json

import torch

from pmnet.model import triton_scores as ts

# (P, N, R, M): the write (R = 1), several heads, a slot count below the power of two,
# a phase width that is not a power of two, and one wider than a 512-phase tile
SHAPES = [(5, 4, 1, 32), (7, 4, 2, 24), (3, 3, 4, 16), (2, 4, 1, 600)]


def main() -> None:
    torch.manual_seed(0)
    worst = {"value": 0.0, "dq": 0.0, "dk": 0.0}
    for p, n, r, m in SHAPES:
        k = (torch.randn(p, n, r * m) * 2).requires_grad_()  # some keys deep in tanh's tails
        q = (torch.randn(p, r * m) * 2).requires_grad_()  # the query projection's output
        out = ts.phase_scores_tanh(q, k, r, False)
        ref = ts.scores_reference(q, k, r)
        g = torch.randn_like(ref)
        dq, dk = torch.autograd.grad(out, (q, k), g)
        rq, rk = torch.autograd.grad(ref, (q, k), g)
        assert out.shape == ref.shape == (p, r, n) and dk.dtype == k.dtype and dq.dtype == q.dtype
        for name, a, b in (("value", out, ref), ("dq", dq, rq), ("dk", dk, rk)):
            worst[name] = max(worst[name], float((a - b).abs().max().detach() / (1.0 + b.abs().max().detach())))
    print(json.dumps(worst))


if __name__ == "__main__":
    main()
