"""The optimizer-step loop: truncated BPTT over micro-batches, agreement on skips and stops, hooks.

One optimizer step = ``accumulation`` micro-batches per rank, each fed as K chunks of T
bytes (``sample_bytes - 1 = K x T``). Every chunk is a DeepSpeed micro-step (forward,
backward, ``engine.step()``); the model state is carried between the chunks of a sample and
detached at each boundary. DeepSpeed applies the optimizer only at the last chunk of the
last micro-batch.

Agreement between ranks (all from all-reduced flags, so every rank takes the same branch):
a step is skipped when a loss or gradient was non-finite on any rank; the run stops at a
step boundary when any rank got SIGTERM / SIGUSR1.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from pmnet.checkpoint.version import code_version
from pmnet.config import Config
from pmnet.model import lm_loss
from pmnet.train.checkpoint import restore_rng_state
from pmnet.train.distributed import DistEnv, all_reduce_sum
from pmnet.train.engine import GuardedAdamW, accumulation_steps, lr_at, set_lr
from pmnet.train.grad_norms import family_grad_norms
from pmnet.train.metrics import LOG

__all__ = ["Hook", "StepStats", "TrainState", "Trainer", "EXIT_OK", "EXIT_TOO_MANY_SKIPS"]

EXIT_OK = 0
EXIT_TOO_MANY_SKIPS = 3


@dataclass
class TrainState:
    """Counters that make a run resumable (saved in every checkpoint as ``trainer_state``)."""

    step: int = 0
    bytes_seen: int = 0
    samples_seen: int = 0
    skipped_steps: int = 0
    consecutive_skips: int = 0
    last_loss: float = float("nan")

    def load(self, saved: dict[str, Any]) -> None:
        """Take the counters from a checkpoint's trainer_state."""
        for key in asdict(self):
            if key in saved:
                setattr(self, key, type(getattr(self, key))(saved[key]))


@dataclass
class StepStats:
    """What one optimizer step measured (identical on all ranks except the timings)."""

    step: int
    loss: float
    lr: float
    grad_norm: float
    skipped: bool
    bytes: int
    step_time: float
    data_time: float
    family_norms: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, float] = field(default_factory=dict)
    stop_requested: bool = False


class Hook:
    """A side concern (metrics, eval, checkpoints, a test's fault) called at fixed points of the loop.

    Subclasses override what they need; every method does nothing by default. Hooks run in list
    order at each point, on every rank (a hook doing collective work must do it on all ranks).
    """

    def on_train_start(self, trainer: Trainer) -> None:
        """Once, after set-up and any resume, before the first step."""

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        """Before optimizer step ``step`` (1-based) runs."""

    def on_step_end(self, trainer: Trainer, stats: StepStats) -> None:
        """After a step is taken (or skipped) and counted in ``trainer.state``."""

    def on_train_end(self, trainer: Trainer, reason: str) -> None:
        """Once at the end: ``reason`` is finished, stop_at_step, signal or too_many_skips."""


