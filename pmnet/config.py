"""The run's one typed configuration tree: dataclass sections, YAML in, ``a.b=value`` overrides.

Precedence is CLI overrides > YAML file > dataclass defaults; validation runs once, after
merging, and every problem is reported as a one-line :class:`ConfigError` naming the key
path, the bad value and what is allowed.

Each field's doc is the string literal written right under it (read with ``ast``), which
``python -m pmnet.train --help-config`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pmnet.configtree import ConfigError, apply_overrides, from_dict, read_yaml, to_dict
from pmnet.model.config import PMNetConfig

__all__ = ["Config", "ConfigError", "load_config", "config_from_dict", "save_config", "validate_config"]


@dataclass
class StreamConfig:
    """One source of training samples (a directory of MDS shards)."""

    local: str = ""
    "Local directory of the shards (or the cache directory of a remote stream)."
    remote: str | None = None
    "Remote location (s3://, gs://, a local path standing in for one); None = local only."
    proportion: float | None = None
    "Share of each epoch drawn from this stream (None: by size)."
    split: str | None = None
    "Sub-directory inside local/remote holding the split (e.g. train)."


@dataclass
class CopyPasteConfig:
    """The synthetic copy-paste task (docs/model.md section 8): BOS, N random bytes, N filler, SEP, the N bytes."""

    min_n: int = 10
    "Smallest N (bytes to copy) drawn in training."
    max_n: int = 1024
    "Largest N drawn in training (lookback is up to 2N)."
    seed: int = 0
    "Seed of the sample generator (combined with rank, worker and sample index)."
    curriculum_samples: int = 0
    "Ramp the largest N from curriculum_start_n to max_n over this many global samples (0: no ramp)."
    curriculum_start_n: int = 32
    "Largest N of the first sample when curriculum_samples > 0 (clamped into [min_n, max_n])."


@dataclass
class DataConfig:
    """Where training and validation samples come from and how they are batched."""

    task: Literal["bytes", "copy_paste"] = "bytes"
    "bytes: MDS shards of text (streams); copy_paste: generated copy-paste samples."
    copy_paste: CopyPasteConfig = field(default_factory=CopyPasteConfig)
    "Settings of the copy_paste task."
    streams: list[StreamConfig] = field(default_factory=list)
    "Training streams, mixed by proportion."
    val_streams: list[StreamConfig] = field(default_factory=list)
    "Validation streams (eval BPB); empty = no eval."
    sample_bytes: int = 8193
    "Bytes per stored sample: seq_len + 1 so every position has a target."
    shuffle: bool = True
    "Shuffle samples (deterministically, from shuffle_seed)."
    shuffle_seed: int = 9176
    "Seed of the streaming shuffle."
    shuffle_algo: str = "py1e"
    "mosaicml-streaming shuffle algorithm."
    num_workers: int = 2
    "DataLoader worker processes per rank."
    prefetch_factor: int = 2
    "Batches prefetched per worker."
    num_canonical_nodes: int | None = None
    "Fix for elastic resumption across world sizes (None: streaming's default)."
    predownload: int | None = None
    "Samples to download ahead per worker (remote streams)."
    cache_limit: str | None = None
    "Cap on the local cache of remote streams, e.g. '10gb'."
    verify_hashes: bool = True
    "Check every shard file against its index.json hash before training reads it (once per file, see verify_cache)."
    verify_cache: bool = True
    "Remember verified files in <stream>/.pmnet_verified.json (size, mtime, ctime, inode): false re-hashes every start."


@dataclass
class TrainConfig:
    """The training loop: length, batch, precision, truncated BPTT."""

    run_name: str = "pmnet"
    "Name of the run; its files go to <run_root>/<run_name>."
    run_root: str = "runs"
    "Parent directory of run directories."
    seed: int = 1234
    "Seed of model init and every other RNG."
    max_steps: int = 1000
    "Optimizer steps to train for."
    micro_batch_size: int = 8
    "Samples per rank per forward/backward."
    global_batch_size: int = 8
    "Samples per optimizer step over all ranks (= micro x accumulation x data-parallel size)."
    tbptt_chunks: int = 1
    "K: a sample of K x T bytes is fed as K chunks with detached state between them."
    precision: Literal["fp32", "bf16"] = "bf16"
    "Compute dtype of the engine (phase math stays fp32)."
    activation_checkpointing: bool = False
    "Recompute each decoder layer in backward to save memory."
    grad_clip: float = 1.0
    "Clip the global grad norm to this (0 = no clipping; the pre-clip norm is always logged)."
    max_consecutive_skips: int = 10
    "Stop the run after this many non-finite steps in a row."
    init_from: str | None = None
    "Start from interchange-format weights (a directory with config.json) with a fresh optimizer."
    device: Literal["auto", "cpu", "cuda"] = "auto"
    "Where to train (auto: cuda when available)."
    compile: bool = False
    "torch.compile the fast path on CUDA (pmnet.model.compiled.compile_fast_path; ignored on CPU)."
    compile_mode: Literal["modules", "layers"] = "modules"
    (
        "What train.compile compiles: 'modules' (one graph per module class shared by all layers, plus the "
        "memory cores; compiles fastest) or 'layers' (each decoder layer whole: residual adds and the sums of "
        "gradients between graphs fuse too, at the cost of one graph per distinct layer)."
    )
    compile_cache_dir: str | None = None
    (
        "Folder for torch.compile's caches (inductor graphs, AOTAutograd, Triton kernels), kept across restarts "
        "so a resumed run skips most compilation. null: <run_dir>/compile_cache; '': torch's default "
        "(/tmp/torchinductor_<user>, lost with the machine); a TORCHINDUCTOR_CACHE_DIR set by the user wins over null."
    )
    stop_at_step: int = 0
    "Stop with a checkpoint once this optimizer step is done, as if interrupted (schedule still spans max_steps; 0 = off)."


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule."""

    lr: float = 1e-3
    "Peak learning rate."
    min_lr_ratio: float = 0.1
    "Final lr as a fraction of the peak."
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    "AdamW betas."
    eps: float = 1e-8
    "AdamW epsilon."
    weight_decay: float = 0.1
    "Decoupled weight decay (never applied to norms, biases, anchors)."
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    "Shape after warmup: cosine decay, warmup-stable-decay, or constant."
    warmup_steps: int = 100
    "Linear warmup steps."
    decay_fraction: float = 0.2
    "WSD: share of steps spent in the final decay."


