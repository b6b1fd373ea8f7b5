"""Batch shaping: grouping by options, order kept, failures isolated to their chunk."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.backends.base import SAMPLE_RATE, BackendInfo, ChunkResult, DecodeOptions
from serve_app.batching import (
    MIN_COST_SECONDS,
    BatchHealth,
    ChunkRequest,
    batch_shape,
    batch_size_in_windows,
    chunk_cost_seconds,
    group_for_generate,
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


def seconds(s: float, window_s: float | None = 30.0) -> ChunkRequest:
    return ChunkRequest(np.zeros(int(s * SAMPLE_RATE), np.float32), DecodeOptions(), window_s=window_s)


def test_a_fixed_window_model_pays_the_whole_window_per_chunk() -> None:
    assert chunk_cost_seconds(5 * SAMPLE_RATE, 30.0) == 30.0
    assert batch_size_in_windows([seconds(5), seconds(29), seconds(1)]) == 3


def test_a_model_without_a_window_pays_the_audio_with_a_floor_per_chunk() -> None:
    assert chunk_cost_seconds(12 * SAMPLE_RATE, None) == 12.0
    assert chunk_cost_seconds(SAMPLE_RATE // 10, None) == MIN_COST_SECONDS
    six_short = [seconds(5, None) for _ in range(6)]
    assert batch_size_in_windows(six_short) == 1  # 30 s of audio is one window
    assert batch_size_in_windows(six_short + [seconds(0.1, None)]) == 2


def test_fixed_window_calls_keep_one_call_per_option_set() -> None:
    requests = [seconds(2), seconds(28), seconds(5)]
    assert group_for_generate(requests) == [[0, 2, 1]]
    shape = batch_shape(requests, [[0, 2, 1]])
    assert shape.audio_s == pytest.approx(35.0) and shape.padded_s == pytest.approx(90.0)
    assert shape.padding_ratio == pytest.approx(1 - 35 / 90)


def test_without_a_window_similar_lengths_share_a_call_and_padding_is_measured() -> None:
    requests = [seconds(s, None) for s in (20, 2, 3, 9, 25, 5)]
    calls = group_for_generate(requests)
    lengths = [[round(requests[i].audio.size / SAMPLE_RATE) for i in call] for call in calls]
    assert lengths == [[2, 3], [5, 9], [20, 25]]  # longest ≤ 2 x shortest in every call
    shape = batch_shape(requests, calls)
    assert shape.padded_s == pytest.approx(2 * 3 + 2 * 9 + 2 * 25)
    one_call = batch_shape(requests, [list(range(len(requests)))])
    assert shape.padding_ratio < one_call.padding_ratio


TRIMMED = BackendInfo(
    model_id="m", family="whisper", can_translate=False,
    windows_s=(5.0, 10.0, 15.0, 20.0, 25.0, 30.0), window_margin_s=3.0,
)


def test_a_chunk_takes_the_shortest_window_that_holds_it_and_its_margin() -> None:
    def window(s: float) -> float | None:
        return TRIMMED.window_for(int(s * SAMPLE_RATE))

    assert [window(s) for s in (0.5, 2.0, 2.5, 5.0, 12.0, 27.0, 30.0)] == [
        5.0, 5.0, 10.0, 10.0, 15.0, 30.0, 30.0
    ]
    full = BackendInfo(model_id="m", family="whisper", can_translate=False, windows_s=(30.0,))
    assert full.window_for(SAMPLE_RATE) == 30.0
    assert BackendInfo(model_id="m", family="glm_asr", can_translate=False).window_for(1) is None


def test_chunks_share_a_call_only_within_one_window() -> None:
    # A chunk's padding never depends on its batch mates: a 2-s chunk is padded to 5 s
    # whether or not a 12-s chunk shares its batch.
    requests = [seconds(s, TRIMMED.window_for(int(s * SAMPLE_RATE))) for s in (12, 2, 1, 6)]
    assert group_for_generate(requests) == [[0], [2, 1], [3]]
    shape = batch_shape(requests, group_for_generate(requests))
    assert shape.audio_s == pytest.approx(21.0) and shape.padded_s == pytest.approx(15 + 5 + 5 + 10)
    assert batch_size_in_windows(requests) == 2  # 35 s of windows


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
