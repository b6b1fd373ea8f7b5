"""Upload limits where Ray's proxy first sees the body, and Ray's own rejections as JSON.

The first half drives the proxy guard (serve_app/proxy_hooks.py) in-process with the
messages Ray 2.60's proxy really sends (built with Ray's own helpers). The second half runs
against the shared service, whose proxy loads the guard from the environment that the
`ray_instance` fixture sets: oversized uploads (declared, chunked 2 GB, lying
Content-Length) must end in a 413 or another 4xx quickly, while the proxy's and the ingress
replica's memory stays far below the upload's size.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import select
import socket
import threading
import time
from urllib.parse import urlparse

import httpx
import psutil
import pytest
from ray.serve._private.http_util import (
    convert_object_to_asgi_messages,
    get_http_response_status,
    send_http_response_on_exception,
)
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from serve_app.proxy_hooks import (
    DEFAULT_MAX_BODY_BYTES,
    MAX_BODY_ENV,
    ProxyGuard,
    max_body_bytes_from_env,
)

MiB = 1024 * 1024
ROUTE = "/v1/audio/transcriptions"
HUGE_UPLOAD = 2 * 1024 * MiB
RSS_GROWTH_BUDGET = 300 * MiB


# ---- the guard in-process, against Ray's own response messages ---------------------------


def replaying(messages: list[dict]):
    """A fake proxy that answers every request with Ray's `messages`."""

    async def proxy(scope, receive, send):
        for message in messages:
            await send(message)

    return proxy


def run_guard(proxy, body: list[bytes] = (), path: str = ROUTE, headers=(),
              limit: int = DEFAULT_MAX_BODY_BYTES) -> tuple[int, dict, bytes, list[dict]]:
    """ProxyGuard around a fake proxy: (status, headers, body, what the proxy received)."""
    pending = [{"type": "http.request", "body": piece, "more_body": i < len(body) - 1}
               for i, piece in enumerate(body)] or [{"type": "http.request", "body": b""}]
    sent: list[dict] = []
    received: list[dict] = []

    async def client_receive():
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def client_send(message):
        sent.append(message)

    async def spied_proxy(scope, receive, send):
        async def spy():
            received.append(await receive())
            return received[-1]

        await proxy(scope, spy, send)

    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [(k.encode(), v.encode()) for k, v in headers]}
    guard = ProxyGuard(spied_proxy, max_body_bytes=limit)
    asyncio.run(guard(scope, client_receive, client_send))
    start, rest = sent[0], sent[1:]
    assert start["type"] == "http.response.start"
    response_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], response_headers, b"".join(m.get("body", b"") for m in rest), received


def assert_json_error(status: int, headers: dict, body: bytes, expected: int, code: str) -> dict:
    assert status == expected, body
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


def ray_rejection(exc: BaseException) -> list[dict]:
    """What Ray 2.60's proxy sends when the handle call fails with `exc`."""
    status = get_http_response_status(exc, request_timeout_s=3600, request_id="rid")
    return send_http_response_on_exception(status, response_started=False)


def test_ray_404_becomes_json() -> None:
    # HTTPProxy.not_found_response: no application's route prefix matches the path.
    messages = convert_object_to_asgi_messages(
        "Path '/nowhere' not found. Ping http://.../-/routes for available routes.", status_code=404
    )
    error = assert_json_error(*run_guard(replaying(messages), path="/nowhere")[:3], 404,
                              "not_found")
    assert "/nowhere" in error["message"]


def test_ray_timeout_becomes_json_408() -> None:
    status, headers, body, _ = run_guard(replaying(ray_rejection(TimeoutError())))
    assert_json_error(status, headers, body, 408, "timeout")


def _deployment_unavailable() -> DeploymentUnavailableError:
    from ray.serve._private.common import DeploymentID

    return DeploymentUnavailableError(DeploymentID(name="ASRIngress", app_name="asr"))


@pytest.mark.parametrize(
    "make_exc, retry_after",
    [
        (lambda: BackPressureError(num_queued_requests=3, max_queued_requests=3), "5"),
        (lambda: BackPressureError(num_queued_requests=3, max_queued_requests=3,
                                   retry_after_s=2.5), "3"),
        (_deployment_unavailable, "5"),
    ],
    ids=["backpressure", "backpressure-with-retry-after", "deployment-unavailable"],
)
def test_ray_503_becomes_overloaded_with_retry_after(make_exc, retry_after) -> None:
    status, headers, body, _ = run_guard(replaying(ray_rejection(make_exc())))
    assert_json_error(status, headers, body, 503, "overloaded")
    assert headers["retry-after"] == retry_after


