"""Merging chunk results: absolute times, model segment times clamped into their chunk."""

from __future__ import annotations

from serve_app.audio import SAMPLE_RATE
from serve_app.backends.base import ChunkResult
from serve_app.chunking import Chunk
from serve_app.transcript import merge_chunk_results


def chunk(start_s: float, end_s: float) -> Chunk:
    return Chunk(int(start_s * SAMPLE_RATE), int(end_s * SAMPLE_RATE))


def test_untimed_chunks_become_one_segment_each_with_absolute_times() -> None:
    merged = merge_chunk_results(
        [chunk(10, 14), chunk(3600, 3605)],
        [ChunkResult(text=" hello ", language="en"), ChunkResult(text="world")],
        duration=3700.0,
        requested_language=None,
    )
    assert [(s.start, s.end, s.text) for s in merged.segments] == [
        (10.0, 14.0, "hello"),
        (3600.0, 3605.0, "world"),
    ]
    assert merged.text == "hello world" and merged.language == "en"


def test_empty_results_leave_no_segments() -> None:
    merged = merge_chunk_results([chunk(0, 1)], [ChunkResult(text="  ")], 1.0, None)
    assert merged.segments == () and merged.text == ""
