"""HTTP ingress: routes, validation, error mapping; the pipeline lives in transcriber.py.

Runs on CPU and never imports torch. Audio crosses to the model deployment as compact
float32 arrays of at most 30 s, so chunks from every request batch together.
"""

# No `from __future__ import annotations`: FastAPI must see real types on the routes
# that Serve rebinds, or it mistakes `request: Request` for a body field.

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from typing import AsyncIterator

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from serve_app.audio import SAMPLE_RATE
from serve_app.auth import APIKeyChecker, load_api_keys
from serve_app.autoscaling import AUDIO_UNSENT, JOBS_BACKLOG
from serve_app.backends.base import DecodeOptions
from serve_app.config import AppArgs
from serve_app.errors import APIError, from_http_status, invalid_parameter
from serve_app.formats import TIMED_FORMATS, render, render_body
from serve_app.metrics import IngressMetrics
from serve_app.openapi import (
    BATCH_REQUEST_BODY,
    ERROR_RESPONSES,
    JOB_ERROR_RESPONSES,
    JOB_REQUEST_BODY,
    SPEECH_TIMESTAMPS_REQUEST_BODY,
    TRANSCRIPTION_REQUEST_BODY,
)
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.service import JobService, open_job_store, owner_of
from serve_app.params import SpeechParams, TranscriptionParams, check_model, parse_params
from serve_app.realtime.decoding import LiveDecoder
from serve_app.realtime.session import RealtimeSession
from serve_app.realtime.transport import SessionRegistry, refuse, requested_key, run_session
from serve_app.replicas import DeploymentReplicas
from serve_app.speech import SpeechDetector, SpeechOptions
from serve_app.transcriber import Job, Transcriber
from serve_app.upload import Upload, read_upload, read_uploads
from serve_app.webpage import PAGE_HTML

logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="ASR service",
    description="OpenAI-compatible speech recognition on Ray Serve.",
    version="0.1.0",
)


@api.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    ingress = getattr(request.app.state, "ingress", None)
    if exc.code == "file_too_large" and ingress is not None:
        ingress.metrics.rejections.inc(tags={"reason": "size"})
    return exc.response()


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    error = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid"}
    param = str(error["loc"][-1]) if error.get("loc") else "body"
    return invalid_parameter(param, f"Invalid '{param}': {error['msg']}.").response()


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return from_http_status(exc.status_code, str(exc.detail)).response()


def _request_id(request: Request) -> str:
    """Serve's proxy takes X-Request-ID from the client (or makes one) and echoes it on
    the response itself; reuse it so logs and the client agree."""
    from ray.serve.context import _get_serve_request_context

    return (
        _get_serve_request_context().request_id
        or request.headers.get("x-request-id")
        or uuid.uuid4().hex
    )


def _path_in_app(request: Request) -> str:
    """The path below the application's route prefix (Serve passes it as root_path)."""
    root = request.scope.get("root_path", "")
    path = request.url.path
    return path[len(root) :] or "/" if root and path.startswith(root) else path


def _route_of(request: Request) -> str:
    """The route template, not the raw path, so metrics stay low-cardinality.

    Requests refused before routing (a 401) are matched here so they count under their
    route too.
    """
    route = request.scope.get("route")
    if route is None:
        route = next(
            (r for r in request.app.router.routes if r.matches(request.scope)[0] == Match.FULL),
            None,
        )
    return getattr(route, "path", None) or "unmatched"