def test_proxy_giving_up_without_an_answer_becomes_json_500() -> None:
    # A replica that dies mid-request: Ray's proxy sends nothing and leaves uvicorn to
    # answer a plain-text 500.
    status, headers, body, _ = run_guard(replaying([]))
    assert_json_error(status, headers, body, 500, "internal_error")


def test_app_responses_and_ray_health_routes_pass_unchanged() -> None:
    app_error = [
        {"type": "http.response.start", "status": 415,
         "headers": [(b"content-type", b"application/json")]},
        {"type": "http.response.body", "body": b'{"error": {"code": "unsupported_audio"}}'},
    ]
    assert run_guard(replaying(app_error))[2] == app_error[1]["body"]
    text_ok = convert_object_to_asgi_messages("The quick brown fox.", status_code=200)
    assert run_guard(replaying(text_ok))[2] == b"The quick brown fox."
    draining = convert_object_to_asgi_messages("This node is being drained.", status_code=503)
    status, headers, body, _ = run_guard(replaying(draining), path="/-/healthz")
    assert (status, body) == (503, b"This node is being drained.")


def test_body_over_the_limit_is_refused_and_the_proxy_told_the_client_left() -> None:
    async def proxy_reading_everything(scope, receive, send):
        while (await receive())["type"] != "http.disconnect":
            pass  # Ray's proxy queues it all; it sends nothing once the client has left

    chunks = [b"\0" * 1000] * 5
    status, headers, body, received = run_guard(proxy_reading_everything, chunks, limit=2500)
    error = assert_json_error(status, headers, body, 413, "file_too_large")
    assert error["param"] == "file"
    assert headers["connection"] == "close"
    assert [m["type"] for m in received] == ["http.request"] * 2 + ["http.disconnect"]


def test_declared_length_over_the_limit_is_refused_before_the_proxy_runs() -> None:
    async def must_not_run(scope, receive, send):
        raise AssertionError("the proxy ran")

    status, headers, body, _ = run_guard(
        must_not_run, headers=[("content-length", "2501")], limit=2500
    )
    assert_json_error(status, headers, body, 413, "file_too_large")


def test_headers_that_switch_off_timeouts_and_cancellation_are_dropped() -> None:
    seen = {}

    async def proxy(scope, receive, send):
        seen.update((k.decode(), v.decode()) for k, v in scope["headers"])
        for message in convert_object_to_asgi_messages({"ok": True}):
            await send(message)

    cases = (("0", False), ("-1", False), ("inf", False), ("nan", False), ("soon", False),
             ("2.5", True))
    for value, kept in cases:
        seen.clear()
        run_guard(proxy, headers=[("x-request-timeout-seconds", value),
                                  ("x-request-disconnect-disabled", "?1")])
        assert ("x-request-timeout-seconds" in seen) is kept, value
        assert "x-request-disconnect-disabled" not in seen


def test_limit_comes_from_the_environment() -> None:
    assert max_body_bytes_from_env({}) == 100 * MiB + 64 * 1024
    assert max_body_bytes_from_env({MAX_BODY_ENV: "2048"}) == 2048
    for bad in ("0", "-5", "1e9", "lots"):
        with pytest.raises(ValueError):
            max_body_bytes_from_env({MAX_BODY_ENV: bad})


# ---- the real proxy and ingress --------------------------------------------------------


def raw_request(base_url: str, head: str, pieces=(), frame=lambda piece: piece,
                end: bytes = b"", timeout_s: float = 60) -> tuple[http.client.HTTPResponse, int]:
    """Send `head`, then pieces until the server answers or hangs up; (response, bytes sent).

    Reading the answer between pieces is what a careful client does (curl does): it stops
    uploading as soon as the server has said no.
    """
    url = urlparse(base_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=timeout_s)
    sent = 0
    try:
        sock.sendall(head.encode("latin-1"))
        for piece in pieces:
            if select.select([sock], [], [], 0)[0]:
                break  # an answer (or the close) arrived: stop sending
            sock.sendall(frame(piece))
            sent += len(piece)
        else:
            sock.sendall(end)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server closed after answering; the answer is still in our buffer
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.body = response.read()
    sock.close()
    return response, sent


