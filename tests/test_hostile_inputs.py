"""Hostile and odd inputs against the real running service: exact status and error code.

Every case names the status and `code` that DESIGN.md's error table promises ("Contracts"),
or 200 for audio that is odd but valid. Valid audio is the committed fox_dog.wav fixture
re-encoded in the test (resampled with soxr, mixed up to more channels, other bit depths and
containers), so the content stays real speech and the transcript must still say "fox".
After the matrix, the service must still be ready on the same model replica: no input may
crash or restart it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import httpx
import numpy as np
import pytest
import soundfile as sf
import soxr

from tests.speech import SAMPLE_RATE, SPEECH_DIR, load_fixture

ROUTE = "/v1/audio/transcriptions"
FIXTURE = "fox_dog.wav"  # 3.3 s: "The quick brown fox jumps over the lazy dog."
KEYWORD = "fox"
BOUNDARY = "hostile-test-boundary"


# ---- audio built from the speech fixture, each encoding made once per session ----------


@lru_cache(maxsize=1)
def speech() -> np.ndarray:
    return load_fixture(FIXTURE).audio


def encode(samples: np.ndarray, rate: int = SAMPLE_RATE, fmt: str = "WAV",
           subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


@lru_cache(maxsize=None)
def fixture_bytes() -> bytes:
    return (SPEECH_DIR / FIXTURE).read_bytes()


@lru_cache(maxsize=None)
def at_rate(rate: int) -> bytes:
    return encode(soxr.resample(speech(), SAMPLE_RATE, rate, quality="HQ"), rate, subtype="PCM_16")


@lru_cache(maxsize=None)
def with_channels(channels: int) -> bytes:
    # Each channel carries the speech at its own gain (one phase-inverted), as a real
    # multi-microphone recording would: the mono mix-down is still intelligible speech.
    gains = np.linspace(1.0, 0.4, channels)
    if channels > 2:
        gains[-1] = -gains[-1]
    return encode(speech()[:, None] * gains[None, :].astype(np.float32), subtype="PCM_16")


@lru_cache(maxsize=None)
def with_subtype(subtype: str) -> bytes:
    return encode(speech(), subtype=subtype)


@lru_cache(maxsize=None)
def in_container(fmt: str, subtype: str) -> bytes:
    return encode(speech(), fmt=fmt, subtype=subtype)


@lru_cache(maxsize=None)
def clipped() -> bytes:
    # 20x gain: most of the speech sits at full scale, a square-ish wave with the words' rhythm.
    return encode(np.clip(speech() * 20.0, -1.0, 1.0), subtype="PCM_16")


@lru_cache(maxsize=None)
def header_claims_more() -> bytes:
    # The RIFF and data sizes still describe the whole clip; the last quarter is missing.
    data = fixture_bytes()
    return data[: len(data) * 3 // 4]


def floats(value: float, n: int = 1600) -> bytes:
    return encode(np.full(n, value, np.float32), subtype="FLOAT")


def multipart(*parts: tuple[bytes, bytes | None, bytes], boundary: str = BOUNDARY) -> bytes:
    """A multipart body built by hand: (name, filename or None, content) per part."""
    body = b""
    for name, filename, content in parts:
        disposition = b'form-data; name="' + name + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        body += b"--" + boundary.encode() + b"\r\nContent-Disposition: " + disposition + b"\r\n"
        if filename is not None:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + content + b"\r\n"
    return body + b"--" + boundary.encode() + b"--\r\n"


# ---- requests --------------------------------------------------------------------------

Send = Callable[[httpx.Client], httpx.Response]


def upload(data: Callable[[], bytes] | bytes, name: str = "clip.wav", **fields: str) -> Send:
    def send(client: httpx.Client) -> httpx.Response:
        content = data() if callable(data) else data
        return client.post(ROUTE, files={"file": (name, content)}, data=fields)

    return send


def hand_built(*parts: tuple[bytes, bytes | None, bytes | None], boundary: str = BOUNDARY,
               content_type: str | None = None, cut: int | None = None) -> Send:
    """POST a hand-built multipart body; a part's content None means the speech fixture."""

    def send(client: httpx.Client) -> httpx.Response:
        filled = [(n, f, fixture_bytes() if c is None else c) for n, f, c in parts]
        body = multipart(*filled, boundary=boundary)[:cut]
        ctype = content_type or f"multipart/form-data; boundary={BOUNDARY}"
        return client.post(ROUTE, content=body, headers={"Content-Type": ctype})

    return send


FILE_PART = (b"file", b"clip.wav", None)


