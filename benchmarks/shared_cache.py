"""The result cache with one and two ingress replicas, embedded and shared in Redis (issue 18).

    python -m benchmarks.shared_cache                      # 40 clips, 3 repeat rounds
    python -m benchmarks.shared_cache --files 20 --repeats 2

One private Ray instance and one private redis-server. configs/local.yaml (the demo model,
one model replica) is deployed as three applications side by side, each on its own route
prefix and with its own model replica:

- `embedded-1`: one ingress replica, its own LRU (the default);
- `embedded-2`: two ingress replicas, each with its own LRU;
- `redis-2`: two ingress replicas sharing the cache in Redis (`ASR_REDIS_URL` in the
  application's runtime_env, as in production and in tests/conftest.py).

`--files` distinct clips (the committed speech fixtures, each with a different number of
zero samples appended: a cache key each) are sent once to fill the caches, then `--repeats`
more times, one at a time, each request on a new HTTP connection so that HAProxy spreads them
over the ingress replicas. Every round sends the clips in a new shuffled order (the same for
every application): HAProxy's `leastconn` is a round robin for requests sent one at a time,
and an unshuffled order would send each clip to the same replica every round. The rounds
are interleaved (round k of every application, then round k+1), so the noise of the shared
machine falls on the three alike.

Per application: the hit rate over the repeat rounds (`X-Cache`), the latency of hits and of
misses; the ratio of the shared cache's hit rate to one replica's; whether a hit through
Redis stays under 20 ms at p50. For context: hits of one clip on a kept-alive connection
(what benchmarks/run.py's cache step measures), the client-side time of a raw Redis GET of a
cached entry (redis-py) and, from Ray's metrics export, which share of the ingress's own
Redis GETs took under 10 ms. benchmarks/results/shared-cache-<time>.json.
"""

from __future__ import annotations

import argparse
import copy
import random
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import (
    deploy,
    start_private_ray,
    stop_private_ray,
    TRANSCRIBE_PATH,
    demo_model,
    fmt,
    free_port,
    latency_summary,
    load_average,
    local_config,
    machine_info,
    percentile,
    speech_clips,
    timestamp,
    wait_until,
    wav_bytes,
    write_json,
)

HIT_P50_TARGET_S = 0.020
SEED = 18
# (name, ingress replicas, shared in Redis)
SETUPS = [("embedded-1", 1, False), ("embedded-2", 2, False), ("redis-2", 2, True)]
READY_DEADLINE_S = 600
FIELDS = {"response_format": "json", "language": "en"}
KEEPALIVE_HITS = 30
METRICS_LAG_S = 12  # Ray's metrics export lags the replicas by a few seconds


# ---- a private redis-server (the logic of tests/redis_server.py, without pytest) ------


