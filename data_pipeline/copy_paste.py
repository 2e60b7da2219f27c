"""The synthetic copy-paste task (docs/model.md section 8): sample generator and training dataloader.

A sample of copy length N is laid out as::

    index   0     1 .. N        N+1 .. 2N      2N+1   2N+2 .. 3N+1
    byte    BOS   payload[N]    FILLER x N     SEP    payload[N] again

then padded with PAD (0) to ``sample_bytes``. The model reads ``sample[:-1]`` and is scored
on the next byte only where that byte is part of the copied span, so the input position
that predicts ``payload[i]`` for the second time is ``2N+1+i`` and the byte it must fetch
sits at ``1+i``: a lookback of exactly 2N. With 12 layers x window 128 attention alone
reaches 1,536 bytes back, so copying is impossible without memory once 2N > 1536 (N > 768).

Payload bytes avoid PAD (targets use 0 as "no target"), BOS/EOS (254/255), FILLER and SEP,
so the separator is unambiguous and every payload byte is a real prediction.

Generation is a pure function of ``(seed, global sample index)``: rank ``r`` of ``W`` takes
global indices ``r, r + W, r + 2W, ...``, so resuming needs only how many samples each rank
has consumed, and a resume on a different world size continues the same global stream
whenever the consumed count divides evenly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

PAD = 0
BOS = 254
EOS = 255
FILLER = ord(".")  # a constant filler byte: the gap carries no information to copy
SEP = ord("|")  # marks where the copy starts
PAYLOAD_ALPHABET = np.array([b for b in range(1, 254) if b not in (FILLER, SEP)], dtype=np.uint8)
"""The 251 byte values a payload is drawn from (uniformly, independently)."""

_STREAM_TAG = 0xC0B1  # separates this generator's seed space from other users of the same seed


def sample_length(n: int) -> int:
    """Bytes of a copy-paste sample with copy length ``n`` before padding: 3n + 2."""
    return 3 * n + 2


def make_sample(n: int, rng: np.random.Generator) -> np.ndarray:
    """One unpadded sample (uint8 array of ``3n + 2`` bytes) with payload drawn from ``rng``."""
    if n < 1:
        raise ValueError(f"copy length must be >= 1, got {n}")
    payload = rng.choice(PAYLOAD_ALPHABET, size=n)
    out = np.empty(sample_length(n), dtype=np.uint8)
    out[0] = BOS
    out[1 : n + 1] = payload
    out[n + 1 : 2 * n + 1] = FILLER
    out[2 * n + 1] = SEP
    out[2 * n + 2 :] = payload
    return out


def inputs_and_targets(sample: np.ndarray, sample_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad ``sample`` to ``sample_bytes`` and split into (inputs, targets) of ``sample_bytes - 1``.

    Targets are PAD except on the copied span, so a next-byte loss that ignores PAD scores
    only the copy.
    """
    length = len(sample)
    if length > sample_bytes:
        raise ValueError(f"sample of {length} bytes does not fit sample_bytes={sample_bytes}")
    n = (length - 2) // 3
    full = np.zeros(sample_bytes, dtype=np.int64)
    full[:length] = sample
    inputs = full[:-1].copy()
    targets = np.zeros(sample_bytes - 1, dtype=np.int64)
    start = 2 * n + 1  # input position that predicts the first copied byte
    targets[start : start + n] = full[start + 1 : start + 1 + n]
    return inputs, targets


def copy_span(n: int) -> slice:
    """Input positions whose next-byte prediction is a copied byte (lookback 2n each)."""
    return slice(2 * n + 1, 3 * n + 1)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of global sample ``index`` for ``seed`` (independent streams per index)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([_STREAM_TAG, seed, index])))


def largest_n(index: int, min_n: int, max_n: int, ramp_samples: int = 0, start_n: int | None = None) -> int:
    """The largest N global sample ``index`` may draw: ``max_n``, or with a curriculum
    (``ramp_samples`` > 0) a linear ramp from ``start_n`` at index 0 to ``max_n`` at ``ramp_samples``."""
    if ramp_samples <= 0 or index >= ramp_samples:
        return max_n
    start = max(min_n, min(max_n, start_n if start_n is not None else min_n))
    return start + (max_n - start) * index // ramp_samples


