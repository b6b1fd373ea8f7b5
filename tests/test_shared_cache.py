"""One result cache for every ingress replica: the tiny GLM-ASR app runs two ingress
replicas whose cache lives in a real Redis (the session's, tests/redis_server.py), and a
Redis that dies mid-run turns hits into misses, never into errors."""

from __future__ import annotations

import io
import uuid

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import READY_DEADLINE_S, app_settled, wait_until
from tests.redis_server import skip_or_fail_without_redis


@pytest.fixture(scope="module")
def shared(service_urls: dict) -> str:
    if "shared" not in service_urls:
        skip_or_fail_without_redis()
    # Both replicas of one version: the outage test asks each what it saw.
    wait_until(lambda: app_settled("shared"), READY_DEADLINE_S,
               what="the shared app to be settled")
    return service_urls["shared"]


def _unique_wav() -> bytes:
    """Audio no earlier test sent (a cache key of its own)."""
    rng = np.random.default_rng(uuid.uuid4().int % 2**32)
    buffer = io.BytesIO()
    sf.write(buffer, (0.1 * rng.standard_normal(16_000)).astype(np.float32), 16_000,
             format="WAV")
    return buffer.getvalue()


def _post(url: str, wav: bytes) -> httpx.Response:
    # A new connection each time, so HAProxy spreads the requests over both replicas.
    with httpx.Client(timeout=120) as fresh:
        return fresh.post(f"{url}/v1/audio/transcriptions",
                          files={"file": ("a.wav", wav, "audio/wav")},
                          data={"model": "whisper-1", "vad_filter": "false"})


def _redis_keys() -> list[bytes]:
    import redis

    from tests.conftest import session_redis

    return redis.Redis.from_url(session_redis().url).keys("asr:cache:*")


def test_replicas_share_their_hits(shared: str) -> None:
    readiness = httpx.get(f"{shared}/readyz", timeout=10).json()
    assert readiness["cache"]["kind"] == "redis"
    wav = _unique_wav()
    keys_before = len(_redis_keys())
    first = _post(shared, wav)
    assert first.status_code == 200 and first.headers["x-cache"] == "miss"
    wait_until(lambda: len(_redis_keys()) > keys_before, 10, interval_s=0.05,
               what="the entry to reach Redis")
    repeats = [_post(shared, wav) for _ in range(8)]
    # Every repeat hits, whichever of the two replicas it lands on: one replica's own
    # cache could not do that for the other.
    assert [r.headers["x-cache"] for r in repeats] == ["hit"] * 8
    assert {r.json()["text"] for r in repeats} == {first.json()["text"]}


def test_a_redis_outage_is_misses_not_errors(shared: str) -> None:
    from tests.conftest import session_redis

    redis = session_redis()
    wav = _unique_wav()
    assert _post(shared, wav).status_code == 200
    redis.kill()
    try:
        during = [_post(shared, wav) for _ in range(4)]
        assert [r.status_code for r in during] == [200] * 4
        assert {r.headers["x-cache"] for r in during} == {"miss"}
        caches = [httpx.get(f"{shared}/readyz", timeout=10).json()["cache"] for _ in range(6)]
        assert any(c["available"] is False for c in caches)
    finally:
        redis.start()
    # Back after the back-off (5 s): the entry stored before the outage is served again
    # (Redis kept it in its append-only file).
    wait_until(lambda: _post(shared, wav).headers["x-cache"] == "hit", 60,
               what="hits through Redis again")
