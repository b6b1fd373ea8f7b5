"""The result cache in Redis against a real redis-server: the same contract as in process,
and an outage that reads as misses, never as errors."""

from __future__ import annotations

import asyncio
import time
from typing import Iterator

import pytest

from serve_app.config import AppArgs
from serve_app.store import codec
from serve_app.store.cache import LocalResultCache, RedisResultCache, open_result_cache
from serve_app.transcript import Segment, Transcription, Word
from tests.redis_server import RedisServer


class CountingMetrics:
    """Records what the cache reports (the service passes IngressMetrics)."""

    class _Metric:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def inc(self, value: float = 1.0, tags: dict | None = None) -> None:
            self.calls.append((value, tags))

        def observe(self, value: float, tags: dict | None = None) -> None:
            self.calls.append((value, tags))

    def __init__(self) -> None:
        self.store_operations = self._Metric()
        self.store_latency = self._Metric()

    def results(self, op: str) -> list[str]:
        return [t["result"] for _, t in self.store_operations.calls if t["op"] == op]


TRANSCRIPT = Transcription(
    text="The quick brown fox.", language="en", duration=2.5,
    segments=(Segment(0, 0.0, 2.5, "The quick brown fox."),),
    words=(Word("The", 0.1, 0.3), Word("quick", 0.3, 0.6)),
)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


def _args(**cache) -> AppArgs:
    return AppArgs.model_validate({"cache": cache, "store": {"outage_backoff_s": 1.0}})


def test_transcripts_round_trip_and_foreign_bytes_are_misses() -> None:
    assert codec.decode(codec.encode(TRANSCRIPT)) == TRANSCRIPT
    without_words = Transcription("x", None, 1.0, ())
    assert codec.decode(codec.encode(without_words)) == without_words
    assert codec.decode(b"not json") is None
    assert codec.decode(b'{"v": 999, "text": "x"}') is None


def test_the_environment_picks_the_store(monkeypatch: pytest.MonkeyPatch, redis_server) -> None:
    args = AppArgs()
    monkeypatch.delenv(args.store.redis_url_env, raising=False)
    assert isinstance(open_result_cache(args, CountingMetrics()), LocalResultCache)
    monkeypatch.setenv(args.store.redis_url_env, redis_server.url)
    assert isinstance(open_result_cache(args, CountingMetrics()), RedisResultCache)


def test_entries_are_shared_and_expire(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        metrics = CountingMetrics()
        # Two caches stand for two ingress replicas: what one stores, the other reads.
        first = RedisResultCache(redis_server.url, _args(ttl_s=1.0), metrics)
        second = RedisResultCache(redis_server.url, _args(ttl_s=1.0), metrics)
        first.put("k1", TRANSCRIPT)
        await asyncio.gather(*first._writes)
        assert await second.get("k1") == TRANSCRIPT
        assert await second.get("missing") is None
        await asyncio.sleep(1.3)  # the TTL is Redis's own
        assert await second.get("k1") is None
        # An entry larger than the whole cache is not stored, as in process.
        small = RedisResultCache(redis_server.url, _args(max_bytes=10), metrics)
        small.put("big", TRANSCRIPT)
        assert not small._writes
        assert "error" not in metrics.results("get")

    asyncio.run(scenario())


def test_an_outage_is_a_miss_and_redis_is_used_again_after_it(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        metrics = CountingMetrics()
        cache = RedisResultCache(redis_server.url, _args(), metrics)
        cache.put("k2", TRANSCRIPT)
        await asyncio.gather(*cache._writes)
        redis_server.kill()
        started = time.monotonic()
        assert await cache.get("k2") is None  # a miss, not an exception
        assert await cache.get("k2") is None  # within the back-off: not even tried
        assert time.monotonic() - started < 5
        assert metrics.results("get")[-2:] == ["error", "skipped"]
        assert cache.describe()["available"] is False and cache.last_error
        cache.put("k3", TRANSCRIPT)  # dropped quietly
        await asyncio.gather(*cache._writes)
        redis_server.start()
        await asyncio.sleep(1.1)  # the back-off
        cache.put("k4", TRANSCRIPT)
        await asyncio.gather(*cache._writes)
        assert await cache.get("k4") == TRANSCRIPT

    asyncio.run(scenario())
