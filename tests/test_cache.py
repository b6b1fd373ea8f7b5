"""The transcription cache: keys, byte bound, LRU order, expiry."""

from __future__ import annotations

from serve_app.backends.base import DecodeOptions
from serve_app.cache import TranscriptionCache, cache_key, content_hash, is_cacheable
from serve_app.speech import SpeechOptions
from serve_app.transcript import Segment, Transcription


def transcript(text: str) -> Transcription:
    return Transcription(text, "en", 1.0, (Segment(0, 0.0, 1.0, text),))


def test_key_separates_every_output_changing_parameter() -> None:
    digest = content_hash(b"audio")
    variants = [
        DecodeOptions(),
        DecodeOptions(language="en"),
        DecodeOptions(task="translate"),
        DecodeOptions(prompt="names"),
        DecodeOptions(temperature=0.5),
    ]
    speech_variants = [
        SpeechOptions(enabled=False),
        SpeechOptions(threshold=0.6),
        SpeechOptions(min_silence_ms=500),
        SpeechOptions(speech_pad_ms=400),
        SpeechOptions(min_speech_ms=250),
    ]
    keys = {cache_key(digest, "m", o, SpeechOptions()) for o in variants}
    keys |= {cache_key(digest, "m", DecodeOptions(), s) for s in speech_variants}
    keys.add(cache_key(digest, "other-model", DecodeOptions(), SpeechOptions()))
    keys.add(cache_key(content_hash(b"audio2"), "m", DecodeOptions(), SpeechOptions()))
    assert len(keys) == len(variants) + len(speech_variants) + 2


def test_key_changes_with_the_pipeline_version(monkeypatch) -> None:
    import serve_app.cache

    key = cache_key(content_hash(b"audio"), "m", DecodeOptions(), SpeechOptions())
    monkeypatch.setattr(serve_app.cache, "PIPELINE_VERSION", serve_app.cache.PIPELINE_VERSION + 1)
    assert cache_key(content_hash(b"audio"), "m", DecodeOptions(), SpeechOptions()) != key


def test_sampling_is_not_cacheable() -> None:
    assert is_cacheable(DecodeOptions()) and not is_cacheable(DecodeOptions(temperature=0.2))


def test_bounded_by_bytes_with_lru_eviction() -> None:
    size = transcript("x" * 100).approx_bytes()
    cache = TranscriptionCache(max_bytes=3 * size, ttl_s=60)
    for name in "abc":
        cache.put(name, transcript("x" * 100))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", transcript("x" * 100))
    assert cache.get("b") is None and cache.get("a") is not None
    assert cache.bytes_used <= 3 * size and cache.evictions == 1


def test_entries_expire() -> None:
    now = [0.0]
    cache = TranscriptionCache(max_bytes=10**6, ttl_s=10, clock=lambda: now[0])
    cache.put("k", transcript("hello"))
    now[0] = 9.0
    assert cache.get("k") is not None
    now[0] = 20.0
    assert cache.get("k") is None and cache.bytes_used == 0


def test_too_large_entry_is_not_stored() -> None:
    cache = TranscriptionCache(max_bytes=100, ttl_s=60)
    cache.put("k", transcript("x" * 1000))
    assert len(cache) == 0
