"""The service's Prometheus metrics move by exactly what a known workload should cause.

Ray's metrics agent exports every replica's metrics on the local instance's metrics export
port (`ray_instance["metrics_port"]`), with a `ray_` prefix and the tags `application`,
`deployment` and `replica`. Export is periodic, so the test polls: a baseline once the
values stop changing, then the known requests, then polling until every value equals the
baseline plus its expected delta and stays there for a whole export period.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Callable

import httpx
import numpy as np
import pytest
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families

from serve_app.audio import SAMPLE_RATE, decode_audio
from serve_app.chunking import speech_chunks
from serve_app.speech import SpeechDetector
from tests.speech import load_fixture

TRANSCRIPTIONS = "/v1/audio/transcriptions"
# Ray pushes each worker's metrics to the agent every ~10 s (metrics_report_interval_ms):
# a value counts as settled once it has not changed for longer than that.
SETTLE_S = 12.0
POLL_S = 2.0
BASELINE_DEADLINE_S = 60.0
DEADLINE_S = 90.0
EPSILON_S = 1e-3  # audio seconds are floats summed in the replica

Scrape = list[tuple[str, dict[str, str], float]]


# ---- scraping ---------------------------------------------------------------------


def scrape(port: int) -> Scrape:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(samples: Scrape, name: str, **labels: str) -> float:
    """Sum of `name` over every series whose labels include `labels` (all replicas)."""
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def bucket(samples: Scrape, name: str, le: float, **labels: str) -> float:
    """The cumulative count of histogram `name` in its bucket `le` (all replicas)."""
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == f"{name}_bucket"
        and float(sample_labels.get("le", "nan")) == le
        and all(sample_labels.get(k) == v for k, v in labels.items())
    )


# What the test reads, by a readable name: every value it asserts on.
QUANTITIES: dict[str, Callable[[Scrape], float]] = {
    "asr requests 200": lambda s: total(
        s, "ray_asr_requests_total", application="asr", route=TRANSCRIPTIONS, status="200"
    ),
    "asr requests 415": lambda s: total(
        s, "ray_asr_requests_total", application="asr", route=TRANSCRIPTIONS, status="415"
    ),
    "asr requests 404": lambda s: total(
        s, "ray_asr_requests_total", application="asr", route=TRANSCRIPTIONS, status="404"
    ),
    "glm requests 401": lambda s: total(
        s, "ray_asr_requests_total", application="glm", status="401"
    ),
    "asr cache hits": lambda s: total(
        s, "ray_asr_cache_lookups_total", application="asr", result="hit"
    ),
    "asr cache misses": lambda s: total(
        s, "ray_asr_cache_lookups_total", application="asr", result="miss"
    ),
    "asr cache evictions": lambda s: total(s, "ray_asr_cache_evictions_total", application="asr"),
    "asr cache bytes": lambda s: total(s, "ray_asr_cache_bytes", application="asr"),
    "asr audio seconds received": lambda s: total(
        s, "ray_asr_audio_seconds_received_total", application="asr"
    ),
    "asr audio seconds transcribed": lambda s: total(
        s, "ray_asr_audio_seconds_transcribed_total", application="asr"
    ),
    "asr decode failures unsupported_audio": lambda s: total(
        s, "ray_asr_decode_failures_total", application="asr", reason="unsupported_audio"
    ),
    "asr decode failures (all reasons)": lambda s: total(
        s, "ray_asr_decode_failures_total", application="asr"
    ),
    "asr rejections (all reasons)": lambda s: total(
        s, "ray_asr_rejected_requests_total", application="asr"
    ),
    "glm rejections auth": lambda s: total(
        s, "ray_asr_rejected_requests_total", application="glm", reason="auth"
    ),
    "asr latency count": lambda s: total(
        s, "ray_asr_request_latency_seconds_count", application="asr", route=TRANSCRIPTIONS
    ),
    "asr real-time factor count": lambda s: total(
        s, "ray_asr_real_time_factor_count", application="asr"
    ),
    "asr batch count": lambda s: total(s, "ray_asr_batch_chunks_count", application="asr"),
    # Ray exports a histogram's _sum rebuilt from bucket midpoints, not the true sum (see
    # record_histogram_aggregated_batch in ray/_private/telemetry), so chunks per batch are
    # counted from the buckets: with boundaries 1, 2, 4, ... the first two hold exactly the
    # batches of 1 and of 2 chunks.
    "asr batches of 1 chunk": lambda s: bucket(s, "ray_asr_batch_chunks", 1.0, application="asr"),
    "asr batches of <= 2 chunks": lambda s: bucket(
        s, "ray_asr_batch_chunks", 2.0, application="asr"
    ),
    "asr batch padding count": lambda s: total(
        s, "ray_asr_batch_padding_ratio_count", application="asr"
    ),
    # The fixtures' chunks are 3-5 s, so their window (10 s trimmed, 30 s full) is over
    # half padding.
    "asr batches at most half padding": lambda s: bucket(
        s, "ray_asr_batch_padding_ratio", 0.5, application="asr"
    ),
    "asr chunk batch-wait count": lambda s: total(
        s, "ray_asr_chunk_batch_wait_seconds_count", application="asr"
    ),
    "asr batch inference count": lambda s: total(
        s, "ray_asr_batch_inference_seconds_count", application="asr"
    ),
    "asr chunk failures": lambda s: total(s, "ray_asr_chunk_failures_total", application="asr"),
}


def snapshot(port: int) -> dict[str, float]:
    samples = scrape(port)
    return {name: read(samples) for name, read in QUANTITIES.items()}


def settled(port: int, deadline_s: float, done: Callable[[dict], bool] | None = None) -> dict:
    """The first snapshot that has not changed for SETTLE_S (and that `done` accepts).

    At the deadline: without `done`, a failure (no stable baseline); with it, the last
    snapshot, so that the caller's assertions say which values are wrong.
    """
    end = time.monotonic() + deadline_s
    last, since = None, time.monotonic()
    while True:
        try:
            current = snapshot(port)
        except httpx.HTTPError:
            current = None  # the agent restarting its exporter: try again
        now = time.monotonic()
        if current is None or current != last:
            last, since = current, now
        elif (done is None or done(current)) and now - since >= SETTLE_S:
            return current
        if now >= end:
            if last is None:
                raise AssertionError("the metrics endpoint never answered")
            if done is None:
                raise AssertionError(f"the metrics did not settle within {deadline_s} s")
            return last
        time.sleep(POLL_S)


# ---- expectations -----------------------------------------------------------------


@dataclass(frozen=True)
class Expectation:
    name: str
    keys: tuple[str, ...]  # the quantities it reads, shown when it fails
    holds: Callable[[dict, dict], bool]  # (before, after) -> ok


def delta(name: str, before: dict, after: dict) -> float:
    return after[name] - before[name]


def moved_by(name: str, expected: float, tolerance: float = 0.0) -> Expectation:
    return Expectation(
        f"{name} moved by {expected:g}",
        (name,),
        lambda b, a: abs(delta(name, b, a) - expected) <= tolerance,
    )


def failures(expectations: list[Expectation], before: dict, after: dict) -> list[str]:
    return [
        f"{e.name}: " + ", ".join(f"{k} {before[k]:g} -> {after[k]:g}" for k in e.keys)
        for e in expectations
        if not e.holds(before, after)
    ]


def small_batches_only(before: dict, after: dict) -> bool:
    """Every new batch held at most 2 chunks."""
    return delta("asr batches of <= 2 chunks", before, after) == delta(
        "asr batch count", before, after
    )


def chunks_in_small_batches(before: dict, after: dict) -> float:
    ones = delta("asr batches of 1 chunk", before, after)
    twos = delta("asr batches of <= 2 chunks", before, after) - ones
    return ones + 2 * twos


# ---- workload ---------------------------------------------------------------------


def wav_bytes(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def fresh_clips() -> list[bytes]:
    """Two clips no earlier request sent: trailing silence of a length unique to this run
    gives each a new content hash. The first holds two sentences 2.5 s apart (longer than
    the chunker's merge gap), so it is two chunks."""
    nonce = 1 + (time.time_ns() // 1000) % 4000  # samples, < 0.25 s
    fox, weather, train = (
        load_fixture(n).audio for n in ("fox_dog.wav", "weather.wav", "train.wav")
    )
    tail = [np.zeros(nonce, np.float32), np.zeros(nonce + 7, np.float32)]
    return [
        wav_bytes(np.concatenate([fox, silence(2.5), weather, silence(0.3), tail[0]])),
        wav_bytes(np.concatenate([train, silence(0.3), tail[1]])),
    ]


def post(http: httpx.Client, url: str, data: bytes, name: str = "clip.wav", **fields):
    return http.post(url, files={"file": (name, data)}, data=fields)


@pytest.fixture(scope="module")
def metrics_port(ray_instance: dict, service_urls: dict) -> int:
    return ray_instance["metrics_port"]


def test_metrics_move_by_exactly_what_the_requests_cause(
    metrics_port: int, service_urls: dict
) -> None:
    asr, glm = service_urls["whisper"], service_urls["glm"]
    clips = fresh_clips()
    decoded = [decode_audio(c, max_seconds=3600) for c in clips]  # what the ingress decodes
    durations = [a.size / SAMPLE_RATE for a in decoded]
    detector = SpeechDetector()
    chunks = sum(len(speech_chunks(a, detector)) for a in decoded)
    assert chunks == 3, "the fixtures no longer split as this test expects"

    before = settled(metrics_port, BASELINE_DEADLINE_S)

    with httpx.Client(timeout=300) as http:
        first = post(http, asr + TRANSCRIPTIONS, clips[0])
        second = post(http, asr + TRANSCRIPTIONS, clips[1])
        repeat = post(http, asr + TRANSCRIPTIONS, clips[0])
        garbage = post(http, asr + TRANSCRIPTIONS, b"definitely not audio\n" * 64, "notes.wav")
        unknown_model = post(http, asr + TRANSCRIPTIONS, clips[1], model="no-such-model")
        no_key = post(http, glm + TRANSCRIPTIONS, clips[1])

    for response in (first, second, repeat):
        assert response.status_code == 200, response.text
    assert [first.headers["X-Cache"], second.headers["X-Cache"], repeat.headers["X-Cache"]] == [
        "miss",
        "miss",
        "hit",
    ]
    assert float(first.headers["X-Audio-Duration"]) == pytest.approx(durations[0], abs=EPSILON_S)
    assert float(second.headers["X-Audio-Duration"]) == pytest.approx(durations[1], abs=EPSILON_S)
    assert garbage.status_code == 415 and garbage.json()["error"]["code"] == "unsupported_audio"
    assert unknown_model.status_code == 404, unknown_model.text
    assert no_key.status_code == 401, no_key.text

    expectations = [
        # Requests by route and status: the three transcriptions (one a cache hit), the
        # undecodable upload and the unknown model on asr; the missing key on glm.
        moved_by("asr requests 200", 3),
        moved_by("asr requests 415", 1),
        moved_by("asr requests 404", 1),
        moved_by("glm requests 401", 1),
        # The cache is looked up on the raw bytes before decoding, so the garbage upload
        # misses too; the unknown model is refused before any lookup.
        moved_by("asr cache hits", 1),
        moved_by("asr cache misses", 3),
        moved_by("asr cache evictions", 0),
        Expectation(
            "asr cache bytes > 0 and grew with the two new transcripts",
            ("asr cache bytes",),
            lambda b, a: a["asr cache bytes"] > max(b["asr cache bytes"], 0),
        ),
        # Received: what was decoded (the two fresh clips). Transcribed: every successful
        # transcription, the cache hit included.
        moved_by("asr audio seconds received", sum(durations), EPSILON_S),
        moved_by("asr audio seconds transcribed", sum(durations) + durations[0], EPSILON_S),
        moved_by("asr decode failures unsupported_audio", 1),
        moved_by("asr decode failures (all reasons)", 1),
        moved_by("asr rejections (all reasons)", 0),
        moved_by("glm rejections auth", 1),
        # Latency: every request on the transcription route. Real-time factor: only the
        # transcriptions that went through the model.
        moved_by("asr latency count", 5),
        moved_by("asr real-time factor count", 2),
        # Batching: every chunk of the fresh clips went through exactly one batch. They were
        # sent one request at a time, so no batch held more than the first clip's two.
        Expectation(
            f"asr batches held {chunks} chunks in all, none more than 2",
            ("asr batches of 1 chunk", "asr batches of <= 2 chunks", "asr batch count"),
            lambda b, a: small_batches_only(b, a) and chunks_in_small_batches(b, a) == chunks,
        ),
        Expectation(
            f"asr batch count moved by 1..{chunks}",
            ("asr batch count",),
            lambda b, a: 1 <= delta("asr batch count", b, a) <= chunks,
        ),
        moved_by("asr chunk batch-wait count", chunks),
        Expectation(
            "asr batch padding count moved by as much as asr batch count, none under half",
            ("asr batch padding count", "asr batch count", "asr batches at most half padding"),
            lambda b, a: delta("asr batch padding count", b, a) == delta("asr batch count", b, a)
            and delta("asr batches at most half padding", b, a) == 0,
        ),
        Expectation(
            "asr batch inference count moved by as much as asr batch count",
            ("asr batch inference count", "asr batch count"),
            lambda b, a: delta("asr batch inference count", b, a) == delta("asr batch count", b, a),
        ),
        moved_by("asr chunk failures", 0),
    ]

    after = settled(
        metrics_port, DEADLINE_S, done=lambda now: not failures(expectations, before, now)
    )
    wrong = failures(expectations, before, after)
    if wrong:  # the raw series help tell a recording bug from an export one
        shown = ("application", "route", "status", "reason", "result", "le")
        for name, labels, value in scrape(metrics_port):
            if name.startswith("ray_asr_"):
                print(name, {k: v for k, v in labels.items() if k in shown}, value)
    assert not wrong, "metrics did not move as expected:\n" + "\n".join(wrong)
