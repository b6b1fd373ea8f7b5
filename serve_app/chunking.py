"""Split audio into ≤30 s chunks at quiet points, skipping what holds no speech.

Energy-based voice activity detection in numpy: the ingress never imports torch. Chunk
boundaries fall in pauses whenever a pause exists, so no word is cut in half, and each
chunk carries its exact offset in the original audio so timestamps never drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serve_app.audio import SAMPLE_RATE

MAX_CHUNK_SECONDS = 30.0  # Whisper's and GLM-ASR's encoder window
FRAME_SECONDS = 0.03  # 30 ms analysis frames: shorter than a phoneme
FRAME = int(FRAME_SECONDS * SAMPLE_RATE)  # 480 samples per frame
# Frames quieter than this are silence whatever the recording (-50 dBFS ~ 0.003 RMS).
ABSOLUTE_FLOOR_DB = -50.0
# Speech stands this far above the recording's own noise floor, or halfway between the
# floor and the loudest frame when the whole recording is speech (no quiet stretch).
NOISE_MARGIN_DB = 15.0
# Speech rises and falls syllable by syllable; a signal whose loud and quiet frames differ
# by less than this is steady noise or hum, not speech.
MIN_SPEECH_VARIATION_DB = 6.0
# Pauses shorter than this are gaps between words, not between utterances.
MIN_PAUSE_SECONDS = 0.3
# Voiced stretches shorter than this are clicks or bumps, not words.
MIN_SPEECH_SECONDS = 0.12
# Context kept around speech so onsets and trailing consonants survive.
PAD_SECONDS = 0.2
# Utterances separated by less than this share a chunk (fewer, fuller model calls);
# longer silences start a new chunk, which keeps segment times tight.
MERGE_GAP_SECONDS = 1.5
# When continuous speech exceeds a chunk, cut at the quietest frame in the last
# third of the window rather than at a hard 30 s edge.
SPLIT_SEARCH_SECONDS = 10.0


@dataclass(frozen=True)
class Chunk:
    start: int  # first sample, inclusive, in the original 16 kHz audio
    end: int  # last sample, exclusive

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


def frame_energies_db(audio: np.ndarray) -> np.ndarray:
    """RMS level of each 30 ms frame in dBFS (the last partial frame is zero-padded)."""
    n_frames = max(1, -(-audio.size // FRAME))
    padded = np.zeros(n_frames * FRAME, dtype=np.float32)
    padded[: audio.size] = audio
    frames = padded.reshape(n_frames, FRAME).astype(np.float64)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-10))


def speech_threshold_db(energies_db: np.ndarray) -> float:
    """Level above which a frame is voiced; +inf when nothing in the signal is speech."""
    noise_floor = float(np.percentile(energies_db, 10))
    spread = float(energies_db.max()) - noise_floor
    if spread < MIN_SPEECH_VARIATION_DB:
        return float("inf")
    return max(ABSOLUTE_FLOOR_DB, noise_floor + min(NOISE_MARGIN_DB, spread / 2))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of consecutive True values."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def speech_regions(audio: np.ndarray) -> list[tuple[int, int]]:
    """Frame index ranges that hold speech, with short pauses bridged."""
    energies = frame_energies_db(audio)
    voiced = energies > speech_threshold_db(energies)
    regions = _runs(voiced)
    min_pause = int(MIN_PAUSE_SECONDS / FRAME_SECONDS)
    bridged: list[tuple[int, int]] = []
    for start, end in regions:
        if bridged and start - bridged[-1][1] < min_pause:
            bridged[-1] = (bridged[-1][0], end)
        else:
            bridged.append((start, end))
    min_speech = int(MIN_SPEECH_SECONDS / FRAME_SECONDS)
    return [(s, e) for s, e in bridged if e - s >= min_speech]


def _split_long(start: int, end: int, energies: np.ndarray, max_frames: int) -> list[tuple[int, int]]:
    """Cut a frame range longer than max_frames at its quietest points."""
    pieces = []
    search = int(SPLIT_SEARCH_SECONDS / FRAME_SECONDS)
    while end - start > max_frames:
        lo = start + max(1, max_frames - search)
        cut = lo + int(np.argmin(energies[lo : start + max_frames]))
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def split_into_chunks(audio: np.ndarray, max_seconds: float = MAX_CHUNK_SECONDS) -> list[Chunk]:
    """Chunks of at most max_seconds covering every stretch of speech, in order."""
    if audio.size == 0:
        return []
    energies = frame_energies_db(audio)
    pad = int(PAD_SECONDS / FRAME_SECONDS)
    max_frames = int(max_seconds / FRAME_SECONDS)
    merge_gap = int(MERGE_GAP_SECONDS / FRAME_SECONDS)
    n_frames = energies.size

    groups: list[tuple[int, int]] = []
    for start, end in speech_regions(audio):
        start, end = max(0, start - pad), min(n_frames, end + pad)
        if groups and start - groups[-1][1] <= merge_gap and end - groups[-1][0] <= max_frames:
            groups[-1] = (groups[-1][0], end)
        elif groups and start < groups[-1][1]:  # padding overlapped a chunk that is full
            groups.append((groups[-1][1], end))
        else:
            groups.append((start, end))

    chunks: list[Chunk] = []
    for start, end in groups:
        for s, e in _split_long(start, end, energies, max_frames):
            chunks.append(Chunk(start=s * FRAME, end=min(e * FRAME, audio.size)))
    return [c for c in chunks if c.end > c.start]