def draw_sample(
    seed: int, index: int, min_n: int, max_n: int, ramp_samples: int = 0, start_n: int | None = None
) -> np.ndarray:
    """Global sample ``index``: N uniform in [min_n, largest_n(index, ...)], then the payload, from one RNG."""
    rng = sample_rng(seed, index)
    n = int(rng.integers(min_n, largest_n(index, min_n, max_n, ramp_samples, start_n) + 1))
    return make_sample(n, rng)


class CopyPasteLoader:
    """Endless iterator of training batches ``{"input_ids", "targets"}`` ([B, S-1] int64 each).

    ``state_dict()`` / ``load_state_dict()`` give exact resumption: the next batch after a
    load is the one an uninterrupted run would have produced.
    """

    def __init__(
        self,
        *,
        min_n: int,
        max_n: int,
        seed: int,
        sample_bytes: int,
        micro_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        curriculum_samples: int = 0,
        curriculum_start_n: int | None = None,
    ) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got {min_n}, {max_n}")
        if sample_length(max_n) > sample_bytes:
            raise ValueError(f"sample_bytes={sample_bytes} is too short for max_n={max_n} (needs {3 * max_n + 2})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.min_n, self.max_n, self.seed = min_n, max_n, seed
        self.sample_bytes, self.micro_batch_size = sample_bytes, micro_batch_size
        self.rank, self.world_size = rank, world_size
        self.consumed = 0  # samples this rank has produced so far
        # the ramp runs over the global index, so it is the same on any number of ranks
        self.curriculum_samples = max(0, curriculum_samples)
        self.curriculum_start_n = curriculum_start_n if self.curriculum_samples else None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        b = self.micro_batch_size
        inputs = np.empty((b, self.sample_bytes - 1), dtype=np.int64)
        targets = np.empty_like(inputs)
        for i in range(b):
            index = (self.consumed + i) * self.world_size + self.rank
            sample = draw_sample(
                self.seed, index, self.min_n, self.max_n, self.curriculum_samples, self.curriculum_start_n
            )
            inputs[i], targets[i] = inputs_and_targets(sample, self.sample_bytes)
        self.consumed += b
        return {"input_ids": torch.from_numpy(inputs), "targets": torch.from_numpy(targets)}

    def state_dict(self) -> dict[str, Any]:
        """Position in the global sample stream (plus settings, checked on load)."""
        return {
            "kind": "copy_paste",
            "global_consumed": self.consumed * self.world_size,
            "world_size": self.world_size,
            "seed": self.seed,
            "min_n": self.min_n,
            "max_n": self.max_n,
            "sample_bytes": self.sample_bytes,
            "curriculum_samples": self.curriculum_samples,
            "curriculum_start_n": self.curriculum_start_n,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the last sample of ``state``; refuses a state of other settings."""
        for key in ("seed", "min_n", "max_n", "sample_bytes", "curriculum_samples", "curriculum_start_n"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"copy-paste loader state has {key}={state[key]}, this run has {getattr(self, key)}")
        total = int(state["global_consumed"])
        if total % self.world_size:
            raise ValueError(
                f"cannot resume {total} consumed samples evenly on {self.world_size} ranks "
                f"(saved with {state.get('world_size')})"
            )
        self.consumed = total // self.world_size


def build_copy_paste_dataloader(data_cfg: Any, micro_batch_size: int) -> CopyPasteLoader:
    """The trainer's entry point for ``data.task == "copy_paste"`` (rank/world from RANK/WORLD_SIZE)."""
    cp = data_cfg.copy_paste
    return CopyPasteLoader(
        min_n=cp.min_n,
        max_n=cp.max_n,
        seed=cp.seed,
        sample_bytes=data_cfg.sample_bytes,
        micro_batch_size=micro_batch_size,
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        curriculum_samples=cp.curriculum_samples,
        curriculum_start_n=cp.curriculum_start_n,
    )


def eval_batch(
    n_values: list[int], seed: int, start_index: int = 0, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluation samples: one per entry of ``n_values``, payload i from ``(seed, start_index + i)``.

    Returns (input_ids, targets) of ``length - 1`` positions (default: the longest sample).
    Indices are offset by 2**40, a range training never reaches, so evaluation payloads are
    not training payloads.
    """
    length = length or sample_length(max(n_values))
    inputs = np.zeros((len(n_values), length - 1), dtype=np.int64)
    targets = np.zeros_like(inputs)
    for i, n in enumerate(n_values):
        sample = make_sample(n, sample_rng(seed, 2**40 + start_index + i))
        inputs[i], targets[i] = inputs_and_targets(sample, length)
    return torch.from_numpy(inputs), torch.from_numpy(targets)
