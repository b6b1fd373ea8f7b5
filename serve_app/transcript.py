"""The service's own result type, and the merge of chunk results into one transcript."""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.backends.base import ChunkResult
from serve_app.chunking import Chunk


@dataclass(frozen=True)
class Segment:
    id: int
    start: float  # seconds from the start of the original audio
    end: float
    text: str


@dataclass(frozen=True)
class Word:
    word: str  # without surrounding spaces, punctuation attached as written
    start: float  # seconds from the start of the original audio
    end: float


@dataclass(frozen=True)
class Transcription:
    text: str
    language: str | None
    duration: float  # seconds of decoded audio
    segments: tuple[Segment, ...]
    words: tuple[Word, ...] | None = None  # None: not asked for (no timing pass was run)

    def approx_bytes(self) -> int:
        """Rough in-memory size, used to bound the cache by bytes."""
        return (200 + 2 * len(self.text) + sum(120 + 2 * len(s.text) for s in self.segments)
                + sum(100 + 2 * len(w.word) for w in self.words or ()))


def merge_chunk_results(
    chunks: list[Chunk],
    results: list[ChunkResult],
    duration: float,
    requested_language: str | None,
) -> Transcription:
    """Chunk results in audio order -> one transcript with absolute segment times.

    Callers check `result.error` first; errors never reach the merge.
    """
    segments: list[Segment] = []
    words: list[Word] | None = None
    detected: str | None = None
    for chunk, result in zip(chunks, results, strict=True):
        detected = detected or result.language
        if result.words is not None:
            words = words if words is not None else []
            words += [Word(text.strip(), round(chunk.start_s + start, 3),
                           round(chunk.start_s + end, 3))
                      for text, start, end in result.words if text.strip()]
        text = result.text.strip()
        if text:
            segments.append(
                Segment(
                    id=len(segments),
                    start=round(chunk.start_s, 3),
                    end=round(chunk.end_s, 3),
                    text=text,
                )
            )
    return Transcription(
        text=" ".join(s.text for s in segments),
        language=requested_language or detected,
        duration=round(duration, 3),
        segments=tuple(segments),
        words=tuple(words) if words is not None else None,
    )
