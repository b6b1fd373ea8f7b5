"""asr-client end to end: against the real service for transcripts, output layout and
skipping; against a tiny scripted HTTP stub for retry behaviour, which the real service
cannot be made to produce on demand."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import srt

from serve_app import client as asr_client
from tests.conftest import REPO_ROOT, free_port
from tests.speech import SPEECH_DIR

GARBAGE = b"definitely not audio " * 50


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """in/fox_dog.wav, in/sub/train.wav and in/broken.wav (bytes no decoder understands)."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(SPEECH_DIR / "fox_dog.wav", folder / "fox_dog.wav")
    shutil.copy(SPEECH_DIR / "train.wav", folder / "sub" / "train.wav")
    (folder / "broken.wav").write_bytes(GARBAGE)
    (folder / "notes.md").write_text("not an audio extension: ignored")
    return folder


def count_requests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the URL of every request the client sends."""
    sent: list[str] = []
    original = httpx.AsyncClient.send

    async def send(self, request, **kwargs):
        sent.append(str(request.url))
        return await original(self, request, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "send", send)
    return sent


def test_folder_is_transcribed_then_skipped_and_failures_reported(
    service: str, inputs: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = asr_client.main(["--url", service, "--concurrency", "2", str(inputs)])
    out, err = capsys.readouterr()
    assert code == 1  # one file failed
    assert "fox" in (inputs / "fox_dog.txt").read_text().lower()
    assert "train" in (inputs / "sub" / "train.txt").read_text().lower()
    assert not (inputs / "broken.txt").exists()
    assert not (inputs / "notes.txt").exists()
    failure = next(line for line in err.splitlines() if "broken.wav" in line)
    assert "FAILED" in failure and ("unsupported_audio" in failure or "invalid_audio" in failure)
    assert "2 done, 0 skipped, 1 failed" in out
    assert "real-time factor n/a" not in out  # durations came back in X-Audio-Duration
    assert not list(inputs.rglob("*.part"))  # no temp files left behind

    sent = count_requests(monkeypatch)
    code = asr_client.main(["--url", service, "--no-progress", str(inputs)])
    out, _ = capsys.readouterr()
    assert code == 1  # only the broken file, tried again, fails
    assert "0 done, 2 skipped, 1 failed" in out
    assert len(sent) == 1 and sent[0].endswith("/v1/audio/transcriptions")


def test_async_mode_against_the_service_writes_results_and_leaves_no_jobs(
    service: str, inputs: Path, capsys: pytest.CaptureFixture
) -> None:
    """--async end to end: real jobs on the real service, SRT fetched from each result."""
    code = asr_client.main(["--url", service, "--async", "--poll-interval", "0.2",
                            "--format", "srt", "--no-progress", str(inputs)])
    out, err = capsys.readouterr()
    assert code == 1, (out, err)  # broken.wav is refused at submit
    cues = list(srt.parse((inputs / "fox_dog.srt").read_text()))
    assert cues and "fox" in " ".join(c.content for c in cues).lower()
    assert "train" in (inputs / "sub" / "train.srt").read_text().lower()
    assert "2 done, 0 skipped, 1 failed" in out
    failure = next(line for line in err.splitlines() if "broken.wav" in line)
    assert "unsupported_audio" in failure or "invalid_audio" in failure
    # Each job was deleted once its result was written.
    listed = httpx.get(f"{service}/v1/audio/transcriptions/jobs", params={"limit": 100}).json()
    names = {j["filename"] for j in listed["data"]}
    assert not {"fox_dog.wav", "train.wav"} & names, names


def test_srt_and_json_go_to_output_dir_mirroring_folders(
    service: str, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (inputs / "broken.wav").unlink()
    out_dir = tmp_path / "out"
    assert asr_client.main(["--url", service, "--format", "srt", "--output-dir", str(out_dir),
                            str(inputs)]) == 0
    cues = list(srt.parse((out_dir / "sub" / "train.srt").read_text()))
    assert cues and "train" in " ".join(c.content for c in cues).lower()
    assert list(srt.parse((out_dir / "fox_dog.srt").read_text()))
    assert not list(inputs.rglob("*.srt"))  # nothing written beside the inputs

    # A file named directly lands at the top of --output-dir; json is verbose_json.
    assert asr_client.main(["--url", service + "/v1", "--format", "json", "--output-dir",
                            str(out_dir), str(inputs / "sub" / "train.wav")]) == 0
    body = json.loads((out_dir / "train.json").read_text())
    assert "train" in body["text"].lower() and body["duration"] > 1 and body["segments"]
    assert "words" not in body
    assert "1 done, 0 skipped, 0 failed" in capsys.readouterr().out

    # --words: each word with its times, beside the segments.
    assert asr_client.main(["--url", service, "--format", "json", "--words", "--overwrite",
                            "--output-dir", str(out_dir), str(inputs / "sub" / "train.wav")]) == 0
    body = json.loads((out_dir / "train.json").read_text())
    assert body["segments"] and body["words"]
    assert all(0 <= w["start"] <= w["end"] <= body["duration"] for w in body["words"])


def test_client_imports_no_server_stack() -> None:
    """Users install the CLI on laptops: importing it must not pull Ray, torch or the server."""
    heavy = ("ray", "torch", "transformers", "numpy", "fastapi", "serve_app.ingress")
    probe = f"import sys, serve_app.client; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# ---- retries, against a scripted stub ----------------------------------------------------


def serve_in_background(
        handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """A scripted HTTP server on a free loopback port, in a daemon thread; and its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def reply(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str],
          payload: bytes) -> None:
    handler.send_response(status)
    for name, value in {**headers, "Content-Length": str(len(payload))}.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(payload)