def raw_body(data: bytes, content_type: str) -> Send:
    return lambda client: client.post(ROUTE, content=data, headers={"Content-Type": content_type})


@dataclass(frozen=True)
class Case:
    id: str
    send: Send
    status: int
    code: str | tuple[str, ...] | None = None  # the error code (or the table's choices); None: 200
    param: str | None = None  # the error's `param`, where the contract names one
    says_fox: bool = False  # 200 whose transcript must contain KEYWORD
    empty_text: bool = False  # 200 whose transcript must be empty


def ok(id: str, send: Send) -> Case:
    return Case(id, send, 200, says_fox=True)


def error(id: str, send: Send, status: int, code: str | tuple[str, ...],
          param: str | None = None) -> Case:
    return Case(id, send, status, code, param)


TOO_MANY_FIELDS = [(f"x{i}".encode(), None, b"1") for i in range(40)]  # the form allows 32
SPEECH_RATES = (8000, 44100, 48000, 96000)
# 8/16/24/32-bit integer and 32/64-bit float samples (8-bit WAV is unsigned by definition).
SUBTYPES = ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")
MISSING, INVALID_AUDIO, INVALID_PARAM = "missing_file", "invalid_audio", "invalid_parameter"

CASES: list[Case] = [
    # -- no file, empty file, file as text, broken multipart: 400 --
    error("empty-file-part", upload(b""), 400, MISSING, "file"),
    error("empty-raw-body", raw_body(b"", "audio/wav"), 400, MISSING, "file"),
    # Zero bytes is both "no file" and not a valid multipart body: the table allows either.
    error("empty-multipart-body", hand_built(cut=0), 400, (MISSING, "invalid_multipart")),
    error("missing-file-field",
          lambda c: c.post(ROUTE, data={"model": "whisper-1"}, files={"audio": ("a.wav", b"RIFF")}),
          400, MISSING, "file"),
    error("file-as-text-field",
          hand_built((b"file", None, b"not-a-file"), (b"model", None, b"whisper-1")),
          400, MISSING, "file"),
    error("multipart-missing-boundary", hand_built(FILE_PART, content_type="multipart/form-data"),
          400, "invalid_multipart"),
    error("multipart-wrong-boundary", hand_built(FILE_PART, boundary="other-boundary"),
          400, "invalid_multipart"),
    error("multipart-truncated", hand_built(FILE_PART, cut=5000), 400, "invalid_multipart"),
    error("multipart-two-files", hand_built(FILE_PART, FILE_PART), 400, "invalid_multipart"),
    error("multipart-too-many-fields", hand_built(FILE_PART, *TOO_MANY_FIELDS),
          400, "invalid_multipart"),
    # -- bytes no decoder understands: 415 --
    error("random-bytes", upload(np.random.default_rng(7).bytes(8192), "noise.bin"),
          415, "unsupported_audio", "file"),
    error("text-named-wav", upload(b"This is a text file, not a recording.\n" * 20, "notes.wav"),
          415, "unsupported_audio", "file"),
    error("raw-body-random-bytes", raw_body(np.random.default_rng(8).bytes(4096), "audio/wav"),
          415, "unsupported_audio", "file"),
    # -- a known container that is corrupt, empty, or holds NaN/Inf: 400 --
    error("truncated-wav-header", upload(lambda: fixture_bytes()[:20]), 400, INVALID_AUDIO, "file"),
    error("riff-then-garbage", upload(b"RIFF" + np.random.default_rng(9).bytes(2000)),
          400, INVALID_AUDIO, "file"),
    error("wav-zero-samples", upload(lambda: encode(np.zeros(0, np.float32), subtype="PCM_16")),
          400, INVALID_AUDIO, "file"),
    error("wav-nan-samples", upload(lambda: floats(np.nan)), 400, INVALID_AUDIO, "file"),
    error("wav-inf-samples", upload(lambda: floats(np.inf)), 400, INVALID_AUDIO, "file"),
    error("wav-minus-inf-samples", upload(lambda: floats(-np.inf)), 400, INVALID_AUDIO, "file"),
    # -- odd but valid audio: 200, and the speech survives --
    Case("wav-one-sample", upload(lambda: encode(np.array([0.25], np.float32), subtype="PCM_16")),
         200, empty_text=True),
    *(ok(f"rate-{rate}", upload(lambda rate=rate: at_rate(rate))) for rate in SPEECH_RATES),
    ok("stereo", upload(lambda: with_channels(2))),
    ok("six-channels", upload(lambda: with_channels(6))),
    *(ok(f"wav-{sub.lower()}", upload(lambda sub=sub: with_subtype(sub))) for sub in SUBTYPES),
    ok("flac", upload(lambda: in_container("FLAC", "PCM_16"), "clip.flac")),
    ok("ogg-vorbis", upload(lambda: in_container("OGG", "VORBIS"), "clip.ogg")),
    ok("mp3", upload(lambda: in_container("MP3", "MPEG_LAYER_III"), "clip.mp3")),
    Case("clipped-full-scale", upload(clipped), 200),
    ok("header-claims-more-data", upload(header_claims_more)),
    ok("filename-path-traversal", upload(fixture_bytes, "../../etc/passwd.wav")),
    ok("filename-non-utf8", hand_built((b"file", b"\xff\xfe\xc3(clip\x80.wav", None))),
    ok("unknown-field-ignored", upload(fixture_bytes, foo="bar")),
    # -- bad parameters: 400 invalid_parameter, naming the parameter --
    error("response-format-docx", upload(fixture_bytes, response_format="docx"),
          400, INVALID_PARAM, "response_format"),
    error("language-unknown", upload(fixture_bytes, language="xx"), 400, INVALID_PARAM, "language"),
    error("temperature-too-high", upload(fixture_bytes, temperature="3"),
          400, INVALID_PARAM, "temperature"),
    error("temperature-negative", upload(fixture_bytes, temperature="-0.5"),
          400, INVALID_PARAM, "temperature"),
    error("temperature-not-a-number", upload(fixture_bytes, temperature="hot"),
          400, INVALID_PARAM, "temperature"),
    error("word-timestamps-without-verbose-json",
          upload(fixture_bytes, **{"timestamp_granularities[]": "word"}),
          400, INVALID_PARAM, "timestamp_granularities"),
    error("prompt-too-long", upload(fixture_bytes, prompt="word " * 1000),
          400, INVALID_PARAM, "prompt"),
    error("language-twice",
          hand_built(FILE_PART, (b"language", None, b"en"), (b"language", None, b"de")),
          400, INVALID_PARAM, "language"),
    error("model-not-served", upload(fixture_bytes, model="gpt-4o"),
          404, "model_not_found", "model"),
    # -- wrong method, wrong content type --
    error("method-get", lambda c: c.get(ROUTE), 405, "method_not_allowed"),
    error("method-put", lambda c: c.put(ROUTE, content=b"x"), 405, "method_not_allowed"),
    error("content-type-json",
          lambda c: c.post(ROUTE, json={"file": "clip.wav", "model": "whisper-1"}),
          415, "unsupported_media_type"),
    error("content-type-urlencoded",
          lambda c: c.post(ROUTE, data={"file": "clip.wav", "model": "whisper-1"}),
          415, "unsupported_media_type"),
    error("content-type-missing", lambda c: c.post(ROUTE, content=b"RIFF"),
          415, "unsupported_media_type"),
]


