"""Checkpoint conversion: DeepSpeed (ZeRO 0-3, any world size) -> interchange safetensors, and -> universal.

``convert_to_interchange`` streams: it reads only the fp32 master partitions of the
optimizer files (never the Adam moments), one tensor at a time straight from the zip
members (:mod:`pmnet.checkpoint.ptread`, no torch import), and writes each tensor into a
safetensors file whose header is planned up front. Peak memory is the Python baseline plus
the largest tensor, far below one fp32 copy of the model (DeepSpeed's zero_to_fp32 holds
the merged model and more). Above ``max_shard_size`` the output is split into
``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json`` (HF layout).
The output directory is built under a temporary name and renamed into place.

``make_universal`` runs DeepSpeed's ``ds_to_universal`` into ``<ckpt>/universal`` and
re-writes the manifest, so ``load_checkpoint`` can resume it on a different world size.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pmnet.checkpoint.manifest import (
    CONFIG,
    MANIFEST,
    META,
    CheckpointError,
    atomic_write_text,
    check_checkpoint,
    checkpoints_root,
    find_latest_valid,
    hash_files,
    list_files,
    read_json,
)
from pmnet.checkpoint.ptread import DTYPES, PtFile, PtReadError, Stub, TensorRef, fp32_to_bf16_bits
from pmnet.checkpoint.safeload import pickle_files, scan_pickles

__all__ = [
    "INTERCHANGE_FIELDS",
    "ConvertResult",
    "convert_to_interchange",
    "interchange_config",
    "make_universal",
    "parse_size",
    "plan_deepspeed",
    "step_dir_of",
    "verification_problem",
]

# docs/model.md section 7 config keys that are PMNetConfig fields of the same name
INTERCHANGE_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "head_dim", "memory_size",
    "num_memory", "num_memory_read_heads", "memory_write_period", "sliding_window", "rope_theta", "rms_norm_eps",
    "vocab_size", "tie_word_embeddings", "attention_dropout", "initializer_range", "memory_cumsum",
    "bos_token_id", "eos_token_id",
)  # fmt: skip
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_PREFIXES = ("_orig_mod.", "module.")


@dataclass
class Piece:
    """Elements ``start .. start+count`` of tensor ``ref`` in optimizer/model file ``file``."""

    file: int
    ref: TensorRef
    start: int
    count: int


@dataclass
class Planned:
    """One output tensor: its name, shape and where its elements come from (concatenated in order)."""

    name: str
    shape: tuple[int, ...]
    pieces: list[Piece]
    src_dtype: str = "F32"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class ConvertResult:
    """What :func:`convert_to_interchange` wrote."""

    out_dir: Path
    files: list[str]
    num_tensors: int
    num_parameters: int
    total_bytes: int
    zero_stage: int
    world_size: int
    step: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["out_dir"] = str(self.out_dir)
        return d


def parse_size(text: str | int) -> int:
    """'5GB', '500MiB', '1e9' or an int -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)(i?)[bB]?\s*", str(text))
    if not m:
        raise CheckpointError(f"size {text!r}: expected a number with an optional unit (e.g. 5GB, 500MiB)")
    base = 1024 if m.group(3) else 1000
    power = " kmgt".index(m.group(2).lower() or " ")
    return int(float(m.group(1)) * base**power)


