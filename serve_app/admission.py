"""Admission control counted in audio seconds: shed load early instead of timing out.

Each ingress replica tracks the audio it has admitted but not yet finished. A request that
would push the total past the bound is refused at once with 503 `overloaded` and a
Retry-After, so clients back off while the queue drains, and the service recovers by
itself once load drops.
"""

from __future__ import annotations

from serve_app.errors import APIError


class Reservation:
    """Capacity held for one request; release() is idempotent."""

    def __init__(self, controller: "AdmissionController", audio_seconds: float) -> None:
        self._controller = controller
        self._audio_seconds = audio_seconds
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._controller._queued -= self._audio_seconds


class AdmissionController:
    def __init__(self, max_queued_audio_seconds: float, retry_after_s: int) -> None:
        self._max = max_queued_audio_seconds
        self._retry_after_s = retry_after_s
        self._queued = 0.0

    @property
    def queued_audio_seconds(self) -> float:
        return self._queued

    def reserve(self, audio_seconds: float) -> Reservation:
        """Hold capacity or raise 503 now, before any response has started.

        A single request larger than the whole bound is still admitted when nothing else is
        queued, so the longest allowed file is never refused forever.
        """
        if self._queued > 0 and self._queued + audio_seconds > self._max:
            raise APIError(
                503,
                "overloaded",
                "The service is at capacity; retry after the indicated delay.",
                headers={"Retry-After": str(self._retry_after_s)},
            )
        self._queued += audio_seconds
        return Reservation(self, audio_seconds)
