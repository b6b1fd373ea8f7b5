"""Batch shaping: grouping by options, order kept, failures isolated to their chunk."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.backends.base import ChunkResult, DecodeOptions
from serve_app.batching import (
    BatchHealth,
    ChunkRequest,
    group_for_generate,
    padding_waste,
    run_batch,
)


def request(n: int, language: str | None = None) -> ChunkRequest:
    return ChunkRequest(np.full(n, float(n), np.float32), DecodeOptions(language=language))


def echo_lengths(audios: list[np.ndarray], options: DecodeOptions) -> list[ChunkResult]:
    if any(np.isnan(a).any() for a in audios):
        raise RuntimeError("bad chunk in batch")
    return [ChunkResult(text=f"{a.size}", language=options.language) for a in audios]


def test_groups_by_options_and_sorts_by_length() -> None:
    requests = [request(30), request(10, "de"), request(20), request(5)]
    groups = group_for_generate(requests)
    assert sorted(map(tuple, groups)) == [(1,), (3, 2, 0)]


def test_results_come_back_in_request_order() -> None:
    requests = [request(30), request(10, "de"), request(20)]
    results = run_batch(echo_lengths, requests)
    assert [r.text for r in results] == ["30", "10", "20"]
    assert results[1].language == "de"


def test_a_failing_chunk_does_not_fail_its_batch_mates() -> None:
    requests = [request(3), request(4), request(5), request(6)]
    requests[2].audio[0] = np.nan
    results = run_batch(echo_lengths, requests)
    assert [r.error is None for r in results] == [True, True, False, True]
    assert [r.text for r in results if r.error is None] == ["3", "4", "6"]


def test_padding_waste() -> None:
    assert padding_waste([10, 10]) == 0.0
    assert padding_waste([10, 30]) == 1 - 40 / 60


def test_health_fails_only_after_whole_batches_keep_failing() -> None:
    health = BatchHealth(threshold=3)
    broken = [ChunkResult(error="CUDA error"), ChunkResult(error="CUDA error")]
    for _ in range(2):
        health.record(broken)
        health.check()  # bad audio happens; two failed batches are not yet a broken model
    health.record([ChunkResult(text="ok"), ChunkResult(error="bad chunk")])
    health.check()  # a partial success resets the count
    for _ in range(3):
        health.record(broken)
    with pytest.raises(RuntimeError, match="3 batches"):
        health.check()
