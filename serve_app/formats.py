"""Render a transcription in each of OpenAI's response formats."""

from __future__ import annotations

from typing import Literal

from starlette.responses import JSONResponse, PlainTextResponse, Response

from serve_app.subtitles import Cue, cues_from_segments, cues_from_words, segments_from_words
from serve_app.transcript import Segment, Transcription

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
RESPONSE_FORMATS: tuple[str, ...] = ("json", "text", "srt", "vtt", "verbose_json")
# Formats that carry times: they are timed by the words where the model can time them.
TIMED_FORMATS = ("srt", "vtt", "verbose_json")


def _timestamp(seconds: float, decimal: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def subtitle_cues(transcription: Transcription) -> list[Cue]:
    """Cues timed by the words when they were timed, else shared out by characters."""
    if transcription.words:
        return cues_from_words(transcription.words)
    return cues_from_segments(transcription.segments)


def segments_of(transcription: Transcription) -> tuple[Segment, ...]:
    """Segments ending at sentence ends and pauses when the words were timed; else the
    chunks' own."""
    if transcription.words:
        return tuple(segments_from_words(transcription.words))
    return transcription.segments


def to_srt(transcription: Transcription) -> str:
    blocks = [
        f"{i}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n{c.text}\n"
        for i, c in enumerate(subtitle_cues(transcription), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(transcription: Transcription) -> str:
    blocks = ["WEBVTT\n"] + [
        f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n{c.text}\n"
        for c in subtitle_cues(transcription)
    ]
    return "\n".join(blocks)


def to_verbose_json(
    transcription: Transcription, task: str = "transcribe", segments: bool = True,
    words: bool = True,
) -> dict:
    """OpenAI's verbose_json: `words` when they were timed and asked for, `segments` unless
    only words were asked for (`segments=False`), as OpenAI leaves them out then."""
    body: dict = {
        "task": task,
        "language": transcription.language,
        "duration": transcription.duration,
        "text": transcription.text,
    }
    if words and transcription.words is not None:
        body["words"] = [
            {"word": w.word, "start": w.start, "end": w.end} for w in transcription.words
        ]
    if segments:
        body["segments"] = [
            {"id": s.id, "start": s.start, "end": s.end, "text": s.text}
            for s in segments_of(transcription)
        ]
    return body


def render_body(
    transcription: Transcription, response_format: str, task: str = "transcribe",
    segments: bool = True, words: bool = True,
) -> dict | str:
    """The response content as a JSON value: an object for json formats, else a string."""
    if response_format == "text":
        return transcription.text
    if response_format == "srt":
        return to_srt(transcription)
    if response_format == "vtt":
        return to_vtt(transcription)
    if response_format == "verbose_json":
        return to_verbose_json(transcription, task, segments, words)
    return {"text": transcription.text}


def render(
    transcription: Transcription, response_format: str, task: str = "transcribe",
    segments: bool = True, words: bool = True,
) -> Response:
    if response_format == "text":
        return PlainTextResponse(transcription.text + "\n")
    if response_format == "srt":
        return PlainTextResponse(to_srt(transcription), media_type="application/x-subrip")
    if response_format == "vtt":
        return PlainTextResponse(to_vtt(transcription), media_type="text/vtt")
    if response_format == "verbose_json":
        return JSONResponse(to_verbose_json(transcription, task, segments, words))
    return JSONResponse({"text": transcription.text})
