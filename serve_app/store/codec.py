"""Transcripts as bytes for a store outside the process (JSON: readable with redis-cli,
stable across Python versions, no pickle to trust)."""

from __future__ import annotations

import json
from dataclasses import asdict

from serve_app.backends.base import ChunkResult
from serve_app.transcript import Segment, Transcription, Word

FORMAT_VERSION = 1  # bumped when the stored shape changes; older entries read as misses


def _dump(value) -> bytes:
    """A dataclass as compact JSON, stamped with the format version."""
    body = asdict(value)
    body["v"] = FORMAT_VERSION
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def encode(transcription: Transcription) -> bytes:
    return _dump(transcription)


def decode(data: bytes) -> Transcription | None:
    """None for anything this version did not write (a miss, never an error)."""
    try:
        body = json.loads(data)
        if body.pop("v", None) != FORMAT_VERSION:
            return None
        words = body.pop("words")
        return Transcription(
            text=body["text"], language=body["language"], duration=body["duration"],
            segments=tuple(Segment(**s) for s in body["segments"]),
            words=tuple(Word(**w) for w in words) if words is not None else None,
        )
    except (ValueError, KeyError, TypeError):
        return None


def encode_chunk(result: ChunkResult) -> bytes:
    """A finished chunk of a job, kept so a run taken over resumes after it."""
    return _dump(result)


def decode_chunk(data: bytes) -> ChunkResult | None:
    """None for anything this version did not write (that chunk is decoded again)."""
    try:
        body = json.loads(data)
        if body.pop("v", None) != FORMAT_VERSION or body.get("error"):
            return None
        words = body.pop("words")
        return ChunkResult(**body, words=tuple(tuple(w) for w in words)
                           if words is not None else None)
    except (ValueError, KeyError, TypeError):
        return None
