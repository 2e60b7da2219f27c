"""The fused Triton phase-score kernels (``pmnet/model/triton_scores.py``) against plain torch.

CPU: the kernels run in Triton's interpreter (accurate-math mode) in a subprocess, since
``TRITON_INTERPRET`` is read when the kernels are defined. GPU: the approximate-math mode the
fast path uses on bf16 keys, and the compiled read / write with and without the kernel.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")


def test_interpreted_kernels_match_torch_values_and_grads() -> None:
    from tests.model.model_helpers import run_interpreted

    worst = run_interpreted("tests.model.triton_scores_check")
    assert worst["value"] < 1e-5 and worst["dq"] < 1e-5 and worst["dk"] < 1e-5, worst


def test_kernels_lower_to_triton_ir_for_hopper() -> None:
    """The GPU's compile path on a CPU: Triton's front end lowers both kernels (approximate math,
    the 119M shapes) for sm_90. The interpreter does not catch, e.g., a non-constexpr global
    read inside a kernel; this does (it cost a GPU call once)."""
    from pmnet.model import triton_scores as ts
    from tests.model.model_helpers import lower_for_hopper

    kernels = []
    blocks = dict(R=4, N=4, M=512, BLOCK_P=8, BLOCK_M=512, FAST=True)
    for fn, ptrs, consts in [
        (ts._scores_fwd_kernel, ["q_ptr", "k_ptr", "s_ptr"], {**blocks, "BLOCK_N": 4}),
        (ts._scores_bwd_kernel, ["q_ptr", "k_ptr", "ds_ptr", "dq_ptr", "dk_ptr"], blocks),
    ]:  # the projections' outputs and their gradients in bf16, the scores and d scores in fp32
        sig = {name: ("*bf16" if name.startswith(("k_", "dk_", "q_", "dq_")) else "*fp32") for name in ptrs}
        kernels.append((fn, sig | {"P": "i32"} | {k: "constexpr" for k in consts}, consts))
    assert all("tt.func" in text for text in lower_for_hopper(kernels))


def test_kernel_is_off_where_it_does_not_apply() -> None:
    from pmnet.model import triton_scores as ts

    assert not ts.available(torch.zeros(2, 4, 8, dtype=torch.bfloat16))  # CPU
    assert not ts.available(torch.zeros(2, 4, 8))  # fp32 keys keep accurate inductor math


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4099, 4, 4, 512), (1000, 4, 1, 128), (333, 4, 4, 32)])
def test_fast_kernel_close_to_fp64(shape: tuple[int, int, int, int]) -> None:
    from pmnet.model import triton_scores as ts

    p, n, r, m = shape
    torch.manual_seed(0)
    dev = torch.device("cuda")
    q = torch.randn(p, r * m, device=dev).to(torch.bfloat16).requires_grad_()  # the query projection's output
    k = (torch.randn(p, n, r * m, device=dev) * 1.5).to(torch.bfloat16).requires_grad_()
    out = ts.fused_scores(q, k, r)
    ref = ts.scores_reference(q.double(), k.double(), r)
    g = torch.randn_like(out)
    dq, dk = torch.autograd.grad(out, (q, k), g)
    rq, rk = torch.autograd.grad(ref, (q, k), g.double())
    # scores are sums of M cosines: approximate tanh / cos errors of ~1e-4 per term stay far
    # below the 1/sqrt(M) softmax temperature's resolution
    assert (out.double() - ref).abs().max() < 2e-3 * m**0.5
    assert (dq.double() - rq).abs().max() < 1e-2 * (1 + rq.abs().max())
    assert dk.dtype == dq.dtype == torch.bfloat16  # both in their projection's dtype
    assert (dk.double() - rk).abs().max() < 2e-2 * (1 + rk.abs().max())  # bf16 output rounding


@pytest.mark.gpu
def test_compiled_read_and_write_same_with_and_without_kernel() -> None:
    from pmnet.model import triton_scores
    from tests.model.model_helpers import compiled_with_and_without

    l0, l1, cos = compiled_with_and_without(triton_scores.set_enabled, torch.bfloat16)
    assert abs(l0 - l1) < 1e-2 * abs(l0)
    assert cos > 0.99, cos
