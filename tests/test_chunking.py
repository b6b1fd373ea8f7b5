"""Chunking: speech found where it is, ≤30 s chunks, cuts in pauses, silence skipped.

The detector's decisions come from the real Silero model on the committed speech; the
grouping rules are also checked on probabilities made up for the purpose.
"""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.audio import SAMPLE_RATE
from serve_app.chunking import MAX_CHUNK_SECONDS, split_into_chunks
from serve_app.speech import SpeechAnalysis, SpeechDetector, SpeechOptions
from serve_app.speech.silero import WINDOW
from tests.speech import LONG_FIXTURE, load_fixture

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def detector() -> SpeechDetector:
    return SpeechDetector()


def hiss(seconds: float, level: float = 0.0) -> np.ndarray:
    return (level * RNG.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


def chunks_of(detector: SpeechDetector, audio: np.ndarray, **options):
    return split_into_chunks(audio, detector.analyse(audio, SpeechOptions(**options)))


def test_pure_silence_and_faint_hiss_have_no_chunks(detector: SpeechDetector) -> None:
    assert chunks_of(detector, hiss(60)) == []
    assert chunks_of(detector, hiss(20, level=0.002)) == []


def test_single_sample_has_no_chunks(detector: SpeechDetector) -> None:
    assert chunks_of(detector, np.array([0.5], dtype=np.float32)) == []


def test_speech_is_located(detector: SpeechDetector) -> None:
    speech = load_fixture("fox_dog.wav").audio
    audio = np.concatenate([hiss(10, 0.001), speech, hiss(10, 0.001)])
    (chunk,) = chunks_of(detector, audio)
    assert 9.5 <= chunk.start_s <= 10.2
    assert 10 + speech.size / SAMPLE_RATE - 0.6 <= chunk.end_s <= 13.8


def test_far_apart_utterances_are_separate_chunks_with_exact_offsets(detector) -> None:
    speech = load_fixture("train.wav").audio
    audio = np.concatenate([hiss(5), speech, hiss(600), speech, hiss(5)])
    first, second = chunks_of(detector, audio)
    second_speech_s = 5 + speech.size / SAMPLE_RATE + 600
    # Each chunk opens within its padding of its speech: no drift in ten minutes. (After
    # long silence Silero takes up to ~0.2 s longer to be sure speech has begun.)
    assert 4.5 <= first.start_s <= 5.0
    assert second_speech_s - 0.5 <= second.start_s <= second_speech_s


def test_long_speech_is_cut_in_a_pause_not_mid_word(detector: SpeechDetector) -> None:
    audio = load_fixture(LONG_FIXTURE).audio  # sentences 1 s apart, 44 s in all
    chunks = chunks_of(detector, audio)
    assert len(chunks) == 2 and all(c.seconds <= MAX_CHUNK_SECONDS for c in chunks)
    cut = chunks[0].end
    around = audio[max(0, cut - 800) : cut + 800]  # 50 ms either side of the cut
    assert np.sqrt(np.mean(around**2)) < 1e-3, "the cut fell inside speech"


def test_continuous_speech_is_cut_at_its_least_speech_like_window() -> None:
    # 95 s the detector calls speech throughout, but for one dip at 25 s.
    n_windows = int(95 * SAMPLE_RATE / WINDOW)
    probabilities = np.full(n_windows, 0.9, dtype=np.float32)
    dip = int(25 * SAMPLE_RATE / WINDOW)
    probabilities[dip] = 0.2
    audio = np.zeros(n_windows * WINDOW, dtype=np.float32)
    analysis = SpeechAnalysis(probabilities, ((0, audio.size),))
    chunks = split_into_chunks(audio, analysis)
    assert abs(chunks[0].end_s - 25.0) < 0.05
    assert all(c.seconds <= MAX_CHUNK_SECONDS for c in chunks)
    assert [c.start for c in chunks[1:]] == [c.end for c in chunks[:-1]]  # nothing lost
    assert chunks[-1].end == audio.size


def test_quiet_speech_is_brought_to_a_normal_level_for_the_model(detector) -> None:
    speech = load_fixture("oak_tree.wav").audio
    (normal,) = chunks_of(detector, speech)
    (quiet,) = chunks_of(detector, speech * np.float32(10 ** (-30 / 20)))
    assert normal.gain < 1.3  # speech at its own level is sent within 2 dB of it
    assert 20 < quiet.gain < 40  # about the 30 dB (31.6x) it lost
    assert abs(quiet.start - normal.start) <= WINDOW and abs(quiet.end - normal.end) <= 2 * WINDOW


def test_guard_off_sends_all_the_audio_as_it_is() -> None:
    audio = hiss(75, 0.05)  # music, singing, or noise the user insists on
    chunks = split_into_chunks(audio, None)
    assert chunks[0].start == 0 and chunks[-1].end == audio.size
    assert [c.start for c in chunks[1:]] == [c.end for c in chunks[:-1]]
    assert all(c.seconds <= MAX_CHUNK_SECONDS and c.gain == 1.0 for c in chunks)