@api.middleware("http")
async def _request_context(request: Request, call_next) -> Response:
    request.state.request_id = _request_id(request)
    request.state.audio_seconds = 0.0
    request.state.cache_hit = None
    started = time.monotonic()
    # request.app, not the module's `api`: Serve ships the ingress class by value, so the
    # app serving requests is a copy that only the replica's instance knows about.
    ingress: "ASRIngress | None" = getattr(request.app.state, "ingress", None)
    try:
        if ingress is not None:
            ingress.auth.check(_path_in_app(request), request.headers.get("authorization"))
        response = await call_next(request)
    except APIError as exc:
        response = exc.response()
        if exc.status == 401 and ingress is not None:
            ingress.metrics.rejections.inc(tags={"reason": "auth"})
    except Exception:  # noqa: BLE001 - the last line of defence against a bare 500
        logger.exception("request_id=%s failed unexpectedly", request.state.request_id)
        response = APIError(500, "internal_error", "Internal error; see server logs.").response()
    latency = time.monotonic() - started
    route = _route_of(request)
    if ingress is not None:
        ingress.metrics.requests.inc(tags={"route": route, "status": str(response.status_code)})
        if route.startswith("/v1/audio"):
            ingress.metrics.latency.observe(latency, tags={"route": route})
    logger.info(
        json.dumps(
            {
                "event": "request",
                "request_id": request.state.request_id,
                "method": request.method,
                "route": route,
                "status": response.status_code,
                "audio_seconds": round(request.state.audio_seconds, 3),
                "latency_ms": round(1000 * latency, 1),
                "cache_hit": request.state.cache_hit,
            }
        )
    )
    return response


def _sse(event: dict) -> str:
    return f"data: {json.dumps(event)}\n\n"


# A job's fields that shape how its result is rendered, not what is transcribed.
RESULT_FIELDS = frozenset({"response_format", "timestamp_granularities[]",
                           "timestamp_granularities"})


def _transcription_fields(fields: list) -> list:
    """A job's fields as the transcription validates them: the response format is the
    result's business (any format, asked when fetched), so it is not checked against the
    words here."""
    return [(k, v) for k, v in fields
            if k not in RESULT_FIELDS and k != "stream"]


def _no_store(request: Request) -> bool:
    """Clients opt out of the cache per request, as HTTP caches are told to."""
    return "no-store" in request.headers.get("cache-control", "").lower()


