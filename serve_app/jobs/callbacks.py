"""Signed job callbacks: the event a job's `callback_url` receives when the job ends.

Deliveries follow Standard Webhooks (https://www.standardwebhooks.com): headers `webhook-id`,
`webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
so receivers can verify them with any Standard Webhooks library. The id is the same on every
attempt, so a receiver can drop the duplicates that retries make.

The URL comes from the client, so the service would otherwise POST wherever it is told: to
the Ray dashboard, Redis or the cloud's metadata endpoint. Every destination must resolve to
public addresses only, unless the operator allows it (`jobs.callback_allow`), and is checked
again before each attempt because DNS answers change.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import random
import socket
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Awaitable, Callable

import httpx

from serve_app.config import JobSettings
from serve_app.errors import invalid_parameter
from serve_app.jobs.records import CallbackState, JobRecord, JobStatus

logger = logging.getLogger("ray.serve")

MAX_URL_LENGTH = 2048
USER_AGENT = "asr-service-callbacks"
_SECRET_PREFIX = "whsec_"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata endpoints hand out credentials. Their addresses are link-local or private
# anyway; they are named so the refusal says why, and the hostname is refused before any
# lookup, whatever it resolves to.
_METADATA_HOSTS = frozenset({"metadata.google.internal"})
_METADATA_ADDRESSES = frozenset({
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
})
_CGNAT = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: the provider's network
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv6 names for IPv4 addresses


class CallbackRefused(Exception):
    """The callback URL may not be used; str(exc) says why, in words a client can read."""


class _Unresolvable(CallbackRefused):
    # Refused at submit like any other refusal, but during delivery a failed lookup may be a
    # DNS outage, so it is retried rather than failing the callback at once.
    pass


def load_secret(settings: JobSettings) -> bytes | None:
    """The signing secret from `$<callback_secret_env>`; None when unset or empty.

    `whsec_<base64>` is decoded as Standard Webhooks libraries decode it, so the same string
    configures the receiver's verifier; any other string is used as its UTF-8 bytes. A
    malformed `whsec_` value raises ValueError (a misconfiguration, never guessed around).
    """
    raw = os.environ.get(settings.callback_secret_env, "").strip()
    if not raw:
        return None
    if not raw.startswith(_SECRET_PREFIX):
        return raw.encode("utf-8")
    try:
        # Unpadded secrets are common; the reference library pads them too.
        encoded = raw[len(_SECRET_PREFIX):].rstrip("=")
        secret = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"${settings.callback_secret_env} starts with {_SECRET_PREFIX!r} but the rest is "
            "not base64"
        ) from None
    if not secret:
        raise ValueError(f"${settings.callback_secret_env} holds an empty {_SECRET_PREFIX} secret")
    return secret


def sign(secret: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one attempt."""
    digest = hmac.new(secret, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(digest.digest()).decode("ascii")


def _parse_allow(allow: tuple[str, ...]) -> tuple[set[str], list[IPNetwork]]:
    hosts: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in allow:
        entry = entry.strip()
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            hosts.add(entry.lower().rstrip("."))
    return hosts, networks


def _embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address stands for, if it is one of the forms that reach
    IPv4 hosts (mapped, 6to4, NAT64); judged as that address, so [::ffff:127.0.0.1] is
    loopback."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return ip


def _not_public(ip: IPAddress) -> str | None:
    """Why the address is not a public one, or None when it is."""
    ip = _embedded_ipv4(ip)
    if ip in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a carrier-grade NAT address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved address"
    return None


def _resolve(host: str, port: int) -> set[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise _Unresolvable(f"callback host {host!r} does not resolve") from exc
    addresses: set[IPAddress] = set()
    for *_, sockaddr in infos:
        # An IPv6 link-local answer may carry a zone ("fe80::1%eth0"); the address decides.
        addresses.add(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
    if not addresses:
        raise _Unresolvable(f"callback host {host!r} does not resolve")
    return addresses


def check_destination(url: str, allow: tuple[str, ...]) -> None:
    """Raise CallbackRefused unless `url` is an http(s) URL whose host resolves only to
    public addresses, or is allowed by `allow` (hostnames, or CIDR networks its addresses
    fall in).

    The URL is parsed by httpx, the same parser that sends the request, so the host checked
    is the host reached. This resolves the name (blocking): call it off the event loop.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise CallbackRefused(f"callback URL is not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        raise CallbackRefused("callback URL must use http or https")
    if parsed.userinfo:
        raise CallbackRefused("callback URL must not carry a user name or password")
    host = parsed.raw_host.decode("ascii").lower()  # IDNA-encoded, the name DNS is asked
    if not host:
        raise CallbackRefused("callback URL has no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not 0 < port < 65536:
        raise CallbackRefused("callback URL has an invalid port")

    allowed_hosts, allowed_networks = _parse_allow(allow)
    name = host.rstrip(".")
    if name in allowed_hosts:
        return
    if name in _METADATA_HOSTS:
        raise CallbackRefused(f"callback host {name!r} is a cloud metadata endpoint")

    # Every address must pass, not just the first: the client may connect to any of them.
    for ip in sorted(_resolve(host, port), key=str):
        if any(ip in net or _embedded_ipv4(ip) in net for net in allowed_networks):
            continue
        reason = _not_public(ip)
        if reason is not None:
            raise CallbackRefused(
                f"callback host {name!r} resolves to {ip}, {reason}; only public addresses "
                "may receive callbacks"
            )


def validate_callback_url(url: str, settings: JobSettings, secret: bytes | None) -> str:
    """Check a submitted `callback_url`; return it, or raise a 400 naming the parameter.

    Resolves the host (blocking): a route should run it in a thread.
    """
    if not isinstance(url, str) or not url:
        raise invalid_parameter("callback_url", "callback_url must be a non-empty URL")
    if len(url) > MAX_URL_LENGTH:
        raise invalid_parameter(
            "callback_url", f"callback_url is longer than {MAX_URL_LENGTH} characters"
        )
    if secret is None:
        # Unsigned callbacks could be forged by anyone who learns the URL: refuse them.
        raise invalid_parameter(
            "callback_url",
            f"callbacks need a signing secret in ${settings.callback_secret_env}, which is "
            "not set on this service",
        )
    try:
        check_destination(url, settings.callback_allow)
    except CallbackRefused as exc:
        raise invalid_parameter("callback_url", str(exc)) from None
    return url


_EVENT_TYPES = {
    JobStatus.COMPLETED: "transcription.job.completed",
    JobStatus.FAILED: "transcription.job.failed",
    JobStatus.CANCELLED: "transcription.job.cancelled",
}


def job_event(record: JobRecord) -> dict[str, Any]:
    """The event for an ended job, in Standard Webhooks' {type, timestamp, data} shape.

    The timestamp is when the job ended, so an event rebuilt after a restart is the same.
    """
    event_type = _EVENT_TYPES.get(record.status)
    if event_type is None:
        raise ValueError(f"job {record.id} has not ended (status {record.status.value})")
    when = record.finished_at if record.finished_at is not None else time.time()
    stamp = datetime.fromtimestamp(when, tz=timezone.utc).isoformat(timespec="milliseconds")
    return {
        "type": event_type,
        "timestamp": stamp.replace("+00:00", "Z"),
        "data": record.public(),
    }


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or garbled."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - time.time())


def _origin(url: str) -> str:
    # Logs name the scheme, host and port only: paths and queries often carry tokens.
    try:
        parsed = httpx.URL(url)
        return f"{parsed.scheme}://{parsed.host}" + (f":{parsed.port}" if parsed.port else "")
    except Exception:  # noqa: BLE001 - a log label must never fail
        return "<invalid url>"


async def _post(client: httpx.AsyncClient, url: str, body: bytes,
                headers: dict[str, str]) -> tuple[int, float | None]:
    # Streamed and never read: only the status and headers matter, and a receiver must not
    # be able to make the service buffer a large answer.
    async with client.stream("POST", url, content=body, headers=headers) as response:
        return response.status_code, _retry_after_s(response.headers.get("retry-after"))


async def deliver(
    url: str,
    event: dict,
    event_id: str,
    secret: bytes,
    settings: JobSettings,
    *,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    first_delay_s: float = 1.0,
    max_delay_s: float = 300.0,
) -> CallbackState:
    """POST `event` to `url`, retrying with backoff; DELIVERED or FAILED, never raises.

    It runs in the background after a job ends, so every failure, expected or not, ends as
    FAILED with a log line. Cancellation still propagates (the service is stopping).
    """
    try:
        return await _deliver(url, event, event_id, secret, settings, sleep=sleep,
                              first_delay_s=first_delay_s, max_delay_s=max_delay_s)
    except Exception:  # noqa: BLE001 - a background task has no one to raise to
        logger.exception("Callback %s to %s failed unexpectedly.", event_id, _origin(url))
        return CallbackState.FAILED


async def _deliver(url: str, event: dict, event_id: str, secret: bytes, settings: JobSettings,
                   *, sleep: Callable[[float], Awaitable[Any]], first_delay_s: float,
                   max_delay_s: float) -> CallbackState:
    body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    target = _origin(url)
    attempts = settings.callback_max_attempts
    async with httpx.AsyncClient(timeout=settings.callback_timeout_s, follow_redirects=False,
                                 headers={"User-Agent": USER_AGENT}) as client:
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            try:
                # Again on every attempt: the name may resolve elsewhere by now.
                await asyncio.to_thread(check_destination, url, settings.callback_allow)
            except _Unresolvable:
                outcome = "host does not resolve"
            except CallbackRefused as exc:
                logger.warning("Callback %s to %s refused: %s", event_id, target, exc)
                return CallbackState.FAILED
            else:
                timestamp = int(time.time())  # fresh per attempt: receivers reject old ones
                headers = {
                    "content-type": "application/json",
                    "webhook-id": event_id,
                    "webhook-timestamp": str(timestamp),
                    "webhook-signature": sign(secret, event_id, timestamp, body),
                }
                try:
                    # httpx's timeout bounds each read; this bounds the whole attempt, so a
                    # receiver trickling bytes cannot hold it open.
                    status, retry_after = await asyncio.wait_for(
                        _post(client, url, body, headers), settings.callback_timeout_s
                    )
                except (httpx.HTTPError, asyncio.TimeoutError, OSError) as exc:
                    outcome = f"{type(exc).__name__}"
                else:
                    if 200 <= status < 300:
                        return CallbackState.DELIVERED
                    if status == 410:
                        logger.warning("Callback %s to %s: 410 Gone, the receiver disabled it.",
                                       event_id, target)
                        return CallbackState.FAILED
                    if status != 429 and status < 500:
                        # Another 4xx (or a redirect, not followed) will not change on retry.
                        logger.warning("Callback %s to %s: status %d, not retried.",
                                       event_id, target, status)
                        return CallbackState.FAILED
                    outcome = f"status {status}"
            if attempt == attempts:
                logger.warning("Callback %s to %s: %s on attempt %d of %d; giving up.",
                               event_id, target, outcome, attempt, attempts)
                return CallbackState.FAILED
            delay = min(max_delay_s, first_delay_s * 2 ** (attempt - 1))
            # Jitter spreads out the retries of many callbacks failing together.
            delay = random.uniform(delay / 2, delay)
            if retry_after is not None:
                delay = max(delay, min(retry_after, max_delay_s))
            logger.warning("Callback %s to %s: %s on attempt %d of %d; retrying in %.1f s.",
                           event_id, target, outcome, attempt, attempts, delay)
            await sleep(delay)
    return CallbackState.FAILED  # not reached: the loop returns on its last attempt


__all__ = [
    "CallbackRefused",
    "check_destination",
    "deliver",
    "job_event",
    "load_secret",
    "sign",
    "validate_callback_url",
]
