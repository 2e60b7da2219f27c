"""Run under ``TRITON_INTERPRET=1`` (Triton's CPU interpreter): the fused softmax / weighted-feature
kernels of ``pmnet/model/triton_read.py`` against plain torch, values and gradients. Prints one
JSON line of max errors (relative to the reference's largest entry).

Usage: python -m tests.model.triton_read_check  (tests/model/test_triton_read.py launches it).
"""

from __future__ import annotations

import json

import torch

from pmnet.model import triton_read as tr

# (P, R, N, F): the 119M's heads and slots on a small feature width, a slot and head count below
# the power of two with an odd width, one position, and a width over one 256-wide feature tile
SHAPES = [(7, 4, 4, 48), (5, 3, 3, 20), (1, 2, 4, 16), (3, 4, 4, 600)]


def main() -> None:
    torch.manual_seed(0)
    worst = {"g": 0.0, "a": 0.0, "ds": 0.0, "df": 0.0, "g_bf16": 0.0, "df_bf16": 0.0}
    for p, r, n, f in SHAPES:
        s = (torch.randn(p, r, n) * 8).requires_grad_()
        feats = torch.sin(torch.randn(p, n, f) * 3).requires_grad_()
        scale = 1.0 / (f // 2) ** 0.5
        rg, ra = tr.softmax_weighted_reference(s, feats, scale)
        dout = torch.randn_like(rg)
        rs, rf = torch.autograd.grad(rg, (s, feats), dout)
        for compiled in (False, True):  # both forms of the feature gradient
            g, a = tr.softmax_weighted(s, feats, scale, compiled)
            ds, df = torch.autograd.grad(g, (s, feats), dout)
            assert g.shape == (p, r, f) and a.shape == (p, r, n) and df.shape == feats.shape
            for name, x, y in (("g", g, rg), ("a", a, ra), ("ds", ds, rs), ("df", df, rf)):
                worst[name] = max(worst[name], float((x - y).abs().max().detach() / (1.0 + y.abs().max().detach())))
        # bf16 features: g and the feature gradient come back in bf16, rounded once from fp32
        fb = feats.detach().to(torch.bfloat16).requires_grad_()
        gb, _ = tr.softmax_weighted(s.detach(), fb, scale)
        (dfb,) = torch.autograd.grad(gb, (fb,), dout.to(torch.bfloat16))
        rgb, _ = tr.softmax_weighted_reference(s.detach(), fb.float(), scale)
        assert gb.dtype == dfb.dtype == torch.bfloat16
        worst["g_bf16"] = max(worst["g_bf16"], float((gb.float() - rgb).abs().max().detach()))
        a_ref = torch.softmax(s.detach() * scale, -1)
        df_ref = torch.einsum("prn,prf->pnf", a_ref, dout.to(torch.bfloat16).float())
        worst["df_bf16"] = max(worst["df_bf16"], float((dfb.float() - df_ref).abs().max() / (1 + df_ref.abs().max())))
    print(json.dumps(worst))


if __name__ == "__main__":
    main()
