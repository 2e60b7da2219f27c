"""ZeRO 1 (bf16), 2 (activation checkpointing) and 3 on 2 CPU ranks through launchers/pretrain.sh:
the loss falls (K=1 and K=4 TBPTT), and the TensorBoard events hold every scalar the trainer promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.conftest import (
    base_overrides,
    free_port,
    launch_env,
    pretrain_cmd,
    read_run_info,
    read_scalars,
    run_launch,
)

FAMILIES = ("attention", "mlp", "memory_write", "memory_read", "anchors", "embedding", "norms")
EXPECTED = [
    "train/loss", "train/bpb", "train/lr", "train/grad_norm", "train/bytes_seen", "train/skipped_steps",
    "train/loss_vs_bytes", "train/bpb_vs_bytes", "perf/bytes_per_s", "perf/step_time_s", "perf/data_wait_share",
    "perf/mfu", "perf/cpu_rss_gb", "eval/bpb", "eval/loss", "eval/bpb_vs_bytes",
    *(f"grad_norm/{f}" for f in FAMILIES),
    *(f"memory/level{k}/{m}" for k in (0, 1) for m in ("routing_entropy", "groups_used", "phase_increment")),
]  # fmt: skip


def _mean(points: list[tuple[int, float]]) -> float:
    return sum(v for _, v in points) / len(points)


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    ("stage", "chunks", "extra"),
    [(1, 1, {"train__precision": "bf16"}), (2, 4, {"train__activation_checkpointing": True}), (3, 4, {})],
    ids=["zero1-K1-bf16", "zero2-K4-actckpt", "zero3-K4"],
)
def test_zero_stage_trains_on_two_cpu_ranks(shards: Path, tmp_path: Path, stage: int, chunks: int, extra: dict) -> None:
    steps = 16
    ov = base_overrides(
        shards, tmp_path, f"z{stage}", **extra,
        deepspeed__zero_stage=stage, train__tbptt_chunks=chunks, train__max_steps=steps,
        eval__interval=8, logging__memory_diagnostics_interval=4, logging__peak_tflops=0.05,
    )  # fmt: skip
    port, ext = free_port(), tmp_path / "torch_extensions"
    res = run_launch(pretrain_cmd("configs/demo.yaml", ov, "--cpu-ranks", "2", "--master-port", str(port)),
                     launch_env(TORCH_EXTENSIONS_DIR=str(ext)))  # fmt: skip
    assert res.rc == 0, res.explain()
    # DeepSpeed's shared-memory all-reduce op is neither built nor left in /dev/shm (docs/dependencies.md section 2)
    assert not (ext.exists() and any(ext.rglob("*shm*"))), sorted(ext.rglob("*"))
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer*{port}*"))
    run = tmp_path / f"z{stage}"
    scalars = read_scalars(run / "tb")
    loss = scalars["train/loss"]
    assert [s for s, _ in loss] == list(range(1, steps + 1))
    first, last = _mean(loss[:3]), _mean(loss[-3:])
    assert last < first - 0.3, f"ZeRO-{stage} K={chunks}: loss did not fall ({first:.3f} -> {last:.3f})"
    evals = scalars["eval/bpb"]
    assert len(evals) == 2 and evals[-1][1] < evals[0][1] + 0.05
    assert scalars["train/skipped_steps"][-1][1] == 0
    # the family norms add up to the global pre-clip norm DeepSpeed computed
    step1 = {f: dict(scalars[f"grad_norm/{f}"])[1] for f in FAMILIES}
    global1 = dict(scalars["train/grad_norm"])[1]
    assert abs(sum(v * v for v in step1.values()) ** 0.5 - global1) < 1e-3 * global1 + 1e-6
    if stage == 2:  # one run checks the whole list (the list does not depend on the stage)
        missing = [t for t in EXPECTED if t not in scalars]
        assert not missing, f"missing TensorBoard scalars: {missing}"
        assert "perf/gpu_mem_gb" not in scalars  # CPU run: resident memory instead
        # the start-up time and its parts, once (a fresh run: no resume phase), adding up to it
        parts = {t: v for t, v in scalars.items() if t.startswith("perf/startup/")}
        names = (
            "launch",
            "pre_flight",
            "imports",
            "process_group",
            "model",
            "checkpoint_scan",
            "engine",
            "data",
            "matmul_peak",
            "first_step",
        )
        assert sorted(parts) == sorted(f"perf/startup/{n}_s" for n in names), sorted(parts)
        assert all(len(v) == 1 and v[0][1] >= 0 for v in parts.values()), parts
        total = scalars["perf/startup_s"][0][1]
        assert abs(sum(v[0][1] for v in parts.values()) - total) < 0.05 * total, (parts, total)
        assert scalars["train/bytes_seen"][-1][1] == steps * 8 * 128
        config_text, hparams = read_run_info(run / "tb")
        assert "zero_stage: 2" in config_text and "tbptt_chunks: 4" in config_text
        assert hparams["deepspeed.zero_stage"] == 2 and hparams["train.tbptt_chunks"] == 4
        assert hparams["world_size"] == 2 and hparams["optim.schedule"] == "cosine"
    assert (run / "checkpoints" / f"step_{steps:08d}" / "manifest.json").is_file()
    assert "training ended (finished)" in (run / "train.log").read_text()
