"""Round trip on real text: every document's bytes come back exactly from the shards.

Inputs cover every supported kind (FineWeb-Edu-schema parquet built from real records, jsonl,
jsonl.gz, .json.gz, jsonl.zst, .txt, .txt.gz); the tool runs as a real subprocess with 2 workers.
The expected documents are read with plain pyarrow/json/gzip, not with data_pipeline.sources.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipeline.manifest import ShardSettings
from data_pipeline.packing import decode_documents, split_of
from data_pipeline.readback import read_split_samples
from data_pipeline.sharding import ShardJob, run_sharding
from data_pipeline.sources import expand_inputs
from data_pipeline.verify import verify_shards
from pmnet.model.config import BOS_ID, EOS_ID
from tests.data.helpers import build_mixed_corpus, expected_documents, run_tool, write_fineweb_parquet

SAMPLE_BYTES = 4097
VAL_FRACTION = 0.2


@pytest.mark.timeout(900)
def test_every_document_round_trips_exactly(shared_data: Path, tmp_path: Path) -> None:
    corpus = build_mixed_corpus(shared_data, tmp_path / "corpus")
    out = tmp_path / "shards"
    res = run_tool(
        corpus, "--out", out, "--workers", "2",
        "--sample-bytes", SAMPLE_BYTES, "--val-fraction", VAL_FRACTION, "--keep-tail", "--verify",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr

    # The oracle: inputs in the tool's (sorted) order, each split's documents in input order.
    want: dict[str, list[bytes]] = {"train": [], "val": []}
    for path in expand_inputs([str(corpus)]):
        for doc_id, text in expected_documents(path):
            assert "\x00" not in text
            want[split_of(doc_id, text, VAL_FRACTION)].append(text.encode("utf-8"))
    assert len(want["val"]) > 20 and len(want["train"]) > 150

    manifest = json.loads((out / "manifest.json").read_text())
    for split in ("train", "val"):
        samples = read_split_samples(out / split)
        # Every sample is full except the last one of each work unit (kept tail).
        short = [s for s in samples if len(s) != SAMPLE_BYTES]
        assert all(0 < len(s) < SAMPLE_BYTES for s in short)
        assert len(short) <= len(manifest["units"])
        stream = b"".join(samples)
        assert stream.count(bytes([BOS_ID])) == stream.count(bytes([EOS_ID])) == len(want[split])
        got = decode_documents(stream)
        assert got == want[split]  # exact bytes, exact order
        assert manifest["totals"]["documents"][split] == len(want[split])
        assert manifest["totals"]["samples"][split] == len(samples)
        assert manifest["totals"]["bytes"][split] == len(stream)

    # The book keeps its CRLF line ends byte for byte.
    book = (shared_data / "books" / "pg10146.txt").read_bytes()
    assert b"\r\n" in book and any(d == book for d in want["train"] + want["val"])
    assert manifest["byte_ids"] == {"pad": 0, "bos": 254, "eos": 255}
    assert manifest["sample_bytes"] == SAMPLE_BYTES
    assert {i["path"] for i in manifest["inputs"]} == {str(p) for p in expand_inputs([str(corpus)])}
    assert all(len(i["sha256"]) == 64 and i["size"] > 0 for i in manifest["inputs"])
    assert verify_shards(out) == []


@pytest.mark.timeout(600)
def test_filters_nul_and_drop_tail(shared_data: Path, tmp_path: Path) -> None:
    texts = [r for r in (shared_data / "web" / "cc_en_head-0091.jsonl").read_text().splitlines() if r.strip()]
    docs = [json.loads(t)["text"] for t in texts]
    docs[0] = docs[0][:50] + "\x00\x00" + docs[0][50:]  # NULs must vanish from the stored bytes
    (tmp_path / "in").mkdir()
    rows = write_fineweb_parquet(tmp_path / "in" / "a.parquet", docs)
    out = tmp_path / "out"
    settings = ShardSettings(sample_bytes=513, val_fraction=0.0, keep_tail=False, min_int_score=3, min_chars=500,
                             language="en")  # fmt: skip
    manifest = run_sharding(ShardJob([str(tmp_path / "in")], str(out), settings, progress=False))

    def reason(r: dict) -> str | None:
        text = r["text"].replace("\x00", "")
        if r["int_score"] < 3:
            return "int_score"
        if len(text) < 500:
            return "min_chars"
        if r["language"] != "en":
            return "language"
        return None

    kept = [r["text"].replace("\x00", "").encode() for r in rows if reason(r) is None]
    dropped: dict[str, int] = {}
    for r in rows:
        if (why := reason(r)) is not None:
            dropped[why] = dropped.get(why, 0) + 1
    assert manifest["totals"]["dropped"] == dropped and sum(dropped.values()) > 0 and kept
    samples = read_split_samples(out / "train")
    assert all(len(s) == 513 for s in samples)  # tail dropped: only full samples
    stream = b"".join(b"\xfe" + d + b"\xff" for d in kept)
    assert b"".join(samples) == stream[: len(stream) // 513 * 513]
    assert manifest["totals"]["tail_bytes_dropped"]["train"] == len(stream) % 513
    assert b"\x00" not in b"".join(samples)
    assert not (out / "val").exists() and manifest["splits"] == ["train"]
