"""Durable jobs end to end: the real service and model, the embedded SQLite store.

Submit, poll, fetch in every format, cancel, list, idempotency, ownership by API key, and a
signed callback to a receiver on loopback (allowed by the test config). The store and the
callbacks' own rules are covered in test_job_store.py and test_job_callbacks.py; the
takeover after a lost ingress replica in test_jobs_durable.py.
"""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import httpx
import numpy as np
import pytest
import soundfile as sf
import srt
import webvtt

from tests.conftest import (
    CALLBACK_SECRET,
    GLM_API_KEY,
    GLM_MAX_QUEUED_JOB_BYTES,
    GLM_OTHER_API_KEY,
    READY_DEADLINE_S,
    free_port,
    wait_until,
)
from tests.speech import SAMPLE_RATE, load_fixture, normalize, word_error_rate

JOBS = "/v1/audio/transcriptions/jobs"
_unique = iter(range(1, 1_000_000))


def unique_wav(name: str, repeat: int = 1) -> bytes:
    """A fixture (repeated) with a silence tail no other test uses: never a cache hit."""
    fixture = load_fixture(name)
    audio = np.concatenate([np.tile(fixture.audio, repeat),
                            np.zeros(160 * next(_unique) + 8000, np.float32)])
    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def submit(client: httpx.Client, data: bytes, headers: dict | None = None,
           **fields) -> httpx.Response:
    return client.post(JOBS, files={"file": ("clip.wav", data)}, data=fields,
                       headers=headers or {})


def wait_for_end(client: httpx.Client, job_id: str, headers: dict | None = None) -> dict:
    seen: dict = {}

    def ended() -> bool:
        seen.update(client.get(f"{JOBS}/{job_id}", headers=headers or {}).json())
        return seen["status"] in ("completed", "failed", "cancelled")

    wait_until(ended, READY_DEADLINE_S, interval_s=0.2, what=f"job {job_id} to end")
    return seen


def test_a_job_is_accepted_at_once_then_completes_and_renders_in_every_format(
        client: httpx.Client) -> None:
    fixture = load_fixture("fox_dog.wav")
    response = submit(client, unique_wav("fox_dog.wav"), language="en")
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["object"] == "transcription.job" and job["id"].startswith("job_")
    assert job["status"] in ("queued", "running") and job["created_at"] > 0
    assert response.headers["location"] == f"{JOBS}/{job['id']}"

    ended = wait_for_end(client, job["id"])
    assert ended["status"] == "completed", ended
    assert ended["progress"]["audio_seconds_done"] == ended["progress"]["audio_seconds_total"]
    assert ended["progress"]["fraction"] == 1.0 and ended["error"] is None
    assert ended["expires_at"] > ended["finished_at"]

    result = f"{JOBS}/{job['id']}/result"
    text = client.get(result).json()["text"]  # the submitted format: json
    assert word_error_rate([fixture.text], [text]) < 0.2, text
    assert normalize(client.get(result, params={"response_format": "text"}).text) == normalize(text)
    verbose = client.get(result, params=[("response_format", "verbose_json"),
                                         ("timestamp_granularities[]", "word"),
                                         ("timestamp_granularities[]", "segment")]).json()
    assert verbose["text"] == text and verbose["segments"] and verbose["words"]
    assert verbose["duration"] == pytest.approx(ended["progress"]["audio_seconds_total"], abs=0.01)
    cues = list(srt.parse(client.get(result, params={"response_format": "srt"}).text))
    assert cues and normalize(" ".join(c.content for c in cues)) == normalize(text)
    vtt = webvtt.from_buffer(io.StringIO(client.get(result, params={"response_format": "vtt"}).text))
    assert normalize(" ".join(c.text for c in vtt)) == normalize(text)
    # The same audio through the synchronous endpoint says the same.
    sync = client.post("/v1/audio/transcriptions",
                       files={"file": ("clip.wav", unique_wav("fox_dog.wav"))},
                       data={"language": "en"}).json()["text"]
    assert normalize(sync) == normalize(text)


