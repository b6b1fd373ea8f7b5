"""Admission control from capacity: shed load at once when the wait would be too long.

A request is refused with 503 `overloaded` and a Retry-After, before any work, when the
audio already admitted plus its own would not be transcribed within
`admission.max_expected_wait_s`, even with every replica the model deployment may reach.
Clients back off while the queue drains, and nothing admitted waits past its budget.

Where each number comes from, with several ingress replicas:

- queued audio: this ingress replica's own, admitted and not yet transcribed. Each chunk
  counts until its result returns; silence the speech detector drops stops counting once
  the request is split into chunks.
- a replica's speed: the audio seconds per second of model work each model replica
  measures batch by batch and returns with every result (smoothed here); until a result
  has come back, `assumed_audio_s_per_s`.
- replicas: running and reachable (`max_replicas`, or the fixed count) from the Serve
  controller (serve_app.replicas). Replicas not running yet count after
  `replica_start_s`, the cold start.
- the share: Serve's proxy spreads requests evenly over the ingress replicas, so each
  one plans with 1/N of the model pool's speed, N being the ingress replicas running.

The fixed `max_queued_audio_seconds` stays as a bound on the audio one ingress replica
holds in memory. One request larger than either bound is still admitted when nothing else
is queued, so the longest allowed file is never refused forever.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from serve_app.config import AdmissionSettings
from serve_app.errors import APIError

# The weight of each new speed report in the running average: about the last ten results.
RATE_SMOOTHING = 0.1
MAX_RETRY_AFTER_S = 300


@dataclass(frozen=True)
class PoolSize:
    """The replicas behind the estimate, as the Serve controller last reported them."""

    running: int  # model replicas loaded and healthy
    reachable: int  # the most the deployment may run: max_replicas, or the fixed count
    ingress_replicas: int = 1  # ingress replicas sharing that pool


class Reservation:
    """The audio one request holds in the queue, from admission to its last chunk.

    `narrow_to` drops what the speech detector found to be silence; `sent` and `done`
    follow each chunk to the model and back. `release()` is idempotent.
    """

    def __init__(self, controller: "AdmissionController", audio_seconds: float) -> None:
        self._controller = controller
        self._queued = audio_seconds  # admitted, not yet transcribed
        self._unsent = audio_seconds  # admitted, not yet handed to the model

    def narrow_to(self, audio_seconds: float) -> None:
        if audio_seconds < self._queued:
            self._take(self._queued - audio_seconds, max(0.0, self._unsent - audio_seconds))

    def sent(self, audio_seconds: float) -> None:
        self._take(0.0, min(audio_seconds, self._unsent))

    def done(self, audio_seconds: float) -> None:
        self._take(min(audio_seconds, self._queued), 0.0)

    def release(self) -> None:
        self._take(self._queued, self._unsent)

    def _take(self, queued: float, unsent: float) -> None:
        self._queued -= queued
        self._unsent -= unsent
        self._controller._queued -= queued
        self._controller._unsent -= unsent


class AdmissionController:
    def __init__(self, settings: AdmissionSettings) -> None:
        self._settings = settings
        self._queued = 0.0
        self._unsent = 0.0
        self._measured_rate: float | None = None
        self._pool = PoolSize(running=1, reachable=1)  # until the controller has answered

    # ---- what it knows -------------------------------------------------------------

    @property
    def queued_audio_seconds(self) -> float:
        return max(0.0, self._queued)

    @property
    def unsent_audio_seconds(self) -> float:
        """Audio waiting in this ingress replica, not yet at any model replica: what the
        application-level autoscaling policy adds to what the replicas hold."""
        return max(0.0, self._unsent)

    @property
    def replica_audio_s_per_s(self) -> float:
        return self._measured_rate or self._settings.assumed_audio_s_per_s

    def observe_rate(self, audio_s_per_s: float | None) -> None:
        """A model replica's measured speed, as it came back with a result."""
        if not audio_s_per_s or audio_s_per_s <= 0:
            return
        previous = self._measured_rate
        self._measured_rate = audio_s_per_s if previous is None else (
            RATE_SMOOTHING * audio_s_per_s + (1 - RATE_SMOOTHING) * previous)

    def update_pool(self, pool: PoolSize | None) -> None:
        """The latest replica counts; None (the controller did not answer) keeps the last."""
        if pool is not None:
            self._pool = pool

    def expected_wait_s(self, extra_audio_s: float = 0.0) -> float:
        """Seconds until the queue plus `extra_audio_s` is transcribed, at best."""
        return expected_wait_s(
            self.queued_audio_seconds + extra_audio_s,
            self.replica_audio_s_per_s,
            self._pool,
            self._settings.replica_start_s,
        )

    def describe(self) -> dict:
        """For /readyz: the numbers the next admission decision will use."""
        return {
            "queued_audio_s": round(self.queued_audio_seconds, 2),
            "unsent_audio_s": round(self.unsent_audio_seconds, 2),
            "replica_audio_s_per_s": round(self.replica_audio_s_per_s, 2),
            "replica_speed_measured": self._measured_rate is not None,
            "expected_wait_s": round(self.expected_wait_s(), 2),
            "max_expected_wait_s": self._settings.max_expected_wait_s,
            "pool": {"running": self._pool.running, "reachable": self._pool.reachable,
                     "ingress_replicas": self._pool.ingress_replicas},
        }

    # ---- deciding ------------------------------------------------------------------

    def reserve(self, audio_seconds: float, refusable: bool = True) -> Reservation:
        """Hold capacity or raise 503 now, before any response has started. Live turns are
        not refusable (their session was admitted): they count, so files see them, but go
        ahead of the queue they are counted in (serve_app.priority)."""
        if refusable:
            self.refuse_if_full(audio_seconds)
        self._queued += audio_seconds
        self._unsent += audio_seconds
        return Reservation(self, audio_seconds)

    def refuse_if_full(self, audio_seconds: float = 0.0) -> None:
        """Raise 503 if `audio_seconds` more would not fit. With 0 it can run before the
        upload is decoded: a queue already past the bound refuses any request, unread."""
        if self.queued_audio_seconds > 0:
            wait_s = self.expected_wait_s(audio_seconds)
            over_wait = wait_s > self._settings.max_expected_wait_s
            over_memory = (self.queued_audio_seconds + audio_seconds
                           > self._settings.max_queued_audio_seconds)
            if over_wait or over_memory:
                raise APIError(
                    503,
                    "overloaded",
                    "The service is at capacity; retry after the indicated delay.",
                    headers={"Retry-After": str(self._retry_after_s(wait_s))},
                )

    def _retry_after_s(self, wait_s: float) -> int:
        """When enough of the queue should have drained for the request to fit, never
        sooner than the configured Retry-After."""
        excess = wait_s - self._settings.max_expected_wait_s
        floor = self._settings.retry_after_s
        if not math.isfinite(excess):
            return max(floor, int(self._settings.replica_start_s))
        return int(min(MAX_RETRY_AFTER_S, max(floor, math.ceil(excess))))


def expected_wait_s(queued_audio_s: float, replica_audio_s_per_s: float, pool: PoolSize,
                    replica_start_s: float) -> float:
    """The earliest time `queued_audio_s` is done by this ingress replica's share of the
    pool: on the running replicas alone, or, where more may be added, on those running
    until the others have started and on all of them after that."""
    share = replica_audio_s_per_s / max(1, pool.ingress_replicas)
    running_rate = pool.running * share
    best = queued_audio_s / running_rate if running_rate > 0 else math.inf
    if pool.reachable > pool.running:
        done_while_starting = running_rate * replica_start_s
        left = max(0.0, queued_audio_s - done_while_starting)
        best = min(best, replica_start_s + left / (pool.reachable * share))
    return best
