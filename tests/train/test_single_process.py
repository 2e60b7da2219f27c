"""A bare `python -m pmnet.train` (one process, no launcher, no MPI): train.init_from loads
interchange weights (laid out as transformers saves the released model: no tied lm_head.weight); a changed model shape is refused in one line, for init_from and for resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pmnet.model import PMNetConfig, PMNetForCausalLM, save_pretrained
from tests.train.conftest import REPO, base_overrides, launch_env, model_weights


def _train(ov: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pmnet.train", "configs/demo.yaml", *ov], cwd=REPO,
                          env=launch_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=900)  # fmt: skip


def _one_error_line(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 2, p.stdout[-3000:] + p.stderr[-3000:]
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), p.stderr[-3000:]
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_init_from_and_shape_refusals(shards: Path, tmp_path: Path) -> None:
    torch.manual_seed(7)
    src = PMNetForCausalLM(PMNetConfig.from_preset("tiny"))
    save_pretrained(src, tmp_path / "released", src.config)
    # as transformers saves the released model: the tied lm_head.weight is not in the file
    weights = load_file(str(tmp_path / "released" / "model.safetensors"))
    del weights["lm_head.weight"]
    save_file(weights, str(tmp_path / "released" / "model.safetensors"), metadata={"format": "pt"})

    # 1 step at a negligible lr: the trained weights are the released ones
    ov = base_overrides(shards, tmp_path, "init", train__max_steps=1, optim__warmup_steps=0, optim__lr=1e-12,
                        train__init_from=tmp_path / "released", deepspeed__zero_stage=1)  # fmt: skip
    p = _train(ov)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "initialised weights from" in p.stdout
    assert "first step done" in p.stdout  # start-up time (compile-cache effect) is reported once
    got = model_weights(tmp_path / "init" / "checkpoints" / "step_00000001")
    for key, want in src.state_dict().items():
        assert torch.allclose(got[key].float(), want, atol=1e-6), key

    # the run report (the demo's closing picture) from the run directory: BPB curves + a shipped book
    rep = subprocess.run([sys.executable, "-m", "pmnet.eval.report", str(tmp_path / "init"), "--books",
                          "data_pipeline/books", "--max-bytes", "2048", "--chunk-bytes", "1024"], cwd=REPO,
                         env=launch_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert rep.returncode == 0, rep.stderr[-3000:]
    png = tmp_path / "init" / "report.png"
    assert f"report: {png}" in rep.stdout and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # resuming that run directory with another model shape is refused
    _one_error_line(_train([*ov, "model.hidden_size=32"]), "hidden_size")

    # init_from weights of another shape are refused
    ov2 = base_overrides(shards, tmp_path, "init2", train__max_steps=1, train__init_from=tmp_path / "released",
                         model__intermediate_size=64)  # fmt: skip
    _one_error_line(_train(ov2), "init_from")