def test_progress_grows_while_a_long_job_runs(client: httpx.Client) -> None:
    job = submit(client, unique_wav("long_45s.wav", repeat=3)).json()
    done: list[float] = []
    while True:
        status = client.get(f"{JOBS}/{job['id']}").json()
        if status["status"] == "running":
            done.append(status["progress"]["audio_seconds_done"])
        if status["status"] in ("completed", "failed"):
            break
        time.sleep(0.1)
    assert status["status"] == "completed", status
    assert status["progress"]["audio_seconds_total"] > 130
    assert done == sorted(done), done  # never backwards
    assert any(0 < d < status["progress"]["audio_seconds_total"] for d in done), done


def test_an_idempotency_key_returns_the_first_job(client: httpx.Client) -> None:
    data = unique_wav("train.wav")
    headers = {"Idempotency-Key": f"upload-{time.time_ns()}"}
    first = submit(client, data, headers)
    again = submit(client, data, headers)
    assert first.status_code == 202 and again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    other = submit(client, data, {"Idempotency-Key": f"other-{time.time_ns()}"})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    for job_id in (first.json()["id"], other.json()["id"]):
        wait_for_end(client, job_id)


def test_bad_submits_are_4xx_before_any_job_exists(client: httpx.Client) -> None:
    before = client.get(JOBS, params={"limit": 100}).json()["data"]
    cases = [
        (submit(client, b"definitely not audio " * 50), 415, "unsupported_audio"),
        (submit(client, unique_wav("train.wav"), stream="true"), 400, "invalid_parameter"),
        (submit(client, unique_wav("train.wav"), language="xx"), 400, "invalid_parameter"),
        (submit(client, unique_wav("train.wav"), callback_url="http://10.0.0.7/hook"), 400,
         "invalid_parameter"),
        (submit(client, unique_wav("train.wav"), callback_url="ftp://example.com/x"), 400,
         "invalid_parameter"),
        (submit(client, unique_wav("train.wav"), model="no-such-model"), 404, "model_not_found"),
        (submit(client, unique_wav("train.wav"), {"Idempotency-Key": "k" * 300}), 400,
         "invalid_parameter"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code, response.text
    after = client.get(JOBS, params={"limit": 100}).json()["data"]
    assert [j["id"] for j in after] == [j["id"] for j in before]
    unknown = client.get(f"{JOBS}/job_doesnotexist")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "job_not_found"
    for params in ({"status": "sleeping"}, {"limit": 0}, {"limit": 1000}):
        response = client.get(JOBS, params=params)
        assert response.status_code == 400, (params, response.text)


def test_a_running_job_is_cancelled_and_an_ended_one_deleted(client: httpx.Client) -> None:
    job = submit(client, unique_wav("long_45s.wav", repeat=4)).json()
    early = client.get(f"{JOBS}/{job['id']}/result")
    assert early.status_code == 409, early.text
    assert early.json()["error"]["code"] == "result_not_ready"
    cancelled = client.delete(f"{JOBS}/{job['id']}")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json() == {"id": job["id"], "object": "transcription.job.deleted",
                                "deleted": True, "status": "cancelled"}
    status = client.get(f"{JOBS}/{job['id']}").json()
    assert status["status"] == "cancelled" and status["finished_at"]
    assert client.get(f"{JOBS}/{job['id']}/result").status_code == 409
    # It stays cancelled: no replica runs it to completion afterwards.
    time.sleep(1.0)
    assert client.get(f"{JOBS}/{job['id']}").json()["status"] == "cancelled"

    short = submit(client, unique_wav("oak_tree.wav")).json()
    assert wait_for_end(client, short["id"])["status"] == "completed"
    assert client.delete(f"{JOBS}/{short['id']}").status_code == 200
    for path in (f"{JOBS}/{short['id']}", f"{JOBS}/{short['id']}/result"):
        gone = client.get(path)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "job_not_found"


def test_jobs_are_listed_newest_first_in_pages_and_by_status(client: httpx.Client) -> None:
    ids = [submit(client, unique_wav("weather.wav")).json()["id"] for _ in range(3)]
    for job_id in ids:
        wait_for_end(client, job_id)
    first = client.get(JOBS, params={"limit": 2}).json()
    assert first["object"] == "list" and first["has_more"] is True
    assert [j["id"] for j in first["data"]] == ids[::-1][:2]
    second = client.get(JOBS, params={"limit": 2, "after": first["last_id"]}).json()
    assert second["data"][0]["id"] == ids[0]
    completed = client.get(JOBS, params={"status": "completed", "limit": 100}).json()["data"]
    assert {j["status"] for j in completed} == {"completed"}
    assert set(ids) <= {j["id"] for j in completed}


def test_a_key_sees_and_deletes_only_its_own_jobs(service_urls: dict) -> None:
    glm = service_urls["glm"]
    mine = {"Authorization": f"Bearer {GLM_API_KEY}"}
    theirs = {"Authorization": f"Bearer {GLM_OTHER_API_KEY}"}
    with httpx.Client(base_url=glm, timeout=120) as http:
        assert http.post(JOBS, files={"file": ("a.wav", unique_wav("train.wav"))}).status_code == 401
        job = submit(http, unique_wav("train.wav"), mine).json()
        for method, path in (("GET", f"{JOBS}/{job['id']}"), ("GET", f"{JOBS}/{job['id']}/result"),
                             ("DELETE", f"{JOBS}/{job['id']}")):
            response = http.request(method, path, headers=theirs)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]["code"] == "job_not_found"
        assert job["id"] not in {j["id"] for j in http.get(JOBS, headers=theirs).json()["data"]}
        assert job["id"] in {j["id"] for j in http.get(JOBS, headers=mine).json()["data"]}
        # The same Idempotency-Key from another key is another job.
        key = {"Idempotency-Key": f"shared-{time.time_ns()}"}
        a = submit(http, unique_wav("groceries.wav"), {**mine, **key}).json()
        b = submit(http, unique_wav("groceries.wav"), {**theirs, **key}).json()
        assert a["id"] != b["id"]
        for headers, job_id in ((mine, job["id"]), (mine, a["id"]), (theirs, b["id"])):
            assert wait_for_end(http, job_id, headers)["status"] == "completed"


def test_a_full_job_queue_answers_503_with_retry_after(service_urls: dict) -> None:
    """The audio held for queued and running jobs is bounded (the GLM app: 1 MiB)."""
    mine = {"Authorization": f"Bearer {GLM_API_KEY}"}
    large = unique_wav("long_45s.wav")
    assert len(large) > GLM_MAX_QUEUED_JOB_BYTES
    with httpx.Client(base_url=service_urls["glm"], timeout=120) as http:
        refused = submit(http, large, mine)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "overloaded"
        assert int(refused.headers["retry-after"]) >= 1
        # Smaller jobs still fit.
        small = submit(http, unique_wav("fox_dog.wav"), mine)
        assert small.status_code == 202, small.text
        assert wait_for_end(http, small.json()["id"], mine)["status"] == "completed"


class Receiver:
    """An HTTP endpoint on loopback that records each POST and answers 503 first."""

    def __init__(self, failures: int = 1) -> None:
        self.requests: list[tuple[dict, bytes]] = []
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append((dict(self.headers.items()), body))
                status = 503 if len(receiver.requests) <= receiver.failures else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/asr"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    endpoint = Receiver(failures=1)
    try:
        yield endpoint
    finally:
        endpoint.server.shutdown()


def test_a_signed_callback_arrives_when_the_job_ends_and_is_retried(
        client: httpx.Client, receiver: Receiver) -> None:
    from standardwebhooks.webhooks import Webhook

    job = submit(client, unique_wav("report.wav"), callback_url=receiver.url).json()
    assert job["callback"] == {"url": receiver.url, "state": None}
    wait_until(lambda: len(receiver.requests) >= 2, READY_DEADLINE_S, interval_s=0.2,
               what="the callback, once refused, to be sent again")
    (first_headers, _), (headers, body) = receiver.requests[:2]
    # The same event id on each attempt, so a receiver can drop duplicates.
    assert first_headers["webhook-id"] == headers["webhook-id"]
    event = Webhook(CALLBACK_SECRET).verify(body, headers)
    assert event["type"] == "transcription.job.completed"
    assert event["data"]["id"] == job["id"] and event["data"]["status"] == "completed"
    wait_until(lambda: client.get(f"{JOBS}/{job['id']}").json()["callback"]["state"]
               == "delivered", 30, what="the callback to be marked delivered")
    assert len(receiver.requests) == 2
    assert json.loads(body)["data"]["progress"]["fraction"] == 1.0
