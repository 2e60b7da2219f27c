"""Side concerns of the loop as hooks: metrics (TensorBoard + console), validation BPB, checkpoints.

Each is a :class:`~pmnet.train.loop.Hook` (``on_train_start``, ``on_step_start``, ``on_step_end``,
``on_train_end``; no-ops unless overridden); the loop body does not know about any of them. Collective work (eval forwards, checkpoint writes) runs on every
rank at the same step; only rank 0 writes TensorBoard and the console.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pmnet.config import Config, dump_config
from pmnet.train.distributed import DistEnv, all_reduce_sum
from pmnet.train.loop import Hook, StepStats, Trainer
from pmnet.train.metrics import (
    LOG,
    MetricsWriter,
    compile_summary,
    format_duration,
    memory_scalars,
    progress_line,
)
from pmnet.train.startup import StartupClock

__all__ = ["CheckpointHook", "EvalHook", "MetricsHook"]

LN2 = math.log(2)


def hyperparameters(cfg: Config, world_size: int) -> dict[str, Any]:
    """The settings that tell runs apart, flat (``section.key``), for TensorBoard's HParams tab."""
    m, t, o = cfg.model, cfg.train, cfg.optim
    return {
        "model.parameters": m.num_parameters(),
        "model.hidden_size": m.hidden_size, "model.num_hidden_layers": m.num_hidden_layers,
        "model.sliding_window": m.sliding_window, "model.use_memory": m.use_memory,
        "model.memory_cumsum": m.memory_cumsum, "model.attention_dropout": m.attention_dropout,
        "data.sample_bytes": cfg.data.sample_bytes, "train.tbptt_chunks": t.tbptt_chunks,
        "train.global_batch_size": t.global_batch_size, "train.micro_batch_size": t.micro_batch_size,
        "train.max_steps": t.max_steps, "train.precision": t.precision, "train.seed": t.seed,
        "optim.lr": o.lr, "optim.schedule": o.schedule, "optim.warmup_steps": o.warmup_steps,
        "optim.weight_decay": o.weight_decay, "deepspeed.zero_stage": cfg.deepspeed.zero_stage,
        "world_size": world_size,
    }  # fmt: skip


