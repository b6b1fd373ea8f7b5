"""The jobs API behind its routes: submit, status, result, list, cancel; free of HTTP.

A job is owned by the API key that submitted it, stored as the key's SHA-256 (never the
key): another key's job is a 404, as if it did not exist. The submit validates everything a
synchronous request would (parameters, the model's abilities, the audio's container and
length) before it answers 202, so a job fails later only for what cannot be known without
decoding it all.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from typing import Awaitable, Callable

from serve_app.audio import SAMPLE_RATE, decode_audio, probe_duration
from serve_app.config import AppArgs
from serve_app.errors import APIError, invalid_parameter
from serve_app.jobs import callbacks
from serve_app.jobs.records import JobRecord, JobStatus
from serve_app.jobs.redis_store import RedisJobStore
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.sqlite_store import SqliteJobStore
from serve_app.jobs.store import JobStore, QueueFull, StoreUnavailable
from serve_app.params import parse_params
from serve_app.store import codec
from serve_app.transcript import Transcription
from serve_app.upload import Upload

MAX_IDEMPOTENCY_KEY_CHARS = 255
MAX_PAGE = 100
# Submit fields that belong to the job, not to the transcription it runs.
JOB_FIELDS = frozenset({"callback_url"})

Validate = Callable[[list, str], Awaitable[object]]


def open_job_store(args: AppArgs, app_name: str) -> JobStore:
    """Redis when the environment names one (as the result cache), else SQLite on disk.

    Each Serve application has a queue of its own, so two applications sharing a store
    never run each other's jobs on the wrong model.
    """
    url = os.environ.get(args.store.redis_url_env, "").strip()
    if url:
        return RedisJobStore(url, f"{args.store.key_prefix}{app_name}:", args.store.timeout_s)
    return SqliteJobStore(args.jobs.sqlite_path.format(app=app_name))


def owner_of(api_key: str | None) -> str:
    """Who a job belongs to: a hash of the key that submitted it ("" with keys off)."""
    return hashlib.sha256(api_key.encode()).hexdigest() if api_key else ""


def job_not_found(job_id: str) -> APIError:
    return APIError(404, "job_not_found", f"No job '{job_id}'.", param="job_id")


class JobService:
    def __init__(self, args: AppArgs, store: JobStore, runner: JobRunner,
                 validate: Validate) -> None:
        self._args = args
        self._settings = args.jobs
        self.store = store
        self.runner = runner
        self._validate = validate

    def unavailable(self, exc: Exception) -> APIError:
        return APIError(
            503, "store_unavailable", f"The job store is unavailable ({exc}); retry later.",
            headers={"Retry-After": str(self._args.admission.retry_after_s)})

    # ---- submit ---------------------------------------------------------------------

    async def submit(self, upload: Upload, task: str, owner: str,
                     idempotency_key: str | None) -> tuple[JobRecord, bool]:
        """(the job, whether it is new): an Idempotency-Key seen before returns its job."""
        if idempotency_key is not None and not (
                0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS):
            raise invalid_parameter("Idempotency-Key", "The Idempotency-Key header must be "
                                    f"1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters.")
        fields = [(k, v) for k, v in upload.fields if k not in JOB_FIELDS]
        # A DNS lookup: off the event loop.
        callback_url = await asyncio.to_thread(self._callback_url, upload.fields)
        if any(k == "stream" and str(v).lower() in ("true", "1") for k, v in fields):
            raise invalid_parameter("stream", "Jobs are not streamed; poll the job instead.")
        parse_params(fields)  # the result's default format and granularities, checked now
        await self._validate(fields, task)
        duration = await self._checked_duration(upload.data)
        record = JobRecord(
            id=f"job_{uuid.uuid4().hex}", owner=owner, status=JobStatus.QUEUED,
            created_at=time.time(), task=task, fields=[(k, str(v)) for k, v in fields],
            audio_bytes=len(upload.data), filename=upload.filename,
            callback_url=callback_url, idempotency_key=idempotency_key, duration_s=duration)
        try:
            record, created = await self.store.submit(record, upload.data,
                                                      self._settings.max_queued_bytes)
        except QueueFull:
            raise APIError(
                503, "overloaded", "The job queue holds its most audio; retry after the "
                "indicated delay.",
                headers={"Retry-After": str(max(60, self._args.admission.retry_after_s))},
            ) from None
        except StoreUnavailable as exc:
            raise self.unavailable(exc) from None
        if created:
            self.runner.wake()
        return record, created

    def _callback_url(self, fields: list) -> str | None:
        urls = [v for k, v in fields if k == "callback_url"]
        if len(urls) > 1:
            raise invalid_parameter("callback_url", "'callback_url' was given more than once.")
        if not urls or not urls[0]:
            return None
        try:
            secret = callbacks.load_secret(self._settings)
        except ValueError as exc:
            raise APIError(503, "callbacks_unavailable",
                           f"Callbacks are misconfigured on the server: {exc}",
                           headers={"Retry-After": "3600"}) from None
        return callbacks.validate_callback_url(str(urls[0]), self._settings, secret)

    async def _checked_duration(self, data: bytes) -> float | None:
        """The audio's length from its header; audio without a readable header is decoded
        now, so a file the job could never read is a 4xx at submit, not a failed job."""
        limit = self._args.limits.max_audio_seconds
        duration = await asyncio.to_thread(probe_duration, data)
        if duration is None:
            audio = await asyncio.to_thread(decode_audio, data, limit)
            return audio.size / SAMPLE_RATE
        if duration > limit:
            raise APIError(413, "audio_too_long",
                           f"Audio is {duration:.1f} s long; the limit is {limit:.0f} s.",
                           param="file")
        return duration

    # ---- read -----------------------------------------------------------------------

    async def get(self, job_id: str, owner: str) -> JobRecord:
        try:
            record = await self.store.get(job_id)
        except StoreUnavailable as exc:
            raise self.unavailable(exc) from None
        if record is None or record.owner != owner:
            raise job_not_found(job_id)
        return record

    async def list(self, owner: str, status: str | None, limit: int,
                   after: str | None) -> tuple[list[JobRecord], bool]:
        """(a page of the owner's jobs, newest first; whether more follow)."""
        try:
            wanted = JobStatus(status) if status else None
        except ValueError:
            raise invalid_parameter("status", "status must be one of "
                                    f"{', '.join(s.value for s in JobStatus)}.") from None
        if not 1 <= limit <= MAX_PAGE:
            raise invalid_parameter("limit", f"limit must be 1 to {MAX_PAGE}.")
        if after is not None:
            await self.get(after, owner)  # a cursor of another owner's is no cursor
        try:
            page = await self.store.list(owner, wanted, limit + 1, after)
        except StoreUnavailable as exc:
            raise self.unavailable(exc) from None
        return page[:limit], len(page) > limit

    async def result(self, job_id: str, owner: str) -> Transcription:
        record = await self.get(job_id, owner)
        if record.status != JobStatus.COMPLETED:
            detail = (f" It {record.status.value}: {record.error['message']}"
                      if record.error and record.status == JobStatus.FAILED else "")
            raise APIError(409, "result_not_ready",
                           f"Job '{job_id}' is {record.status.value}; its result exists once "
                           f"it has completed.{detail}", param="job_id")
        try:
            data = await self.store.result(job_id)
        except StoreUnavailable as exc:
            raise self.unavailable(exc) from None
        transcription = codec.decode(data) if data else None
        if transcription is None:  # expired between the two reads
            raise job_not_found(job_id)
        return transcription

    # ---- cancel and delete ----------------------------------------------------------

    async def cancel(self, job_id: str, owner: str) -> JobRecord:
        """A queued or running job is cancelled (its audio deleted; kept as `cancelled`
        until it expires); an ended job is deleted with its result."""
        record = await self.get(job_id, owner)
        now = time.time()
        try:
            if record.status.ended:
                await self.store.delete(job_id)
                return record
            cancelled = await self.store.cancel(job_id, now, now + self._settings.result_ttl_s)
        except StoreUnavailable as exc:
            raise self.unavailable(exc) from None
        self.runner.cancel_here(job_id)
        return cancelled or record
