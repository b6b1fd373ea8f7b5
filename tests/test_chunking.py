"""Chunking: speech found where it is, ≤30 s chunks, cuts in pauses, silence skipped."""

from __future__ import annotations

import numpy as np

from serve_app.audio import SAMPLE_RATE
from serve_app.chunking import MAX_CHUNK_SECONDS, split_into_chunks

RNG = np.random.default_rng(0)


def burst(seconds: float, level: float = 0.3) -> np.ndarray:
    """Speech-like: noise with a syllable-rate (4 Hz) envelope that never fully closes."""
    n = int(seconds * SAMPLE_RATE)
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * np.arange(n) / SAMPLE_RATE)
    return (level * envelope * RNG.standard_normal(n)).astype(np.float32)


def silence(seconds: float, level: float = 0.0) -> np.ndarray:
    return (level * RNG.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


def test_pure_silence_has_no_chunks() -> None:
    assert split_into_chunks(silence(60)) == []


def test_low_noise_has_no_chunks() -> None:
    assert split_into_chunks(silence(20, level=0.002)) == []


def test_speech_is_located() -> None:
    audio = np.concatenate([silence(10), burst(3), silence(10)])
    (chunk,) = split_into_chunks(audio)
    assert 9.5 <= chunk.start_s <= 10.0
    assert 13.0 <= chunk.end_s <= 13.5


def test_far_apart_utterances_are_separate_chunks_with_exact_offsets() -> None:
    audio = np.concatenate([silence(5), burst(2), silence(600), burst(2), silence(5)])
    chunks = split_into_chunks(audio)
    assert len(chunks) == 2
    assert abs(chunks[1].start_s - 607.0) < 0.5  # no drift after ten minutes


def test_continuous_speech_is_cut_at_a_pause_not_mid_word() -> None:
    # 20 s of speech, a 0.25 s pause (shorter than an utterance break), 20 s more.
    audio = np.concatenate([burst(20), silence(0.25, 0.001), burst(20)])
    chunks = split_into_chunks(audio)
    assert all(c.seconds <= MAX_CHUNK_SECONDS + 1e-6 for c in chunks)
    assert len(chunks) == 2
    assert abs(chunks[0].end_s - 20.1) < 0.3  # the cut fell in the pause


def test_chunks_cover_all_speech_in_order_and_never_exceed_the_window() -> None:
    audio = np.concatenate([burst(95), silence(1), burst(7)])
    chunks = split_into_chunks(audio)
    assert all(c.seconds <= MAX_CHUNK_SECONDS + 1e-6 for c in chunks)
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:]))
    covered = sum(c.end - c.start for c in chunks)
    assert covered >= 0.98 * (102 * SAMPLE_RATE)


def test_single_sample_has_no_chunks() -> None:
    assert split_into_chunks(np.array([0.5], dtype=np.float32)) == []


def test_steady_noise_has_no_chunks() -> None:
    assert split_into_chunks(silence(20, level=0.05)) == []


def test_speech_over_noise_is_separated_from_the_noise() -> None:
    audio = np.concatenate([silence(10, 0.01), burst(3) + silence(3, 0.01), silence(10, 0.01)])
    (chunk,) = split_into_chunks(audio)
    assert 9.5 <= chunk.start_s <= 10.0 and 13.0 <= chunk.end_s <= 13.5