@pytest.fixture(scope="module")
def replica_before(client: httpx.Client) -> str:
    """The model replica serving before the matrix; it must be the same one after it."""
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    return ready.json()["model"]["replica"]


def assert_error_body(response: httpx.Response, case: Case) -> None:
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    codes = case.code if isinstance(case.code, tuple) else (case.code,)
    assert error["code"] in codes, body
    assert isinstance(error["message"], str) and error["message"], body
    assert error["type"] == "invalid_request_error", body
    if case.param is not None:
        assert error["param"] == case.param, body


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, client: httpx.Client, replica_before: str) -> None:
    response = case.send(client)
    assert response.status_code == case.status, f"{case.id}: {response.text[:500]}"
    if case.code is not None:
        assert_error_body(response, case)
        return
    text = response.json()["text"]
    assert isinstance(text, str)
    if case.says_fox:
        assert KEYWORD in text.lower(), f"{case.id}: {text!r}"
    if case.empty_text:
        assert text.strip() == "", f"{case.id}: {text!r}"


def test_matrix_has_every_required_case() -> None:
    assert len(CASES) >= 32 and len({c.id for c in CASES}) == len(CASES)


def test_service_survived_the_matrix(client: httpx.Client, replica_before: str) -> None:
    """Defined last, so it runs after the matrix: still ready, same replica, still accurate."""
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["model"]["replica"] == replica_before
    # A fresh (uncached) clip still transcribes.
    padded = np.concatenate([speech(), np.zeros(SAMPLE_RATE // 7, np.float32)])
    response = upload(encode(padded, subtype="PCM_16"))(client)
    assert response.status_code == 200, response.text
    assert KEYWORD in response.json()["text"].lower()
