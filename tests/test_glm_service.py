"""GLM-ASR through the whole service: the family is picked from the checkpoint's config.

The checkpoint is tiny and random (tests/tiny_glm_asr.py), so transcripts are gibberish;
what is tested is the path: from_pretrained, the processor, batched generate, the API.
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import GLM_API_KEY
from tests.speech import SPEECH_DIR


@pytest.fixture(scope="module")
def glm(service_urls: dict) -> httpx.Client:
    headers = {"Authorization": f"Bearer {GLM_API_KEY}"}
    with httpx.Client(base_url=service_urls["glm"], timeout=300, headers=headers) as http:
        yield http


def post(glm: httpx.Client, name: str, **fields) -> httpx.Response:
    data = (SPEECH_DIR / name).read_bytes()
    return glm.post("/v1/audio/transcriptions", files={"file": (name, data)}, data=fields)


def test_family_is_detected_from_the_checkpoint(glm: httpx.Client) -> None:
    info = glm.get("/readyz").json()["model"]
    assert info["family"] == "glm_asr" and info["can_translate"] is False
    assert set(info["languages"]) >= {"zh", "en"}


def test_transcribes_through_the_same_path(glm: httpx.Client) -> None:
    response = post(glm, "fox_dog.wav", response_format="verbose_json", language="en")
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["text"], str) and body["language"] == "en"
    assert 2.0 < body["duration"] < 10.0


def test_long_audio_is_chunked_and_merged(glm: httpx.Client) -> None:
    response = post(glm, "long_45s.wav", response_format="verbose_json")
    assert response.status_code == 200, response.text
    assert response.json()["duration"] > 40


def test_segments_end_at_the_detectors_pauses(glm: httpx.Client) -> None:
    """GLM-ASR cannot time words; its segments still start and end where the speech
    detector found speech, not at chunk edges up to 30 s apart."""
    body = post(glm, "long_45s.wav", response_format="verbose_json").json()
    data = (SPEECH_DIR / "long_45s.wav").read_bytes()
    speech = glm.post("/v1/audio/speech-timestamps",
                      files={"file": ("long.wav", data)}).json()["segments"]
    starts = {round(s["start"], 2) for s in speech}
    ends = {round(s["end"], 2) for s in speech}
    segments = [s for s in body["segments"] if s["text"].strip()]
    assert len(segments) > 1, body["segments"]
    assert all(round(s["start"], 2) in starts and round(s["end"], 2) in ends for s in segments)


def test_translation_is_refused_clearly(glm: httpx.Client) -> None:
    data = (SPEECH_DIR / "fox_dog.wav").read_bytes()
    response = glm.post("/v1/audio/translations", files={"file": ("a.wav", data)})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_parameter"


def test_unsupported_language_is_refused(glm: httpx.Client) -> None:
    response = post(glm, "fox_dog.wav", language="de")
    assert response.status_code == 400 and response.json()["error"]["param"] == "language"
