"""Runs jobs from the shared queue inside each ingress replica.

A replica claims a job under a lease, renews it while the job runs, and saves each chunk's
result as it arrives. If the replica dies (killed, drained by `serve deploy`, its node
lost) the renewals stop; once the lease runs out another replica claims the job and
resumes after the chunks already saved. Jobs go to the model deployment as the lowest
priority class (serve_app.priority), `jobs.max_chunks_in_flight` chunks at a time, so a
backlog never delays live or synchronous requests by more than the batch in progress.

A job that fails for a reason of its own (audio that does not decode, a parameter the model
refuses) fails at once; a failure of the service (the model, the store) gives the job back
for another attempt, up to `jobs.max_attempts`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Awaitable, Callable

from serve_app.audio import decode_audio
from serve_app.backends.base import ChunkResult, DecodeOptions
from serve_app.chunking import Chunk
from serve_app.config import AppArgs
from serve_app.errors import APIError
from serve_app.jobs import callbacks
from serve_app.jobs.records import CallbackState, JobRecord, JobStatus
from serve_app.jobs.store import JobStore, StoreUnavailable
from serve_app.metrics import IngressMetrics
from serve_app.priority import Priority
from serve_app.speech import SpeechOptions
from serve_app.store import codec
from serve_app.transcriber import Transcriber

logger = logging.getLogger("ray.serve")

# What a job runs with: its validated options, from the fields it was submitted with.
Validate = Callable[[list, str], Awaitable[tuple[DecodeOptions, SpeechOptions]]]

EXPIRE_EVERY_S = 60.0  # how often a replica deletes ended jobs past their expiry
STATS_EVERY_S = 5.0  # how often the job gauges are refreshed from the store
CALLBACK_MAX_DELAY_S = 300.0  # the longest wait between two deliveries of one callback
# Failures of the service rather than the job (not ready, overloaded, a time-out): the job
# waits in the queue without using an attempt, and the replica claims nothing this long.
TRANSIENT_STATUSES = frozenset({503, 504})
TRANSIENT_PAUSE_S = 10.0
DRAIN_POLL_S = 2.0  # how often a replica running jobs asks whether it is being stopped
FINISH_TRIES = 4  # a finished transcript is kept through a few seconds of store trouble


class LeaseLost(Exception):
    """The job is no longer this replica's: cancelled, deleted or taken over."""


@dataclass
class Lease:
    """One claim of one job: the store knows its holder by `token`, new for each claim."""

    record: JobRecord
    token: str
    finishing: bool = False  # its finish is under way: a refused renewal is no loss

    @property
    def job_id(self) -> str:
        return self.record.id


def chunk_name(chunk: Chunk) -> str:
    """A chunk's name in the store: its sample range, so a resumed run reuses a saved
    result only for the very same audio."""
    return f"{chunk.start}-{chunk.end}"


