"""Sampling text from PMNet with the streaming state (one forward per new byte, constant memory).

The prompt (``BOS`` + its UTF-8 bytes) is fed once; then each sampled byte is fed alone
with the carried state, so generating costs the same per byte however long the text.
Only byte values 0..255 can be sampled (the embedding's padding rows 256..383 never), and
PAD and BOS are excluded because they never follow text; EOS ends generation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pmnet.eval.loading import EvalError

__all__ = ["generate"]

BOS, EOS, PAD = 254, 255, 0


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    prompt: bytes,
    *,
    new_bytes: int = 256,
    temperature: float = 0.8,
    top_k: int = 0,
    seed: int = 0,
    stop_at_eos: bool = True,
    add_bos: bool = True,
    prompt_chunk_bytes: int = 30720,
    on_bytes: Callable[[bytes], None] | None = None,
    until: Sequence[bytes] = (),
) -> bytes:
    """Sample up to ``new_bytes`` bytes after ``prompt``; returns them (EOS not included).

    ``temperature`` 0 is greedy; ``top_k`` 0 keeps every byte. ``on_bytes`` is called with
    each new byte as it is produced (for streaming output). Generation also stops as soon as
    the output contains one of the ``until`` byte strings; the output is cut before it.
    """
    if temperature < 0:
        raise EvalError(f"--temperature {temperature}: must be >= 0")
    if top_k < 0:
        raise EvalError(f"--top-k {top_k}: must be >= 0")
    ids = ([BOS] if add_bos else []) + list(prompt)
    if not ids:
        raise EvalError("empty prompt with --no-bos: nothing to condition on")
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.tensor([ids], dtype=torch.long, device=device)
    state = None
    logits = None
    for start in range(0, x.shape[1], prompt_chunk_bytes):
        logits, state = model(x[:, start : start + prompt_chunk_bytes], state=state)
    assert logits is not None
    last = logits[0, -1]
    out = bytearray()
    for _ in range(new_bytes):
        scores = last.float()[:256].clone()
        scores[PAD] = float("-inf")
        scores[BOS] = float("-inf")
        if not stop_at_eos:
            scores[EOS] = float("-inf")
        if temperature == 0:
            nxt = int(scores.argmax())
        else:
            scores = scores / temperature
            if 0 < top_k < scores.numel():
                kth = torch.topk(scores, top_k).values[-1]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            probs = torch.softmax(scores, dim=-1).cpu()
            nxt = int(torch.multinomial(probs, 1, generator=gen))
        if nxt == EOS and stop_at_eos:
            break
        out.append(nxt)
        if on_bytes is not None:
            on_bytes(bytes([nxt]))
        hits = [i for i in (out.find(u, max(0, len(out) - len(u))) for u in until if u) if i >= 0]
        if hits:
            return bytes(out[: min(hits)])
        logits, state = model(torch.tensor([[nxt]], dtype=torch.long, device=device), state=state)
        last = logits[0, -1]
    return bytes(out)
