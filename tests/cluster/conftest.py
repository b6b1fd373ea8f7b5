"""Helpers for tests that need a Ray cluster of their own: node loss, replica kills, drains,
`serve deploy` against `ray start --head`.

They run as a separate pytest invocation after the main suite (`make test`), so nothing
here shares the main suite's session-wide Ray instance. Every cluster started here lives
under one private temp dir and listens only on free ports, so it never joins, answers for
or stops another cluster on the same machine (other engineers' test runs, a developer's
service on port 8000). Teardown stops only what these tests started, by PID.
"""

from __future__ import annotations

import atexit
import io
import itertools
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from serve_app.proxy_hooks import private_haproxy_env, proxy_env
from tests.conftest import READY_DEADLINE_S, free_port, wait_until
from tests.speech import SAMPLE_RATE, SpeechFixture, load_fixture, load_speech_fixtures

# One private, short temp dir for every cluster of this run (Unix socket paths under it must
# stay short). RAY_TMPDIR also moves Ray's `ray_current_cluster` file here, so starting or
# stopping these clusters never rewrites the machine-wide default that others may rely on.
PRIVATE_TMP = Path(tempfile.mkdtemp(prefix="rayc-"))
os.environ["RAY_TMPDIR"] = str(PRIVATE_TMP)
# Ray 2.60 turns on token authentication for a new local cluster and writes a token to the
# user's home; these clusters are private to the test and bound to 127.0.0.1, so opt out.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# HAProxy in front and the proxy guard (serve_app/proxy_hooks.py), as `make serve` and the
# main suite run them: each node's processes inherit this environment. HAProxy's files and
# ports are this run's own.
os.environ.update(proxy_env())
os.environ.update(private_haproxy_env(PRIVATE_TMP / "h", free_port))
atexit.register(shutil.rmtree, PRIVATE_TMP, ignore_errors=True)

# Above the time budget of every request sent here (LimitSettings.timeout_for: 480 s for the
# longest, ~3 min of audio), after which the service must have answered: a request still
# open then has hung, and shows up as a client exception.
CLIENT_TIMEOUT_S = 510


def deploy(config: dict) -> None:
    """tests.conftest.deploy, plus the config's `proxy_location`, which that helper leaves to
    Serve's default (a proxy on every node): with two nodes on one machine, a second proxy
    would try to bind the same HTTP port."""
    from ray.serve._private.api import serve_start
    from ray.serve.config import HTTPOptions
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(
        http_options=HTTPOptions(**config["http_options"]).model_dump(),
        proxy_location=schema.proxy_location,
    )
    client.deploy_apps(schema, _blocking=False)


def wav_bytes(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


_unique = itertools.count(1)


def unique_wav(fixture: SpeechFixture, repeat: int = 1) -> bytes:
    """The fixture (repeated) with trailing silence of a length never used before in this
    run: a new content hash, so the request always reaches the model, never the cache."""
    silence = np.zeros(160 * next(_unique), np.float32)  # 10 ms steps
    return wav_bytes(np.concatenate([*([fixture.audio] * repeat), silence]))


def short_fixtures() -> list[SpeechFixture]:
    return load_speech_fixtures()


def long_fixture() -> SpeechFixture:
    return load_fixture("long_45s.wav")


def post_audio(base_url: str, data: bytes) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/audio/transcriptions",
        files={"file": ("clip.wav", data)},
        timeout=CLIENT_TIMEOUT_S,
    )


def readyz(base_url: str) -> httpx.Response:
    return httpx.get(f"{base_url}/readyz", timeout=30)


def model_info(base_url: str) -> dict | None:
    """/readyz's `model` block, or None while not ready."""
    response = readyz(base_url)
    return response.json()["model"] if response.status_code == 200 else None


def wait_model(base_url: str, predicate=lambda info: True, what: str = "a ready model") -> dict:
    """Poll /readyz until it is 200 and its model block satisfies `predicate`."""
    return wait_until(
        lambda: (info := model_info(base_url)) is not None and predicate(info) and info,
        READY_DEADLINE_S,
        interval_s=1.0,
        what=what,
    )


def describe(response: httpx.Response | BaseException) -> str:
    if isinstance(response, BaseException):
        return repr(response)
    return f"{response.status_code} {response.text[:300]}"


def outcome(response: httpx.Response | BaseException) -> str:
    """'ok' for a 200 with text, 'error' for a 5xx with the project's JSON error body,
    anything else described for the assertion message."""
    if isinstance(response, BaseException):
        return f"client exception {response!r}"
    if response.status_code == 200:
        return "ok" if "text" in response.json() else f"200 without text: {response.text[:200]}"
    if response.status_code >= 500:
        try:
            error = response.json()["error"]
        except Exception:  # noqa: BLE001 - not JSON, or not our shape
            return f"{response.status_code} without a JSON error body: {response.text[:200]!r}"
        if isinstance(error, dict) and {"message", "code"} <= set(error):
            return "error"
        return f"{response.status_code} with a malformed error body: {response.text[:200]!r}"
    return f"unexpected {response.status_code}: {response.text[:200]!r}"


@dataclass
class Load:
    """Requests sent back to back by a few threads until stopped; every outcome is kept."""

    base_url: str
    threads: int = 2
    repeat: int = 1  # each request is a short fixture this many times over
    results: list = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> "Load":
        fixtures = short_fixtures()

        def worker(offset: int) -> None:
            for i in itertools.count(offset, self.threads):
                if self._stop.is_set():
                    return
                try:
                    data = unique_wav(fixtures[i % len(fixtures)], self.repeat)
                    result = post_audio(self.base_url, data)
                except Exception as exc:  # noqa: BLE001 - kept and reported as a failure
                    result = exc
                with self._lock:
                    self.results.append(result)

        for offset in range(self.threads):
            thread = threading.Thread(target=worker, args=(offset,), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def stop(self, deadline_s: float = CLIENT_TIMEOUT_S + 30) -> list:
        """Stop sending; wait for the requests in flight (none may hang) and return all."""
        self._stop.set()
        for thread in self._workers:
            thread.join(deadline_s)
        hung = [t for t in self._workers if t.is_alive()]
        assert not hung, f"{len(hung)} load threads still waiting on a request"
        return list(self.results)
