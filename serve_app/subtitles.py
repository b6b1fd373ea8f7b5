"""Subtitle cues timed by the words, following subtitle conventions.

Cues follow the common style guides (Netflix, BBC): at most 2 lines of at most 42
characters, on screen between 1 and 7 seconds, at most about 20 characters per second, a
small gap between cues, and each cue appears when its first word is spoken. A cue ends at
a sentence end or a pause when it can, so it reads as a unit. Without word times (a model
that cannot time words), each segment's time is shared out by characters instead.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np

from serve_app.transcript import Segment, Word

LINE_CHARS = 42
MAX_LINES = 2
MIN_CUE_S = 1.0
MAX_CUE_S = 7.0
MAX_CHARS_PER_S = 20.0
CUE_GAP_S = 0.08  # two frames at 25 fps: the eye sees a new cue
PAUSE_S = 0.5  # a pause this long ends a cue (and a segment)
SENTENCE_END = (".", "?", "!", "。", "？", "！")


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str  # lines joined by "\n"


def fits_on_screen(text: str) -> bool:
    lines = textwrap.wrap(text, LINE_CHARS, break_long_words=False)
    return len(lines) <= MAX_LINES and all(len(line) <= LINE_CHARS for line in lines)


def group_words(words: tuple[Word, ...]) -> list[list[Word]]:
    """Words in cue-sized groups: each fits on screen in 7 s at a readable speed, and breaks
    at a sentence end or a pause where one comes after at least a second."""
    groups: list[list[Word]] = []
    current: list[Word] = []
    for word in words:
        if current:
            text = " ".join(w.word for w in current + [word])
            span = word.end - current[0].start
            pause = word.start - current[-1].end
            ended = current[-1].word.endswith(SENTENCE_END)
            too_much = (not fits_on_screen(text) or span > MAX_CUE_S
                        or len(text) > MAX_CHARS_PER_S * MAX_CUE_S)
            natural_break = (pause >= PAUSE_S or ended) and (
                current[-1].end - current[0].start >= MIN_CUE_S or pause >= PAUSE_S)
            if too_much or natural_break:
                groups.append(current)
                current = []
        current.append(word)
    if current:
        groups.append(current)
    return groups


def cues_from_words(words: tuple[Word, ...]) -> list[Cue]:
    """One cue per group of words, from its first word's start."""
    groups = group_words(words)
    cues = []
    for index, group in enumerate(groups):
        text = " ".join(w.word for w in group)
        start = group[0].start
        # Long enough to read (1 s, 20 characters a second), never past 7 s, and leaving a
        # gap before the next cue appears (in running speech that takes the last few
        # hundredths of the last word: the next cue must not wait for them).
        wanted = max(group[-1].end, start + MIN_CUE_S, start + len(text) / MAX_CHARS_PER_S)
        end = min(wanted, start + MAX_CUE_S)
        if index + 1 < len(groups):
            end = min(end, groups[index + 1][0].start - CUE_GAP_S)
        end = max(end, start + 0.001)
        lines = textwrap.wrap(text, LINE_CHARS, break_long_words=False)
        cues.append(Cue(round(start, 3), round(end, 3), "\n".join(lines)))
    return cues


def segments_from_words(words: tuple[Word, ...]) -> list[Segment]:
    """Segments that end at sentence ends and pauses, as a person would read them."""
    segments: list[Segment] = []
    current: list[Word] = []
    for word in words:
        if current and (word.start - current[-1].end >= PAUSE_S
                        or current[-1].word.endswith(SENTENCE_END)):
            segments.append(_segment(len(segments), current))
            current = []
        current.append(word)
    if current:
        segments.append(_segment(len(segments), current))
    return segments


def cues_from_segments(segments: tuple[Segment, ...]) -> list[Cue]:
    """Without word times: each segment cut into cues that fit on screen, its time shared
    out by characters (a model that cannot time words, or a translation)."""
    cues: list[Cue] = []
    for segment in segments:
        lines = textwrap.wrap(segment.text, LINE_CHARS, break_long_words=False)
        groups = [lines[i: i + MAX_LINES] for i in range(0, len(lines), MAX_LINES)]
        total_chars = sum(len(" ".join(g)) for g in groups) or 1
        start, span = segment.start, max(segment.end - segment.start, 0.001)
        for group in groups:
            share = span * len(" ".join(group)) / total_chars
            cues.append(Cue(start, start + share, "\n".join(group)))
            start += share
    return cues


def segments_at_pauses(segments: tuple[Segment, ...],
                       speech: tuple[tuple[float, float], ...]) -> tuple[Segment, ...]:
    """Without word times: each segment (a chunk, up to 30 s) cut at the speech detector's
    pauses inside it. The pieces' times are the detector's; the text is shared out in
    proportion to each piece's speech time, at the nearest word (or, in writing without
    spaces, character) boundary, which is an estimate where word times would be exact."""
    pieces: list[Segment] = []
    for segment in segments:
        stretches = [(max(s, segment.start), min(e, segment.end)) for s, e in speech
                     if e > segment.start and s < segment.end]
        for start, end, text in _share_text(segment, stretches):
            pieces.append(Segment(len(pieces), round(start, 3), round(end, 3), text))
    return tuple(pieces)


def _share_text(segment: Segment, stretches: list[tuple[float, float]]):
    if len(stretches) < 2:
        return [(segment.start, segment.end, segment.text)]
    spaced = " " in segment.text.strip()
    units = segment.text.split() if spaced else list(segment.text.strip())
    joiner = " " if spaced else ""
    ends = np.cumsum([len(u) + len(joiner) for u in units])  # characters up to each unit
    total_speech = sum(e - s for s, e in stretches)
    shared, taken, elapsed = [], 0, 0.0
    for index, (start, end) in enumerate(stretches):
        elapsed += end - start
        if index == len(stretches) - 1:
            upto = len(units)
        else:
            target = ends[-1] * elapsed / total_speech
            upto = max(taken, int(np.argmin(np.abs(ends - target))) + 1)
        if upto > taken:
            shared.append((start, end, joiner.join(units[taken:upto])))
            taken = upto
    return shared


def _segment(index: int, words: list[Word]) -> Segment:
    return Segment(index, words[0].start, words[-1].end, " ".join(w.word for w in words))
