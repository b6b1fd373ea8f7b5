"""OpenAPI descriptions of the request body and the error responses.

The transcription routes parse their body by hand (multipart or raw audio, with errors in
the project's JSON shape instead of FastAPI's 422), so the schema is declared here.
"""

from __future__ import annotations

from serve_app.formats import RESPONSE_FORMATS

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": "string"},
            },
            "required": ["message", "type", "param", "code"],
        }
    },
}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}


ERROR_RESPONSES: dict[int | str, dict] = {
    400: _error("missing_file, invalid_multipart, invalid_audio or invalid_parameter"),
    401: _error("invalid_api_key"),
    404: _error("model_not_found"),
    413: _error("file_too_large or audio_too_long"),
    415: _error("unsupported_audio or unsupported_media_type"),
    500: _error("inference_failed"),
    503: _error("overloaded (with Retry-After) or not_ready"),
}

_SPEECH_PROPERTIES = {
    "vad_filter": {
        "type": "boolean",
        "description": "Skip audio without speech (default from the config: on); false sends "
        "everything to the model (music, singing).",
    },
    "vad_threshold": {"type": "number", "minimum": 0.05, "maximum": 0.95,
                      "description": "Speech probability at which speech starts (default 0.5)."},
    "vad_min_silence_duration_ms": {"type": "integer", "minimum": 0, "maximum": 10000,
                                    "description": "A pause this long ends speech (default 300)."},
    "vad_speech_pad_ms": {"type": "integer", "minimum": 0, "maximum": 2000,
                          "description": "Audio kept around speech (default 200)."},
    "vad_min_speech_duration_ms": {"type": "integer", "minimum": 0, "maximum": 10000,
                                   "description": "Shorter bursts are not speech (default 100)."},
}

_FORM_PROPERTIES = {
    "file": {"type": "string", "format": "binary", "description": "The audio file."},
    "model": {"type": "string", "description": "Served model id, short name or alias."},
    "language": {"type": "string", "description": "ISO-639-1 code of the spoken language."},
    "prompt": {"type": "string", "description": "Text to guide spelling and style."},
    "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
    "temperature": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
    "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["segment", "word"]}},
    "stream": {"type": "boolean", "default": False},
    **_SPEECH_PROPERTIES,
}

def _upload_body(form_properties: dict) -> dict:
    """One audio file as multipart form or as the raw body with query parameters."""
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": form_properties, "required": ["file"]}
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "Raw audio; parameters go in the query string.",
            },
            "audio/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }


TRANSCRIPTION_REQUEST_BODY = _upload_body(_FORM_PROPERTIES)

BATCH_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    **_FORM_PROPERTIES,
                    "file": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "Several audio files; one result per file, in order.",
                    },
                },
                "required": ["file"],
            }
        }
    },
}

# vad_filter=false would ask where the speech is without looking: not offered here.
SPEECH_TIMESTAMPS_REQUEST_BODY = _upload_body(
    {
        "file": _FORM_PROPERTIES["file"],
        **{k: v for k, v in _SPEECH_PROPERTIES.items() if k != "vad_filter"},
    }
)

JOB_REQUEST_BODY = _upload_body({
    **{k: v for k, v in _FORM_PROPERTIES.items() if k != "stream"},
    "callback_url": {
        "type": "string", "format": "uri",
        "description": "POSTed a signed event (Standard Webhooks) when the job ends; "
        "private and loopback addresses are refused unless the config allows them.",
    },
})

# The job routes' errors: the transcription's, and the job's own.
JOB_ERROR_RESPONSES: dict[int | str, dict] = {
    **ERROR_RESPONSES,
    404: _error("job_not_found (also for another API key's job) or model_not_found"),
    409: _error("result_not_ready: the job has not completed"),
    503: _error("overloaded (the job queue is full) or store_unavailable, with Retry-After"),
}
