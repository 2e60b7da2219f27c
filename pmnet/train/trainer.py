"""``train(cfg)``: wire config, model, DeepSpeed engine, data, hooks; resume; fit.

Everything with logic lives elsewhere: the engine and schedule in ``engine.py``, the step
loop in ``loop.py``, metrics / eval / checkpoint cadence in ``hooks.py``, checkpoint files
in ``checkpoint.py``, process groups in ``distributed.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pmnet.config import Config, ConfigError, save_config
from pmnet.train.distributed import DistEnv, barrier
from pmnet.train.engine import build_engine, build_model, deepspeed_config
from pmnet.train.hooks import CheckpointHook, EvalHook, MetricsHook
from pmnet.train.loop import Trainer
from pmnet.train.metrics import LOG, MetricsWriter, measure_peak_tflops, setup_logging
from pmnet.train.preflight import SHAPE_FIELDS  # model fields a resume or init_from must keep
from pmnet.train.profiling import ProfilerHook

__all__ = ["train", "run_dir_of", "SHAPE_FIELDS"]


def run_dir_of(cfg: Config) -> Path:
    """``<run_root>/<run_name>``."""
    return Path(cfg.train.run_root) / cfg.train.run_name


def train(cfg: Config, env: DistEnv) -> int:
    """Train as the config says (every rank calls this); returns the process exit code."""
    run_dir = run_dir_of(cfg)
    setup_logging(run_dir, env.is_main, env.rank)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg.train.seed)
    ds_config = deepspeed_config(cfg, env.world_size)
    model = build_model(cfg, ds_config)
    ckpt = _resumable(run_dir) if cfg.checkpoint.resume else None
    if cfg.train.init_from and ckpt is None:  # a resumable run directory wins over init_from
        load_init_weights(model, cfg)
    engine, optimizer = build_engine(cfg, model, env, ds_config)
    _clean_stale_shm(env)
    loader = _train_loader(cfg)
    writer = MetricsWriter(run_dir / "tb", enabled=env.is_main and cfg.logging.tensorboard)
    peak = cfg.logging.peak_tflops or (measure_peak_tflops(env.device) if env.is_main else None)
    hooks: list[Any] = [MetricsHook(cfg, env, writer, peak)]
    if cfg.eval.interval > 0:
        hooks.append(EvalHook(cfg, env, writer, lambda: _val_loader(cfg)))
    hooks.append(CheckpointHook(cfg, env, run_dir))
    if cfg.logging.profile_at_step > 0:
        hooks.append(ProfilerHook(cfg, env, run_dir))
    trainer = Trainer(cfg, env, engine, optimizer, loader, hooks)
    if ckpt is not None:
        resume(trainer, ckpt)
    try:
        return trainer.fit()
    finally:
        writer.close()


def _resumable(run_dir: Path) -> Path | None:
    from pmnet.train.checkpoint import find_latest_valid

    return find_latest_valid(run_dir)


def resume(trainer: Trainer, ckpt: Path) -> None:
    """Continue from checkpoint ``ckpt``: engine, counters, data position, RNG states.

    ``load_checkpoint`` refuses a changed model shape or global batch in one line.
    """
    from pmnet.train.checkpoint import load_checkpoint

    loaded = load_checkpoint(trainer.engine, ckpt, load_optimizer=True, expected_config=trainer.cfg)
    trainer.state.load(loaded.trainer_state or {})
    if loaded.dataloader_state is not None and hasattr(trainer.loader, "load_state_dict"):
        trainer.loader.load_state_dict(loaded.dataloader_state)
    LOG.info(f"resumed from {ckpt} at step {trainer.state.step} ({trainer.state.bytes_seen:,} bytes seen)")


def load_init_weights(model: torch.nn.Module, cfg: Config) -> None:
    """``train.init_from``: interchange weights into the freshly built model (the optimizer starts fresh)."""
    import deepspeed

    from pmnet.model import InterchangeError, check_state_dict, config_from_interchange, read_weights

    path = Path(cfg.train.init_from or "")
    try:
        import json

        src = config_from_interchange(json.loads((path / "config.json").read_text()))
        sd = read_weights(path)
        check_state_dict(sd, cfg.model, where=str(path))
    except (OSError, ValueError, InterchangeError) as err:
        raise ConfigError(f"train.init_from={str(path)!r}: {err}") from None
    for key in SHAPE_FIELDS:
        if getattr(src, key) != getattr(cfg.model, key):
            raise ConfigError(
                f"train.init_from={str(path)!r}: has {key}={getattr(src, key)!r}, config model.{key}={getattr(cfg.model, key)!r}"
            )
    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=0, enabled=cfg.deepspeed.zero_stage == 3):
        model.load_state_dict(sd, strict=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    LOG.info(f"initialised weights from {path} (fresh optimizer)")


def _clean_stale_shm(env: DistEnv) -> None:
    """Remove /dev/shm entries of killed streaming runs (local rank 0 of each node), then sync."""
    if env.local_rank == 0:
        try:
            from data_pipeline.shm import clean_stale_shared_memory

            removed = clean_stale_shared_memory()
            if removed:
                LOG.info(f"removed {len(removed)} stale shared-memory entries of killed runs")
        except ImportError:
            pass
    barrier()


def _train_loader(cfg: Config) -> Any:
    if cfg.data.task == "copy_paste":
        from data_pipeline.copy_paste import build_copy_paste_dataloader

        return build_copy_paste_dataloader(cfg.data, cfg.train.micro_batch_size)
    from data_pipeline.dataset import build_train_dataloader

    return build_train_dataloader(cfg.data, cfg.train.micro_batch_size)


def _val_loader(cfg: Config) -> Any:
    from data_pipeline.dataset import build_val_dataloader

    return build_val_dataloader(cfg.data, cfg.train.micro_batch_size)
