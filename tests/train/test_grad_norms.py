"""Family gradient norms from each rank's own share (pmnet/train/grad_norms.py) equal the slow
path through DeepSpeed's ``safe_get_full_grad``, on 2 gloo CPU ranks of a real DeepSpeed engine,
for every way DeepSpeed keeps gradients: whole (no ZeRO), ZeRO-1's optimizer, BF16_Optimizer
(ZeRO-1 bf16), flat fp32 partitions (ZeRO-2) and partitioned parameters (ZeRO-3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ckpt.helpers import launch


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    ("stage", "precision"),
    [(0, "fp32"), (1, "fp32"), (1, "bf16"), (2, "bf16"), (3, "fp32")],
    ids=["z0", "z1", "z1-bf16", "z2-bf16", "z3"],
)
def test_fast_family_norms_equal_reference(stage: int, precision: str, tmp_path: Path) -> None:
    spec = {"stage": stage, "precision": precision, "steps": 2, "family_norms": True}
    results = launch(spec, tmp_path, world=2)
    for res in results:
        for step, pair in res["family_norms"].items():
            fast, ref = pair["fast"], pair["reference"]
            assert fast.keys() == ref.keys(), (stage, step, fast, ref)
            assert any(v > 0 for v in ref.values())
            for fam, want in ref.items():
                assert abs(fast[fam] - want) <= 1e-5 * want + 1e-9, (stage, step, fam, fast[fam], want)
    # a collective: every rank reports the same numbers
    assert results[0]["family_norms"] == results[1]["family_norms"]