class Stub:
    """An HTTP server that answers POSTs from a script of (status, headers, body)."""

    def __init__(self, script: list[tuple[int, dict[str, str], bytes]]) -> None:
        self.script = list(script)
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                stub.requests.append({"headers": dict(self.headers), "body": body})
                # The last entry answers every request after the script runs out.
                entry = stub.script.pop(0) if len(stub.script) > 1 else stub.script[0]
                reply(self, *entry)

            def log_message(self, *args) -> None:
                pass

        self.server, self.url = serve_in_background(Handler)


@pytest.fixture
def stub() -> Iterator[Callable[[list], Stub]]:
    started: list[Stub] = []

    def make(script):
        started.append(Stub(script))
        return started[-1]

    yield make
    for s in started:
        s.server.shutdown()
        s.server.server_close()


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.wav"
    path.write_bytes(b"RIFF stand-in: the stub never decodes it")
    return path


OVERLOADED = (503, {"Retry-After": "0"}, b'{"error": {"code": "overloaded"}}')
OK_TEXT = (200, {"Content-Type": "text/plain", "X-Audio-Duration": "90.0"}, b"hello world\n")


def test_503_is_retried_after_retry_after_then_succeeds(
    stub, clip: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASR_API_KEY", "secret")
    server = stub([OVERLOADED, OVERLOADED, OK_TEXT])
    assert asr_client.main(["--url", server.url, "--retries", "3", str(clip)]) == 0
    assert len(server.requests) == 3
    assert clip.with_suffix(".txt").read_bytes() == b"hello world\n"
    first = server.requests[0]
    assert first["headers"]["Authorization"] == "Bearer secret"
    assert b'name="response_format"\r\n\r\ntext' in first["body"]
    out, err = capsys.readouterr()
    assert err.count("HTTP 503") == 2
    assert "1 done" in out and "audio 0.025 h" in out  # 90 s from X-Audio-Duration


def test_502_backs_off_and_client_errors_are_not_retried(
    stub, clip: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(asr_client, "BACKOFF_BASE_S", 0.01)
    server = stub([(502, {}, b"bad gateway"), OK_TEXT])
    assert asr_client.main(["--url", server.url, str(clip)]) == 0
    assert len(server.requests) == 2

    bad_request = (400, {"Content-Type": "application/json"},
                   b'{"error": {"code": "invalid_parameter", "message": "bad language"}}')
    server = stub([bad_request])
    assert asr_client.main(["--url", server.url, "--overwrite", "--language", "xx", str(clip)]) == 1
    assert len(server.requests) == 1
    assert "HTTP 400 invalid_parameter: bad language" in capsys.readouterr().err


def test_connection_errors_are_retried_then_reported(
    clip: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(asr_client, "BACKOFF_BASE_S", 0.01)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert asr_client.main(["--url", url, "--retries", "2", str(clip)]) == 1
    _, err = capsys.readouterr()
    assert err.count("ConnectError") == 3  # two retries announced, then the failure
    assert not clip.with_suffix(".txt").exists()


# ---- --async: client behaviour against a stub of the jobs API ----------------------------
# These test only what the client does with the jobs API's answers, scripted below after the
# contract of POST/GET/DELETE /v1/audio/transcriptions/jobs. The end-to-end test of --async
# against the real service goes with the server's jobs API.

JOB_RESULTS = {  # a fixed body per response_format
    "text": b"hello jobs\n",
    "srt": b"1\n00:00:00,000 --> 00:00:01,500\nhello jobs\n",
    "vtt": b"WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nhello jobs\n",
    "verbose_json": b'{"text": "hello jobs", "duration": 90.0, "segments": []}',
}
NOT_AUDIO = {"message": "The file is not audio in a supported format.",
             "type": "invalid_request_error", "param": "file", "code": "unsupported_audio"}


class JobsStub:
    """The jobs API, scripted: every job answers queued when submitted, running halfway at
    its first poll, then `final` (completed or failed). `submit_script` answers the first
    submissions before any is accepted; the first `poll_errors` status polls answer 500."""

    def __init__(self, final: str = "completed", submit_script: list | None = None,
                 poll_errors: int = 0) -> None:
        self.final, self.submit_script, self.poll_errors = final, list(submit_script or []), \
            poll_errors
        self.submits: list[dict] = []  # headers and body of every POST
        self.polls: dict[str, int] = {}  # job id -> status polls so far
        self.keys: dict[str, str] = {}  # Idempotency-Key -> job id
        self.result_queries: list[dict] = []
        self.deleted: list[str] = []
        self.created = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with stub.lock:
                    self.answer(*stub.submit(self.path, dict(self.headers), body))

            def do_GET(self) -> None:  # noqa: N802
                with stub.lock:
                    self.answer(*stub.get(self.path))

            def do_DELETE(self) -> None:  # noqa: N802
                with stub.lock:
                    self.answer(*stub.delete(self.path))

            def answer(self, status: int, headers: dict[str, str], payload: bytes) -> None:
                reply(self, status, headers, payload)

            def log_message(self, *args) -> None:
                pass

        self.server, self.url = serve_in_background(Handler)

    # -- the API --

    def submit(self, path: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        assert path == "/v1/audio/transcriptions/jobs"
        self.submits.append({"headers": headers, "body": body})
        if self.submit_script:
            return self.submit_script.pop(0)
        key = headers.get("Idempotency-Key")
        if key in self.keys:
            return self.job(self.keys[key], 200)
        self.created += 1
        job_id = f"job{self.created}"
        self.polls[job_id] = -1  # submitted: queued
        if key:
            self.keys[key] = job_id
        return self.job(job_id, 202)

    def get(self, path: str) -> tuple[int, dict, bytes]:
        parts = urlsplit(path)
        rest = parts.path.removeprefix("/v1/audio/transcriptions/jobs/")
        job_id, _, tail = rest.partition("/")
        if job_id not in self.polls:
            return 404, {}, error_body("job_not_found", "no such job")
        if tail == "result":
            self.result_queries.append(parse_qs(parts.query))
            if self.status(job_id) != "completed":
                return 409, {}, error_body("result_not_ready", "not yet")
            fmt = parse_qs(parts.query)["response_format"][0]
            return 200, {}, JOB_RESULTS[fmt]
        if self.poll_errors:
            self.poll_errors -= 1
            return 500, {}, error_body("internal_error", "store hiccup")
        self.polls[job_id] += 1
        return self.job(job_id, 200)

    def delete(self, path: str) -> tuple[int, dict, bytes]:
        job_id = path.rsplit("/", 1)[1]
        self.deleted.append(job_id)
        self.polls.pop(job_id, None)
        self.keys = {k: v for k, v in self.keys.items() if v != job_id}
        return 200, {}, json.dumps({"id": job_id, "deleted": True}).encode()

    # -- job states --

    def status(self, job_id: str) -> str:
        return ["queued", "running"][self.polls[job_id] + 1] if self.polls[job_id] < 1 \
            else self.final

    def job(self, job_id: str, code: int) -> tuple[int, dict, bytes]:
        status = self.status(job_id)
        done, total = {"queued": (0.0, None), "running": (45.0, 90.0)}.get(status, (90.0, 90.0))
        body = {
            "id": job_id, "object": "transcription.job", "status": status, "created_at": 1,
            "progress": {"audio_seconds_done": done, "audio_seconds_total": total,
                         "fraction": done / total if total else 0.0},
            "error": NOT_AUDIO if status == "failed" else None,
        }
        headers = {"Content-Type": "application/json",
                   "Location": f"/v1/audio/transcriptions/jobs/{job_id}"}
        return code, headers, json.dumps(body).encode()


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                 "param": None, "code": code}}).encode()


def form_field(body: bytes, name: str) -> str | None:
    marker = f'name="{name}"\r\n\r\n'.encode()
    if marker not in body:
        return None
    return body.split(marker, 1)[1].split(b"\r\n", 1)[0].decode()


@pytest.fixture
def jobs_api() -> Iterator[Callable[..., JobsStub]]:
    started: list[JobsStub] = []

    def make(**kwargs) -> JobsStub:
        started.append(JobsStub(**kwargs))
        return started[-1]

    yield make
    for s in started:
        s.server.shutdown()
        s.server.server_close()


def run_async(api: JobsStub, *args: str) -> int:
    return asr_client.main(["--url", api.url, "--async", "--poll-interval", "0.01", *args])


def test_async_stub_job_is_followed_to_its_result_then_deleted(
    jobs_api, clip: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASR_API_KEY", "secret")
    api = jobs_api()
    assert run_async(api, "--language", "en", str(clip)) == 0
    assert clip.with_suffix(".txt").read_bytes() == JOB_RESULTS["text"]
    (submit,) = api.submits
    assert submit["headers"]["Authorization"] == "Bearer secret"
    assert submit["headers"]["Idempotency-Key"].startswith("asr-client-")
    assert form_field(submit["body"], "language") == "en"
    assert form_field(submit["body"], "response_format") is None  # chosen at fetch time
    assert api.result_queries == [{"response_format": ["text"]}]
    assert api.deleted == ["job1"]
    out, _ = capsys.readouterr()
    assert "1 done, 0 skipped, 0 failed" in out and "audio 0.025 h" in out  # 90 s

    # Same command again: the output exists, so nothing is sent.
    assert run_async(api, "--language", "en", str(clip)) == 0
    assert len(api.submits) == 1 and "0 done, 1 skipped" in capsys.readouterr().out

    # --overwrite: the same Idempotency-Key; other options make another one.
    assert run_async(api, "--overwrite", "--language", "en", str(clip)) == 0
    assert run_async(api, "--overwrite", "--language", "de", str(clip)) == 0
    keys = [s["headers"]["Idempotency-Key"] for s in api.submits]
    assert keys[1] == keys[0] and keys[2] != keys[0]


def test_async_stub_rerun_finds_kept_job_and_fetches_the_format_asked(
    jobs_api, clip: Path, tmp_path: Path
) -> None:
    api = jobs_api()
    out_dir = tmp_path / "out"
    args = ["--keep-jobs", "--format", "json", "--words", "--output-dir", str(out_dir)]
    assert run_async(api, *args, str(clip)) == 0
    assert (out_dir / "clip.json").read_bytes() == JOB_RESULTS["verbose_json"]
    assert api.deleted == []
    assert api.result_queries == [{"response_format": ["verbose_json"],
                                   "timestamp_granularities[]": ["word", "segment"]}]
    assert form_field(api.submits[0]["body"], "timestamp_granularities[]") == "word"

    # As after a crash: the kept job is found again by its key, not submitted twice.
    assert run_async(api, *args, "--overwrite", str(clip)) == 0
    assert len(api.submits) == 2 and api.created == 1
    assert len(api.result_queries) == 2


def test_async_stub_submit_503_is_retried_and_poll_errors_ridden_out(
    jobs_api, clip: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(asr_client, "BACKOFF_BASE_S", 0.01)
    api = jobs_api(submit_script=[OVERLOADED], poll_errors=2)
    assert run_async(api, "--format", "srt", str(clip)) == 0
    assert clip.with_suffix(".srt").read_bytes() == JOB_RESULTS["srt"]
    assert len(api.submits) == 2 and api.created == 1
    first, second = (s["headers"]["Idempotency-Key"] for s in api.submits)
    assert first == second
    _, err = capsys.readouterr()
    assert "HTTP 503" in err and err.count("HTTP 500 internal_error") == 2
    assert api.deleted == ["job1"]


def test_async_stub_failed_job_reports_the_servers_error(
    jobs_api, clip: Path, capsys: pytest.CaptureFixture
) -> None:
    api = jobs_api(final="failed")
    assert run_async(api, str(clip)) == 1
    _, err = capsys.readouterr()
    failure = next(line for line in err.splitlines() if "FAILED" in line)
    assert str(clip) in failure and "job1 failed: unsupported_audio" in failure
    assert NOT_AUDIO["message"] in failure
    assert not clip.with_suffix(".txt").exists() and api.result_queries == []
    assert api.deleted == ["job1"]  # so that a rerun submits afresh

    api = jobs_api(final="failed")
    assert run_async(api, "--keep-jobs", str(clip)) == 1
    assert api.deleted == []
