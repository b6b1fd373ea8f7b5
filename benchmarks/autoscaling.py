"""The autoscaler under a step of load: idle, a step, idle again, one sample a second.

    python -m benchmarks.autoscaling                       # a private configs/local.yaml
    python -m benchmarks.autoscaling --config configs/local.yaml configs/local-audio-autoscaling.yaml
    python -m benchmarks.autoscaling --url http://127.0.0.1:8000   # a running service
    python -m benchmarks.autoscaling --seconds 120 --clients 2      # long files instead of clips

Every second it records the offered load (requests in flight), the model's replicas as
the Serve controller counts them (target, running, starting: /readyz), the latency p50/p95
of the requests that ended in that second, and sheds (503). It reports the time from the
step to the first added replica running, the cold start (target raised -> running), the
requests lost (anything but 200 or a well-formed 503: must be 0) and the replica-seconds
used, and writes benchmarks/results/autoscaling-*.json and a PNG timeline.
"""

from __future__ import annotations

import argparse
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import (
    NO_STORE,
    REPO_ROOT,
    RESULTS_DIR,
    TRANSCRIBE_PATH,
    LocalService,
    fit,
    join,
    load_clip,
    percentile,
    timestamp,
    wav_bytes,
    write_json,
)

CLIPS = ("fox_dog.wav", "train.wav", "groceries.wav", "oak_tree.wav", "report.wav", "weather.wav")