class MetricsHook(Hook):
    """Scalars to TensorBoard every ``log_interval`` steps and a progress line every ``console_interval``."""

    def __init__(
        self,
        cfg: Config,
        env: DistEnv,
        writer: MetricsWriter,
        peak_tflops: float | None,
        clock: StartupClock | None = None,
    ) -> None:
        self.cfg, self.env, self.writer, self.peak = cfg, env, writer, peak_tflops
        self.clock = clock or StartupClock()
        self.flops_per_byte = cfg.model.flops_per_byte(cfg.tbptt_chunk_bytes(), training=True)
        self._reset_window()
        self._skipped_logged = -1

    def _reset_window(self) -> None:
        self.w_steps, self.w_bytes, self.w_time, self.w_data = 0, 0, 0.0, 0.0

    def on_train_start(self, trainer: Trainer) -> None:
        """Say what is about to run."""
        self.t_start = time.perf_counter()
        self.start_step = trainer.state.step
        self.writer.text("config", dump_config(self.cfg))
        self.writer.hparams(hyperparameters(self.cfg, self.env.world_size), ["train/bpb", "eval/bpb"])
        peak = f"{self.peak:.1f} TFLOP/s per device" if self.peak else "none (MFU not logged)"
        LOG.info(
            f"training {self.cfg.model.num_parameters():,} parameters, {self.flops_per_byte:.3g} training FLOPs/byte, "
            f"{self.env.world_size} rank(s) on {self.env.num_nodes} node(s), device {self.env.device.type}, "
            f"ZeRO-{self.cfg.deepspeed.zero_stage}, {self.cfg.train.precision}, K={self.cfg.train.tbptt_chunks}, "
            f"peak {peak}; steps {trainer.state.step} -> {self.cfg.train.max_steps}"
        )

    def on_step_end(self, trainer: Trainer, stats: StepStats) -> None:
        """Accumulate the timing window; write scalars and the console line on their intervals."""
        if self.w_steps == 0 and stats.step == self.start_step + 1:
            # process start -> first step done: imports, engine, data, checkpoint load and compilation
            self.clock.mark("first step")
            startup = self.clock.total()
            LOG.info(f"first step done {startup:.1f} s after the process started ({self.clock.summary()})")
            self.writer.scalars({"perf/startup_s": startup, **self.clock.scalars()}, stats.step)
            if self.cfg.train.compile and (compiled := compile_summary()):
                LOG.info(f"torch.compile in this process so far: {compiled}")
        self.w_steps += 1
        self.w_bytes += stats.bytes
        self.w_time += stats.step_time
        self.w_data += stats.data_time
        st = trainer.state
        lg = self.cfg.logging
        if st.skipped_steps != self._skipped_logged:  # a skip shows at its own step
            self.writer.scalars({"train/skipped_steps": st.skipped_steps}, stats.step)
            self._skipped_logged = st.skipped_steps
        log_now = stats.step % lg.log_interval == 0 or stats.step == 1 or stats.stop_requested
        console_now = stats.step % lg.console_interval == 0 or stats.step == 1 or stats.stop_requested
        if not (log_now or console_now):
            return
        rate = self.w_bytes / max(self.w_time, 1e-9)
        per_step = self.w_time / max(self.w_steps, 1)
        data_share = self.w_data / max(self.w_time, 1e-9)
        mfu = self.flops_per_byte * rate / (self.peak * 1e12 * self.env.world_size) if self.peak else None
        if log_now:
            values = {
                "train/loss": stats.loss,
                "train/bpb": stats.loss / LN2,
                "train/lr": stats.lr,
                "train/grad_norm": stats.grad_norm,
                "train/bytes_seen": st.bytes_seen,
                "train/skipped_steps": st.skipped_steps,
                "perf/bytes_per_s": rate,
                "perf/step_time_s": per_step,
                "perf/data_wait_share": data_share,
                **memory_scalars(self.env.device),
                **{f"grad_norm/{k}": v for k, v in stats.family_norms.items()},
                **stats.diagnostics,
            }
            if mfu is not None:
                values["perf/mfu"] = mfu
            self.writer.scalars(values, stats.step)
            self.writer.scalars(
                {"train/loss_vs_bytes": stats.loss, "train/bpb_vs_bytes": stats.loss / LN2}, st.bytes_seen
            )
        if console_now:
            eta = (self.cfg.train.max_steps - stats.step) * per_step
            LOG.info(
                progress_line(
                    stats.step,
                    self.cfg.train.max_steps,
                    stats.loss,
                    stats.lr,
                    stats.grad_norm,
                    rate,
                    per_step,
                    data_share,
                    st.skipped_steps,
                    mfu,
                    eta,
                )  # fmt: skip
            )
        self._reset_window()

    def on_train_end(self, trainer: Trainer, reason: str) -> None:
        """Flush the events; a closing line with the wall time."""
        took = time.perf_counter() - self.t_start
        LOG.info(f"training ended ({reason}) at step {trainer.state.step} after {format_duration(took)}")
        self.writer.flush()


