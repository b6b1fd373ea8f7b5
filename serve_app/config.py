"""Typed, validated settings: the one place configuration lives.

`AppArgs` is the `args:` block of every config under `configs/`; `BatchingConfig` is the
model deployment's `user_config`, applied at runtime by `ASRModel.reconfigure`. Unknown
keys are errors (`extra="forbid"`), so a typo in a YAML file fails the deploy instead of
silently falling back to a default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MiB = 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingConfig(_Strict):
    """How the model deployment gathers chunks into batches (its `user_config`)."""

    max_batch_size: int = Field(
        8,
        ge=1,
        le=256,
        description="Most audio per batch, in 30-second windows: a chunk costs the window "
        "it is padded to (30 s in full windows; with trimmed ones, e.g. 10 s for a 5-s clip).",
    )
    batch_wait_timeout_s: float = Field(
        0.05,
        ge=0.0,
        le=5.0,
        description="How long a partial batch waits for more chunks before it runs.",
    )


class ModelSettings(_Strict):
    """Which checkpoint the model deployment serves and how it runs it."""

    id: str = Field(
        "models/whisper-base",
        min_length=1,
        description="Hugging Face hub id or local directory of the checkpoint.",
    )
    revision: str | None = Field(
        None, description="Hub revision (commit hash) to pin in production."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto picks CUDA when a GPU is visible, else CPU."
    )
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="auto is float16 on CUDA and float32 on CPU."
    )
    served_name: str | None = Field(
        None, description="Name shown by /v1/models; defaults to the last part of `id`."
    )
    aliases: tuple[str, ...] = Field(
        ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"),
        description="Other names clients may send as `model`: OpenAI's SDKs and apps send "
        "whisper-1, and OpenAI's Realtime clients gpt-4o-(mini-)transcribe.",
    )
    quantization: Literal["none", "int8"] = Field(
        "none",
        description="int8: dynamic INT8 linear layers, CPU replicas only (about twice FP32's "
        "speed, a word error rate within 2 points of FP32). GPUs keep float16.",
    )
    torch_threads: int | None = Field(
        None, ge=1, le=256, description="Intra-op threads on CPU; None keeps torch's default."
    )
    decode_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Intra-op threads while Whisper's decoder generates on CPU (the encoder "
        "keeps torch_threads); None keeps torch_threads. One-token steps are many small "
        "kernels, where waking a second thread costs more than it saves.",
    )
    encoder_window: Literal["full", "trimmed"] = Field(
        "full",
        description="full: every chunk is padded to 30 s, as Whisper and GLM-ASR were "
        "trained. trimmed: to the next 5-s step (GLM-ASR: 6-s) at least 3 s past the "
        "chunk's end, so a 5-s clip costs the encoder a third; a Whisper chunk that loops "
        "is decoded again in 30 s. Whisper base on 2 CPU cores: 3.2x the speed for 5-s "
        "clips at the same word error rate on the test speech (docs/performance.md); "
        "GLM-ASR's accuracy with it is unmeasured (no real weights here).",
    )
    warmup: bool = Field(True, description="Run one dummy batch before reporting ready.")

    @model_validator(mode="after")
    def _int8_is_for_cpu(self) -> "ModelSettings":
        # device "auto" is checked again once the device is known (backends.resolve_quantization).
        if self.quantization == "int8" and self.device == "cuda":
            raise ValueError(
                "quantization int8 runs on CPU only; on a GPU leave it 'none' and use "
                "dtype float16"
            )
        if self.quantization == "int8" and self.dtype not in ("auto", "float32"):
            raise ValueError(f"quantization int8 takes float32 weights, not dtype {self.dtype}")
        return self

    @property
    def name(self) -> str:
        return self.served_name or self.id.rstrip("/").split("/")[-1]

    def accepts(self, requested: str) -> bool:
        return requested in {self.id, self.name, *self.aliases}


class LimitSettings(_Strict):
    """Bounds on what one request may ask of the service."""

    max_upload_bytes: int = Field(
        100 * MiB, ge=1024, description="Largest accepted upload (OpenAI allows 25 MB)."
    )
    max_audio_seconds: float = Field(
        7200.0, gt=0, le=86_400, description="Longest accepted audio after decoding (2 h)."
    )
    max_chunks_in_flight: int = Field(
        16,
        ge=1,
        le=1024,
        description="Chunks of one request sent to the model at once; the rest wait, "
        "so one long file never floods the model queue.",
    )
    replica_loss_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Times a chunk is sent again when its model replica dies or is stopped "
        "under it (kill, node loss, the end of a drain); bounded, so a chunk that itself "
        "kills replicas is not replayed onto every healthy one.",
    )
    max_files_per_batch: int = Field(
        16, ge=1, le=256, description="Most files in one /v1/audio/transcriptions/batch call."
    )
    timeout_base_s: float = Field(
        120.0, gt=0, description="Fixed part of a request's time budget (decode, queueing)."
    )
    timeout_per_audio_s: float = Field(
        2.0,
        gt=0,
        description="Added budget per second of audio; 2.0 tolerates a model twice slower "
        "than real time, far slower than any supported device runs.",
    )

    def timeout_for(self, audio_seconds: float) -> float:
        return self.timeout_base_s + self.timeout_per_audio_s * audio_seconds


class AdmissionSettings(_Strict):
    """Load shedding in the ingress, counted in audio seconds rather than requests.

    One two-hour file is worth hundreds of short clips; counting seconds keeps the queue
    honest. A request is refused (503 `overloaded` with Retry-After, at once) when the audio
    queued before it would not be done within `max_expected_wait_s` even by every replica
    the model deployment may reach (serve_app.admission says where each number comes from).
    """

    max_expected_wait_s: float = Field(
        60.0,
        gt=0,
        description="Shed a request when the audio queued with it would take longer than "
        "this to transcribe, at the model pool's measured speed and largest size.",
    )
    assumed_audio_s_per_s: float = Field(
        10.0,
        gt=0,
        description="A model replica's speed (audio seconds per second) until one has "
        "measured itself: Whisper base INT8 on 2 CPU cores does ~10-15; GPUs far more.",
    )
    replica_start_s: float = Field(
        15.0,
        ge=0,
        description="How long a replica the autoscaler adds takes to serve (a cold start: "
        "~10 s for the demo model on 2 cores, docs/operations.md).",
    )
    max_queued_audio_seconds: float = Field(
        4 * 3600.0,
        gt=0,
        description="Audio seconds admitted but not yet transcribed, per ingress replica: "
        "a bound on the audio it holds in memory.",
    )
    retry_after_s: int = Field(
        5, ge=1, le=3600, description="The shortest Retry-After sent with a 503."
    )


class AuthSettings(_Strict):
    """Optional API keys. Keys never live in the YAML: only where to read them from."""

    api_keys_env: str = Field(
        "ASR_API_KEYS", description="Environment variable with comma-separated keys."
    )
    api_keys_file: str | None = Field(
        None, description="File with one key per line (e.g. a mounted secret)."
    )


class CacheSettings(_Strict):
    """Cache of transcriptions keyed by content hash: each ingress replica's own LRU, or
    Redis shared by all of them when `store` names one."""

    enabled: bool = True
    max_bytes: int = Field(64 * MiB, ge=0, description="Upper bound on cached result bytes.")
    ttl_s: float = Field(
        3600.0, gt=0, description="Entries expire after this long, so transcripts are not kept."
    )


class StoreSettings(_Strict):
    """Where shared state lives. With no Redis URL in the environment, the result cache is
    each ingress replica's own (embedded); with one, every ingress replica shares it."""

    redis_url_env: str = Field(
        "ASR_REDIS_URL",
        description="Environment variable holding the Redis URL (it may carry a password, so "
        "never the YAML); unset or empty keeps the embedded store.",
    )
    key_prefix: str = Field(
        "asr:", min_length=1, max_length=64,
        description="Prefix of every key this service writes, so an instance can be shared.",
    )
    timeout_s: float = Field(
        0.25, gt=0, le=10,
        description="Longest wait for one Redis call; a slower answer is a cache miss.",
    )
    outage_backoff_s: float = Field(
        5.0, ge=0, le=600,
        description="After a failed call, Redis is left alone this long (requests do not "
        "each wait out a timeout while it is down).",
    )