@dataclass
class CheckpointConfig:
    """When checkpoints are written and which are kept."""

    interval: int = 1000
    "Save every this many optimizer steps (0 = only at the end / on signal)."
    keep_last: int = 3
    "Keep the newest N checkpoints."
    keep_every: int = 0
    "Also keep every checkpoint whose step is a multiple of this (0 = none)."
    resume: bool = True
    "Resume automatically from the run directory's latest valid checkpoint."
    save_at_end: bool = True
    "Write a checkpoint when training finishes."


@dataclass
class LoggingConfig:
    """TensorBoard and console output."""

    tensorboard: bool = True
    "Write TensorBoard events under <run_dir>/tb."
    log_interval: int = 10
    "Log scalars every this many optimizer steps."
    console_interval: int = 10
    "Print a progress line every this many optimizer steps."
    memory_diagnostics_interval: int = 50
    "Log per-level memory diagnostics every this many steps (0 = never)."
    peak_tflops: float | None = None
    "Peak FLOP/s (TFLOP/s) for MFU; None = measured at start on GPU, skipped on CPU."
    profile_at_step: int = 0
    "torch.profiler over optimizer steps from this one (1-based; 0 = off), main rank: <run_dir>/profile/."
    profile_steps: int = 2
    "How many optimizer steps to profile."
    profile_trace: bool = False
    "Also write a Chrome / Perfetto trace of the profiled steps (large for big models)."
    profile_shapes: bool = False
    "Record operator input shapes: profile/shapes_steps_A-B.txt, the top operators by device time per shape."


