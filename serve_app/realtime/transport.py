"""The WebSocket side of `/v1/realtime`: handshake checks, limits, and the loop that feeds a
`RealtimeSession` and writes what it answers.

The HTTP middleware (API keys, request logs) never sees a WebSocket, so the handshake is
checked here: `Authorization: Bearer <key>`, or for browsers, which cannot set headers on a
WebSocket, the subprotocols `realtime` + `openai-insecure-api-key.<key>` (the answer names
`realtime`, or Chromium drops the socket). A refused handshake gets the HTTP error in the
service's JSON shape where the server can send one, else a close code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Callable

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from serve_app.config import RealtimeSettings
from serve_app.errors import APIError
from serve_app.realtime.events import RealtimeError
from serve_app.realtime.session import RealtimeSession

logger = logging.getLogger("ray.serve")

KEY_SUBPROTOCOL = "openai-insecure-api-key."
# Close codes (RFC 6455): 1000 normal (session limits), 1008 policy (a client that does
# not read what it is sent), 1011 server error, 1012 service restart (a draining replica).
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_ERROR, CLOSE_RESTART = 1000, 1008, 1011, 1012
# Events waiting for a client that reads slower than the session writes; past this the
# client is not reading and the session ends rather than hold memory.
MAX_PENDING_EVENTS = 2048
CLOSE_WAIT_S = 5.0  # what a closing session waits for its last events to be written
DRAIN_POLL_S = 2.0


class SessionRegistry:
    """The sessions of one ingress replica, and whether the replica is draining.

    Serve drains a replica (a redeploy, a scale-down) by waiting for its open requests, and
    an open socket is one; nothing tells the replica, so while sessions are open it asks
    the controller every few seconds whether it is being stopped.
    """

    def __init__(self, settings: RealtimeSettings, replica_state: Callable) -> None:
        self.settings = settings
        self._replica_state = replica_state  # async () -> state name or None
        self.open = 0
        self.draining = asyncio.Event()
        self._watch: asyncio.Task | None = None

    def reserve(self) -> bool:
        """Take a session slot now, before the handshake's awaits (so a burst of handshakes
        cannot all pass the check); False when full or draining."""
        if self.open >= self.settings.max_sessions or self.draining.is_set():
            return False
        self.open += 1
        if self._watch is None or self._watch.done():
            self._watch = asyncio.ensure_future(self._watch_for_drain())
        return True

    def describe(self) -> dict:
        return {"sessions": self.open, "max_sessions": self.settings.max_sessions,
                "draining": self.draining.is_set()}

    def closed(self) -> None:
        self.open -= 1

    async def _watch_for_drain(self) -> None:
        while self.open > 0 and not self.draining.is_set():
            await asyncio.sleep(DRAIN_POLL_S)
            try:
                state = await self._replica_state()
            except Exception:  # noqa: BLE001 - unknown: ask again next time
                continue
            if state in ("STOPPING", "PENDING_MIGRATION"):
                logger.info("replica draining: ending %d live sessions", self.open)
                self.draining.set()


def requested_key(websocket: WebSocket) -> str | None:
    """The API key the handshake presents: bearer header first, else the subprotocol."""
    scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for protocol in websocket.scope.get("subprotocols", []):
        if protocol.startswith(KEY_SUBPROTOCOL):
            return protocol[len(KEY_SUBPROTOCOL) :]
    return None


async def refuse(websocket: WebSocket, error: APIError) -> None:
    """An HTTP error for the handshake (uvicorn supports the denial response extension);
    servers without it get a close code."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error.response())
    else:
        await websocket.close(code=CLOSE_POLICY, reason=error.message[:120])


