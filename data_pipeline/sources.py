"""Input discovery and document readers: FineWeb-Edu parquet, jsonl(.gz/.zst), plain text.

Every reader streams: parquet is read in row-group batches, jsonl line by line through a
decompressing reader; only a plain-text file (one document per file) is read whole, since
it is one document. Readers report progress in *raw input bytes* (what the progress bar
and the throughput benchmark count) through a callback.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from data_pipeline.errors import DataPipelineError

__all__ = [
    "Document",
    "DocFilter",
    "format_of",
    "expand_inputs",
    "check_input",
    "iter_documents",
    "SUPPORTED_SUFFIXES",
]

# (suffix, format, compression). Longest first so ".jsonl.gz" wins over ".gz".
_SUFFIXES: tuple[tuple[str, str, str | None], ...] = (
    (".jsonl.zst", "jsonl", "zst"),
    (".jsonl.gz", "jsonl", "gz"),
    (".json.zst", "jsonl", "zst"),
    (".json.gz", "jsonl", "gz"),
    (".txt.zst", "text", "zst"),
    (".txt.gz", "text", "gz"),
    (".parquet", "parquet", None),
    (".jsonl", "jsonl", None),
    (".json", "jsonl", None),
    (".txt", "text", None),
)
SUPPORTED_SUFFIXES = tuple(s for s, _, _ in _SUFFIXES)

# Parquet columns read besides `text` when present (FineWeb-Edu schema names).
_PARQUET_META = ("id", "int_score", "language")
_PARQUET_BATCH_ROWS = 1024

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Document:
    """One input document and the metadata the filters and the split need."""

    text: str
    doc_id: str | None = None
    int_score: int | None = None
    language: str | None = None


@dataclass(frozen=True)
class DocFilter:
    """Document filters; a filter whose field a record lacks does not drop it."""

    min_int_score: int | None = None
    min_chars: int = 0
    language: str | None = None

    def reason(self, doc: Document) -> str | None:
        """Why ``doc`` is dropped (a counter name in the manifest), or None to keep it."""
        if not doc.text:
            return "empty"
        if self.min_int_score is not None and doc.int_score is not None and doc.int_score < self.min_int_score:
            return "int_score"
        if self.min_chars and len(doc.text) < self.min_chars:
            return "min_chars"
        if self.language is not None and doc.language is not None and doc.language != self.language:
            return "language"
        return None


def format_of(path: str | os.PathLike[str]) -> tuple[str, str | None] | None:
    """(format, compression) from the file name, or None for an unsupported name."""
    name = os.path.basename(str(path)).lower()
    for suffix, fmt, comp in _SUFFIXES:
        if name.endswith(suffix):
            return fmt, comp
    return None


def expand_inputs(specs: list[str]) -> list[Path]:
    """Files named by ``specs`` (files, directories searched recursively, globs), sorted, unique.

    A directory contributes only supported files; a file named explicitly must be supported.
    """
    if not specs:
        raise DataPipelineError("INPUT: give at least one file, directory or glob")
    found: list[Path] = []
    for spec in specs:
        if glob.has_magic(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            files = [Path(m) for m in matches if os.path.isfile(m) and format_of(m)]
            if not files:
                raise DataPipelineError(f"input {spec!r}: the glob matches no supported file ({_supported_text()})")
            found.extend(files)
        elif os.path.isdir(spec):
            files = []
            for root, dirs, names in os.walk(spec, onerror=_raise_walk_error):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files.extend(Path(root) / n for n in sorted(names) if format_of(n) and not n.startswith("."))
            if not files:
                raise DataPipelineError(f"input {spec!r}: the directory holds no supported file ({_supported_text()})")
            found.extend(sorted(files))
        elif os.path.exists(spec):
            if not format_of(spec):
                raise DataPipelineError(f"input {spec!r}: unsupported file type (supported: {_supported_text()})")
            found.append(Path(spec))
        else:
            raise DataPipelineError(f"input {spec!r}: no such file or directory")
    unique: dict[Path, None] = {}
    for p in found:
        unique.setdefault(p.resolve(), None)
    return sorted(unique)


def _raise_walk_error(err: OSError) -> None:
    # os.walk skips unreadable directories silently; a corpus must not shrink silently.
    raise DataPipelineError(f"input {err.filename!r}: cannot list directory ({err.strerror})")


def _supported_text() -> str:
    return ", ".join(SUPPORTED_SUFFIXES)


def check_input(path: Path) -> None:
    """Cheap up-front check that ``path`` is readable and has a ``text`` field.

    Runs before any output is touched, so the common mistakes are refused without side effects:
    unreadable files, parquet without a string ``text`` column, jsonl whose first record has
    no ``text``.
    """
    fmt = format_of(path)
    if fmt is None:
        raise DataPipelineError(f"input {str(path)!r}: unsupported file type (supported: {_supported_text()})")
    if not os.access(path, os.R_OK):
        raise DataPipelineError(f"input {str(path)!r}: not readable (permission denied)")
    kind, comp = fmt
    try:
        if kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
            if "text" not in schema.names:
                raise DataPipelineError(
                    f"input {str(path)!r}: parquet has no 'text' column (columns: {', '.join(schema.names)})"
                )
            ttype = schema.field("text").type
            if not (pa.types.is_string(ttype) or pa.types.is_large_string(ttype)):
                raise DataPipelineError(f"input {str(path)!r}: parquet column 'text' is {ttype}, expected string")
        elif kind == "jsonl":
            with _open_binary(path, comp) as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        _parse_json_line(line, path, lineno)
                        break
        else:
            with _open_binary(path, comp) as f:
                f.read(1)
    except DataPipelineError:
        raise
    except Exception as err:  # any reader failure is a property of the input file
        raise DataPipelineError(f"input {str(path)!r}: cannot be read as {kind}: {_one_line(err)}") from None


def iter_documents(path: Path, progress: Progress | None = None) -> Iterator[Document]:
    """Documents of one input file, streaming; ``progress(n)`` is called with raw bytes consumed."""
    fmt = format_of(path)
    if fmt is None:
        raise DataPipelineError(f"input {str(path)!r}: unsupported file type")
    kind, comp = fmt
    report = progress or (lambda n: None)
    try:
        if kind == "parquet":
            yield from _iter_parquet(path, report)
        elif kind == "jsonl":
            yield from _iter_jsonl(path, comp, report)
        else:
            yield from _iter_text(path, comp, report)
    except DataPipelineError:
        raise
    except (OSError, EOFError, ValueError, _zstd_error()) as err:
        raise DataPipelineError(f"input {str(path)!r}: read failed: {_one_line(err)}") from None


def _zstd_error() -> type[Exception]:
    import zstandard

    return zstandard.ZstdError


def _iter_parquet(path: Path, report: Progress) -> Iterator[Document]:
    import pyarrow.parquet as pq

    size = path.stat().st_size
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if "text" not in names:
        raise DataPipelineError(f"input {str(path)!r}: parquet has no 'text' column")
    columns = ["text", *(c for c in _PARQUET_META if c in names)]
    total_rows = max(pf.metadata.num_rows, 1)
    rows_done = 0
    reported = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
        cols = {name: batch.column(i).to_pylist() for i, name in enumerate(batch.schema.names)}
        texts = cols["text"]
        ids = cols.get("id") or [None] * len(texts)
        scores = cols.get("int_score") or [None] * len(texts)
        langs = cols.get("language") or [None] * len(texts)
        for text, doc_id, score, lang in zip(texts, ids, scores, langs):
            yield Document(text or "", doc_id, score, lang)
        rows_done += len(texts)
        # Bytes are attributed to rows pro rata: parquet pages do not map to rows exactly.
        now = size * rows_done // total_rows
        report(now - reported)
        reported = now
    report(size - reported)


def _iter_jsonl(path: Path, comp: str | None, report: Progress) -> Iterator[Document]:
    size = path.stat().st_size
    with open(path, "rb") as raw:
        stream = _decompressing(raw, comp)
        reported = 0
        for lineno, line in enumerate(stream, 1):
            if not line.strip():
                continue
            yield _record_to_document(_parse_json_line(line, path, lineno))
            if lineno % 256 == 0:
                now = raw.tell()
                report(now - reported)
                reported = now
        report(size - reported)


def _iter_text(path: Path, comp: str | None, report: Progress) -> Iterator[Document]:
    size = path.stat().st_size
    with open(path, "rb") as raw:
        data = _decompressing(raw, comp).read()
    report(size)
    # errors="replace": a stray invalid byte must not abort a whole corpus; it becomes U+FFFD.
    yield Document(data.decode("utf-8", errors="replace"))


def _parse_json_line(line: bytes, path: Path, lineno: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except ValueError as err:
        raise DataPipelineError(f"input {str(path)!r} line {lineno}: not valid JSON ({_one_line(err)})") from None
    if not isinstance(obj, dict):
        raise DataPipelineError(f"input {str(path)!r} line {lineno}: expected a JSON object per line")
    if "text" not in obj or not isinstance(obj["text"], str | None):
        raise DataPipelineError(f"input {str(path)!r} line {lineno}: record has no string 'text' field")
    return obj


def _record_to_document(obj: dict[str, Any]) -> Document:
    raw_meta = obj.get("metadata")
    meta = raw_meta if isinstance(raw_meta, dict) else {}
    doc_id = obj.get("id")
    score = obj.get("int_score")
    lang = obj.get("language", meta.get("language"))
    return Document(
        obj["text"] or "",  # null text: an empty document, dropped and counted as "empty"
        str(doc_id) if doc_id is not None else None,
        int(score) if isinstance(score, int | float) else None,
        lang if isinstance(lang, str) else None,
    )


def _decompressing(raw: BinaryIO, comp: str | None) -> BinaryIO:
    if comp == "gz":
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if comp == "zst":
        return io.BufferedReader(_ZstdFrames(raw), buffer_size=1 << 20)
    return raw


class _ZstdFrames(io.RawIOBase):
    """Decompresses every zstd frame of a file and raises on a truncated last frame.

    zstandard's stream_reader silently returns nothing for a truncated frame, which would turn
    a damaged input into a quietly smaller corpus.
    """

    def __init__(self, raw: BinaryIO) -> None:
        import zstandard

        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._in_frame = False
        self._pending = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while self._pos >= len(self._pending):
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if self._in_frame:
                    raise EOFError("truncated zstd frame (file cut short?)")
                return 0
            out = []
            while chunk:
                self._in_frame = True
                out.append(self._obj.decompress(chunk))
                if self._obj.eof:  # a frame ended; the rest of the chunk starts the next one
                    chunk = self._obj.unused_data
                    self._obj = self._dctx.decompressobj()
                    self._in_frame = False
                else:
                    chunk = b""
            self._pending, self._pos = b"".join(out), 0
        n = min(len(buf), len(self._pending) - self._pos)
        buf[:n] = self._pending[self._pos : self._pos + n]
        self._pos += n
        return n


class _open_binary:
    """Context manager: a file opened for reading, decompressed as its name says."""

    def __init__(self, path: Path, comp: str | None) -> None:
        self.raw = open(path, "rb")  # noqa: SIM115 - closed in __exit__
        self.stream = _decompressing(self.raw, comp)

    def __enter__(self) -> BinaryIO:
        return self.stream

    def __exit__(self, *exc: object) -> None:
        self.raw.close()


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