def step_dir_of(path: str | Path) -> Path:
    """A checkpoint directory from a step directory or a run directory (its newest valid checkpoint)."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"{p}: no such directory")
    if any(p.glob("*model_states.pt")):
        return p
    root = checkpoints_root(p)
    if root.is_dir():
        found = find_latest_valid(p, verify_hashes=False)
        if found is not None:
            return found
    raise CheckpointError(
        f"{p}: neither a DeepSpeed checkpoint (no *model_states.pt) nor a run with a valid checkpoint"
    )


def _rank_of(name: str) -> int:
    m = re.search(r"zero_pp_rank_(\d+)_", name)
    return int(m.group(1)) if m else 0


def _clean(name: str) -> str:
    for pre in _PREFIXES:
        if name.startswith(pre):
            name = name[len(pre) :]
    return name


def _stage_of(osd: dict[str, Any]) -> int:
    z = osd.get("zero_stage")
    if z is None and "single_partition_of_fp32_groups" in osd and "base_optimizer_state" in osd:
        # DeepSpeed's BF16_Optimizer (bf16 weights + fp32 grad accumulation + ZeRO-1, files
        # bf16_zero_pp_rank_*): no zero_stage key, but the ZeRO-1/2 layout (one flat fp32
        # partition per group per rank, params in order, padded at the group's end)
        return 1
    if isinstance(z, Stub):
        z = z.args[0] if z.args else z.state
    if z is None:
        raise TypeError("optimizer state has no zero_stage and is no BF16_Optimizer state")
    return int(z)


def _span(parts: list[tuple[int, TensorRef]], start: int, count: int) -> list[Piece]:
    """Pieces covering elements ``start .. start+count`` of the virtual concatenation of ``parts``."""
    out, base = [], 0
    for file, ref in parts:
        n = ref.numel
        lo, hi = max(start, base), min(start + count, base + n)
        if lo < hi:
            out.append(Piece(file, ref, lo - base, hi - lo))
        base += n
        if base >= start + count:
            break
    if sum(p.count for p in out) != count:
        raise CheckpointError(f"flat fp32 partitions end before element {start + count} (checkpoint inconsistent)")
    return out


def plan_deepspeed(ckpt: Path) -> tuple[list[Planned], list[PtFile], dict[str, Any]]:
    """Open a DeepSpeed checkpoint and plan every output tensor (no tensor data is read yet)."""
    model_files = sorted(ckpt.glob("*model_states.pt"), key=lambda p: _rank_of(p.name))
    optim_files = sorted(ckpt.glob("*zero_pp_rank_*_optim_states.pt"), key=lambda p: _rank_of(p.name))
    if not model_files:
        raise CheckpointError(f"{ckpt}: no *model_states.pt file")
    files: list[PtFile] = []
    try:
        ms = PtFile(model_files[0])
        files.append(ms)
        m = ms.obj
        param_shapes = m.get("param_shapes") or []
        if m.get("frozen_param_shapes"):
            raise CheckpointError(f"{model_files[0]}: frozen parameters are not supported by the converter")
        shared = dict(m.get("shared_params") or {})
        buffers = set(m.get("buffer_names") or [])
        info: dict[str, Any] = {"world_size": int(m.get("dp_world_size", 1)), "zero_stage": 0, "notes": []}
        plan: list[Planned] = []
        if optim_files:
            for f in optim_files:
                files.append(PtFile(f))
            osds = [pf.obj["optimizer_state_dict"] for pf in files[1:]]
            stage = _stage_of(osds[0])
            world = len(osds)
            pc = osds[0].get("partition_count")
            pc = max(pc) if isinstance(pc, list) else pc
            if pc is not None and int(pc) != world:
                raise CheckpointError(
                    f"{ckpt}: optimizer says {pc} partitions but {world} *_optim_states.pt files exist"
                )
            info.update(world_size=world, zero_stage=stage)
            plan = _plan_zero3(osds, param_shapes) if stage == 3 else _plan_zero12(osds, param_shapes)
        else:  # ZeRO-0: the module state dict holds every weight (fp32 masters in optimizer.fp32_groups if bf16)
            plan = _plan_zero0(m, ms, info)
        by_name = {p.name: p for p in plan}
        for alias, target in shared.items():
            if target in by_name and alias not in by_name:
                t = by_name[target]
                plan.append(Planned(alias, t.shape, t.pieces, t.src_dtype))
        module = m.get("module") or {}
        for name in sorted(buffers):
            ref = module.get(name)
            if isinstance(ref, TensorRef):
                plan.append(Planned(name, ref.shape, [Piece(0, ref, 0, ref.numel)], ref.dtype))
        for p in plan:
            p.name = _clean(p.name)
        info["step"] = m.get("global_steps")
        return plan, files, info
    except (PtReadError, KeyError, TypeError, AttributeError) as err:
        for pt in files:
            pt.close()
        msg = (
            str(err)
            if isinstance(err, PtReadError)
            else f"{ckpt}: unexpected DeepSpeed layout ({type(err).__name__}: {err})"
        )
        raise CheckpointError(msg) from None
    except CheckpointError:
        for pt in files:
            pt.close()
        raise


def _plan_zero0(m: dict[str, Any], ms: PtFile, info: dict[str, Any]) -> list[Planned]:
    """Module tensors; for a bf16 engine, the fp32 masters matched to names by order and shape, then
    verified: each master rounded to bf16 must equal the module's bf16 weight (else the bf16 weights)."""
    module = {k: v for k, v in m["module"].items() if isinstance(v, TensorRef)}
    plan = {k: Planned(k, tuple(v.shape), [Piece(0, v, 0, v.numel)], v.dtype) for k, v in module.items()}
    groups = (m.get("optimizer") or {}).get("fp32_groups")
    low = [k for k, v in module.items() if v.dtype in ("BF16", "F16")]
    if not low:
        return list(plan.values())
    matched: dict[str, TensorRef] = {}
    seen_storage: set[str] = set()
    names = []  # one name per storage
    for k in low:
        if module[k].key not in seen_storage:
            seen_storage.add(module[k].key)
            names.append(k)
    ok = isinstance(groups, list)
    for group in groups if isinstance(groups, list) else []:
        pos = 0
        for ref in group:
            while pos < len(names) and (names[pos] in matched or tuple(module[names[pos]].shape) != tuple(ref.shape)):
                pos += 1
            if pos == len(names):
                ok = False
                break
            matched[names[pos]] = ref
    if ok and len(matched) == len(names):
        for name, ref in matched.items():
            master = ms.read(ref).reshape(-1)
            if not np.array_equal(fp32_to_bf16_bits(master), ms.read(module[name]).reshape(-1)):
                ok = False
                break
    if not (ok and len(matched) == len(names)):
        info["notes"].append("ZeRO-0: fp32 masters could not be matched to names; wrote the engine's bf16 weights")
        return list(plan.values())
    for k, v in module.items():
        ref = matched.get(k) or next((matched[n] for n in matched if module[n].key == v.key), None)
        if ref is not None:
            plan[k] = Planned(k, tuple(v.shape), [Piece(0, ref, 0, ref.numel)], "F32")
    return list(plan.values())


