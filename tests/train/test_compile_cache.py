"""train.compile_cache_dir: where torch.compile's caches go, so restarts skip most compilation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pmnet.config import ConfigError, load_config
from pmnet.train.trainer import use_compile_cache
from tests.train.conftest import REPO


def _cfg(*overrides: str):
    return load_config(REPO / "configs" / "demo.yaml", list(overrides))


def test_default_is_the_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    got = use_compile_cache(_cfg(), tmp_path / "run")
    assert got == tmp_path / "run" / "compile_cache" and got.is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(got.resolve())


def test_user_environment_wins_over_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert use_compile_cache(_cfg(), tmp_path / "run") is None
    assert not (tmp_path / "run").exists()
    # an explicit folder in the config wins over the environment
    got = use_compile_cache(_cfg(f"train.compile_cache_dir={tmp_path / 'shared'}"), tmp_path / "run")
    assert got == tmp_path / "shared" and got.is_dir()


def test_empty_keeps_torch_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert use_compile_cache(_cfg("train.compile_cache_dir="), tmp_path / "run") is None
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ


def test_uncreatable_folder_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="train.compile_cache_dir"):
        use_compile_cache(_cfg(f"train.compile_cache_dir={tmp_path / 'file' / 'sub'}"), tmp_path / "run")


def test_compile_summary_names_dynamo_time() -> None:
    """What the first step of a start logs about compilation (warm cache or cold)."""
    import torch

    from pmnet.train.metrics import compile_summary

    fn = torch.compile(lambda x: torch.sin(x) * 2 + 1, backend="eager")  # dynamo only: no C++ build
    fn(torch.randn(8))
    text = compile_summary(top=3, min_s=0.0)
    assert text is not None and "_compile.compile_inner" in text, text
    assert len(text.split(", ")) == 3 and all(part.endswith(" s") for part in text.split(", ")), text
    assert compile_summary(min_s=1e9) is None  # nothing that large: no line