class Connection:
    """One accepted socket: a writer task drains the session's events in order."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self._outbox: asyncio.Queue[dict | None] = asyncio.Queue(MAX_PENDING_EVENTS)
        self._writer = asyncio.ensure_future(self._write())
        self.closed = False

    async def send(self, event: dict) -> None:
        if self.closed:
            return
        try:
            self._outbox.put_nowait(event)
        except asyncio.QueueFull:
            # What the client did not read is dropped: the goodbye goes out first.
            self._drop_queued()
            raise RealtimeError("client_not_reading", "The client does not read its events.",
                                close_code=CLOSE_POLICY) from None

    def _drop_queued(self) -> None:
        while not self._outbox.empty():
            self._outbox.get_nowait()

    async def _write(self) -> None:
        while (event := await self._outbox.get()) is not None:
            try:
                await self.websocket.send_text(json.dumps(event))
            except Exception:  # noqa: BLE001 - the client went away; the reader notices
                self.closed = True
                return

    async def close(self, code: int, reason: str = "") -> None:
        """Send what is queued (a client that does not read gets CLOSE_WAIT_S), then
        close; never waits longer, whatever the client does."""
        if not self._writer.done():
            if self._outbox.full():
                self._drop_queued()
            self._outbox.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), CLOSE_WAIT_S)
            except asyncio.TimeoutError:
                self._writer.cancel()
        self.closed = True
        if self.websocket.client_state == WebSocketState.CONNECTED:
            try:
                await asyncio.wait_for(self.websocket.close(code=code, reason=reason),
                                       CLOSE_WAIT_S)
            except Exception:  # noqa: BLE001 - already gone, or not reading
                pass

    def abandon(self) -> None:
        self.closed = True
        self._writer.cancel()


async def run_session(
    websocket: WebSocket,
    registry: SessionRegistry,
    make_session: Callable[[Callable], RealtimeSession],
    metrics,
) -> None:
    """Accept, then feed client events to the session until the client leaves or a limit
    ends it. Each ending has its own error event and close code. The caller has reserved
    the session's slot in `registry`; it is given back here, whatever happens."""
    settings = registry.settings
    subprotocols = websocket.scope.get("subprotocols", [])
    try:
        await websocket.accept(subprotocol="realtime" if "realtime" in subprotocols else None)
        connection = Connection(websocket)
    except BaseException:
        registry.closed()
        raise
    try:
        session = make_session(connection.send)
    except BaseException:
        connection.abandon()
        registry.closed()
        raise
    metrics.live_sessions.set(registry.open)
    started = time.monotonic()
    ending: RealtimeError | None = None
    client_left = False
    try:
        await session.start()
        while True:
            remaining_s = settings.max_session_s - (time.monotonic() - started)
            if remaining_s <= 0:
                ending = RealtimeError(
                    "session_expired",
                    f"Your session hit the maximum duration of {settings.max_session_s:g} s.",
                    close_code=CLOSE_NORMAL)
                break
            received = asyncio.ensure_future(websocket.receive())
            drained = asyncio.ensure_future(registry.draining.wait())
            failed = asyncio.ensure_future(session.failed.wait())
            try:
                done, _ = await asyncio.wait(
                    {received, drained, failed},
                    timeout=min(settings.idle_timeout_s, remaining_s),
                    return_when=asyncio.FIRST_COMPLETED)
            finally:
                drained.cancel()
                failed.cancel()
                if not received.done():
                    received.cancel()
            if session.failure is not None:  # a background decode's send or bug
                raise session.failure
            if received not in done:
                if registry.draining.is_set():
                    ending = RealtimeError(
                        "server_shutting_down",
                        "This server is restarting; reconnect to continue.",
                        error_type="server_error", close_code=CLOSE_RESTART)
                elif time.monotonic() - started >= settings.max_session_s:
                    continue  # the expiry, at the top of the loop
                else:
                    ending = RealtimeError(
                        "idle_timeout",
                        f"No event for {settings.idle_timeout_s:g} s; the session ended.",
                        close_code=CLOSE_NORMAL)
                break
            message = received.result()
            if message["type"] == "websocket.disconnect":
                client_left = True
                break
            await _dispatch(message, session, connection, settings)
    except (WebSocketDisconnect, ConnectionError):
        client_left = True
    except RealtimeError as exc:  # a handler's error that must end the session
        ending = exc
    except Exception:  # noqa: BLE001 - never leave a socket open on a bug
        logger.exception("live session %s failed", session.id)
        ending = RealtimeError("internal_error", "Internal error; see server logs.",
                               error_type="server_error", close_code=CLOSE_ERROR)
    finally:
        try:
            if client_left or ending is None:
                connection.abandon()
            else:
                await _end(session, connection, ending, settings)
        finally:
            await session.close()
            registry.closed()
            metrics.live_sessions.set(registry.open)
            logger.info(json.dumps({
                "event": "realtime_session", "session_id": session.id,
                "seconds": round(time.monotonic() - started, 1),
                "turns": session.turns_committed,
                "ended_by": "client" if client_left else (ending.code if ending else "client"),
            }))


async def _dispatch(message: dict, session: RealtimeSession, connection: Connection,
                    settings: RealtimeSettings) -> None:
    text = message.get("text")
    if text is None:
        await connection.send(RealtimeError(
            "invalid_event", "Send events as JSON text frames, not binary.").event())
        return
    if len(text) > settings.max_event_bytes:
        await connection.send(RealtimeError(
            "event_too_large",
            f"Events are limited to {settings.max_event_bytes} bytes; send audio in "
            "smaller appends.").event())
        return
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        await connection.send(RealtimeError(
            "invalid_json", f"The event is not valid JSON: {exc.msg}.").event())
        return
    await session.handle(parsed)


async def _end(session: RealtimeSession, connection: Connection, ending: RealtimeError,
               settings: RealtimeSettings) -> None:
    """Finish the turn being spoken (within the drain's grace), say why, and close."""
    if ending.code in ("session_expired", "server_shutting_down", "idle_timeout"):
        try:
            await asyncio.wait_for(session.finish_open_turn(), settings.drain_grace_s)
        except (asyncio.TimeoutError, RealtimeError):
            pass
    try:
        await connection.send(ending.event())
    except RealtimeError:
        pass
    await connection.close(ending.close_code or CLOSE_NORMAL, ending.code)