class JobSettings(_Strict):
    """Durable transcription jobs (`/v1/audio/transcriptions/jobs`, serve_app/jobs).

    Jobs live in an embedded SQLite file by default (one node; kept across restarts) or in
    Redis when `store.redis_url_env` names one (every node). Every ingress replica runs
    jobs from the shared queue under leases, as the lowest priority class at the model.
    """

    enabled: bool = True
    sqlite_path: str = Field(
        "var/jobs-{app}.sqlite3", min_length=1,
        description="The embedded store's file, relative to the service's working "
        "directory unless absolute; `{app}` becomes the Serve application's name (one queue "
        "per application). Unused with Redis.",
    )
    max_queued_bytes: int = Field(
        2 * 1024 * MiB, ge=MiB,
        description="Uploaded audio of queued and running jobs, in all; a submit past it "
        "gets 503 with Retry-After. Audio is deleted when its job ends.",
    )
    result_ttl_s: float = Field(
        86_400.0, ge=10, le=90 * 86_400,
        description="An ended job and its result are deleted this long after it ends.",
    )
    lease_s: float = Field(
        30.0, ge=1, le=3600,
        description="A running job's lease, renewed every third of it; a replica that dies "
        "holding a job loses it this long after its last renewal, then another takes over.",
    )
    poll_interval_s: float = Field(
        1.0, ge=0.05, le=60, description="How often an idle replica looks for queued jobs."
    )
    concurrency: int = Field(
        2, ge=1, le=64, description="Jobs one ingress replica runs at once."
    )
    max_chunks_in_flight: int = Field(
        4, ge=1, le=1024,
        description="Chunks of one job at the model at once (synchronous requests use "
        "limits.max_chunks_in_flight): a backlog of jobs never floods the model's queue.",
    )
    max_attempts: int = Field(
        3, ge=1, le=20,
        description="Runs of one job (takeovers after a lost replica included) before it "
        "fails; bounded, so audio that kills replicas is not replayed forever.",
    )
    callback_secret_env: str = Field(
        "ASR_CALLBACK_SECRET",
        description="Environment variable with the callbacks' signing secret (Standard "
        "Webhooks, `whsec_<base64>` or any string); callbacks are refused at submit "
        "while it is unset.",
    )
    callback_allow: tuple[str, ...] = Field(
        (),
        description="Hosts or CIDR networks callbacks may reach although they are loopback, "
        "private, link-local or metadata addresses (refused otherwise: the Ray dashboard, "
        "Redis and cloud metadata live there).",
    )
    callback_timeout_s: float = Field(10.0, gt=0, le=120, description="One delivery attempt.")
    callback_max_attempts: int = Field(
        8, ge=1, le=50,
        description="Deliveries tried with exponential backoff (1 s doubling, at most "
        "5 minutes apart) before the callback is marked failed.",
    )

    @model_validator(mode="after")
    def _sqlite_path_names_only_the_app(self) -> "JobSettings":
        try:
            self.sqlite_path.format(app="asr")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"jobs.sqlite_path may hold only {{app}}, not {exc}") from None
        return self


