"""The small interface every model family implements.

Backends are pure torch/transformers: no Ray, no HTTP. They take 16 kHz mono float32
arrays and return one result per array, so the model deployment can batch chunks from
many requests without knowing which family it serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypeVar

import numpy as np

T = TypeVar("T")

SAMPLE_RATE = 16_000  # every backend consumes 16 kHz mono float32
MAX_CHUNK_SECONDS = 30  # Whisper's fixed encoder window; GLM-ASR's feature window too
MAX_CHUNK_SAMPLES = MAX_CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples


# encoder_window "trimmed": a chunk is padded to the next step of its backend's windows at
# least TRIMMED_MARGIN_S past its end, not to MAX_CHUNK_SECONDS. Whisper needs silence
# after the speech: with none it looped on 8 of 46 test sentences, with 1 s on 3, from 2 s
# on never; 3 s matched full windows' word error rate (docs/performance.md). Steps keep
# the shapes few.
ENCODER_WINDOWS = ("full", "trimmed")
TRIMMED_MARGIN_S = 3.0


def encoder_windows(encoder_window: str, step_s: int) -> tuple[tuple[float, ...], float]:
    """(windows_s, window_margin_s) for BackendInfo: every `step_s` seconds up to 30 s when
    trimmed, 30 s alone when full. `step_s` divides 30."""
    if encoder_window == "full":
        return (float(MAX_CHUNK_SECONDS),), 0.0
    if encoder_window == "trimmed":
        steps = range(step_s, MAX_CHUNK_SECONDS + 1, step_s)
        return tuple(float(s) for s in steps), TRIMMED_MARGIN_S
    raise ValueError(f"encoder_window must be one of {ENCODER_WINDOWS}, not {encoder_window!r}")


@dataclass(frozen=True)
class DecodeOptions:
    """Per-chunk decoding parameters. Chunks batch together only when these are equal."""

    language: str | None = None  # ISO-639-1; None lets the model detect it
    task: str = "transcribe"  # "transcribe" or "translate" (to English)
    prompt: str | None = None  # text that primes spelling/context
    temperature: float = 0.0  # 0 = greedy
    max_new_tokens: int | None = None  # None = the backend's own bound
    word_timestamps: bool = False  # time each word (Whisper: alignment heads); costs a pass
    # Text the transcript is known to start with (a live turn's sent words): the decoder
    # is given its tokens and generates only what follows, and the result's text starts
    # with it. A decode of a 10-s turn that continues its sent words takes half as long.
    text_prefix: str | None = None


@dataclass
class ChunkResult:
    """What one chunk produced. Failures are values so batch mates are unaffected."""

    text: str = ""
    language: str | None = None
    error: str | None = None
    # The model replica's measured speed (audio seconds per second of work), set by the
    # model deployment: the ingress's admission control learns capacity from it.
    replica_audio_s_per_s: float | None = None
    # With word_timestamps: (word, start, end), seconds from the start of the chunk; the
    # word keeps its leading space as it appears in the text.
    words: tuple[tuple[str, float, float], ...] | None = None


@dataclass(frozen=True)
class BackendInfo:
    model_id: str
    family: str  # "whisper" or "glm_asr"
    can_translate: bool
    languages: tuple[str, ...] = field(default_factory=tuple)  # empty = not enumerated
    # Why words cannot be timed (no alignment heads, a family without them); None: they can.
    word_timestamps_unavailable: str | None = None
    # The encoder windows a chunk can be padded to, shortest first: a chunk takes the
    # shortest that holds it plus `window_margin_s` of silence (30 s only in full windows,
    # 5-30 s trimmed). Empty: a call is padded to its longest chunk (no backend does so
    # today; batching.group_for_generate keeps such calls to similar lengths).
    windows_s: tuple[float, ...] = ()
    window_margin_s: float = 0.0

    def window_for(self, n_samples: int) -> float | None:
        """Seconds of audio one chunk of `n_samples` is padded to; None without windows."""
        if not self.windows_s:
            return None
        needed = n_samples / SAMPLE_RATE + self.window_margin_s
        return next((w for w in self.windows_s if w >= needed - 1e-9), self.windows_s[-1])


def per_window(
    info: BackendInfo,
    audios: list[np.ndarray],
    run: Callable[[list[np.ndarray], float | None], list[T]],
) -> list[T]:
    """`run(chunks, window_s)` once per window, its results put back in the order of `audios`.

    A chunk's window is decided by its own length, so batch mates never change what it is
    padded to. Without windows (None) the backend pads the call to its longest chunk.
    """
    groups: dict[float | None, list[int]] = {}
    for index, audio in enumerate(audios):
        groups.setdefault(info.window_for(audio.shape[0]), []).append(index)
    results: list[T | None] = [None] * len(audios)
    for window_s, indices in groups.items():
        for i, result in zip(indices, run([audios[i] for i in indices], window_s), strict=True):
            results[i] = result
    return results  # type: ignore[return-value]  # every index is in exactly one group


class Preempted(Exception):
    """A batch given up for more urgent work (a live turn waiting behind re-decodes): the
    model deployment's forward hook raises it between decoding steps. Backends let it
    through; it is not a failure of the model or the audio."""


class ASRBackend(Protocol):
    info: BackendInfo
    model: Any  # the torch module; load_backend quantizes it in place when configured

    def transcribe_batch(
        self, audios: list[np.ndarray], options: DecodeOptions
    ) -> list[ChunkResult]:
        """Transcribe a padded batch; one result per input, in order. A failure becomes
        that chunk's error, except Preempted, which stops the whole batch."""
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
