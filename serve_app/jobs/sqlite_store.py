"""The embedded job store: one SQLite file on local disk, shared by the ingress replicas of
one node (WAL mode lets them read while one writes) and kept across restarts.

Each job's record is a JSON column; the columns beside it are what queries select on.
Every change is one `BEGIN IMMEDIATE` transaction, so a claim and a cancel never interleave.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

from serve_app.jobs.records import CallbackState, JobRecord, JobStats, JobStatus
from serve_app.jobs.store import QueueFull, StoreUnavailable

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000  # another replica's write in progress: wait this long, then 503

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    audio_bytes INTEGER NOT NULL,
    idempotency_key TEXT,
    worker TEXT,
    lease_until REAL,
    callback_state TEXT,
    callback_lease_until REAL,
    expires_at REAL,
    record TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, created_at);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created_at);
CREATE INDEX IF NOT EXISTS jobs_callbacks ON jobs(callback_state);
CREATE TABLE IF NOT EXISTS job_audio (id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS job_chunks (
    id TEXT NOT NULL, chunk TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (id, chunk));
CREATE TABLE IF NOT EXISTS job_results (id TEXT PRIMARY KEY, data BLOB NOT NULL);
"""


class SqliteJobStore:
    kind = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                     isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()  # one connection, used from worker threads in turn
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-store")
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint
            self._conn.executescript(SCHEMA)

    # ---- plumbing -----------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], T], write: bool = True) -> T:
        def locked() -> T:
            with self._lock:
                try:
                    if not write:
                        return work(self._conn)
                    self._conn.execute("BEGIN IMMEDIATE")
                    try:
                        result = work(self._conn)
                    except BaseException:
                        self._conn.execute("ROLLBACK")
                        raise
                    self._conn.execute("COMMIT")
                    return result
                except sqlite3.Error as exc:  # locked past the busy timeout, disk, corrupt
                    # A failed COMMIT may leave the transaction open, holding the write lock
                    # for every replica on the node: end it.
                    if self._conn.in_transaction:
                        try:
                            self._conn.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass
                    raise StoreUnavailable(f"SQLite: {exc}") from exc

        # Its own thread, not the loop's default pool: lease renewals must not queue
        # behind decoding and speech detection there.
        return await asyncio.get_running_loop().run_in_executor(self._executor, locked)

    @staticmethod
    def _load(conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
        row = conn.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_json(row[0]) if row else None

    @staticmethod
    def _save(conn: sqlite3.Connection, record: JobRecord, **columns) -> None:
        values = {
            "owner": record.owner, "status": record.status.value,
            "created_at": record.created_at, "audio_bytes": record.audio_bytes,
            "idempotency_key": record.idempotency_key,
            "callback_state": record.callback_state.value if record.callback_state else None,
            "expires_at": record.expires_at, "record": record.to_json(), **columns,
        }
        names = ", ".join(values)
        updates = ", ".join(f"{name} = excluded.{name}" for name in values)
        conn.execute(
            f"INSERT INTO jobs (id, {names}) VALUES (?, {', '.join('?' * len(values))}) "
            f"ON CONFLICT(id) DO UPDATE SET {updates}",
            (record.id, *values.values()))

    @staticmethod
    def _held_by(conn: sqlite3.Connection, job_id: str, worker: str) -> JobRecord | None:
        row = conn.execute("SELECT record FROM jobs WHERE id = ? AND status = 'running' "
                           "AND worker = ?", (job_id, worker)).fetchone()
        return JobRecord.from_json(row[0]) if row else None

    @staticmethod
    def _drop_work(conn: sqlite3.Connection, job_id: str) -> None:
        conn.execute("DELETE FROM job_audio WHERE id = ?", (job_id,))
        conn.execute("DELETE FROM job_chunks WHERE id = ?", (job_id,))

    # ---- the interface --------------------------------------------------------------

    async def submit(self, record: JobRecord, audio: bytes,
                     max_queued_bytes: int) -> tuple[JobRecord, bool]:
        def work(conn: sqlite3.Connection) -> tuple[JobRecord, bool]:
            if record.idempotency_key is not None:
                row = conn.execute(
                    "SELECT record FROM jobs WHERE owner = ? AND idempotency_key = ?",
                    (record.owner, record.idempotency_key)).fetchone()
                if row:
                    return JobRecord.from_json(row[0]), False
            (queued,) = conn.execute(
                "SELECT COALESCE(SUM(audio_bytes), 0) FROM jobs "
                "WHERE status IN ('queued', 'running')").fetchone()
            if queued + len(audio) > max_queued_bytes:
                raise QueueFull()
            self._save(conn, record)
            conn.execute("INSERT INTO job_audio (id, data) VALUES (?, ?)", (record.id, audio))
            return record, True

        return await self._run(work)

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._run(lambda conn: self._load(conn, job_id), write=False)

    async def list(self, owner: str, status: JobStatus | None, limit: int,
                   after: str | None) -> list[JobRecord]:
        def work(conn: sqlite3.Connection) -> list[JobRecord]:
            query = "SELECT record FROM jobs WHERE owner = ?"
            params: list = [owner]
            if status is not None:
                query += " AND status = ?"
                params.append(status.value)
            if after is not None:
                cursor = conn.execute("SELECT created_at FROM jobs WHERE id = ?",
                                      (after,)).fetchone()
                if cursor is None:
                    return []
                query += " AND (created_at < ? OR (created_at = ? AND id < ?))"
                params += [cursor[0], cursor[0], after]
            query += " ORDER BY created_at DESC, id DESC LIMIT ?"
            params.append(limit)
            return [JobRecord.from_json(r[0]) for r in conn.execute(query, params)]

        return await self._run(work, write=False)

    async def audio(self, job_id: str) -> bytes | None:
        def work(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT data FROM job_audio WHERE id = ?", (job_id,)).fetchone()
            return bytes(row[0]) if row else None

        return await self._run(work, write=False)

    async def claim(self, worker: str, lease_s: float, now: float) -> JobRecord | None:
        # Idle replicas ask every poll: a read first, so asking takes no write lock.
        if not await self._run(lambda conn: conn.execute(
                "SELECT 1 FROM jobs WHERE status = 'queued' "
                "OR (status = 'running' AND lease_until < ?) LIMIT 1", (now,)).fetchone(),
                write=False):
            return None

        def work(conn: sqlite3.Connection) -> JobRecord | None:
            row = conn.execute(
                "SELECT record FROM jobs WHERE status = 'queued' "
                "OR (status = 'running' AND lease_until < ?) "
                "ORDER BY created_at, id LIMIT 1", (now,)).fetchone()
            if row is None:
                return None
            record = JobRecord.from_json(row[0])
            record.status = JobStatus.RUNNING
            record.attempts += 1
            record.started_at = record.started_at or now
            self._save(conn, record, worker=worker, lease_until=now + lease_s)
            return record

        return await self._run(work)

    async def claimed_by(self, worker: str) -> JobRecord | None:
        def work(conn: sqlite3.Connection) -> JobRecord | None:
            row = conn.execute("SELECT record FROM jobs WHERE status = 'running' AND worker = ? "
                               "LIMIT 1", (worker,)).fetchone()
            return JobRecord.from_json(row[0]) if row else None

        return await self._run(work, write=False)

    async def renew(self, job_id: str, worker: str, lease_s: float, now: float) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            return conn.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND status = 'running' "
                "AND worker = ?", (now + lease_s, job_id, worker)).rowcount == 1

        return await self._run(work)

    async def progress(self, job_id: str, worker: str, done_s: float,
                       duration_s: float) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            record = self._held_by(conn, job_id, worker)
            if record is None:
                return False
            record.done_s, record.duration_s = done_s, duration_s
            self._save(conn, record)
            return True

        return await self._run(work)

    async def save_chunk(self, job_id: str, worker: str, chunk: str, data: bytes) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            if self._held_by(conn, job_id, worker) is None:
                return False
            conn.execute("INSERT OR REPLACE INTO job_chunks (id, chunk, data) VALUES (?, ?, ?)",
                         (job_id, chunk, data))
            return True

        return await self._run(work)

    async def chunks(self, job_id: str) -> dict[str, bytes]:
        def work(conn: sqlite3.Connection) -> dict[str, bytes]:
            rows = conn.execute("SELECT chunk, data FROM job_chunks WHERE id = ?", (job_id,))
            return {chunk: bytes(data) for chunk, data in rows}

        return await self._run(work, write=False)

    async def release(self, job_id: str, worker: str, error: dict | None) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            record = self._held_by(conn, job_id, worker)
            if record is None:
                return False
            record.status = JobStatus.QUEUED
            record.error = error
            if error is None:  # given back by a replica that stops: not an attempt used
                record.attempts = max(0, record.attempts - 1)
            self._save(conn, record, worker=None, lease_until=None)
            return True

        return await self._run(work)

    async def finish(self, job_id: str, worker: str, status: JobStatus, result: bytes | None,
                     error: dict | None, now: float, expires_at: float) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            record = self._held_by(conn, job_id, worker)
            if record is None:
                return False
            record.status, record.error = status, error
            record.finished_at, record.expires_at = now, expires_at
            if record.callback_url:
                record.callback_state = CallbackState.PENDING
            self._save(conn, record, worker=None, lease_until=None)
            self._drop_work(conn, job_id)
            if result is not None:
                conn.execute("INSERT OR REPLACE INTO job_results (id, data) VALUES (?, ?)",
                             (job_id, result))
            return True

        return await self._run(work)

    async def result(self, job_id: str) -> bytes | None:
        def work(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT data FROM job_results WHERE id = ?",
                               (job_id,)).fetchone()
            return bytes(row[0]) if row else None

        return await self._run(work, write=False)

    async def cancel(self, job_id: str, now: float, expires_at: float) -> JobRecord | None:
        def work(conn: sqlite3.Connection) -> JobRecord | None:
            record = self._load(conn, job_id)
            if record is None or record.status.ended:
                return record
            record.status = JobStatus.CANCELLED
            record.finished_at, record.expires_at = now, expires_at
            if record.callback_url:
                record.callback_state = CallbackState.PENDING
            self._save(conn, record, worker=None, lease_until=None)
            self._drop_work(conn, job_id)
            return record

        return await self._run(work)

    async def delete(self, job_id: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            self._drop_work(conn, job_id)
            conn.execute("DELETE FROM job_results WHERE id = ?", (job_id,))
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

        await self._run(work)

    async def claim_callback(self, worker: str, lease_s: float,
                             now: float) -> JobRecord | None:
        if not await self._run(lambda conn: conn.execute(
                "SELECT 1 FROM jobs WHERE callback_state = 'pending' "
                "AND (callback_lease_until IS NULL OR callback_lease_until < ?) LIMIT 1",
                (now,)).fetchone(), write=False):
            return None

        def work(conn: sqlite3.Connection) -> JobRecord | None:
            row = conn.execute(
                "SELECT record FROM jobs WHERE callback_state = 'pending' "
                "AND (callback_lease_until IS NULL OR callback_lease_until < ?) "
                "ORDER BY created_at LIMIT 1", (now,)).fetchone()
            if row is None:
                return None
            record = JobRecord.from_json(row[0])
            conn.execute("UPDATE jobs SET callback_lease_until = ? WHERE id = ?",
                         (now + lease_s, record.id))
            return record

        return await self._run(work)

    async def callback_done(self, job_id: str, state: CallbackState) -> None:
        def work(conn: sqlite3.Connection) -> None:
            record = self._load(conn, job_id)
            if record is not None:
                record.callback_state = state
                self._save(conn, record, callback_lease_until=None)

        await self._run(work)

    async def expire(self, now: float) -> int:
        def work(conn: sqlite3.Connection) -> int:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM jobs WHERE expires_at IS NOT NULL AND expires_at < ? "
                "AND status IN ('completed', 'failed', 'cancelled')", (now,))]
            for job_id in ids:
                self._drop_work(conn, job_id)
                conn.execute("DELETE FROM job_results WHERE id = ?", (job_id,))
                conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            return len(ids)

        return await self._run(work)

    async def stats(self, now: float) -> JobStats:
        def work(conn: sqlite3.Connection) -> JobStats:
            counts = {JobStatus(status): n for status, n in conn.execute(
                "SELECT status, COUNT(*) FROM jobs GROUP BY status")}
            oldest, queued_bytes, backlog = conn.execute(
                "SELECT MIN(CASE WHEN status = 'queued' THEN created_at END), "
                "COALESCE(SUM(CASE WHEN status IN ('queued', 'running') THEN audio_bytes END), 0), "
                "COALESCE(SUM(CASE WHEN status IN ('queued', 'running') THEN "
                "MAX(0, COALESCE(json_extract(record, '$.duration_s'), 0) "
                "- json_extract(record, '$.done_s')) END), 0) "
                "FROM jobs").fetchone()
            return JobStats(counts=counts,
                            oldest_queued_age_s=max(0.0, now - oldest) if oldest else 0.0,
                            queued_bytes=int(queued_bytes), backlog_audio_s=float(backlog))

        return await self._run(work, write=False)

    async def close(self) -> None:
        with self._lock:
            self._conn.close()
        self._executor.shutdown(wait=False)