def zeros(total: int, size: int = MiB):
    piece = bytes(size)
    for _ in range(total // size):
        yield piece


def chunked(piece: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(piece), piece)


def post_head(base_url: str, extra: str) -> str:
    host = urlparse(base_url).netloc
    return (f"POST {ROUTE} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/octet-stream\r\n{extra}\r\n")


def assert_response_error(response: http.client.HTTPResponse, status: int, code: str) -> None:
    assert response.status == status, response.body[:500]
    assert response.getheader("content-type") == "application/json"
    error = json.loads(response.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code


class RssPeak:
    """Samples the resident memory of some processes in the background; peak growth."""

    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        self.processes = processes
        self.baseline = {name: p.memory_info().rss for name, p in processes.items()}
        self.peak = dict(self.baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            for name, process in self.processes.items():
                self.peak[name] = max(self.peak[name], process.memory_info().rss)

    def __enter__(self) -> "RssPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(1.0)  # what the replica still pulls after the answer counts too
        self._stop.set()
        self._thread.join()

    def growth(self) -> dict[str, int]:
        return {name: self.peak[name] - self.baseline[name] for name in self.processes}


def serve_processes() -> dict[str, psutil.Process]:
    """This session's proxy and Whisper-app ingress: the Ray processes under this pytest."""
    found = {}
    for process in psutil.Process().children(recursive=True):
        try:
            title = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if title.startswith("ray::ProxyActor"):
            found["proxy"] = process
        elif title.startswith("ray::ServeReplica:asr:ASRIngress"):
            found["ingress"] = process
    assert set(found) == {"proxy", "ingress"}, f"found only {sorted(found)}"
    return found


def test_declared_size_over_the_limit_gets_413_at_once(service: str) -> None:
    started = time.monotonic()
    response, _ = raw_request(service, post_head(service, f"Content-Length: {HUGE_UPLOAD}\r\n"))
    assert_response_error(response, 413, "file_too_large")
    assert time.monotonic() - started < 30  # no body was sent: not a wait for a timeout


def test_chunked_2gb_upload_is_cut_off_with_memory_bounded(service: str) -> None:
    processes = serve_processes()
    with RssPeak(processes) as rss:
        response, sent = raw_request(
            service, post_head(service, "Transfer-Encoding: chunked\r\n"),
            zeros(HUGE_UPLOAD), chunked, end=b"0\r\n\r\n",
        )
    assert_response_error(response, 413, "file_too_large")
    assert sent < HUGE_UPLOAD / 4, f"the client sent {sent / MiB:.0f} MiB before the answer"
    growth = rss.growth()
    print(f"sent {sent / MiB:.0f} MiB; RSS growth MiB: "
          + ", ".join(f"{k}={v / MiB:.0f}" for k, v in growth.items()))
    assert all(g < RSS_GROWTH_BUDGET for g in growth.values()), growth


def test_ingress_still_checks_a_body_under_the_proxy_limit(service: str) -> None:
    # 100 MiB + 1 KiB: under the proxy's limit (+64 KiB of multipart framing), over the
    # ingress's 100 MiB for raw audio. The ingress refuses it while it streams in.
    pieces = list(zeros(100 * MiB)) + [bytes(1024)]
    response, _ = raw_request(service, post_head(service, "Transfer-Encoding: chunked\r\n"),
                              pieces, chunked, end=b"0\r\n\r\n")
    assert_response_error(response, 413, "file_too_large")


def test_lying_small_content_length_gets_a_quick_4xx(service: str) -> None:
    # The server reads the 1 KiB it was promised; the rest is not a valid next request, so
    # uvicorn answers 400 itself and closes: either answer is a 4xx, and nothing hangs.
    started = time.monotonic()
    response, sent = raw_request(service, post_head(service, "Content-Length: 1024\r\n"),
                                 zeros(256 * MiB, 64 * 1024), timeout_s=30)
    print(f"lying Content-Length: {response.status} {response.getheader('content-type')} "
          f"after {sent / MiB:.0f} MiB sent")
    assert 400 <= response.status < 500, response.body
    assert time.monotonic() - started < 30
    assert httpx.get(f"{service}/healthz", timeout=30).status_code == 200


def test_404_outside_every_route(service: str) -> None:
    # The apps sit at "/" and "/glm", so "/" matches every path: a missing one reaches the
    # app, whose 404 has the API's shape.
    missing = httpx.get(f"{service}/no/such/route", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    # Only a target that is not a path at all ("OPTIONS *") matches no route. HAProxy
    # answers it itself, in plain text, as it answers /-/healthz: no Ray code sees it
    # (behind Ray's Python proxy the guard makes it JSON: test_ray_404_becomes_json).
    host = urlparse(service).netloc
    response, _ = raw_request(service, f"OPTIONS * HTTP/1.1\r\nHost: {host}\r\n\r\n")
    assert response.status == 404
    assert response.getheader("content-type") == "text/plain"


def test_ray_timeout_is_json_408(service: str) -> None:
    # Ray lets a client shorten its own request timeout with this header.
    response = httpx.get(f"{service}/healthz", headers={"x-request-timeout-seconds": "0.000001"},
                         timeout=30)
    assert response.status_code == 408, response.text
    assert response.json()["error"]["code"] == "timeout"
    assert response.headers.get("x-request-id")
