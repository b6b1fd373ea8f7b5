"""The shared job store: Redis, for ingress replicas on every node of the cluster.

The semantics are `SqliteJobStore`'s, method for method. SQLite gets them from one
`BEGIN IMMEDIATE` transaction per change; here every change that reads before it writes
(a claim picking the oldest job, a submit checking the idempotency key and the byte bound,
a worker checking that it still holds its lease) is one Lua script, which Redis runs with
nothing else in between, so two replicas on different nodes never both claim one job and a
cancel never interleaves with a finish. MULTI/WATCH would retry under contention; a script
does not.

Keys, all under `<key_prefix>jobs:` (written `<p>` below):

    <p>job:<id>            hash: `record` (the JobRecord's JSON as submitted: the fields that
                           never change) and one field per changing one (status, attempts,
                           started_at, finished_at, expires_at, done_s, duration_s, error,
                           callback_state) beside the bookkeeping (owner, idem, created_at,
                           callback, worker, lease_until, callback_lease_until)
    <p>audio:<id>          string: the uploaded audio, while queued or running
    <p>chunks:<id>         hash: chunk name -> its result, while running
    <p>result:<id>         string: the result, once ended
    <p>queued              sorted set: queued ids by created_at
    <p>running             sorted set: running ids by lease expiry
    <p>owner:<owner>       sorted set: the owner's ids by created_at (list, newest first)
    <p>idem:<owner>:<key>  string: the job id an idempotency key names
    <p>active              hash: id -> audio bytes of each queued or running job
    <p>active_bytes        integer: their sum (the submit bound, without summing)
    <p>callbacks           sorted set: ids whose callback is owed, by created_at
    <p>expiry              sorted set: ended ids by expires_at
    <p>counts              hash: status -> number of jobs (stats)

Numbers the record keeps (times, seconds) are written by Python as `repr(float)` and only
compared in Lua, never formatted there: Lua prints numbers with 14 significant digits, which
would move a Unix timestamp. For the same reason the record's JSON is never re-encoded in
Lua. Nothing here carries a TTL: the deployment's `volatile-*` eviction policy evicts only
keys with one (the result cache's), and a job must never be evicted; `expire()` deletes
ended jobs. Scripts build the keys they touch from the prefix, so on Redis Cluster the
prefix needs a hash tag (`{asr}:`) to keep every key in one slot.

Any Redis error or timeout is `StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, TypeVar

import redis.asyncio as redis
from redis.exceptions import RedisError

from serve_app.jobs.records import CallbackState, JobRecord, JobStats, JobStatus
from serve_app.jobs.store import QueueFull, StoreUnavailable

T = TypeVar("T")

BLOB_TIMEOUT_S = 10.0  # audio and results may be many megabytes: at least this long
EXPIRE_BATCH = 500  # ended jobs deleted per script run, so Redis is never held for long
LIST_PAGE = 100  # ids a list reads per step while it filters by status

# Shared by every script: ARGV[1] is always the key base, `<key_prefix>jobs:`.
PRELUDE = """
local base = ARGV[1]
local function job_key(id) return base .. 'job:' .. id end

