"""Builders of real-text corpora for the data-pipeline tests, and a runner for the shard CLI.

Everything is derived from ../shared/data (real text). The parquet file is written with pyarrow
in FineWeb-Edu's schema from real records; its metadata (ids, scores, language ...) is made up
but well formed, as ../shared/data/README.md prescribes.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "shard_dataset.py"


def run_fresh_python(code: str, ok_marker: str, timeout: float = 300) -> None:
    """Run ``code`` in a fresh interpreter (nothing imported yet) and require it to print ``ok_marker``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ok_marker in proc.stdout, proc.stdout[-2000:]


FINEWEB_SCHEMA_FIELDS = [
    ("text", "string"),
    ("id", "string"),
    ("dump", "string"),
    ("url", "string"),
    ("file_path", "string"),
    ("language", "string"),
    ("language_score", "float64"),
    ("token_count", "int64"),
    ("score", "float64"),
    ("int_score", "int64"),
]


def read_jsonl_texts(path: Path) -> list[dict[str, Any]]:
    """Records of a (possibly gzipped) jsonl file, read independently of data_pipeline."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_fineweb_parquet(path: Path, texts: list[str], row_group_size: int = 64) -> list[dict[str, Any]]:
    """A parquet file in FineWeb-Edu's schema with real texts; returns the rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i, text in enumerate(texts):
        rows.append(
            {
                "text": text,
                "id": f"<urn:uuid:{i:08d}-test-0000-0000-{i:012d}>",
                "dump": "CC-MAIN-2024-10",
                "url": f"https://example.org/doc/{i}",
                "file_path": "s3://commoncrawl/crawl-data/CC-MAIN-2024-10/segments/x/warc/y.warc.gz",
                "language": "en" if i % 7 else "fr",
                "language_score": 0.9,
                "token_count": len(text) // 4,
                "score": 2.0 + (i % 4) * 0.5,
                "int_score": 2 + (i % 4) // 2 + (i % 4 == 3),
            }
        )
    schema = pa.schema([pa.field(name, getattr(pa, typ)()) for name, typ in FINEWEB_SCHEMA_FIELDS])
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path, row_group_size=row_group_size)
    return rows


def build_mixed_corpus(shared: Path, dest: Path) -> Path:
    """A directory with every supported input kind, all real text.

    parquet (FineWeb-Edu schema, DCLM texts), jsonl (CCNet), jsonl.gz (C4 news), .json.gz (C4),
    jsonl.zst, .txt (a book, CRLF kept), .txt.gz (FineWeb-Edu head).
    """
    import zstandard

    web, books = shared / "web", shared / "books"
    dest.mkdir(parents=True, exist_ok=True)
    dclm = [r["text"] for r in read_jsonl_texts(web / "dclm_majority_data.jsonl")][:200]
    write_fineweb_parquet(dest / "fineweb_edu_like.parquet", dclm)
    shutil.copy(web / "cc_en_head-0091.jsonl", dest / "cc_en_head-0091.jsonl")
    shutil.copy(web / "c4_100_domains_5_www.theguardian.com_00000000.jsonl.gz", dest / "guardian.jsonl.gz")
    shutil.copy(web / "c4-sample.01.json.gz", dest / "c4-sample.01.json.gz")
    raw = (web / "cc_en_head-0174.jsonl").read_bytes()
    (dest / "cc_en_head-0174.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(raw))
    shutil.copy(books / "pg10146.txt", dest / "pg10146.txt")
    with gzip.open(dest / "fineweb_head.txt.gz", "wb") as f:
        f.write((web / "fineweb_edu_sample10BT_head_1MB.txt").read_bytes())
    return dest


def expected_documents(path: Path) -> list[tuple[str | None, str]]:
    """(id, text) of every document of one input, read with plain libraries (the test oracle)."""
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        t = pq.read_table(path, columns=["id", "text"]).to_pylist()
        return [(r["id"], r["text"]) for r in t]
    if name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdDecompressor().stream_reader(path.read_bytes()).read()
        if name.endswith(".txt.zst"):
            return [(None, data.decode("utf-8"))]
        recs = [json.loads(line) for line in data.splitlines() if line.strip()]
        return [(r.get("id"), r["text"]) for r in recs]
    if name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".json")):
        return [(r.get("id"), r["text"]) for r in read_jsonl_texts(path)]
    if name.endswith(".txt.gz"):
        return [(None, gzip.decompress(path.read_bytes()).decode("utf-8"))]
    return [(None, path.read_bytes().decode("utf-8"))]


def load_cli() -> Any:
    """tools/shard_dataset.py as a module (tools/ is not a package), to call its main() in-process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("shard_dataset_cli", TOOL)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(*args: str | os.PathLike[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run tools/shard_dataset.py as a user would (a real subprocess)."""
    return subprocess.run(
        [sys.executable, str(TOOL), *map(str, args), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def tree_snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``root`` with size, mtime and content: equal snapshots = untouched."""
    snap = {}
    if not root.exists():
        return snap
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            snap[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, p.read_bytes())
    return snap
