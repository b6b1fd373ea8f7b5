"""Where jobs live: one interface, an embedded SQLite store and a Redis store.

Every claim is a lease with an expiry, renewed by a heartbeat while the job runs (the
python-arq pattern): a replica that dies holding a job stops renewing, and once the lease
runs out the next replica that asks takes the job over. Chunk results are saved as they
arrive, so the new owner resumes from what was done. No well-kept queue library serves both
an embedded store and Redis from inside Serve replicas (arq and RQ need Redis and their own
worker processes; huey's SQLite mode has no leases), so this is a small lease table.

Any method may raise `StoreUnavailable`; routes answer it with 503 `store_unavailable`.
"""

from __future__ import annotations

from typing import Protocol

from serve_app.jobs.records import CallbackState, JobRecord, JobStats, JobStatus


class StoreUnavailable(Exception):
    """The store did not answer (Redis down, the database locked past its timeout)."""


class QueueFull(Exception):
    """The queued jobs' audio would pass the configured bound."""


class JobStore(Protocol):
    kind: str

    async def submit(self, record: JobRecord, audio: bytes,
                     max_queued_bytes: int) -> tuple[JobRecord, bool]:
        """Store a queued job with its audio: (the job, True). When the owner already has a
        job with the same idempotency key: (that job, False), storing nothing. QueueFull
        when the queued jobs' audio with this one would pass `max_queued_bytes`."""

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def list(self, owner: str, status: JobStatus | None, limit: int,
                   after: str | None) -> list[JobRecord]:
        """The owner's jobs, newest first, starting after the job `after` (a cursor)."""

    async def audio(self, job_id: str) -> bytes | None: ...

    async def claim(self, worker: str, lease_s: float, now: float) -> JobRecord | None:
        """The oldest queued job, or a running one whose lease ran out (its owner is gone),
        now running under `worker`'s lease with one more attempt; None when there is none."""

    async def claimed_by(self, worker: str) -> JobRecord | None:
        """The running job whose lease `worker` holds, if any. A claim whose answer was lost
        (a timeout under load) may still have gone through: asking with its worker finds
        that job, to run it on the same attempt instead of waiting out its lease."""

    async def renew(self, job_id: str, worker: str, lease_s: float, now: float) -> bool:
        """Extend the lease; False when the job is no longer this worker's (cancelled,
        deleted, or taken over after the lease ran out)."""

    async def progress(self, job_id: str, worker: str, done_s: float,
                       duration_s: float) -> bool: ...

    async def save_chunk(self, job_id: str, worker: str, chunk: str, data: bytes) -> bool:
        """Keep one chunk's result (named by its sample range) for a resumed run."""

    async def chunks(self, job_id: str) -> dict[str, bytes]: ...

    async def release(self, job_id: str, worker: str, error: dict | None) -> bool:
        """Give a running job back to the queue: an attempt failed and another may succeed
        (`error` says why), or this replica is going away (no error: the attempt does not
        count against the job's bound)."""

    async def finish(self, job_id: str, worker: str, status: JobStatus, result: bytes | None,
                     error: dict | None, now: float, expires_at: float) -> bool:
        """End the job (completed or failed) if it is still this worker's: keep the result,
        delete the audio and chunk results, and owe the callback if there is one."""

    async def result(self, job_id: str) -> bytes | None: ...

    async def cancel(self, job_id: str, now: float, expires_at: float) -> JobRecord | None:
        """A queued or running job becomes cancelled; its audio and chunk results go."""

    async def delete(self, job_id: str) -> None:
        """The job, its audio and its result, gone."""

    async def claim_callback(self, worker: str, lease_s: float,
                             now: float) -> JobRecord | None:
        """An ended job whose callback is owed and not being sent by a live replica."""

    async def callback_done(self, job_id: str, state: CallbackState) -> None: ...

    async def expire(self, now: float) -> int:
        """Delete ended jobs past their expiry; how many went."""

    async def stats(self, now: float) -> JobStats: ...

    async def close(self) -> None: ...