def _plan_zero12(osds: list[dict[str, Any]], param_shapes: list[dict[str, Any]]) -> list[Planned]:
    groups = [osd["single_partition_of_fp32_groups"] for osd in osds]
    paddings = osds[0].get("param_alignment_paddings")
    plan = []
    for g, shapes in enumerate(param_shapes):
        parts = [(r + 1, groups[r][g]) for r in range(len(osds))]
        offset = 0
        for i, (name, shape) in enumerate(shapes.items()):
            n = math.prod(shape)
            plan.append(Planned(name, tuple(shape), _span(parts, offset, n)))
            offset += n + (paddings[g][i] if paddings is not None else 0)
    return plan


def _plan_zero3(osds: list[dict[str, Any]], param_shapes: list[dict[str, Any]]) -> list[Planned]:
    world = len(osds)
    flats = [[(r + 1, t) for t in osd["fp32_flat_groups"]] for r, osd in enumerate(osds)]
    plan, offset = [], 0
    for shapes in param_shapes:
        for name, shape in shapes.items():
            n = math.prod(shape)
            part = math.ceil(n / world)
            pieces: list[Piece] = []
            for r in range(world):
                pieces += _span(flats[r], offset, part)
            plan.append(Planned(name, tuple(shape), pieces))
            offset += part
    return plan


