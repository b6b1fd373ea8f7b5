"""Render a transcription in each of OpenAI's response formats."""

from __future__ import annotations

import textwrap
from typing import Literal

from starlette.responses import JSONResponse, PlainTextResponse, Response

from serve_app.transcript import Segment, Transcription

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
RESPONSE_FORMATS: tuple[str, ...] = ("json", "text", "srt", "vtt", "verbose_json")

# Subtitle conventions (Netflix/BBC style guides): at most two lines of about 42
# characters on screen at once, so long segments are split into several cues.
SUBTITLE_LINE_CHARS = 42
SUBTITLE_MAX_LINES = 2


def _timestamp(seconds: float, decimal: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def subtitle_cues(segments: tuple[Segment, ...]) -> list[tuple[float, float, str]]:
    """Split segments into cues that fit on screen; time is shared out by characters."""
    cues: list[tuple[float, float, str]] = []
    for segment in segments:
        lines = textwrap.wrap(segment.text, SUBTITLE_LINE_CHARS, break_long_words=False)
        groups = [
            lines[i : i + SUBTITLE_MAX_LINES] for i in range(0, len(lines), SUBTITLE_MAX_LINES)
        ]
        total_chars = sum(len(" ".join(g)) for g in groups) or 1
        start, span = segment.start, max(segment.end - segment.start, 0.001)
        for group in groups:
            share = span * len(" ".join(group)) / total_chars
            cues.append((start, start + share, "\n".join(group)))
            start += share
    return cues


def to_srt(transcription: Transcription) -> str:
    blocks = [
        f"{i}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n"
        for i, (start, end, text) in enumerate(subtitle_cues(transcription.segments), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(transcription: Transcription) -> str:
    blocks = ["WEBVTT\n"] + [
        f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{text}\n"
        for start, end, text in subtitle_cues(transcription.segments)
    ]
    return "\n".join(blocks)


def to_verbose_json(
    transcription: Transcription, task: str = "transcribe", segments: bool = True
) -> dict:
    """OpenAI's verbose_json: `words` when they were timed, `segments` unless only words
    were asked for (`segments=False`), as OpenAI leaves them out then."""
    body: dict = {
        "task": task,
        "language": transcription.language,
        "duration": transcription.duration,
        "text": transcription.text,
    }
    if transcription.words is not None:
        body["words"] = [
            {"word": w.word, "start": w.start, "end": w.end} for w in transcription.words
        ]
    if segments:
        body["segments"] = [
            {"id": s.id, "start": s.start, "end": s.end, "text": s.text}
            for s in transcription.segments
        ]
    return body


def render_body(
    transcription: Transcription, response_format: str, task: str = "transcribe",
    segments: bool = True,
) -> dict | str:
    """The response content as a JSON value: an object for json formats, else a string."""
    if response_format == "text":
        return transcription.text
    if response_format == "srt":
        return to_srt(transcription)
    if response_format == "vtt":
        return to_vtt(transcription)
    if response_format == "verbose_json":
        return to_verbose_json(transcription, task, segments)
    return {"text": transcription.text}


def render(
    transcription: Transcription, response_format: str, task: str = "transcribe",
    segments: bool = True,
) -> Response:
    if response_format == "text":
        return PlainTextResponse(transcription.text + "\n")
    if response_format == "srt":
        return PlainTextResponse(to_srt(transcription), media_type="application/x-subrip")
    if response_format == "vtt":
        return PlainTextResponse(to_vtt(transcription), media_type="text/vtt")
    if response_format == "verbose_json":
        return JSONResponse(to_verbose_json(transcription, task, segments))
    return JSONResponse({"text": transcription.text})
