"""Audit one checkpoint (or compare two): every problem is named, nothing is modified.

Checks (each a :class:`Check` with a one-line detail):

* ``manifest``: present and parseable; every listed file present with its size and sha256;
  no unlisted file. For torch zip files the members' own CRC32s tell a corrupt file
  ("changed bytes in member data/3") from a manifest that lies about an intact file.
* ``expected_files``: the files of the saved world size and ZeRO stage (DeepSpeed's and ours).
* ``readable`` / ``finite``: every .pt file parses (restricted unpickler) and every floating
  tensor in it (weights, fp32 masters, Adam moments) is finite.
* ``shapes``: parameter names/shapes and count against the saved model config.
* ``steps``: directory, manifest, meta, trainer state, DeepSpeed global step, Adam step
  (+ skipped steps) and LR scheduler agree.
* ``data``: the dataloader position matches samples seen, and bytes seen = samples x (sample_bytes - 1).

The summary holds step, bytes seen, loss at save and the L2 norm of each parameter family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.verify import verify_shards
from pmnet.checkpoint.manifest import (
    CONFIG,
    MANIFEST,
    META,
    TRAINER_STATE,
    CheckpointError,
    expected_files,
    list_files,
    parse_step,
    rank_file,
    read_json,
    sha256_file,
    zip_crc_problem,
)
from pmnet.checkpoint.ptread import DTYPES, PtFile, PtReadError, TensorRef
from pmnet.families import param_family

__all__ = ["AuditReport", "Check", "audit_checkpoint", "compare_checkpoints", "param_family"]

CHUNK = 1 << 22  # elements read at a time when scanning tensors


@dataclass
class Check:
    """One audit check: passed or not, with a one-line detail."""

    name: str
    ok: bool
    detail: str


@dataclass
class AuditReport:
    """All checks plus the summary of one checkpoint."""

    path: Path
    checks: list[Check] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    family_norms: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, problems: list[str], ok_detail: str) -> None:
        self.checks.append(Check(name, not problems, "; ".join(problems) if problems else ok_detail))

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "ok": self.ok,
            "checks": [c.__dict__ for c in self.checks],
            "summary": self.summary,
            "family_norms": self.family_norms,
        }


# ---------------------------------------------------------------- manifest
def check_manifest(ckpt: Path, report: AuditReport, verify_hashes: bool) -> dict[str, Any]:
    """Every manifest problem, named per file; returns the manifest's file table ({} if none)."""
    problems: list[str] = []
    present = set(list_files(ckpt))
    if not (ckpt / MANIFEST).is_file():
        report.add("manifest", [f"{MANIFEST} missing (checkpoint never finished or the manifest was deleted)"], "")
        return {}
    try:
        manifest = read_json(ckpt / MANIFEST)
        files: dict[str, Any] = manifest["files"]
    except (CheckpointError, KeyError, TypeError) as err:
        report.add("manifest", [f"{MANIFEST} unreadable ({err})"], "")
        return {}
    step = parse_step(ckpt.name)
    if step is not None and manifest.get("step") not in (None, step):
        problems.append(f"{MANIFEST} lies: says step {manifest.get('step')} in {ckpt.name}")
    for rel, entry in sorted(files.items()):
        path = ckpt / rel
        if rel not in present:
            problems.append(f"{rel}: deleted (listed in {MANIFEST}, not on disk)")
            continue
        size = path.stat().st_size
        zip_problem = zip_crc_problem(path) if rel.endswith(".pt") else None
        if size != entry.get("size"):
            kind = "truncated" if size < int(entry.get("size") or 0) else "size changed"
            if zip_problem is None and rel.endswith(".pt"):
                problems.append(
                    f"{MANIFEST} lies about {rel}: lists {entry.get('size')} bytes, the intact file has {size}"
                )
            else:
                problems.append(f"{rel}: {kind} ({size} bytes, {MANIFEST} says {entry.get('size')})")
            continue
        if verify_hashes and sha256_file(path) != entry.get("sha256"):
            if zip_problem is not None:
                problems.append(f"{rel}: corrupt data, {zip_problem} (sha256 differs from {MANIFEST})")
            elif rel.endswith(".pt"):
                problems.append(f"{MANIFEST} lies about {rel}: sha256 differs but every zip member passes its CRC32")
            else:
                problems.append(f"{rel}: sha256 differs from {MANIFEST} (file changed, or the manifest lies)")
    for rel in sorted(present - set(files)):
        problems.append(f"{rel}: present but not in {MANIFEST} (manifest incomplete or file added later)")
    report.add("manifest", problems, f"{len(files)} files, sizes{' and sha256' if verify_hashes else ''} match")
    return files


