"""DeepSpeed checkpoint -> interchange format: exact weights, logits equal the engine's, streaming, CLI errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.ckpt.ds_worker import _sample
from tests.ckpt.helpers import run_tool

pytestmark = pytest.mark.multiprocess


def _fixed_input(nbytes: int = 33) -> torch.Tensor:
    return torch.stack([_sample(10**6 + i, nbytes) for i in range(2)])[:, :-1]


def test_zero3_two_ranks_to_interchange_logits_equal_engine(z3_run, tmp_path: Path) -> None:
    """ZeRO-3 on 2 CPU ranks -> interchange -> PMNetForCausalLM: logits equal the engine's (fp32)."""
    from pmnet.model import load_pretrained

    out = tmp_path / "export"
    p = run_tool("tools/convert_checkpoint.py", "interchange", str(z3_run.ckpt(4)), "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["zero_stage"] == 3 and res["world_size"] == 2
    assert res["files"] == ["model.safetensors", "tokenizer_config.json", "special_tokens_map.json", "config.json"]
    from pmnet.model import RELEASED_CONFIG_KEYS  # the released model's config.json key set, its values

    written = json.loads((out / "config.json").read_text())
    assert set(written) == set(RELEASED_CONFIG_KEYS) and written["use_sliding_window"] is True
    model, cfg = load_pretrained(out, memory_impl="reference")
    assert res["num_parameters"] == cfg.num_parameters()
    model.eval()
    with torch.no_grad():
        logits, _ = model(_fixed_input())
    engine_logits = torch.tensor(z3_run.results[0]["logits"])
    torch.testing.assert_close(logits, engine_logits, rtol=0, atol=1e-5)


def test_zero2_bf16_matches_zero_to_fp32_and_shards(z2_run, tmp_path: Path) -> None:
    """fp32 output is bit-identical to DeepSpeed's zero_to_fp32; bf16 output is its rounding, in shards + index."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from pmnet.checkpoint.convert import convert_to_interchange
    from pmnet.model import load_pretrained, read_weights

    ckpt = z2_run.ckpt(4)
    convert_to_interchange(ckpt, tmp_path / "fp32")
    ref = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
    got = read_weights(tmp_path / "fp32")
    assert set(got) == set(ref) | {"lm_head.weight"} or set(got) == set(ref)
    for k, v in ref.items():
        assert torch.equal(got[k], v.float()), k
    res = convert_to_interchange(ckpt, tmp_path / "bf16", dtype="bf16", max_shard_size="150KB")
    assert len([f for f in res.files if f.endswith(".safetensors")]) > 1
    index = json.loads((tmp_path / "bf16" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(got)
    half = read_weights(tmp_path / "bf16")
    for k, v in got.items():
        assert half[k].dtype == torch.bfloat16 and torch.equal(half[k], v.to(torch.bfloat16)), k
    model, _ = load_pretrained(tmp_path / "bf16")  # the model's own loader accepts the shards
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_converter_never_imports_torch(z2_run, tmp_path: Path) -> None:
    """The streaming path reads zip members with numpy only (torch's import alone is ~650 MB RSS)."""
    code = (
        "import sys; from pmnet.checkpoint.convert import convert_to_interchange as c; "
        f"c({str(z2_run.ckpt(2))!r}, {str(tmp_path / 'o')!r}); "
        "assert 'torch' not in sys.modules and 'deepspeed' not in sys.modules, 'torch imported'"
    )
    p = run_tool("-c", code)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "o" / "model.safetensors").is_file()


def test_cli_errors_are_one_line(z2_run, tmp_path: Path) -> None:
    p = run_tool("tools/convert_checkpoint.py", "interchange", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "Traceback" not in p.stderr  # a bad input path: exit 2, as a usage error
    assert p.stderr.strip().count("\n") == 0 and "no such directory" in p.stderr
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    p = run_tool("tools/convert_checkpoint.py", "interchange", str(z2_run.ckpt(2)), "--out", str(out))
    assert p.returncode == 2 and "--force" in p.stderr and (out / "keep.txt").read_text() == "mine"
    # the older spelling (OUT positional) still works, with a one-line deprecation note
    p = run_tool("tools/convert_checkpoint.py", "interchange", str(z2_run.ckpt(2)), str(out))
    assert p.returncode == 2 and "--force" in p.stderr and (out / "keep.txt").read_text() == "mine"
    assert "deprecated" in p.stderr.splitlines()[0] and len(p.stderr.strip().splitlines()) == 2
    p = run_tool("tools/convert_checkpoint.py", "interchange", str(z2_run.ckpt(2)), "--out", str(out), "--dtype", "fp8")
    assert p.returncode == 2  # argparse usage error
    for tool in ("convert_checkpoint.py", "resume.py", "audit_checkpoint.py"):
        p = run_tool(f"tools/{tool}", "--help")
        assert p.returncode == 0 and "usage:" in p.stdout


def test_compare_checkpoint_with_its_export(z2_run, tmp_path: Path) -> None:
    from pmnet.checkpoint.convert import convert_to_interchange

    convert_to_interchange(z2_run.ckpt(4), tmp_path / "e")
    p = run_tool("tools/audit_checkpoint.py", "--compare", str(z2_run.ckpt(4)), str(tmp_path / "e"), "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["tensors"] and max(t["rel_l2"] for t in res["tensors"]) == 0.0
    p = run_tool("tools/audit_checkpoint.py", "--compare", str(z2_run.ckpt(2)), str(z2_run.ckpt(4)))
    assert p.returncode == 0 and "config differences: 0" in p.stdout and "max relative L2 diff" in p.stdout


def test_zero0_bf16_exports_fp32_masters(tmp_path: Path) -> None:
    """Without ZeRO the bf16 engine keeps fp32 masters in optimizer.fp32_groups: those are exported."""
    from tests.ckpt.helpers import launch

    launch(
        {"stage": 0, "precision": "bf16", "steps": 1, "save_at": [1], "run_dir": str(tmp_path / "r")}, tmp_path / "j", 1
    )
    ckpt = tmp_path / "r" / "checkpoints" / "step_00000001"
    p = run_tool("tools/convert_checkpoint.py", "interchange", str(ckpt), "--out", str(tmp_path / "o"), "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["notes"] == [], p.stdout + p.stderr
    from pmnet.model import read_weights

    got = read_weights(tmp_path / "o")
    sd = torch.load(ckpt / "mp_rank_00_model_states.pt", weights_only=False)  # our own test file
    masters = [t for g in sd["optimizer"]["fp32_groups"] for t in g]
    assert all(any(torch.equal(w, t) for w in got.values()) for t in masters)
    assert all(torch.equal(got[k].to(torch.bfloat16), v) for k, v in sd["module"].items())


def test_zero1_bf16_optimizer_two_ranks(tmp_path: Path) -> None:
    """bf16 + ZeRO-1 runs DeepSpeed's BF16_Optimizer (bf16_zero_pp_rank_* files, no zero_stage key):
    the exported fp32 masters round to the engine's bf16 weights, audited and converted alike."""
    from tests.ckpt.helpers import launch

    launch(
        {"stage": 1, "precision": "bf16", "steps": 2, "save_at": [2], "run_dir": str(tmp_path / "r")}, tmp_path / "j", 2
    )
    ckpt = tmp_path / "r" / "checkpoints" / "step_00000002"
    assert len(list(ckpt.glob("bf16_zero_pp_rank_*_optim_states.pt"))) == 2
    p = run_tool("tools/convert_checkpoint.py", "interchange", str(ckpt), "--out", str(tmp_path / "o"), "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout)
    assert res["zero_stage"] == 1 and res["world_size"] == 2
    from pmnet.model import read_weights

    got = read_weights(tmp_path / "o")
    sd = torch.load(ckpt / "mp_rank_00_model_states.pt", weights_only=False)  # our own test file
    assert sd["module"] and all(torch.equal(got[k].to(torch.bfloat16), v) for k, v in sd["module"].items())
    assert any(not torch.equal(got[k], v.float()) for k, v in sd["module"].items())  # masters, not bf16 copies
    p = run_tool("tools/audit_checkpoint.py", str(ckpt))
    assert p.returncode == 0, p.stdout + p.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