def _materialize(t: Planned, files: list[PtFile]) -> np.ndarray:
    """The tensor in fp32 (float sources) or its own dtype, filled piece by piece (one buffer)."""
    if t.src_dtype not in ("F32", "BF16", "F16", "F64"):
        out = np.empty(t.numel, dtype=DTYPES[t.pieces[0].ref.storage][1])
    else:
        out = np.empty(t.numel, dtype=np.float32)
    pos = 0
    for p in t.pieces:
        take = min(p.count, t.numel - pos)
        if take <= 0:
            break
        raw_dtype = DTYPES[p.ref.storage][1]
        if raw_dtype == out.dtype:
            files[p.file].read_range(p.ref, p.start, out[pos : pos + take])
        else:
            tmp = np.empty(take, dtype=raw_dtype)
            files[p.file].read_range(p.ref, p.start, tmp)
            out[pos : pos + take] = (tmp.astype(np.uint32) << 16).view(np.float32) if p.ref.dtype == "BF16" else tmp
        pos += take
    if pos != t.numel:
        raise CheckpointError(f"{t.name}: only {pos} of {t.numel} elements found in the partitions")
    return out


def _out_dtype(t: Planned, dtype: str) -> str:
    return dtype if t.src_dtype in ("F32", "BF16", "F16", "F64") else t.src_dtype


def _encode(arr: np.ndarray, out_dtype: str) -> np.ndarray:
    if out_dtype == "BF16":
        return fp32_to_bf16_bits(arr)
    if out_dtype == "F32":
        return arr.astype(np.float32, copy=False)
    return arr


def _write_shard(
    path: Path, tensors: list[Planned], files: list[PtFile], dtype: str, on_bytes: Callable[[int], Any] | None = None
) -> int:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    off = 0
    for t in tensors:
        od = _out_dtype(t, dtype)
        size = t.numel * _itemsize(od)
        header[t.name] = {"dtype": od, "shape": list(t.shape), "data_offsets": [off, off + size]}
        off += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for t in tensors:
            data = _encode(_materialize(t, files), _out_dtype(t, dtype))
            f.write(np.ascontiguousarray(data).data.cast("B"))
            if on_bytes is not None:
                on_bytes(data.nbytes)
            del data
        f.flush()
        os.fsync(f.fileno())
    return off


def _itemsize(dt: str) -> int:
    return {"F32": 4, "F64": 8, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}[dt]


def interchange_config(model: dict[str, Any], dtype: str = "float32") -> dict[str, Any]:
    """config.json content (the released key set, docs/model.md section 7) from a resolved config's ``model`` section."""
    from pmnet.release_format import released_config

    missing = [k for k in INTERCHANGE_FIELDS if k not in model]
    if missing:
        raise CheckpointError(f"model config lacks {', '.join(missing)}")
    return released_config(model, dtype, use_memory=model.get("use_memory") is not False)


def _model_section(ckpt: Path, config_path: str | Path | None) -> dict[str, Any]:
    import yaml

    src = Path(config_path) if config_path else ckpt / CONFIG
    if not src.is_file():
        raise CheckpointError(f"{src}: not found (pass --config RUN_CONFIG.yaml or an interchange config.json)")
    try:
        data = json.loads(src.read_text()) if src.suffix == ".json" else yaml.safe_load(src.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{src}: unreadable ({err})") from None
    if isinstance(data, dict) and "model_type" in data:  # already an interchange config.json
        return data
    model = (data or {}).get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict):
        raise CheckpointError(f"{src}: no 'model' section")
    if "preset" in model:
        from pmnet.model.config import PMNetConfig

        model = {**PMNetConfig.from_preset(model.pop("preset")).to_dict(), **model}
    return model


