"""The job stores' contract, run against both: SQLite on a temporary file and Redis on a real
redis-server (one per module, a key prefix per test). Times are passed in, never read from
the clock, so leases run out when a test says so."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import pytest

from serve_app.jobs.records import CallbackState, JobRecord, JobStatus
from serve_app.jobs.redis_store import RedisJobStore
from serve_app.jobs.sqlite_store import SqliteJobStore
from serve_app.jobs.store import JobStore, QueueFull, StoreUnavailable
from tests.conftest import free_port
from tests.redis_server import RedisServer

T0 = 1_712_345_678.123456  # a Unix time with microseconds: stores must keep every digit
BOUND = 1000  # max_queued_bytes in these tests
LEASE = 30.0

OpenStore = Callable[[], JobStore]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()  # skips (fails in CI) when redis-server is not installed
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> OpenStore:
    """Opens a store; each call is another replica on the same data."""
    if request.param == "sqlite":
        path = tmp_path / "jobs.sqlite3"
        return lambda: SqliteJobStore(path)
    server: RedisServer = request.getfixturevalue("redis_server")  # only Redis needs it
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    return lambda: RedisJobStore(server.url, prefix, 2.0)


def run(open_store: OpenStore, scenario: Callable[[JobStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = open_store()  # in the loop: the Redis client belongs to it
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


def job(job_id: str, created_at: float = T0, owner: str = "owner-a", size: int = 100,
        **extra) -> JobRecord:
    return JobRecord(id=job_id, owner=owner, status=JobStatus.QUEUED, created_at=created_at,
                     task="transcribe", fields=[("model", "whisper"), ("language", "de")],
                     audio_bytes=size, **extra)


async def submit(store: JobStore, record: JobRecord) -> JobRecord:
    stored, created = await store.submit(record, b"a" * record.audio_bytes, BOUND)
    assert created
    return stored


def test_submit_round_trips_and_idempotency_keys_name_one_job(open_store: OpenStore) -> None:
    async def scenario(store: JobStore) -> None:
        record = job("j1", filename="Grüße.wav", callback_url="https://example.test/hook",
                     idempotency_key="k1")
        assert await store.submit(record, b"audio-1", BOUND) == (record, True)
        assert await store.get("j1") == record
        assert (await store.get("j1")).created_at == T0
        assert await store.audio("j1") == b"audio-1"
        assert await store.get("nope") is None and await store.audio("nope") is None

        # The same key again: the first job, and nothing of the second stored.
        again, created = await store.submit(job("j2", idempotency_key="k1"), b"audio-2", BOUND)
        assert (again, created) == (record, False)
        assert await store.get("j2") is None and await store.audio("j2") is None
        assert [r.id for r in await store.list("owner-a", None, 10, None)] == ["j1"]

        # Another owner's key is another namespace.
        other = job("j3", owner="owner-b", idempotency_key="k1")
        assert await store.submit(other, b"audio-3", BOUND) == (other, True)

        # Once the job is deleted its key is free again.
        await store.delete("j1")
        assert await store.get("j1") is None and await store.audio("j1") is None
        assert (await store.submit(job("j4", idempotency_key="k1"), b"x", BOUND))[1]

    run(open_store, scenario)


def test_the_queue_bound_counts_queued_and_running_audio(open_store: OpenStore) -> None:
    async def scenario(store: JobStore) -> None:
        await submit(store, job("a", size=400))
        await submit(store, job("b", size=400, created_at=T0 + 1))
        with pytest.raises(QueueFull):
            await store.submit(job("c", size=300), b"c" * 300, BOUND)
        assert await store.get("c") is None
        await submit(store, job("c", size=200))  # exactly at the bound: accepted
        with pytest.raises(QueueFull):
            await store.submit(job("d", size=1), b"d", BOUND)
        # A duplicate is answered even with the queue full.
        await store.delete("c")
        await submit(store, job("c", size=200, idempotency_key="dup"))
        assert (await store.submit(job("e", idempotency_key="dup"), b"e", BOUND))[1] is False

        running = await store.claim("w1", LEASE, T0)
        assert running.id == "a"
        with pytest.raises(QueueFull):  # running audio still counts
            await store.submit(job("d", size=1), b"d", BOUND)
        assert await store.finish("a", "w1", JobStatus.COMPLETED, b"{}", None, T0 + 5, T0 + 99)
        await submit(store, job("d", size=400))  # the finished job's bytes are free
        await store.cancel("b", T0 + 6, T0 + 99)
        assert (await store.stats(T0)).queued_bytes == 600
        await submit(store, job("f", size=400))

    run(open_store, scenario)


def test_claims_take_the_oldest_and_expired_leases_move(open_store: OpenStore) -> None:
    async def scenario(store: JobStore) -> None:
        await submit(store, job("new", created_at=T0 + 10))
        await submit(store, job("old", created_at=T0))
        await submit(store, job("tie-b", created_at=T0 + 5))
        await submit(store, job("tie-a", created_at=T0 + 5))

        first = await store.claim("w1", LEASE, T0 + 100)
        assert (first.id, first.status, first.attempts, first.started_at) == (
            "old", JobStatus.RUNNING, 1, T0 + 100)
        assert await store.get("old") == first
        # Equal times: by id, as SQLite orders them.
        assert [(await store.claim("w2", LEASE, T0 + 100)).id for _ in range(3)] == [
            "tie-a", "tie-b", "new"]
        # Everything is held under a live lease: nothing to claim.
        assert await store.claim("w3", LEASE, T0 + 120) is None
        assert await store.claim("w3", LEASE, T0 + 100 + LEASE) is None  # runs out after

        # w1 keeps its lease alive; the others' run out.
        assert await store.renew("old", "w1", LEASE, T0 + 125)
        assert not await store.renew("old", "w2", LEASE, T0 + 125)
        taken = await store.claim("w3", LEASE, T0 + 140)
        assert (taken.id, taken.attempts, taken.started_at) == ("tie-a", 2, T0 + 100)
        assert await store.progress("tie-a", "w3", 1.5, 9.0)

        # The old owner is told at every step that the job is no longer its own.
        assert not await store.renew("tie-a", "w2", LEASE, T0 + 141)
        assert not await store.progress("tie-a", "w2", 3.0, 9.0)
        assert not await store.save_chunk("tie-a", "w2", "0-16000", b"late")
        assert not await store.release("tie-a", "w2", None)
        assert not await store.finish("tie-a", "w2", JobStatus.COMPLETED, b"late", None,
                                      T0 + 141, T0 + 999)
        current = await store.get("tie-a")
        assert (current.status, current.done_s, current.duration_s) == (
            JobStatus.RUNNING, 1.5, 9.0)
        assert await store.chunks("tie-a") == {} and await store.result("tie-a") is None
        assert not await store.renew("missing", "w1", LEASE, T0)

    run(open_store, scenario)


def test_a_claim_s_worker_finds_its_job_while_it_holds_the_lease(open_store: OpenStore) -> None:
    """A claim whose answer was lost (a timeout) went through all the same: asking with its
    worker finds the job, until the lease is someone else's or the job ends."""
    async def scenario(store: JobStore) -> None:
        await submit(store, job("a"))
        await submit(store, job("b", created_at=T0 + 1))
        assert await store.claimed_by("w1") is None

        claimed = await store.claim("w1", LEASE, T0)
        assert claimed.id == "a"
        assert await store.claimed_by("w1") == claimed  # the same attempt
        assert await store.claimed_by("w2") is None
        assert (await store.claim("w2", LEASE, T0)).id == "b"
        assert (await store.claimed_by("w2")).id == "b"

        # w1's lease runs out and w3 takes the job over: it is no longer w1's.
        taken = await store.claim("w3", LEASE, T0 + LEASE + 1)
        assert (taken.id, taken.attempts) == ("a", 2)
        assert await store.claimed_by("w1") is None
        assert await store.claimed_by("w3") == taken
        await store.finish("a", "w3", JobStatus.COMPLETED, b"r", None, T0 + LEASE + 2, T0 + 999)
        assert await store.claimed_by("w3") is None

    run(open_store, scenario)


