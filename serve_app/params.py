"""Request parameters of the transcription endpoints, validated into typed options."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serve_app.config import SpeechSettings
from serve_app.errors import APIError, invalid_parameter
from serve_app.formats import ResponseFormat
from serve_app.speech import SpeechOptions

# ISO-639-1 codes Whisper knows; GLM-ASR accepts a subset (its backend says which).
ISO_639_1 = frozenset(
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha "
    "haw he hi hr ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn "
    "mr ms mt my ne nl nn no oc pa pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te "
    "tg th tk tl tr tt uk ur uz vi yi yo yue zh".split()
)
MAX_PROMPT_CHARS = 1000  # Whisper reads at most 224 prompt tokens; more is surely a mistake


class SpeechParams(BaseModel):
    """Speech detection fields (speaches' `vad_filter`, Silero's parameters); unset fields
    take the config's `speech` defaults."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    vad_filter: bool | None = Field(
        None, description="false sends all of the audio to the model (music, singing)."
    )
    vad_threshold: float | None = Field(None, ge=0.05, le=0.95)
    vad_min_silence_duration_ms: int | None = Field(None, ge=0, le=10_000)
    vad_speech_pad_ms: int | None = Field(None, ge=0, le=2_000)
    vad_min_speech_duration_ms: int | None = Field(None, ge=0, le=10_000)

    def speech_options(self, defaults: SpeechSettings) -> SpeechOptions:
        def pick(value, default):
            return default if value is None else value

        return SpeechOptions(
            enabled=pick(self.vad_filter, defaults.filter),
            threshold=pick(self.vad_threshold, defaults.threshold),
            min_silence_ms=pick(self.vad_min_silence_duration_ms, defaults.min_silence_duration_ms),
            speech_pad_ms=pick(self.vad_speech_pad_ms, defaults.speech_pad_ms),
            min_speech_ms=pick(self.vad_min_speech_duration_ms, defaults.min_speech_duration_ms),
        )


class TranscriptionParams(SpeechParams):
    """The OpenAI `/v1/audio/transcriptions` form fields (file aside), plus `vad_*`."""

    model: str | None = Field(None, description="Served model id, short name or alias.")
    language: str | None = Field(None, description="ISO-639-1 code of the spoken language.")
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    timestamp_granularities: tuple[Literal["segment", "word"], ...] = ()
    stream: bool = False

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        code = value.strip().lower()
        if code not in ISO_639_1:
            raise ValueError(f"'{value}' is not an ISO-639-1 language code")
        return code

    @property
    def wants_words(self) -> bool:
        return "word" in self.timestamp_granularities

    @property
    def wants_segments(self) -> bool:
        """OpenAI leaves segments out when only words were asked for."""
        return not self.wants_words or "segment" in self.timestamp_granularities

    @field_validator("prompt")
    @classmethod
    def _empty_prompt_is_none(cls, value: str | None) -> str | None:
        return value or None


# Form field names as OpenAI clients send them -> parameter names.
_FIELD_ALIASES = {"timestamp_granularities[]": "timestamp_granularities"}
_LIST_FIELDS = {"timestamp_granularities"}


P = TypeVar("P", bound=SpeechParams)


def parse_params(
    items: list[tuple[str, Any]], model: type[P] = TranscriptionParams  # type: ignore[assignment]
) -> P:
    """Form or query items -> validated parameters; errors name the offending field."""
    values: dict[str, Any] = {}
    for raw_name, value in items:
        name = _FIELD_ALIASES.get(raw_name, raw_name)
        if name == "file" or name not in model.model_fields:
            continue
        if not isinstance(value, str):
            raise invalid_parameter(name, f"'{name}' must be a text field, not a file.")
        if name in _LIST_FIELDS:
            values.setdefault(name, []).append(value)
        elif name in values:
            raise invalid_parameter(name, f"'{name}' was given more than once.")
        else:
            values[name] = value
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = str(error["loc"][0]) if error["loc"] else None
        raise invalid_parameter(param or "body", f"Invalid '{param}': {error['msg']}.") from None


def check_model(requested: str | None, accepts: Any, served: str) -> None:
    if requested is not None and requested != "" and not accepts(requested):
        raise APIError(
            404,
            "model_not_found",
            f"The model '{requested}' is not served here; use '{served}'.",
            param="model",
        )