# ---------------------------------------------------------------- tensors
def _walk(obj: Any, path: str = "") -> Any:
    if isinstance(obj, TensorRef):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")


def _nonfinite(pf: PtFile, ref: TensorRef) -> int:
    """Count of non-finite values of a floating tensor (read in chunks)."""
    if ref.dtype not in ("F32", "F64", "F16", "BF16") or not ref.contiguous:
        return 0
    raw = DTYPES[ref.storage][1]
    bad, start, n = 0, 0, ref.numel
    while start < n:
        buf = np.empty(min(CHUNK, n - start), dtype=raw)
        pf.read_range(ref, start, buf)
        if ref.dtype == "BF16":
            bad += int(np.count_nonzero((buf & 0x7F80) == 0x7F80))
        else:
            bad += int(buf.size - np.count_nonzero(np.isfinite(buf)))
        start += buf.size
    return bad


def check_tensors(ckpt: Path, report: AuditReport) -> dict[str, Any]:
    """Parse every .pt file and scan its floating tensors; returns {file: unpickled object}."""
    unreadable, nonfinite, objs = [], [], {}
    count = 0
    for rel in list_files(ckpt):
        if not rel.endswith(".pt") or rel.startswith("universal/"):
            continue
        try:
            with PtFile(ckpt / rel) as pf:
                objs[rel] = pf.obj
                for where, ref in _walk(pf.obj):
                    count += 1
                    bad = _nonfinite(pf, ref)
                    if bad:
                        nonfinite.append(f"{rel}: {where} has {bad} non-finite value(s)")
        except PtReadError as err:
            unreadable.append(str(err).replace(str(ckpt) + "/", ""))
    report.add("readable", unreadable, f"{len(objs)} torch files parse (restricted unpickler, no code run)")
    report.add("finite", nonfinite[:5] + ([f"(+{len(nonfinite) - 5} more)"] if len(nonfinite) > 5 else []),
               f"{count} tensors scanned, all finite")  # fmt: skip
    return objs


def check_shapes(ckpt: Path, cfg_model: dict[str, Any], report: AuditReport) -> dict[str, tuple[int, ...]]:
    """Compare the checkpoint's parameter shapes with those the saved config implies."""
    from pmnet.checkpoint.convert import plan_deepspeed

    try:
        plan, files, _ = plan_deepspeed(ckpt)
    except CheckpointError as err:
        report.add("shapes", [str(err)], "")
        return {}
    for f in files:
        f.close()
    shapes = {t.name: t.shape for t in plan}
    problems = []
    try:
        from pmnet.model import PMNetConfig
        from pmnet.model.interchange import expected_shapes

        fields = {k: v for k, v in cfg_model.items() if k in PMNetConfig.__dataclass_fields__}
        mcfg = PMNetConfig(**fields)
        want = expected_shapes(mcfg)
        for name in sorted(set(want) | set(shapes)):
            if name not in shapes:
                problems.append(f"{name}: expected by the config, missing from the checkpoint")
            elif name not in want:
                problems.append(f"{name}: in the checkpoint, not in a model of the saved config")
            elif tuple(shapes[name]) != tuple(want[name]):
                problems.append(f"{name}: shape {tuple(shapes[name])}, config implies {tuple(want[name])}")
        count = sum(math.prod(s) for n, s in shapes.items() if not (n == "lm_head.weight" and mcfg.tie_word_embeddings))
        if count != mcfg.num_parameters():
            problems.append(f"parameter count {count:,} != {mcfg.num_parameters():,} from the config")
    except (TypeError, ValueError) as err:
        problems.append(f"{CONFIG}: model section unusable ({err})")
        count = 0
    report.add("shapes", problems[:5], f"{len(shapes)} tensors, {count:,} parameters match the config")
    report.summary["num_parameters"] = count
    return shapes


# ---------------------------------------------------------------- steps and data
def _scalar(ref_or_value: Any, pf_path: Path | None = None) -> float | None:
    if isinstance(ref_or_value, (int, float)):
        return float(ref_or_value)
    if isinstance(ref_or_value, TensorRef) and pf_path is not None:
        with PtFile(pf_path) as pf:
            return float(pf.read(ref_or_value).reshape(-1)[0])
    return None