def test_chunks_survive_until_the_job_finishes(open_store: OpenStore) -> None:
    async def scenario(store: JobStore) -> None:
        await submit(store, job("j", callback_url="https://example.test/hook"))
        await submit(store, job("quiet", created_at=T0 + 1))
        await store.claim("w1", LEASE, T0)
        assert await store.save_chunk("j", "w1", "0-16000", b"first")
        assert await store.save_chunk("j", "w1", "16000-32000", b"second")
        assert await store.save_chunk("j", "w1", "0-16000", b"first again")  # replaced
        assert await store.chunks("j") == {"0-16000": b"first again", "16000-32000": b"second"}
        assert await store.chunks("quiet") == {}

        assert await store.finish("j", "w1", JobStatus.COMPLETED, b'{"text":"hi"}', None,
                                  T0 + 50, T0 + 3600)
        done = await store.get("j")
        assert (done.status, done.finished_at, done.expires_at, done.callback_state) == (
            JobStatus.COMPLETED, T0 + 50, T0 + 3600, CallbackState.PENDING)
        assert await store.result("j") == b'{"text":"hi"}'
        assert await store.audio("j") is None and await store.chunks("j") == {}
        assert not await store.renew("j", "w1", LEASE, T0 + 51)  # ended: no one's lease

        # A failure keeps its error; without a callback_url nothing is owed.
        await store.claim("w1", LEASE, T0)
        error = {"code": "bad_audio", "message": "Ünreadable"}
        assert await store.finish("quiet", "w1", JobStatus.FAILED, None, error, T0 + 60,
                                  T0 + 3600)
        failed = await store.get("quiet")
        assert (failed.status, failed.error, failed.callback_state) == (
            JobStatus.FAILED, error, None)
        assert await store.result("quiet") is None

    run(open_store, scenario)


