"""Turns of live speech, in OpenAI's `server_vad` terms, from the file detector's rule.

A pure state machine over window probabilities (from `SileroStream.push`): it answers
"speech started", "speech stopped" or nothing, so a detected end of turn and a manual
commit can share one path in the session that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from serve_app.speech.segments import ms_to_windows
from serve_app.speech.silero import WINDOW_SECONDS
from serve_app.speech.tracker import SpeechTracker

WINDOW_MS = WINDOW_SECONDS * 1000  # 32 ms


@dataclass(frozen=True)
class TurnEvent:
    kind: Literal["speech_started", "speech_stopped"]
    # OpenAI's fields: the start includes prefix_padding_ms before the first speech; the
    # stop is where the pause that ended the turn reached silence_duration_ms.
    audio_ms: int
    # Where speech itself began or ended, without padding or the closing silence.
    speech_ms: int


class TurnDetector:
    def __init__(
        self, threshold: float = 0.5, prefix_padding_ms: int = 300, silence_duration_ms: int = 500
    ) -> None:
        self._prefix_padding_ms = prefix_padding_ms
        self._tracker = SpeechTracker(
            threshold, max(threshold - 0.15, 0.01), ms_to_windows(silence_duration_ms)
        )

    @property
    def in_speech(self) -> bool:
        return self._tracker.in_speech

    def update(self, probabilities: np.ndarray) -> list[TurnEvent]:
        events = []
        for probability in probabilities.tolist():
            transition = self._tracker.update(probability)
            if transition is None:
                continue
            speech_ms = int(transition.window * WINDOW_MS)
            if transition.kind == "started":
                audio_ms = max(0, speech_ms - self._prefix_padding_ms)
                events.append(TurnEvent("speech_started", audio_ms, speech_ms))
            else:
                audio_ms = int(self._tracker.windows_seen * WINDOW_MS)
                events.append(TurnEvent("speech_stopped", audio_ms, speech_ms))
        return events
