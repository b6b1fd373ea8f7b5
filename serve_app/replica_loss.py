"""Chunks whose model replica went away are sent again; chunks that fail stay failed.

A replica can die or be stopped while it holds a chunk: killed, its node lost, or cut off
at the end of a scale-down's drain. That says nothing about the chunk, so the chunk goes to
another replica (Serve's router picks a live one, or waits for a new one). A bounded number
of times: a chunk that itself kills replicas is not replayed onto every healthy one. A chunk
whose model call raised, or came back with an error, is the chunk's failure and is not
retried here.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable, TypeVar

from ray.exceptions import RayActorError

T = TypeVar("T")
logger = logging.getLogger("ray.serve")


class ReplicaLost(Exception):
    """Every attempt lost its replica; the last loss is the __cause__."""


async def call_surviving_replica_loss(
    call: Callable[[], Awaitable[T]],
    retries: int,
    request_id: str,
    on_retry: Callable[[], None] = lambda: None,
) -> T:
    """`call()`, again up to `retries` times when its replica dies or is stopped under it."""
    for attempt in range(retries + 1):
        try:
            return await call()
        except RayActorError as exc:  # ActorDiedError, ActorUnavailableError: the replica
            if attempt == retries:
                raise ReplicaLost(f"the replica was lost {retries + 1} times") from exc
            on_retry()
            logger.warning(
                "request_id=%s a chunk's model replica was lost (%s); sending it again (%d of %d)",
                request_id, type(exc).__name__, attempt + 1, retries,
            )
    raise AssertionError("unreachable")
