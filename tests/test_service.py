"""The whole service on a real local Ray instance with the real demo model, over HTTP."""

from __future__ import annotations

import io
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf

from serve_app.backends.base import BackendInfo
from serve_app.backends.int8 import pick_kernel
from tests.conftest import wait_until
from tests.speech import LONG_FIXTURE, SPEECH_DIR, load_fixture, load_speech_fixtures, word_error_rate

MAX_WER = 0.20


def wav_bytes(audio: np.ndarray, rate: int = 16_000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def transcribe(client: httpx.Client, data: bytes, name: str = "clip.wav", **fields) -> httpx.Response:
    return client.post("/v1/audio/transcriptions", files={"file": (name, data)}, data=fields)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    model = ready.json()["model"]
    assert model["family"] == "whisper"
    # configs/local.yaml runs INT8, with the kernel this CPU is fast at.
    assert (model["quantization"], model["int8_kernel"]) == ("int8", pick_kernel())
    # and trimmed encoder windows: 5 s to 30 s, 3 s of silence past the chunk at least.
    assert (model["windows_s"], model["window_margin_s"]) == ([5, 10, 15, 20, 25, 30], 3.0)


def test_models_lists_the_served_model_and_alias(client: httpx.Client) -> None:
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["whisper-base", "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"]


def test_transcribes_speech_accurately(client: httpx.Client) -> None:
    fixtures = load_speech_fixtures()
    texts = [
        transcribe(client, (SPEECH_DIR / f.name).read_bytes(), f.name, model="whisper-1").json()["text"]
        for f in fixtures
    ]
    assert word_error_rate([f.text for f in fixtures], texts) < MAX_WER


def test_concurrent_requests_are_batched_and_all_succeed(client: httpx.Client) -> None:
    fixtures = load_speech_fixtures()
    before = client.get("/readyz").json()["model"]
    with ThreadPoolExecutor(max_workers=len(fixtures)) as pool:
        # Distinct trailing silence gives each clip a new content hash: no cache hits.
        payloads = [
            wav_bytes(np.concatenate([f.audio, np.zeros(160 * (i + 1), np.float32)]))
            for i, f in enumerate(fixtures)
        ]
        responses = list(pool.map(lambda p: transcribe(client, p), payloads))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert all(r.headers["X-Cache"] == "miss" for r in responses)
    texts = [r.json()["text"] for r in responses]
    assert word_error_rate([f.text for f in fixtures], texts) < MAX_WER
    after = client.get("/readyz").json()["model"]
    chunks = after["chunks_run"] - before["chunks_run"]
    batches = after["batches_run"] - before["batches_run"]
    assert chunks == len(fixtures)
    assert batches < chunks  # @serve.batch put chunks of different requests together
    # Each chunk is padded to its encoder window, and the replica counts that padding:
    # local.yaml trims Whisper's windows, so these 3-5 s clips take 10 s each, not 30.
    info = BackendInfo(**{k: after[k] for k in ("model_id", "family", "can_translate")},
                       windows_s=tuple(after["windows_s"]),
                       window_margin_s=after["window_margin_s"])
    windows = [info.window_for(f.audio.size + 160 * (i + 1)) for i, f in enumerate(fixtures)]
    assert set(windows) == {10.0}
    padded = after["padded_s_run"] - before["padded_s_run"]
    audio = after["audio_s_run"] - before["audio_s_run"]
    assert padded == pytest.approx(sum(windows))
    assert 0 < audio <= sum(f.audio.size for f in fixtures) / 16_000 + 1.0


def test_long_recording_comes_back_whole(client: httpx.Client) -> None:
    fixture = load_fixture(LONG_FIXTURE)
    assert fixture.audio.size / 16_000 > 40
    response = transcribe(client, (SPEECH_DIR / LONG_FIXTURE).read_bytes(), "long.wav",
                          response_format="verbose_json")
    assert response.status_code == 200, response.text
    body = response.json()
    assert word_error_rate([fixture.text], [body["text"]]) < MAX_WER
    assert len(body["segments"]) >= 2  # split into chunks, merged in order
    starts = [s["start"] for s in body["segments"]]
    assert starts == sorted(starts) and body["segments"][-1]["end"] <= body["duration"] + 0.01


def test_cache_hit_returns_the_same_answer(client: httpx.Client) -> None:
    data = (SPEECH_DIR / "weather.wav").read_bytes()
    first = transcribe(client, data, language="en")
    second = transcribe(client, data, language="en")
    assert second.headers["X-Cache"] == "hit"
    assert first.json() == second.json()
    third = transcribe(client, data, language="en", response_format="text")
    assert third.headers["X-Cache"] == "hit" and third.text.strip() == first.json()["text"]


def test_raw_body_upload(client: httpx.Client) -> None:
    response = client.post(
        "/v1/audio/transcriptions?response_format=text",
        content=(SPEECH_DIR / "fox_dog.wav").read_bytes(),
        headers={"Content-Type": "audio/wav"},
    )
    assert response.status_code == 200
    assert "fox" in response.text.lower()


def test_silence_gives_empty_text(client: httpx.Client) -> None:
    response = transcribe(client, wav_bytes(np.zeros(16_000 * 5, np.float32)))
    assert response.status_code == 200 and response.json() == {"text": ""}


def test_request_id_is_echoed(client: httpx.Client) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"


def test_garbage_bytes_get_415(client: httpx.Client) -> None:
    assert_error(transcribe(client, np.random.default_rng(7).bytes(5000)), 415, "unsupported_audio")


def test_client_errors_are_json(client: httpx.Client) -> None:
    wav = (SPEECH_DIR / "fox_dog.wav").read_bytes()
    assert_error(transcribe(client, b""), 400, "missing_file")
    assert_error(client.post("/v1/audio/transcriptions", data={"model": "whisper-1"},
                             files={"other": ("x", b"y")}), 400, "missing_file")
    assert_error(client.post("/v1/audio/transcriptions", data={"file": "not-a-file"},
                             files={"x": ("x", b"y")}), 400, "missing_file")
    assert_error(transcribe(client, wav, model="gpt-4o"), 404, "model_not_found")
    assert_error(transcribe(client, wav, response_format="docx"), 400, "invalid_parameter")
    assert_error(transcribe(client, wav, temperature="3"), 400, "invalid_parameter")
    assert_error(client.get("/v1/audio/transcriptions"), 405, "method_not_allowed")
    assert_error(client.post("/v1/audio/transcriptions", content=b"{}",
                             headers={"Content-Type": "application/json"}), 415, "unsupported_media_type")
    assert_error(client.get("/no/such/route"), 404, "not_found")
    # After all that, the service still transcribes.
    assert transcribe(client, wav).status_code == 200


def test_batching_is_reconfigured_in_place(client: httpx.Client, service: str) -> None:
    """A new user_config reaches the running replica through reconfigure(), no restart."""
    from tests.conftest import GLM_ROUTE, deploy, local_config, other_apps

    before = client.get("/readyz").json()["model"]
    port = int(service.rsplit(":", 1)[1])
    model_path = before["model_id"]
    glm_path = Path(httpx.get(f"{service}{GLM_ROUTE}/readyz").json()["model"]["model_id"])

    def deploy_with(max_batch_size: int, wait_s: float) -> None:
        config = local_config(model_path, port)
        config["applications"][0]["deployments"][0]["user_config"] = {
            "max_batch_size": max_batch_size,
            "batch_wait_timeout_s": wait_s,
        }
        config["applications"] += other_apps(glm_path)  # every app, or Serve drops it
        deploy(config)

    original = before["batching"]
    deploy_with(3, 0.02)
    try:
        wait_until(
            lambda: client.get("/readyz").json()["model"]["batching"]
            == {"max_batch_size": 3, "batch_wait_timeout_s": 0.02},
            120,
            what="the new batching settings",
        )
        after = client.get("/readyz").json()["model"]
        assert after["replica"] == before["replica"]
        assert transcribe(client, (SPEECH_DIR / "oak_tree.wav").read_bytes()).status_code == 200
    finally:
        deploy_with(original["max_batch_size"], original["batch_wait_timeout_s"])
        wait_until(
            lambda: client.get("/readyz").json()["model"]["batching"] == original,
            120,
            what="the original batching settings",
        )