-- Byte order, as sorted sets order equal scores and SQLite orders TEXT (Lua's `<` on
-- strings follows the server's locale).
local function lt(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function count(status, delta)
  if status then redis.call('HINCRBY', base .. 'counts', status, delta) end
end

-- Out of the submit bound; a no-op when it already was, so the sum never drifts.
local function deactivate(id)
  local n = redis.call('HGET', base .. 'active', id)
  if n then
    redis.call('HDEL', base .. 'active', id)
    redis.call('DECRBY', base .. 'active_bytes', n)
  end
end

local function held(id, worker)
  local f = redis.call('HMGET', job_key(id), 'status', 'worker')
  return f[1] == 'running' and f[2] == worker
end

local ENDED = {completed = true, failed = true, cancelled = true}

-- A job ends (finish, cancel): out of the queue and the bound, its work dropped, owed its
-- callback, due for deletion.
local function end_job(id, status, now, expires_at)
  local key = job_key(id)
  local f = redis.call('HMGET', key, 'status', 'callback', 'created_at')
  redis.call('HSET', key, 'status', status, 'finished_at', now, 'expires_at', expires_at)
  redis.call('HDEL', key, 'worker', 'lease_until')
  count(f[1], -1)
  count(status, 1)
  redis.call('ZREM', base .. 'queued', id)
  redis.call('ZREM', base .. 'running', id)
  deactivate(id)
  redis.call('DEL', base .. 'audio:' .. id, base .. 'chunks:' .. id)
  redis.call('ZADD', base .. 'expiry', expires_at, id)
  if f[2] then
    redis.call('HSET', key, 'callback_state', 'pending')
    redis.call('HDEL', key, 'callback_lease_until')
    redis.call('ZADD', base .. 'callbacks', f[3], id)
  end
end

-- The job and everything about it, gone.
local function purge(id)
  local key = job_key(id)
  local f = redis.call('HMGET', key, 'status', 'owner', 'idem')
  count(f[1], -1)
  if f[2] then
    redis.call('ZREM', base .. 'owner:' .. f[2], id)
    if f[3] then
      local idem = base .. 'idem:' .. f[2] .. ':' .. f[3]
      if redis.call('GET', idem) == id then redis.call('DEL', idem) end
    end
  end
  deactivate(id)
  for _, name in ipairs({'queued', 'running', 'callbacks', 'expiry'}) do
    redis.call('ZREM', base .. name, id)
  end
  redis.call('DEL', key, base .. 'audio:' .. id, base .. 'chunks:' .. id,
             base .. 'result:' .. id)
end
"""

# ARGV: base, id, owner, has_idem, idem, status, created_at, audio_bytes, audio_len,
# max_bytes, audio, then the job hash's field/value pairs.
SUBMIT = PRELUDE + """
local id, owner, status, created_at = ARGV[2], ARGV[3], ARGV[6], ARGV[7]
local idem = nil
if ARGV[4] == '1' then
  idem = base .. 'idem:' .. owner .. ':' .. ARGV[5]
  local existing = redis.call('GET', idem)
  if existing then
    local flat = redis.call('HGETALL', job_key(existing))
    if #flat > 0 then return {'existing', flat} end
  end
end
local active = tonumber(redis.call('GET', base .. 'active_bytes') or '0')
if active + tonumber(ARGV[9]) > tonumber(ARGV[10]) then return {'full'} end
local fields = {}
for i = 12, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', job_key(id), unpack(fields))
redis.call('SET', base .. 'audio:' .. id, ARGV[11])
redis.call('ZADD', base .. 'owner:' .. owner, created_at, id)
if idem then redis.call('SET', idem, id) end
count(status, 1)
if status == 'queued' then redis.call('ZADD', base .. 'queued', created_at, id) end
if not ENDED[status] then
  redis.call('HSET', base .. 'active', id, ARGV[8])
  redis.call('INCRBY', base .. 'active_bytes', ARGV[8])
end
return {'stored'}
"""

# ARGV: base, worker, lease_until, now. The oldest of the queued jobs and the running ones
# whose lease ran out, by (created_at, id) as SQLite orders them.
CLAIM = PRELUDE + """
local worker, lease_until, now = ARGV[2], ARGV[3], ARGV[4]
local best, best_created = nil, nil
local head = redis.call('ZRANGE', base .. 'queued', 0, 0, 'WITHSCORES')
if head[1] then best, best_created = head[1], tonumber(head[2]) end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', base .. 'running', '-inf', '(' .. now)) do
  local created = redis.call('HGET', job_key(id), 'created_at')
  if created then
    created = tonumber(created)
    if best == nil or created < best_created or (created == best_created and lt(id, best)) then
      best, best_created = id, created
    end
  else
    redis.call('ZREM', base .. 'running', id)  -- no such job: never offer it again
  end
end
if best == nil then return false end
local key = job_key(best)
count(redis.call('HGET', key, 'status'), -1)
count('running', 1)
redis.call('HSET', key, 'status', 'running', 'worker', worker, 'lease_until', lease_until)
redis.call('HINCRBY', key, 'attempts', 1)
redis.call('HSETNX', key, 'started_at', now)
redis.call('ZREM', base .. 'queued', best)
redis.call('ZADD', base .. 'running', lease_until, best)
return redis.call('HGETALL', key)
"""

# ARGV: base, worker. Only after a claim's answer was lost: a walk over the running jobs.
CLAIMED_BY = PRELUDE + """
for _, id in ipairs(redis.call('ZRANGE', base .. 'running', 0, -1)) do
  if held(id, ARGV[2]) then return redis.call('HGETALL', job_key(id)) end
end
return false
"""

# ARGV: base, id, worker, lease_until
RENEW = PRELUDE + """
local id = ARGV[2]
if not held(id, ARGV[3]) then return 0 end
redis.call('HSET', job_key(id), 'lease_until', ARGV[4])
redis.call('ZADD', base .. 'running', ARGV[4], id)
return 1
"""

# ARGV: base, id, worker, done_s, duration_s
PROGRESS = PRELUDE + """
local id = ARGV[2]
if not held(id, ARGV[3]) then return 0 end
redis.call('HSET', job_key(id), 'done_s', ARGV[4], 'duration_s', ARGV[5])
return 1
"""

# ARGV: base, id, worker, chunk, data
SAVE_CHUNK = PRELUDE + """
local id = ARGV[2]
if not held(id, ARGV[3]) then return 0 end
redis.call('HSET', base .. 'chunks:' .. id, ARGV[4], ARGV[5])
return 1
"""

# ARGV: base, id, worker, error JSON ('' for none)
RELEASE = PRELUDE + """
local id = ARGV[2]
if not held(id, ARGV[3]) then return 0 end
local key = job_key(id)
redis.call('HSET', key, 'status', 'queued')
redis.call('HDEL', key, 'worker', 'lease_until')
if ARGV[4] == '' then
  -- Given back by a replica that stops: not an attempt used.
  redis.call('HDEL', key, 'error')
  if tonumber(redis.call('HGET', key, 'attempts') or '0') > 0 then
    redis.call('HINCRBY', key, 'attempts', -1)
  end
else redis.call('HSET', key, 'error', ARGV[4]) end
count('running', -1)
count('queued', 1)
redis.call('ZREM', base .. 'running', id)
redis.call('ZADD', base .. 'queued', redis.call('HGET', key, 'created_at'), id)
return 1
"""

# ARGV: base, id, worker, status, error JSON ('' for none), now, expires_at, has_result,
# result
FINISH = PRELUDE + """
local id = ARGV[2]
if not held(id, ARGV[3]) then return 0 end
local key = job_key(id)
if ARGV[5] == '' then redis.call('HDEL', key, 'error')
else redis.call('HSET', key, 'error', ARGV[5]) end
end_job(id, ARGV[4], ARGV[6], ARGV[7])
if ARGV[8] == '1' then redis.call('SET', base .. 'result:' .. id, ARGV[9]) end
return 1
"""

# ARGV: base, id, now, expires_at
CANCEL = PRELUDE + """
local id = ARGV[2]
local key = job_key(id)
local status = redis.call('HGET', key, 'status')
if not status then return false end
if not ENDED[status] then end_job(id, 'cancelled', ARGV[3], ARGV[4]) end
return redis.call('HGETALL', key)
"""

# ARGV: base, id
DELETE = PRELUDE + """
purge(ARGV[2])
return 1
"""

# ARGV: base, lease_until, now. The oldest owed callback nobody live is sending; the ones
# ahead of it are being sent right now, so there are few to step over.
CLAIM_CALLBACK = PRELUDE + """
local lease_until, now = ARGV[2], tonumber(ARGV[3])
local offset = 0
while true do
  local ids = redis.call('ZRANGE', base .. 'callbacks', offset, offset + 99)
  local kept = 0
  for _, id in ipairs(ids) do
    local key = job_key(id)
    local f = redis.call('HMGET', key, 'callback_state', 'callback_lease_until')
    if f[1] ~= 'pending' then
      redis.call('ZREM', base .. 'callbacks', id)  -- delivered, given up, or gone
    elseif not f[2] or tonumber(f[2]) < now then
      local flat = redis.call('HGETALL', key)
      redis.call('HSET', key, 'callback_lease_until', lease_until)
      return flat
    else
      kept = kept + 1  -- being sent: step over it
    end
  end
  if #ids < 100 then return false end
  offset = offset + kept  -- the ones removed no longer take a place
end
"""

# ARGV: base, id, state
CALLBACK_DONE = PRELUDE + """
local id, state = ARGV[2], ARGV[3]
local key = job_key(id)
local created_at = redis.call('HGET', key, 'created_at')
if not created_at then return 0 end
redis.call('HSET', key, 'callback_state', state)
redis.call('HDEL', key, 'callback_lease_until')
if state == 'pending' then redis.call('ZADD', base .. 'callbacks', created_at, id)
else redis.call('ZREM', base .. 'callbacks', id) end
return 1
"""

# ARGV: base, now, batch. How many went, and whether a full batch was due (call again).
EXPIRE = PRELUDE + """
local ids = redis.call('ZRANGEBYSCORE', base .. 'expiry', '-inf', '(' .. ARGV[2],
                       'LIMIT', 0, tonumber(ARGV[3]))
local gone = 0
for _, id in ipairs(ids) do
  local status = redis.call('HGET', job_key(id), 'status')
  if status and ENDED[status] then
    purge(id)
    gone = gone + 1
  else
    redis.call('ZREM', base .. 'expiry', id)  -- not ended (or gone): nothing to expire
  end
end
return {gone, #ids}
"""

# ARGV: base, owner, status ('' for any), limit, has_after, after. A script, so a page is
# one consistent view while jobs are submitted and deleted around it.
LIST = PRELUDE + """
local owner, status, limit = ARGV[2], ARGV[3], tonumber(ARGV[4])
local key = base .. 'owner:' .. owner
local out = {}
local function take(id)
  local flat = redis.call('HGETALL', job_key(id))
  if #flat > 0 then
    local matches = status == ''
    if not matches then
      for i = 1, #flat, 2 do
        if flat[i] == 'status' then matches = flat[i + 1] == status end
      end
    end
    if matches then out[#out + 1] = flat end
  end
  return #out >= limit
end
local max = '+inf'
if ARGV[5] == '1' then
  local after = ARGV[6]
  local created = redis.call('HGET', job_key(after), 'created_at')
  if not created then return out end
  -- The cursor's own created_at: ids below it (newest first is id descending there).
  for _, id in ipairs(redis.call('ZREVRANGEBYSCORE', key, created, created)) do
    if lt(id, after) and take(id) then return out end
  end
  max = '(' .. created
end
local offset = 0
while true do
  local ids = redis.call('ZREVRANGEBYSCORE', key, max, '-inf', 'LIMIT', offset, PAGE)
  for _, id in ipairs(ids) do
    if take(id) then return out end
  end
  if #ids < PAGE then return out end
  offset = offset + PAGE
end
""".replace("PAGE", str(LIST_PAGE))


def _num(value: float) -> str:
    """A float as Redis and Lua read it back exactly (repr round-trips; str of old did not)."""
    return repr(float(value))


def _error_json(error: dict | None) -> str:
    return "" if error is None else json.dumps(error, ensure_ascii=False, separators=(",", ":"))


def _fields(record: JobRecord) -> dict[str, str]:
    """The job hash as submitted: the record, and each field that changes, on its own."""
    fields = {
        "record": record.to_json(), "owner": record.owner,
        "created_at": _num(record.created_at), "status": record.status.value,
        "attempts": str(record.attempts), "done_s": _num(record.done_s),
    }
    if record.idempotency_key is not None:
        fields["idem"] = record.idempotency_key
    if record.callback_url:
        fields["callback"] = "1"
    for name in ("started_at", "finished_at", "expires_at", "duration_s"):
        value = getattr(record, name)
        if value is not None:
            fields[name] = _num(value)
    if record.error is not None:
        fields["error"] = _error_json(record.error)
    if record.callback_state is not None:
        fields["callback_state"] = record.callback_state.value
    return fields


def _record(flat: list[bytes] | dict[bytes, bytes]) -> JobRecord:
    """A JobRecord from the job hash (HGETALL, flat from a script or a dict)."""
    if isinstance(flat, list):
        flat = dict(zip(flat[0::2], flat[1::2]))
    h = {k.decode(): v.decode() for k, v in flat.items()}
    record = JobRecord.from_json(h["record"])
    record.status = JobStatus(h["status"])
    record.attempts = int(h.get("attempts", "0"))
    record.done_s = float(h.get("done_s", "0"))
    for name in ("started_at", "finished_at", "expires_at", "duration_s"):
        setattr(record, name, float(h[name]) if name in h else None)
    record.error = json.loads(h["error"]) if "error" in h else None
    record.callback_state = (CallbackState(h["callback_state"]) if "callback_state" in h
                             else None)
    return record


class RedisJobStore:
    kind = "redis"

    def __init__(self, url: str, key_prefix: str, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._blob_timeout_s = max(timeout_s, BLOB_TIMEOUT_S)
        # The socket may wait as long as a blob transfer; each call's own limit is wait_for's.
        self._redis = redis.Redis.from_url(
            url, socket_timeout=self._blob_timeout_s, socket_connect_timeout=timeout_s,
            health_check_interval=30)
        self._base = key_prefix + "jobs:"
        script = self._redis.register_script
        self._submit, self._claim = script(SUBMIT), script(CLAIM)
        self._claimed_by = script(CLAIMED_BY)
        self._renew, self._progress = script(RENEW), script(PROGRESS)
        self._save_chunk, self._release = script(SAVE_CHUNK), script(RELEASE)
        self._finish, self._cancel = script(FINISH), script(CANCEL)
        self._delete, self._list = script(DELETE), script(LIST)
        self._claim_callback = script(CLAIM_CALLBACK)
        self._callback_done, self._expire = script(CALLBACK_DONE), script(EXPIRE)

    # ---- plumbing -----------------------------------------------------------------

    async def _call(self, call: Awaitable[T], blob: bool = False) -> T:
        try:
            return await asyncio.wait_for(
                call, self._blob_timeout_s if blob else self._timeout_s)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise StoreUnavailable(f"Redis: {type(exc).__name__}: {exc}") from exc

    def _key(self, kind: str, job_id: str) -> str:
        return f"{self._base}{kind}:{job_id}"

    # ---- the interface --------------------------------------------------------------

    async def submit(self, record: JobRecord, audio: bytes,
                     max_queued_bytes: int) -> tuple[JobRecord, bool]:
        fields = _fields(record)
        idem = record.idempotency_key
        reply = await self._call(self._submit(args=[
            self._base, record.id, record.owner, "0" if idem is None else "1", idem or "",
            record.status.value, fields["created_at"], record.audio_bytes, len(audio),
            max_queued_bytes, audio, *(x for pair in fields.items() for x in pair)]), blob=True)
        outcome = reply[0].decode()
        if outcome == "full":
            raise QueueFull()
        if outcome == "existing":
            return _record(reply[1]), False
        return record, True

    async def get(self, job_id: str) -> JobRecord | None:
        flat = await self._call(self._redis.hgetall(self._key("job", job_id)))
        return _record(flat) if flat else None

    async def list(self, owner: str, status: JobStatus | None, limit: int,
                   after: str | None) -> list[JobRecord]:
        if limit <= 0:
            return []
        rows = await self._call(self._list(args=[
            self._base, owner, status.value if status is not None else "", limit,
            "0" if after is None else "1", after or ""]))
        return [_record(flat) for flat in rows]

    async def audio(self, job_id: str) -> bytes | None:
        return await self._call(self._redis.get(self._key("audio", job_id)), blob=True)

    async def claim(self, worker: str, lease_s: float, now: float) -> JobRecord | None:
        flat = await self._call(self._claim(
            args=[self._base, worker, _num(now + lease_s), _num(now)]))
        return _record(flat) if flat else None

    async def claimed_by(self, worker: str) -> JobRecord | None:
        flat = await self._call(self._claimed_by(args=[self._base, worker]))
        return _record(flat) if flat else None

    async def renew(self, job_id: str, worker: str, lease_s: float, now: float) -> bool:
        return bool(await self._call(self._renew(
            args=[self._base, job_id, worker, _num(now + lease_s)])))

    async def progress(self, job_id: str, worker: str, done_s: float,
                       duration_s: float) -> bool:
        return bool(await self._call(self._progress(
            args=[self._base, job_id, worker, _num(done_s), _num(duration_s)])))

    async def save_chunk(self, job_id: str, worker: str, chunk: str, data: bytes) -> bool:
        return bool(await self._call(self._save_chunk(
            args=[self._base, job_id, worker, chunk, data])))

    async def chunks(self, job_id: str) -> dict[str, bytes]:
        rows = await self._call(self._redis.hgetall(self._key("chunks", job_id)), blob=True)
        return {chunk.decode(): bytes(data) for chunk, data in rows.items()}

    async def release(self, job_id: str, worker: str, error: dict | None) -> bool:
        return bool(await self._call(self._release(
            args=[self._base, job_id, worker, _error_json(error)])))

    async def finish(self, job_id: str, worker: str, status: JobStatus, result: bytes | None,
                     error: dict | None, now: float, expires_at: float) -> bool:
        return bool(await self._call(self._finish(args=[
            self._base, job_id, worker, status.value, _error_json(error), _num(now),
            _num(expires_at), "0" if result is None else "1", result or b""]), blob=True))

    async def result(self, job_id: str) -> bytes | None:
        return await self._call(self._redis.get(self._key("result", job_id)), blob=True)

    async def cancel(self, job_id: str, now: float, expires_at: float) -> JobRecord | None:
        flat = await self._call(self._cancel(
            args=[self._base, job_id, _num(now), _num(expires_at)]))
        return _record(flat) if flat else None

    async def delete(self, job_id: str) -> None:
        await self._call(self._delete(args=[self._base, job_id]))

    async def claim_callback(self, worker: str, lease_s: float,
                             now: float) -> JobRecord | None:
        # The worker is not kept: SQLite does not keep it either, and callback_done takes
        # no worker. The lease alone keeps two replicas from sending the same callback.
        flat = await self._call(self._claim_callback(
            args=[self._base, _num(now + lease_s), _num(now)]))
        return _record(flat) if flat else None

    async def callback_done(self, job_id: str, state: CallbackState) -> None:
        await self._call(self._callback_done(args=[self._base, job_id, state.value]))

    async def expire(self, now: float) -> int:
        gone = 0
        while True:  # in batches: one script run never holds Redis for long
            went, due = await self._call(self._expire(
                args=[self._base, _num(now), EXPIRE_BATCH]))
            gone += int(went)
            if int(due) < EXPIRE_BATCH:
                return gone

    async def stats(self, now: float) -> JobStats:
        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=True) as pipe:  # one snapshot
                pipe.hgetall(self._base + "counts")
                pipe.zrange(self._base + "queued", 0, 0, withscores=True)
                pipe.get(self._base + "active_bytes")
                return await pipe.execute()

        counts, oldest, queued_bytes = await self._call(read())
        return JobStats(
            # As SQLite's GROUP BY: a status no job has is absent, not zero.
            counts={JobStatus(k.decode()): int(n) for k, n in counts.items() if int(n) > 0},
            oldest_queued_age_s=max(0.0, now - oldest[0][1]) if oldest else 0.0,
            queued_bytes=int(queued_bytes or 0),
            backlog_audio_s=await self._backlog_audio_s())

    async def _backlog_audio_s(self) -> float:
        """Audio of queued and running jobs not transcribed yet: one read of each active
        job's two numbers (the queue is bounded in bytes, so in jobs too)."""
        async def read() -> float:
            ids = await self._redis.hkeys(self._base + "active")
            if not ids:
                return 0.0
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hmget(self._base + "job:" + job_id.decode(), "duration_s", "done_s")
                rows = await pipe.execute()
            return sum(max(0.0, float(total or 0) - float(done or 0)) for total, done in rows)

        return await self._call(read())

    async def close(self) -> None:
        try:
            await self._redis.aclose()
        except (RedisError, OSError):  # closing a client whose server is gone
            pass
