"""Every metric the service exports, defined once.

`ray.serve.metrics` adds deployment, replica and application tags and hands the values to
Ray's metrics agent, which Prometheus scrapes (exported names gain Ray's `ray_` prefix).
Metric objects are created inside replicas, where a Ray worker context exists.
"""

from __future__ import annotations

import threading
import time

from ray.serve.metrics import Counter, Gauge, Histogram

LATENCY_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]
RTF_BOUNDARIES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5]
BATCH_SIZE_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]
RATIO_BOUNDARIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
STARTUP_BOUNDARIES_S = [1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600]
WAIT_BOUNDARIES_S = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
# Ray's metrics agent drops a gauge series that no worker has recorded for two report
# intervals (2 x 10 s by default): a value set once, say the cache size before a quiet
# spell, would vanish from /metrics. Re-recording it well within one interval keeps it.
GAUGE_REFRESH_S = 5.0


class RefreshedGauge(Gauge):
    """A Serve Gauge that re-records its last value of each tag set every few seconds."""

    def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] | None = None):
        super().__init__(name, description=description, tag_keys=tag_keys)
        self._last: dict[tuple, tuple[float, dict[str, str] | None]] = {}
        self._lock = threading.Lock()
        self._refresher: threading.Thread | None = None

    def set(self, value: float | None, tags: dict[str, str] | None = None) -> None:
        super().set(value, tags)
        if value is None:
            return
        with self._lock:
            self._last[tuple(sorted((tags or {}).items()))] = (value, dict(tags) if tags else None)
            if self._refresher is None:
                self._refresher = threading.Thread(
                    target=self._refresh_forever, name=f"refresh-{self._name}", daemon=True
                )
                self._refresher.start()

    def _refresh_forever(self) -> None:
        while True:
            time.sleep(GAUGE_REFRESH_S)
            with self._lock:
                values = list(self._last.values())
            for value, tags in values:
                try:
                    Gauge.set(self, value, dict(tags) if tags else None)
                except Exception:  # noqa: BLE001 - a metric must never take the replica down
                    pass


class IngressMetrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "asr_requests_total",
            description="HTTP requests by route and status code.",
            tag_keys=("route", "status"),
        )
        self.audio_seconds_received = Counter(
            "asr_audio_seconds_received_total", description="Seconds of audio decoded."
        )
        self.audio_seconds_transcribed = Counter(
            "asr_audio_seconds_transcribed_total",
            description="Seconds of audio in successful transcriptions (cache hits included).",
        )
        self.latency = Histogram(
            "asr_request_latency_seconds",
            description="End-to-end latency of transcription requests.",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("route",),
        )
        self.real_time_factor = Histogram(
            "asr_real_time_factor",
            description="Processing time divided by audio duration (lower is faster).",
            boundaries=RTF_BOUNDARIES,
        )
        self.cache_lookups = Counter(
            "asr_cache_lookups_total", description="Cache lookups by result.", tag_keys=("result",)
        )
        self.cache_evictions = Counter(
            "asr_cache_evictions_total", description="Entries evicted to stay within bytes."
        )
        self.cache_bytes = RefreshedGauge("asr_cache_bytes", description="Bytes held by the cache.")
        self.decode_failures = Counter(
            "asr_decode_failures_total",
            description="Uploads that could not be decoded, by error code.",
            tag_keys=("reason",),
        )
        self.rejections = Counter(
            "asr_rejected_requests_total",
            description="Requests refused before transcription, by reason.",
            tag_keys=("reason",),
        )
        self.speech_seconds = Counter(
            "asr_speech_seconds_total",
            description="Seconds of audio the speech detector judged to be speech (padded).",
        )
        self.speech_detection_time = Histogram(
            "asr_speech_detection_seconds",
            description="Time the speech detector took per file.",
            boundaries=LATENCY_BOUNDARIES_S,
        )
        self.chunk_retries = Counter(
            "asr_chunk_retries_total",
            description="Chunks sent again because their model replica died or was stopped.",
        )
        self.model_chunks = Counter(
            "asr_model_chunks_total",
            description="Chunks sent to the model deployment (audio without speech sends none).",
        )
        # Admission control's inputs and estimate (serve_app.admission), per ingress replica.
        self.queued_audio = RefreshedGauge(
            "asr_ingress_queued_audio_seconds",
            description="Audio admitted by this ingress replica and not yet transcribed.",
        )
        self.unsent_audio = RefreshedGauge(
            "asr_ingress_unsent_audio_seconds",
            description="Admitted audio not yet handed to a model replica (what the "
            "application-level audio policy adds to the replicas' own).",
        )
        self.expected_wait = RefreshedGauge(
            "asr_ingress_expected_wait_seconds",
            description="Time the queued audio would take at the pool's measured speed and "
            "largest size; requests are shed above admission.max_expected_wait_s.",
        )
        # The shared store (serve_app.store): Redis when configured.
        self.store_operations = Counter(
            "asr_store_operations_total",
            description="Calls to the shared store by operation and result (ok, error, "
            "skipped while it is known to be down).",
            tag_keys=("op", "result"),
        )
        self.store_latency = Histogram(
            "asr_store_latency_seconds",
            description="Time of successful calls to the shared store.",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("op",),
        )
        # Durable jobs (serve_app.jobs). The gauges are the shared store's totals, the same
        # from every ingress replica: dashboards take their max, not their sum.
        self.jobs = RefreshedGauge(
            "asr_jobs",
            description="Jobs in the store by status (queued, running, completed, failed, "
            "cancelled; ended jobs until they expire).",
            tag_keys=("status",),
        )
        self.jobs_oldest_queued_age = RefreshedGauge(
            "asr_jobs_oldest_queued_age_seconds",
            description="How long the oldest queued job has waited (0 with none queued).",
        )
        self.jobs_queued_bytes = RefreshedGauge(
            "asr_jobs_queued_bytes",
            description="Uploaded audio held for queued and running jobs (bounded by "
            "jobs.max_queued_bytes).",
        )
        self.jobs_backlog_audio = RefreshedGauge(
            "asr_jobs_backlog_audio_seconds",
            description="Audio of queued and running jobs not yet transcribed: what the "
            "application-level autoscaling policy adds for jobs.",
        )
        self.jobs_finished = Counter(
            "asr_jobs_finished_total",
            description="Jobs this replica ran to an end, by status (completed, failed).",
            tag_keys=("status",),
        )
        self.job_callbacks = Counter(
            "asr_job_callbacks_total",
            description="Job callbacks by outcome (delivered, failed after every attempt or "
            "a 410).",
            tag_keys=("result",),
        )
        # Live transcription (serve_app.realtime).
        self.live_sessions = RefreshedGauge(
            "asr_live_sessions", description="Open /v1/realtime sessions on this ingress replica."
        )
        self.live_turns = Counter(
            "asr_live_turns_total", description="Live turns transcribed (completed events)."
        )
        self.live_first_delta = Histogram(
            "asr_live_first_delta_seconds",
            description="From a turn's start of speech to its first transcript delta.",
            boundaries=LATENCY_BOUNDARIES_S,
        )
        self.live_final_latency = Histogram(
            "asr_live_final_latency_seconds",
            description="From a turn's commit (end of speech plus the closing pause, or the "
            "client's commit) to its completed transcript.",
            boundaries=LATENCY_BOUNDARIES_S,
        )


class ModelMetrics:
    def __init__(self) -> None:
        self.batch_size = Histogram(
            "asr_batch_chunks",
            description="Chunks per batch that went through generate.",
            boundaries=BATCH_SIZE_BOUNDARIES,
        )
        self.padding_ratio = Histogram(
            "asr_batch_padding_ratio",
            description="Share of what a batch computed on that was padding, not audio.",
            boundaries=RATIO_BOUNDARIES,
        )
        self.batch_wait = Histogram(
            "asr_chunk_batch_wait_seconds",
            description="Time a chunk waited in the replica before its batch ran, by "
            "priority class (live, sync, job).",
            boundaries=WAIT_BOUNDARIES_S,
            tag_keys=("priority",),
        )
        self.waiting_chunks = RefreshedGauge(
            "asr_model_waiting_chunks",
            description="Chunks a model replica holds back from its batcher, by priority "
            "class: the backlog that live turns overtake.",
            tag_keys=("priority",),
        )
        self.inference_time = Histogram(
            "asr_batch_inference_seconds",
            description="Model time per batch.",
            boundaries=LATENCY_BOUNDARIES_S,
        )
        self.chunk_failures = Counter(
            "asr_chunk_failures_total", description="Chunks whose transcription failed."
        )
        self.pending_audio = RefreshedGauge(
            "asr_model_pending_audio_seconds",
            description="Seconds of audio a model replica holds, queued or running: what the "
            "audio-seconds autoscaling policy sums (reported where the deployment autoscales).",
        )
        self.audio_rate = RefreshedGauge(
            "asr_model_audio_seconds_per_second",
            description="Audio seconds a model replica transcribes per second of model work, "
            "averaged over recent batches: what the policy divides by.",
        )
        self.startup_time = Histogram(
            "asr_replica_startup_seconds",
            description="Time a model replica took to load and warm up its model (a cold "
            "start's own part; Ray's worker and actor start come on top).",
            boundaries=STARTUP_BOUNDARIES_S,
        )
