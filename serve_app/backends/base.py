"""The small interface every model family implements.

Backends are pure torch/transformers: no Ray, no HTTP. They take 16 kHz mono float32
arrays and return one result per array, so the model deployment can batch chunks from
many requests without knowing which family it serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

SAMPLE_RATE = 16_000  # every backend consumes 16 kHz mono float32
MAX_CHUNK_SECONDS = 30  # Whisper's fixed encoder window; GLM-ASR's feature window too
MAX_CHUNK_SAMPLES = MAX_CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples


@dataclass(frozen=True)
class DecodeOptions:
    """Per-chunk decoding parameters. Chunks batch together only when these are equal."""

    language: str | None = None  # ISO-639-1; None lets the model detect it
    task: str = "transcribe"  # "transcribe" or "translate" (to English)
    prompt: str | None = None  # text that primes spelling/context
    temperature: float = 0.0  # 0 = greedy
    max_new_tokens: int | None = None  # None = the backend's own bound


@dataclass
class ChunkResult:
    """What one chunk produced. Failures are values so batch mates are unaffected."""

    text: str = ""
    language: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class BackendInfo:
    model_id: str
    family: str  # "whisper" or "glm_asr"
    can_translate: bool
    languages: tuple[str, ...] = field(default_factory=tuple)  # empty = not enumerated
    # The encoder windows a chunk can be padded to, shortest first: a chunk takes the
    # shortest that holds it plus `window_margin_s` of silence (Whisper: 30 s only, or
    # 5-30 s with trimmed windows). Empty: a call is padded to its longest chunk only.
    windows_s: tuple[float, ...] = ()
    window_margin_s: float = 0.0

    def window_for(self, n_samples: int) -> float | None:
        """Seconds of audio one chunk of `n_samples` is padded to; None without windows."""
        if not self.windows_s:
            return None
        needed = n_samples / SAMPLE_RATE + self.window_margin_s
        return next((w for w in self.windows_s if w >= needed - 1e-9), self.windows_s[-1])


class ASRBackend(Protocol):
    info: BackendInfo
    model: Any  # the torch module; load_backend quantizes it in place when configured

    def transcribe_batch(
        self, audios: list[np.ndarray], options: DecodeOptions
    ) -> list[ChunkResult]:
        """Transcribe a padded batch; one result per input, in order."""
        ...


def chunk_problem(audio: object) -> str | None:
    """Why this array cannot be transcribed as one chunk, or None when it can.

    A longer array would be split into several windows by the feature extractors, which
    breaks one result per chunk; the ingress never sends one.
    """
    if not isinstance(audio, np.ndarray):
        return f"expected a numpy array, got {type(audio).__name__}"
    if audio.ndim != 1:
        return f"expected mono audio (1-D), got shape {audio.shape}"
    if audio.dtype != np.float32:
        return f"expected float32 samples, got {audio.dtype}"
    if audio.size > MAX_CHUNK_SAMPLES:
        return f"chunk is {audio.size / SAMPLE_RATE:.1f} s long; the limit is {MAX_CHUNK_SECONDS} s"
    if not np.isfinite(audio).all():
        return "audio holds NaN or infinite samples"
    return None
