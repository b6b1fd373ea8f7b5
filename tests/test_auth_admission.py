"""API keys and load shedding, on the tiny GLM-ASR app (which carries those settings)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import GLM_API_KEY, wait_until
from tests.speech import LONG_FIXTURE, SPEECH_DIR

WAV = (SPEECH_DIR / "fox_dog.wav").read_bytes()


@pytest.fixture(scope="module")
def glm_url(service_urls: dict) -> str:
    return service_urls["glm"]


def post(url: str, data: bytes, key: str | None = GLM_API_KEY, **headers) -> httpx.Response:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(
        f"{url}/v1/audio/transcriptions",
        files={"file": ("a.wav", data)},
        headers=headers,
        timeout=300,
    )


def test_api_routes_need_a_key(glm_url: str) -> None:
    for response in (
        post(glm_url, WAV, key=None),
        post(glm_url, WAV, key="wrong"),
        httpx.get(f"{glm_url}/v1/models"),
    ):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert post(glm_url, WAV).status_code == 200


def test_health_routes_stay_open(glm_url: str) -> None:
    assert httpx.get(f"{glm_url}/healthz").status_code == 200
    assert httpx.get(f"{glm_url}/readyz").status_code == 200


def test_overload_is_refused_fast_and_recovers(glm_url: str) -> None:
    long_audio = (SPEECH_DIR / LONG_FIXTURE).read_bytes()
    no_store = {"Cache-Control": "no-store"}

    def burst() -> list[httpx.Response]:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(lambda _: post(glm_url, long_audio, **no_store), range(8)))

    seen: list[httpx.Response] = []

    def overloaded() -> bool:
        responses = burst()
        seen.extend(responses)
        return any(r.status_code == 503 for r in responses)

    wait_until(overloaded, 300, interval_s=0.0, what="a 503 under a burst of long uploads")
    assert {r.status_code for r in seen} <= {200, 503}  # shed, never failed
    refused = next(r for r in seen if r.status_code == 503)
    assert refused.json()["error"]["code"] == "overloaded"
    assert int(refused.headers["Retry-After"]) >= 1
    wait_until(
        lambda: post(glm_url, long_audio, **no_store).status_code == 200,
        120,
        what="recovery once the burst is over",
    )


def test_a_file_larger_than_the_whole_bound_is_still_served_when_idle(glm_url: str) -> None:
    audio = np.zeros(16_000 * 70, np.int16)  # 70 s > the app's 60 s bound
    import io

    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio, 16_000, format="WAV")
    assert post(glm_url, buffer.getvalue()).status_code == 200


def test_keys_never_reach_the_logs(glm_url: str, ray_instance: dict) -> None:
    import ray

    wrong_key = "wrong-key-that-must-not-be-logged"
    assert post(glm_url, WAV, key=wrong_key).status_code == 401
    marker = httpx.get(f"{glm_url}/healthz", headers={"X-Request-ID": "log-marker-7f3a"})
    assert marker.status_code == 200
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"

    def marker_logged() -> bool:  # the replica's log has caught up with our requests
        return any("log-marker-7f3a" in p.read_text(errors="ignore") for p in logs.rglob("*.log"))

    wait_until(marker_logged, 60, what="the ingress log to show the marker request")
    for path in logs.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="ignore")
            assert GLM_API_KEY not in text and wrong_key not in text, path.name
