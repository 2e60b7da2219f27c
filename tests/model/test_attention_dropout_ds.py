"""Attention dropout on the blocked window under DeepSpeed ZeRO-2 with activation checkpointing
(one CPU rank, gloo, in a subprocess): the recomputed forward of every checkpointed layer
must draw the same dropout mask as the first, so the gradients equal those of a run without
checkpointing from the same seed (and a different seed gives different ones)."""

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
    from pmnet.model.attention import build_attention_mask

    cfg = PMNetConfig.from_preset("tiny", attention_dropout=0.1)
    t = 96  # > 2W: the blocked layout runs
    assert build_attention_mask(cfg, t, 0, torch.device("cpu"), training=True).blocked is not None
    ds = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True}
    ids = torch.randint(1, 256, (2, t + 1), generator=torch.Generator().manual_seed(0))

    def step(checkpointing, seed):
        torch.manual_seed(0)
        model = PMNetForCausalLM(cfg)
        model.set_activation_checkpointing(checkpointing)
        start = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=1.0)  # new weights = old - gradient
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
        engine.train()
        torch.manual_seed(seed)
        logits, _ = engine(ids[:, :-1])
        loss = lm_loss(logits, ids[:, 1:])
        engine.backward(loss)
        engine.step()
        grads = [a - b.detach() for a, b in zip(start, engine.module.parameters())]
        return loss.item(), torch.cat([g.flatten() for g in grads])

    loss_ref, grad_ref = step(False, seed=1)
    loss_ck, grad_ck = step(True, seed=1)
    loss_other, grad_other = step(True, seed=2)
    assert torch.isfinite(grad_ck).all() and grad_ref.abs().max() > 0
    scale = grad_ref.abs().max().item()
    err = (grad_ck - grad_ref).abs().max().item()
    other = (grad_other - grad_ref).abs().max().item()
    print(f"loss {loss_ref} {loss_ck} {loss_other}; grad max {scale:.3g}, ckpt err {err:.3g}, other seed {other:.3g}")
    assert loss_ck == loss_ref and loss_other != loss_ref
    assert err <= 1e-6 * scale, err
    assert other > 1e-3 * scale, other  # the comparison can tell masks apart
    print("DROPOUT_CKPT_OK")
    """
)


@pytest.mark.slow
def test_dropout_with_activation_checkpointing_under_zero2(tmp_path: Path) -> None:
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
        [sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "DROPOUT_CKPT_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
