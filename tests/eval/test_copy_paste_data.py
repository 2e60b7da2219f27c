"""The copy-paste generator and its training dataloader (data_pipeline/copy_paste.py) and the recipes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipeline import copy_paste as cp
from pmnet.config import load_config

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("n", [1, 7, 100, 1024])
def test_sample_layout(n: int) -> None:
    s = cp.make_sample(n, np.random.default_rng(n))
    assert len(s) == 3 * n + 2 == cp.sample_length(n)
    assert s[0] == cp.BOS
    payload = s[1 : n + 1]
    assert (s[n + 1 : 2 * n + 1] == cp.FILLER).all()
    assert s[2 * n + 1] == cp.SEP
    assert np.array_equal(s[2 * n + 2 :], payload)
    # payload never uses PAD, BOS/EOS, the filler or the separator: the layout is unambiguous
    assert not np.isin(payload, [cp.PAD, cp.BOS, cp.EOS, cp.FILLER, cp.SEP]).any()


@pytest.mark.parametrize("n", [1, 5, 300])
def test_targets_only_on_copy_and_lookback_is_2n(n: int) -> None:
    sample = cp.make_sample(n, np.random.default_rng(0))
    inputs, targets = cp.inputs_and_targets(sample, sample_bytes=3 * n + 40)
    assert inputs.shape == targets.shape == (3 * n + 39,)
    scored = np.flatnonzero(targets)
    span = cp.copy_span(n)
    assert scored.tolist() == list(range(span.start, span.stop))  # exactly N scored positions
    # the byte to predict at position t sat 2N positions earlier in the input
    assert np.array_equal(targets[scored], inputs[scored - 2 * n])
    # and it is the true next byte of the sample
    assert np.array_equal(targets[scored], sample[scored + 1])
    assert (inputs[len(sample) :] == cp.PAD).all()  # padding after the sample


def test_payload_is_uniformish_over_alphabet() -> None:
    s = cp.make_sample(50_000, np.random.default_rng(3))[1:50_001]
    counts = np.bincount(s, minlength=256)[cp.PAYLOAD_ALPHABET]
    assert counts.min() > 0.7 * counts.mean() and len(cp.PAYLOAD_ALPHABET) == 251


def _loader(**kw: int) -> cp.CopyPasteLoader:
    args = dict(min_n=10, max_n=64, seed=5, sample_bytes=200, micro_batch_size=4)
    args.update(kw)
    return cp.CopyPasteLoader(**args)


def test_loader_batches_deterministic_and_in_range() -> None:
    a, b = _loader(), _loader()
    for _ in range(3):
        x, y = next(a), next(b)
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["targets"], y["targets"])
        assert x["input_ids"].shape == x["targets"].shape == (4, 199) and x["input_ids"].dtype == torch.long
        ns = (x["targets"] != 0).sum(1)
        assert ((ns >= 10) & (ns <= 64)).all()
    assert not torch.equal(next(_loader(seed=6))["input_ids"], next(_loader())["input_ids"])


def test_loader_resume_is_exact() -> None:
    ref = _loader()
    batches = [next(ref) for _ in range(5)]
    first = _loader()
    for _ in range(2):
        next(first)
    resumed = _loader()
    resumed.load_state_dict(first.state_dict())
    for want in batches[2:]:
        assert torch.equal(next(resumed)["input_ids"], want["input_ids"])


def test_ranks_split_the_global_stream_and_resume_elastically() -> None:
    single = _loader(micro_batch_size=1)
    stream = [next(single)["input_ids"][0] for _ in range(8)]
    r0, r1 = _loader(micro_batch_size=2, rank=0, world_size=2), _loader(micro_batch_size=2, rank=1, world_size=2)
    b0, b1 = next(r0)["input_ids"], next(r1)["input_ids"]
    assert torch.equal(b0[0], stream[0]) and torch.equal(b1[0], stream[1])
    assert torch.equal(b0[1], stream[2]) and torch.equal(b1[1], stream[3])
    # 2 ranks consumed 4 samples in all; one rank continues with global sample 4
    one = _loader(micro_batch_size=1)
    one.load_state_dict(r0.state_dict())
    assert torch.equal(next(one)["input_ids"][0], stream[4])
    with pytest.raises(ValueError, match="seed"):
        _loader(seed=9).load_state_dict(r0.state_dict())


def test_curriculum_ramps_the_largest_n_by_global_index() -> None:
    ramp = 400
    caps = [cp.largest_n(i, 10, 64, ramp, 16) for i in range(600)]
    assert caps[0] == 16 and caps[ramp - 1] < 64 and set(caps[ramp:]) == {64}
    assert all(a <= b for a, b in zip(caps, caps[1:]))  # never shrinks
    ns = [(cp.draw_sample(3, i, 10, 64, ramp, 16).size - 2) // 3 for i in range(600)]
    assert all(10 <= n <= c for n, c in zip(ns, caps))
    assert max(ns[:100]) <= 16 + (64 - 16) * 100 // ramp and max(ns[ramp:]) > 50
    assert cp.largest_n(5, 10, 64) == 64  # no ramp: uniform from the start
    # the same global stream on one rank or two, and the loader state carries the ramp
    one = cp.CopyPasteLoader(min_n=10, max_n=64, seed=3, sample_bytes=200, micro_batch_size=2,
                             curriculum_samples=ramp, curriculum_start_n=16)  # fmt: skip
    r1 = cp.CopyPasteLoader(min_n=10, max_n=64, seed=3, sample_bytes=200, micro_batch_size=1, rank=1,
                            world_size=2, curriculum_samples=ramp, curriculum_start_n=16)  # fmt: skip
    assert torch.equal(next(one)["input_ids"][1], next(r1)["input_ids"][0])
    with pytest.raises(ValueError, match="curriculum_samples"):
        _loader(seed=3).load_state_dict(one.state_dict())


def test_curriculum_settings_are_validated() -> None:
    from pmnet.config import ConfigError

    with pytest.raises(ConfigError, match="curriculum_samples=-1"):
        load_config(REPO_CONFIGS / "copy_paste_30m.yaml", ["data.copy_paste.curriculum_samples=-1"])
    # a start above a lowered max_n is clamped (a quick run with max_n=16 keeps the recipe's 32)
    cfg = load_config(REPO_CONFIGS / "copy_paste_30m.yaml", ["data.copy_paste.max_n=16", "data.sample_bytes=65"])
    loader = cp.build_copy_paste_dataloader(cfg.data, micro_batch_size=2)
    assert cp.largest_n(0, 10, 16, loader.curriculum_samples, loader.curriculum_start_n) == 16


def test_build_from_recipe_reads_rank_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(REPO_CONFIGS / "copy_paste_30m.yaml")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = cp.build_copy_paste_dataloader(cfg.data, micro_batch_size=2)
    assert (loader.rank, loader.world_size) == (1, 2)
    batch = next(loader)
    assert batch["input_ids"].shape == (2, cfg.data.sample_bytes - 1)
    assert int((batch["targets"] != 0).sum(1).max()) <= cfg.data.copy_paste.max_n


def test_recipes_resolve_with_the_stated_budgets() -> None:
    cp_cfg = load_config(REPO_CONFIGS / "copy_paste_30m.yaml")
    nomem = load_config(REPO_CONFIGS / "copy_paste_30m_nomem.yaml")
    assert cp_cfg.model.use_memory and not nomem.model.use_memory
    assert cp_cfg.model.num_hidden_layers == 12 and cp_cfg.model.sliding_window == 128
    assert cp_cfg.model.receptive_field == 1536 and (cp_cfg.data.copy_paste.min_n, cp_cfg.data.copy_paste.max_n) == (
        10,
        1024,
    )
    assert cp_cfg.train.precision == "bf16" and cp_cfg.model.attn_backend == "flex"
    for name, total in (("study_30m.yaml", 0.5e9), ("pmnet_119m.yaml", 18.8e9)):
        c = load_config(REPO_CONFIGS / name)
        seen = c.train.max_steps * c.train.global_batch_size * (c.data.sample_bytes - 1)
        assert abs(seen - total) / total < 1e-3, (name, seen)
    big = load_config(REPO_CONFIGS / "pmnet_119m.yaml")
    assert big.data.sample_bytes == 8193 and big.model.num_parameters() == 118_970_368
