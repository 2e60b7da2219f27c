"""lm-evaluation-harness model ``pmnet``: its own CLI on local tasks built from the repo's sample text.

No hub access: the tasks read local JSON lines (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE set).
Expected numbers are computed here with the model directly, the way each request type is
defined (log-probabilities of the continuation / of every byte of the document).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

from pmnet.model import PMNetForCausalLM

REPO = Path(__file__).resolve().parents[2]
# one intra-op thread: on a shared 2-core box, OpenMP barriers of 2 threads spin against other jobs
torch.set_num_threads(1)
SAMPLE = REPO / "data_pipeline" / "samples" / "c4_en_sample_30docs.jsonl.gz"
BOS = 254


def _docs(n: int) -> list[str]:
    with gzip.open(SAMPLE, "rt") as f:
        return [json.loads(line)["text"] for line in f][:n]


def _write_tasks(root: Path) -> dict[str, list[dict]]:
    """Three tiny tasks (one per request type) over sample documents; returns their rows."""
    root.mkdir(parents=True)
    docs = _docs(12)
    mc = [
        {"context": d[:48], "choices": [d[48:64], docs[(i + 1) % 6][48:64]], "gold": 0} for i, d in enumerate(docs[:6])
    ]
    ppl = [{"text": d[:700]} for d in docs[6:9]]
    gen = [{"context": d[:40], "target": d[40:46]} for d in docs[9:12]]
    rows = {"mc": mc, "ppl": ppl, "gen": gen}
    common = "dataset_path: json\ntest_split: test\n"
    specs = {
        "mc": "output_type: multiple_choice\ndoc_to_text: '{{context}}'\ndoc_to_choice: choices\n"
        "doc_to_target: gold\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n",
        "ppl": "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: bits_per_byte\n  - metric: byte_perplexity\n",
        "gen": "output_type: generate_until\ndoc_to_text: '{{context}}'\ndoc_to_target: '{{target}}'\n"
        "target_delimiter: ''\ngeneration_kwargs:\n  until: ['\\n']\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n",
    }
    for name, items in rows.items():
        data = root / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in items))
        yaml = f"task: pmnet_local_{name}\n{common}dataset_kwargs:\n  data_files:\n    test: {data}\n{specs[name]}"
        (root / f"pmnet_local_{name}.yaml").write_text(yaml)
    return rows


def _logprob(model: PMNetForCausalLM, prefix: bytes, cont: bytes) -> tuple[float, list[int]]:
    """log P(cont | BOS + prefix) in one pass, and the greedy bytes at the continuation's positions."""
    ids = torch.tensor([[BOS, *prefix, *cont]])
    with torch.no_grad():
        logp = F.log_softmax(model(ids)[0][0].float(), -1)
    pos = range(len(prefix), len(prefix) + len(cont))
    return sum(float(logp[p, c]) for p, c in zip(pos, cont)), [int(logp[p].argmax()) for p in pos]


