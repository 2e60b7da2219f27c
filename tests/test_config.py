"""The typed config tree: YAML round trip, overrides, and one-line refusals of malformed configs."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pmnet.config import Config, ConfigError, dump_config, load_config, save_config
from pmnet.configtree import to_dict

REPO = Path(__file__).resolve().parents[1]
BASE = ["data.streams=[{local: /data/x}]"]


def write(tmp_path: Path, data: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_round_trip_is_equal(tmp_path: Path) -> None:
    cfg = load_config(None, [*BASE, "model.preset=tiny", "optim.schedule=wsd", "train.max_steps=777"])
    path = tmp_path / "resolved.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert dump_config(again) == dump_config(cfg)


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("train.micro_batch_size=4", "train.micro_batch_size", 4),
        ("optim.lr=3e-4", "optim.lr", 3e-4),
        ("optim.betas=[0.8, 0.99]", "optim.betas", [0.8, 0.99]),
        ("model.memory_cumsum=false", "model.memory_cumsum", False),
        ("train.run_name=123", "train.run_name", "123"),
        ("train.init_from=null", "train.init_from", None),
        ("train.init_from=weights/x", "train.init_from", "weights/x"),
        ("logging.peak_tflops=785", "logging.peak_tflops", 785.0),
    ],
)
def test_override_changes_exactly_the_named_field(override: str, key: str, expected: object) -> None:
    base = flatten(to_dict(load_config(None, BASE)))
    new = flatten(to_dict(load_config(None, [*BASE, override])))
    assert new[key] == expected
    changed = {k for k in base if base[k] != new[k]}
    assert changed <= {key}


def test_yaml_include_and_preset(tmp_path: Path) -> None:
    write(tmp_path, {"model": {"preset": "pmnet_30m"}, "train": {"max_steps": 5}}, "base.yaml")
    top = write(
        tmp_path,
        {
            "include": "base.yaml",
            "train": {"micro_batch_size": 2, "global_batch_size": 4},
            "data": {"streams": [{"local": "d"}]},
        },
    )
    cfg = load_config(top, ["model.sliding_window=64"])
    assert cfg.model.memory_size == 128 and cfg.model.sliding_window == 64
    assert cfg.train.max_steps == 5 and cfg.train.micro_batch_size == 2


def test_cli_value_wins_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"train": {"max_steps": 10}, "data": {"streams": [{"local": "d"}]}})
    assert load_config(path, ["train.max_steps=20"]).train.max_steps == 20


MALFORMED = [
    # (overrides or yaml dict, a fragment the message must contain)
    (["trian.max_steps=3"], "trian"),
    (["train.max_stpes=3"], "train.max_stpes"),
    (["train.max_steps=abc"], "train.max_steps"),
    (["train.max_steps=1.5"], "train.max_steps"),
    (["train.max_steps=0"], "train.max_steps"),
    (["train.activation_checkpointing=maybe"], "train.activation_checkpointing"),
    (["train.precision=fp16"], "train.precision"),
    (["optim.lr=-1"], "optim.lr"),
    (["optim.lr=fast"], "optim.lr"),
    (["optim.betas=0.9"], "optim.betas"),
    (["optim.betas=[0.9]"], "optim.betas"),
    (["optim.schedule=linear"], "optim.schedule"),
    (["optim.decay_fraction=0"], "optim.decay_fraction"),
    (["optim.warmup_steps=-1"], "optim.warmup_steps"),
    (["model.hidden_size=0"], "model.hidden_size"),
    (["model.num_hidden_layers=10"], "model.num_hidden_layers"),
    (["model.sliding_window=0"], "model.sliding_window"),
    (["model.head_dim=15"], "model.head_dim"),
    (["model.attn_backend=flash"], "model.attn_backend"),
    (["model.preset=gpt2"], "model.preset"),
    (["model.attention_dropout=1.5"], "model.attention_dropout"),
    (["train.micro_batch_size=3", "train.global_batch_size=8"], "train.global_batch_size"),
    (["train.tbptt_chunks=3"], "data.sample_bytes"),
    (["deepspeed.zero_stage=4"], "deepspeed.zero_stage"),
    (["checkpoint.keep_last=0"], "checkpoint.keep_last"),
    (["data.streams=[{remote: null}]"], "data.streams[0]"),
    (["data.streams=[{local: a, proportion: 0.5}, {local: b}]"], "data.streams"),
    (["data.streams=[{local: a, weight: 2}]"], "data.streams[0].weight"),
    (["eval.interval=10"], "eval.interval"),
    (["data.task=copy_paste", "data.sample_bytes=100"], "data.sample_bytes"),
    (["train"], "train"),
    (["model.hidden_size.x=3"], "model.hidden_size"),
]


@pytest.mark.parametrize(("overrides", "fragment"), MALFORMED, ids=[m[1] + f"-{i}" for i, m in enumerate(MALFORMED)])
def test_malformed_config_is_refused_naming_the_key(overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [*BASE, *overrides])
    msg = str(info.value)
    assert fragment in msg
    assert "\n" not in msg


def test_global_batch_checked_against_world_size() -> None:
    from pmnet.config import validate_config

    cfg = load_config(None, [*BASE, "train.micro_batch_size=2", "train.global_batch_size=6"])
    validate_config(cfg, world_size=3)
    with pytest.raises(ConfigError, match="train.global_batch_size"):
        validate_config(cfg, world_size=2)


def test_unknown_key_suggests_a_close_match() -> None:
    with pytest.raises(ConfigError, match="did you mean 'train.max_steps'"):
        load_config(None, [*BASE, "train.max_step=3"])


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("train: [1, 2]\n", "train"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("train: {max_steps: 3\n", "not valid YAML"),
        ("include: missing.yaml\n", "missing.yaml"),
        ("model: {hidden_size: '512'}\n", "model.hidden_size"),
    ],
)
def test_bad_yaml_files(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, BASE)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_cli_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pmnet.config", "train.max_steps=abc"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "train.max_steps" in proc.stderr


def test_help_lists_every_field_with_its_doc() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pmnet.config", "--help-config"], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert proc.returncode == 0

    def walk(cls: type, prefix: str) -> list[str]:
        names = []
        for f in dataclasses.fields(cls):
            tp = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                names += walk(tp, f"{prefix}{f.name}.")
            else:
                names.append(f"{prefix}{f.name}")
        return names

    lines = proc.stdout.splitlines()
    for name in walk(Config, ""):
        line = next((ln for ln in lines if ln.strip().startswith(name + " (")), None)
        assert line is not None, name
        assert line.rstrip().split("): ", 1)[1], f"{name} has no doc"
    # list entries document their own fields (a data stream's local / remote / proportion / split)
    for key in ("local", "remote", "proportion", "split"):
        line = next((ln for ln in lines if ln.strip().startswith(f"data.streams[].{key} (")), None)
        assert line is not None and line.rstrip().split("): ", 1)[1], key
    assert "__main__" not in proc.stdout and "list[StreamConfig]" in proc.stdout


def test_help_prints_usage() -> None:
    proc = subprocess.run([sys.executable, "-m", "pmnet.config", "--help"], capture_output=True, text=True, cwd=REPO,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m pmnet.config")
    assert "--help-config" in proc.stdout and "CONFIG" in proc.stdout