def test_release_puts_the_job_back(open_store: OpenStore) -> None:
    async def scenario(store: JobStore) -> None:
        await submit(store, job("j"))
        await store.claim("w1", LEASE, T0)
        assert await store.progress("j", "w1", 2.0, 10.0)
        assert await store.save_chunk("j", "w1", "0-16000", b"kept")
        error = {"code": "replica_stopping", "message": "again later"}
        assert await store.release("j", "w1", error)
        back = await store.get("j")
        assert (back.status, back.error, back.attempts, back.done_s) == (
            JobStatus.QUEUED, error, 1, 2.0)
        assert not await store.renew("j", "w1", LEASE, T0)
        assert await store.chunks("j") == {"0-16000": b"kept"}  # for the next attempt
        assert await store.audio("j") is not None

        again = await store.claim("w2", LEASE, T0 + 1)
        assert (again.id, again.attempts, again.started_at) == ("j", 2, T0)
        # Given back without an error (its replica stopping): that attempt does not count.
        assert await store.release("j", "w2", None)
        back = await store.get("j")
        assert (back.error, back.attempts) == (None, 1)

    run(open_store, scenario)


def test_cancel(open_store: OpenStore) -> None:
    async def scenario(store: JobStore) -> None:
        await submit(store, job("queued", created_at=T0 + 1))
        await submit(store, job("running", callback_url="https://example.test/hook"))
        assert (await store.claim("w1", LEASE, T0)).id == "running"
        await store.save_chunk("running", "w1", "0-16000", b"partial")

        cancelled = await store.cancel("queued", T0 + 5, T0 + 100)
        assert (cancelled.status, cancelled.finished_at, cancelled.expires_at) == (
            JobStatus.CANCELLED, T0 + 5, T0 + 100)
        assert await store.get("queued") == cancelled
        assert await store.audio("queued") is None
        assert await store.claim("w2", LEASE, T0 + 5) is None  # no longer queued

        cancelled = await store.cancel("running", T0 + 6, T0 + 100)
        assert (cancelled.status, cancelled.callback_state) == (
            JobStatus.CANCELLED, CallbackState.PENDING)
        assert await store.audio("running") is None and await store.chunks("running") == {}
        assert not await store.renew("running", "w1", LEASE, T0 + 7)
        assert not await store.finish("running", "w1", JobStatus.COMPLETED, b"r", None,
                                      T0 + 7, T0 + 100)
        assert (await store.get("running")).status == JobStatus.CANCELLED
        # A lease that runs out does not bring a cancelled job back.
        assert await store.claim("w2", LEASE, T0 + 1000) is None

        # An ended job is answered as it is.
        assert await store.cancel("running", T0 + 50, T0 + 500) == cancelled
        assert await store.cancel("missing", T0, T0) is None
        assert (await store.stats(T0)).queued_bytes == 0

    run(open_store, scenario)


