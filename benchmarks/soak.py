"""A bounded soak: steady mixed load for a fixed time, then counts, latency and memory growth.

    python -m benchmarks.soak --duration 600 --concurrency 16
    python -m benchmarks.soak --duration 600 --concurrency 16 --url http://127.0.0.1:8000 \\
        --ray-address http://127.0.0.1:8265    # a running service; the address finds its PIDs

Without --url it starts configs/local.yaml (the demo model) on a private Ray instance on free
ports and stops it at the end. The mix, drawn at random with a fixed seed:

- most requests: a speech fixture with random-length silence appended, so its bytes (and
  cache key) are new while the model's work stays the same (the chunker drops silence);
- some: a fixture exactly as committed, repeated, so the cache answers;
- a few: an invalid upload (random bytes → 415, a truncated WAV → 400);
- a few: the 45-s file (two chunks), with silence appended so it is never a cache hit.

It stops sending after --duration seconds or --max-requests requests, whichever comes
first, and waits for the requests already sent. Every request is counted by status; "lost"
means no response at all (connection error or client timeout). The resident memory of the
ingress replica, the model replicas and Ray's proxy actor (behind HAProxy, only its
fallback) is sampled every --sample-every seconds; growth is end minus start. The JSON goes
to benchmarks/results/soak-<time>.json.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from dataclasses import asdict

import numpy as np

from benchmarks.common import (
    LONG_FIXTURE,
    NO_STORE,
    LocalService,
    RequestSpec,
    actor_pids,
    fmt,
    latency_summary,
    load_average,
    load_clip,
    machine_info,
    percentile,
    rss_mb,
    run_load,
    silence,
    speech_clips,
    summarize,
    wav_bytes,
    write_json,
)

MIX = {"unique": 0.74, "repeat": 0.18, "invalid": 0.04, "long": 0.04}
SILENCE_RANGE_S = (0.1, 3.0)  # appended to make a clip unique; dropped again by the chunker
ROLES = LocalService.ROLES


class RequestMix:
    """Deterministic for a seed; thread-safe enough for one asyncio loop."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._clips = speech_clips()
        self._long = load_clip(LONG_FIXTURE)
        self._repeat = [(wav_bytes(c.audio), c.seconds) for c in self._clips]
        truncated = wav_bytes(self._clips[0].audio)[:60]  # a RIFF header and a few samples
        self._invalid = [truncated, bytes(self._rng.getrandbits(8) for _ in range(4096))]

    def _with_silence(self, audio: np.ndarray) -> tuple[bytes, float]:
        padded = np.concatenate([audio, silence(self._rng.uniform(*SILENCE_RANGE_S))])
        return wav_bytes(padded), padded.size / 16_000

    def __call__(self, index: int) -> RequestSpec:
        kind = self._rng.choices(list(MIX), weights=list(MIX.values()))[0]
        if kind == "unique":
            data, seconds = self._with_silence(self._rng.choice(self._clips).audio)
        elif kind == "repeat":
            data, seconds = self._rng.choice(self._repeat)
        elif kind == "long":
            data, seconds = self._with_silence(self._long.audio)
        else:
            data, seconds = self._invalid[index % 2], 0.0
            return RequestSpec(kind, data, seconds, expect="client_error")
        return RequestSpec(kind, data, seconds)