@dataclass
class EvalConfig:
    """Validation BPB during training."""

    interval: int = 0
    "Evaluate every this many steps (0 = never)."
    max_batches: int = 20
    "Validation batches per evaluation."


@dataclass
class DeepSpeedConfig:
    """The DeepSpeed engine (written to the JSON DeepSpeed reads)."""

    zero_stage: int = 2
    "ZeRO stage 0, 1, 2 or 3."
    overlap_comm: bool = False
    "Overlap gradient reduction with backward (GPU)."
    reduce_bucket_size: int = 50_000_000
    "Elements per gradient-reduction bucket."
    allgather_bucket_size: int = 50_000_000
    "Elements per all-gather bucket (ZeRO 1/2)."
    stage3_prefetch_bucket_size: int = 5_000_000
    "ZeRO-3 parameter prefetch size."
    offload_optimizer: bool = False
    "Keep optimizer state on CPU (ZeRO 1/2/3)."
    grad_accum_fp32: bool = True
    "With bf16, accumulate and reduce gradients in fp32 (ZeRO-1 then uses DeepSpeed's BF16_Optimizer); false = bf16."
    check_grad_overflow: bool = False
    "DeepSpeed's own bf16 non-finite check under ZeRO-1/2 (per tensor, every step); the trainer's optimizer checks anyway."
    timeout_minutes: int = 30
    "Collective-operation timeout."


