"""Read the audio bytes and form fields out of an HTTP request, within the size limit.

Two shapes are accepted: OpenAI's multipart form with a `file` part, and the raw audio as
the request body (`Content-Type: audio/*` or `application/octet-stream`) with parameters
in the query string, so `curl --data-binary @clip.wav` works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
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


async def _read_body(request: Request, limit: int, disconnect_code: str) -> bytes:
    """The body, refusing as soon as it grows past the limit (Content-Length can lie)."""
    body = bytearray()
    try:
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise _too_large(limit)
    except ClientDisconnect as exc:
        raise APIError(400, disconnect_code, "The client disconnected mid-upload.") from exc
    return bytes(body)


def _boundary(request: Request) -> bytes:
    for param in request.headers.get("content-type", "").split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary" and value.strip('"'):
            return value.strip('"').encode("latin-1")
    raise APIError(400, "invalid_multipart", "The multipart Content-Type has no boundary.")


async def _parse_form(request: Request, max_files: int, body_limit: int):
    # The parser accepts a body cut off mid-part and returns what it saw, which would
    # turn a truncated upload into a "missing file"; the closing delimiter tells.
    boundary = _boundary(request)
    body = await _read_body(request, body_limit, "invalid_multipart")
    request._body = body  # Starlette's cache: request.form() parses these bytes, not the stream
    if not body.strip():
        raise APIError(400, "missing_file", "The multipart body is empty.", param="file")
    if not body.rstrip(b"\r\n").endswith(b"--" + boundary + b"--"):
        raise APIError(
            400, "invalid_multipart", "The multipart body is truncated (no closing boundary)."
        )
    try:
        return await request.form(max_files=max_files, max_fields=MAX_FORM_FIELDS)
    except (MultiPartException, ClientDisconnect, ValueError, KeyError) as exc:
        raise APIError(400, "invalid_multipart", f"The multipart body is invalid: {exc}") from exc
    except HTTPException as exc:  # Starlette wraps its parser's errors (too many files, ...)
        raise APIError(
            400, "invalid_multipart", f"The multipart body is invalid: {exc.detail}"
        ) from exc


async def _file_parts(form, limit: int) -> list[Upload]:
    """Every `file` part as an Upload (without fields); 400 if one is a text field."""
    uploads = []
    for part in form.getlist("file"):
        if not isinstance(part, UploadFile):
            raise APIError(
                400,
                "missing_file",
                "'file' must be sent as a file part (with a filename), not as a text field.",
                param="file",
            )
        if part.size is not None and part.size > limit:
            raise _too_large(limit)
        uploads.append(Upload(data=await part.read(), filename=part.filename, fields=[]))
    if not uploads:
        raise APIError(400, "missing_file", "No 'file' field in the form.", param="file")
    return uploads


def _text_fields(form) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in form.multi_items() if k != "file"]


async def _read_multipart(request: Request, limit: int) -> Upload:
    form = await _parse_form(request, max_files=1, body_limit=limit + MULTIPART_OVERHEAD_BYTES)
    try:
        upload = (await _file_parts(form, limit))[0]
        return Upload(data=upload.data, filename=upload.filename, fields=_text_fields(form))
    finally:
        await form.close()


async def read_uploads(
    request: Request, limit: int, max_files: int
) -> tuple[list[Upload], list[tuple[str, Any]]]:
    """Several `file` parts of one multipart form, and its shared text fields.

    Empty files are kept: they get their own error in the batch result.
    """
    body_limit = max_files * limit + MULTIPART_OVERHEAD_BYTES
    _check_declared_length(request, body_limit)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise APIError(
            415, "unsupported_media_type", "Send multipart/form-data with one or more 'file' parts."
        )
    form = await _parse_form(request, max_files=max_files, body_limit=body_limit)
    try:
        return await _file_parts(form, limit), _text_fields(form)
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
        data = await _read_body(request, limit, "invalid_audio")  # a cut-off file
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
