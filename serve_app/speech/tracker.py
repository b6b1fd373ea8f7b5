"""The one decision rule: a stream of speech probabilities -> speech started / stopped.

Files (`segments.speech_segments`) and live turns (`turns.TurnDetector`) both run this
state machine, so a pause ends a stretch of speech the same way in either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Transition:
    kind: Literal["started", "stopped"]
    window: int  # started: first speech window; stopped: first window of the pause


class SpeechTracker:
    """Silero's hysteresis over 32-ms windows, one probability at a time."""

    def __init__(self, threshold: float, neg_threshold: float, min_silence_windows: int) -> None:
        self._threshold = threshold
        self._neg_threshold = neg_threshold
        self._min_silence = max(1, min_silence_windows)
        self._next = 0  # index of the next window
        self.in_speech = False
        self.speech_start = 0
        self.pause_start: int | None = None  # a dip below neg_threshold not yet long enough

    @property
    def windows_seen(self) -> int:
        return self._next

    def update(self, probability: float) -> Transition | None:
        index = self._next
        self._next += 1
        if not self.in_speech:
            if probability >= self._threshold:
                self.in_speech, self.speech_start, self.pause_start = True, index, None
                return Transition("started", index)
            return None
        if probability >= self._threshold:
            self.pause_start = None
        elif probability < self._neg_threshold:
            if self.pause_start is None:
                self.pause_start = index
            if index + 1 - self.pause_start >= self._min_silence:
                self.in_speech = False
                return Transition("stopped", self.pause_start)
        return None

    def speech_end_so_far(self) -> int:
        """Where the current stretch of speech ends if the audio stops here."""
        return self.pause_start if self.pause_start is not None else self._next
