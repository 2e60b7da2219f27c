"""Byte encoding of documents, the train/val split, and packing into fixed-size samples.

A document becomes ``BOS utf8(text) EOS`` (docs/model.md section 1; NUL characters dropped so PAD=0
never occurs inside data). Documents of one stream are concatenated and cut into samples of
``sample_bytes`` bytes (seq_len + 1: every input position has a target); the tail is kept as
one shorter final sample or dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from pmnet.vocab import BOS_ID, EOS_ID, PAD_ID

__all__ = ["encode_document", "clean_text", "split_of", "SamplePacker", "decode_documents"]

_BOS = bytes([BOS_ID])
_EOS = bytes([EOS_ID])
_NUL = chr(PAD_ID)


def clean_text(text: str) -> str:
    """The text as it will be stored: NUL characters removed (PAD must stay unambiguous)."""
    return text.replace(_NUL, "") if _NUL in text else text


def encode_document(text: str) -> bytes:
    """``BOS utf8(text) EOS`` for an already cleaned text.

    errors="replace" turns lone surrogates (legal in JSON strings, not in UTF-8) into '?',
    so the stored bytes are always valid UTF-8 and never contain 254/255 inside a document.
    """
    return _BOS + text.encode("utf-8", errors="replace") + _EOS


def split_of(doc_id: str | None, text: str, val_fraction: float) -> str:
    """'val' or 'train', decided by a hash of the document id (of the text when there is none).

    Deterministic across runs, machines, worker counts and input order, so the same document
    always lands in the same split.
    """
    if val_fraction <= 0.0:
        return "train"
    key = ("id:" + doc_id if doc_id is not None else "text:" + text).encode("utf-8", errors="replace")
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    return "val" if h < val_fraction * 2.0**64 else "train"


class SamplePacker:
    """Concatenates encoded documents and cuts the stream into ``sample_bytes`` pieces."""

    def __init__(self, sample_bytes: int) -> None:
        if sample_bytes < 2:
            raise ValueError(f"sample_bytes={sample_bytes}: must be >= 2")
        self.sample_bytes = sample_bytes
        self._buf = bytearray()

    def add(self, encoded: bytes) -> Iterator[bytes]:
        """Append one encoded document; yield every sample that is now complete."""
        self._buf += encoded
        s = self.sample_bytes
        n = len(self._buf) // s
        if n:
            buf = self._buf
            for i in range(n):
                yield bytes(buf[i * s : (i + 1) * s])
            del buf[: n * s]  # one compaction per call keeps long documents linear

    def finish(self, keep_tail: bool) -> bytes | None:
        """The leftover bytes as a final shorter sample (keep_tail) or None; resets the packer."""
        tail = bytes(self._buf)
        self._buf = bytearray()
        return tail if keep_tail and tail else None

    @property
    def pending(self) -> int:
        """Bytes waiting for the next sample."""
        return len(self._buf)


def decode_documents(stream: bytes) -> list[bytes]:
    """Split a concatenation of samples back into document payloads (the utf8 between BOS/EOS).

    The inverse of packing for a stream that starts at a document boundary; a trailing
    unterminated document (dropped tail) is returned as it is. Used by tests and audits.
    """
    docs: list[bytes] = []
    pos = 0
    n = len(stream)
    while pos < n:
        if stream[pos] != BOS_ID:
            raise ValueError(f"byte {pos}: expected BOS ({BOS_ID}), found {stream[pos]}")
        end = stream.find(_EOS, pos + 1)
        if end < 0:
            docs.append(stream[pos + 1 :])
            break
        docs.append(stream[pos + 1 : end])
        pos = end + 1
    return docs
