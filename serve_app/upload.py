"""Read the audio bytes and form fields out of an HTTP request, within the size limit.

Two shapes are accepted: OpenAI's multipart form with a `file` part, and the raw audio as
the request body (`Content-Type: audio/*` or `application/octet-stream`) with parameters
in the query string, so `curl --data-binary @clip.wav` works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request

from serve_app.errors import APIError

MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries and text fields around the file part
MAX_FORM_FIELDS = 32  # OpenAI's form has 8 fields; more is abuse


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str | None
    fields: list[tuple[str, Any]]  # text fields (multipart) or query items (raw)


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        "file_too_large",
        f"The upload exceeds the limit of {limit // (1024 * 1024)} MiB.",
        param="file",
    )


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing as soon as it grows past the limit (Content-Length can lie)."""
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


async def _read_multipart(request: Request, limit: int) -> Upload:
    try:
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    except (MultiPartException, ClientDisconnect, ValueError, KeyError) as exc:
        raise APIError(400, "invalid_multipart", f"The multipart body is invalid: {exc}") from exc
    try:
        files = form.getlist("file")
        if not files:
            raise APIError(400, "missing_file", "No 'file' field in the form.", param="file")
        upload = files[0]
        if not isinstance(upload, UploadFile):
            raise APIError(
                400,
                "missing_file",
                "'file' must be sent as a file part (with a filename), not as a text field.",
                param="file",
            )
        if upload.size is not None and upload.size > limit:
            raise _too_large(limit)
        data = await upload.read()
        fields = [(k, v) for k, v in form.multi_items() if k != "file"]
        return Upload(data=data, filename=upload.filename, fields=fields)
    finally:
        await form.close()


def _is_raw_audio(content_type: str) -> bool:
    return content_type.startswith("audio/") or content_type in (
        "application/octet-stream",
        "video/mp4",
        "video/webm",
        "video/mpeg",
    )


async def read_upload(request: Request, limit: int) -> Upload:
    _check_declared_length(request, limit + MULTIPART_OVERHEAD_BYTES)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        upload = await _read_multipart(request, limit)
    elif _is_raw_audio(content_type):
        data = await _read_body(request, limit)
        upload = Upload(data=data, filename=None, fields=list(request.query_params.multi_items()))
    else:
        raise APIError(
            415,
            "unsupported_media_type",
            "Send multipart/form-data with a 'file' part, or the audio itself as the body "
            "with Content-Type audio/* or application/octet-stream.",
        )
    if not upload.data:
        raise APIError(400, "missing_file", "The uploaded file is empty.", param="file")
    return upload
