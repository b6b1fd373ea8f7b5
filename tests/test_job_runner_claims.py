"""The job runner's claims when the store's answer is lost: a claim that raised (a timeout
under load) may have leased a job all the same, and the runner takes that job up on the
same attempt instead of leaving it to wait out its lease and count another attempt.

The store is the real SQLite one; a wrapper lets a claim go through and then raises, as a
Redis reply that came too late does. The runner's model side is not reached: the job it
starts is recorded, not run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

from serve_app.config import AppArgs
from serve_app.jobs.records import JobRecord, JobStatus
from serve_app.jobs.runner import JobRunner, Lease
from serve_app.jobs.sqlite_store import SqliteJobStore
from serve_app.jobs.store import StoreUnavailable


class LostClaimAnswers:
    """The real store, except that the next `lose` claims go through and then raise."""

    def __init__(self, store: SqliteJobStore) -> None:
        self._store = store
        self.lose = 0

    async def claim(self, worker: str, lease_s: float, now: float) -> JobRecord | None:
        record = await self._store.claim(worker, lease_s, now)
        if self.lose:
            self.lose -= 1
            raise StoreUnavailable("Redis: TimeoutError: ")
        return record

    def __getattr__(self, name: str):
        return getattr(self._store, name)


class Gauge:
    def set(self, value: float, tags: dict | None = None) -> None:
        pass


def queued(job_id: str, created_at: float) -> JobRecord:
    return JobRecord(id=job_id, owner="owner", status=JobStatus.QUEUED, created_at=created_at,
                     task="transcribe", fields=[], filename="a.wav", audio_bytes=10)


def test_a_claim_whose_answer_was_lost_runs_its_job_on_the_same_attempt(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = LostClaimAnswers(SqliteJobStore(tmp_path / "jobs.sqlite3"))
        now = time.time()
        for job_id, created in (("first", now - 2), ("second", now - 1)):
            await store.submit(queued(job_id, created), b"a" * 10, 10_000)
        metrics = SimpleNamespace(jobs=Gauge(), jobs_oldest_queued_age=Gauge(),
                                  jobs_queued_bytes=Gauge(), jobs_backlog_audio=Gauge())
        runner = JobRunner(store, SimpleNamespace(detector_ready=True), AppArgs(), metrics,
                           validate=None, replica_id="replica")
        started: list[Lease] = []
        runner._start_job = started.append  # record the job instead of transcribing it

        store.lose = 1
        try:
            await runner._tick()
        except StoreUnavailable:
            pass  # the loop logs it and ticks again
        else:
            raise AssertionError("the lost answer did not reach the runner")
        assert started == []
        lost = await store.get("first")
        assert (lost.status, lost.attempts) == (JobStatus.RUNNING, 1)

        await runner._tick()

        # The job the lost claim leased runs now, on its first attempt, under that claim's
        # token; the next claims go on to the next job.
        assert [lease.job_id for lease in started][:2] == ["first", "second"]
        assert started[0].record.attempts == 1
        assert (await store.get("first")).attempts == 1
        assert await store.claimed_by(started[0].token) == await store.get("first")
        await store.close()

    asyncio.run(scenario())
