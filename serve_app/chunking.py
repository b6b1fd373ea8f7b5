"""Split audio into ≤30 s chunks around the speech the detector found.

What is speech is the speech detector's call (serve_app/speech), not loudness: this
module only groups its segments into model-sized chunks. Chunk boundaries fall in pauses
whenever a pause exists, so no word is cut in half, and each chunk carries its exact
offset in the original audio so timestamps never drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serve_app.audio import SAMPLE_RATE
from serve_app.speech import SpeechAnalysis, SpeechDetector, SpeechOptions
from serve_app.speech.levels import apply_gain, model_gain
from serve_app.speech.silero import WINDOW

MAX_CHUNK_SECONDS = 30.0  # Whisper's and GLM-ASR's encoder window
# Stretches of speech separated by less than this share a chunk (fewer, fuller model
# calls); longer silences start a new chunk, which keeps segment times tight.
MERGE_GAP_SECONDS = 1.5
# When continuous speech exceeds a chunk, cut at the least speech-like window in the last
# third of the window rather than at a hard 30 s edge.
SPLIT_SEARCH_SECONDS = 10.0
# With the guard off, a tail shorter than one detector window holds nothing to hear.
MIN_UNGUARDED_SAMPLES = WINDOW
# Among equally unlikely windows, prefer the quietest: a tie-break, never a decision.
LEVEL_TIE_BREAK = 0.01


@dataclass(frozen=True)
class Chunk:
    start: int  # first sample, inclusive, in the original 16 kHz audio
    end: int  # last sample, exclusive
    # Applied before the model: quiet speech brought to a normal level (speech.levels).
    gain: float = 1.0

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE

    def samples(self, audio: np.ndarray) -> np.ndarray:
        """What the model hears of this chunk of `audio`: its samples at its gain."""
        return apply_gain(audio[self.start : self.end], self.gain)


def window_levels(audio: np.ndarray) -> np.ndarray:
    """Level of each 32-ms window from 0 (quietest) to 1 (loudest), the last zero-padded."""
    n_windows = max(1, -(-audio.size // WINDOW))
    padded = np.zeros(n_windows * WINDOW, dtype=np.float32)
    padded[: audio.size] = audio
    frames = padded.reshape(n_windows, WINDOW)
    energy = np.einsum("ij,ij->i", frames, frames).astype(np.float64) / WINDOW
    db = 10.0 * np.log10(np.maximum(energy, 1e-20))
    span = float(db.max() - db.min())
    return (db - db.min()) / span if span > 0 else np.zeros_like(db)


def _split_long(start: int, end: int, cost: np.ndarray, max_samples: int) -> list[tuple[int, int]]:
    """Cut a sample range longer than max_samples at its cheapest windows."""
    pieces = []
    search = int(SPLIT_SEARCH_SECONDS * SAMPLE_RATE)
    while end - start > max_samples:
        first = -(-(start + max(WINDOW, max_samples - search)) // WINDOW)
        last = (start + max_samples) // WINDOW  # windows wholly inside the allowed chunk
        if last <= first:
            cut = start + max_samples
        else:
            cut = (first + int(np.argmin(cost[first:last]))) * WINDOW + WINDOW // 2
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def _grouped(segments: tuple[tuple[int, int], ...], max_samples: int) -> list[tuple[int, int]]:
    merge_gap = int(MERGE_GAP_SECONDS * SAMPLE_RATE)
    groups: list[tuple[int, int]] = []
    for start, end in segments:
        if groups and start - groups[-1][1] <= merge_gap and end - groups[-1][0] <= max_samples:
            groups[-1] = (groups[-1][0], end)
        else:
            groups.append((start, end))
    return groups


def split_into_chunks(
    audio: np.ndarray, analysis: SpeechAnalysis | None, max_seconds: float = MAX_CHUNK_SECONDS
) -> list[Chunk]:
    """Chunks of at most max_seconds covering every stretch of speech, in order.

    `analysis` None means the silence guard is off: every sample goes to the model, cut
    at its quietest points, at its own level.
    """
    if audio.size == 0:
        return []
    max_samples = int(max_seconds * SAMPLE_RATE)
    levels = window_levels(audio)
    if analysis is None:
        pieces = _split_long(0, audio.size, levels, max_samples)
        return [Chunk(s, e) for s, e in pieces if e - s >= MIN_UNGUARDED_SAMPLES]
    cost = analysis.probabilities[: levels.size] + LEVEL_TIE_BREAK * levels[: analysis.probabilities.size]
    chunks = []
    for start, end in _grouped(analysis.segments, max_samples):
        for s, e in _split_long(start, end, cost, max_samples):
            chunks.append(Chunk(s, e, model_gain(audio[s:e])))
    return [c for c in chunks if c.end > c.start]


def speech_chunks(
    audio: np.ndarray,
    detector: SpeechDetector,
    options: SpeechOptions = SpeechOptions(),
    max_seconds: float = MAX_CHUNK_SECONDS,
) -> list[Chunk]:
    """The chunks the ingress would send for `audio` (benchmarks and tests use it too)."""
    analysis = detector.analyse(audio, options) if options.enabled else None
    return split_into_chunks(audio, analysis, max_seconds)
