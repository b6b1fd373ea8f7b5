"""Job callbacks (serve_app/jobs/callbacks.py) against a real HTTP receiver on 127.0.0.1.

Nothing here needs the internet: public destinations are IP literals, which resolve
without DNS. Backoff sleeps are recorded rather than waited out.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
from standardwebhooks import Webhook

from serve_app.config import JobSettings
from serve_app.errors import APIError
from serve_app.jobs.callbacks import (
    CallbackRefused,
    check_destination,
    deliver,
    job_event,
    load_secret,
    sign,
    validate_callback_url,
)
from serve_app.jobs.records import CallbackState, JobRecord, JobStatus
from tests.conftest import free_port

SECRET_TEXT = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
SECRET = base64.b64decode(SECRET_TEXT[len("whsec_"):])
LOCAL = ("127.0.0.1",)


class Receiver:
    """A webhook receiver that records each request and answers from a script.

    `script` holds (status, headers, delay_s) answers, used in order; 200 once it runs out.
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list[tuple[int, dict[str, str], float]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.lock:
                    receiver.requests.append({"path": self.path, "body": body,
                                              "headers": dict(self.headers.items())})
                    status, headers, delay_s = (receiver.script.pop(0) if receiver.script
                                                else (200, {}, 0.0))
                if delay_s:
                    time.sleep(delay_s)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the client gave up (the timeout test)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/asr?token=t"
        # A short poll interval: shutdown() waits up to one of them.
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx honours proxy variables; a developer's proxy must not intercept 127.0.0.1.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def settings(**overrides) -> JobSettings:
    values = {"callback_allow": LOCAL, "callback_timeout_s": 2.0, "callback_max_attempts": 4}
    values.update(overrides)
    return JobSettings(**values)


class Sleeps:
    """A `sleep` for deliver that records the delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def record(status: JobStatus = JobStatus.COMPLETED, url: str | None = None) -> JobRecord:
    now = time.time()
    return JobRecord(id="job_123", owner="", status=status, created_at=now - 5,
                     task="transcribe", fields=[("model", "whisper-1")], audio_bytes=1000,
                     filename="talk.wav", callback_url=url, started_at=now - 4,
                     finished_at=now, duration_s=3.0, done_s=3.0,
                     callback_state=CallbackState.PENDING if url else None)


def run_deliver(url: str, cfg: JobSettings, sleeps: Sleeps | None = None,
                event: dict | None = None, event_id: str = "msg_1") -> CallbackState:
    return asyncio.run(deliver(url, event if event is not None else {"type": "t", "data": {}},
                               event_id, SECRET, cfg, sleep=sleeps or Sleeps(),
                               first_delay_s=0.01, max_delay_s=5.0))


# --- secrets and signatures ---------------------------------------------------------------

def test_load_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = JobSettings()
    monkeypatch.delenv(cfg.callback_secret_env, raising=False)
    assert load_secret(cfg) is None
    monkeypatch.setenv(cfg.callback_secret_env, "")
    assert load_secret(cfg) is None
    monkeypatch.setenv(cfg.callback_secret_env, SECRET_TEXT)
    assert load_secret(cfg) == SECRET
    # Unpadded base64, as some providers print it.
    monkeypatch.setenv(cfg.callback_secret_env, SECRET_TEXT.rstrip("="))
    assert load_secret(cfg) == SECRET
    monkeypatch.setenv(cfg.callback_secret_env, "plain sécret")
    assert load_secret(cfg) == "plain sécret".encode()
    monkeypatch.setenv(cfg.callback_secret_env, "whsec_%%%")
    with pytest.raises(ValueError, match=cfg.callback_secret_env):
        load_secret(cfg)


def test_sign_matches_standard_webhooks() -> None:
    body = '{"a":"é"}'.encode()
    ts = int(time.time())
    expected = Webhook(SECRET_TEXT).sign("msg_1", datetime.fromtimestamp(ts, tz=timezone.utc),
                                         body.decode())
    assert sign(SECRET, "msg_1", ts, body) == expected


# --- delivery -----------------------------------------------------------------------------

def test_delivered_event_verifies(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = settings()
    monkeypatch.setenv(cfg.callback_secret_env, SECRET_TEXT)
    secret = load_secret(cfg)
    assert secret is not None
    job = record(url=receiver.url)
    event = job_event(job)
    state = asyncio.run(deliver(receiver.url, event, "msg_abc", secret, cfg, sleep=Sleeps()))
    assert state == CallbackState.DELIVERED
    assert len(receiver.requests) == 1
    sent = receiver.requests[0]
    assert sent["path"] == "/hooks/asr?token=t"
    headers = {k.lower(): v for k, v in sent["headers"].items()}
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "asr-service-callbacks"
    assert headers["webhook-id"] == "msg_abc"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert Webhook(SECRET_TEXT).verify(sent["body"], sent["headers"]) == event
    assert b" " not in sent["body"].replace(b"talk.wav", b"")  # compact JSON


def test_retries_on_503_and_429_then_succeeds(receiver: Receiver) -> None:
    receiver.script = [(503, {}, 0.0), (429, {"Retry-After": "2"}, 0.0), (503, {}, 0.0)]
    sleeps = Sleeps()
    assert run_deliver(receiver.url, settings(), sleeps) == CallbackState.DELIVERED
    assert len(receiver.requests) == 4
    assert {r["headers"]["webhook-id"] for r in receiver.requests} == {"msg_1"}
    for sent in receiver.requests:  # each attempt is signed afresh and verifies
        Webhook(SECRET_TEXT).verify(sent["body"], sent["headers"])
    first, retry_after, third = sleeps.delays
    assert 0.005 <= first <= 0.01  # first_delay_s, with jitter
    assert retry_after == 2.0  # Retry-After is longer than the backoff: it wins
    assert 0.02 <= third <= 0.04  # backoff kept doubling


def test_retry_after_is_capped(receiver: Receiver) -> None:
    receiver.script = [(429, {"Retry-After": "86400"}, 0.0)]
    sleeps = Sleeps()
    assert run_deliver(receiver.url, settings(), sleeps) == CallbackState.DELIVERED
    assert sleeps.delays == [5.0]  # max_delay_s


def test_410_stops_at_once(receiver: Receiver) -> None:
    receiver.script = [(410, {}, 0.0)]
    sleeps = Sleeps()
    assert run_deliver(receiver.url, settings(), sleeps) == CallbackState.FAILED
    assert len(receiver.requests) == 1 and sleeps.delays == []


@pytest.mark.parametrize("status", [400, 404, 302])
def test_other_client_errors_stop_at_once(receiver: Receiver, status: int) -> None:
    receiver.script = [(status, {"Location": "http://127.0.0.1:1/"}, 0.0)]
    sleeps = Sleeps()
    assert run_deliver(receiver.url, settings(), sleeps) == CallbackState.FAILED
    assert len(receiver.requests) == 1 and sleeps.delays == []


def test_gives_up_after_max_attempts(receiver: Receiver) -> None:
    receiver.script = [(500, {}, 0.0)] * 10
    sleeps = Sleeps()
    assert run_deliver(receiver.url, settings(callback_max_attempts=3), sleeps) \
        == CallbackState.FAILED
    assert len(receiver.requests) == 3
    assert len(sleeps.delays) == 2
    assert 0.005 <= sleeps.delays[0] <= 0.01 and 0.01 <= sleeps.delays[1] <= 0.02


def test_network_errors_are_retried() -> None:
    closed = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    sleeps = Sleeps()
    assert run_deliver(closed, settings(callback_max_attempts=3), sleeps) == CallbackState.FAILED
    assert len(sleeps.delays) == 2


def test_slow_receiver_times_out_and_is_retried(receiver: Receiver) -> None:
    receiver.script = [(200, {}, 1.0)]  # answers after the attempt's timeout
    sleeps = Sleeps()
    assert run_deliver(receiver.url, settings(callback_timeout_s=0.2), sleeps) \
        == CallbackState.DELIVERED
    assert len(receiver.requests) == 2 and len(sleeps.delays) == 1


def test_refused_destination_is_never_contacted(receiver: Receiver) -> None:
    sleeps = Sleeps()
    assert run_deliver(receiver.url, settings(callback_allow=()), sleeps) == CallbackState.FAILED
    assert receiver.requests == [] and sleeps.delays == []


def test_unresolvable_host_is_refused_and_retried_at_delivery(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host == "hooks.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(CallbackRefused, match="does not resolve"):
        check_destination("https://hooks.example/x", ())
    # At delivery a failed lookup may be a DNS outage: retried, not failed at once.
    sleeps = Sleeps()
    assert run_deliver("https://hooks.example/x", settings(callback_max_attempts=3), sleeps) \
        == CallbackState.FAILED
    assert len(sleeps.delays) == 2


def test_deliver_never_raises(receiver: Receiver) -> None:
    sleeps = Sleeps()
    assert run_deliver(receiver.url, settings(), sleeps, event={"x": object()}) \
        == CallbackState.FAILED
    assert receiver.requests == []


# --- destinations -------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "http://127.0.0.1/",
    "http://127.0.0.1:8265/api/jobs/",  # the Ray dashboard
    "http://localhost:6379/",
    "http://LOCALHOST./",
    "http://0x7f.1/",  # 127.0.0.1 spelt oddly
    "http://2130706433/",  # and again
    "http://0.0.0.0/",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.1.1/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://[::1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[fd00:ec2::254]/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata.google.internal./",
    "http://user:pass@93.184.216.34/",
    "http://user@93.184.216.34/",
    "ftp://93.184.216.34/",
    "file:///etc/passwd",
    "http:///nohost",
    "not a url",
])
def test_check_destination_refuses(url: str) -> None:
    with pytest.raises(CallbackRefused) as exc:
        check_destination(url, ())
    assert str(exc.value)


@pytest.mark.parametrize("url", [
    "http://93.184.216.34/hook",
    "https://93.184.216.34:8443/hook?x=1",
    "https://[2606:2800:220:1:248:1893:25c8:1946]/hook",
])
def test_check_destination_accepts_public_addresses(url: str) -> None:
    check_destination(url, ())


@pytest.mark.parametrize("allow", [("127.0.0.1",), ("127.0.0.0/8",),
                                   ("10.0.0.0/8", "127.0.0.1/32")])
def test_allow_lets_a_private_address_through(allow: tuple[str, ...]) -> None:
    check_destination("http://127.0.0.1:9000/hook", allow)
    check_destination("http://[::ffff:127.0.0.1]:9000/hook", allow)


def test_allow_by_hostname() -> None:
    check_destination("http://localhost:9000/hook", ("localhost",))
    check_destination("http://LocalHost.:9000/hook", ("localhost",))
    with pytest.raises(CallbackRefused):
        check_destination("http://localhost:9000/hook", ("example.com",))


def test_allow_is_narrow() -> None:
    with pytest.raises(CallbackRefused):
        check_destination("http://127.0.0.1/", ("10.0.0.0/8",))
    with pytest.raises(CallbackRefused):
        check_destination("http://169.254.169.254/", ("127.0.0.1",))
    with pytest.raises(CallbackRefused):  # scheme and userinfo are never allowed
        check_destination("ftp://127.0.0.1/", ("127.0.0.1",))
    with pytest.raises(CallbackRefused):
        check_destination("http://u:p@127.0.0.1/", ("127.0.0.1",))


# --- the submit route's check -------------------------------------------------------------

def test_validate_needs_a_secret() -> None:
    cfg = settings()
    with pytest.raises(APIError) as exc:
        validate_callback_url("https://93.184.216.34/hook", cfg, None)
    assert exc.value.status == 400 and exc.value.param == "callback_url"
    assert cfg.callback_secret_env in exc.value.message


@pytest.mark.parametrize("url", ["http://127.0.0.1/", "ftp://93.184.216.34/",
                                 "https://93.184.216.34/" + "a" * 2048])
def test_validate_refuses_bad_urls(url: str) -> None:
    with pytest.raises(APIError) as exc:
        validate_callback_url(url, settings(callback_allow=()), SECRET)
    assert exc.value.status == 400 and exc.value.param == "callback_url"
    assert exc.value.code == "invalid_parameter"


def test_validate_returns_good_urls() -> None:
    url = "https://93.184.216.34/hook?x=1"
    assert validate_callback_url(url, settings(), SECRET) == url
    assert validate_callback_url("http://127.0.0.1:9/", settings(), SECRET) == \
        "http://127.0.0.1:9/"


# --- events -------------------------------------------------------------------------------

@pytest.mark.parametrize("status, kind", [(JobStatus.COMPLETED, "completed"),
                                          (JobStatus.FAILED, "failed"),
                                          (JobStatus.CANCELLED, "cancelled")])
def test_job_event(status: JobStatus, kind: str) -> None:
    job = record(status, url="https://93.184.216.34/hook")
    event = job_event(job)
    assert event["type"] == f"transcription.job.{kind}"
    assert event["timestamp"].endswith("Z")
    assert event["data"] == job.public()
    assert job_event(job) == event  # stable: rebuilt after a restart, it is the same event


def test_job_event_needs_an_ended_job() -> None:
    with pytest.raises(ValueError):
        job_event(record(JobStatus.RUNNING))



def test_logs_never_carry_body_secret_or_path(receiver: Receiver) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            lines.append(rec.getMessage())

    handler = Collect(level=logging.DEBUG)
    log = logging.getLogger("ray.serve")
    log.addHandler(handler)
    try:
        receiver.script = [(503, {}, 0.0), (500, {}, 0.0)]
        assert run_deliver(receiver.url, settings(callback_max_attempts=2),
                           event={"text": "body-marker"}, event_id="msg_log") \
            == CallbackState.FAILED
    finally:
        log.removeHandler(handler)
    assert len(lines) == 2  # one per failed attempt
    assert all("msg_log" in line for line in lines)
    assert "status 503" in lines[0] and "status 500" in lines[1]
    text = "\n".join(lines)
    assert "body-marker" not in text and "token" not in text
    assert base64.b64encode(SECRET).decode() not in text and SECRET.decode() not in text
