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
import random
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
           "--output_path", str(tmp_path / "out"), "--log_samples",
           "--batch_size", "3"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    # lm_eval's --batch_size reached the model: scoring ran batched (the streaming path is tested in process below)
    assert "pmnet loglikelihood (batches of 3)" in p.stderr and "pmnet loglikelihood_rolling (batches of 3)" in p.stderr
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


# Batched scoring (batch_size > 1) against the streaming path (batch_size 1). Tolerance: fp32 on the
# CPU, the two paths add the same numbers in different orders (other matmul shapes, other chunk
# splits: the streaming path cuts at the context's end, the batched one at absolute multiples of
# chunk_bytes; other blocks of the memory's scan). Measured on these requests (batch sizes 2, 3, 4,
# 16): at most 6e-5 absolute on log-likelihoods of -5.7 .. -5400 nats, <= 8e-8 relative (fp32's
# epsilon is 1.2e-7); rel=1e-5 leaves two orders of magnitude and still fails on any misalignment
# (a byte scored at the wrong position, a pad byte reaching a row, a result in the wrong slot: each
# moves a score by about a nat, not 1e-5).
BATCHED_REL, BATCHED_ABS = 1e-5, 1e-5


def _batched_requests(model: PMNetForCausalLM) -> list[SimpleNamespace]:
    """Requests of very different lengths around 64-byte chunk boundaries, several sharing a
    context, some continuations greedy (so the greedy flag is not always False), shuffled."""
    from pmnet.eval.generate import generate

    text = " ".join(_docs(8))
    reqs, greedy = [], 0
    for k, n_ctx in enumerate((0, 5, 63, 64, 65, 150, 700)):
        ctx = text[97 * k : 97 * k + n_ctx]
        for n_cont in (0, 1, 9, 60, 130) if k % 2 else (1, 70):
            reqs.append(SimpleNamespace(args=(ctx, text[3000 + 31 * k : 3000 + 31 * k + n_cont])))
        pick = generate(model, ctx.encode(), new_bytes=3, temperature=0.0, prompt_chunk_bytes=64)
        if len(pick) == 3 and all(32 <= c < 127 for c in pick):
            reqs.append(SimpleNamespace(args=(ctx, pick.decode())))
            greedy += 1
    assert greedy >= 2, "too few printable greedy continuations to test the greedy flag"
    random.Random(0).shuffle(reqs)
    return reqs


def _assert_batched_equals_streaming(ckpt: Path, device: str, rel: float, abs_: float) -> None:
    from pmnet.eval.harness import PMNetLM

    ref = PMNetLM(pretrained=str(ckpt), device=device, chunk_bytes=64)
    reqs = _batched_requests(ref.model)
    want = ref.loglikelihood(reqs, disable_tqdm=True)
    assert sum(g for _, g in want) > sum(not r.args[1] for r in reqs)  # greedy True beyond empty continuations
    for bs in (3, 4):
        lm = PMNetLM(pretrained=str(ckpt), device=device, chunk_bytes=64, batch_size=bs)
        assert lm.batch_size == bs
        got = lm.loglikelihood(reqs, disable_tqdm=True)
        assert len(got) == len(reqs)
        for r, (lp, g), (lp_ref, g_ref) in zip(reqs, got, want):  # in the requests' order
            assert lp == pytest.approx(lp_ref, rel=rel, abs=abs_), (bs, r.args)
            assert g == g_ref, (bs, r.args)


def test_batched_loglikelihood_equals_streaming(tiny_ckpt: Path) -> None:
    _assert_batched_equals_streaming(tiny_ckpt, "cpu", BATCHED_REL, BATCHED_ABS)


@pytest.mark.gpu
def test_batched_loglikelihood_equals_streaming_on_gpu(tiny_ckpt_decisive: Path) -> None:
    """The same comparison on CUDA (flex attention; other kernels for other shapes). The decisive
    checkpoint: at random init the write routing is near-uniform and flips under any change of
    float order (tests/eval/agreement.py), which would measure tie-breaking, not batching. The
    bound is 10x the CPU one for GPU reduction orders; not yet measured on a GPU."""
    _assert_batched_equals_streaming(tiny_ckpt_decisive, "cuda", 10 * BATCHED_REL, 10 * BATCHED_ABS)


def test_batched_rolling_equals_streaming(tiny_ckpt: Path) -> None:
    from pmnet.eval.harness import PMNetLM

    docs = _docs(8)
    texts = ["", "a", docs[0][:63], docs[1][:64], docs[2][:65], docs[3][:1000], docs[4][:200], docs[5][:129]]
    reqs = [SimpleNamespace(args=(t,)) for t in texts]
    want = PMNetLM(pretrained=str(tiny_ckpt), device="cpu", chunk_bytes=64).loglikelihood_rolling(reqs, True)
    for bs in (3, 4):
        lm = PMNetLM(pretrained=str(tiny_ckpt), device="cpu", chunk_bytes=64, batch_size=bs)
        got = lm.loglikelihood_rolling(reqs, disable_tqdm=True)
        assert got[0] == 0.0 and len(got) == len(reqs)
        assert got == pytest.approx(want, rel=BATCHED_REL, abs=BATCHED_ABS), bs


def test_batch_size_values(tiny_ckpt: Path) -> None:
    from pmnet.eval.harness import PMNetLM, parse_batch_size

    cpu = torch.device("cpu")
    assert [parse_batch_size(v, None, cpu) for v in (None, 1, "1", "16", 5)] == [1, 1, 1, 16, 5]
    cuda = torch.device("cuda")  # the size only: nothing runs there
    assert parse_batch_size("auto", None, cpu) == 1 and parse_batch_size("auto", None, cuda) == 16
    assert parse_batch_size("auto:3", "4", cuda) == 4 and parse_batch_size("auto", 64, cuda) == 16
    for bad in ("0", "-2", "four", "2.5", "auto:x", 0, True):
        with pytest.raises(ValueError) as err:
            PMNetLM(pretrained=str(tiny_ckpt), device="cpu", batch_size=bad)
        assert str(err.value) == f"batch_size={bad!r}: must be a positive integer, 'auto' or 'auto:N'"
    with pytest.raises(ValueError, match=r"^max_batch_size='x': must be a positive integer$"):
        PMNetLM(pretrained=str(tiny_ckpt), device="cpu", batch_size="auto", max_batch_size="x")
