"""The OpenAI-compatible API as OpenAI's own SDK sees it, and the other endpoints."""

from __future__ import annotations

import io
import json

import httpx
import pytest
import srt
import webvtt
from openai import OpenAI

from tests.speech import LONG_FIXTURE, SPEECH_DIR, load_fixture, word_error_rate

MAX_WER = 0.20


@pytest.fixture(scope="module")
def sdk(service: str) -> OpenAI:
    return OpenAI(base_url=f"{service}/v1", api_key="unused", max_retries=0, timeout=300)


def open_fixture(name: str):
    return open(SPEECH_DIR / name, "rb")


@pytest.mark.parametrize("response_format", ["json", "text", "srt", "vtt", "verbose_json"])
def test_openai_sdk_every_format(sdk: OpenAI, response_format: str) -> None:
    expected = load_fixture("groceries.wav").text
    with open_fixture("groceries.wav") as f:
        result = sdk.audio.transcriptions.create(
            model="whisper-1", file=f, response_format=response_format, language="en"
        )
    if response_format == "json":
        text = result.text
    elif response_format == "verbose_json":
        text = result.text
        assert result.language == "en" and 3.0 < result.duration < 6.0
        assert result.segments and result.segments[0].start >= 0.0
    elif response_format == "srt":
        text = " ".join(c.content.replace("\n", " ") for c in srt.parse(result))
    elif response_format == "vtt":
        text = " ".join(c.text.replace("\n", " ") for c in webvtt.from_buffer(io.StringIO(result)))
    else:
        text = result
    assert word_error_rate([expected], [text]) < MAX_WER


def test_openai_sdk_segment_timestamps(sdk: OpenAI) -> None:
    with open_fixture("oak_tree.wav") as f:
        result = sdk.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["segment"],
        )
    assert all(s.end > s.start for s in result.segments)
    assert result.segments[-1].end <= result.duration + 0.01


def test_openai_sdk_streaming(sdk: OpenAI) -> None:
    fixture = load_fixture(LONG_FIXTURE)
    with open_fixture(LONG_FIXTURE) as f:
        stream = sdk.audio.transcriptions.create(model="whisper-1", file=f, stream=True)
        events = list(stream)
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert len(deltas) >= 2  # the 45 s file arrives in more than one piece
    assert len(done) == 1 and events[-1].type == "transcript.text.done"
    assert "".join(deltas) == done[0].text
    assert word_error_rate([fixture.text], [done[0].text]) < MAX_WER


def test_openai_sdk_translation(sdk: OpenAI) -> None:
    with open_fixture("fox_dog.wav") as f:
        result = sdk.audio.translations.create(model="whisper-1", file=f)
    assert "fox" in result.text.lower()


def test_openai_sdk_models(sdk: OpenAI) -> None:
    assert {m.id for m in sdk.models.list()} == {
        "whisper-base", "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"}


def test_batch_endpoint_one_result_per_file_in_order(client: httpx.Client) -> None:
    files = [
        ("file", ("fox.wav", (SPEECH_DIR / "fox_dog.wav").read_bytes())),
        ("file", ("broken.wav", b"RIFF\x00\x00garbage")),
        ("file", ("train.wav", (SPEECH_DIR / "train.wav").read_bytes())),
        ("file", ("empty.wav", b"")),
    ]
    response = client.post("/v1/audio/transcriptions/batch", files=files, data={"language": "en"})
    assert response.status_code == 200, response.text
    results = response.json()["data"]
    assert [r["filename"] for r in results] == ["fox.wav", "broken.wav", "train.wav", "empty.wav"]
    assert [r["status"] for r in results] == [200, 400, 200, 400]
    assert "fox" in results[0]["response"]["text"].lower()
    assert "train" in results[2]["response"]["text"].lower()
    assert results[1]["error"]["code"] == "invalid_audio"
    assert results[3]["error"]["code"] == "missing_file"


def test_batch_endpoint_limits_files(client: httpx.Client) -> None:
    files = [("file", (f"{i}.wav", b"x")) for i in range(17)]
    response = client.post("/v1/audio/transcriptions/batch", files=files)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_multipart"


def test_cache_control_no_store_bypasses_the_cache(client: httpx.Client) -> None:
    data = (SPEECH_DIR / "report.wav").read_bytes()
    files = {"file": ("r.wav", data)}
    first = client.post("/v1/audio/transcriptions", files=files)
    assert client.post("/v1/audio/transcriptions", files=files).headers["X-Cache"] == "hit"
    fresh = client.post(
        "/v1/audio/transcriptions", files=files, headers={"Cache-Control": "no-store"}
    )
    assert fresh.headers["X-Cache"] == "miss"
    assert fresh.json() == first.json()  # a cached answer equals a fresh one


def test_sampling_requests_bypass_the_cache(client: httpx.Client) -> None:
    files = {"file": ("w.wav", (SPEECH_DIR / "weather.wav").read_bytes())}
    for _ in range(2):
        response = client.post("/v1/audio/transcriptions", files=files, data={"temperature": "0.4"})
        assert response.status_code == 200 and response.headers["X-Cache"] == "miss"


def test_openapi_describes_parameters_and_errors(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/audio/transcriptions"]["post"]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"file", "model", "language", "prompt", "response_format", "temperature", "stream"} <= set(form)
    assert {"400", "401", "404", "413", "415", "500", "503"} <= set(operation["responses"])


def test_web_page_is_served(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "v1/audio/transcriptions" in page.text and "MediaRecorder" in page.text


def test_stream_events_are_server_sent_events(client: httpx.Client) -> None:
    files = {"file": ("fox.wav", (SPEECH_DIR / "fox_dog.wav").read_bytes())}
    response = client.post("/v1/audio/transcriptions", files=files, data={"stream": "true"})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "transcript.text.done" and "fox" in events[-1]["text"].lower()