def test_list_is_newest_first_per_owner_with_a_cursor(open_store: OpenStore) -> None:
    async def scenario(store: JobStore) -> None:
        for i in range(7):
            await submit(store, job(f"a{i}", created_at=T0 + i))
        await submit(store, job("a3x", created_at=T0 + 3))  # a tie with a3
        await submit(store, job("b0", created_at=T0 + 2, owner="owner-b"))
        await store.claim("w1", LEASE, T0)  # a0 runs
        await store.cancel("a4", T0 + 10, T0 + 100)

        async def ids(status: JobStatus | None = None, limit: int = 50,
                      after: str | None = None, owner: str = "owner-a") -> list[str]:
            return [r.id for r in await store.list(owner, status, limit, after)]

        everything = ["a6", "a5", "a4", "a3x", "a3", "a2", "a1", "a0"]
        assert await ids() == everything
        assert await ids(owner="owner-b") == ["b0"]
        assert await ids(owner="nobody") == []
        assert await ids(JobStatus.RUNNING) == ["a0"]
        assert await ids(JobStatus.CANCELLED) == ["a4"]
        assert await ids(JobStatus.QUEUED) == ["a6", "a5", "a3x", "a3", "a2", "a1"]

        pages, after = [], None  # pages of three, the cursor passing through the tie
        for _ in range(len(everything)):  # bounded: a cursor that stands still must fail
            page = await ids(limit=3, after=after)
            if not page:
                break
            pages.append(page)
            after = page[-1]
        assert pages == [everything[0:3], everything[3:6], everything[6:8]]
        assert await ids(JobStatus.QUEUED, limit=2, after="a4") == ["a3x", "a3"]
        assert await ids(after="a3x") == ["a3", "a2", "a1", "a0"]
        assert await ids(after="gone") == []
        assert (await store.list("owner-a", None, 1, None))[0] == await store.get("a6")

    run(open_store, scenario)


