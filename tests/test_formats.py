"""Response formats: subtitle files parse with real libraries and keep lines short."""

from __future__ import annotations

import io

import srt
import webvtt

from serve_app.formats import to_srt, to_verbose_json, to_vtt
from serve_app.subtitles import LINE_CHARS as SUBTITLE_LINE_CHARS
from serve_app.transcript import Segment, Transcription

LONG = (
    "this is a rather long segment of speech that certainly will not fit on one line "
    "of a subtitle and so it must be split into several cues that share its time"
)
TRANSCRIPT = Transcription(
    text="hello there " + LONG,
    language="en",
    duration=3725.5,
    segments=(Segment(0, 1.25, 2.5, "hello there"), Segment(1, 3600.0, 3620.0, LONG)),
)


def test_srt_parses_and_keeps_times() -> None:
    cues = list(srt.parse(to_srt(TRANSCRIPT)))
    assert cues[0].start.total_seconds() == 1.25 and cues[0].content == "hello there"
    assert abs(cues[1].start.total_seconds() - 3600.0) < 1e-6
    assert abs(cues[-1].end.total_seconds() - 3620.0) < 0.01
    assert all(len(line) <= SUBTITLE_LINE_CHARS for c in cues for line in c.content.split("\n"))
    assert " ".join(" ".join(c.content.split("\n")) for c in cues[1:]) == LONG


def test_vtt_parses() -> None:
    captions = webvtt.from_buffer(io.StringIO(to_vtt(TRANSCRIPT)))
    assert captions[0].start == "00:00:01.250"
    assert captions[1].start == "01:00:00.000"
    assert all(len(line) <= SUBTITLE_LINE_CHARS for c in captions for line in c.lines)


def test_verbose_json_shape() -> None:
    body = to_verbose_json(TRANSCRIPT)
    assert body["duration"] == 3725.5 and body["language"] == "en"
    assert [s["id"] for s in body["segments"]] == [0, 1]
    assert set(body["segments"][0]) == {"id", "start", "end", "text"}


def test_empty_transcript_renders_valid_files() -> None:
    empty = Transcription("", None, 1.0, ())
    assert list(srt.parse(to_srt(empty))) == []
    assert to_vtt(empty).startswith("WEBVTT")
