"""The ingress's speech detector: load once, then answer "where is the speech" per file.

A detector that fails to load does not take the ingress down: it reports why, `/readyz`
says so with a 503, and requests that need it get a 503 instead of a 500.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from serve_app.speech.levels import detector_gains
from serve_app.speech.options import SpeechOptions
from serve_app.speech.segments import speech_segments
from serve_app.speech.silero import BUNDLED_MODEL, SileroVAD

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class SpeechAnalysis:
    probabilities: np.ndarray  # speech probability of each 32-ms window
    segments: tuple[tuple[int, int], ...]  # [start, end) samples of speech, padded

    @property
    def speech_samples(self) -> int:
        return sum(end - start for start, end in self.segments)


class SpeechDetector:
    def __init__(self, model_path: str | None = None) -> None:
        self.model_path = model_path or str(BUNDLED_MODEL)
        self.error: str | None = None
        self._vad: SileroVAD | None = None
        try:
            self._vad = SileroVAD(self.model_path)
            self._vad.probabilities(np.zeros(16_000, np.float32))  # fails now, not per request
        except Exception as exc:  # noqa: BLE001 - reported by /readyz, not raised per request
            self.error = f"{type(exc).__name__}: {exc}"
            logger.error("speech detector failed to load from %s: %s", self.model_path, self.error)

    @property
    def ready(self) -> bool:
        return self._vad is not None

    @property
    def vad(self) -> SileroVAD:
        if self._vad is None:
            raise RuntimeError(f"the speech detector is unavailable: {self.error}")
        return self._vad

    def analyse(self, audio: np.ndarray, options: SpeechOptions) -> SpeechAnalysis:
        """Blocking (about 2 ms of one core per second of audio): run it in a thread."""
        probabilities = self.vad.probabilities(audio, detector_gains(audio))
        segments = speech_segments(probabilities, audio.size, options)
        return SpeechAnalysis(probabilities, tuple(segments))

    def describe(self) -> dict:
        return {
            "model": "silero_vad_v6" if self.model_path == str(BUNDLED_MODEL) else self.model_path,
            "ready": self.ready,
            **({"error": self.error} if self.error else {}),
        }
