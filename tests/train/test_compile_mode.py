"""train.compile_mode: what ``train.compile`` compiles (shared module graphs or whole decoder layers)."""

from __future__ import annotations

import pytest

from pmnet.config import ConfigError, load_config
from tests.train.conftest import REPO


def _cfg(*overrides: str):
    return load_config(REPO / "configs" / "demo.yaml", list(overrides))


def test_modes_and_a_bad_value() -> None:
    assert _cfg().train.compile_mode == "modules"
    assert _cfg("train.compile_mode=layers").train.compile_mode == "layers"
    with pytest.raises(ConfigError, match=r"train\.compile_mode.*'graphs'.*modules.*layers"):
        _cfg("train.compile_mode=graphs")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["modules", "layers"])
def test_build_model_compiles_what_the_mode_says(mode: str) -> None:
    from pmnet.model.memory import PhasorMemoryRead
    from pmnet.train.engine import build_model, deepspeed_config

    cfg = _cfg("train.compile=true", f"train.compile_mode={mode}", "train.device=cuda")
    model = build_model(cfg, deepspeed_config(cfg, 1))
    layers_compiled = [getattr(layer, "_compiled_call_impl", None) is not None for layer in model.model.layers]
    cores = [m.compiled_cores for m in model.modules() if isinstance(m, PhasorMemoryRead)]
    if mode == "layers":
        assert all(layers_compiled) and not any(cores)
    else:
        assert not any(layers_compiled) and all(cores)