@dataclass
class Config:
    """Everything a run needs; saved resolved with every run and every checkpoint."""

    model: PMNetConfig = field(default_factory=PMNetConfig)
    "Model shapes and switches (docs/model.md)."
    data: DataConfig = field(default_factory=DataConfig)
    "Training and validation data."
    train: TrainConfig = field(default_factory=TrainConfig)
    "The training loop."
    optim: OptimConfig = field(default_factory=OptimConfig)
    "Optimizer and schedule."
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    "Checkpoint cadence and retention."
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    "Metrics."
    eval: EvalConfig = field(default_factory=EvalConfig)
    "Validation during training."
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    "DeepSpeed engine."

    def tbptt_chunk_bytes(self) -> int:
        """Bytes per truncated-BPTT chunk: ``(data.sample_bytes - 1) // train.tbptt_chunks``
        (:func:`validate_config` checks that it divides)."""
        return (self.data.sample_bytes - 1) // self.train.tbptt_chunks


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> Config:
    """Build and validate a Config from a raw mapping plus ``a.b=value`` overrides."""
    data = dict(data)
    data = _expand_model_preset(apply_overrides(data, overrides or []))
    cfg = from_dict(Config, data)
    validate_config(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Defaults < YAML file (with its includes) < overrides; validated once."""
    data = read_yaml(path) if path is not None else {}
    return config_from_dict(data, overrides)


def _expand_model_preset(data: dict[str, Any]) -> dict[str, Any]:
    """``model.preset: NAME`` starts the model section from a named preset."""
    model = data.get("model")
    if not isinstance(model, dict) or "preset" not in model:
        return data
    model = dict(model)
    name = str(model.pop("preset"))
    try:
        base = PMNetConfig.from_preset(name).to_dict()
    except ValueError as err:
        raise ConfigError(f"config key 'model.preset': {err}") from None
    return {**data, "model": {**base, **model}}


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dump_config(cfg), encoding="utf-8")
    tmp.replace(path)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def validate_config(cfg: Config, world_size: int | None = None) -> None:
    """Check every cross-field rule at once; raise one ConfigError listing all problems."""
    errs = [f"model.{e}" for e in cfg.model.validate()]
    t, d, o, c = cfg.train, cfg.data, cfg.optim, cfg.checkpoint

    def need(ok: bool, msg: str) -> None:
        if not ok:
            errs.append(msg)

    need(d.sample_bytes >= 2, f"data.sample_bytes={d.sample_bytes}: must be >= 2 (one input and one target)")
    need(t.tbptt_chunks >= 1, f"train.tbptt_chunks={t.tbptt_chunks}: must be >= 1")
    if d.sample_bytes >= 2 and t.tbptt_chunks >= 1:
        need(
            (d.sample_bytes - 1) % t.tbptt_chunks == 0,
            f"data.sample_bytes={d.sample_bytes}: sample_bytes - 1 must be divisible by "
            f"train.tbptt_chunks={t.tbptt_chunks}",
        )
    cp = d.copy_paste
    need(1 <= cp.min_n <= cp.max_n, f"data.copy_paste: need 1 <= min_n <= max_n, got {cp.min_n}, {cp.max_n}")
    need(cp.curriculum_samples >= 0, f"data.copy_paste.curriculum_samples={cp.curriculum_samples}: must be >= 0")
    need(cp.curriculum_start_n >= 1, f"data.copy_paste.curriculum_start_n={cp.curriculum_start_n}: must be >= 1")
    if d.task == "copy_paste":
        need(
            3 * cp.max_n + 2 <= d.sample_bytes,
            f"data.sample_bytes={d.sample_bytes}: copy_paste needs >= 3 x max_n + 2 = {3 * cp.max_n + 2}",
        )
    elif d.task == "bytes":
        need(bool(d.streams), "data.streams: at least one training stream is needed for task 'bytes'")
    need(d.num_workers >= 0, f"data.num_workers={d.num_workers}: must be >= 0")
    lg = cfg.logging
    need(lg.profile_at_step >= 0, f"logging.profile_at_step={lg.profile_at_step}: must be >= 0 (0 = off)")
    need(lg.profile_steps >= 1, f"logging.profile_steps={lg.profile_steps}: must be >= 1")
    need(d.prefetch_factor >= 1, f"data.prefetch_factor={d.prefetch_factor}: must be >= 1")
    for name, streams in (("streams", d.streams), ("val_streams", d.val_streams)):
        for i, s in enumerate(streams):
            need(bool(s.local or s.remote), f"data.{name}[{i}]: needs 'local' or 'remote'")
            if s.proportion is not None:
                need(s.proportion > 0, f"data.{name}[{i}].proportion={s.proportion}: must be > 0")
        props = [s.proportion is None for s in streams]
        need(all(props) or not any(props), f"data.{name}: give a proportion to every stream or to none")
    need(t.max_steps >= 1, f"train.max_steps={t.max_steps}: must be >= 1")
    need(t.micro_batch_size >= 1, f"train.micro_batch_size={t.micro_batch_size}: must be >= 1")
    need(t.global_batch_size >= 1, f"train.global_batch_size={t.global_batch_size}: must be >= 1")
    if t.micro_batch_size >= 1:
        dp = world_size or 1
        need(
            t.global_batch_size % (t.micro_batch_size * dp) == 0,
            f"train.global_batch_size={t.global_batch_size}: must be a multiple of "
            f"micro_batch_size x data-parallel size = {t.micro_batch_size} x {dp}",
        )
    need(t.grad_clip >= 0, f"train.grad_clip={t.grad_clip}: must be >= 0 (0 disables clipping)")
    need(t.stop_at_step >= 0, f"train.stop_at_step={t.stop_at_step}: must be >= 0 (0 = off)")
    need(t.max_consecutive_skips >= 1, f"train.max_consecutive_skips={t.max_consecutive_skips}: must be >= 1")
    need(
        bool(t.run_name) and "/" not in t.run_name,
        f"train.run_name={t.run_name!r}: must be a non-empty name without '/'",
    )
    need(o.lr > 0, f"optim.lr={o.lr}: must be > 0")
    need(0.0 <= o.min_lr_ratio <= 1.0, f"optim.min_lr_ratio={o.min_lr_ratio}: must be in [0, 1]")
    need(
        len(o.betas) == 2 and all(0.0 <= b < 1.0 for b in o.betas),
        f"optim.betas={o.betas}: must be two numbers in [0, 1)",
    )
    need(o.eps > 0, f"optim.eps={o.eps}: must be > 0")
    need(o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay}: must be >= 0")
    need(o.warmup_steps >= 0, f"optim.warmup_steps={o.warmup_steps}: must be >= 0")
    need(0.0 < o.decay_fraction <= 1.0, f"optim.decay_fraction={o.decay_fraction}: must be in (0, 1]")
    need(c.interval >= 0, f"checkpoint.interval={c.interval}: must be >= 0 (0 = only at the end)")
    need(c.keep_last >= 1, f"checkpoint.keep_last={c.keep_last}: must be >= 1")
    need(c.keep_every >= 0, f"checkpoint.keep_every={c.keep_every}: must be >= 0")
    lg = cfg.logging
    need(lg.log_interval >= 1, f"logging.log_interval={lg.log_interval}: must be >= 1")
    need(lg.console_interval >= 1, f"logging.console_interval={lg.console_interval}: must be >= 1")
    need(
        lg.memory_diagnostics_interval >= 0,
        f"logging.memory_diagnostics_interval={lg.memory_diagnostics_interval}: must be >= 0",
    )
    if lg.peak_tflops is not None:
        need(lg.peak_tflops > 0, f"logging.peak_tflops={lg.peak_tflops}: must be > 0")
    need(cfg.eval.interval >= 0, f"eval.interval={cfg.eval.interval}: must be >= 0")
    need(cfg.eval.max_batches >= 1, f"eval.max_batches={cfg.eval.max_batches}: must be >= 1")
    if cfg.eval.interval > 0:
        need(bool(d.val_streams), f"eval.interval={cfg.eval.interval}: needs data.val_streams")
    ds = cfg.deepspeed
    need(ds.zero_stage in (0, 1, 2, 3), f"deepspeed.zero_stage={ds.zero_stage}: must be 0, 1, 2 or 3")
    need(ds.reduce_bucket_size >= 1, f"deepspeed.reduce_bucket_size={ds.reduce_bucket_size}: must be >= 1")
    need(ds.allgather_bucket_size >= 1, f"deepspeed.allgather_bucket_size={ds.allgather_bucket_size}: must be >= 1")
    need(ds.timeout_minutes >= 1, f"deepspeed.timeout_minutes={ds.timeout_minutes}: must be >= 1")
    if errs:
        raise ConfigError("; ".join(errs))


def main(argv: list[str] | None = None) -> int:
    """``python -m pmnet.config [--help-config] [CONFIG] [a.b=value ...]``: print the resolved YAML."""
    import argparse
    import sys

    from pmnet.configtree import format_help

    p = argparse.ArgumentParser(
        prog="python -m pmnet.config",
        description="Print the resolved config (YAML) of CONFIG with overrides, as a run would save it.",
        epilog="Example: python -m pmnet.config configs/pmnet_119m.yaml train.max_steps=100 deepspeed.zero_stage=3",
    )
    p.add_argument("config", nargs="?", metavar="CONFIG", help="YAML file (default: the built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides, applied in order")
    p.add_argument("--help-config", action="store_true", help="list every field with its type, default and doc")
    args = p.parse_args(argv)
    if args.help_config:
        print("Config fields (section.key (type, default): doc). Override any with section.key=value.")
        print(format_help(Config))
        return 0
    overrides = list(args.overrides)
    if args.config and "=" in args.config:  # no file, only overrides
        overrides.insert(0, args.config)
        args.config = None
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(dump_config(cfg), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