def _check_config(cfg: dict[str, Any], plan: list[Planned], src: Path) -> None:
    shapes = {t.name: t.shape for t in plan}
    emb = shapes.get("model.embed_tokens.weight")
    if emb is None:
        raise CheckpointError(f"{src}: no model.embed_tokens.weight (not a PMNet checkpoint?)")
    want = (cfg["vocab_size"], cfg["hidden_size"])
    if tuple(emb) != want:
        raise CheckpointError(f"{src}: embedding is {tuple(emb)} but the config says vocab x hidden = {want}")
    layers = {int(m.group(1)) for n in shapes if (m := re.match(r"model\.layers\.(\d+)\.", n))}
    if len(layers) != cfg["num_hidden_layers"]:
        raise CheckpointError(f"{src}: {len(layers)} layers in the weights, config says {cfg['num_hidden_layers']}")


def convert_to_interchange(
    ckpt_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "fp32",
    max_shard_size: str | int = "5GB",
    force: bool = False,
    config_path: str | Path | None = None,
    allow_unverified: bool = False,
    progress: bool = False,
) -> ConvertResult:
    """Write ``config.json`` + safetensors (interchange format) for a DeepSpeed checkpoint (streaming).

    The input is verified first (``manifest.json`` present, every size and sha256 matching);
    an unverifiable checkpoint (no manifest, e.g. a bare DeepSpeed directory, or a mismatch)
    is refused unless ``allow_unverified``, which then adds a note to the result. Pickles are
    read by the restricted unpickler in any case (no flag makes a checkpoint run code).
    ``progress`` shows a bar of the bytes written on a terminal (tqdm, on stderr).
    """
    dt = {"fp32": "F32", "float32": "F32", "bf16": "BF16", "bfloat16": "BF16"}.get(dtype.lower())
    if dt is None:
        raise CheckpointError(f"dtype {dtype!r}: choose fp32 or bf16")
    limit = parse_size(max_shard_size)
    ckpt = step_dir_of(ckpt_dir)
    out = Path(out_dir)
    if out.exists() and not force:
        raise CheckpointError(f"{out}: already exists (pass --force to replace it)")
    unverified = verification_problem(ckpt)
    if unverified and not allow_unverified:
        raise CheckpointError(f"{unverified}; pass --allow-unverified to convert it anyway")
    model_cfg = _model_section(ckpt, config_path)
    from pmnet.release_format import InterchangeError, parse_config, write_metadata

    cfg = interchange_config({"tie_word_embeddings": True, **model_cfg}, "float32" if dt == "F32" else "bfloat16")
    try:  # the values the released code needs (sliding window on every layer, ...) are checked here
        parse_config(cfg, where=str(config_path or ckpt / CONFIG))
    except InterchangeError as err:
        raise CheckpointError(str(err)) from None
    plan, files, info = plan_deepspeed(ckpt)
    if unverified:
        info["notes"].append(f"unverified input (--allow-unverified): {unverified}")
    try:
        _check_config(cfg, plan, ckpt)
        shards: list[list[Planned]] = [[]]
        size = 0
        for t in plan:
            nbytes = t.numel * _itemsize(_out_dtype(t, dt))
            if shards[-1] and size + nbytes > limit:
                shards.append([])
                size = 0
            shards[-1].append(t)
            size += nbytes
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        names = [WEIGHTS_NAME] if len(shards) == 1 else [
            f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))
        ]  # fmt: skip
        total = 0
        todo = sum(t.numel * _itemsize(_out_dtype(t, dt)) for t in plan)
        bar = tqdm(total=todo, unit="B", unit_scale=True, unit_divisor=1024, desc="convert", file=sys.stderr,
                   disable=None if progress else True)  # fmt: skip
        try:
            for name, shard in zip(names, shards):
                total += _write_shard(tmp / name, shard, files, dt, bar.update)
            if len(shards) > 1:
                index = {"metadata": {"total_size": total},
                         "weight_map": {t.name: n for n, s in zip(names, shards) for t in s}}  # fmt: skip
                (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
            meta_files = write_metadata(tmp, cfg)  # tokenizer files + config.json
            _replace_dir(tmp, out)
        except PtReadError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(str(err)) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            bar.close()
    finally:
        for f in files:
            f.close()
    nparams = sum(t.numel for t in plan if not (t.name == "lm_head.weight" and cfg.get("tie_word_embeddings")))
    written = [*names, *([INDEX_NAME] if len(shards) > 1 else []), *meta_files]
    return ConvertResult(out, written, len(plan), nparams, total, info["zero_stage"], info["world_size"],
                         info.get("step"), info["notes"])  # fmt: skip


def verification_problem(ckpt: Path) -> str | None:
    """None when ``ckpt`` verifies against its manifest, else why not (one line naming the file).

    An *unsafe* checkpoint (a pickle naming a global outside the allowlist) is always an
    error, never just "unverified": no flag lets it through.
    """
    if not (ckpt / MANIFEST).is_file():
        return f"{ckpt}: {MANIFEST} missing: the checkpoint cannot be verified (incomplete copy or a bare DeepSpeed directory)"
    info = check_checkpoint(ckpt, verify_hashes=True)
    if info.state == "unsafe":
        raise CheckpointError(f"{ckpt}: unsafe: {info.reason}")
    if info.state != "valid":
        return f"{ckpt}: {info.state}: {info.reason}"
    return None


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished directory into place; an existing one is replaced only after the new one is complete."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def make_universal(ckpt_dir: str | Path, *, workers: int = 2, force: bool = False) -> Path:
    """Add ``universal/`` (DeepSpeed universal checkpoint) to a checkpoint and re-write its manifest."""
    ckpt = step_dir_of(ckpt_dir)
    dest = ckpt / "universal"
    if dest.exists() and not force:
        raise CheckpointError(f"{dest}: already exists (pass --force to rebuild it)")
    if (ckpt / MANIFEST).is_file():
        info = check_checkpoint(ckpt, verify_hashes=True)
        if info.state == "unsafe" or (info.state != "valid" and not (force and dest.exists())):
            raise CheckpointError(f"{ckpt}: {info.state}: {info.reason}")
    try:  # ds_to_universal unpickles with weights_only=False: nothing unlisted may reach it
        scan_pickles(p for p in pickle_files(ckpt) if "universal" not in p.relative_to(ckpt).parts)
    except PtReadError as err:
        raise CheckpointError(str(err)) from None
    tmp = ckpt.parent / f".universal-{ckpt.name}-{os.getpid()}"  # outside the checkpoint until complete
    shutil.rmtree(tmp, ignore_errors=True)
    # through pmnet.checkpoint.safeload: its torch.load calls run weights-only with the allowlist too
    cmd = [sys.executable, "-m", "pmnet.checkpoint.safeload", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(ckpt),
           "--output_folder", str(tmp), "--inject_missing_state",
           "--num_extract_workers", str(workers), "--num_merge_workers", str(max(1, workers // 2))]  # fmt: skip
    # ds_to_universal reads only DeepSpeed's files; ours (rank_*.pt, universal/) would confuse its globs
    root = str(Path(__file__).resolve().parents[2])  # so -m pmnet.checkpoint.safeload imports this checkout
    pypath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"), PYTHONPATH=pypath)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CheckpointError(f"ds_to_universal failed on {ckpt}: {tail[0]}")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    if (ckpt / MANIFEST).is_file():
        manifest = read_json(ckpt / MANIFEST)
        rels = [r for r in list_files(ckpt) if r.startswith("universal/")]
        manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("universal/")}
        manifest["files"].update(hash_files(ckpt, rels))
        manifest["files"] = dict(sorted(manifest["files"].items()))
        manifest["universal"] = True
        atomic_write_text(ckpt / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return dest


def read_meta(ckpt: Path) -> dict[str, Any]:
    """meta.json of one of our checkpoints ({} for a bare DeepSpeed checkpoint)."""
    return read_json(ckpt / META) if (ckpt / META).is_file() else {}
