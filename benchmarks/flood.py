"""A flood: many files at once, each of which must end in a transcript or a fast 503.

    python -m benchmarks.flood                                  # a private configs/local.yaml
    python -m benchmarks.flood --config configs/local-scale-to-zero.yaml
    python -m benchmarks.flood --url http://127.0.0.1:8000      # a running service

`--files` files of `--seconds` seconds of speech (the committed fixtures, joined; each one
made unique so no cache answers) are sent at the same moment. It reports how many were
transcribed, shed (503 `overloaded` with Retry-After) and lost (anything else: must be 0),
the latencies of each group, the Retry-After values, and the expected wait the ingress
reported before and during the flood; benchmarks/results/flood-*.json.
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import (
    NO_STORE,
    REPO_ROOT,
    TRANSCRIBE_PATH,
    LocalService,
    fit,
    join,
    latency_summary,
    speech_clips,
    timestamp,
    wav_bytes,
    write_json,
)


def payloads(files: int, seconds: float) -> list[bytes]:
    speech = join([clip.audio for clip in speech_clips()], gap_s=0.5)
    speech = fit(np.tile(speech, int(np.ceil(seconds * 16_000 / speech.size))), seconds)
    # A different length of trailing silence each: a different hash, the same speech.
    return [wav_bytes(np.concatenate([speech, np.zeros(160 * (i + 1), np.float32)]))
            for i in range(files)]


def classify(response: httpx.Response | None) -> str:
    if response is None:
        return "lost"
    if response.status_code == 200 and response.json().get("text"):
        return "ok"
    if (response.status_code == 503 and response.json()["error"]["code"] == "overloaded"
            and int(response.headers.get("Retry-After", "0")) >= 1):
        return "shed"
    return "lost"


def admission(url: str) -> dict:
    try:
        return httpx.get(f"{url}/readyz", timeout=10).json().get("admission", {})
    except Exception:  # noqa: BLE001 - a missed sample is only a gap
        return {}


def flood(url: str, files: int, seconds: float) -> dict:
    bodies = payloads(files, seconds)
    before = admission(url)
    samples: list[dict] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(1.0):
            samples.append(admission(url))

    def send(body: bytes) -> tuple[float, httpx.Response | None, str]:
        started = time.monotonic()
        try:
            response = httpx.post(f"{url}{TRANSCRIBE_PATH}", headers=NO_STORE,
                                  files={"file": ("clip.wav", body)}, timeout=900)
        except Exception as exc:  # noqa: BLE001 - a hung or broken request is a lost one
            return time.monotonic() - started, None, repr(exc)
        return time.monotonic() - started, response, ""

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=files) as pool:
        results = list(pool.map(send, bodies))
    wall_s = time.monotonic() - began
    done.set()
    groups: dict[str, list[float]] = {"ok": [], "shed": [], "lost": []}
    retry_after: list[int] = []
    lost_detail: list[str] = []
    for latency, response, error in results:
        kind = classify(response)
        groups[kind].append(latency)
        if kind == "shed":
            retry_after.append(int(response.headers["Retry-After"]))
        if kind == "lost":
            lost_detail.append(error or f"{response.status_code}: {response.text[:200]}")
    waits = [s.get("expected_wait_s") for s in samples if s.get("expected_wait_s") is not None]
    return {
        "files": files, "seconds_each": seconds, "wall_s": round(wall_s, 1),
        "ok": len(groups["ok"]), "shed": len(groups["shed"]), "lost": len(groups["lost"]),
        "latency_ok": latency_summary(groups["ok"]),
        "latency_shed": latency_summary(groups["shed"]),
        "retry_after_s": sorted(set(retry_after)),
        "expected_wait_s_max": max(waits, default=None),
        "admission_before": before, "admission_after": admission(url),
        "lost_detail": lost_detail[:10],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running service (else a private one)")
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "local.yaml")
    parser.add_argument("--files", type=int, default=120)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    # The config's own autoscaling, as deployed: a private instance keeps it (not pinned).
    service = nullcontext() if args.url else LocalService(config_path=args.config,
                                                          autoscaling={})
    with service as local:
        url = args.url or local.url
        result = flood(url, args.files, args.seconds)
    result["config"] = None if args.url else args.config.name
    print({k: v for k, v in result.items() if not k.startswith("admission")}, flush=True)
    print(f"wrote {write_json('flood', result, timestamp())}")


if __name__ == "__main__":
    main()
