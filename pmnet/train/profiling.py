"""``logging.profile_at_step``: torch.profiler over a few real optimizer steps of a run.

The training step as the user runs it (DeepSpeed engine, accumulation, ZeRO hooks, data,
optimizer), not a bare forward/backward: the place to find what the trainer adds on top of
the model. On the main rank only; the others run unprofiled. Writes, under
``<run_dir>/profile/``:

* ``steps_A-B.txt``: device time by kernel family (GEMM, Triton, flex, ...), then the top
  operators and kernels by self device time (CPU time where there is no device);
* ``trace_steps_A-B.json`` (``logging.profile_trace``): a Chrome / Perfetto trace.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pmnet.train.loop import Hook
from pmnet.train.metrics import LOG

if TYPE_CHECKING:
    from pmnet.config import Config
    from pmnet.train.distributed import DistEnv
    from pmnet.train.loop import StepStats, Trainer


FAMILIES = {
    "gemm (cuBLAS/CUTLASS)": ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas"),
    "flex attention": ("flex", "_tem_"),
    "phase-score kernels (triton_scores)": ("_scores_fwd_kernel", "_scores_bwd_kernel"),
    "phase scan kernel (triton_scan)": ("_scan_kernel",),
    "triton (inductor fused)": ("triton",),
    "sort/scan/gather (aten)": ("sort", "scan", "gather", "scatter", "index", "embedding"),
    "copies/fill": ("copy", "fill", "memcpy", "memset", "cat"),
    "communication (NCCL/gloo)": ("nccl", "gloo", "all_reduce", "allreduce", "reduce_scatter", "all_gather"),
}
OTHER = "other aten elementwise/reduce"


def device_time_by_family(
    events: Any, steps: int, attr: str = "self_device_time_total", wall_s: float | None = None
) -> str:
    """Self time of profiler events (``key_averages()``) summed by kernel family, as comment lines.

    Device time counts the device's own events only (kernels, copies): an operator's row
    (``aten::mm``) also carries the device time of the kernels it launched, and a Triton
    kernel has a host-side launch row of the same name, so summing every row counted most
    of the time twice; so did the device-side spans inductor annotates each compiled graph's
    kernels with when shapes are recorded (``## Call CompiledFxGraph``). ``wall_s``: the
    profiled steps' wall time, for the device's busy share.
    """
    from torch.autograd import DeviceType

    device = "device" in attr
    totals: dict[str, float] = {k: 0.0 for k in [*FAMILIES, OTHER]}
    for e in events:
        if device and getattr(e, "device_type", DeviceType.CUDA) == DeviceType.CPU:
            continue
        if e.key.startswith("## "):  # a span over other kernels (inductor's "## Call CompiledFxGraph ...")
            continue
        name = e.key.lower()
        fam = next((f for f, keys in FAMILIES.items() if any(k in name for k in keys)), OTHER)
        totals[fam] += float(getattr(e, attr, 0.0) or 0.0)
    total = sum(totals.values()) or 1.0
    what = "GPU" if device else "CPU"
    per_step = total / 1e3 / max(1, steps)
    lines = [f"# {what} time by family ({steps} steps, {total / 1e3:.1f} ms, {per_step:.1f} ms/step):"]
    if wall_s:
        wall = wall_s * 1e3 / max(1, steps)
        lines[0] += f" wall {wall:.1f} ms/step (profiler on), {what} busy {per_step / wall:.0%}"
    lines += [
        f"#   {k:<36} {v / 1e3:9.1f} ms {v / total:6.1%}" for k, v in sorted(totals.items(), key=lambda kv: -kv[1])
    ]
    return "\n".join(lines)


class ProfilerHook(Hook):
    """Profiles optimizer steps ``profile_at_step`` .. ``profile_at_step + profile_steps - 1``."""

    def __init__(self, cfg: Config, env: DistEnv, run_dir: Path) -> None:
        lc = cfg.logging
        self.first, self.count, self.trace = lc.profile_at_step, lc.profile_steps, lc.profile_trace
        self.shapes = lc.profile_shapes
        self.last = self.first + self.count - 1
        self.enabled = self.first > 0 and env.is_main
        self.out_dir = run_dir / "profile"
        self.cuda = env.device.type == "cuda"
        self._prof: Any = None
        self._t0 = 0.0

    def on_train_start(self, trainer: Trainer) -> None:
        if self.enabled and trainer.state.step >= self.first:
            LOG.info(
                f"logging.profile_at_step={self.first}: the run resumes at step {trainer.state.step}, not profiled"
            )
            self.enabled = False

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        """``step``: the 1-based number of the step about to run."""
        if not self.enabled or step != self.first:
            return
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self._prof = profile(activities=acts, record_shapes=self.shapes)
        self._prof.__enter__()
        self._t0 = time.perf_counter()

    def on_step_end(self, trainer: Trainer, stats: StepStats) -> None:
        if self._prof is not None and stats.step >= self.last:
            self._finish(stats.step)

    def on_train_end(self, trainer: Trainer, reason: str) -> None:
        if self._prof is not None:  # stopped early (signal, stop_at_step): write what was profiled
            self._finish(trainer.state.step)

    def _finish(self, step: int) -> None:
        prof, self._prof = self._prof, None
        if self.cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - self._t0
        prof.__exit__(None, None, None)
        steps = step - self.first + 1
        tag = f"steps_{self.first}-{step}"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        events = prof.key_averages()
        attr = "self_device_time_total" if self.cuda else "self_cpu_time_total"
        table = events.table(sort_by=attr, row_limit=240, max_name_column_width=100)
        head = f"# torch.profiler over optimizer steps {self.first}-{step} of the run (main rank)"
        text = f"{head}\n{device_time_by_family(events, steps, attr, wall)}\n{table}\n"
        (self.out_dir / f"{tag}.txt").write_text(text)
        if self.shapes:  # which call of an operator costs: aten::add_ on [8, 8192, 768] vs on a bucket
            by_shape = prof.key_averages(group_by_input_shape=True)
            table = by_shape.table(sort_by=attr, row_limit=120, max_name_column_width=60, max_shapes_column_width=90)
            (self.out_dir / f"shapes_{tag}.txt").write_text(f"{head}, grouped by input shapes\n{table}\n")
        if self.trace:
            prof.export_chrome_trace(str(self.out_dir / f"trace_{tag}.json"))
        LOG.info(f"profile of steps {self.first}-{step} written to {self.out_dir / (tag + '.txt')}")
