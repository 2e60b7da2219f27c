"""Unit tests of encoding, split, packing and input discovery (fast, no shards)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from data_pipeline.errors import DataPipelineError
from data_pipeline.packing import SamplePacker, clean_text, decode_documents, encode_document, split_of
from data_pipeline.sources import DocFilter, Document, expand_inputs, format_of, iter_documents
from data_pipeline.writer import plan_units


def test_encoding_is_bos_utf8_eos_without_nul() -> None:
    assert encode_document(clean_text("a\x00b é")) == b"\xfea" + b"b \xc3\xa9" + b"\xff"
    assert encode_document("\ud800x") == b"\xfe?x\xff"  # a lone surrogate (legal in JSON) is replaced
    assert clean_text("no nul") == "no nul"


def test_split_is_deterministic_and_close_to_fraction() -> None:
    texts = [f"document number {i}" for i in range(4000)]
    splits = [split_of(None, t, 0.1) for t in texts]
    assert splits == [split_of(None, t, 0.1) for t in texts]
    assert 300 < splits.count("val") < 500
    assert split_of("id-1", "x", 0.1) == split_of("id-1", "different text", 0.1)  # the id decides
    assert all(split_of(None, t, 0.0) == "train" for t in texts[:100])


@pytest.mark.parametrize("keep_tail", [True, False])
def test_packer_cuts_fixed_samples_and_handles_tail(keep_tail: bool) -> None:
    docs = [b"\xfe" + bytes([65 + i % 26]) * n + b"\xff" for i, n in enumerate([3, 0, 17, 40, 1, 9])]
    p = SamplePacker(8)
    samples = [s for d in docs for s in p.add(d)]
    tail = p.finish(keep_tail)
    stream = b"".join(docs)
    assert all(len(s) == 8 for s in samples) and b"".join(samples) == stream[: len(samples) * 8]
    if keep_tail:
        assert tail == stream[len(samples) * 8 :] and decode_documents(b"".join(samples) + tail) == [
            d[1:-1] for d in docs
        ]
    else:
        assert tail is None
    assert p.pending == 0


def test_filters() -> None:
    f = DocFilter(min_int_score=3, min_chars=5, language="en")
    assert f.reason(Document("")) == "empty"
    assert f.reason(Document("long enough", int_score=2)) == "int_score"
    assert f.reason(Document("abc", int_score=4)) == "min_chars"
    assert f.reason(Document("long enough", language="de")) == "language"
    assert f.reason(Document("long enough")) is None  # absent fields do not drop


def test_input_discovery(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ["d/b.jsonl", "d/sub/a.txt.gz", "d/c.parquet", "d/skip.csv", "d/.hidden.txt", "e.json.gz"]:
        (tmp_path / name).write_bytes(b"")
    found = expand_inputs([str(tmp_path / "d"), str(tmp_path / "*.json.gz"), str(tmp_path / "d" / "b.jsonl")])
    names = [p.name for p in found]
    assert names == sorted(names, key=lambda n: str([p for p in found if p.name == n][0]))
    assert set(names) == {"b.jsonl", "a.txt.gz", "c.parquet", "e.json.gz"}  # unique, supported only
    assert format_of("x.JSONL.ZST") == ("jsonl", "zst") and format_of("x.txt.gz") == ("text", "gz")
    with pytest.raises(DataPipelineError, match="unsupported file type"):
        expand_inputs([str(tmp_path / "d" / "skip.csv")])


def test_text_sources_and_units(tmp_path: Path) -> None:
    tmp_path = tmp_path / "texts"
    tmp_path.mkdir()
    (tmp_path / "a.txt").write_bytes("caf\u00e9\r\n".encode())
    with gzip.open(tmp_path / "b.txt.gz", "wb") as f:
        f.write(b"zipped")
    got = [d.text for p in sorted(tmp_path.iterdir()) for d in iter_documents(p)]
    assert got == ["caf\u00e9\r\n", "zipped"]
    paths = sorted(tmp_path.iterdir())
    assert [u.inputs for u in plan_units(paths, 1 << 20)] == [tuple(paths)]  # small texts share a unit
    assert len(plan_units(paths, 1)) == 2


def test_multi_frame_zstd_jsonl(tmp_path: Path) -> None:
    import json

    import zstandard

    lines = [json.dumps({"text": f"document {i} " * 50}) + "\n" for i in range(300)]
    data = "".join(lines).encode()
    cut = len(data) // 3
    path = tmp_path / "multi.jsonl.zst"
    # Two frames, as pzstd or concatenated .zst files produce.
    path.write_bytes(zstandard.ZstdCompressor().compress(data[:cut]) + zstandard.ZstdCompressor().compress(data[cut:]))
    assert [d.text for d in iter_documents(path)] == [json.loads(x)["text"] for x in lines]
