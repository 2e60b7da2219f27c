"""The small CPU training loop shared by the ablation benchmarks (dropout_ablation.py,
fast_vs_reference_curve.py): random windows of a text (default the FineWeb-Edu head), AdamW, clipping.

Every caller gets the same batches for the same ``data``, ``seq`` and ``batch`` (the batch
generator is seeded here, independent of the model's seed), so two models differ only in
what the caller changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from pmnet.model import lm_loss

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "web" / "fineweb_edu_sample10BT_head_1MB.txt"
"The 1 MB FineWeb-Edu head of ../shared/data/web."


def load_text(path: Path | None = None) -> torch.Tensor:
    """The bytes of ``path`` (a file, or every file of a folder in name order) as int64; None: ``TEXT``."""
    path = TEXT if path is None else path
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return torch.tensor(list(b"".join(p.read_bytes() for p in files)), dtype=torch.int64)


def batches(data: torch.Tensor, steps: int, seq: int, batch: int) -> Iterator[torch.Tensor]:
    """The ``steps`` batches of ``train_losses``, [batch, seq + 1] int64 windows of ``data`` (seeded)."""
    gen = torch.Generator().manual_seed(1234)
    for _ in range(steps):
        starts = torch.randint(0, data.numel() - seq - 1, (batch,), generator=gen)
        yield torch.stack([data[s : s + seq + 1] for s in starts.tolist()])


def train_losses(
    model: torch.nn.Module,
    data: torch.Tensor,
    steps: int,
    seq: int,
    batch: int,
    lr_at: Callable[[int], float],
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` for ``steps`` AdamW steps (lr ``lr_at(step)``, clip 1.0); per-step losses in nats."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr_at(0), betas=(0.9, 0.95), weight_decay=0.1)
    device = next(model.parameters()).device
    out = []
    for step, ids in enumerate(batches(data, steps, seq, batch)):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        ids = ids.to(device)
        logits, _ = model(ids[:, :-1])
        loss = lm_loss(logits, ids[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        out.append(loss.item())
        if on_step is not None:
            on_step(step, out[-1])
    return out
