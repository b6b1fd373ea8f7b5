"""Speech detection through the service: quiet speech is transcribed, non-speech costs no
model call, users steer the detector, and a detector that cannot load is a 503."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import GLM_API_KEY, wait_until
from tests.speech import LONG_FIXTURE, SPEECH_DIR, load_fixture, load_speech_fixtures, word_error_rate

MAX_WER = 0.20
SPEECH_TIMESTAMPS = "/v1/audio/speech-timestamps"


def wav_bytes(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1, 1), 16_000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def transcribe(client: httpx.Client, data: bytes, **fields) -> httpx.Response:
    return client.post("/v1/audio/transcriptions", files={"file": ("a.wav", data)}, data=fields)


def chunks_run(client: httpx.Client) -> int:
    return client.get("/readyz").json()["model"]["chunks_run"]


def at_dbfs(signal: np.ndarray, dbfs: float) -> np.ndarray:
    return (signal / np.sqrt(np.mean(signal**2)) * 10 ** (dbfs / 20)).astype(np.float32)


def test_speech_30_db_quieter_is_transcribed(client: httpx.Client) -> None:
    fixtures = load_speech_fixtures()
    quiet = [transcribe(client, wav_bytes(f.audio * 10 ** (-30 / 20))) for f in fixtures]
    assert all(r.status_code == 200 for r in quiet), [r.text for r in quiet]
    texts = [r.json()["text"] for r in quiet]
    assert all(texts), texts  # the old loudness guard returned "" for every one of these
    assert word_error_rate([f.text for f in fixtures], texts) < MAX_WER


def non_speech() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(21)
    t = np.arange(8 * 16_000) / 16_000
    clicks = np.zeros(t.size, np.float32)
    clicks[::4000] = 0.9
    return {
        "silence": np.zeros(t.size, np.float32),
        "white noise at quiet speech's level": at_dbfs(rng.standard_normal(t.size), -52),
        "white noise -20 dBFS": at_dbfs(rng.standard_normal(t.size), -20),
        "hum": at_dbfs(np.sin(2 * np.pi * 50 * t) + 0.4 * np.sin(2 * np.pi * 150 * t), -30),
        "clicks": clicks,
        "tone": at_dbfs(np.sin(2 * np.pi * 1000 * t), -20),
    }


def test_non_speech_is_empty_text_without_a_model_call(client: httpx.Client) -> None:
    before = chunks_run(client)
    for name, audio in non_speech().items():
        response = transcribe(client, wav_bytes(audio), response_format="verbose_json")
        assert response.status_code == 200, (name, response.text)
        body = response.json()
        assert (body["text"], body["segments"]) == ("", []), name
    assert chunks_run(client) == before


def test_the_guard_can_be_turned_off_per_request(client: httpx.Client) -> None:
    noise = wav_bytes(non_speech()["white noise -20 dBFS"])
    before = chunks_run(client)
    response = transcribe(client, noise, vad_filter="false")
    assert response.status_code == 200, response.text
    assert chunks_run(client) == before + 1  # 8 s of noise went to the model as asked


@pytest.mark.parametrize(
    "field, value",
    [("vad_threshold", "1.5"), ("vad_threshold", "nan"), ("vad_filter", "sometimes"),
     ("vad_speech_pad_ms", "-1"), ("vad_min_silence_duration_ms", "600000"),
     ("vad_min_speech_duration_ms", "0.5")],
)
def test_bad_detector_settings_are_400(client: httpx.Client, field: str, value: str) -> None:
    response = transcribe(client, (SPEECH_DIR / "fox_dog.wav").read_bytes(), **{field: value})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_parameter"
    assert response.json()["error"]["param"] == field


def test_detector_settings_are_part_of_the_cache_key(client: httpx.Client) -> None:
    data = wav_bytes(np.concatenate([load_fixture("weather.wav").audio, np.zeros(1234, np.float32)]))
    assert transcribe(client, data).headers["X-Cache"] == "miss"
    assert transcribe(client, data).headers["X-Cache"] == "hit"
    assert transcribe(client, data, vad_speech_pad_ms="350").headers["X-Cache"] == "miss"
    assert transcribe(client, data, vad_speech_pad_ms="350").headers["X-Cache"] == "hit"
    assert transcribe(client, data, vad_filter="false").headers["X-Cache"] == "miss"


def test_speech_timestamps_without_a_model_call(client: httpx.Client) -> None:
    before = chunks_run(client)
    fixture = load_fixture(LONG_FIXTURE)  # nine sentences, 1 s apart
    response = client.post(SPEECH_TIMESTAMPS, files={"file": ("long.wav", wav_bytes(fixture.audio))})
    assert response.status_code == 200, response.text
    body = response.json()
    assert abs(body["duration"] - fixture.audio.size / 16_000) < 0.01
    segments = body["segments"]
    assert len(segments) == 9, segments
    assert all(0 <= s["start"] < s["end"] <= body["duration"] for s in segments)
    assert all(a["end"] <= b["start"] for a, b in zip(segments, segments[1:]))
    assert 0.6 * body["duration"] < body["speech_duration"] < body["duration"]
    # A longer minimum silence than the 1 s pauses joins the sentences into one stretch.
    joined = client.post(SPEECH_TIMESTAMPS, files={"file": ("long.wav", wav_bytes(fixture.audio))},
                         data={"vad_min_silence_duration_ms": "2000"}).json()["segments"]
    assert len(joined) == 1
    noise = client.post(SPEECH_TIMESTAMPS, files={"file": ("n.wav", wav_bytes(non_speech()["hum"]))})
    assert noise.json()["segments"] == []
    assert chunks_run(client) == before


def test_speech_timestamps_has_the_transcription_routes_rules(client: httpx.Client, service_urls: dict) -> None:
    garbage = client.post(SPEECH_TIMESTAMPS, files={"file": ("x.wav", b"not audio at all" * 100)})
    assert garbage.status_code == 415 and garbage.json()["error"]["code"] == "unsupported_audio"
    missing = client.post(SPEECH_TIMESTAMPS, files={"vad_threshold": (None, "0.5")})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_file"
    bad = client.post(SPEECH_TIMESTAMPS, files={"file": ("a.wav", (SPEECH_DIR / "fox_dog.wav").read_bytes())},
                      data={"vad_threshold": "7"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "vad_threshold"
    assert SPEECH_TIMESTAMPS in client.get("/openapi.json").json()["paths"]
    glm = service_urls["glm"]  # the app with API keys
    data = (SPEECH_DIR / "fox_dog.wav").read_bytes()
    assert httpx.post(glm + SPEECH_TIMESTAMPS, files={"file": ("a.wav", data)}).status_code == 401
    keyed = httpx.post(glm + SPEECH_TIMESTAMPS, files={"file": ("a.wav", data)},
                       headers={"Authorization": f"Bearer {GLM_API_KEY}"})
    assert keyed.status_code == 200 and len(keyed.json()["segments"]) == 1


def test_a_detector_that_failed_to_load_is_a_503_with_the_reason(service_urls: dict) -> None:
    url = service_urls["broken_vad"]
    wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 300,
               what="the ingress without a detector to answer")
    ready = httpx.get(f"{url}/readyz", timeout=30)
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "not_ready"
    assert "speech detector" in ready.json()["error"]["message"]
    assert httpx.get(f"{url}/healthz").status_code == 200  # alive, just not ready
    data = (SPEECH_DIR / "fox_dog.wav").read_bytes()
    for route in ("/v1/audio/transcriptions", SPEECH_TIMESTAMPS):
        response = httpx.post(url + route, files={"file": ("a.wav", data)}, timeout=300)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "not_ready"
        assert "Retry-After" in response.headers
    # A request that does not ask for speech detection is still served.
    unguarded = httpx.post(url + "/v1/audio/transcriptions", files={"file": ("a.wav", data)},
                           data={"vad_filter": "false"}, timeout=300)
    assert unguarded.status_code == 200, unguarded.text
