"""HTTP ingress: validation, decoding, cache, chunk fan-out and rendering.

Runs on CPU and never imports torch. Audio crosses to the model deployment as compact
float32 arrays of at most 30 s, so chunks from every request batch together.
"""

# No `from __future__ import annotations`: FastAPI must see real types on the routes
# that Serve rebinds, or it mistakes `request: Request` for a body field.

import asyncio
import logging
import time
import uuid

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from serve_app.audio import SAMPLE_RATE, decode_audio
from serve_app.backends.base import ChunkResult, DecodeOptions
from serve_app.cache import TranscriptionCache, cache_key, content_hash, is_cacheable
from serve_app.chunking import split_into_chunks
from serve_app.config import AppArgs
from serve_app.errors import APIError, from_http_status, invalid_parameter
from serve_app.formats import render
from serve_app.metrics import IngressMetrics
from serve_app.openapi import ERROR_RESPONSES, TRANSCRIPTION_REQUEST_BODY
from serve_app.params import TranscriptionParams, check_model, parse_params
from serve_app.transcript import Transcription, merge_chunk_results
from serve_app.upload import read_upload

logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="ASR service",
    description="OpenAI-compatible speech recognition on Ray Serve.",
    version="0.1.0",
)


@api.exception_handler(APIError)
async def _api_error(_: Request, exc: APIError) -> JSONResponse:
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


@api.middleware("http")
async def _request_context(request: Request, call_next) -> Response:
    request_id = _request_id(request)
    request.state.request_id = request_id
    started = time.monotonic()
    try:
        response = await call_next(request)
    except Exception:  # noqa: BLE001 - the last line of defence against a bare 500
        logger.exception("request %s failed unexpectedly", request_id)
        response = APIError(500, "internal_error", "Internal error; see server logs.").response()
    logger.info(
        "request_id=%s method=%s path=%s status=%d latency_ms=%.0f",
        request_id,
        request.method,
        request.url.path,
        response.status_code,
        1000 * (time.monotonic() - started),
    )
    return response


@serve.deployment(name="ASRIngress", max_ongoing_requests=64)
@serve.ingress(api)
class ASRIngress:
    def __init__(self, model: DeploymentHandle, args: AppArgs | dict) -> None:
        self._model = model
        self._args = AppArgs.model_validate(args)
        self._cache = TranscriptionCache(self._args.cache.max_bytes, self._args.cache.ttl_s)
        self._model_info: dict | None = None
        self._metrics = IngressMetrics()

    # ---- health -------------------------------------------------------------------

    @api.get("/healthz", summary="Liveness: the ingress process answers.")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get(
        "/readyz",
        summary="Readiness: a model replica is loaded, warmed up and answering.",
        responses={503: ERROR_RESPONSES[503]},
    )
    async def readyz(self) -> JSONResponse:
        try:
            info = await self._fetch_model_info()
        except APIError as exc:
            return exc.response()
        return JSONResponse({"status": "ready", "model": info})

    async def _fetch_model_info(self) -> dict:
        try:
            info = await asyncio.wait_for(
                self._ready_call(), timeout=self._args.readiness_timeout_s
            )
        except asyncio.TimeoutError:
            raise APIError(503, "not_ready", "The model is still loading.") from None
        except Exception as exc:  # noqa: BLE001 - any handle failure means not ready
            raise APIError(503, "not_ready", f"The model is unavailable: {exc}") from None
        self._model_info = info
        return info

    async def _ready_call(self) -> dict:
        return await self._model.ready.remote()

    async def _info(self) -> dict:
        return self._model_info or await self._fetch_model_info()

    # ---- models -------------------------------------------------------------------

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

    # ---- transcription ------------------------------------------------------------

    @api.post(
        "/v1/audio/transcriptions",
        summary="Transcribe audio (OpenAI-compatible).",
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

    async def _handle(self, request: Request, task: str) -> Response:
        started = time.monotonic()
        limits = self._args.limits
        upload = await read_upload(request, limits.max_upload_bytes)
        params = parse_params(upload.fields)
        check_model(params.model, self._args.model.accepts, self._args.model.name)
        options = await self._decode_options(params, task)
        transcription, cache_hit = await self._transcribe(upload.data, options, request)
        if transcription.duration > 0:
            self._metrics.audio_seconds_transcribed.inc(transcription.duration)
            self._metrics.real_time_factor.observe(
                (time.monotonic() - started) / transcription.duration
            )
        response = render(transcription, params.response_format, task)
        response.headers["X-Cache"] = "hit" if cache_hit else "miss"
        response.headers["X-Audio-Duration"] = f"{transcription.duration:.3f}"
        return response

    async def _decode_options(self, params: TranscriptionParams, task: str) -> DecodeOptions:
        info = await self._info()
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
        return DecodeOptions(
            language=params.language,
            task=task,
            prompt=params.prompt,
            temperature=params.temperature,
        )

    async def _transcribe(
        self, data: bytes, options: DecodeOptions, request: Request
    ) -> tuple[Transcription, bool]:
        """The transcript, and whether it came from the cache."""
        use_cache = self._args.cache.enabled and is_cacheable(options)
        key = cache_key(content_hash(data), self._args.model.id, options) if use_cache else ""
        if use_cache:
            cached = self._cache.get(key)
            self._metrics.cache_lookups.inc(tags={"result": "hit" if cached else "miss"})
            if cached is not None:
                return cached, True
        audio = await asyncio.to_thread(decode_audio, data, self._args.limits.max_audio_seconds)
        duration = audio.size / SAMPLE_RATE
        self._metrics.audio_seconds_received.inc(duration)  # decode_audio never returns empty
        chunks = split_into_chunks(audio)
        results = await self._fan_out(audio, chunks, options)
        failed = [r for r in results if r.error]
        if failed:
            logger.error(
                "request_id=%s %d of %d chunks failed: %s",
                request.state.request_id,
                len(failed),
                len(results),
                failed[0].error,
            )
            raise APIError(500, "inference_failed", "The model failed on this audio.")
        transcription = merge_chunk_results(chunks, results, duration, options.language)
        if use_cache:
            evictions_before = self._cache.evictions
            self._cache.put(key, transcription)
            if self._cache.evictions > evictions_before:
                self._metrics.cache_evictions.inc(self._cache.evictions - evictions_before)
            self._metrics.cache_bytes.set(self._cache.bytes_used)
        return transcription, False

    async def _fan_out(
        self, audio: np.ndarray, chunks: list, options: DecodeOptions
    ) -> list[ChunkResult]:
        """Every chunk through the batched model, at most N of this request in flight."""
        in_flight = asyncio.Semaphore(self._args.limits.max_chunks_in_flight)

        async def one(start: int, end: int) -> ChunkResult:
            async with in_flight:
                return await self._model.transcribe.remote(audio[start:end], options)

        outcomes = await asyncio.gather(
            *(one(c.start, c.end) for c in chunks), return_exceptions=True
        )
        results: list[ChunkResult] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                logger.error("chunk call failed: %s: %s", type(outcome).__name__, outcome)
                results.append(ChunkResult(error=f"{type(outcome).__name__}: {outcome}"))
            else:
                results.append(outcome)
        return results
