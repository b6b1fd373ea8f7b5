"""One error type and one JSON shape for every failure the API reports.

The body is OpenAI's: `{"error": {"message", "type", "param", "code"}}`, so existing clients
parse it unchanged. Anything that is the client's fault is a 4xx; the only deliberate 500 is
`inference_failed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus

from starlette.responses import JSONResponse


@dataclass
class APIError(Exception):
    status: int
    code: str
    message: str
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def type(self) -> str:
        return "invalid_request_error" if self.status < 500 else "server_error"

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid_parameter(param: str, message: str) -> APIError:
    return APIError(400, "invalid_parameter", message, param=param)


# Status codes that Starlette/FastAPI raise themselves, mapped to our codes.
_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "file_too_large",
    415: "unsupported_media_type",
}


def from_http_status(status: int, detail: str | None = None) -> APIError:
    code = _HTTP_CODES.get(status, HTTPStatus(status).phrase.lower().replace(" ", "_"))
    return APIError(status, code, detail or HTTPStatus(status).phrase)
