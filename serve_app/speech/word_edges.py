"""Word edges moved onto the sound: where a word begins and ends, not the pause beside it.

Time warping over cross-attention places a word's boundary somewhere in the pause before
or after it: starts drift early into the preceding pause (openai-whisper's and
faster-whisper's do too), ends late into the following one. Within the span the model gave
a word, its sound is where the level comes within EDGE_RANGE_DB of the word's own loudest
10 ms: the start moves forward to the first such frame, the end back to the last. The
measure is relative to each word, so it holds for quiet and loud recordings alike; where a
pause is no quieter than that (noise, reverberation) nothing moves. Edges only move
inward, so words keep their order and never grow.
"""

from __future__ import annotations

import numpy as np

from serve_app.speech.silero import SAMPLE_RATE
from serve_app.transcript import Word

FRAME = 160  # 10 ms
# Weak consonants (f, th, h) sit 30-35 dB under a word's vowel; breath and room noise in
# a pause, further down. 40 dB keeps the consonants in the word.
EDGE_RANGE_DB = 40.0
# A stop consonant's closure inside a word lasts 50-100 ms; the pause that time warping
# drifts into is longer, or it would not matter.
MIN_PAUSE_FRAMES = 10  # 100 ms


def snap_to_sound(words: tuple[Word, ...], audio: np.ndarray) -> tuple[Word, ...]:
    """`words` with edges that fall in a pause moved to the nearest sound inside the word."""
    frames = audio[: audio.size // FRAME * FRAME].reshape(-1, FRAME).astype(np.float64)
    level_db = 10 * np.log10(np.mean(frames * frames, axis=1) + 1e-12)
    snapped = []
    for word in words:
        first = int(word.start * SAMPLE_RATE) // FRAME
        last = min(int(np.ceil(word.end * SAMPLE_RATE / FRAME)), level_db.size)
        span = level_db[first:last]
        if span.size < 2:
            snapped.append(word)
            continue
        begin, end = sound_within(span)
        start = max(word.start, (first + begin) * FRAME / SAMPLE_RATE)
        stop = min(word.end, (first + end) * FRAME / SAMPLE_RATE)
        snapped.append(Word(word.word, round(start, 3), round(max(stop, start), 3)))
    return tuple(snapped)


def sound_within(span_db: np.ndarray) -> tuple[int, int]:
    """[begin, end) frames of a word's sound in the span the model gave it: after the last
    pause before its loudest frame, before the first pause after it. A pause is a run of
    at least MIN_PAUSE_FRAMES quiet frames, or quiet frames at the span's edge; a shorter
    quiet run inside the word (a stop consonant's closure) is part of it. The span's edges
    often hold the neighbours' tails, which are not quiet: the rule looks for the pause."""
    quiet = span_db < span_db.max() - EDGE_RANGE_DB
    peak = int(np.argmax(span_db))
    begin, end = 0, span_db.size
    for run_start, run_end in _runs(quiet):
        is_pause = run_end - run_start >= MIN_PAUSE_FRAMES
        if run_end <= peak and (is_pause or run_start == 0):
            begin = run_end  # the last pause before the peak wins
        elif run_start > peak and (is_pause or run_end == span_db.size):
            end = run_start
            break  # the first pause after the peak
    return begin, end


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in `mask`."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))
