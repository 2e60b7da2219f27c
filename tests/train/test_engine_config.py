"""Fast checks of the engine's pure parts: LR schedules, parameter groups and families, the
DeepSpeed JSON (accumulation with K chunks), and the launcher's --dry-run / one-line errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pmnet.config import load_config
from pmnet.model import PMNetConfig, PMNetForCausalLM
from pmnet.train.engine import FAMILIES, deepspeed_config, lr_at, no_weight_decay, param_family, param_groups
from tests.conftest import thread_env
from tests.train.conftest import REPO, SAMPLE_BYTES, free_port, launch_env


def _cfg(*overrides: str):
    return load_config(REPO / "configs/demo.yaml", list(overrides))


def test_lr_schedules() -> None:
    c = _cfg("optim.warmup_steps=10", "train.max_steps=110", "optim.lr=1.0", "optim.min_lr_ratio=0.1")
    o = c.optim
    assert lr_at(0, 110, o) == pytest.approx(0.1) and lr_at(9, 110, o) == pytest.approx(1.0)
    assert lr_at(10, 110, o) == pytest.approx(1.0)
    assert lr_at(60, 110, o) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert lr_at(110, 110, o) == pytest.approx(0.1)
    o.schedule = "wsd"
    o.decay_fraction = 0.2  # the last 22 steps decay linearly
    assert lr_at(87, 110, o) == pytest.approx(1.0)
    assert lr_at(109, 110, o) == pytest.approx(0.1)
    assert 0.1 < lr_at(100, 110, o) < 1.0
    o.schedule = "constant"
    assert lr_at(100, 110, o) == 1.0


def test_param_groups_and_families() -> None:
    model = PMNetForCausalLM(PMNetConfig.from_preset("tiny"))
    names = dict(model.named_parameters())
    fams = {param_family(n) for n in names}
    assert fams == set(FAMILIES), fams  # nothing falls into "other"
    decay, plain = param_groups(model, 0.1)
    plain_names = {n for n, p in names.items() if any(p is q for q in plain["params"])}
    assert all("norm" in n or n.endswith(".bias") or "memory_embeddings" in n for n in plain_names)
    assert any("memory_embeddings" in n for n in plain_names)
    assert not any(no_weight_decay(n, names[n]) for n in names if n not in plain_names)
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert len(decay["params"]) + len(plain["params"]) == len(names)


def test_deepspeed_json_counts_tbptt_chunks() -> None:
    c = _cfg("train.micro_batch_size=2", "train.global_batch_size=16", "train.tbptt_chunks=4", "data.sample_bytes=129")
    ds = deepspeed_config(c, world_size=2)
    assert ds["gradient_accumulation_steps"] == 4 * 4  # 16 / (2 x 2) micro-batches, x K chunks
    assert ds["train_batch_size"] == 2 * 16 * 2
    assert ds["zero_allow_untested_optimizer"] and not ds["bf16"]["enabled"]
    c3 = _cfg("deepspeed.zero_stage=3", "train.precision=bf16")
    assert deepspeed_config(c3, 1)["zero_optimization"]["stage"] == 3 and deepspeed_config(c3, 1)["bf16"]["enabled"]


def _data(shards: Path) -> list[str]:
    """The dry-run checks the data streams: point the demo config at the session's shards."""
    return [f"data.streams=[{{local: {shards}, split: train}}]", f"data.val_streams=[{{local: {shards}, split: val}}]",
            f"data.sample_bytes={SAMPLE_BYTES}"]  # fmt: skip


def test_dry_run_and_one_line_errors(shards: Path, tmp_path: Path) -> None:
    env = launch_env()
    out = subprocess.run(
        ["bash", "launchers/pretrain.sh", "configs/demo.yaml", "--dry-run", "--cpu-ranks", "2",
         "train.global_batch_size=16", f"train.run_root={tmp_path}", *_data(shards)],  # not the demo's runs/
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    for needle in ("# resolved config", "parameters:            220,800", "training FLOPs/byte",
                   "# DeepSpeed config", "# world layout", "2 cpu rank(s)", "# command", "deepspeed.launcher.launch",
                   "# pre-flight (data streams, run directory): passed"):  # fmt: skip
        assert needle in out.stdout, needle
    # each of the 2 ranks gets half the cores, as the tests' own child processes do (tests/conftest.py)
    assert f"OMP_NUM_THREADS={thread_env(2)['OMP_NUM_THREADS']} per rank" in out.stdout
    bad = subprocess.run(
        ["bash", "launchers/pretrain.sh", "configs/demo.yaml", "train.global_batch_size=7", "--cpu-ranks", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert bad.returncode == 2
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "train.global_batch_size=7" in lines[0] and "Traceback" not in bad.stderr


def test_single_node_launch_picks_a_free_port_and_refuses_a_taken_given_one(shards: Path, tmp_path: Path) -> None:
    """With no port given, the launcher takes one the OS reports free (never a busy one); a given
    port that is taken is one error line, before any rank starts."""
    import socket

    def launch(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "launchers/pretrain.sh", "configs/demo.yaml", "--dry-run", *_data(shards),
             f"train.run_root={tmp_path}", *extra],
            cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        out = launch()
        assert out.returncode == 0, out.stderr
        layout = next(ln for ln in out.stdout.splitlines() if ln.startswith("single node"))
        assert not layout.endswith(f":{taken}")
        bad = launch("--master-port", str(taken))
        assert bad.returncode == 2, bad.stdout[-2000:]
        lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and f"rendezvous port {taken} (--master-port) is in use" in lines[0], bad.stderr
    free = free_port()
    kept = launch("--master-port", str(free))
    assert kept.returncode == 0, kept.stderr
    assert f"master 127.0.0.1:{free}" in kept.stdout  # a given free port is kept


def test_ssh_launch_forwards_our_environment(shards: Path, tmp_path: Path) -> None:
    """Ranks started over ssh (hostfile, pdsh) get PMNET_* / TORCH_* / NVSHMEM_* ... and the names in
    PMNET_EXPORT_ENV through DeepSpeed's env file; a name that is not set is a one-line error."""
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=1\n")
    env = launch_env() | {"PMNET_EXPORT_ENV": "MY_FLAG", "MY_FLAG": "1", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
    cmd = [
        "bash",
        "launchers/pretrain.sh",
        "configs/demo.yaml",
        "--dry-run",
        "--hostfile",
        str(hostfile),
        *_data(shards),
        f"train.run_root={tmp_path}",
    ]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("exported to every node"))
    assert "MY_FLAG" in line and "TORCH_SYMM_MEM_DISABLE_MULTICAST" in line
    bad = subprocess.run(
        cmd, cwd=REPO, env=env | {"PMNET_EXPORT_ENV": "NOT_SET_ANYWHERE"}, capture_output=True, text=True, timeout=600
    )
    assert bad.returncode == 2
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "NOT_SET_ANYWHERE" in lines[0]
