"""The transcription pipeline behind the HTTP routes, free of HTTP itself.

bytes → cache lookup → decode → admission → speech detection → chunks of speech →
bounded fan-out to the model deployment → results in audio order → merged transcript →
cache store. Streaming and
non-streaming share the same ordered stream of chunk results.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Iterator, Mapping

import numpy as np
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from serve_app.admission import AdmissionController, PoolSize, Reservation
from serve_app.audio import SAMPLE_RATE, decode_audio
from serve_app.backends.base import ChunkResult, DecodeOptions
from serve_app.cache import cache_key, content_hash, is_cacheable
from serve_app.chunking import Chunk, split_into_chunks
from serve_app.config import AppArgs
from serve_app.errors import APIError
from serve_app.metrics import IngressMetrics
from serve_app.priority import Priority
from serve_app.replica_loss import call_surviving_replica_loss
from serve_app.replicas import DeploymentReplicas
from serve_app.speech import SpeechAnalysis, SpeechDetector, SpeechOptions
from serve_app.speech.word_edges import snap_to_sound
from serve_app.store.cache import LocalResultCache, open_result_cache
from serve_app.subtitles import segments_at_pauses
from serve_app.transcript import Transcription, merge_chunk_results

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class Job:
    """One decoded request, ready to go through the model."""

    audio: np.ndarray
    chunks: list[Chunk]
    options: DecodeOptions
    cache_key: str | None  # None when this request must not touch the cache
    request_id: str
    reservation: Reservation  # admission capacity, released when the last chunk returns
    # The detector's stretches of speech, in samples: segment boundaries where words
    # cannot be timed.
    speech: tuple[tuple[int, int], ...] = ()
    priority: Priority = Priority.SYNC  # the model replica's order (serve_app.priority)

    @property
    def duration(self) -> float:
        return self.audio.size / SAMPLE_RATE


class Transcriber:
    def __init__(
        self,
        model: DeploymentHandle,
        args: AppArgs,
        metrics: IngressMetrics,
        detector: SpeechDetector,
        model_replicas: DeploymentReplicas,
        ingress_replicas: DeploymentReplicas,
    ) -> None:
        self._model = model
        self._args = args
        self._metrics = metrics
        self._detector = detector
        self._model_replicas = model_replicas
        self._ingress_replicas = ingress_replicas
        self.chunk_retries = 0  # chunks sent again after their replica was lost (/readyz)
        self.cache = open_result_cache(args, metrics)
        self.admission = AdmissionController(args.admission)

    # ---- cache --------------------------------------------------------------------

    def key_for(
        self, data: bytes, options: DecodeOptions, speech: SpeechOptions, no_store: bool
    ) -> str | None:
        """The cache key (sha256 of the upload: computed once per request), or None when this
        request must neither read nor fill the cache."""
        if no_store or not self._args.cache.enabled or not is_cacheable(options):
            return None
        return cache_key(content_hash(data), self._args.model.id, options, speech)

    async def cached(self, key: str | None) -> Transcription | None:
        if key is None:
            return None
        hit = await self.cache.get(key)
        self._metrics.cache_lookups.inc(tags={"result": "hit" if hit else "miss"})
        return hit

    def _store(self, key: str | None, transcription: Transcription) -> None:
        if key is None:
            return
        if not isinstance(self.cache, LocalResultCache):
            self.cache.put(key, transcription)  # in the background: never delays the answer
            return
        lru = self.cache.lru
        evictions_before = lru.evictions
        lru.put(key, transcription)
        if lru.evictions > evictions_before:
            self._metrics.cache_evictions.inc(lru.evictions - evictions_before)
        self._metrics.cache_bytes.set(lru.bytes_used)

    # ---- decode -------------------------------------------------------------------

    @property
    def detector_ready(self) -> bool:
        return self._detector.ready

    def check_detector(self, speech: SpeechOptions) -> None:
        """503 before any work when the request needs a detector that failed to load."""
        if speech.enabled and not self._detector.ready:
            raise APIError(
                503,
                "not_ready",
                f"The speech detector is unavailable: {self._detector.error}",
                headers={"Retry-After": str(self._args.admission.retry_after_s)},
            )

    async def decode_and_admit(self, data: bytes) -> tuple[np.ndarray, Reservation]:
        if self.admission.queued_audio_seconds > 0:  # an idle queue admits without asking
            self.admission.update_pool(await self.pool_size())
            # Shed before decoding when the queue alone is past the bound: under a flood,
            # refusals must not wait behind the decoding and detection of admitted work.
            with self._counting_sheds():
                self.admission.refuse_if_full()
        try:
            audio = await asyncio.to_thread(
                decode_audio, data, self._args.limits.max_audio_seconds
            )
        except APIError as exc:
            self._metrics.decode_failures.inc(tags={"reason": exc.code})
            if exc.status == 413:
                self._metrics.rejections.inc(tags={"reason": "duration"})
            raise
        duration = audio.size / SAMPLE_RATE
        self._metrics.audio_seconds_received.inc(duration)
        with self._counting_sheds():
            reservation = self.admission.reserve(duration)
        return audio, reservation

    @contextmanager
    def _counting_sheds(self) -> Iterator[None]:
        """Admission decisions: a 503 is counted as shed; the queue gauges follow."""
        try:
            yield
        except APIError:
            self._metrics.rejections.inc(tags={"reason": "backpressure"})
            raise
        finally:
            self._report_queue()

    async def pool_size(self) -> PoolSize | None:
        """The model pool and the ingress replicas sharing it, from the Serve controller
        (cached for a second); None when it did not answer."""
        model = await self._model_replicas.counts()
        if model is None:
            return None
        ingress = await self._ingress_replicas.counts()
        return PoolSize(
            running=model.running,
            reachable=max(model.max_replicas, model.running),
            ingress_replicas=max(1, ingress.running) if ingress else 1,
        )

    def _report_queue(self) -> None:
        self._metrics.queued_audio.set(self.admission.queued_audio_seconds)
        self._metrics.unsent_audio.set(self.admission.unsent_audio_seconds)
        # Infinite while no replica runs and none may be added; a gauge takes finite values.
        self._metrics.expected_wait.set(min(self.admission.expected_wait_s(), 1e6))

    async def find_speech(self, audio: np.ndarray, speech: SpeechOptions) -> SpeechAnalysis:
        started = time.monotonic()
        analysis = await asyncio.to_thread(self._detector.analyse, audio, speech)
        self._metrics.speech_detection_time.observe(time.monotonic() - started)
        if analysis.speech_samples:  # Ray's counters refuse an increment of 0
            self._metrics.speech_seconds.inc(analysis.speech_samples / SAMPLE_RATE)
        return analysis

    async def prepare(
        self,
        data: bytes,
        options: DecodeOptions,
        speech: SpeechOptions,
        request_id: str,
        key: str | None,
    ) -> Job:
        self.check_detector(speech)
        audio, reservation = await self.decode_and_admit(data)
        return await self.prepare_decoded(audio, reservation, options, speech, request_id, key)

    async def prepare_decoded(
        self,
        audio: np.ndarray,
        reservation: Reservation,
        options: DecodeOptions,
        speech: SpeechOptions,
        request_id: str,
        key: str | None = None,
        priority: Priority = Priority.SYNC,
    ) -> Job:
        """Speech detection and the split into chunks, as for every file (live turns too)."""
        try:
            analysis = await self.find_speech(audio, speech) if speech.enabled else None
            chunks = await asyncio.to_thread(split_into_chunks, audio, analysis)
        except BaseException:
            reservation.release()
            self._report_queue()
            raise
        # What the detector left out never reaches the model: the queue holds speech only.
        reservation.narrow_to(sum(c.seconds for c in chunks))
        self._report_queue()
        return Job(audio, chunks, options, key, request_id, reservation,
                   analysis.segments if analysis is not None else (), priority)

    # ---- run ----------------------------------------------------------------------

    async def run(self, job: Job) -> Transcription:
        results = [r async for r in self.results_in_order(job)]
        return self.finish(job, results)

    def finish(self, job: Job, results: list[ChunkResult]) -> Transcription:
        transcription = merge_chunk_results(
            job.chunks, results, job.duration, job.options.language
        )
        if transcription.words:
            transcription = dataclasses.replace(
                transcription, words=snap_to_sound(transcription.words, job.audio))
        elif job.speech:
            stretches = tuple((s / SAMPLE_RATE, e / SAMPLE_RATE) for s, e in job.speech)
            transcription = dataclasses.replace(transcription, segments=segments_at_pauses(
                transcription.segments, stretches))
        self._store(job.cache_key, transcription)
        return transcription

    async def results_in_order(
        self,
        job: Job,
        known: Mapping[int, ChunkResult] | None = None,
        max_in_flight: int | None = None,
        no_deadline: bool = False,
    ) -> AsyncIterator[ChunkResult]:
        """Chunk results in audio order, as soon as each and its predecessors are done.

        At most `max_chunks_in_flight` chunks of this request wait at the model at once, so
        a long file never floods the queue, and the whole job is bounded in time by a
        budget that grows with its audio. The job's admission is released at the end,
        whether it finished, failed or the client went away. `known` results (by chunk
        index: a resumed job's finished chunks) are not sent again; `no_deadline` is for
        jobs, which wait behind interactive work as long as it takes.
        """
        known = known or {}
        try:
            in_flight = asyncio.Semaphore(max_in_flight or self._args.limits.max_chunks_in_flight)

            async def one(index: int, chunk: Chunk) -> ChunkResult:
                if index in known:
                    job.reservation.sent(chunk.seconds)
                    job.reservation.done(chunk.seconds)
                    return known[index]
                async with in_flight:
                    # Made here, inside the bound: a gain makes a copy, and a long file's
                    # copies must not all exist at once. Reused if the chunk is sent again.
                    samples = chunk.samples(job.audio)
                    job.reservation.sent(chunk.seconds)

                    async def call() -> ChunkResult:
                        self._metrics.model_chunks.inc()
                        return await self._model.transcribe.remote(
                            samples, job.options, int(job.priority))

                    result = await call_surviving_replica_loss(
                        call,
                        self._args.limits.replica_loss_retries,
                        job.request_id,
                        on_retry=self._count_retry,
                    )
                    job.reservation.done(chunk.seconds)
                    self._report_queue()
                    self.admission.observe_rate(result.replica_audio_s_per_s)
                    return result

            tasks = [asyncio.ensure_future(one(i, c)) for i, c in enumerate(job.chunks)]
            deadline = asyncio.get_running_loop().time() + self._args.limits.timeout_for(
                job.duration
            )
            try:
                for task in tasks:
                    remaining = deadline - asyncio.get_running_loop().time()
                    timeout = None if no_deadline else max(remaining, 0.001)
                    yield self._checked(await asyncio.wait_for(task, timeout), job)
            except asyncio.TimeoutError:
                raise APIError(
                    504, "timeout", "Transcription did not finish within the time budget."
                ) from None
            except BackPressureError:
                self._metrics.rejections.inc(tags={"reason": "backpressure"})
                raise APIError(
                    503,
                    "overloaded",
                    "The model queue is full; retry after the indicated delay.",
                    headers={"Retry-After": str(self._args.admission.retry_after_s)},
                ) from None
            except APIError:
                raise
            except Exception as exc:  # noqa: BLE001 - replica died, actor error, ...
                logger.error("request_id=%s chunk call failed: %r", job.request_id, exc)
                raise APIError(500, "inference_failed", "The model failed on this audio.") from None
            finally:
                for task in tasks:
                    task.cancel()
        finally:
            job.reservation.release()
            self._report_queue()

    def _count_retry(self) -> None:
        self.chunk_retries += 1
        self._metrics.chunk_retries.inc()

    def _checked(self, result: ChunkResult, job: Job) -> ChunkResult:
        if result.error:
            logger.error("request_id=%s chunk failed: %s", job.request_id, result.error)
            raise APIError(500, "inference_failed", "The model failed on this audio.")
        return result
