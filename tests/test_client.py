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
                status, headers, payload = entry
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(payload))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()


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
