"""The Triton scan (``pmnet/model/triton_scan.py``) against the fp64 oracle and the blocked scan.

CPU: the kernel runs in Triton's interpreter in a subprocess (``TRITON_INTERPRET`` is read when
the kernel is defined), and is lowered / compiled for sm_90 without a GPU. GPU: values and
gradients at the 119M shapes, the compiled ``scan_core`` for several group counts, and the
compiled model with and without the kernel.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from fractions import Fraction

import pytest
import torch

from tests.conftest import REPO

triton = pytest.importorskip("triton")

TWO_PI = 2 * math.pi
PI = Fraction("3.14159265358979323846264338327950288419716939937510582097494459")


def _angle_err(a: torch.Tensor, b: torch.Tensor) -> float:
    d = torch.remainder(a.detach().double() - b.detach().double() + math.pi, TWO_PI) - math.pi
    return float(d.abs().max())


def test_interpreted_kernel_matches_fp64_values_and_grads() -> None:
    from tests.model.model_helpers import run_interpreted

    res = run_interpreted("tests.model.triton_scan_check")
    # S is exact up to its final rounding to fp32 (1 ulp of 2 pi = 4.8e-7), at any length
    for name in ("value", "state", "long_g1_same_sign", "long_g64_same_sign", "long_g1_random_sign"):
        assert res[name] < 2e-6, (name, res)
    # ... where the blocked fp32 scan drifts by ~1e-4 rad over 30,720 positions
    assert res["long_g1_same_sign"] < res["long_g1_same_sign_blocked"] / 10, res
    assert res["vs_blocked"] < 5e-5, res
    assert res["d_delta"] < 1e-5 and res["d_carried"] < 1e-5, res
    assert res["in_range"] and res["empty_groups_exact"] and res["nan_at_its_position"], res


def _kernel_variants():
    from pmnet.model import triton_scan as ts

    for reverse in (False, True):  # forward (turns) and backward (fp32)
        consts = dict(REVERSE=reverse, PHASE=not reverse, BLOCK_T=ts.BLOCK_T, BLOCK_D=ts.BLOCK_D, STAGES=ts.NUM_STAGES)
        sig = {"x_ptr": "*fp32", "perm_ptr": "*i32", "key_ptr": "*i32", "init_ptr": "*fp32" if reverse else "*i32"}
        sig |= {"out_ptr": "*fp32", "last_ptr": "*fp32", "T": "i32", "G": "i32", "D": "i32"}
        yield ts._scan_kernel, sig | {k: "constexpr" for k in consts}, consts


def test_kernels_lower_to_triton_ir_for_hopper() -> None:
    """The GPU's compile path on a CPU: Triton's front end lowers both directions for sm_90 (the
    interpreter does not catch, e.g., a non-constexpr global read inside a kernel)."""
    from tests.model.model_helpers import lower_for_hopper

    assert all("tt.scan" in text for text in lower_for_hopper(list(_kernel_variants())))


def test_kernels_compile_to_sm90_machine_code() -> None:
    """All the way to a cubin (layouts, LLVM, ptxas), where Triton's bundled ptxas is present: the
    scan's cross-lane lowering and the fp64 conversion are checked beyond the front end."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as err:
        pytest.skip(f"triton internals unavailable: {err}")
    from pmnet.model import triton_scan as ts

    target = GPUTarget("cuda", 90, 32)
    for fn, sig, consts in _kernel_variants():
        attrs = {(i,): [["tt.divisibility", 16]] for i in range(9) if i != 7}  # what D = 2048 etc. specialise
        try:
            kernel = triton.compile(ASTSource(fn, sig, constexprs=consts, attrs=attrs), target=target,
                                    options={"num_warps": ts.NUM_WARPS})  # fmt: skip
        except (RuntimeError, FileNotFoundError) as err:
            if "ptxas" in str(err).lower():
                pytest.skip(f"no ptxas: {err}")
            raise
        assert kernel.asm["cubin"]


def test_to_turns_exact() -> None:
    from pmnet.model.triton_scan import to_turns

    x = torch.tensor([0.0, 1e-9, 1.0, math.pi, -math.pi, TWO_PI - 1e-6, 100.5, -1234.567, 3e6, 6.2831855])
    got = [int(v) & 0xFFFFFFFF for v in to_turns(x)]
    for xi, n in zip(x.tolist(), got):
        exact = Fraction(xi) * 2**31 / PI  # x / 2 pi in units of 2**-32 turn
        want = round(exact) % 2**32
        assert min((n - want) % 2**32, (want - n) % 2**32) <= 1, (xi, n, want)


def test_kernel_is_off_where_it_does_not_apply() -> None:
    from pmnet.model import triton_scan as ts

    assert not ts.available(torch.zeros(2, 4, 8))  # CPU
    assert not ts.available(torch.zeros(2, 4, 8, dtype=torch.bfloat16))
    code = "from pmnet.model import triton_scan as ts; print(ts._STATE['enabled'])"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PMNET_TRITON_SCAN": "0"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]


