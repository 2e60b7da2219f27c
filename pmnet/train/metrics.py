"""What a run reports: TensorBoard scalars and a console progress line (rank 0), the run's log file.

Tags (x axis = optimizer step unless the tag ends in ``_vs_bytes``, whose x axis is bytes seen):

* ``train/loss``, ``train/bpb``, ``train/lr``, ``train/grad_norm`` (pre-clip, global),
  ``train/bytes_seen``, ``train/skipped_steps``, ``train/loss_vs_bytes``, ``train/bpb_vs_bytes``
* ``grad_norm/<family>`` for attention, mlp, memory_write, memory_read, anchors, embedding, norms
* ``perf/bytes_per_s``, ``perf/step_time_s``, ``perf/data_wait_share``, ``perf/mfu``
  (only with a peak: given in config, or measured at start on GPU), ``perf/gpu_mem_gb`` and
  ``perf/gpu_mem_reserved_gb`` on GPU, ``perf/cpu_rss_gb`` on CPU
* ``perf/startup_s`` (process start -> first step done) and ``perf/startup/<phase>_s`` (its
  parts, ``pmnet.train.startup.StartupClock``), once per start
* ``memory/level{k}/{routing_entropy,groups_used,phase_increment}`` (model diagnostics)
* ``eval/loss``, ``eval/bpb``, ``eval/bpb_vs_bytes``
"""

from __future__ import annotations

import logging
import math
import resource
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MetricsWriter",
    "compile_summary",
    "measure_peak_tflops",
    "memory_scalars",
    "setup_logging",
    "format_duration",
]

LOG = logging.getLogger("pmnet.train")


def setup_logging(run_dir: Path | None, is_main: bool, rank: int) -> logging.Logger:
    """Rank 0: INFO to stdout and to ``<run_dir>/train.log``; other ranks: warnings to stderr."""
    LOG.handlers.clear()
    LOG.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    if is_main:
        LOG.setLevel(logging.INFO)
        out = logging.StreamHandler(sys.stdout)
        out.setFormatter(logging.Formatter("%(message)s"))
        LOG.addHandler(out)
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
            fh.setFormatter(fmt)
            LOG.addHandler(fh)
    else:
        LOG.setLevel(logging.WARNING)
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s"))
        LOG.addHandler(err)
    return LOG


def format_duration(seconds: float) -> str:
    """``1h02m``, ``4m05s`` or ``12s``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def memory_scalars(device: torch.device) -> dict[str, float]:
    """Peak device memory on GPU (reset after reading), peak resident memory on CPU, in GB."""
    if device.type == "cuda":
        out = {
            "perf/gpu_mem_gb": torch.cuda.max_memory_allocated(device) / 1e9,
            "perf/gpu_mem_reserved_gb": torch.cuda.max_memory_reserved(device) / 1e9,
        }
        torch.cuda.reset_peak_memory_stats(device)
        return out
    return {"perf/cpu_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def measure_matmul_flops(
    device: torch.device, dtype: torch.dtype = torch.bfloat16, n: int = 8192, iters: int = 20
) -> float:
    """Dense n^3 matmul FLOP/s on a GPU: the median of CUDA-event-timed repeats (0.0 off CUDA)."""
    if device.type != "cuda":
        return 0.0
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end) / 1e3)
    del a, b
    return 2 * n**3 / statistics.median(times)


def measure_peak_tflops(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """Dense matmul throughput of this GPU (TFLOP/s), the MFU denominator when none is configured."""
    if device.type != "cuda":
        return None
    return measure_matmul_flops(device, dtype) / 1e12


def compile_summary(top: int = 8, min_s: float = 0.05) -> str | None:
    """torch.compile's time so far in this process, its ``top`` largest entries of at least
    ``min_s`` (nested: the first is usually the total, ``_compile.compile_inner``), or None when
    nothing was compiled.

    On a start with a warm compile cache this says what the first step still pays (tracing, cache
    keys, loading graphs) without a profiler. Reads dynamo's own counters, a private API: any
    failure there gives None rather than an error in a training run.
    """
    try:
        from torch._dynamo.utils import compile_times

        names, values = compile_times(repr="csv", aggregate=True)
        pairs = sorted(((float(str(v)), str(n)) for n, v in zip(names, values, strict=True)), reverse=True)
    except Exception:  # diagnostics only
        return None
    pairs = [(v, n) for v, n in pairs if v >= min_s]
    return ", ".join(f"{n} {v:.1f} s" for v, n in pairs[:top]) or None


class MetricsWriter:
    """TensorBoard events (rank 0 only; other ranks get a writer that does nothing)."""

    def __init__(self, log_dir: Path | None, enabled: bool) -> None:
        self._tb: Any = None
        if enabled and log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(log_dir), flush_secs=10)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Write each finite-or-not scalar at ``step`` (NaN is written as NaN so a bad step shows)."""
        if self._tb is None:
            return
        for tag, value in values.items():
            self._tb.add_scalar(tag, float(value), global_step=step)

    def text(self, tag: str, text: str) -> None:
        """A text entry (the resolved config, once per run)."""
        if self._tb is not None:
            self._tb.add_text(tag, f"```\n{text}\n```", global_step=0)

    def hparams(self, params: dict[str, Any], metrics: list[str]) -> None:
        """The run's hyperparameters for TensorBoard's HParams tab, in this run's own event file.

        ``metrics`` name scalar tags of the run (their values are read from the run itself).
        ``SummaryWriter.add_hparams`` would write a second run in a sub-directory instead.
        """
        if self._tb is None:
            return
        from torch.utils.tensorboard.summary import hparams

        clean = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in params.items()}
        writer = self._tb._get_file_writer()
        for summary in hparams(clean, dict.fromkeys(metrics, 0.0)):
            writer.add_summary(summary)

    def flush(self) -> None:
        """Push buffered events to disk."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and close."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def progress_line(
    step: int, max_steps: int, loss: float, lr: float, grad_norm: float, bytes_per_s: float,
    step_time: float, data_share: float, skipped: int, mfu: float | None, eta_s: float,
) -> str:  # fmt: skip
    """The one-line console progress of rank 0."""
    mfu_text = f" | mfu {100 * mfu:5.1f}%" if mfu is not None else ""
    rate = f"{bytes_per_s / 1e6:.2f} MB/s" if bytes_per_s >= 1e6 else f"{bytes_per_s / 1e3:.1f} kB/s"
    return (
        f"step {step:>6}/{max_steps} | loss {loss:.4f} | bpb {loss / math.log(2):.4f} | lr {lr:.2e} "
        f"| gnorm {grad_norm:.3f} | {rate}{mfu_text} | {step_time:.3f} s/step | data {100 * data_share:.0f}% "
        f"| skipped {skipped} | eta {format_duration(eta_s)}"
    )