def check_steps(
    ckpt: Path, objs: dict[str, Any], meta: dict[str, Any], ts: dict[str, Any], report: AuditReport
) -> None:
    """Directory, meta, trainer state, engine, optimizer and scheduler step counts agree."""
    problems = []
    step = parse_step(ckpt.name)
    seen = {"directory": step, "meta.json": meta.get("step"), "trainer_state.json": ts.get("step")}
    model_file = next((r for r in objs if r.endswith("model_states.pt")), None)
    if model_file:
        seen["DeepSpeed global_steps"] = objs[model_file].get("global_steps")
    vals = {k: v for k, v in seen.items() if v is not None}
    if len(set(vals.values())) > 1:
        problems.append("step disagrees: " + ", ".join(f"{k}={v}" for k, v in vals.items()))
    skipped = int(ts.get("skipped_steps", 0) or 0)
    ref_step = ts.get("step", step)
    adam_checked = None
    for rel, obj in sorted(objs.items()):
        if not rel.endswith("optim_states.pt"):
            continue
        osd = obj.get("optimizer_state_dict", {})
        inner = osd.get("base_optimizer_state") or osd.get("optimizer_state_dict") or {}
        for idx, st in (inner.get("state") or {}).items():
            adam = _scalar(st.get("step"), ckpt / rel) if isinstance(st, dict) else None
            adam_checked = adam if adam_checked is None else adam_checked
            if adam is not None and ref_step is not None and int(adam) != int(ref_step) - skipped:
                problems.append(
                    f"{rel}: Adam step {int(adam)} for group {idx}, expected {ref_step} - {skipped} skipped"
                )
                break
        break  # the first optimizer file is representative; the others are checked by the manifest
    if model_file:
        sched = objs[model_file].get("lr_scheduler")
        if (
            isinstance(sched, dict)
            and "last_epoch" in sched
            and ref_step is not None
            and sched["last_epoch"] != ref_step
        ):
            problems.append(f"lr scheduler last_epoch={sched['last_epoch']}, trainer step {ref_step}")
    adam_txt = f"Adam step {int(adam_checked)}" if adam_checked is not None else "no ZeRO optimizer file to check"
    report.add("steps", problems, f"step {ref_step} everywhere ({adam_txt}, {skipped} skipped)")


def _position(state: Any) -> int | None:
    if not isinstance(state, dict):
        return None
    for key in ("sample_in_epoch", "global_consumed", "samples_seen", "position"):
        if isinstance(state.get(key), int):
            return int(state[key]) if key != "sample_in_epoch" or not state.get("epoch") else None
    for v in state.values():
        pos = _position(v)
        if pos is not None:
            return pos
    return None


def check_data(ckpt: Path, objs: dict[str, Any], meta: dict[str, Any], ts: dict[str, Any], report: AuditReport) -> None:
    """Dataloader position vs samples seen, and bytes seen vs samples x (sample_bytes - 1)."""
    problems = []
    samples, nbytes, sb = ts.get("samples_seen"), ts.get("bytes_seen"), ts.get("sample_bytes")
    if samples is not None and nbytes is not None and sb and int(nbytes) != int(samples) * (int(sb) - 1):
        problems.append(f"bytes_seen={nbytes} but samples_seen x (sample_bytes - 1) = {int(samples) * (int(sb) - 1)}")
    states = [objs.get(rank_file(r), {}).get("dataloader") for r in range(int(meta.get("world_size", 1)))]
    positions = {pos for s in states if s is not None and (pos := _position(s)) is not None}
    if len(positions) > 1:
        problems.append(f"ranks disagree on the dataloader position: {sorted(positions)}")
    elif positions and samples is not None and next(iter(positions)) != int(samples):
        problems.append(f"dataloader position {next(iter(positions))} != samples_seen {samples}")
    if states and all(s is None for s in states):
        detail = "no dataloader state saved"
    else:
        detail = f"dataloader at sample {next(iter(positions), '?')}, samples_seen {samples}, bytes_seen {nbytes}"
    report.add("data", problems, detail)


