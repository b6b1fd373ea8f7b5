"""ASGI middleware that Ray Serve runs in front of every application, and the environment
that Ray's processes need to run it.

Ray loads the middleware from the environment of each node's `ray start` (`proxy_env`):

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.proxy_hooks:proxy_middlewares
    ASR_MAX_UPLOAD_BYTES=104923136   # the YAML's limits.max_upload_bytes + 64 KiB of multipart
    RAY_SERVE_ENABLE_HA_PROXY=1      # HAProxy, not Ray's Python proxy, takes the HTTP port

With `RAY_SERVE_ENABLE_HA_PROXY=1` (what the project ships) HAProxy, bundled with
ray[serve], listens on the HTTP port and forwards each connection to an ingress replica's
own HTTP server (Ray's "direct ingress"), which runs this middleware. Without it, Ray's
Python proxy actor takes the port, runs the middleware and relays every request to a
replica through actor calls: on a 2-core machine that costs about 7 ms per request and
10 ms per 400 KB of body (docs/performance.md, "The HTTP ingress"). The middleware behaves
the same in both places.

Why before the app: Ray Serve 2.60 reads a request body off the socket as fast as the
client sends it and queues every piece in memory whether or not the app reads it: the
Python proxy (`HTTPProxy.proxy_asgi_receive` into an unbounded `MessageQueue`) and then the
replica (`ASGIReceiveProxy.fetch_until_disconnect`), or behind HAProxy the replica's own
server (`ASGIDIReceiveProxy`). The ingress's own limit (serve_app/upload.py) is the second
line; the size is enforced here, where Ray first sees the body. Per HTTP request the
middleware:

1. refuses a body over the limit with 413 `file_too_large`: at once when Content-Length
   declares it, else as soon as the streamed bytes pass it. It then tells the proxy the
   client left, so the proxy drops its queue and cancels the replica's call, answers
   itself and closes the connection (after a short linger, so the client sees the 413);
2. turns Ray's own plain-text rejections (404 no route, 408 timeout, 503 back-pressure or
   no replica, a 500 or no answer at all when a replica dies) into the project's JSON
   error shape;
3. drops the header that lets any client turn off the cancellation of a disconnected
   request, and a non-positive request timeout header (which turns the timeout off).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from starlette.middleware import Middleware

from serve_app.config import AdmissionSettings, LimitSettings
from serve_app.errors import APIError, from_http_status
from serve_app.upload import MULTIPART_OVERHEAD_BYTES

logger = logging.getLogger("ray.serve")

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK_PATH = "serve_app.proxy_hooks:proxy_middlewares"
MAX_BODY_ENV = "ASR_MAX_UPLOAD_BYTES"
HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
# 107 (sun_path) - len(".4194304.tmp"), the largest Linux pid: what HAProxy appends to the
# admin socket's path while it binds it.
HAPROXY_MAX_SOCKET_PATH = 95
HAPROXY_NODE_DIR_CHARS = 57  # "/" + a Ray node id (56 hex digits)
DEFAULT_MAX_BODY_BYTES = (
    LimitSettings.model_fields["max_upload_bytes"].default + MULTIPART_OVERHEAD_BYTES
)
RETRY_AFTER_S = AdmissionSettings.model_fields["retry_after_s"].default
# After a 413 the rest of the body is read and dropped for this long before the connection
# closes: closing on unread data resets it, and a client still sending may lose the answer.
LINGER_S = 2.0
MESSAGE_BYTES = 512  # enough of Ray's plain-text reason for the JSON message

# Ray answers these paths itself for load balancers (/-/healthz, /-/routes): left as they are.
RAY_PATHS = "/-/"
TIMEOUT_HEADER = b"x-request-timeout-seconds"
DISCONNECT_DISABLED_HEADER = b"x-request-disconnect-disabled"

_RAY_CODES = {404: "not_found", 408: "timeout", 429: "overloaded", 500: "internal_error",
              503: "overloaded"}


def max_body_bytes_from_env(environ: Mapping[str, str] = os.environ) -> int:
    raw = environ.get(MAX_BODY_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_BODY_BYTES
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{MAX_BODY_ENV} must be a positive number of bytes, not {raw!r}")
    return int(raw)


def proxy_env(max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> dict[str, str]:
    """What the environment of `ray start` (or of a local `ray.init`) must hold."""
    return {CALLBACK_ENV: CALLBACK_PATH, MAX_BODY_ENV: str(max_body_bytes), HAPROXY_ENV: "1"}


def private_haproxy_env(directory: Path, free_port: Callable[[], int]) -> dict[str, str]:
    """HAProxy's ports and files for a Ray instance that shares its machine with others
    (tests, the benchmark, beside a developer's `make serve`).

    Ray 2.60 binds fixed ports in HAProxy mode: HAProxy's statistics (8404) and Prometheus
    exporter (9101), and the fallback Python proxy that HAProxy uses as a backup server
    (8500); a second instance could not bind them. Its files (config, admin socket, state)
    go under `directory`, so nothing is left in a shared /tmp/haproxy-serve and the
    processes carry the instance's own path (tests stop leftovers by it). Ray adds a folder
    named by the node's id below `directory`, and HAProxy refuses socket paths that, with
    the ".<pid>.tmp" it appends while binding, pass 107 characters, so `directory` must be
    short."""
    longest = len(str(directory)) + HAPROXY_NODE_DIR_CHARS + len("/admin.sock")
    if longest > HAPROXY_MAX_SOCKET_PATH:
        raise ValueError(f"{directory} is too long for HAProxy's socket paths "
                         f"({longest} > {HAPROXY_MAX_SOCKET_PATH} characters)")
    files = {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
    }
    env = {name: str(directory / file) for name, file in files.items()}
    env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] = str(directory)
    for port in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
                 "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"):
        env[port] = str(free_port())
    return env


def proxy_middlewares() -> list[Middleware]:
    """The callback named by RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH."""
    limit = max_body_bytes_from_env()
    logger.info("proxy guard on: request bodies up to %d bytes", limit)
    return [Middleware(ProxyGuard, max_body_bytes=limit)]


def too_large(limit: int) -> APIError:
    return APIError(
        413, "file_too_large",
        f"The request body exceeds the limit of {limit} bytes ({limit / 2**20:.1f} MiB).",
        param="file",
    )


def ray_error(status: int, text: str, retry_after: str | None = None) -> APIError:
    """The JSON error for one of Ray's plain-text rejections (Ray's Retry-After wins)."""
    message = " ".join(text.split())[:MESSAGE_BYTES] or None
    if status in _RAY_CODES:
        error = APIError(status, _RAY_CODES[status], message or "Request failed in Ray Serve.")
    else:
        error = from_http_status(status, message)
    if error.code == "overloaded":
        error.headers["retry-after"] = retry_after or str(RETRY_AFTER_S)
    return error


def _header(headers, name: bytes) -> bytes | None:
    return next((value for key, value in headers if key.lower() == name), None)


def _is_ray_error(scope, start: dict) -> bool:
    content_type = _header(start.get("headers", []), b"content-type") or b""
    return (
        start["status"] >= 400
        and content_type.lower().startswith(b"text/plain")
        and not scope.get("path", "").startswith(RAY_PATHS)
    )


def _trusted_headers(headers) -> list:
    kept = []
    for key, value in headers:
        name = key.lower()
        if name == DISCONNECT_DISABLED_HEADER:
            continue
        if name == TIMEOUT_HEADER:
            try:
                seconds = float(value)
            except ValueError:
                continue
            if not (math.isfinite(seconds) and seconds > 0):  # 0, <0, inf: no timeout
                continue
        kept.append((key, value))
    return kept


class ProxyGuard:
    """Pure ASGI middleware (Starlette `Middleware`), one `_Exchange` per HTTP request."""

    def __init__(self, app, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = dict(scope, headers=_trusted_headers(scope.get("headers", [])))
        await _Exchange(scope, receive, send, self.max_body_bytes).run(self.app)


class _Exchange:
    def __init__(self, scope, receive, send, limit: int) -> None:
        self.scope, self._receive, self._send, self.limit = scope, receive, send, limit
        self.received = 0
        self.over_limit = False
        self.started = False  # a response start has gone to the client
        self.held: dict | None = None  # Ray's plain-text error start, being rewritten
        self.held_body = b""

    async def run(self, app) -> None:
        declared = _header(self.scope["headers"], b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._reject(too_large(self.limit))
            return
        try:
            await app(self.scope, self.receive, self.send)
        except Exception:  # noqa: BLE001 - the proxy itself failed; answer in our shape
            logger.exception("proxy failed on %s", self.scope.get("path"))
        if self.started:
            return
        if self.over_limit:
            await self._reject(too_large(self.limit))
        elif self.held is not None:
            await self._send_error(self._held_error(), self.held)
        else:
            # The proxy gave up without answering: the client left (Ray's 499, nobody to
            # tell) or the replica died mid-request (Ray leaves uvicorn to send a text 500).
            await self._send_error(
                APIError(500, "internal_error", "The request failed inside Ray Serve.")
            )

    async def receive(self) -> dict:
        if self.over_limit:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                # Tell the proxy the client left: it stops reading, drops what it queued
                # and cancels the replica's call. run() then answers 413.
                self.over_limit = True
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if kind == "http.response.start" and _is_ray_error(self.scope, message):
            self.held = message
            return
        if kind == "http.response.body" and self.held is not None:
            self.held_body = (self.held_body + message.get("body", b""))[:MESSAGE_BYTES]
            if not message.get("more_body", False):
                await self._send_error(self._held_error(), self.held)
            return
        if kind == "http.response.start":
            self.started = True
        await self._send(message)

    def _held_error(self) -> APIError:
        retry_after = _header(self.held.get("headers", []), b"retry-after")
        return ray_error(
            self.held["status"],
            self.held_body.decode("utf-8", "replace"),
            retry_after.decode("latin-1") if retry_after else None,
        )

    def _headers(self, error: APIError, body: bytes, original: dict | None) -> list:
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        replaced = {b"content-type", b"content-length"} | {
            k.lower().encode() for k in error.headers
        }
        if original is not None:  # keep Ray's X-Request-ID, Retry-After, ...
            headers += [(k, v) for k, v in original.get("headers", []) if k.lower() not in replaced]
        else:
            request_id = _header(self.scope["headers"], b"x-request-id")
            if request_id is not None:
                headers.append((b"x-request-id", request_id))
        headers += [(k.encode(), v.encode()) for k, v in error.headers.items()]
        return headers

    async def _send_error(self, error: APIError, original: dict | None = None) -> None:
        body = json.dumps(error.body()).encode()
        self.started = True
        await self._send({"type": "http.response.start", "status": error.status,
                          "headers": self._headers(error, body, original)})
        await self._send({"type": "http.response.body", "body": body})

    async def _reject(self, error: APIError) -> None:
        """Answer, read and drop the rest of the body for a moment, then close."""
        body = json.dumps(error.body()).encode()
        headers = self._headers(error, body, None) + [(b"connection", b"close")]
        self.started = True
        await self._send(
            {"type": "http.response.start", "status": error.status, "headers": headers}
        )
        # The whole answer goes out now; the response only completes (and uvicorn closes
        # the connection) after the linger, so a client still sending can read it first.
        await self._send({"type": "http.response.body", "body": body, "more_body": True})
        # A client waiting for "100 Continue" has sent nothing yet, and never will now.
        if self.received or _header(self.scope["headers"], b"expect") is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drop_rest(), LINGER_S)
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _drop_rest(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