def _gpu_inputs(b: int, t: int, dim: int, groups: int, seed: int = 0, scale: float = 3.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    delta = scale * torch.randn(b, t, dim, device="cuda", generator=g)
    group = torch.randint(0, groups, (b, t), device="cuda", generator=g)
    if groups > 2:
        group[group == 2] = 1  # an empty group
    carried = TWO_PI * torch.rand(b, groups, dim, device="cuda", generator=g)
    return delta, group, carried


def _grads(fn, delta, group, carried, dtype):
    d = delta.detach().to(dtype, copy=True).requires_grad_()
    c = carried.detach().to(dtype, copy=True).requires_grad_()
    out, state = fn(d, group, c)
    w = torch.linspace(-1, 1, out.numel(), device="cuda", dtype=torch.float64).view(out.shape)
    w_state = torch.linspace(2, -1, state.numel(), device="cuda", dtype=torch.float64).view(state.shape)
    loss = (torch.sin(out) * w).sum() + (torch.cos(state) * w_state).sum()
    return out, state, *torch.autograd.grad(loss, [d, c])


@pytest.mark.gpu
@pytest.mark.parametrize(
    "shape", [(2, 8192, 2048, 1), (2, 8192, 2048, 64), (3, 1000, 72, 5), (1, 30720, 64, 1), (2, 300, 40, 300)]
)
def test_kernel_close_to_fp64(shape: tuple[int, int, int, int]) -> None:
    from pmnet.model import triton_scan as ts
    from pmnet.model.reference import segmented_prefix_sum

    delta, group, carried = _gpu_inputs(*shape)
    out, state, dd, dc = _grads(ts.segmented_prefix_sum, delta, group, carried, torch.float32)
    ref, ref_state, rd, rc = _grads(segmented_prefix_sum, delta, group, carried, torch.float64)
    assert _angle_err(out, ref) < 2e-6 and _angle_err(state, ref_state) < 2e-6
    assert out.min() >= 0 and out.max() < TWO_PI
    assert (dd.double() - rd).abs().max() < 1e-5 * (1 + rd.abs().max())
    assert (dc.double() - rc).abs().max() < 1e-5 * (1 + rc.abs().max())


@pytest.mark.gpu
def test_compiled_scan_core_uses_kernel_for_several_group_counts() -> None:
    """``torch.compile(scan_core, fullgraph=True, dynamic=None)`` as ``fused.cores`` compiles it:
    the group count differs per level, so the second one recompiles with G dynamic."""
    from pmnet.model import fused
    from pmnet.model.reference import segmented_prefix_sum

    graphs: list[str] = []

    def recording(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    n, m = 2, 64
    cases = [(groups, *_gpu_inputs(2, 2048, n * m, groups, seed=groups)) for groups in (1, 4, 16, 64)]
    torch._dynamo.reset()
    recorded = torch.compile(fused.scan_core, fullgraph=True, dynamic=None, backend=recording)
    for groups, delta, group, carried in cases:
        recorded(delta.view(2, 2048, n, m), group, carried.view(2, groups, n, m), True)
    assert graphs and all("segmented_phase_scan" in g for g in graphs)  # the op, not the blocked scan

    torch._dynamo.reset()
    compiled = torch.compile(fused.scan_core, fullgraph=True, dynamic=None)
    for training in (True, False):
        for groups, delta, group, carried in cases:

            def core(d, g, c, training=training):
                s, st = compiled(d.view(2, 2048, n, m), g, c.view(2, -1, n, m), training)
                return s.flatten(2), st.flatten(2)

            out, state, dd, dc = _grads(core, delta, group, carried, torch.float32)
            ref, ref_state, rd, rc = _grads(segmented_prefix_sum, delta, group, carried, torch.float64)
            if training:  # grad_scaled: d delta / sqrt(positions of the sequence in the same group)
                counts = torch.zeros(2, groups, device="cuda").scatter_add(
                    1, group, torch.ones_like(group, dtype=torch.float)
                )
                rd = rd * counts.gather(1, group).rsqrt()[..., None].double()
            assert _angle_err(out, ref) < 2e-6 and _angle_err(state, ref_state) < 2e-6
            assert (dd.double() - rd).abs().max() < 1e-5 * (1 + rd.abs().max())
            assert (dc.double() - rc).abs().max() < 1e-5 * (1 + rc.abs().max())


@pytest.mark.gpu
def test_compiled_model_same_with_and_without_scan_kernel() -> None:
    from pmnet.model import triton_scan
    from tests.model.model_helpers import compiled_with_and_without

    l0, l1, cos = compiled_with_and_without(triton_scan.set_enabled, torch.float32)
    # the scans differ by ~1e-5 rad (the blocked one's drift); sharpened scores keep routing away from ties
    assert abs(l0 - l1) < 1e-2 * abs(l0)
    assert cos > 0.99, cos
