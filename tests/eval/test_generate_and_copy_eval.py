"""tools/generate.py and tools/eval_copy_paste.py with tiny checkpoints (real subprocess runs)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from pmnet.eval.copy_paste import score_predictions
from pmnet.eval.generate import generate
from pmnet.eval.loading import load_model
from tests.eval.conftest import run_tool


def test_generate_prints_text(tiny_ckpt: Path) -> None:
    args = (tiny_ckpt, "--prompt", "It was a dark night", "--new-bytes", "48", "--top-k", "20", "--seed", "3")
    first, second = run_tool("generate.py", *args), run_tool("generate.py", *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("It was a dark night")
    assert len(first.stdout) > len("It was a dark night") + 1  # something was generated
    assert first.stdout == second.stdout  # same seed, same text
    old = run_tool("generate.py", *[("--max-bytes" if a == "--new-bytes" else a) for a in args])  # the old name
    assert old.returncode == 0 and old.stdout == first.stdout and "--max-bytes is deprecated" in old.stderr
    proc = run_tool("generate.py", tiny_ckpt, "--new-bytes", "-1")
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_generate_library_streams_state(tiny_ckpt: Path) -> None:
    model, _ = load_model(tiny_ckpt)
    seen: list[bytes] = []
    out = generate(model, b"abc", new_bytes=12, temperature=0, stop_at_eos=False, on_bytes=seen.append)
    assert len(out) == 12 and b"".join(seen) == out
    assert 0 not in out and 254 not in out and 255 not in out
    # greedy with the carried state equals greedy by re-reading the whole text every step
    ids = [254, *b"abc"]
    with torch.inference_mode():
        for _ in range(12):
            logits, _ = model(torch.tensor([ids]))
            scores = logits[0, -1, :256].clone()
            scores[[0, 254, 255]] = float("-inf")
            ids.append(int(scores.argmax()))
    assert bytes(ids[4:]) == out


def test_score_predictions_exact_iff_all_argmaxes_right() -> None:
    targets = torch.tensor([[0, 5, 6, 7, 0], [0, 0, 9, 9, 0]])
    pred = torch.tensor([[1, 5, 6, 7, 3], [0, 0, 9, 8, 0]])
    assert score_predictions(pred, targets) == (1, 4)  # row 0 exact (3 right), row 1 one of two


def test_eval_copy_paste_two_models(tiny_ckpt: Path, tiny_ckpt_nomem: Path, tmp_path: Path) -> None:
    proc = run_tool(
        "eval_copy_paste.py", tiny_ckpt, tiny_ckpt_nomem, "--labels", "pmnet", "no-memory",
        "--edges", "0,16,32,64", "--samples", "4", "--chunk-bytes", "128", "--out", tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "copy_paste.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["model"], r["n_lo"], r["n_hi"]) for r in rows] == [
        (m, lo, hi) for m in ("pmnet", "no-memory") for lo, hi in (("0", "16"), ("16", "32"), ("32", "64"))
    ]
    for r in rows:
        assert r["samples"] == "4" and 0.0 <= float(r["exact_match"]) <= float(r["byte_accuracy"]) + 1e-9 <= 1.0 + 1e-9
    assert (tmp_path / "copy_paste.png").read_bytes()[:4] == b"\x89PNG"
    assert "| (16, 32] |" in proc.stdout and "pmnet exact / byte %" in proc.stdout
    assert (tmp_path / "copy_paste.md").read_text().startswith("|")
    bad = run_tool("eval_copy_paste.py", tiny_ckpt, "--labels", "a", "b")
    assert bad.returncode == 2 and "--labels" in bad.stderr and "Traceback" not in bad.stderr

    # models evaluated in separate runs (e.g. one GPU call each) merge into one table and plot
    header = (tmp_path / "copy_paste.csv").read_text().splitlines()[0]
    parts = []
    for model in ("pmnet", "no-memory"):
        part = tmp_path / f"{model}.csv"
        part.write_text("\n".join([header] + [",".join(r.values()) for r in rows if r["model"] == model]) + "\n")
        parts.append(part)
    merged = run_tool("eval_copy_paste.py", "--merge", *parts, "--receptive-field", "64", "--out", tmp_path / "m")
    assert merged.returncode == 0, merged.stderr
    with open(tmp_path / "m" / "copy_paste.csv") as fh:
        assert list(csv.DictReader(fh)) == rows
    assert (tmp_path / "m" / "copy_paste.md").read_text().splitlines()[:5] == (
        tmp_path / "copy_paste.md"
    ).read_text().splitlines()[:5]
    assert (tmp_path / "m" / "copy_paste.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "bad.csv").write_text("model,n_lo\npmnet,zero\n")
    bad = run_tool("eval_copy_paste.py", "--merge", tmp_path / "bad.csv", "--out", tmp_path / "b")
    assert bad.returncode == 2 and "bad.csv" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "b").exists()
    clash = run_tool("eval_copy_paste.py", tiny_ckpt, "--labels", "pmnet", "--merge", parts[0], "--out", tmp_path / "c")
    assert clash.returncode == 2 and "pmnet" in clash.stderr