class JobRunner:
    def __init__(self, store: JobStore, transcriber: Transcriber, args: AppArgs,
                 metrics: IngressMetrics, validate: Validate, replica_id: str,
                 replica_state: Callable[[], Awaitable[str | None]] | None = None) -> None:
        self.store = store
        self._transcriber = transcriber
        self._args = args
        self._settings = args.jobs
        self._metrics = metrics
        self._validate = validate
        # A new name per process: a restarted replica must not inherit its former leases.
        self.worker = f"{replica_id}:{uuid.uuid4().hex[:8]}"
        self._running: dict[str, asyncio.Task] = {}
        self._leases: dict[str, Lease] = {}
        self._pause_claims_until = 0.0
        # Serve drains a replica (a redeploy, a scale-down) without telling it: while it runs
        # jobs it asks the controller, and once it is stopping gives them back at once
        # instead of finishing them through the drain.
        self._replica_state = replica_state
        self._next_state_check = 0.0
        self.draining = False
        self._callbacks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._next_expiry = 0.0
        self._next_stats = 0.0
        self.last_error: str | None = None
        # The token of a claim that raised (a timeout): Redis may have run it all the same,
        # leasing a job to a token nothing here runs. Asked for before the next claim.
        self._unanswered_claim: str | None = None
        self.backlog_audio_s = 0.0  # the store's, as last read (the autoscaling policy's)

    # ---- the loop -------------------------------------------------------------------

    def start(self) -> None:
        """Start the background loop (idempotent; needs the replica's event loop)."""
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.ensure_future(self._loop())

    def wake(self) -> None:
        """A job was submitted or ended here: look at the queue now, not at the next poll."""
        self._wake.set()

    @property
    def running_here(self) -> int:
        return len(self._running)

    async def _loop(self) -> None:
        while True:
            try:
                await self._tick()
                self.last_error = None
            except StoreUnavailable as exc:
                if self.last_error is None:
                    logger.warning("jobs: the store is unavailable (%s); retrying", exc)
                self.last_error = str(exc)
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                logger.exception("jobs: the runner's loop failed; retrying")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self._settings.poll_interval_s)
            except asyncio.TimeoutError:
                pass

    async def _tick(self) -> None:
        now = time.time()
        if now >= self._next_expiry:
            self._next_expiry = now + EXPIRE_EVERY_S
            if expired := await self.store.expire(now):
                logger.info("jobs: deleted %d ended jobs past their expiry", expired)
        if now >= self._next_stats:
            self._next_stats = now + STATS_EVERY_S
            await self.refresh_gauges()
        if self._running and not self.draining and time.monotonic() >= self._next_state_check:
            self._next_state_check = time.monotonic() + DRAIN_POLL_S
            await self._check_draining()
        if self._unanswered_claim is not None:
            await self._take_up_unanswered_claim()
        while (len(self._running) < self._settings.concurrency
               and not self.draining
               and time.monotonic() >= self._pause_claims_until
               and self._transcriber.detector_ready):
            # A token per claim: a replica that takes up its own job again (its lease ran
            # out during a store outage) runs it once, and the old run stops.
            token = f"{self.worker}/{uuid.uuid4().hex[:8]}"
            self._unanswered_claim = token
            record = await self.store.claim(token, self._settings.lease_s, time.time())
            self._unanswered_claim = None
            if record is None:
                break
            self._start_job(Lease(record, token))
        while len(self._callbacks) < self._settings.concurrency * 4:
            record = await self.store.claim_callback(
                self.worker, self._callback_lease_s(), time.time())
            if record is None:
                break
            self._start_callback(record)

    async def _take_up_unanswered_claim(self) -> None:
        """Run the job a claim that raised did lease, on the attempt it counted: otherwise
        the job waits out its lease and its next claim counts another attempt (a claim
        timed out once in CI while its replica was busy, and the job was on attempt 2)."""
        token = self._unanswered_claim
        record = await self.store.claimed_by(token)
        self._unanswered_claim = None
        if record is None:
            return  # the claim did not go through, or its lease ran out meanwhile
        if self.draining:
            await self.store.release(record.id, token, None)  # at once, not at the lease's end
            return
        # Its lease began at the lost claim: a full one from now, as a claim gives.
        if not await self.store.renew(record.id, token, self._settings.lease_s, time.time()):
            return
        logger.info("job_id=%s taken up from a claim whose answer was lost (attempt %d)",
                    record.id, record.attempts)
        self._start_job(Lease(record, token))

    async def refresh_gauges(self) -> None:
        stats = await self.store.stats(time.time())
        for status in JobStatus:
            self._metrics.jobs.set(stats.counts.get(status, 0), tags={"status": status.value})
        self._metrics.jobs_oldest_queued_age.set(stats.oldest_queued_age_s)
        self._metrics.jobs_queued_bytes.set(stats.queued_bytes)
        self._metrics.jobs_backlog_audio.set(stats.backlog_audio_s)
        self.backlog_audio_s = stats.backlog_audio_s

    async def _check_draining(self) -> None:
        try:
            state = await self._replica_state() if self._replica_state else None
        except Exception:  # noqa: BLE001 - unknown: ask again next time
            return
        if state in ("STOPPING", "PENDING_MIGRATION"):
            self.draining = True
            logger.info("jobs: replica draining; giving %d running jobs back",
                        len(self._running))
            await self._give_back_all()

    async def stop(self) -> None:
        """The replica is going away: give its running jobs back to the queue now, so
        another replica resumes them without waiting for their leases to run out."""
        self.draining = True
        if self._loop_task is not None:
            self._loop_task.cancel()
        await self._give_back_all()

    async def _give_back_all(self) -> None:
        held = [(job_id, self._leases.get(job_id)) for job_id in self._running]
        for task in list(self._running.values()):
            task.cancel()
        for job_id, lease in held:
            if lease is None:
                continue
            try:
                if await self.store.release(job_id, lease.token, None):
                    logger.info("job_id=%s given back to the queue (replica stopping)", job_id)
            except StoreUnavailable:
                pass  # its lease runs out instead

    def cancel_here(self, job_id: str) -> None:
        """Stop a job this replica runs (it was cancelled through this replica)."""
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()

    # ---- one job --------------------------------------------------------------------

    def _start_job(self, lease: "Lease") -> None:
        if lease.record.attempts > 1:
            logger.info("job_id=%s resumed (attempt %d)", lease.job_id, lease.record.attempts)
        task = asyncio.ensure_future(self._run(lease))
        self._running[lease.job_id] = task
        self._leases[lease.job_id] = lease

        def forget(done: asyncio.Task) -> None:
            if self._running.get(lease.job_id) is done:  # not a later claim's task
                del self._running[lease.job_id]
                del self._leases[lease.job_id]

        task.add_done_callback(forget)

    async def _run(self, lease: "Lease") -> None:
        record = lease.record
        heartbeat = asyncio.ensure_future(self._keep_lease(lease, asyncio.current_task()))
        started = time.monotonic()
        try:
            if record.attempts > self._settings.max_attempts:
                # Every earlier run ended with its replica (killed, out of memory): this
                # audio is not replayed onto yet another one.
                raise APIError(500, "inference_failed", "The job's replica was lost in "
                               f"each of its {self._settings.max_attempts} attempts.")
            await self._execute(lease)
            self._metrics.jobs_finished.inc(tags={"status": "completed"})
            logger.info("job_id=%s completed in %.1f s", lease.job_id,
                        time.monotonic() - started)
        except asyncio.CancelledError:
            logger.info("job_id=%s stopped here (cancelled, or no longer this replica's)",
                        lease.job_id)
        except LeaseLost:
            logger.info("job_id=%s is no longer this replica's", lease.job_id)
        except StoreUnavailable as exc:
            # Not the job's fault, and nothing to record it in: its lease runs out and a
            # replica takes it up again, resuming after the chunks saved.
            logger.warning("job_id=%s paused: the store is unavailable (%s)", lease.job_id, exc)
        except APIError as exc:
            await self._failed(lease, exc)
        except Exception as exc:  # noqa: BLE001 - the service failed, not the job
            logger.exception("job_id=%s failed unexpectedly", lease.job_id)
            await self._failed(lease, APIError(500, "internal_error", type(exc).__name__))
        finally:
            heartbeat.cancel()
            self.wake()

    async def _failed(self, lease: "Lease", exc: APIError) -> None:
        error = exc.body()["error"]
        record = lease.record
        try:
            if exc.status in TRANSIENT_STATUSES:
                # The service is busy or starting (model not ready, detector missing, a
                # full queue): the job waits, this attempt not counted, and this replica
                # claims nothing for a while.
                self._pause_claims_until = time.monotonic() + TRANSIENT_PAUSE_S
                if await self.store.release(lease.job_id, lease.token, None):
                    logger.warning("job_id=%s waits: %s", lease.job_id, exc.code)
            elif exc.status < 500 or record.attempts >= self._settings.max_attempts:
                now = time.time()
                if await self.store.finish(lease.job_id, lease.token, JobStatus.FAILED, None,
                                           error, now, now + self._settings.result_ttl_s):
                    self._metrics.jobs_finished.inc(tags={"status": "failed"})
                    logger.warning("job_id=%s failed: %s", lease.job_id, exc.code)
            elif await self.store.release(lease.job_id, lease.token, error):
                logger.warning("job_id=%s attempt %d failed (%s); queued again",
                               lease.job_id, record.attempts, exc.code)
        except StoreUnavailable as store_exc:
            # The lease runs out and another replica tries again: nothing is lost.
            logger.warning("job_id=%s: the store is unavailable (%s)", lease.job_id, store_exc)

    async def _keep_lease(self, lease: "Lease", runner: asyncio.Task | None) -> None:
        interval = self._settings.lease_s / 3
        delay = interval
        while True:
            await asyncio.sleep(delay)
            try:
                held = await self.store.renew(lease.job_id, lease.token,
                                              self._settings.lease_s, time.time())
            except StoreUnavailable:
                delay = min(1.0, interval)  # the lease may still hold: try again soon
                continue
            except Exception:  # noqa: BLE001 - a heartbeat must not die unseen
                logger.exception("job_id=%s: renewing the lease failed", lease.job_id)
                delay = min(1.0, interval)
                continue
            delay = interval
            # A renewal refused just after the job's own finish is no loss of the lease.
            if not held and not lease.finishing and runner is not None:
                runner.cancel()
                return

    async def _execute(self, lease: "Lease") -> None:
        record = lease.record
        data = await self.store.audio(lease.job_id)
        if data is None:
            raise LeaseLost()  # cancelled between the claim and now
        options, speech = await self._validate(record.fields, record.task)
        transcriber = self._transcriber
        transcriber.check_detector(speech)  # 503 (transient) while it is missing
        # A 100 MB upload takes a while to hash: off the event loop.
        key = await asyncio.to_thread(transcriber.key_for, data, options, speech, False)
        transcription = await transcriber.cached(key)
        if transcription is None:
            audio = await asyncio.to_thread(decode_audio, data,
                                            self._args.limits.max_audio_seconds)
            del data
            # Jobs hold no admission capacity: the model sees them last (priority), and
            # their backlog is the job queue's, not the synchronous requests' wait.
            reservation = transcriber.admission.reserve(0.0, refusable=False)
            job = await transcriber.prepare_decoded(audio, reservation, options, speech,
                                                    f"job-{lease.job_id}", key,
                                                    priority=Priority.JOB)
            try:
                results = await self._results(lease, job)
                transcription = transcriber.finish(job, results)
            finally:
                reservation.release()
            self._metrics.audio_seconds_transcribed.inc(max(job.duration, 1e-9))
        result = await asyncio.to_thread(codec.encode, transcription)
        # All of it done (a cache hit included, which never reported progress).
        await self._progress(lease, transcription.duration, transcription.duration)
        lease.finishing = True
        for attempt in range(FINISH_TRIES):
            try:
                now = time.time()
                if not await self.store.finish(lease.job_id, lease.token, JobStatus.COMPLETED,
                                               result, None, now,
                                               now + self._settings.result_ttl_s):
                    raise LeaseLost()
                return
            except StoreUnavailable:
                if attempt == FINISH_TRIES - 1:
                    raise
                await asyncio.sleep(2.0 ** attempt)  # the transcript is worth waiting for

    async def _progress(self, lease: "Lease", done_s: float, total_s: float) -> None:
        """Best effort: a store hiccup costs a progress update, never the job."""
        try:
            await self.store.progress(lease.job_id, lease.token, done_s, total_s)
        except StoreUnavailable:
            pass

    async def _results(self, lease: "Lease", job) -> list[ChunkResult]:
        saved = await self.store.chunks(lease.job_id)
        known: dict[int, ChunkResult] = {}
        for index, chunk in enumerate(job.chunks):
            data = saved.get(chunk_name(chunk))
            result = codec.decode_chunk(data) if data is not None else None
            if result is not None:
                known[index] = result
        del saved
        if known:
            logger.info("job_id=%s resumes with %d of %d chunks done", lease.job_id,
                        len(known), len(job.chunks))
        resumed_prefix = next((i for i in range(len(job.chunks)) if i not in known),
                              len(job.chunks))
        await self._progress(lease, self._done_s(job, resumed_prefix), job.duration)
        results: list[ChunkResult] = []
        # No time budget: at the lowest priority a job waits as long as interactive traffic
        # needs; its lease, not a deadline, says whether anyone still runs it.
        stream = self._transcriber.results_in_order(
            job, known=known, max_in_flight=self._settings.max_chunks_in_flight,
            no_deadline=True)
        async for result in stream:
            index = len(results)
            results.append(result)
            if index not in known:
                try:
                    if not await self.store.save_chunk(
                            lease.job_id, lease.token, chunk_name(job.chunks[index]),
                            codec.encode_chunk(result)):
                        raise LeaseLost()
                except StoreUnavailable:
                    pass  # kept in memory: only a resumed run would miss it
            await self._progress(lease, self._done_s(job, index + 1), job.duration)
        return results

    @staticmethod
    def _done_s(job, chunks_done: int) -> float:
        """Audio seconds behind the last finished chunk (silence between chunks counts as
        done: it needs no model); all of it once every chunk is done."""
        if chunks_done >= len(job.chunks):
            return job.duration
        return job.chunks[chunks_done - 1].end_s if chunks_done else 0.0

    # ---- callbacks ------------------------------------------------------------------

    def _callback_lease_s(self) -> float:
        """Long enough for every attempt: another replica retries only after it."""
        settings = self._settings
        return settings.callback_max_attempts * (settings.callback_timeout_s
                                                 + CALLBACK_MAX_DELAY_S) + 60.0

    def _start_callback(self, record: JobRecord) -> None:
        task = asyncio.ensure_future(self._send_callback(record))
        self._callbacks.add(task)
        task.add_done_callback(self._callbacks.discard)

    async def _send_callback(self, record: JobRecord) -> None:
        try:
            secret = callbacks.load_secret(self._settings)
        except ValueError as exc:  # a malformed whsec_ secret: the operator's to fix
            logger.error("job_id=%s: %s", record.id, exc)
            secret = None
        if secret is None or not record.callback_url:
            logger.warning("job_id=%s: no callback secret configured; callback dropped",
                           record.id)
            state = CallbackState.FAILED
        else:
            state = await callbacks.deliver(
                record.callback_url, callbacks.job_event(record), f"evt_{record.id}",
                secret, self._settings, max_delay_s=CALLBACK_MAX_DELAY_S)
        self._metrics.job_callbacks.inc(tags={"result": state.value})
        try:
            await self.store.callback_done(record.id, state)
        except StoreUnavailable:
            pass  # delivered again once the callback lease runs out: at least once