class SpeechSettings(_Strict):
    """The speech detector (Silero VAD v6 on onnxruntime) and its per-request defaults.

    One detector decides what is speech for the silence guard, the split of long audio at
    pauses and live turns. Requests may override the defaults with `vad_*` form fields.
    """

    model_path: str | None = Field(
        None, description="ONNX file of a Silero VAD v6 export; None uses the bundled one."
    )
    filter: bool = Field(
        True,
        description="Skip audio without speech before the model (the silence guard). "
        "Requests turn it off with vad_filter=false (music, singing).",
    )
    threshold: float = Field(
        0.5, ge=0.05, le=0.95, description="Speech probability at which speech starts."
    )
    min_silence_duration_ms: int = Field(
        300, ge=0, le=10_000, description="A pause this long ends a stretch of speech."
    )
    speech_pad_ms: int = Field(
        200, ge=0, le=2_000, description="Audio kept before and after each stretch of speech."
    )
    min_speech_duration_ms: int = Field(
        100, ge=0, le=10_000, description="Shorter bursts (clicks, bumps) are not speech."
    )


class RealtimeSettings(_Strict):
    """Live transcription over `/v1/realtime` (OpenAI's Realtime protocol, transcription
    mode). The defaults of `server_vad` are OpenAI's; the limits keep one client from
    holding an ingress replica's memory or cores."""

    enabled: bool = True
    max_sessions: int = Field(
        32, ge=1, le=10_000,
        description="Open sessions per ingress replica; the next handshake gets 503. Two "
        "cores sustain about this many real-time streams of speech (docs/performance.md).",
    )
    max_session_s: float = Field(
        900.0, ge=10, le=7200,
        description="A session's longest life: it then ends with an error event and close "
        "code 1000. Keep the ingress's graceful_shutdown_timeout_s above this plus "
        "drain_grace_s (the configs do; tests check), so a drain never cuts a turn short.",
    )
    idle_timeout_s: float = Field(
        60.0, ge=1, le=3600,
        description="A session that sends nothing for this long is closed (HAProxy's own "
        "`timeout client` is an hour; a silent microphone still sends audio).",
    )
    max_buffer_s: float = Field(
        300.0, ge=1, le=3600,
        description="Most uncommitted audio in the input buffer (manual turns); an append "
        "past it gets an error event and is dropped.",
    )
    max_turn_s: float = Field(
        120.0, ge=5, le=3600,
        description="With server_vad, a turn this long is committed even if speech goes on.",
    )
    max_event_bytes: int = Field(
        1 * MiB, ge=1024, le=64 * MiB,
        description="Largest client event (OpenAI's base64 appends are up to 15 MiB; a "
        "real-time client sends a few KB every 20-100 ms).",
    )
    partial_every_s: float = Field(
        0.5, ge=0.1, le=10,
        description="New speech between two decodes of the growing turn. Text is sent once "
        "two decodes agree on it (or one, past delta_deadline_s), so deltas follow speech by "
        "one to two times this plus a decode.",
    )
    delta_deadline_s: float | None = Field(
        1.0, ge=0.2, le=30,
        description="Most new speech a delta waits for. When a decode of the growing turn "
        "agrees with the one before on nothing new and the next decode would come later "
        "than this, its own words (all but the one still being said) are sent; null sends only "
        "text two decodes agree on (deltas then differ from the final transcript less "
        "often, and now and then wait two decodes).",
    )
    continue_sent_text: bool = Field(
        True,
        description="A re-decode of the growing turn is given the words already sent and "
        "generates only what follows: on 2 CPU cores a 10-s turn's re-decode takes half as "
        "long, so deltas come more often (docs/performance.md). Such decodes batch only "
        "with decodes of the same text; false decodes the whole turn each time, which lets "
        "a GPU's live lane batch many streams' re-decodes together.",
    )
    seal_after_s: float = Field(
        25.0, ge=5, le=30,
        description="A turn's part that is still decoded whole; past this the part up to "
        "its deepest recent pause is decoded once and set aside, as files are split.",
    )
    drain_grace_s: float = Field(
        10.0, ge=0, le=600,
        description="When the ingress replica drains, open turns get this long to finish "
        "before the session ends with `server_shutting_down` and close code 1012.",
    )

    @property
    def graceful_shutdown_s(self) -> float:
        """The ingress's graceful_shutdown_timeout_s: longer than any session may live."""
        return self.max_session_s + self.drain_grace_s + 5.0


class AppArgs(_Strict):
    """The `args:` of the application in `configs/*.yaml` (see `serve_app.app.build_app`)."""

    model: ModelSettings = Field(default_factory=ModelSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    speech: SpeechSettings = Field(default_factory=SpeechSettings)
    realtime: RealtimeSettings = Field(default_factory=RealtimeSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    readiness_timeout_s: float = Field(
        5.0, gt=0, le=60, description="How long /readyz waits for the model's ready() answer."
    )

    @model_validator(mode="after")
    def _aliases_do_not_shadow(self) -> "AppArgs":
        if self.model.name in self.model.aliases:
            raise ValueError("model.aliases must not repeat the served name")
        return self
