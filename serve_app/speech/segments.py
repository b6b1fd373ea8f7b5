"""Speech segments of a whole file from its window probabilities (pure numpy/Python)."""

from __future__ import annotations

import numpy as np

from serve_app.speech.options import SpeechOptions
from serve_app.speech.silero import SAMPLE_RATE, WINDOW
from serve_app.speech.tracker import SpeechTracker


# Silero's probability crosses the threshold a few windows into a word, later still after
# long silence (up to 0.22 s after 10 minutes of digital silence, against ~0.05 s after
# 5 s): starts get this much more room than ends, so the padding keeps the first phoneme.
ONSET_ALLOWANCE_WINDOWS = 3


def ms_to_windows(ms: float) -> int:
    return int(round(ms * SAMPLE_RATE / 1000 / WINDOW))


def speech_segments(
    probabilities: np.ndarray, n_samples: int, options: SpeechOptions
) -> list[tuple[int, int]]:
    """[start, end) sample ranges of speech, padded, in order, never overlapping."""
    tracker = SpeechTracker(
        options.threshold, options.neg_threshold, ms_to_windows(options.min_silence_ms)
    )
    raw: list[tuple[int, int]] = []
    for probability in probabilities.tolist():
        transition = tracker.update(probability)
        if transition is not None and transition.kind == "stopped":
            raw.append((tracker.speech_start, transition.window))
    if tracker.in_speech:
        raw.append((tracker.speech_start, tracker.speech_end_so_far()))
    min_windows = max(1, ms_to_windows(options.min_speech_ms))
    kept = [
        (max(0, s - ONSET_ALLOWANCE_WINDOWS) * WINDOW, min(e * WINDOW, n_samples))
        for s, e in raw
        if e - s >= min_windows
    ]
    return _padded(kept, int(options.speech_pad_ms * SAMPLE_RATE / 1000), n_samples)


def _padded(segments: list[tuple[int, int]], pad: int, n_samples: int) -> list[tuple[int, int]]:
    """Each side grows by `pad`; a gap too short for two pads is shared half and half."""
    out = [list(s) for s in segments]
    for i, segment in enumerate(out):
        if i == 0:
            segment[0] = max(0, segment[0] - pad)
        if i + 1 < len(out):
            following = out[i + 1]
            gap = following[0] - segment[1]
            grow = min(pad, gap // 2)
            segment[1] += grow
            following[0] -= grow
        else:
            segment[1] = min(n_samples, segment[1] + pad)
    return [(s, e) for s, e in out if e > s]
