"""A bounded, expiring LRU cache of transcriptions, keyed by content hash.

The key is sha256 of the raw uploaded bytes (computed before decoding, so a hit skips the
decoder and the model), the model id, every parameter that changes the output (decoding
and speech detection), and the pipeline's version. The
cache is per ingress replica and bounded by bytes, not entries: one hour-long transcript
weighs as much as hundreds of short ones.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import asdict
from typing import Callable

from serve_app.backends.base import DecodeOptions
from serve_app.speech import SpeechOptions
from serve_app.transcript import Transcription

# Changes whenever the same request would come out differently, so entries stored by an
# older pipeline are never served. 2: the speech detector replaced the loudness guard.
PIPELINE_VERSION = 2


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_key(
    audio_sha256: str, model_id: str, options: DecodeOptions, speech: SpeechOptions
) -> str:
    params = json.dumps(
        {"decode": asdict(options), "speech": asdict(speech), "pipeline": PIPELINE_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(f"{audio_sha256}|{model_id}|{params}".encode()).hexdigest()


def is_cacheable(options: DecodeOptions) -> bool:
    """Sampling gives a different answer each time, so it neither reads nor fills the cache."""
    return options.temperature == 0.0


class TranscriptionCache:
    def __init__(
        self,
        max_bytes: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_bytes = max_bytes
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, int, Transcription]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Transcription | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            stored_at, size, value = entry
            if self._clock() - stored_at > self._ttl_s:
                self._remove(key)
                return None
            self._entries.move_to_end(key)
            return value

    def put(self, key: str, value: Transcription) -> None:
        size = value.approx_bytes()
        if size > self._max_bytes:
            return  # would evict everything and still not fit
        with self._lock:
            if key in self._entries:
                self._remove(key)
            self._entries[key] = (self._clock(), size, value)
            self._bytes += size
            while self._bytes > self._max_bytes:
                oldest = next(iter(self._entries))
                self._remove(oldest)
                self.evictions += 1

    def _remove(self, key: str) -> None:
        _, size, _ = self._entries.pop(key)
        self._bytes -= size