@serve.deployment(name="ASRIngress", max_ongoing_requests=64)
@serve.ingress(api)
class ASRIngress:
    def __init__(self, model: DeploymentHandle, args: AppArgs | dict) -> None:
        self._model = model
        self._args = AppArgs.model_validate(args)
        self.metrics = IngressMetrics()
        self.auth = APIKeyChecker(load_api_keys(self._args.auth))
        # Loaded here, once per replica; a failure makes /readyz say why instead of crashing.
        self.speech = SpeechDetector(self._args.speech.model_path)
        context = serve.get_replica_context()
        self._replicas = DeploymentReplicas(context.app_name)
        ingress_replicas = DeploymentReplicas(context.app_name, context.deployment)
        self._transcriber = Transcriber(
            model, self._args, self.metrics, self.speech,
            model_replicas=self._replicas, ingress_replicas=ingress_replicas,
        )
        self._model_info: dict | None = None
        replica_id = context.replica_id.unique_id
        self._sessions = SessionRegistry(
            self._args.realtime, lambda: ingress_replicas.state_of(replica_id))
        self.jobs: JobService | None = None
        self._jobs_error: str | None = None
        if self._args.jobs.enabled:
            try:
                store = open_job_store(self._args, context.app_name)
            except Exception as exc:  # noqa: BLE001 - an unwritable SQLite path, say
                # Synchronous and live transcription do not need it: they keep serving,
                # and the job routes answer 503 saying why.
                self._jobs_error = f"{type(exc).__name__}: {exc}"
                logger.error("jobs: the store could not be opened (%s)", self._jobs_error)
            else:
                runner = JobRunner(store, self._transcriber, self._args, self.metrics,
                                   self._job_options, replica_id,
                                   lambda: ingress_replicas.state_of(replica_id))
                self.jobs = JobService(self._args, store, runner, self._job_options)
                runner.start()  # Serve runs the constructor on the replica's event loop
        api.state.ingress = self  # the middleware runs outside the route's instance
        logger.info("ingress up; API keys %s", "required" if self.auth.enabled else "off")

    # ---- health and discovery -----------------------------------------------------

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE_HTML)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Audio admitted here and not yet at the model, for the application-level policy
        serve_app.autoscaling.AudioSecondsAppPolicy (called only where this autoscales)."""
        stats = {AUDIO_UNSENT: self._transcriber.admission.unsent_audio_seconds}
        if self.jobs is not None:
            stats[JOBS_BACKLOG] = self.jobs.runner.backlog_audio_s
        return stats

    async def __del__(self) -> None:
        """Serve's graceful shutdown, once requests have drained: running jobs go back to
        the queue at once instead of waiting out their leases."""
        if self.jobs is not None:
            await self.jobs.runner.stop()

    @api.get("/healthz", summary="Liveness: the ingress process answers.")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get(
        "/readyz",
        summary="Readiness: the speech detector is loaded and a model replica is warmed up "
        "and answering, or the model is scaled to zero on purpose.",
        responses={503: ERROR_RESPONSES[503]},
    )
    async def readyz(self) -> JSONResponse:
        if not self.speech.ready:
            return APIError(
                503, "not_ready", f"The speech detector failed to load: {self.speech.error}"
            ).response()
        counts = await self._replicas.counts()
        if counts is None and self._replicas.last_scaled_to_zero:
            # Calling the model to find out would wake the pool this probe must not wake.
            return APIError(503, "not_ready", "The model's replica counts are unknown "
                            "(the Serve controller did not answer).").response()
        if counts is not None:
            self._transcriber.admission.update_pool(await self._transcriber.pool_size())
        body: dict = {
            "status": "ready",
            "speech_detector": self.speech.describe(),
            # This ingress replica's own count (every replica's: asr_chunk_retries_total).
            "ingress": {"chunk_retries": self._transcriber.chunk_retries},
            # What the next admission decision would use (docs/operations.md).
            "admission": self._transcriber.admission.describe(),
            "realtime": self._sessions.describe(),
            "cache": self._transcriber.cache.describe(),
        }
        if self._jobs_error is not None:
            body["jobs"] = {"store": None, "store_error": self._jobs_error}
        elif self.jobs is not None:
            body["jobs"] = {"store": self.jobs.store.kind,
                            "running_here": self.jobs.runner.running_here,
                            "store_error": self.jobs.runner.last_error}
        if counts is not None:
            body["replicas"] = counts.as_dict()
            if counts.running == 0:
                if counts.scales_to_zero and not counts.at_zero:
                    # Waking from zero: requests wait for the replica, as the first did, so
                    # the service stays ready instead of dropping out for the cold start.
                    body["model"] = {"model_id": self._args.model.id, "scaled_to_zero": True,
                                     "starting": True}
                    return JSONResponse(body)
                if not counts.at_zero:
                    return APIError(
                        503, "not_ready",
                        f"The model is starting: {counts.starting} of {counts.target} "
                        "replicas loading.",
                    ).response()
                # Scaled to zero on purpose: ready to take a request (which starts a
                # replica), and asked without one, so probes never wake the pool.
                body["model"] = {"model_id": self._args.model.id, "scaled_to_zero": True}
                return JSONResponse(body)
            if counts.scales_to_zero:
                # A pool that may idle at zero counts every call as load: RUNNING replicas
                # have loaded and warmed up, which is what this probe asks.
                body["model"] = {"model_id": self._args.model.id, "scaled_to_zero": False}
                return JSONResponse(body)
        try:
            body["model"] = await self._fetch_model_info()
        except APIError as exc:
            return exc.response()
        return JSONResponse(body)

    async def _fetch_model_info(self, timeout_s: float | None = None) -> dict:
        try:
            info = await asyncio.wait_for(
                self._ready_call(), timeout=timeout_s or self._args.readiness_timeout_s
            )
        except asyncio.TimeoutError:
            raise APIError(503, "not_ready", "The model is still loading.") from None
        except Exception as exc:  # noqa: BLE001 - any handle failure means not ready
            raise APIError(503, "not_ready", f"The model is unavailable: {exc}") from None
        self._model_info = info
        return info

    async def _ready_call(self) -> dict:
        return await self._model.ready.remote()

    @api.get("/v1/models", summary="The models this service serves.")
    async def list_models(self) -> dict:
        settings = self._args.model
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "owned_by": "serve_app", "root": settings.id}
                for name in (settings.name, *settings.aliases)
            ],
        }

    # ---- live transcription ---------------------------------------------------------

    @api.websocket("/v1/realtime")
    async def realtime(self, websocket: WebSocket) -> None:
        """OpenAI's Realtime API in transcription mode (docs/realtime.md)."""
        request_id = websocket.headers.get("x-request-id") or uuid.uuid4().hex
        try:
            info = await self._admit_session(websocket)
        except APIError as exc:
            self.metrics.rejections.inc(tags={"reason": "auth" if exc.status == 401
                                              else "realtime"})
            await refuse(websocket, exc)
            return
        settings = self._args.model
        beta = "realtime=v1" in websocket.headers.get("openai-beta", "")
        decoder = LiveDecoder(self._transcriber, self._model, self.speech, self._args,
                              self.metrics, request_id)

        def make_session(send) -> RealtimeSession:
            return RealtimeSession(
                send, decoder, self._args.realtime, model_name=settings.name,
                accepts_model=settings.accepts, languages=tuple(info.get("languages") or ()),
                beta=beta)

        # _admit_session reserved the session's slot; run_session gives it back.
        await run_session(websocket, self._sessions, make_session, self.metrics)

    async def _admit_session(self, websocket: WebSocket) -> dict:
        """The handshake's checks, in the order a client can fix them; the model's
        abilities (languages) when admitted."""
        if not self._args.realtime.enabled:
            raise APIError(404, "not_found", "Live transcription is turned off here.")
        key = requested_key(websocket)
        self.auth.check("/v1/realtime", f"Bearer {key}" if key else None)
        intent = websocket.query_params.get("intent")
        if intent != "transcription":
            raise invalid_parameter(
                "intent", "This service serves transcription sessions: connect to "
                "/v1/realtime?intent=transcription.")
        model = websocket.query_params.get("model")
        if model:
            check_model(model, self._args.model.accepts, self._args.model.name)
        if not self.speech.ready:
            raise APIError(503, "not_ready", "The speech detector is unavailable: "
                           f"{self.speech.error}",
                           headers={"Retry-After": str(self._args.admission.retry_after_s)})
        if not self._sessions.reserve():
            raise APIError(
                503, "overloaded",
                f"This replica holds its most live sessions "
                f"({self._args.realtime.max_sessions}) or is draining; retry after the "
                "indicated delay.",
                headers={"Retry-After": str(self._args.admission.retry_after_s)})
        try:
            return self._model_info or await self._fetch_model_info(
                self._args.limits.timeout_base_s)
        except BaseException:
            self._sessions.closed()
            raise

    # ---- transcription ------------------------------------------------------------

    @api.post(
        "/v1/audio/transcriptions",
        summary="Transcribe audio (OpenAI-compatible); stream=true sends server-sent events.",
        openapi_extra={"requestBody": TRANSCRIPTION_REQUEST_BODY},
        responses=ERROR_RESPONSES,
    )
    async def transcriptions(self, request: Request) -> Response:
        return await self._handle(request, task="transcribe")

    @api.post(
        "/v1/audio/translations",
        summary="Translate speech into English text (Whisper models).",
        openapi_extra={"requestBody": TRANSCRIPTION_REQUEST_BODY},
        responses=ERROR_RESPONSES,
    )
    async def translations(self, request: Request) -> Response:
        return await self._handle(request, task="translate")

    @api.post(
        "/v1/audio/transcriptions/batch",
        summary="Several files in one request; one result (or error) per file, in order.",
        openapi_extra={"requestBody": BATCH_REQUEST_BODY},
        responses=ERROR_RESPONSES,
    )
    async def transcriptions_batch(self, request: Request) -> JSONResponse:
        uploads, fields = await read_uploads(
            request, self._args.limits.max_upload_bytes, self._args.limits.max_files_per_batch
        )
        params, options, speech = await self._validated(fields, "transcribe")
        if params.stream:
            raise invalid_parameter("stream", "Streaming is not available for batches.")
        no_store = _no_store(request)
        outcomes = await asyncio.gather(
            *(self._transcribe(u, options, speech, request, no_store) for u in uploads),
            return_exceptions=True,
        )
        results = []
        for index, (upload, outcome) in enumerate(zip(uploads, outcomes)):
            item = {"index": index, "filename": upload.filename}
            if isinstance(outcome, APIError):
                item.update(status=outcome.status, **outcome.body())
            elif isinstance(outcome, BaseException):
                logger.error("request_id=%s file %d failed: %r", request.state.request_id, index, outcome)
                item.update(status=500, **APIError(500, "inference_failed", "Failed.").body())
            else:
                item.update(status=200, response=render_body(
                    outcome[0], params.response_format, segments=params.wants_segments,
                    words=params.wants_words))
            results.append(item)
        return JSONResponse({"object": "list", "data": results})

    # ---- jobs -------------------------------------------------------------------------

    def _job_service(self) -> JobService:
        if self._jobs_error is not None:
            raise APIError(503, "store_unavailable",
                           f"The job store could not be opened: {self._jobs_error}",
                           headers={"Retry-After": str(self._args.admission.retry_after_s)})
        if self.jobs is None:
            raise APIError(404, "not_found", "Jobs are turned off here.")
        return self.jobs

    @staticmethod
    def _owner(request: Request) -> str:
        """The submitting key's hash: the middleware has already checked the key."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return owner_of(token.strip() if scheme.lower() == "bearer" and
                        request.app.state.ingress.auth.enabled else None)

    async def _job_options(self, fields: list, task: str) -> tuple[DecodeOptions, SpeechOptions]:
        """A job's options, from the fields it was submitted with. Its words are timed
        wherever the model can, so its one stored result renders in every format."""
        _, options, speech = await self._validated(_transcription_fields(fields), task)
        info = self._model_info or {}
        timed = task == "transcribe" and not info.get("word_timestamps_unavailable")
        return dataclasses.replace(options, word_timestamps=timed), speech

    @api.post(
        "/v1/audio/transcriptions/jobs",
        status_code=202,
        summary="Submit audio as a durable job: 202 at once with the job and its Location; "
        "poll it, or get a signed callback when it ends.",
        openapi_extra={"requestBody": JOB_REQUEST_BODY},
        responses=JOB_ERROR_RESPONSES,
    )
    async def submit_job(self, request: Request) -> JSONResponse:
        jobs = self._job_service()
        upload = await read_upload(request, self._args.limits.max_upload_bytes)
        record, created = await jobs.submit(
            upload, "transcribe", self._owner(request), request.headers.get("idempotency-key"))
        location = f"{request.scope.get('root_path', '')}/v1/audio/transcriptions/jobs/{record.id}"
        logger.info("request_id=%s job_id=%s %s", request.state.request_id, record.id,
                    "submitted" if created else "found by its Idempotency-Key")
        return JSONResponse(record.public(), status_code=202 if created else 200,
                            headers={"Location": location})

    @api.get(
        "/v1/audio/transcriptions/jobs",
        summary="Your jobs, newest first: `limit` per page, `after` a job id, `status` a filter.",
        responses={k: v for k, v in JOB_ERROR_RESPONSES.items() if k in (400, 401, 503)},
    )
    async def list_jobs(self, request: Request, limit: int = 20, after: str | None = None,
                        status: str | None = None) -> JSONResponse:
        page, has_more = await self._job_service().list(self._owner(request), status, limit,
                                                        after)
        return JSONResponse({
            "object": "list", "data": [r.public() for r in page], "has_more": has_more,
            "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
        })

    @api.get(
        "/v1/audio/transcriptions/jobs/{job_id}",
        summary="A job's status: queued, running (with progress), completed, failed (with "
        "the error) or cancelled.",
        responses={k: v for k, v in JOB_ERROR_RESPONSES.items() if k in (401, 404, 503)},
    )
    async def get_job(self, request: Request, job_id: str) -> JSONResponse:
        record = await self._job_service().get(job_id, self._owner(request))
        return JSONResponse(record.public())

    @api.get(
        "/v1/audio/transcriptions/jobs/{job_id}/result",
        summary="A completed job's transcript in any response_format (and "
        "timestamp_granularities[]), as the synchronous endpoint renders it.",
        responses={k: v for k, v in JOB_ERROR_RESPONSES.items()
                   if k in (400, 401, 404, 409, 503)},
    )
    async def job_result(self, request: Request, job_id: str) -> Response:
        jobs = self._job_service()
        owner = self._owner(request)
        record = await jobs.get(job_id, owner)
        # The job's own response_format unless the query names another.
        submitted = [(k, v) for k, v in record.fields
                     if k in RESULT_FIELDS]
        query = list(request.query_params.multi_items())
        asked = {k.removesuffix("[]") for k, _ in query}
        items = [(k, v) for k, v in submitted if k.removesuffix("[]") not in asked] + query
        params = parse_params(items)
        transcription = await jobs.result(job_id, owner)
        request.state.audio_seconds += transcription.duration
        response = render(transcription, params.response_format, record.task,
                          params.wants_segments, params.wants_words)
        response.headers["X-Audio-Duration"] = f"{transcription.duration:.3f}"
        return response

    @api.delete(
        "/v1/audio/transcriptions/jobs/{job_id}",
        summary="Cancel a queued or running job, or delete an ended one; its audio and "
        "result are deleted.",
        responses={k: v for k, v in JOB_ERROR_RESPONSES.items() if k in (401, 404, 503)},
    )
    async def delete_job(self, request: Request, job_id: str) -> JSONResponse:
        record = await self._job_service().cancel(job_id, self._owner(request))
        return JSONResponse({"id": record.id, "object": "transcription.job.deleted",
                             "deleted": True, "status": record.status.value})

    @api.post(
        "/v1/audio/speech-timestamps",
        summary="Where the speech is: segments found by the speech detector, no model call.",
        openapi_extra={"requestBody": SPEECH_TIMESTAMPS_REQUEST_BODY},
        responses={k: v for k, v in ERROR_RESPONSES.items() if k not in (404, 500)},
    )
    async def speech_timestamps(self, request: Request) -> JSONResponse:
        upload = await read_upload(request, self._args.limits.max_upload_bytes)
        speech = parse_params(upload.fields, SpeechParams).speech_options(self._args.speech)
        speech = dataclasses.replace(speech, enabled=True)  # vad_filter=false makes no sense here
        self._transcriber.check_detector(speech)
        audio, reservation = await self._transcriber.decode_and_admit(upload.data)
        try:
            duration = audio.size / SAMPLE_RATE
            request.state.audio_seconds += duration
            analysis = await self._transcriber.find_speech(audio, speech)
        finally:
            reservation.release()
        segments = [
            {"start": round(start / SAMPLE_RATE, 3), "end": round(end / SAMPLE_RATE, 3)}
            for start, end in analysis.segments
        ]
        return JSONResponse(
            {
                "object": "speech_timestamps",
                "duration": round(duration, 3),
                "speech_duration": round(analysis.speech_samples / SAMPLE_RATE, 3),
                "segments": segments,
            }
        )

    async def _handle(self, request: Request, task: str) -> Response:
        upload = await read_upload(request, self._args.limits.max_upload_bytes)
        params, options, speech = await self._validated(upload.fields, task)
        if params.stream:
            return await self._stream(upload, options, speech, request)
        transcription, cache_hit = await self._transcribe(
            upload, options, speech, request, _no_store(request)
        )
        response = render(transcription, params.response_format, task,
                          params.wants_segments, params.wants_words)
        response.headers["X-Cache"] = "hit" if cache_hit else "miss"
        response.headers["X-Audio-Duration"] = f"{transcription.duration:.3f}"
        return response

    async def _validated(
        self, fields: list, task: str
    ) -> tuple[TranscriptionParams, DecodeOptions, SpeechOptions]:
        params = parse_params(fields)
        speech = params.speech_options(self._args.speech)
        check_model(params.model, self._args.model.accepts, self._args.model.name)
        # A new ingress replica learns the model's abilities on its first request; it waits
        # as long as a request may (not the readiness probe's few seconds) for a model
        # replica that is still loading.
        info = self._model_info or await self._fetch_model_info(
            self._args.limits.timeout_base_s
        )
        if task == "translate" and not info["can_translate"]:
            raise invalid_parameter(
                "model", f"The {info['family']} model cannot translate; use transcriptions."
            )
        languages = info.get("languages") or ()
        if params.language and languages and params.language not in languages:
            raise invalid_parameter(
                "language",
                f"'{params.language}' is not supported by this model "
                f"(supported: {', '.join(sorted(languages))}).",
            )
        if params.wants_words:
            self._check_words(params, task, info)
        # Subtitles and segments are timed by the words where they can be (+~11 % per file,
        # docs/performance.md); json and text pay nothing.
        timed = (params.response_format in TIMED_FORMATS and task == "transcribe"
                 and not params.stream and not info.get("word_timestamps_unavailable"))
        options = DecodeOptions(
            language=params.language, task=task, prompt=params.prompt,
            temperature=params.temperature, word_timestamps=params.wants_words or timed,
        )
        return params, options, speech

    @staticmethod
    def _check_words(params: TranscriptionParams, task: str, info: dict) -> None:
        """400 for word timestamps where they cannot be given, with the reason."""
        def refuse(message: str) -> APIError:
            return invalid_parameter("timestamp_granularities", message)

        # OpenAI's rule: timestamps come in verbose_json only.
        if params.response_format != "verbose_json" or params.stream:
            raise refuse("'word' timestamps need response_format=verbose_json, without stream.")
        if task == "translate":
            raise refuse("Word timestamps are not available for translations: the English "
                         "words do not follow the other language's audio word by word.")
        if info.get("word_timestamps_unavailable"):
            raise refuse("Word timestamps are not available for this model: "
                         f"{info['word_timestamps_unavailable']}.")

    async def _transcribe(
        self,
        upload: Upload,
        options: DecodeOptions,
        speech: SpeechOptions,
        request: Request,
        no_store: bool,
    ):
        """(transcript, cache_hit) for one uploaded file."""
        started = time.monotonic()
        key = self._transcriber.key_for(upload.data, options, speech, no_store)
        cached = await self._transcriber.cached(key)
        if cached is not None:
            request.state.cache_hit = True
            request.state.audio_seconds += cached.duration
            self.metrics.audio_seconds_transcribed.inc(max(cached.duration, 1e-9))
            return cached, True
        request.state.cache_hit = False
        job = await self._transcriber.prepare(
            upload.data, options, speech, request.state.request_id, key
        )
        try:
            request.state.audio_seconds += job.duration
            transcription = await self._transcriber.run(job)
        finally:
            job.reservation.release()
        self.metrics.audio_seconds_transcribed.inc(job.duration)
        self.metrics.real_time_factor.observe((time.monotonic() - started) / job.duration)
        return transcription, False

    async def _stream(
        self, upload: Upload, options: DecodeOptions, speech: SpeechOptions, request: Request
    ) -> Response:
        """OpenAI's transcription events: text deltas as chunks finish, then done."""
        key = self._transcriber.key_for(upload.data, options, speech, _no_store(request))
        job = await self._transcriber.prepare(
            upload.data, options, speech, request.state.request_id, key
        )
        request.state.audio_seconds += job.duration
        return StreamingResponse(
            self._events(job, started=time.monotonic()), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Audio-Duration": f"{job.duration:.3f}"},
        )

    async def _events(self, job: Job, started: float) -> AsyncIterator[str]:
        results = []
        try:
            async for result in self._transcriber.results_in_order(job):
                results.append(result)
                if result.text.strip():
                    prefix = " " if any(r.text.strip() for r in results[:-1]) else ""
                    yield _sse({"type": "transcript.text.delta", "delta": prefix + result.text.strip()})
            transcription = self._transcriber.finish(job, results)
            self.metrics.audio_seconds_transcribed.inc(max(job.duration, 1e-9))
            self.metrics.real_time_factor.observe((time.monotonic() - started) / job.duration)
            yield _sse({"type": "transcript.text.done", "text": transcription.text})
        except APIError as exc:
            yield _sse({"type": "error", **exc.body()})
        finally:
            job.reservation.release()