class StepLoad:
    """`clients` threads sending clips back to back while the step is on."""

    def __init__(self, url: str, seconds: float = 0.0) -> None:
        self.url = url
        self.events: list[tuple[float, float, int]] = []  # (end time, latency, status)
        self.in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._clips = [load_clip(name).audio for name in CLIPS]
        if seconds:  # every request the clips joined, repeated to `seconds` of speech
            joined = join(self._clips, gap_s=0.5)
            self._clips = [fit(np.tile(joined, int(np.ceil(seconds * 16_000 / joined.size))),
                               seconds)]
        self._count = 0

    def start(self, clients: int) -> None:
        self._stop.clear()
        for index in range(clients):
            thread = threading.Thread(target=self._client, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def on(self) -> bool:
        return bool(self._threads) and not self._stop.is_set()

    def release(self) -> None:
        """End the step: each client finishes the request it holds and sends no other."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(600)
        self._threads.clear()

    def _client(self, index: int) -> None:
        with httpx.Client(timeout=600) as client:
            while not self._stop.is_set():
                with self._lock:
                    self._count += 1
                    unique = self._count
                    self.in_flight += 1
                audio = self._clips[unique % len(self._clips)]
                data = wav_bytes(np.concatenate([audio, np.zeros(16 * unique, np.float32)]))
                started = time.monotonic()
                try:
                    response = client.post(f"{self.url}{TRANSCRIBE_PATH}", headers=NO_STORE,
                                           files={"file": ("clip.wav", data)})
                    status = response.status_code
                    if status == 503 and response.json()["error"]["code"] != "overloaded":
                        status = -503  # a 503 that is not a shed: counted as lost
                except Exception:  # noqa: BLE001 - a hung or broken request is a lost one
                    status = -1
                with self._lock:
                    self.in_flight -= 1
                    self.events.append((time.monotonic(), time.monotonic() - started, status))


def sample(url: str) -> dict:
    try:
        return httpx.get(f"{url}/readyz", timeout=10).json().get("replicas", {})
    except Exception:  # noqa: BLE001 - a missed sample is a gap in the chart, not a failure
        return {}


def run(url: str, idle_s: float, step_s: float, after_s: float, clients: int,
        seconds: float = 0.0) -> dict:
    load = StepLoad(url, seconds)
    timeline = []
    began = time.monotonic()
    step_on, step_off = began + idle_s, began + idle_s + step_s
    end = step_off + after_s
    stepped = False
    while (now := time.monotonic()) < end:
        if not stepped and now >= step_on:
            load.start(clients)
            stepped = True
        if stepped and now >= step_off and load.on:
            load.release()
        replicas = sample(url)
        with load._lock:
            ended = [(lat, st) for t, lat, st in load.events if now - 1.0 <= t < now]
            in_flight = load.in_flight
        latencies = [lat for lat, st in ended if st == 200]
        timeline.append({
            "t": round(now - began, 2),
            "offered_in_flight": in_flight,
            "target": replicas.get("target"),
            "running": replicas.get("running"),
            "starting": replicas.get("starting"),
            "p50_s": percentile(latencies, 50),
            "p95_s": percentile(latencies, 95),
            "sheds": sum(1 for _, st in ended if st == 503),
        })
        time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
    load.stop()
    statuses = [st for _, _, st in load.events]
    return {"timeline": timeline, "requests": len(statuses),
            "ok": statuses.count(200), "shed": statuses.count(503),
            "lost": sum(1 for st in statuses if st not in (200, 503)),
            "latencies_ok": [lat for _, lat, st in load.events if st == 200],
            "step": {"on_s": idle_s, "off_s": idle_s + step_s, "clients": clients,
                     "seconds_per_request": seconds or "2-5 s clips"}}


def summarise(result: dict) -> dict:
    timeline, step = result["timeline"], result["step"]
    first_running = timeline[0]["running"] or 0
    after_step = [p for p in timeline if p["t"] >= step["on_s"]]
    scaled = next((p for p in after_step if (p["running"] or 0) > first_running), None)
    raised = next((p for p in after_step if (p["target"] or 0) > first_running), None)
    replica_seconds = sum((p["running"] or 0) for p in timeline)  # one sample a second
    lat = result["latencies_ok"]
    return {
        "time_to_scale_up_s": round(scaled["t"] - step["on_s"], 1) if scaled else None,
        "cold_start_s": round(scaled["t"] - raised["t"], 1) if scaled and raised else None,
        "requests": result["requests"], "ok": result["ok"], "shed": result["shed"],
        "lost": result["lost"], "replica_seconds": replica_seconds,
        "latency_p50_s": percentile(lat, 50), "latency_p95_s": percentile(lat, 95),
    }


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = result["timeline"]
    t = [p["t"] for p in tl]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    top.step(t, [p["running"] for p in tl], where="post", label="replicas running")
    top.step(t, [p["target"] for p in tl], where="post", linestyle="--", label="replicas target")
    top.plot(t, [p["offered_in_flight"] for p in tl], alpha=0.6, label="requests in flight")
    top.axvspan(result["step"]["on_s"], result["step"]["off_s"], alpha=0.1, label="step")
    top.legend(loc="upper right")
    top.set_ylabel("count")
    bottom.plot(t, [p["p50_s"] for p in tl], label="p50 latency")
    bottom.plot(t, [p["p95_s"] for p in tl], label="p95 latency")
    bottom.bar(t, [p["sheds"] for p in tl], color="red", alpha=0.5, label="sheds (503)")
    bottom.set_xlabel("seconds")
    bottom.set_ylabel("seconds / count")
    bottom.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running service (else a private one)")
    parser.add_argument("--config", type=Path, nargs="+",
                        default=[REPO_ROOT / "configs" / "local.yaml"],
                        help="one or more configs, each run in turn on the same step")
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--step", type=float, default=90.0)
    parser.add_argument("--after", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="each request this many seconds of speech (default: 2-5 s clips)")
    args = parser.parse_args()

    stamp = timestamp()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    runs = {}
    for config in [None] if args.url else args.config:
        # The config's own autoscaling, as deployed: a private instance keeps it (not pinned).
        service = nullcontext() if args.url else LocalService(config_path=config, autoscaling={})
        with service as local:
            url = args.url or local.url
            result = run(url, args.idle, args.step, args.after, args.clients, args.seconds)
        name = config.stem if config else "service"
        summary = summarise(result)
        chart(result, RESULTS_DIR / f"autoscaling-{stamp}-{name}.png")
        result.pop("latencies_ok")
        runs[name] = {"summary": summary, **result}
        print(f"{name}: {summary}", flush=True)
    path = write_json("autoscaling", runs, stamp)
    print(f"wrote {path} and its PNG timelines")


if __name__ == "__main__":
    main()
