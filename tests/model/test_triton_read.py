"""The fused softmax / weighted-feature kernels of the memory read (``pmnet/model/triton_read.py``).

CPU: the kernels in Triton's interpreter (a subprocess: ``TRITON_INTERPRET`` is read when the
kernels are defined) against plain torch, and their lowering for sm_90. GPU: the kernels against
fp64 torch, and the compiled read with and without them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

triton = pytest.importorskip("triton")


def test_interpreted_kernels_match_torch_values_and_grads() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.model.triton_read_check"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    worst = json.loads(proc.stdout.strip().splitlines()[-1])
    # fp32: the same sums in another order
    assert max(worst["g"], worst["a"], worst["ds"], worst["df"]) < 1e-6, worst
    # bf16 features: g and d features are rounded once to bf16 (one ulp of values below 1: 2**-8)
    assert worst["g_bf16"] <= 2**-8 and worst["df_bf16"] <= 2**-7, worst


def test_kernels_lower_to_triton_ir_for_hopper() -> None:
    """The GPU's compile path on a CPU: Triton's front end lowers both kernels for sm_90 at the
    119M shapes (R = N = 4, 2M = 1024), which the interpreter does not check."""
    try:
        from triton._C.libtriton import ir
        from triton.backends.compiler import GPUTarget
        from triton.backends.nvidia.compiler import CUDABackend
        from triton.compiler import ASTSource
    except ImportError as err:  # the internal API moved: the GPU tests still cover compilation
        pytest.skip(f"triton internals unavailable: {err}")
    from pmnet.model import triton_read as tr

    target = GPUTarget("cuda", 90, 32)
    backend = CUDABackend(target)
    opts = backend.parse_options({})
    ctx = ir.context()
    ir.load_dialects(ctx)
    backend.load_dialects(ctx)
    shapes = dict(R=4, N=4, F=1024, BLOCK_N=4)
    bp, bf, _ = tr._blocks(1024)
    kernels = [
        (
            tr._fwd_kernel,
            {"s_ptr": "*fp32", "f_ptr": "*bf16", "a_ptr": "*fp32", "g_ptr": "*bf16"},
            {**shapes, "BLOCK_P": bp, "BLOCK_F": bf},
        ),
        (
            tr._ds_kernel,
            {"dg_ptr": "*bf16", "f_ptr": "*bf16", "a_ptr": "*fp32", "ds_ptr": "*fp32"},
            {**shapes, "BLOCK_P": bp, "BLOCK_F": bf, "BLOCK_R": 4},
        ),
    ]
    for fn, ptrs, consts in kernels:
        sig = ptrs | {"P": "i32", "scale": "fp32"} | {k: "constexpr" for k in consts}
        src = ASTSource(fn, sig, constexprs=consts)
        module = src.make_ir(target, opts, backend.get_codegen_implementation(opts), backend.get_module_map(), ctx)
        assert "tt.func" in str(module)


def test_kernels_are_off_where_they_do_not_apply() -> None:
    from pmnet.model import triton_read as tr

    assert not tr.available(torch.zeros(2, 4, 8, dtype=torch.bfloat16))  # CPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(4099, 4, 4, 1024), (1000, 4, 4, 256), (333, 3, 3, 40)])
def test_kernels_close_to_fp64(shape: tuple[int, int, int, int], dtype: torch.dtype) -> None:
    from pmnet.model import triton_read as tr

    p, r, n, f = shape
    torch.manual_seed(0)
    dev = torch.device("cuda")
    s = (torch.randn(p, r, n, device=dev) * 8).requires_grad_()
    feats = torch.sin(torch.randn(p, n, f, device=dev) * 3).to(dtype).requires_grad_()
    scale = 1.0 / (f // 2) ** 0.5
    g, a = tr.softmax_weighted(s, feats, scale)
    rg, ra = tr.softmax_weighted_reference(s.double(), feats.double(), scale)
    dout = torch.randn_like(g)
    ds, df = torch.autograd.grad(g, (s, feats), dout)
    rs, rf = torch.autograd.grad(rg, (s, feats), dout.double())
    assert g.dtype == df.dtype == dtype and ds.dtype == torch.float32
    ulp = 2**-8 if dtype == torch.bfloat16 else 1e-6  # bf16 outputs: rounded once
    assert (a.double() - ra).abs().max() < 1e-6
    assert (g.double() - rg).abs().max() <= ulp * 1.01
    assert (df.double() - rf).abs().max() <= ulp * 2 * (1 + rf.abs().max())
    # d s sums dg . f over F in fp32 from the same (bf16-exact) inputs as the fp64 reference
    assert (ds.double() - rs).abs().max() < 1e-4 * (1 + rs.abs().max())


@pytest.mark.gpu
def test_compiled_read_same_with_and_without_kernel() -> None:
    from pmnet.model import triton_read
    from tests.model.model_helpers import build, random_ids, tiny_cfg

    model = build(tiny_cfg(attn_backend="flex"), sharpen=2.0).cuda().to(torch.bfloat16)
    ids = random_ids(2, 256).cuda()
    losses = []
    for enabled in (False, True):
        triton_read.set_enabled(enabled)
        try:
            model.compile_memory_cores(True)
            logits, _ = model(ids)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())
            grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
            losses.append((loss.item(), torch.cat([g.float().flatten() for g in grads])))
        finally:
            model.compile_memory_cores(False)
            triton_read.set_enabled(True)
    (l0, g0), (l1, g1) = losses
    assert abs(l0 - l1) < 1e-2 * abs(l0)
    cos = torch.nn.functional.cosine_similarity(g0, g1, dim=0)
    assert cos > 0.99, float(cos)