class Trainer:
    """Runs optimizer steps on a DeepSpeed engine and calls the hooks around them."""

    def __init__(
        self,
        cfg: Config,
        env: DistEnv,
        engine: Any,
        optimizer: GuardedAdamW,
        loader: Any,
        hooks: list[Hook],
    ) -> None:
        self.cfg, self.env, self.engine, self.optimizer, self.loader = cfg, env, engine, optimizer, loader
        self.hooks = hooks
        self.state = TrainState()
        self.accumulation = accumulation_steps(cfg, env.world_size)
        self.chunks = cfg.train.tbptt_chunks
        self.chunk_len = cfg.tbptt_chunk_bytes()
        self._signal: int | None = None
        self._iter: Iterator[dict[str, torch.Tensor]] | None = None
        # RNG states of a checkpoint, installed at the next step boundary (see ``fit``)
        self.pending_rng: dict[str, Any] | None = None

    # ---- signals ---------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signal = signum

    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGUSR1 ask for a checkpoint and a clean exit at the next step boundary."""
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)

    # ---- data ------------------------------------------------------------
    def _next_batch(self) -> dict[str, torch.Tensor]:
        for _ in range(2):
            if self._iter is None:
                self._iter = iter(self.loader)
            try:
                return next(self._iter)
            except StopIteration:
                self._iter = None  # end of epoch: the next iter() starts the next one
        raise RuntimeError("the training loader yields no batch (fewer samples than one micro-batch per rank?)")

    # ---- one optimizer step ------------------------------------------------
    def chunk_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of one chunk (a hook may wrap it for a step: the tests inject NaNs so)."""
        return lm_loss(logits, targets, ignore_index=self.cfg.model.pad_token_id)

    def _family_norms(self) -> dict[str, float]:
        """Pre-clip grad norm per module family (a collective under ZeRO: all ranks call it)."""
        return family_grad_norms(self.engine.module.named_parameters(), self.env.device)

    def train_step(self, want_family_norms: bool, want_diagnostics: bool) -> StepStats:
        """Forward/backward every chunk of every micro-batch, then one (possibly skipped) update."""
        engine, dev = self.engine, self.env.device
        step = self.state.step  # 0-based index of the step being taken
        lr = lr_at(step, self.cfg.train.max_steps, self.cfg.optim)
        set_lr(engine, lr)
        self.optimizer.force_skip = False
        self.optimizer.skipped = False
        t0 = time.perf_counter()
        data_time = 0.0
        loss_sum = torch.zeros((), dtype=torch.float32, device=dev)
        n_bytes = 0
        family: dict[str, float] = {}
        own_norm = float("nan")
        diagnostics: dict[str, float] = {}
        for micro in range(self.accumulation):
            td = time.perf_counter()
            batch = self._next_batch()
            ids = batch["input_ids"].to(dev, non_blocking=True)
            targets = batch["targets"].to(dev, non_blocking=True)
            data_time += time.perf_counter() - td
            n_bytes += ids.numel()
            state = None
            for k in range(self.chunks):
                cols = slice(k * self.chunk_len, (k + 1) * self.chunk_len)
                collect = want_diagnostics and micro == 0 and k == 0
                logits, state = engine(ids[:, cols], state=state, collect_diagnostics=collect)
                loss = self.chunk_loss(logits, targets[:, cols])
                loss_sum += loss.detach().float()
                if collect and state.diagnostics:
                    diagnostics = {
                        (key if key.startswith("memory/") else f"memory/{key}"): float(v)
                        for key, v in state.diagnostics.items()
                    }
                engine.backward(loss)
                last = micro == self.accumulation - 1 and k == self.chunks - 1
                if last:
                    self.optimizer.force_skip = ~torch.isfinite(loss_sum)  # read in the optimizer's one sync
                    if want_family_norms:
                        family = self._family_norms()
                    if self.cfg.deepspeed.zero_stage == 0:  # DeepSpeed keeps no norm without ZeRO in fp32
                        grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
                        own_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
                engine.step()
                state = state.detach()
        grad_norm = engine.get_global_grad_norm()
        grad_norm = own_norm if grad_norm is None else float(grad_norm)
        # Both terms are global: the guard's flag is all-reduced, DeepSpeed's norm is the global norm.
        skipped = self.optimizer.skipped or not math.isfinite(grad_norm)
        n_chunks = self.accumulation * self.chunks
        total_loss, total_chunks, total_bytes, stop = all_reduce_sum(
            [float(loss_sum), float(n_chunks), float(n_bytes), float(self._signal is not None)], dev
        )
        return StepStats(
            step=step + 1,
            loss=total_loss / total_chunks,
            lr=lr,
            grad_norm=grad_norm,
            skipped=skipped,
            bytes=int(total_bytes),
            step_time=time.perf_counter() - t0,
            data_time=data_time,
            family_norms=family,
            diagnostics=diagnostics,
            stop_requested=stop > 0,
        )

    # ---- the loop ----------------------------------------------------------
    def fit(self) -> int:
        """Train to ``max_steps`` (or ``stop_at_step``, a signal, too many skips); return the exit code."""
        t = self.cfg.train
        last_step = min(t.max_steps, t.stop_at_step) if t.stop_at_step > 0 else t.max_steps
        log_every = self.cfg.logging.log_interval
        diag_every = self.cfg.logging.memory_diagnostics_interval
        self.install_signal_handlers()
        for h in self.hooks:
            h.on_train_start(self)
        reason, code = "finished", EXIT_OK
        while self.state.step < last_step:
            nxt = self.state.step + 1
            self._install_pending_rng()
            for h in self.hooks:
                h.on_step_start(self, nxt)
            stats = self.train_step(
                want_family_norms=nxt % log_every == 0 or nxt == 1,
                want_diagnostics=diag_every > 0 and (nxt % diag_every == 0 or nxt == 1),
            )
            self._account(stats)
            for h in self.hooks:
                h.on_step_end(self, stats)
            if stats.stop_requested:
                reason = "signal"
                LOG.info(f"stop requested by a signal: checkpointing at step {self.state.step} and exiting")
                break
            if self.state.consecutive_skips >= t.max_consecutive_skips:
                reason, code = "too_many_skips", EXIT_TOO_MANY_SKIPS
                LOG.error(
                    f"stopping: {self.state.consecutive_skips} consecutive steps had a non-finite loss or gradient "
                    f"(train.max_consecutive_skips={t.max_consecutive_skips}); the last good weights are checkpointed "
                    f"at step {self.state.step}"
                )
                break
        else:
            if self.state.step < t.max_steps:
                reason = "stop_at_step"
                LOG.info(f"train.stop_at_step={t.stop_at_step} reached: checkpointing and exiting")
        for h in self.hooks:
            h.on_train_end(self, reason)
        return code

    def _install_pending_rng(self) -> None:
        """Put a resumed run's RNG states in place at the step boundary where they were saved.

        A checkpoint captures the states between step N's hooks and step N+1. A resume loads them
        before its own set-up (hooks' ``on_train_start``, loaders, DeepSpeed) has run; installing
        them again here, at the same boundary, keeps any draw made by that set-up out of step N+1.
        """
        if self.pending_rng is None:
            return
        restore_rng_state(self.pending_rng)
        self.pending_rng = None

    def _account(self, stats: StepStats) -> None:
        s = self.state
        s.step = stats.step
        s.bytes_seen += stats.bytes
        s.samples_seen += self.cfg.train.global_batch_size
        if stats.skipped:
            s.skipped_steps += 1
            s.consecutive_skips += 1
            LOG.warning(
                f"step {stats.step}: non-finite loss ({stats.loss}) or grad norm ({stats.grad_norm}) on some rank; "
                f"update skipped ({s.consecutive_skips} in a row, {s.skipped_steps} in total)"
            )
        else:
            s.consecutive_skips = 0
            s.last_loss = stats.loss

    # ---- checkpoint contents -------------------------------------------------
    def trainer_state(self) -> dict[str, Any]:
        """Everything besides engine and data that a resume needs, plus facts for audits."""
        t = self.cfg.train
        return {
            **asdict(self.state),
            "world_size": self.env.world_size,
            "global_batch_size": t.global_batch_size,
            "micro_batch_size": t.micro_batch_size,
            "tbptt_chunks": t.tbptt_chunks,
            "sample_bytes": self.cfg.data.sample_bytes,
            "zero_stage": self.cfg.deepspeed.zero_stage,
            "code_version": code_version(),
        }

    def dataloader_state(self) -> dict[str, Any] | None:
        """The loader's resume position (every rank calls it at the same step)."""
        fn = getattr(self.loader, "state_dict", None)
        return fn() if fn is not None else None
