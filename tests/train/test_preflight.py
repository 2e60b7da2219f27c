"""The pre-flight (pmnet.train.preflight): bad data streams and refused resumes are one line before
any rank starts, from the library, ``--dry-run``, the launcher and a bare ``python -m pmnet.train``;
nothing is created in the run directory by a refused launch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pmnet.config import ConfigError, load_config
from pmnet.train.preflight import RESUME_GUARDED, preflight
from tests.train.conftest import REPO, SAMPLE_BYTES, base_overrides, launch_env, pretrain_cmd


def _cfg(shards: Path, tmp_path: Path, *extra: str, name: str = "run"):
    return load_config(REPO / "configs/demo.yaml", [*base_overrides(shards, tmp_path, name), *extra])


def _refused(cfg, *needles: str, allow: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as err:
        preflight(cfg, 1, allow)
    msg = str(err.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    return msg


def _copy_split(shards: Path, dst: Path) -> Path:
    """A private copy of the val split (the session shards stay untouched)."""
    shutil.copytree(shards / "val", dst, ignore=shutil.ignore_patterns("*.mds"))
    return dst


def test_streams_are_checked_before_launch(shards: Path, tmp_path: Path) -> None:
    ok = preflight(_cfg(shards, tmp_path), 1)
    assert ok.notes == [] and ok.resume_from is None
    assert not (tmp_path / "run").exists()  # read-only: no run directory

    _refused(_cfg(shards, tmp_path, "data.streams=[{local: /no/such/dir, split: train}]"), "data.streams[0]",
             "/no/such/dir/train does not exist")  # fmt: skip
    _refused(_cfg(shards, tmp_path, f"data.streams=[{{local: {shards}}}]"), "no index.json", "set split: train")
    # the shards hold 129-byte samples: another sample size is refused with both numbers
    _refused(_cfg(shards, tmp_path, "data.sample_bytes=257"), f"hold samples of {SAMPLE_BYTES} bytes",
             "data.sample_bytes=257", f"set data.sample_bytes={SAMPLE_BYTES}")  # fmt: skip
    # ... and with K chunks the stored size must also split into K equal chunks
    _refused(_cfg(shards, tmp_path, "data.sample_bytes=130", "train.tbptt_chunks=3"),
             f"train.tbptt_chunks dividing {SAMPLE_BYTES - 1}")  # fmt: skip

    # validation streams count only when eval runs
    missing_val = "data.val_streams=[{local: /no/such/val}]"
    preflight(_cfg(shards, tmp_path, missing_val, "eval.interval=0"), 1)
    _refused(_cfg(shards, tmp_path, missing_val, "eval.interval=2"), "data.val_streams[0]", "/no/such/val")


def test_bad_index_and_shard_files_are_named(shards: Path, tmp_path: Path) -> None:
    def stream(d: Path) -> str:
        return f"data.streams=[{{local: {d}}}]"

    garbled = _copy_split(shards, tmp_path / "garbled")
    (garbled / "index.json").write_text("{not json")
    _refused(_cfg(shards, tmp_path, stream(garbled)), f"{garbled}/index.json is unreadable")

    other = _copy_split(shards, tmp_path / "other")
    text = (other / "index.json").read_text().replace('"format": "mds"', '"format": "jsonl"')
    (other / "index.json").write_text(text)
    _refused(_cfg(shards, tmp_path, stream(other)), "shard 0 has format 'jsonl', not 'mds'")

    cut = _copy_split(shards, tmp_path / "cut")
    shard = next(cut.rglob("*.mds.zstd"))
    shard.write_bytes(shard.read_bytes()[:12])
    _refused(_cfg(shards, tmp_path, stream(cut)), str(shard))

    gone = _copy_split(shards, tmp_path / "gone")
    shard = next(gone.rglob("*.mds.zstd"))
    shard.unlink()
    _refused(_cfg(shards, tmp_path, stream(gone)), f"shard {shard} is missing")


def test_remote_streams_check_what_is_local(shards: Path, tmp_path: Path) -> None:
    # object storage: nothing to read before the download, said in a note
    remote = f"data.streams=[{{remote: 's3://bucket/ds', local: {tmp_path / 'cache'}}}]"
    (note,) = preflight(_cfg(shards, tmp_path, remote), 1).notes
    assert "s3://bucket/ds not checked before download" in note
    # ... unless the local cache already holds the index (and shards): then it is checked
    _copy_split(shards, tmp_path / "cache")
    assert "checked the cached index" in preflight(_cfg(shards, tmp_path, remote), 1).notes[0]
    assert f"({SAMPLE_BYTES}-byte samples)" in preflight(_cfg(shards, tmp_path, remote), 1).notes[0]
    _refused(_cfg(shards, tmp_path, remote, "data.sample_bytes=257"), "hold samples of 129 bytes")
    # a local directory standing in for the remote is checked in full
    stand_in = f"data.streams=[{{remote: {shards}, split: train, local: {tmp_path / 'c2'}}}]"
    assert preflight(_cfg(shards, tmp_path, stand_in), 1).notes == []
    _refused(_cfg(shards, tmp_path, stand_in, "data.sample_bytes=257"), "hold samples of 129 bytes")


@pytest.fixture(scope="module")
def trained(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A run directory with a checkpoint: 2 steps of a bare ``python -m pmnet.train``."""
    root = tmp_path_factory.mktemp("preflight_runs")
    ov = base_overrides(shards, root, "r", train__max_steps=2, deepspeed__zero_stage=1)
    p = subprocess.run([sys.executable, "-m", "pmnet.train", "configs/demo.yaml", *ov], cwd=REPO, env=launch_env(),
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return root / "r", ov


def test_resume_refuses_a_schedule_change_unless_named(trained: tuple[Path, list[str]]) -> None:
    run, ov = trained

    def cfg(*extra: str):
        return load_config(REPO / "configs/demo.yaml", [*ov, *extra])

    same = preflight(cfg(), 1)
    assert same.resume_from == run / "checkpoints" / "step_00000002"
    assert same.notes == [f"resuming {run} from step_00000002: config unchanged"]

    msg = _refused(cfg("train.max_steps=5"), "train.max_steps 2 -> 5", "--allow-change train.max_steps")
    assert RESUME_GUARDED["train.max_steps"] in msg
    _refused(cfg("optim.lr=0.01", "optim.betas=[0.8,0.9]"), "optim.lr", "optim.betas",
             "--allow-change optim.lr,optim.betas")  # fmt: skip
    # named: accepted, and said in one note
    (note,) = preflight(cfg("train.max_steps=5"), 1, ["train.max_steps"]).notes
    assert "train.max_steps 2 -> 5" in note and "accepted by --allow-change" in note
    _refused(cfg("train.max_steps=5", "optim.lr=0.01"), "optim.lr", allow=("train.max_steps",))
    _refused(cfg(), "--allow-change max_steps: not a guarded field", allow=("max_steps",))
    # a field the schedule does not read (WSD's decay under cosine) and a non-schedule field: a note only
    (note,) = preflight(cfg("optim.decay_fraction=0.5", "logging.log_interval=5"), 1).notes
    assert "optim.decay_fraction 0.2 -> 0.5" in note and "logging.log_interval 1 -> 5" in note
    # never loadable / never exact: refused, no flag accepts them
    _refused(cfg("model.hidden_size=32"), "model.hidden_size 64 -> 32", "weights do not fit")
    _refused(cfg("train.global_batch_size=16"), "set train.global_batch_size=8")
    # checkpoint.resume=false starts fresh: said, not refused
    assert "starting fresh" in preflight(cfg("checkpoint.resume=false", "train.max_steps=5"), 1).notes[0]


def test_trainer_and_launcher_refuse_before_any_rank(trained: tuple[Path, list[str]], shards: Path,
                                                     tmp_path: Path) -> None:  # fmt: skip
    run, ov = trained
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    # a bare trainer process refuses the schedule change in one line, before touching the run directory
    p = subprocess.run([sys.executable, "-m", "pmnet.train", "configs/demo.yaml", *ov, "train.max_steps=5"],
                       cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    errors = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert (
        len(errors) == 1 and errors[0].startswith("error: resuming") and "--allow-change train.max_steps" in errors[0]
    )
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before

    # the launcher's --dry-run forwards --allow-change and shows the accepted change
    dry = subprocess.run(pretrain_cmd("configs/demo.yaml", [*ov, "train.max_steps=5"], "--dry-run", "--allow-change",
                                      "train.max_steps"), cwd=REPO, env=launch_env(), capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "train.max_steps 2 -> 5 (accepted by --allow-change: train.max_steps)" in dry.stdout

    # a launch with a sample size the shards do not hold: one line, no rank started, no run directory
    fresh = base_overrides(shards, tmp_path, "fresh", data__sample_bytes=257)
    bad = subprocess.run(pretrain_cmd("configs/demo.yaml", fresh, "--cpu-ranks", "2"), cwd=REPO, env=launch_env(),
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert bad.returncode == 2, bad.stdout[-2000:] + bad.stderr[-2000:]
    lines = [ln for ln in (bad.stdout + bad.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "hold samples of 129 bytes but data.sample_bytes=257" in lines[0], lines
    assert not (tmp_path / "fresh").exists()

    # --dry-run finds a missing data path (it used to pass)
    gone = base_overrides(tmp_path / "no-such-shards", tmp_path, "gone")
    dry = subprocess.run(pretrain_cmd("configs/demo.yaml", gone, "--dry-run"), cwd=REPO, env=launch_env(),
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert dry.returncode == 2
    assert [ln for ln in dry.stderr.splitlines() if ln.strip()] == [
        f"error: data.streams[0]: {tmp_path / 'no-such-shards' / 'train'} does not exist"
    ]
