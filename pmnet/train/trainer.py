"""``train(cfg)``: wire config, model, DeepSpeed engine, data, hooks; resume; fit.

Everything with logic lives elsewhere: the engine and schedule in ``engine.py``, the step
loop in ``loop.py``, metrics / eval / checkpoint cadence in ``hooks.py``, checkpoint files
in ``checkpoint.py``, process groups in ``distributed.py``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from data_pipeline.copy_paste import build_copy_paste_dataloader
from data_pipeline.dataset import build_train_dataloader, build_val_dataloader
from data_pipeline.shm import clean_stale_shared_memory
from pmnet.config import Config, ConfigError, save_config
from pmnet.model import InterchangeError, check_state_dict, read_checkpoint
from pmnet.model.config import WEIGHT_SHAPE_FIELDS
from pmnet.train.checkpoint import load_checkpoint, scan_latest_valid, share_rank0_scan
from pmnet.train.distributed import DistEnv, barrier
from pmnet.train.engine import build_engine, build_model, deepspeed_config
from pmnet.train.hooks import CheckpointHook, EvalHook, MetricsHook
from pmnet.train.loop import Hook, Trainer
from pmnet.train.metrics import LOG, MetricsWriter, measure_peak_tflops, setup_logging
from pmnet.train.profiling import ProfilerHook
from pmnet.train.startup import StartupClock

__all__ = ["train", "run_dir_of", "seed_everything", "use_compile_cache"]


def run_dir_of(cfg: Config) -> Path:
    """``<run_root>/<run_name>``."""
    return Path(cfg.train.run_root) / cfg.train.run_name


def train(cfg: Config, env: DistEnv, extra_hooks: Sequence[Hook] = (), clock: StartupClock | None = None) -> int:
    """Train as the config says (every rank calls this); returns the process exit code.

    ``extra_hooks`` run after the built-in ones (metrics, eval, checkpoints, profiler) at every
    point of the loop: a caller's own concerns, or a test's injected faults (``tests/fault_train.py``).
    ``clock`` is the process's :class:`StartupClock` when the caller started one (``python -m
    pmnet.train`` marks launch, pre-flight, imports and process group before this is called).
    """
    if clock is None:
        clock = StartupClock()
        clock.mark("launch and imports")
    run_dir = run_dir_of(cfg)
    setup_logging(run_dir, env.is_main, env.rank)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    seed_everything(cfg.train.seed)
    if cfg.train.compile:
        use_compile_cache(cfg, run_dir)
    ds_config = deepspeed_config(cfg, env.world_size)
    # Rank 0 finds the newest valid checkpoint (its files hashed: 1-2 s for the 119M) in a thread
    # while the model and the engine are built (hashlib and file reads release the GIL); the
    # answer is shared with the other ranks from this thread, in the order of its other collectives.
    with ThreadPoolExecutor(1, thread_name_prefix="checkpoint-scan") as pool:
        scan = pool.submit(scan_latest_valid, run_dir) if cfg.checkpoint.resume and env.rank == 0 else None

        def resumable() -> Path | None:  # collective: every rank calls it once, at the same point
            if not cfg.checkpoint.resume:
                return None
            found = share_rank0_scan(scan.result if scan is not None else lambda: None, run_dir)
            clock.mark("checkpoint scan")  # the wait for it, beyond what came before
            return found

        model = build_model(cfg, ds_config)
        clock.mark("model")
        ckpt = resumable() if cfg.train.init_from else None  # a resumable run directory wins over init_from
        if cfg.train.init_from and ckpt is None:
            load_init_weights(model, cfg)
            clock.mark("model")
        engine, optimizer = build_engine(cfg, model, env, ds_config)
        _clean_stale_shm(env)
        clock.mark("engine")
        if not cfg.train.init_from:
            ckpt = resumable()
    loader = _train_loader(cfg)
    writer = MetricsWriter(run_dir / "tb", enabled=env.is_main and cfg.logging.tensorboard)
    clock.mark("data")
    peak = cfg.logging.peak_tflops or (measure_peak_tflops(env.device) if env.is_main else None)
    clock.mark("matmul peak")
    hooks: list[Hook] = [MetricsHook(cfg, env, writer, peak, clock)]
    if cfg.eval.interval > 0:
        hooks.append(EvalHook(cfg, env, writer, lambda: _val_loader(cfg)))
    hooks.append(CheckpointHook(cfg, env, run_dir))
    if cfg.logging.profile_at_step > 0:
        hooks.append(ProfilerHook(cfg, env, run_dir))
    hooks.extend(extra_hooks)
    trainer = Trainer(cfg, env, engine, optimizer, loader, hooks)
    if ckpt is not None:
        resume(trainer, ckpt)
        clock.mark("resume")
    try:
        return trainer.fit()
    finally:
        writer.close()


def use_compile_cache(cfg: Config, run_dir: Path) -> Path | None:
    """Point torch.compile's caches at ``train.compile_cache_dir`` (default ``<run_dir>/compile_cache``).

    Inductor keeps compiled graphs, AOTAutograd results and Triton kernels under
    ``TORCHINDUCTOR_CACHE_DIR`` (read when a compile happens, so setting it before the first
    compile suffices; Triton's own cache follows it). In the run directory they outlive the
    machine: a run restarted on another node finds them. Ranks share the folder (inductor writes
    its entries atomically). Returns the folder, or None when torch's default is kept.
    """
    chosen = cfg.train.compile_cache_dir
    if chosen == "" or (chosen is None and os.environ.get("TORCHINDUCTOR_CACHE_DIR")):
        return None
    path = Path(chosen) if chosen else run_dir / "compile_cache"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"train.compile_cache_dir={str(path)!r}: cannot create it ({err.strerror})") from None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path.resolve())
    return path


def seed_everything(seed: int) -> None:
    """Seed every global RNG a checkpoint saves: python, numpy, torch (CPU and every CUDA device).

    The same seed on every rank (the model is initialised identically everywhere). Python's and
    numpy's generators are seeded even though training draws nothing from them: an unseeded one
    starts from OS entropy, so its saved state would differ between two runs of the same command.
    """
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resume(trainer: Trainer, ckpt: Path) -> None:
    """Continue from checkpoint ``ckpt``: engine, counters, data position, RNG states.

    ``load_checkpoint`` refuses a changed model shape or global batch in one line. The RNG states
    are installed once more at the first step boundary (``Trainer.fit``), where they were captured.
    """
    loaded = load_checkpoint(trainer.engine, ckpt, load_optimizer=True, expected_config=trainer.cfg)
    trainer.state.load(loaded.trainer_state or {})
    trainer.pending_rng = loaded.rng
    if loaded.dataloader_state is not None and hasattr(trainer.loader, "load_state_dict"):
        trainer.loader.load_state_dict(loaded.dataloader_state)
    LOG.info(f"resumed from {ckpt} at step {trainer.state.step} ({trainer.state.bytes_seen:,} bytes seen)")


def load_init_weights(model: torch.nn.Module, cfg: Config) -> None:
    """``train.init_from``: interchange weights into the freshly built model (the optimizer starts fresh)."""
    import deepspeed

    path = Path(cfg.train.init_from or "")
    try:
        src, sd = read_checkpoint(path)  # ours or the released model's folder (tied head left out)
        check_state_dict(sd, cfg.model, where=str(path))
    except (OSError, ValueError, InterchangeError) as err:
        raise ConfigError(f"train.init_from={str(path)!r}: {err}") from None
    for key in WEIGHT_SHAPE_FIELDS:
        if getattr(src, key) != getattr(cfg.model, key):
            raise ConfigError(
                f"train.init_from={str(path)!r}: has {key}={getattr(src, key)!r}, config model.{key}={getattr(cfg.model, key)!r}"
            )
    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=0, enabled=cfg.deepspeed.zero_stage == 3):
        model.load_state_dict(sd, strict=True)
    tie_weights = getattr(model, "tie_weights", None)
    if callable(tie_weights):
        tie_weights()
    LOG.info(f"initialised weights from {path} (fresh optimizer)")


def _clean_stale_shm(env: DistEnv) -> None:
    """Remove /dev/shm entries of killed streaming runs (local rank 0 of each node), then sync."""
    if env.local_rank == 0:
        removed = clean_stale_shared_memory()
        if removed:
            LOG.info(f"removed {len(removed)} stale shared-memory entries of killed runs")
    barrier()


def _train_loader(cfg: Config) -> Any:
    if cfg.data.task == "copy_paste":
        return build_copy_paste_dataloader(cfg.data, cfg.train.micro_batch_size)
    return build_train_dataloader(cfg.data, cfg.train.micro_batch_size)


def _val_loader(cfg: Config) -> Any:
    return build_val_dataloader(cfg.data, cfg.train.micro_batch_size)
