"""Subtitle cues and segments from timed words, against the conventions they follow."""

from __future__ import annotations

import numpy as np

from serve_app.subtitles import (
    CUE_GAP_S,
    LINE_CHARS,
    MAX_CHARS_PER_S,
    MAX_CUE_S,
    MAX_LINES,
    MIN_CUE_S,
    cues_from_words,
    segments_at_pauses,
    segments_from_words,
)
from serve_app.transcript import Segment, Word


def speech(text: str, pause_after: dict[int, float] | None = None, word_s: float = 0.32,
           start: float = 0.4) -> tuple[Word, ...]:
    """Words spoken one after another at ~180 words a minute, with pauses where asked."""
    words, t = [], start
    for index, token in enumerate(text.split()):
        words.append(Word(token, round(t, 3), round(t + word_s, 3)))
        t += word_s + 0.02 + (pause_after or {}).get(index, 0.0)
    return tuple(words)


LONG_TALK = speech(
    "Good morning everyone and welcome to the quarterly review of our regional sales. "
    "Before we start I want to thank the teams in the north and the south for their work. "
    "The numbers this quarter are better than we expected, and the margins held up well "
    "even though shipping costs went up again in the autumn.",
    pause_after={12: 0.8, 30: 0.6})


def test_cues_follow_the_subtitle_conventions() -> None:
    cues = cues_from_words(LONG_TALK)
    assert len(cues) >= 4
    for cue in cues:
        lines = cue.text.split("\n")
        assert len(lines) <= MAX_LINES and all(len(line) <= LINE_CHARS for line in lines)
        assert MIN_CUE_S - 1e-6 <= cue.end - cue.start <= MAX_CUE_S + 1e-6, cue
        assert len(cue.text.replace("\n", " ")) / (cue.end - cue.start) <= MAX_CHARS_PER_S + 1
    for before, after in zip(cues, cues[1:]):
        assert after.start - before.end >= CUE_GAP_S - 1e-6
    # Every word is in exactly one cue, in order, and each cue appears with its first word.
    assert " ".join(c.text.replace("\n", " ") for c in cues) == " ".join(w.word for w in LONG_TALK)
    starts = {w.start for w in LONG_TALK}
    assert all(c.start in starts for c in cues)


def test_cues_break_at_sentence_ends_and_pauses() -> None:
    cues = cues_from_words(LONG_TALK)
    texts = [c.text.replace("\n", " ") for c in cues]
    # A sentence end never sits inside a cue unless the cue would otherwise be too short.
    inside = [t for t in texts if "." in t.rstrip(".")]
    assert not inside, inside
    after_pause = LONG_TALK[13]  # the first word after the 0.8-s pause starts a cue
    assert any(c.start == after_pause.start for c in cues)


def test_segments_end_at_sentence_ends_and_pauses() -> None:
    segments = segments_from_words(LONG_TALK)
    assert [s.text.endswith(".") for s in segments].count(True) >= 3
    assert all(s.end > s.start for s in segments)
    assert [s.id for s in segments] == list(range(len(segments)))
    assert np.isclose(segments[0].start, LONG_TALK[0].start)


def test_without_word_times_segments_are_cut_at_the_detectors_pauses() -> None:
    chunk = Segment(0, 1.0, 13.0, "one two three four five six seven eight nine ten")
    speech = ((1.0, 4.0), (5.0, 8.0), (9.0, 13.0), (20.0, 22.0))  # the last: another chunk
    pieces = segments_at_pauses((chunk,), speech)
    assert [(p.start, p.end) for p in pieces] == [(1.0, 4.0), (5.0, 8.0), (9.0, 13.0)]
    assert " ".join(p.text for p in pieces) == chunk.text  # every word once, in order
    assert [len(p.text.split()) for p in pieces] == [3, 3, 4]  # shared by speech time
    assert [p.id for p in pieces] == [0, 1, 2]
    # Writing without spaces is shared by characters.
    chinese = segments_at_pauses((Segment(0, 0.0, 4.0, "今天天气很好我们去公园"),),
                                 ((0.0, 2.0), (2.5, 4.0)))
    assert "".join(p.text for p in chinese) == "今天天气很好我们去公园" and len(chinese) == 2
    # One stretch, or none, leaves the segment as it was.
    assert segments_at_pauses((chunk,), ((1.0, 13.0),)) == (chunk,)