def test_callbacks_are_leased_and_ended_jobs_expire(open_store: OpenStore) -> None:
    async def scenario(store: JobStore) -> None:
        hook = "https://example.test/hook"
        await submit(store, job("c1", callback_url=hook))
        await submit(store, job("c2", created_at=T0 + 1, callback_url=hook))
        await submit(store, job("plain", created_at=T0 + 2))
        await submit(store, job("waiting", created_at=T0 + 3, callback_url=hook))
        assert await store.claim_callback("s1", LEASE, T0) is None  # nothing ended yet
        for job_id in ("c1", "c2", "plain"):
            assert (await store.claim(f"w-{job_id}", LEASE, T0)).id == job_id
            await store.finish(job_id, f"w-{job_id}", JobStatus.COMPLETED, b"r", None,
                               T0 + 10, T0 + 100)

        first = await store.claim_callback("s1", LEASE, T0 + 20)
        assert (first.id, first.callback_state) == ("c1", CallbackState.PENDING)
        assert (await store.claim_callback("s2", LEASE, T0 + 20)).id == "c2"
        assert await store.claim_callback("s3", LEASE, T0 + 20) is None  # both being sent
        await store.callback_done("c1", CallbackState.DELIVERED)
        assert (await store.get("c1")).callback_state == CallbackState.DELIVERED
        # s2 went away without a word: once its lease runs out another sender takes over.
        assert await store.claim_callback("s3", LEASE, T0 + 49) is None
        assert (await store.claim_callback("s3", LEASE, T0 + 51)).id == "c2"
        # Back to pending (a retry later): claimable at once.
        await store.callback_done("c2", CallbackState.PENDING)
        assert (await store.claim_callback("s4", LEASE, T0 + 52)).id == "c2"
        await store.callback_done("c2", CallbackState.FAILED)
        assert await store.claim_callback("s4", LEASE, T0 + 1000) is None
        await store.callback_done("missing", CallbackState.DELIVERED)  # no error

        assert await store.expire(T0 + 100) == 0  # not yet past expires_at
        assert await store.expire(T0 + 101) == 3
        for job_id in ("c1", "c2", "plain"):
            assert await store.get(job_id) is None and await store.result(job_id) is None
        # The queued job stays however late it is.
        assert [r.id for r in await store.list("owner-a", None, 10, None)] == ["waiting"]
        assert await store.expire(T0 + 10**6) == 0
        stats = await store.stats(T0 + 10)
        assert stats.counts == {JobStatus.QUEUED: 1}

    run(open_store, scenario)


def test_stats(open_store: OpenStore) -> None:
    async def scenario(store: JobStore) -> None:
        empty = await store.stats(T0)
        assert (empty.counts, empty.oldest_queued_age_s, empty.queued_bytes) == ({}, 0.0, 0)
        await submit(store, job("a", size=100, duration_s=60.0))
        await submit(store, job("b", created_at=T0 + 10, size=200, duration_s=20.0))
        await submit(store, job("c", created_at=T0 + 20, size=300, duration_s=30.0))
        await submit(store, job("d", created_at=T0 + 30, size=50))  # length unknown
        await store.claim("w1", LEASE, T0 + 40)  # a
        assert await store.progress("a", "w1", 45.0, 60.0)
        await store.claim("w2", LEASE, T0 + 40)  # b
        await store.finish("b", "w2", JobStatus.FAILED, None, {"code": "x"}, T0 + 41, T0 + 99)
        await store.cancel("d", T0 + 42, T0 + 99)
        stats = await store.stats(T0 + 45)
        assert stats.counts == {JobStatus.RUNNING: 1, JobStatus.QUEUED: 1,
                                JobStatus.FAILED: 1, JobStatus.CANCELLED: 1}
        assert stats.oldest_queued_age_s == pytest.approx(25.0)
        assert stats.queued_bytes == 400
        # What is left of a (60 - 45 s) and all of c: the backlog the autoscaler sees.
        assert stats.backlog_audio_s == pytest.approx(15.0 + 30.0)
        assert (await store.stats(T0)).oldest_queued_age_s == 0.0  # never negative
        await store.delete("c")
        assert JobStatus.QUEUED not in (await store.stats(T0)).counts

    run(open_store, scenario)


