"""GuardedAdamW alone (one process): the update is skipped, parameters and state untouched, when a
gradient is not finite or the trainer says so, by a Python bool or by a device flag (the trainer's
form since the flag no longer costs a host sync where it is set)."""

from __future__ import annotations

import pytest
import torch

from pmnet.train.engine import GuardedAdamW


def _opt() -> tuple[torch.nn.Parameter, GuardedAdamW]:
    p = torch.nn.Parameter(torch.ones(4))
    opt = GuardedAdamW([p], device=torch.device("cpu"), lr=0.1)
    p.grad = torch.full((4,), 0.5)
    return p, opt


@pytest.mark.parametrize("flag", [False, torch.tensor(False), torch.tensor(0.0)])
def test_finite_step_updates(flag: bool | torch.Tensor) -> None:
    p, opt = _opt()
    opt.force_skip = flag
    opt.step()
    assert not opt.skipped and not torch.equal(p.detach(), torch.ones(4)) and opt.state[p]


@pytest.mark.parametrize("flag", [True, torch.tensor(True), ~torch.isfinite(torch.tensor(float("nan")))])
def test_told_to_skip(flag: bool | torch.Tensor) -> None:
    p, opt = _opt()
    opt.force_skip = flag
    opt.step()
    assert opt.skipped and torch.equal(p.detach(), torch.ones(4)) and not opt.state[p]


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_gradient_skips(bad: float) -> None:
    p, opt = _opt()
    assert p.grad is not None
    p.grad[2] = bad
    opt.step()
    assert opt.skipped and torch.equal(p.detach(), torch.ones(4)) and not opt.state[p]
