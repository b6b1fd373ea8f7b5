"""Cold start: from a request at zero model replicas to its response, and where it goes.

    python -m benchmarks.cold_start [--runs 5]

configs/local-scale-to-zero.yaml with the demo model on a private Ray instance, its idle
time before zero cut to a few seconds. Each run waits until the pool is at zero and the
machine has been idle a moment, sends one 5-s clip (never cached), and times the answer.
The replica's own `startup_s` (torch, the family's code, weights, INT8 conversion,
warm-up) comes from its `ready()`. The same clip sent again to the now warm replica gives
the request's own cost; what remains is Ray starting the worker process and the actor.
Writes benchmarks/results/cold_start-*.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
import numpy as np

from benchmarks.common import (
    NO_STORE,
    REPO_ROOT,
    TRANSCRIBE_PATH,
    LocalService,
    fit,
    load_clip,
    timestamp,
    wait_until,
    wav_bytes,
    write_json,
)

SCALE_TO_ZERO = REPO_ROOT / "configs" / "local-scale-to-zero.yaml"
IDLE_BEFORE_ZERO_S = 3  # instead of the config's two minutes
SETTLE_S = 3.0  # the machine idle after the replica left: no teardown in the measurement


def replicas(url: str) -> dict:
    return httpx.get(f"{url}/readyz", timeout=30).json().get("replicas", {})


def transcribe(url: str, data: bytes) -> float:
    started = time.monotonic()
    response = httpx.post(f"{url}{TRANSCRIBE_PATH}", files={"file": ("clip.wav", data)},
                          data={"language": "en"}, headers=NO_STORE, timeout=300)
    elapsed = time.monotonic() - started
    if response.status_code != 200 or not response.json()["text"]:
        raise RuntimeError(f"cold request failed: {response.status_code} {response.text[:200]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from ray import serve

    clip = fit(load_clip("fox_dog.wav").audio, 5.0)
    runs = []
    with LocalService(config_path=SCALE_TO_ZERO,
                      autoscaling={"downscale_to_zero_delay_s": IDLE_BEFORE_ZERO_S}) as service:
        for run in range(args.runs):
            wait_until(lambda: (r := replicas(service.url)) and r["running"] == 0
                       and r["target"] == 0 and r["starting"] == 0,
                       300, interval_s=0.5, what="the model at zero replicas")
            time.sleep(SETTLE_S)
            # A different trailing silence each time: a new upload, as a new user sends.
            data = wav_bytes(np.concatenate([clip, np.zeros(160 * (run + 1), np.float32)]))
            cold_s = transcribe(service.url, data)
            warm_s = transcribe(service.url, data)
            handle = serve.get_deployment_handle("ASRModel", app_name="asr")
            startup = handle.ready.remote().result(timeout_s=60)["startup_s"]
            ray_s = cold_s - warm_s - startup["total_s"]
            runs.append({"cold_s": cold_s, "warm_request_s": warm_s, "startup_s": startup,
                         "ray_worker_and_actor_s": ray_s})
            print(f"  run {run + 1}: cold {cold_s:.2f} s = Ray {ray_s:.2f} + replica "
                  f"{startup['total_s']:.2f} {startup} + request {warm_s:.2f}", flush=True)
    parts = ["torch_import_s", "imports_s", "weights_s", "int8_s", "warm_up_s", "total_s"]
    summary = {
        "median_cold_s": round(statistics.median(r["cold_s"] for r in runs), 2),
        "median_warm_request_s": round(statistics.median(r["warm_request_s"] for r in runs), 2),
        "median_ray_worker_and_actor_s": round(
            statistics.median(r["ray_worker_and_actor_s"] for r in runs), 2),
        "median_replica_startup_s": {
            p: round(statistics.median(r["startup_s"].get(p, 0.0) for r in runs), 2) for p in parts
        },
    }
    print(f"median of {len(runs)}: {summary}")
    path = write_json("cold_start", {"runs": runs, "summary": summary}, timestamp())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