def test_replicas_share_jobs_and_never_claim_one_twice(open_store: OpenStore) -> None:
    """Two store objects on the same data, as two replicas: each sees the other's jobs, and
    claims racing from both hand every job out exactly once."""

    async def scenario(first: JobStore) -> None:
        second = open_store()
        try:
            for i in range(20):
                await first.submit(job(f"j{i:02d}", created_at=T0 + i, size=1), b"x", BOUND)
            assert (await second.get("j05")).id == "j05"
            workers = [(f"w{i}", store) for i in range(15) for store in (first, second)]
            claims = await asyncio.gather(*(
                store.claim(worker, LEASE, T0 + 100) for worker, store in workers))
            won = {r.id: worker for (worker, _), r in zip(workers, claims) if r is not None}
            assert sorted(won) == [f"j{i:02d}" for i in range(20)]  # each once, none lost
            assert (await first.stats(T0 + 100)).counts == {JobStatus.RUNNING: 20}
            # A cancel through one is seen by the other's worker.
            await second.cancel("j00", T0 + 101, T0 + 200)
            assert not await first.renew("j00", won["j00"], LEASE, T0 + 102)
            assert await first.renew("j01", won["j01"], LEASE, T0 + 102)
        finally:
            await second.close()

    run(open_store, scenario)


def test_redis_keys_stay_under_the_prefix_without_ttls(redis_server: RedisServer) -> None:
    """Nothing outside `<prefix>jobs:`, no key Redis could evict (the deployment's policy is
    volatile-*), and nothing left of a job once it is deleted or expired."""
    import redis as sync_redis

    prefix = f"t{uuid.uuid4().hex[:12]}:"
    client = sync_redis.Redis.from_url(redis_server.url)

    async def scenario(store: JobStore) -> None:
        await submit(store, job("a", callback_url="https://example.test/hook",
                                idempotency_key="k"))
        await submit(store, job("b", created_at=T0 + 1))
        await submit(store, job("c", created_at=T0 + 2))
        await store.claim("w", LEASE, T0)
        await store.save_chunk("a", "w", "0-16000", b"c")
        keys = [k.decode() for k in client.scan_iter(match=f"{prefix}*")]
        assert keys and all(k.startswith(prefix + "jobs:") for k in keys)
        assert all(client.ttl(k) == -1 for k in keys)
        await store.finish("a", "w", JobStatus.COMPLETED, b"r", None, T0 + 5, T0 + 10)
        await store.claim_callback("s", LEASE, T0 + 6)
        await store.cancel("b", T0 + 5, T0 + 10)
        assert all(client.ttl(k) == -1 for k in client.scan_iter(match=f"{prefix}*"))
        assert await store.expire(T0 + 11) == 2
        await store.delete("c")
        left = {k.decode() for k in client.scan_iter(match=f"{prefix}*")}
        assert left <= {f"{prefix}jobs:counts", f"{prefix}jobs:active_bytes"}
        assert (await store.stats(T0)).queued_bytes == 0

    try:
        run(lambda: RedisJobStore(redis_server.url, prefix, 2.0), scenario)
    finally:
        client.close()


def test_an_unreachable_redis_is_unavailable() -> None:
    async def scenario() -> None:
        store = RedisJobStore(f"redis://127.0.0.1:{free_port()}/0", "t:", 0.5)
        try:
            with pytest.raises(StoreUnavailable):
                await store.get("j")
            with pytest.raises(StoreUnavailable):
                await store.claim("w", LEASE, T0)
            with pytest.raises(StoreUnavailable):
                await store.submit(job("j"), b"x", BOUND)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_redis_that_dies_is_unavailable() -> None:
    server = RedisServer()  # its own: the module's server stays up for the other tests
    try:
        async def scenario() -> None:
            store = RedisJobStore(server.url, "t:", 0.5)
            try:
                await submit(store, job("j"))
                assert (await store.claim("w", LEASE, T0)).id == "j"
                server.kill()
                with pytest.raises(StoreUnavailable):
                    await store.renew("j", "w", LEASE, T0 + 1)
                with pytest.raises(StoreUnavailable):
                    await store.stats(T0)
                with pytest.raises(StoreUnavailable):
                    await store.audio("j")
            finally:
                await store.close()

        asyncio.run(scenario())
    finally:
        server.stop()