def test_pmnet_model_in_lm_eval_cli(tiny_ckpt: Path, tmp_path: Path) -> None:
    rows = _write_tasks(tmp_path / "tasks")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"),
           "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    cmd = [sys.executable, "-m", "pmnet.eval.harness", "--model", "pmnet",
           "--model_args", f"pretrained={tiny_ckpt},chunk_bytes=64", "--device", "cpu",
           "--tasks", "pmnet_local_mc,pmnet_local_ppl,pmnet_local_gen", "--include_path", str(tmp_path / "tasks"),
           "--output_path", str(tmp_path / "out"), "--log_samples"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]

    model = PMNetForCausalLM.from_pretrained(tiny_ckpt).eval()
    # multiple choice (loglikelihood): the choice with the higher log-prob of its bytes after the context
    hits = []
    for r in rows["mc"]:
        scores = [_logprob(model, r["context"].encode(), c.encode())[0] for c in r["choices"]]
        hits.append(float(scores.index(max(scores)) == r["gold"]))
    assert results["pmnet_local_mc"]["acc,none"] == pytest.approx(sum(hits) / len(hits))
    # rolling log-likelihood: every byte of each document scored once, in one pass here (64-byte chunks there)
    total_lp = sum(_logprob(model, b"", r["text"].encode())[0] for r in rows["ppl"])
    nbytes = sum(len(r["text"].encode()) for r in rows["ppl"])
    assert results["pmnet_local_ppl"]["bits_per_byte,none"] == pytest.approx(-total_lp / nbytes / math.log(2), rel=1e-4)
    # generation: greedy bytes; exact match against the document's next bytes
    assert 0.0 <= results["pmnet_local_gen"]["exact_match,none"] <= 1.0
    samples = [json.loads(line) for f in (tmp_path / "out").rglob("samples_pmnet_local_gen_*.jsonl") for line in f.read_text().splitlines()]  # fmt: skip
    assert len(samples) == 3
    for s in samples:
        greedy = _logprob(model, s["doc"]["context"].encode(), s["resps"][0][0].encode())[1]
        assert bytes(greedy).decode(errors="replace") == s["resps"][0][0]


def test_cli_error_is_one_line_naming_the_file(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A truncated weights file (an interrupted download): one error line naming it, exit 2, no traceback
    (in process: the same ``main`` as ``python -m pmnet.eval.harness``, without a second interpreter start)."""
    from pmnet.eval.harness import main

    monkeypatch.delenv("PMNET_DEBUG", raising=False)
    for k, v in {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"),
                 "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets")}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "argv", ["pmnet.eval.harness"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_bytes((tiny_ckpt / "config.json").read_bytes())
    (bad / "model.safetensors").write_bytes((tiny_ckpt / "model.safetensors").read_bytes()[:1000])
    _write_tasks(tmp_path / "tasks")
    rc = main(["--model", "pmnet", "--model_args", f"pretrained={bad}", "--device", "cpu",
               "--tasks", "pmnet_local_ppl", "--include_path", str(tmp_path / "tasks")])  # fmt: skip
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(errors) == 1, errors
    assert str(bad / "model.safetensors") in errors[0] and "truncated or corrupt" in errors[0]


def test_rolling_is_chunk_invariant_and_constant_memory(tiny_ckpt: Path) -> None:
    from pmnet.eval.harness import PMNetLM

    text = " ".join(_docs(3))[:3000]
    req = [SimpleNamespace(args=(text,))]
    small = PMNetLM(pretrained=str(tiny_ckpt), device="cpu", chunk_bytes=37)
    one = PMNetLM(pretrained=str(tiny_ckpt), device="cpu", chunk_bytes=10**6)
    a, b = small.loglikelihood_rolling(req, disable_tqdm=True)[0], one.loglikelihood_rolling(req, disable_tqdm=True)[0]
    assert a == pytest.approx(b, rel=1e-5)
    # the carried state after 3000 bytes is as large as after 100: memory does not grow with the text
    sizes = [small._feed([BOS, *text.encode()[:n]], None)[0].num_bytes() for n in (100, 3000)]
    assert sizes[0] == sizes[1]
    with pytest.raises(ValueError, match="unknown batch"):
        PMNetLM(pretrained=str(tiny_ckpt), batchsize=4)
    # shared contexts: continuations scored from the context's state equal one pass each
    reqs = [SimpleNamespace(args=(text[:80], text[80:90])), SimpleNamespace(args=(text[:80], "xyz")),
            SimpleNamespace(args=("", text[:20]))]  # fmt: skip
    got = small.loglikelihood(reqs, disable_tqdm=True)
    for r, (lp, greedy) in zip(reqs, got):
        want, picks = _logprob(one.model, r.args[0].encode(), r.args[1].encode())
        assert lp == pytest.approx(want, rel=1e-5) and greedy == (picks == list(r.args[1].encode()))
