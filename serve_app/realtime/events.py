"""OpenAI Realtime events in transcription mode: what clients send, what the server answers.

Client events are pydantic models discriminated on `type` and validated with one
TypeAdapter, as in openai-python's `types/realtime`; fields OpenAI defines that do not
change a transcript here (noise_reduction, include, idle_timeout_ms, ...) are accepted and
left alone, and unknown fields are ignored as OpenAI's own server does. Two dialects:

- GA: `session.update` with `session.type: "transcription"`; the server answers
  `session.created` / `session.updated` and `conversation.item.added` / `.done`.
- Beta (`OpenAI-Beta: realtime=v1`, or a `transcription_session.update`): the answers are
  `transcription_session.created` / `.updated` and `conversation.item.created`.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


# ---- session configuration: GA shape -------------------------------------------------


class PCMFormat(_Event):
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[24000] = 24000  # OpenAI's only rate for audio/pcm


class PCMUFormat(_Event):
    type: Literal["audio/pcmu"]


class PCMAFormat(_Event):
    type: Literal["audio/pcma"]


AudioFormat = Annotated[Union[PCMFormat, PCMUFormat, PCMAFormat], Field(discriminator="type")]


class TranscriptionConfig(_Event):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class ServerVAD(_Event):
    type: Literal["server_vad"]
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(None, ge=0, le=10_000)
    silence_duration_ms: int | None = Field(None, ge=0, le=10_000)


class SemanticVAD(_Event):
    """Mapped onto server_vad (docs/realtime.md): its eagerness picks the closing pause."""

    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"


TurnDetection = Annotated[Union[ServerVAD, SemanticVAD], Field(discriminator="type")]


class AudioInput(_Event):
    format: AudioFormat | None = None
    transcription: TranscriptionConfig | None = None
    turn_detection: TurnDetection | None = None
    noise_reduction: dict | None = None


class AudioConfig(_Event):
    input: AudioInput | None = None


class SessionConfig(_Event):
    type: Literal["transcription", "realtime"] = "transcription"
    audio: AudioConfig | None = None
    include: list[str] | None = None


# ---- session configuration: beta shape -----------------------------------------------


class BetaTurnDetection(_Event):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(None, ge=0, le=10_000)
    silence_duration_ms: int | None = Field(None, ge=0, le=10_000)
    eagerness: Literal["low", "medium", "high", "auto"] | None = None


class BetaSessionConfig(_Event):
    input_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None
    input_audio_transcription: TranscriptionConfig | None = None
    turn_detection: BetaTurnDetection | None = None
    input_audio_noise_reduction: dict | None = None
    include: list[str] | None = None


# ---- client events -------------------------------------------------------------------


class SessionUpdate(_Event):
    type: Literal["session.update"]
    event_id: str | None = None
    session: SessionConfig


class BetaSessionUpdate(_Event):
    type: Literal["transcription_session.update"]
    event_id: str | None = None
    session: BetaSessionConfig


class BufferAppend(_Event):
    type: Literal["input_audio_buffer.append"]
    event_id: str | None = None
    audio: str


class BufferCommit(_Event):
    type: Literal["input_audio_buffer.commit"]
    event_id: str | None = None


class BufferClear(_Event):
    type: Literal["input_audio_buffer.clear"]
    event_id: str | None = None


ClientEvent = Annotated[
    Union[SessionUpdate, BetaSessionUpdate, BufferAppend, BufferCommit, BufferClear],
    Field(discriminator="type"),
]
CLIENT_EVENTS = TypeAdapter(ClientEvent)
CLIENT_EVENT_TYPES = (
    "session.update",
    "transcription_session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)


# ---- server events -------------------------------------------------------------------


def server_event(type_: str, **fields: Any) -> dict:
    return {"type": type_, "event_id": new_id("event"), **fields}


class RealtimeError(Exception):
    """A client mistake or a server failure, sent as OpenAI's `error` event; the session
    goes on unless `close_code` says it must end."""

    def __init__(
        self,
        code: str,
        message: str,
        param: str | None = None,
        error_type: str = "invalid_request_error",
        close_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.error_type = error_type
        self.close_code = close_code

    def event(self, client_event_id: str | None = None) -> dict:
        return server_event(
            "error",
            error={
                "type": self.error_type,
                "code": self.code,
                "message": self.message,
                "param": self.param,
                "event_id": client_event_id,
            },
        )


def validation_error(exc: Exception, event_type: str | None) -> RealtimeError:
    """The first pydantic complaint, named by its path in the event (OpenAI's `param`)."""
    errors = getattr(exc, "errors", lambda: [])()
    if not errors:
        return RealtimeError("invalid_value", f"Invalid event: {exc}")
    first = errors[0]
    path = [str(p) for p in first.get("loc", ()) if not str(p).startswith("function-")]
    # The discriminator's tag is the union member's name; it is not in the client's JSON.
    path = [p for p in path if p not in (event_type, "audio/pcm", "audio/pcmu", "audio/pcma",
                                         "server_vad", "semantic_vad")]
    param = ".".join(path) or None
    if first.get("type") == "union_tag_invalid" and param is None:
        param = "type"
    message = f"Invalid '{param}': {first.get('msg')}" if param else str(first.get("msg"))
    return RealtimeError("invalid_value", message, param=param)
