"""A plain WebSocket client for /v1/realtime in tests: OpenAI's events, audio as 24-kHz
PCM16 appends, no pacing (tests send faster than real time; benchmarks pace)."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import soxr
from websockets.sync.client import ClientConnection, connect

PCM_RATE = 24_000


def pcm24_appends(audio_16k: np.ndarray, append_ms: int = 100) -> list[str]:
    """16-kHz float audio as base64 PCM16 at 24 kHz, `append_ms` per append."""
    audio = soxr.resample(audio_16k.astype(np.float32), 16_000, PCM_RATE)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    step = PCM_RATE * append_ms // 1000
    return [base64.b64encode(pcm[i : i + step].tobytes()).decode()
            for i in range(0, pcm.size, step)]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(16_000 * seconds), np.float32)


def realtime_url(base_url: str, query: str = "intent=transcription") -> str:
    return base_url.replace("http://", "ws://", 1) + "/v1/realtime" + (f"?{query}" if query else "")


class LiveClient:
    def __init__(self, base_url: str, query: str = "intent=transcription",
                 headers: dict | None = None, subprotocols: list[str] | None = None) -> None:
        self.ws: ClientConnection = connect(
            realtime_url(base_url, query), additional_headers=headers or {},
            subprotocols=subprotocols, open_timeout=60, max_size=None)
        self.events: list[dict] = []

    def __enter__(self) -> "LiveClient":
        return self

    def __exit__(self, *exc) -> None:
        self.ws.close()

    def send(self, event: dict | str) -> None:
        self.ws.send(event if isinstance(event, str) else json.dumps(event))

    def append(self, audio_16k: np.ndarray) -> None:
        for chunk in pcm24_appends(audio_16k):
            self.send({"type": "input_audio_buffer.append", "audio": chunk})

    def receive(self, timeout_s: float = 120) -> dict:
        event = json.loads(self.ws.recv(timeout=timeout_s))
        self.events.append(event)
        return event

    def until(self, predicate, timeout_s: float = 180) -> dict:
        """Events until one satisfies `predicate` (it is returned); all are kept."""
        deadline = time.monotonic() + timeout_s
        while True:
            event = self.receive(max(deadline - time.monotonic(), 0.01))
            if predicate(event):
                return event

    def until_type(self, event_type: str, timeout_s: float = 180) -> dict:
        return self.until(lambda e: e["type"] == event_type, timeout_s)

    def of_type(self, event_type: str) -> list[dict]:
        return [e for e in self.events if e["type"] == event_type]