class EvalHook(Hook):
    """Validation BPB every ``eval.interval`` steps and at the end, on the same val batches each time."""

    def __init__(self, cfg: Config, env: DistEnv, writer: MetricsWriter, make_loader: Any) -> None:
        self.cfg, self.env, self.writer, self.make_loader = cfg, env, writer, make_loader
        self._batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._last_step = -1

    def on_train_start(self, trainer: Trainer) -> None:
        """Read the val batches now: a broken val split fails at start, not at the first eval."""
        self._val_batches()

    def _val_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._batches is None:
            loader = self.make_loader()
            batches = []
            for batch in loader:  # kept as bytes (ids < 256): a few MB even for 8 KiB samples
                batches.append((batch["input_ids"].to(torch.uint8), batch["targets"].to(torch.uint8)))
                if len(batches) >= self.cfg.eval.max_batches:
                    break
            self._batches = batches
        return self._batches

    @torch.no_grad()
    def evaluate(self, trainer: Trainer) -> float:
        """Mean BPB over the val batches of all ranks (state carried over the K chunks, as in training)."""
        engine, dev = trainer.engine, self.env.device
        engine.eval()
        nll = torch.zeros((), dtype=torch.float64, device=dev)
        count = torch.zeros((), dtype=torch.float64, device=dev)
        try:
            for ids_u8, tgt_u8 in self._val_batches():
                ids, tgt = ids_u8.to(dev).long(), tgt_u8.to(dev).long()
                state = None
                for k in range(trainer.chunks):
                    cols = slice(k * trainer.chunk_len, (k + 1) * trainer.chunk_len)
                    logits, state = engine(ids[:, cols], state=state)
                    t = tgt[:, cols].reshape(-1)
                    pad = self.cfg.model.pad_token_id
                    nll += F.cross_entropy(logits.float().reshape(t.numel(), -1), t, ignore_index=pad, reduction="sum")
                    count += (t != pad).sum()
        finally:
            engine.train()
        total_nll, total_count = all_reduce_sum([float(nll), float(count)], dev)
        return total_nll / max(total_count, 1.0) / LN2

    def _run(self, trainer: Trainer) -> None:
        step = trainer.state.step
        if step == self._last_step:
            return
        self._last_step = step
        t0 = time.perf_counter()
        bpb = self.evaluate(trainer)
        self.writer.scalars({"eval/bpb": bpb, "eval/loss": bpb * LN2}, step)
        self.writer.scalars({"eval/bpb_vs_bytes": bpb}, trainer.state.bytes_seen)
        LOG.info(f"eval at step {step}: val bpb {bpb:.4f} ({time.perf_counter() - t0:.1f} s)")

    def on_step_end(self, trainer: Trainer, stats: StepStats) -> None:
        if self.cfg.eval.interval > 0 and stats.step % self.cfg.eval.interval == 0:
            self._run(trainer)

    def on_train_end(self, trainer: Trainer, reason: str) -> None:
        if self.cfg.eval.interval > 0 and reason in ("finished", "stop_at_step"):
            self._run(trainer)


class CheckpointHook(Hook):
    """Checkpoint every ``checkpoint.interval`` steps, at the end, on a signal and before a skip-stop."""

    def __init__(self, cfg: Config, env: DistEnv, run_dir: Path) -> None:
        self.cfg, self.env, self.run_dir = cfg, env, run_dir
        self._saved_step = -1

    def on_train_start(self, trainer: Trainer) -> None:
        self._saved_step = trainer.state.step  # a resumed run does not rewrite the checkpoint it came from

    def save(self, trainer: Trainer) -> None:
        """One collective checkpoint write (all ranks)."""
        from pmnet.train.checkpoint import save_checkpoint

        step = trainer.state.step
        if step == self._saved_step:
            return
        t0 = time.perf_counter()
        c = self.cfg.checkpoint
        path = save_checkpoint(
            trainer.engine,
            self.run_dir,
            step,
            trainer_state=trainer.trainer_state(),
            dataloader_state=trainer.dataloader_state(),
            config=self.cfg,
            keep_last=c.keep_last,
            keep_every=c.keep_every,
        )
        self._saved_step = step
        LOG.info(f"checkpoint saved: {path} ({time.perf_counter() - t0:.1f} s)")

    def on_step_end(self, trainer: Trainer, stats: StepStats) -> None:
        interval = self.cfg.checkpoint.interval
        if interval > 0 and stats.step % interval == 0:
            self.save(trainer)

    def on_train_end(self, trainer: Trainer, reason: str) -> None:
        if reason != "finished" or self.cfg.checkpoint.save_at_end:
            self.save(trainer)
