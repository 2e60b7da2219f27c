"""``logging.profile_at_step``: a real run writes a profile of exactly the steps asked for, and
the trainer's numbers are unchanged by it; bad values are one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.train.conftest import REPO, base_overrides, launch_env, read_scalars


def _train(ov: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pmnet.train", "configs/demo.yaml", *ov], cwd=REPO,
                          env=launch_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=900)  # fmt: skip


def test_profile_of_chosen_steps(shards: Path, tmp_path: Path) -> None:
    common = dict(train__max_steps=4, deepspeed__zero_stage=2)
    plain = _train(base_overrides(shards, tmp_path, "plain", **common))
    assert plain.returncode == 0, plain.stderr[-3000:]
    ov = base_overrides(shards, tmp_path, "prof", logging__profile_at_step=2, logging__profile_steps=2,
                        logging__profile_trace="true", logging__profile_shapes="true", **common)  # fmt: skip
    p = _train(ov)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    prof_dir = tmp_path / "prof" / "profile"
    names = ["shapes_steps_2-3.txt", "steps_2-3.txt", "trace_steps_2-3.json"]
    assert sorted(f.name for f in prof_dir.iterdir()) == names
    text = (prof_dir / "steps_2-3.txt").read_text()
    assert "optimizer steps 2-3" in text and "CPU time by family (2 steps" in text
    assert "aten::" in text  # the operator table
    shapes = (prof_dir / "shapes_steps_2-3.txt").read_text()
    assert "Input Shapes" in shapes and re.search(r"aten::\S+.*\[\d+, \d+", shapes), shapes[:3000]
    # profiling observes; the run itself is the same (fp32 CPU: identical losses)
    loss = "train/loss"
    assert read_scalars(tmp_path / "prof" / "tb")[loss] == read_scalars(tmp_path / "plain" / "tb")[loss]


def test_bad_profile_settings_are_one_line_errors(shards: Path, tmp_path: Path) -> None:
    p = _train(base_overrides(shards, tmp_path, "bad", logging__profile_steps=0, logging__profile_at_step=1))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "logging.profile_steps=0" in errors[0], p.stderr[-2000:]


def test_kernel_families() -> None:
    """Profiler names land in the right family: aten's ``..._elementwise_kernel`` is not Triton,
    the phase-score and scan kernels are counted apart from inductor's and aten's."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from pmnet.train.profiling import device_time_by_family

    names = {
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>": 1000.0,
        "_scores_bwd_kernel": 2000.0,
        "_scores_fwd_kernel": 500.0,
        "_scan_kernel": 1500.0,
        "triton_poi_fused_add_cos_0": 3000.0,
        "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT": 4000.0,
    }
    events = [SimpleNamespace(key=k, self_device_time_total=v, device_type=DeviceType.CUDA) for k, v in names.items()]
    # host-side rows carry the device time of what they launched: counting them doubled the total
    events += [
        SimpleNamespace(key="aten::mm", self_device_time_total=4000.0, device_type=DeviceType.CPU),
        SimpleNamespace(key="triton_poi_fused_add_cos_0", self_device_time_total=3000.0, device_type=DeviceType.CPU),
    ]
    # with record_shapes, inductor's span over a compiled graph's kernels is a device row of its own
    span = "## Call CompiledFxGraph fwao6wpzra6ezhjppxnzvx2hegqd6qhpv ##"
    events += [SimpleNamespace(key=span, self_device_time_total=5000.0, device_type=DeviceType.CUDA)]
    text = device_time_by_family(events, 1, wall_s=0.021)
    assert "12.0 ms/step" in text.splitlines()[0] and "busy 57%" in text.splitlines()[0], text
    rows = [re.match(r"#\s+(.+?)\s+([\d.]+) ms", ln) for ln in text.splitlines()[1:]]
    ms = {m.group(1): float(m.group(2)) for m in rows if m}
    assert ms["phase-score kernels (triton_scores)"] == 2.5
    assert ms["phase scan kernel (triton_scan)"] == 1.5
    assert ms["sort/scan/gather (aten)"] == 0.0
    assert ms["triton (inductor fused)"] == 3.0
    assert ms["other aten elementwise/reduce"] == 1.0
    assert ms["gemm (cuBLAS/CUTLASS)"] == 4.0
