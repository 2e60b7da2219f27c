"""The model under DeepSpeed ZeRO-3 (one CPU rank, gloo, in a subprocess): built inside
``zero.Init`` it is initialised (every module inits itself in its constructor), stays tied,
and its anchors are gathered when used (``AnchorTree.forward``).

The model package never imports deepspeed; this test does, in a child process, so the
pytest process keeps no process group.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import torch
    torch.set_num_threads(1)
    import deepspeed
    deepspeed.init_distributed(dist_backend="gloo")
    from pmnet.model import PMNetConfig, PMNetForCausalLM, lm_loss
    cfg = PMNetConfig.from_preset("tiny")
    ds = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 3},
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
    with deepspeed.zero.Init(config_dict_or_path=ds):
        model = PMNetForCausalLM(cfg)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        for name, p in model.named_parameters():
            if p.dim() >= 2 and p.numel() >= 1000:
                assert abs(p.std().item() - 0.02) < 0.003, name
    engine, _, _, _ = deepspeed.initialize(model=model, config=ds, model_parameters=model.parameters())
    ids = torch.randint(1, 256, (2, 40))
    _, state = engine(ids[:, :20])
    logits, state = engine(ids[:, 20:], state=state.detach(), collect_diagnostics=True)
    loss = lm_loss(logits[:, :-1], ids[:, 21:])
    engine.backward(loss)
    engine.step()
    assert torch.isfinite(loss) and "memory/level1/groups_used" in state.diagnostics
    print("ZERO3_OK", float(loss))
    """
)


@pytest.mark.slow
def test_zero3_build_init_and_step(tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    env = {
        **os.environ,
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
        "PYTHONPATH": str(REPO),
    }
    env.pop("LOCAL_SIZE", None)  # no shared-memory comm op for a single rank
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500
    )
    assert proc.returncode == 0 and "ZERO3_OK" in proc.stdout, proc.stderr[-3000:]
