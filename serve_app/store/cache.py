"""The result cache, in process or in Redis, behind one interface.

Without a Redis URL the cache is the process's own bounded LRU (`serve_app.cache`), one per
ingress replica. With one (from the environment: it may hold a password), every ingress
replica on every node reads and fills the same entries, so the hit rate no longer falls as
the ingress scales out. Both keep the contract: the same key (with the pipeline version),
the same TTL, nothing stored for `no-store` or sampling requests, no entry larger than the
cache. Redis bounds the total with its own `maxmemory`; entries carry their TTL, so a
`volatile-*` eviction policy removes only cache entries (docs/operations.md, "Redis").

A Redis outage is a cache miss, never an error: a failed call is logged (once per back-off
window), counted, and Redis is left alone for `store.outage_backoff_s`, so requests do not
each wait out a timeout while it is down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Protocol

from serve_app.cache import TranscriptionCache
from serve_app.config import AppArgs
from serve_app.store import codec
from serve_app.transcript import Transcription

logger = logging.getLogger("ray.serve")

CACHE_PREFIX = "cache:"


class ResultCache(Protocol):
    kind: str

    async def get(self, key: str) -> Transcription | None: ...

    def put(self, key: str, value: Transcription) -> None:
        """Store without making the caller wait (a shared store writes in the background)."""

    def describe(self) -> dict: ...


class LocalResultCache:
    """The embedded default: this replica's own LRU, bounded by bytes."""

    kind = "embedded"

    def __init__(self, max_bytes: int, ttl_s: float) -> None:
        self.lru = TranscriptionCache(max_bytes, ttl_s)

    async def get(self, key: str) -> Transcription | None:
        return self.lru.get(key)

    def put(self, key: str, value: Transcription) -> None:
        self.lru.put(key, value)

    def describe(self) -> dict:
        return {"kind": self.kind, "entries": len(self.lru), "bytes": self.lru.bytes_used}


class RedisResultCache:
    """Entries in Redis under `<prefix>cache:<key>`, each with the cache's TTL."""

    kind = "redis"

    def __init__(self, url: str, args: AppArgs, metrics) -> None:
        import redis.asyncio as redis

        store = args.store
        self._redis = redis.Redis.from_url(
            url, socket_timeout=store.timeout_s, socket_connect_timeout=store.timeout_s,
            health_check_interval=30)
        self._prefix = store.key_prefix + CACHE_PREFIX
        self._timeout_s = store.timeout_s
        self._backoff_s = store.outage_backoff_s
        self._ttl_ms = int(args.cache.ttl_s * 1000)
        self._max_bytes = args.cache.max_bytes
        self._metrics = metrics
        self._down_until = 0.0
        self._writes: set[asyncio.Task] = set()
        self.last_error: str | None = None

    async def get(self, key: str) -> Transcription | None:
        data = await self._call("get", self._redis.get(self._prefix + key))
        return codec.decode(data) if data else None

    def put(self, key: str, value: Transcription) -> None:
        data = codec.encode(value)
        if len(data) > self._max_bytes:
            return  # larger than the whole cache, as in process
        task = asyncio.ensure_future(self._call(
            "set", self._redis.set(self._prefix + key, data, px=self._ttl_ms)))
        self._writes.add(task)  # held until done: a dropped task may be collected
        task.add_done_callback(self._writes.discard)

    async def _call(self, op: str, call):
        if time.monotonic() < self._down_until:
            call.close()  # never awaited: Redis is known to be down
            self._metrics.store_operations.inc(tags={"op": op, "result": "skipped"})
            return None
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(call, self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure of the store is a miss
            self._metrics.store_operations.inc(tags={"op": op, "result": "error"})
            if time.monotonic() >= self._down_until:
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("result cache: Redis %s failed (%s); serving without it for "
                               "%.0f s", op, self.last_error, self._backoff_s)
            self._down_until = time.monotonic() + self._backoff_s
            return None
        self._metrics.store_latency.observe(time.monotonic() - started, tags={"op": op})
        self._metrics.store_operations.inc(tags={"op": op, "result": "ok"})
        return result

    def describe(self) -> dict:
        return {"kind": self.kind, "available": time.monotonic() >= self._down_until,
                "last_error": self.last_error}


def open_result_cache(args: AppArgs, metrics) -> ResultCache:
    """Redis when the environment names one (`store.redis_url_env`), else in process."""
    url = os.environ.get(args.store.redis_url_env, "").strip()
    if url:
        return RedisResultCache(url, args, metrics)
    return LocalResultCache(args.cache.max_bytes, args.cache.ttl_s)
