"""An hour of mostly quiet audio: sentences placed at known times come back at those times.

The file is built here from the committed speech fixtures (FLAC keeps an hour of near
silence to a few MB). Quiet stretches never reach the model, so this runs in seconds.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.speech import SAMPLE_RATE, load_fixture, word_error_rate

HOUR_S = 3600
# (seconds from the start, fixture): early, middle, and the last minute of the hour.
PLACEMENTS = [(12.5, "fox_dog.wav"), (1834.0, "oak_tree.wav"), (3571.25, "weather.wav")]
NOISE_LEVEL = 0.001  # -60 dBFS hiss, like a quiet room


@pytest.fixture(scope="module")
def hour_flac() -> bytes:
    rng = np.random.default_rng(3)
    audio = (NOISE_LEVEL * rng.standard_normal(HOUR_S * SAMPLE_RATE)).astype(np.float32)
    for start_s, name in PLACEMENTS:
        speech = load_fixture(name).audio
        start = int(start_s * SAMPLE_RATE)
        audio[start : start + speech.size] += speech
    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def test_segment_times_do_not_drift_over_an_hour(client: httpx.Client, hour_flac: bytes) -> None:
    response = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("hour.flac", hour_flac)},
        data={"response_format": "verbose_json", "language": "en"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert abs(body["duration"] - HOUR_S) < 0.01
    segments = body["segments"]
    assert len(segments) == len(PLACEMENTS), segments
    for (start_s, name), segment in zip(PLACEMENTS, segments):
        fixture = load_fixture(name)
        assert abs(segment["start"] - start_s) < 1.0, (name, segment)
        speech_end = start_s + fixture.audio.size / SAMPLE_RATE
        assert abs(segment["end"] - speech_end) < 1.0, (name, segment)
        assert word_error_rate([fixture.text], [segment["text"]]) < 0.35, segment


def test_low_noise_alone_is_empty_text(client: httpx.Client) -> None:
    rng = np.random.default_rng(4)
    noise = (0.003 * rng.standard_normal(20 * SAMPLE_RATE)).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, noise, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    response = client.post("/v1/audio/transcriptions", files={"file": ("noise.wav", buffer.getvalue())})
    assert response.status_code == 200 and response.json() == {"text": ""}