class RedisServer:
    """Debian's redis-server on a free port, in a temporary directory, with the flags the
    tests use (AOF on, no RDB snapshots, volatile-lru)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (Debian's redis-server)")
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="redis-bench-"))
        self._process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self._dir),
             "--save", "", "--appendonly", "yes", "--maxmemory-policy", "volatile-lru"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, 20, interval_s=0.05, what="redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(port=self.port, socket_timeout=2)

    def ping(self) -> bool:
        import redis

        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def version(self) -> str | None:
        try:
            return self.client().info("server").get("redis_version")
        except Exception:  # noqa: BLE001 - only for the record
            return None

    def stop(self) -> None:
        self._process.kill()
        self._process.wait(10)
        shutil.rmtree(self._dir, ignore_errors=True)


# ---- the three applications on one private Ray instance -------------------------------


def applications(http_port: int, model_path: Path, redis_url: str, jobs_dir: Path) -> dict:
    """configs/local.yaml's application three times: one model replica each, small CPU
    reservations so all of them fit on 2 cores (as tests/conftest.py does for its extra
    applications), jobs in SQLite files of our own (or in Redis for the shared one)."""
    config = local_config(http_port, model_path)
    base = config["applications"][0]
    apps = []
    for name, ingress_replicas, shared in SETUPS:
        app = copy.deepcopy(base)
        app["name"] = name
        app["route_prefix"] = f"/{name}"
        app["args"].setdefault("jobs", {})["sqlite_path"] = str(jobs_dir / "jobs-{app}.sqlite3")
        for deployment in app["deployments"]:
            if deployment["name"] == "ASRModel":
                deployment.pop("autoscaling_config", None)
                deployment["num_replicas"] = 1
                deployment["ray_actor_options"] = {"num_cpus": 0.2}
            else:
                deployment["num_replicas"] = ingress_replicas
                deployment["ray_actor_options"] = {"num_cpus": 0.1}
        if shared:
            app["runtime_env"] = {"env_vars": {"ASR_REDIS_URL": redis_url}}
        apps.append(app)
    config["applications"] = apps
    return config


class Service:
    """A fresh local Ray instance (never a leftover cluster) with the three applications."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.http_port = free_port()
        self.metrics_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self._temp_dir: str | None = None

    def app_url(self, name: str) -> str:
        return f"{self.url}/{name}"

    def __enter__(self) -> "Service":
        model_path = demo_model()
        self._temp_dir, _ = start_private_ray("asr-sc-", metrics_port=self.metrics_port)
        try:
            jobs_dir = Path(self._temp_dir) / "jobs"
            jobs_dir.mkdir()
            deploy(applications(self.http_port, model_path, self.redis_url, jobs_dir))
            for name, _, _ in SETUPS:
                wait_until(lambda n=name: self.readyz(n), READY_DEADLINE_S, interval_s=2.0,
                           what=f"{name} to be ready")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        stop_private_ray(self._temp_dir)


    def readyz(self, name: str) -> dict | None:
        response = httpx.get(f"{self.app_url(name)}/readyz", timeout=30)
        body = response.json() if response.status_code == 200 else None
        return body if body and body.get("model") else None

    def store_gets(self) -> dict | None:
        """The ingress replicas' own successful Redis GETs (asr_store_latency_seconds,
        op=get, every replica's summed) from Ray's metrics export: count, total seconds and
        the cumulative bucket counts."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text
        except Exception:  # noqa: BLE001 - only for context
            return None
        out: dict = {"count": 0.0, "sum": 0.0, "buckets": {}}
        sample = re.compile(r'^\S*asr_store_latency_seconds_(sum|count|bucket)\{([^}]*)\} (\S+)$',
                            flags=re.M)
        for kind, labels, value in sample.findall(text):
            if 'op="get"' not in labels:
                continue
            if kind == "bucket":
                le = re.search(r'le="([^"]+)"', labels).group(1)
                out["buckets"][le] = out["buckets"].get(le, 0.0) + float(value)
            else:
                out[kind] += float(value)
        return out if out["count"] else None


def store_get_delta(before: dict | None, after: dict | None) -> dict | None:
    """The ingress's Redis GETs between two snapshots: count and share within each of the
    lowest buckets. No mean: Ray 2.60 exports a histogram's sum from bucket midpoints
    (every GET under 10 ms counts 5 ms), so sum / count says nothing below a bucket."""
    if after is None:
        return None
    before = before or {"count": 0.0, "sum": 0.0, "buckets": {}}
    count = after["count"] - before["count"]
    if count <= 0:
        return None
    within = {le: (n - before["buckets"].get(le, 0.0)) / count
              for le, n in after["buckets"].items() if le in ("0.01", "0.025", "0.05")}
    return {"count": int(count), "share_within_s": within,
            "before_measured": int(before["count"])}


# ---- the load -------------------------------------------------------------------------


def clips(count: int) -> list[tuple[str, bytes]]:
    """`count` distinct uploads: the fixtures in turn, the i-th with i+1 zero samples more."""
    fixtures = speech_clips()
    out = []
    for i in range(count):
        clip = fixtures[i % len(fixtures)]
        audio = np.concatenate([clip.audio, np.zeros(i + 1, np.float32)])
        out.append((f"{clip.name}+{i + 1}", wav_bytes(audio)))
    return out


def post(url: str, data: bytes) -> dict:
    """One request on a new connection (connect included); its latency and X-Cache. The
    client is built before the clock starts: httpx.Client() alone takes ~50 ms here
    (it loads the CA bundle), more than a hit."""
    fresh = httpx.Client(timeout=300)
    started = time.perf_counter()
    try:
        with fresh:
            response = fresh.post(f"{url}{TRANSCRIBE_PATH}",
                                  files={"file": ("audio.wav", data, "audio/wav")},
                                  data=FIELDS)
            latency = time.perf_counter() - started
        return {"latency_s": latency, "status": response.status_code,
                "cache": response.headers.get("x-cache"),
                "error": None if response.status_code == 200 else response.text[:200]}
    except Exception as exc:  # noqa: BLE001 - counted, not raised
        return {"latency_s": time.perf_counter() - started, "status": None, "cache": None,
                "error": f"{type(exc).__name__}: {exc}"[:200]}


def warm_up(url: str, replicas: int) -> None:
    """Uncounted: one miss (the model's first run), then hits on every ingress replica
    (first code paths, the Redis connection). Its clip is none of the measured ones."""
    fixture = speech_clips()[0]
    data = wav_bytes(np.concatenate([fixture.audio, np.zeros(16_000, np.float32)]))
    for _ in range(1 + 3 * replicas):
        post(url, data)


def summary(records: list[dict]) -> dict:
    repeats = [r for r in records if r["round"] > 0]
    hits = [r["latency_s"] for r in records if r["cache"] == "hit"]
    misses = [r["latency_s"] for r in records if r["cache"] == "miss"]
    repeat_hits = sum(1 for r in repeats if r["cache"] == "hit")
    rounds = sorted({r["round"] for r in repeats})
    per_round = {}
    for k in rounds:
        in_round = [r for r in repeats if r["round"] == k]
        per_round[k] = sum(1 for r in in_round if r["cache"] == "hit") / len(in_round)
    return {
        "requests": len(records),
        "errors": sum(1 for r in records if r["status"] != 200),
        "fill_hits": sum(1 for r in records if r["round"] == 0 and r["cache"] == "hit"),
        "repeat_requests": len(repeats),
        "repeat_hits": repeat_hits,
        "hit_rate": repeat_hits / len(repeats) if repeats else None,
        "hit_rate_per_round": per_round,
        "hits": {"count": len(hits), **latency_summary(hits)},
        "misses": {"count": len(misses), **latency_summary(misses)},
    }


def keepalive_hits(url: str, data: bytes, n: int = KEEPALIVE_HITS) -> dict:
    """Hits of one cached clip on one kept-alive connection: what benchmarks/run.py's cache
    step measures, for comparison with the figures in docs/performance.md."""
    latencies, caches = [], []
    with httpx.Client(timeout=60) as client:
        for _ in range(n):
            started = time.perf_counter()
            response = client.post(f"{url}{TRANSCRIBE_PATH}",
                                   files={"file": ("audio.wav", data, "audio/wav")}, data=FIELDS)
            latencies.append(time.perf_counter() - started)
            caches.append(response.headers.get("x-cache") if response.status_code == 200
                          else str(response.status_code))
    hits = [t for t, c in zip(latencies, caches) if c == "hit"]
    return {"requests": n, "hits": len(hits), **latency_summary(hits)}


def redis_get_latency(redis: RedisServer, samples: int = 200) -> dict:
    """A cached entry read from the client side with redis-py, one connection kept open."""
    client = redis.client()
    keys = client.keys("asr:cache:*")
    if not keys:
        return {"keys": 0}
    client.get(keys[0])  # the connection
    times, sizes = [], []
    for i in range(samples):
        key = keys[i % len(keys)]
        started = time.perf_counter()
        value = client.get(key)
        times.append(time.perf_counter() - started)
        sizes.append(len(value or b""))
    return {"keys": len(keys), "samples": samples, "entry_bytes_median": int(np.median(sizes)),
            "p50_s": percentile(times, 50), "p95_s": percentile(times, 95)}


# ---- report ---------------------------------------------------------------------------


def ms(value: float | None) -> str:
    return fmt(None if value is None else value * 1000, 1)


def table(results: dict) -> str:
    head = (f"{'setup':<11} {'ingress':>7} {'cache':>8} | {'hit rate':>8} | "
            f"{'hit p50 ms':>10} {'p95':>6} | {'miss p50 ms':>11} {'p95':>6} | {'n miss':>6}")
    lines = [head, "-" * len(head)]
    for name, replicas, shared in SETUPS:
        s = results[name]
        lines.append(
            f"{name:<11} {replicas:>7} {'redis' if shared else 'embedded':>8} | "
            f"{fmt(s['hit_rate'], 3):>8} | {ms(s['hits']['p50_s']):>10} "
            f"{ms(s['hits']['p95_s']):>6} | {ms(s['misses']['p50_s']):>11} "
            f"{ms(s['misses']['p95_s']):>6} | {s['misses']['count']:>6}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40, help="distinct clips")
    parser.add_argument("--repeats", type=int, default=3, help="rounds after the fill")
    args = parser.parse_args()

    uploads = clips(args.files)
    rng = random.Random(SEED)
    orders = [list(range(args.files))]  # the fill in clip order, every repeat shuffled
    for _ in range(args.repeats):
        order = list(range(args.files))
        rng.shuffle(order)
        orders.append(order)

    began = time.monotonic()
    load_before = load_average()
    redis = RedisServer()
    try:
        with Service(redis.url) as service:
            started_s = time.monotonic() - began
            print(f"service ready after {started_s:.0f} s", flush=True)
            readiness = {name: service.readyz(name) for name, _, _ in SETUPS}
            kinds = {name: (r or {}).get("cache", {}).get("kind") for name, r in readiness.items()}
            expected = {name: "redis" if shared else "embedded" for name, _, shared in SETUPS}
            if kinds != expected:
                raise SystemExit(f"cache kinds {kinds}, expected {expected}")
            for name, replicas, _ in SETUPS:
                warm_up(service.app_url(name), replicas)
            time.sleep(METRICS_LAG_S)  # Ray's metrics export lags the replicas
            gets_before = service.store_gets()  # the warm-up's GETs (first connections)
            records: dict[str, list[dict]] = {name: [] for name, _, _ in SETUPS}
            for k, order in enumerate(orders):
                for name, _, _ in SETUPS:
                    url = service.app_url(name)
                    for i in order:
                        label, data = uploads[i]
                        records[name].append({"round": k, "clip": label, **post(url, data)})
                    s = summary(records[name])
                    print(f"round {k} {name}: {s['repeat_hits']}/{s['repeat_requests']} "
                          f"repeat hits so far, {s['errors']} errors", flush=True)
            keepalive = {name: keepalive_hits(service.app_url(name), uploads[0][1])
                         for name, _, _ in SETUPS}
            raw_get = redis_get_latency(redis)
            time.sleep(METRICS_LAG_S)
            store_get = store_get_delta(gets_before, service.store_gets())
    finally:
        redis_version = redis.version()
        redis.stop()

    results = {name: summary(records[name]) for name, _, _ in SETUPS}
    rate_a = results["embedded-1"]["hit_rate"]
    rate_c = results["redis-2"]["hit_rate"]
    ratio = rate_c / rate_a if rate_a else None
    hit_p50_c = results["redis-2"]["hits"]["p50_s"]
    under = hit_p50_c is not None and hit_p50_c < HIT_P50_TARGET_S
    wall = time.monotonic() - began

    print()
    print(table(results))
    print()
    print(f"{args.files} clips, a fill round and {args.repeats} repeat rounds per setup, "
          f"one request at a time on a new connection; hit rate over the repeat rounds")
    ratio_b = (results["embedded-2"]["hit_rate"] or 0) / rate_a if rate_a else None
    print(f"hit rate redis-2 / embedded-1 = {fmt(ratio, 3)} (target 1.0); "
          f"embedded-2 / embedded-1 = {fmt(ratio_b, 3)}")
    print(f"redis-2 hit p50 {ms(hit_p50_c)} ms: {'under' if under else 'NOT under'} "
          f"{HIT_P50_TARGET_S * 1000:g} ms")
    print(f"raw Redis GET of a cached entry (redis-py, client side): p50 "
          f"{ms(raw_get.get('p50_s'))} ms, p95 {ms(raw_get.get('p95_s'))} ms, "
          f"{raw_get.get('entry_bytes_median')} bytes")
    print("hits on one kept-alive connection (the first clip, "
          f"{KEEPALIVE_HITS} requests): " + ", ".join(
              f"{name} p50 {ms(k['p50_s'])} ms ({k['hits']} hits)"
              for name, k in keepalive.items()))
    if store_get:
        within = store_get["share_within_s"].get("0.01")
        print(f"the ingress replicas' own Redis GETs after the warm-up: {store_get['count']}, "
              f"{fmt(within, 3)} of them within 10 ms (the finest bucket) "
              f"({store_get['before_measured']} during the warm-up)")
    print(f"wall {wall:.0f} s (service start {started_s:.0f} s)")

    payload = {
        "machine": machine_info(), "redis_version": redis_version,
        "load_average_before": load_before, "load_average_after": load_average(),
        "files": args.files, "repeats": args.repeats, "seed": SEED,
        "setups": [{"name": n, "ingress_replicas": r, "cache": "redis" if s else "embedded"}
                   for n, r, s in SETUPS],
        "results": results,
        "hit_rate_ratio_redis2_over_embedded1": ratio,
        "hit_rate_ratio_embedded2_over_embedded1": ratio_b,
        "redis_hit_p50_s": hit_p50_c, "redis_hit_p50_target_s": HIT_P50_TARGET_S,
        "redis_hit_p50_under_target": under,
        "keepalive_hits": keepalive, "raw_redis_get": raw_get, "ingress_redis_get": store_get,
        "service_start_s": started_s, "wall_s": wall,
        "records": records,
    }
    print(f"wrote {write_json('shared-cache', payload, timestamp())}")


if __name__ == "__main__":
    main()
