"""What a request may tune about speech detection, in Silero's own terms."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpeechOptions:
    """Per-request speech detection settings; every field is part of the cache key.

    `enabled=False` turns the silence guard off (music, singing): all of the audio goes to
    the model, cut into windows at its quietest points, as it is.
    """

    enabled: bool = True
    threshold: float = 0.5  # speech probability at which speech starts (Silero's default)
    min_silence_ms: int = 300  # a pause at least this long ends a stretch of speech
    speech_pad_ms: int = 200  # audio kept on each side of speech: onsets, trailing consonants
    min_speech_ms: int = 100  # shorter bursts are bumps and clicks, not words

    @property
    def neg_threshold(self) -> float:
        """Below this, speech may end; between the two, speech that has started goes on
        (Silero's hysteresis: one dip in the middle of a word does not end it)."""
        return max(self.threshold - 0.15, 0.01)