# ---------------------------------------------------------------- summary
def family_norms(ckpt_or_dir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """(per-family L2 norm, per-tensor L2 norm) of the fp32 weights (streamed, one tensor at a time)."""
    per_tensor: dict[str, float] = {}
    for name, arr in iter_weights(ckpt_or_dir):
        per_tensor[name] = float(np.sqrt(np.dot(arr.astype(np.float64), arr.astype(np.float64))))
    fam: dict[str, float] = {}
    for name, norm in per_tensor.items():
        if name == "lm_head.weight" and "model.embed_tokens.weight" in per_tensor:
            continue  # tied: counted once
        f = param_family(name)
        fam[f] = fam.get(f, 0.0) + norm**2
    return {k: math.sqrt(v) for k, v in sorted(fam.items())}, per_tensor


def iter_weights(path: Path) -> Any:
    """Yield (name, flat fp32 array) from a DeepSpeed checkpoint or an interchange directory."""
    from pmnet.checkpoint.convert import _materialize, plan_deepspeed

    if any(path.glob("*model_states.pt")):
        plan, files, _ = plan_deepspeed(path)
        try:
            for t in plan:
                yield t.name, _materialize(t, files).astype(np.float32, copy=False)
        finally:
            for f in files:
                f.close()
        return
    from safetensors import safe_open

    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{path}: neither a DeepSpeed checkpoint nor an interchange directory")
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                yield key, f.get_tensor(key).float().numpy().reshape(-1)


def audit_checkpoint(path: str | Path, *, verify_hashes: bool = True, verify_data: bool = False) -> AuditReport:
    """Run every check on one checkpoint directory."""
    ckpt = Path(path)
    report = AuditReport(path=ckpt)
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: no such checkpoint directory")
    check_manifest(ckpt, report, verify_hashes)
    meta: dict[str, Any] = {}
    ts: dict[str, Any] = {}
    cfg: dict[str, Any] = {}
    try:
        meta = read_json(ckpt / META)
        ts = read_json(ckpt / TRAINER_STATE)
        import yaml

        cfg = yaml.safe_load((ckpt / CONFIG).read_text()) or {}
    except (CheckpointError, OSError, ValueError) as err:
        report.add("metadata", [str(err).replace(str(ckpt) + "/", "")], "")
    present = set(list_files(ckpt))
    if meta:
        missing = [names[-1] for names in expected_files(meta) if not any(n in present for n in names)]
        report.add("expected_files", [f"{m}: missing for world size {meta.get('world_size')} / ZeRO stage "
                                      f"{meta.get('zero_stage')}" for m in missing],
                   f"all files of world size {meta.get('world_size')}, ZeRO stage {meta.get('zero_stage')}")  # fmt: skip
    objs = check_tensors(ckpt, report)
    if cfg.get("model"):
        check_shapes(ckpt, cfg["model"], report)
    check_steps(ckpt, objs, meta, ts, report)
    check_data(ckpt, objs, meta, ts, report)
    if verify_data:
        _verify_data(cfg, report)
    report.summary.update(
        step=ts.get("step", meta.get("step")),
        bytes_seen=ts.get("bytes_seen"),
        samples_seen=ts.get("samples_seen"),
        loss=ts.get("last_loss", ts.get("loss")),
        skipped_steps=ts.get("skipped_steps"),
        world_size=meta.get("world_size"),
        zero_stage=meta.get("zero_stage"),
        precision=meta.get("precision"),
        code_version=meta.get("code_version"),
    )
    if objs:
        try:
            report.family_norms, _ = family_norms(ckpt)
        except (CheckpointError, PtReadError) as err:
            report.add("norms", [str(err)], "")
    return report


def _verify_data(cfg: dict[str, Any], report: AuditReport) -> None:
    problems = []
    streams = (cfg.get("data") or {}).get("streams") or []
    for s in streams:
        local = s.get("local")
        if local and Path(local).exists():
            problems += verify_shards(Path(local) / (s.get("split") or ""))
    report.add("data_shards", problems[:5], f"{len(streams)} stream(s) verified")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def _load_config(path: Path) -> dict[str, Any]:
    import json

    import yaml

    if (path / CONFIG).is_file():
        return yaml.safe_load((path / CONFIG).read_text()) or {}
    if (path / "config.json").is_file():
        return {"model": json.loads((path / "config.json").read_text())}
    return {}


def compare_checkpoints(a: str | Path, b: str | Path) -> dict[str, Any]:
    """Config differences and per-tensor relative L2 difference ||a - b|| / ||a|| (streamed)."""
    pa, pb = Path(a), Path(b)
    ca, cb = _flat(_load_config(pa)), _flat(_load_config(pb))
    config_diffs = [
        {"key": k, "a": ca.get(k), "b": cb.get(k)} for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k)
    ]
    wb = dict(iter_weights(pb))  # one side in memory; the other streamed
    tensors, only_a = [], []
    for name, arr in iter_weights(pa):
        other = wb.pop(name, None)
        if other is None:
            only_a.append(name)
            continue
        if other.size != arr.size:
            tensors.append({"name": name, "rel_l2": None, "note": f"sizes {arr.size} vs {other.size}"})
            continue
        diff = float(np.linalg.norm(arr.astype(np.float64) - other.astype(np.float64)))
        ref = float(np.linalg.norm(arr.astype(np.float64)))
        tensors.append({"name": name, "rel_l2": diff / ref if ref > 0 else (0.0 if diff == 0 else math.inf)})
    return {"a": str(pa), "b": str(pb), "config_diffs": config_diffs, "tensors": tensors,
            "only_a": only_a, "only_b": sorted(wb)}  # fmt: skip
