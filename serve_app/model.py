"""The model deployment: one replica holds one model on one device and batches chunks.

It never sees HTTP. Chunks (≤30 s of 16 kHz float32) arrive through a DeploymentHandle
from any ingress replica; `@serve.batch` gathers them across requests into one padded
`generate` call that runs off the event loop, so the queue keeps filling meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import numpy as np
from ray import serve

from serve_app.autoscaling import AUDIO_PENDING, AUDIO_RATE, AudioLoad
from serve_app.backends.base import MAX_CHUNK_SECONDS, SAMPLE_RATE, ChunkResult, DecodeOptions
from serve_app.batching import (
    BatchHealth,
    ChunkRequest,
    Preempted,
    batch_shape,
    batch_size_in_windows,
    chunk_cost_seconds,
    group_for_generate,
    run_batch,
)
from serve_app.config import BatchingConfig, ModelSettings
from serve_app.metrics import ModelMetrics
from serve_app.openmp import configure_openmp
from serve_app.priority import Priority, PriorityGate

logger = logging.getLogger("ray.serve")

WARMUP_SECONDS = 1.0  # enough to run every layer once, cheap on any device
LIVE_BATCH_WAIT_S = 0.01  # live chunks arriving together batch; none waits for company
# The files' inference thread runs at this nice value, and so do the OpenMP workers it
# starts (Linux threads inherit it): where the two lanes share CPU cores, the scheduler
# gives the live lane about nine tenths of them (weights 1024 against 110) until its batch
# is done, instead of half. GPU replicas only launch kernels from these threads.
FILES_LANE_NICE = 10
# The longest a files' decoding step waits for live batches: files always progress, even
# under more live load than the lane can serve.
LIVE_YIELD_MAX_S = 1.0


def _yield_to_live_lane() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), FILES_LANE_NICE)
    except OSError as exc:  # a platform without per-thread priorities: lanes share evenly
        logger.warning("could not lower the files lane's CPU priority: %s", exc)


@serve.deployment(
    name="ASRModel",
    max_ongoing_requests=64,
    user_config=BatchingConfig().model_dump(),
    health_check_period_s=10,
    health_check_timeout_s=30,
)
class ASRModel:
    def __init__(self, settings: ModelSettings | dict) -> None:
        self._settings = ModelSettings.model_validate(settings)
        configure_openmp(self._settings.torch_threads)
        # One thread runs every forward pass: its OpenMP team stays the same and warm, and
        # no second team spins on the same cores (asyncio.to_thread hops between threads).
        self._inference = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="inference", initializer=_yield_to_live_lane)
        # Live turns' lane (serve_app.priority): a second thread, so a live chunk starts at
        # once beside a batch of files instead of after it. Same weights, no copy.
        # Live batches running or about to: the files' generate waits between decoding steps
        # while any is (a forward pre-hook, _yield_to_live), so a live turn has the cores
        # and Python's lock to itself instead of sharing them with a batch of files.
        self._live_batches = 0
        self._live_idle = threading.Event()
        self._live_idle.set()
        self._files_thread: int | None = None
        # Live chunks of ended turns not yet in a batch: a live batch of re-decodes only
        # gives way to them (it is stopped at its next decoding step, its chunks answered
        # "preempted"), since a finished sentence matters more than a provisional one.
        self._urgent_pending: set[int] = set()
        self._live_batch_preemptible = False
        self._live_inference = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="live-inference", initializer=self._set_threads)
        self._metrics = ModelMetrics()
        self._health = BatchHealth()
        self._batching = BatchingConfig()
        # About one batch in the batcher at a time, the rest held back in priority order.
        self._gate = PriorityGate(self._batching.max_batch_size * MAX_CHUNK_SECONDS)
        self._live_gate = PriorityGate(self._batching.max_batch_size * MAX_CHUNK_SECONDS)
        # Totals since start, reported by ready(): operators and tests see batching work.
        self._batches_run = 0
        self._chunks_run = 0
        self._largest_batch = 0
        self._audio_s_run = 0.0  # seconds of audio in the chunks run
        self._padded_s_run = 0.0  # what the model computed on: audio plus padding
        self._int8_kernel: str | None = None
        self._audio_load = AudioLoad()  # what the audio-seconds autoscaling policy reads
        # Where this replica's start went (a cold start's parts): torch and the family's
        # code, weights, INT8 conversion, warm-up; reported by ready() and logged.
        self._startup: dict[str, float] = {}
        started = time.monotonic()
        self._inference.submit(self._load).result()
        if self._settings.warmup:  # the live lane's thread too: its first turn is not slow
            self._live_inference.submit(self._warm_up).result()
        self._startup["total_s"] = time.monotonic() - started
        self._startup = {k: round(v, 3) for k, v in self._startup.items()}
        self._metrics.startup_time.observe(self._startup["total_s"])
        logger.info(
            "model %s (%s) ready on %s/%s (quantization %s) in %.1f s: %s",
            self._settings.id,
            self._backend.info.family,
            self._device,
            str(self._dtype).removeprefix("torch."),
            self._settings.quantization,
            self._startup["total_s"],
            self._startup,
        )

    def _load(self) -> None:
        """Runs on the inference thread, so torch's thread settings apply where it computes."""
        started = time.monotonic()
        import torch

        from serve_app.backends import load_backend, resolve_device, resolve_dtype

        self._startup["torch_import_s"] = time.monotonic() - started

        self._set_threads()
        self._files_thread = threading.get_ident()  # _load runs on the files' thread
        self._device = resolve_device(self._settings.device)
        self._dtype = resolve_dtype(self._settings.dtype, self._device)
        self._backend = load_backend(
            self._settings.id,
            device=self._device,
            dtype=self._dtype,
            revision=self._settings.revision,
            quantization=self._settings.quantization,
            decode_threads=self._settings.decode_threads,
            encoder_window=self._settings.encoder_window,
            timings=self._startup,
        )
        self._backend.model.register_forward_pre_hook(self._between_steps)
        if self._settings.quantization == "int8":
            from serve_app.backends.int8 import kernel_in_use

            self._int8_kernel = kernel_in_use(self._backend.model)  # it depends on the CPU
        if self._settings.warmup:
            started = time.monotonic()
            self._warm_up()
            self._startup["warm_up_s"] = time.monotonic() - started

    def _between_steps(self, module, args) -> None:
        """Forward pre-hook on the model: one call per decoding step. On the files' thread
        it waits while live batches run (at most LIVE_YIELD_MAX_S per step, so files always
        progress); on the live thread, a batch of re-decodes stops for a waiting turn."""
        if threading.get_ident() == self._files_thread:
            if not self._live_idle.is_set():
                self._live_idle.wait(LIVE_YIELD_MAX_S)
        elif self._live_batch_preemptible and self._urgent_pending:
            raise Preempted()

    def _set_threads(self) -> None:
        """torch's intra-op threads for the calling thread (OpenMP keeps them per thread)."""
        if self._settings.torch_threads:
            import torch

            torch.set_num_threads(self._settings.torch_threads)

    def _warm_up(self) -> None:
        rng = np.random.default_rng(0)
        noise = (0.01 * rng.standard_normal(int(16_000 * WARMUP_SECONDS))).astype(np.float32)
        result = self._backend.transcribe_batch([noise], DecodeOptions(language=None))[0]
        if result.error:
            raise RuntimeError(f"warm-up failed: {result.error}")

    def reconfigure(self, user_config: dict) -> None:
        config = BatchingConfig.model_validate(user_config or {})
        self._transcribe_batch.set_max_batch_size(config.max_batch_size)
        self._transcribe_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self._transcribe_live.set_max_batch_size(config.max_batch_size)
        self._gate.set_capacity(config.max_batch_size * MAX_CHUNK_SECONDS)
        self._live_gate.set_capacity(config.max_batch_size * MAX_CHUNK_SECONDS)
        self._batching = config
        logger.info("batching set to %s", config.model_dump())

    def check_health(self) -> None:
        self._health.check()

    async def ready(self) -> dict:
        """Cheap answer for /readyz: the model is loaded and warmed up once this runs."""
        return {
            **asdict(self._backend.info),
            "device": self._device,
            "dtype": str(self._dtype).removeprefix("torch."),
            "quantization": self._settings.quantization,
            "int8_kernel": self._int8_kernel,
            "replica": serve.get_replica_context().replica_id.unique_id,
            "batching": self._batching.model_dump(),
            "batches_run": self._batches_run,
            "chunks_run": self._chunks_run,
            "largest_batch": self._largest_batch,
            "audio_s_run": self._audio_s_run,
            "padded_s_run": self._padded_s_run,
            "startup_s": self._startup,
        }

    async def transcribe(
        self, audio: np.ndarray, options: DecodeOptions, priority: int = Priority.SYNC
    ) -> ChunkResult:
        """One chunk in, one result out, batched with others of its lane: live turns on
        their own thread at once; files and jobs through the batcher, more urgent classes
        first (serve_app.priority)."""
        window_s = self._backend.info.window_for(audio.size)
        audio_s = audio.size / SAMPLE_RATE
        priority = Priority(priority)
        self._audio_load.arrived(audio_s)
        arrived = time.monotonic()
        request = ChunkRequest(audio, options, arrived, window_s=window_s, priority=priority)
        if priority == Priority.LIVE:
            self._urgent_pending.add(id(request))
        try:
            lane = self._transcribe_live if priority.live else self._transcribe_batch
            gate = self._live_gate if priority.live else self._gate
            async with gate.admitted(priority, chunk_cost_seconds(audio.size, window_s)):
                self._report_waiting()
                result = await lane(request)
        finally:
            self._urgent_pending.discard(id(request))
            self._audio_load.finished(audio_s)
            self._report_waiting()
        return dataclasses.replace(result, replica_audio_s_per_s=self._audio_load.rate)

    def _report_waiting(self) -> None:
        for gate in (self._live_gate, self._gate):
            for priority, count in gate.waiting_by_class.items():
                if priority.live == (gate is self._live_gate):
                    self._metrics.waiting_chunks.set(
                        count, tags={"priority": priority.name.lower()})

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Audio held and measured speed, for serve_app.autoscaling.AudioSecondsPolicy
        (Serve calls this only where the deployment autoscales). The same numbers go to
        Prometheus, so operators see what the policy acts on."""
        stats = self._audio_load.stats()
        self._metrics.pending_audio.set(stats[AUDIO_PENDING])
        self._metrics.audio_rate.set(stats[AUDIO_RATE])
        return stats

    # Sizes count 30-second windows of audio, not chunks (batching.batch_size_in_windows).
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05, batch_size_fn=batch_size_in_windows)
    async def _transcribe_batch(self, requests: list[ChunkRequest]) -> list[ChunkResult]:
        return await self._run(requests, self._inference, measure_rate=True)

    # Live turns batch among themselves, with a short wait: a speaker is waiting.
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=LIVE_BATCH_WAIT_S,
                 batch_size_fn=batch_size_in_windows)
    async def _transcribe_live(self, requests: list[ChunkRequest]) -> list[ChunkResult]:
        # Not measured for the replica's speed: it shares the cores with the other lane.
        return await self._run(requests, self._live_inference, measure_rate=False)

    async def _run(self, requests: list[ChunkRequest], executor: ThreadPoolExecutor,
                   measure_rate: bool) -> list[ChunkResult]:
        started = time.monotonic()
        for request in requests:
            self._metrics.batch_wait.observe(
                started - request.enqueued_at, tags={"priority": request.priority.name.lower()})
        calls = group_for_generate(requests)
        shape = batch_shape(requests, calls)
        self._metrics.batch_size.observe(len(requests))
        self._metrics.padding_ratio.observe(shape.padding_ratio)
        self._batches_run += 1
        self._chunks_run += len(requests)
        self._largest_batch = max(self._largest_batch, len(requests))
        self._audio_s_run += shape.audio_s
        self._padded_s_run += shape.padded_s
        live = executor is self._live_inference
        preempted = False
        if live:
            self._live_batches += 1
            self._live_idle.clear()
            for request in requests:
                self._urgent_pending.discard(id(request))
            self._live_batch_preemptible = all(
                r.priority == Priority.LIVE_PARTIAL for r in requests)
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                executor, run_batch, self._backend.transcribe_batch, requests, calls
            )
        except Preempted:
            preempted = True
            results = [ChunkResult(error="preempted by a live turn that ended")] * len(requests)
        finally:
            if live:
                self._live_batch_preemptible = False
                self._live_batches -= 1
                if self._live_batches == 0:
                    self._live_idle.set()
        busy_s = time.monotonic() - started
        self._metrics.inference_time.observe(busy_s)
        if measure_rate:
            self._audio_load.batch_done(shape.audio_s, busy_s)
        if preempted:
            return results  # not failures: the model is fine
        failures = sum(1 for r in results if r.error)
        if failures:
            self._metrics.chunk_failures.inc(failures)
        self._health.record(results)
        return results