class MemorySampler:
    """RSS of the service's processes every `every_s` seconds, on a background thread."""

    def __init__(self, pids: dict[str, int], every_s: float) -> None:
        self.pids, self.every_s = pids, every_s
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def sample(self) -> dict:
        row = {"t_s": round(time.monotonic() - self._t0, 1), "load_average": load_average(),
               **{f"{k}_mb": v for k, v in rss_mb(self.pids).items()}}
        self.samples.append(row)
        return row

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def __enter__(self) -> "MemorySampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def memory_report(samples: list[dict], roles) -> dict:
    """Start, end and growth per process; growth after the first tenth is also given,
    since allocators and caches fill during the first minutes and then level off."""
    if not samples:
        return {}
    settled = samples[min(len(samples) - 1, max(1, len(samples) // 10))]
    report = {}
    for role in roles:
        key = f"{role}_mb"
        start, end, mid = samples[0].get(key), samples[-1].get(key), settled.get(key)
        report[role] = {
            "start_mb": start, "end_mb": end,
            "growth_mb": end - start if start is not None and end is not None else None,
            "growth_after_warmup_mb": end - mid if mid is not None and end is not None else None,
            "peak_mb": max((s.get(key) or 0) for s in samples),
        }
    return report


def by_kind(outcomes) -> dict:
    kinds = {}
    for kind in MIX:
        chosen = [o for o in outcomes if o.kind == kind]
        statuses: dict[str, int] = {}
        for o in chosen:
            key = str(o.status) if o.status is not None else "lost"
            statuses[key] = statuses.get(key, 0) + 1
        kinds[kind] = {
            "requests": len(chosen), "by_status": dict(sorted(statuses.items())),
            "cache_hits": sum(1 for o in chosen if o.cache == "hit"),
            "cache_hit_p50_s": percentile([o.latency_s for o in chosen if o.cache == "hit"], 50),
            **latency_summary([o.latency_s for o in chosen if o.status and o.status < 500]),
        }
    return kinds


def print_report(result: dict) -> None:
    s = result["summary"]
    print(f"\nsoak: {result['duration_s']:.0f} s at concurrency {result['concurrency']}, "
          f"{s['wall_s']:.0f} s wall, load average {result['machine']['load_average']} → "
          f"{result['load_average_end']}")
    print(f"requests {s['requests']}  by status {s['by_status']}  lost {s['lost']}  "
          f"unexpected {s['unexpected']}")
    print(f"throughput {s['requests_per_s']:.3f} req/s, {fmt(s['audio_s_per_s'])} audio-s/s; "
          f"latency of 200s p50 {fmt(s['p50_s'])} s, p99 {fmt(s['p99_s'])} s")
    print(f"\n{'kind':<9}{'n':>6}{'statuses':>28}{'hits':>6}{'p50 s':>8}{'p99 s':>8}")
    for kind, k in result["by_kind"].items():
        print(f"{kind:<9}{k['requests']:>6}{str(k['by_status']):>28}{k['cache_hits']:>6}"
              f"{fmt(k['p50_s']):>8}{fmt(k['p99_s']):>8}")
    if result["memory"]:
        print(f"\n{'process':<9}{'start MB':>10}{'end MB':>10}{'growth':>10}"
              f"{'after warm-up':>15}{'peak':>10}")
        for role, m in result["memory"].items():
            print(f"{role:<9}{fmt(m['start_mb'], 0):>10}{fmt(m['end_mb'], 0):>10}"
                  f"{fmt(m['growth_mb'], 1):>10}{fmt(m['growth_after_warmup_mb'], 1):>15}"
                  f"{fmt(m['peak_mb'], 0):>10}")
    else:
        print("\nmemory: not measured (pass --ray-address with --url)")
    for error in s["errors"]:
        print(f"unexpected: {error}")


def soak(url: str, pids: dict[str, int], args) -> dict:
    info = machine_info()
    mix = RequestMix(args.seed)
    roles = sorted(pids)  # every process measured, each model replica included
    print(f"soak {args.duration:.0f} s at concurrency {args.concurrency} against {url}; "
          f"load {info['load_average']}; processes {pids}", flush=True)
    with MemorySampler(pids, args.sample_every) as memory:
        outcomes, wall = run_load(url, mix, args.concurrency, max_requests=args.max_requests,
                                  duration_s=args.duration, timeout_s=args.timeout)
    return {
        "machine": info, "url_given": bool(args.url), "duration_s": args.duration,
        "concurrency": args.concurrency, "max_requests": args.max_requests, "mix": MIX,
        "seed": args.seed, "timeout_s": args.timeout, "load_average_end": load_average(),
        "summary": summarize(outcomes, wall), "by_kind": by_kind(outcomes),
        "memory": memory_report(memory.samples, roles), "memory_samples": memory.samples,
        "pids": pids, "outcomes": [asdict(o) for o in outcomes],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Bounded soak of the transcription service.")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--max-requests", type=int, default=100_000, help="stop after this many")
    parser.add_argument("--url", help="a running service; default: start a private one")
    parser.add_argument("--ray-address", help="with --url: Ray dashboard address, to find PIDs")
    parser.add_argument("--timeout", type=float, default=900.0, help="client timeout, s")
    parser.add_argument("--sample-every", type=float, default=30.0, help="RSS sampling period, s")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.url:
        pids = actor_pids(args.ray_address, ROLES) if args.ray_address else {}
        result = soak(args.url.rstrip("/"), pids, args)
    else:
        with LocalService() as service:
            # One request first, so start-of-soak memory is measured with the model warm.
            clip = speech_clips()[0]
            warm_up = RequestSpec("warm-up", wav_bytes(clip.audio), clip.seconds, headers=NO_STORE)
            run_load(service.url, lambda _: warm_up, 1, max_requests=1, timeout_s=args.timeout)
            result = soak(service.url, service.pids(), args)
    print_report(result)
    path = write_json("soak", result)
    print(f"\nraw results: benchmarks/results/{path.name}")


if __name__ == "__main__":
    main()
