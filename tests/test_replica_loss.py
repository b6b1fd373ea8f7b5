"""The retry rule for chunks whose replica went away, on calls that fail as Serve's do."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

from serve_app.replica_loss import ReplicaLost, call_surviving_replica_loss


def flaky(failures: list[BaseException]):
    """A call that raises each of `failures` in turn, then answers; counts its calls."""
    calls = []

    async def call() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "text"

    return call, calls


def run(call, retries: int) -> tuple[object, int]:
    retried = []
    result = asyncio.run(call_surviving_replica_loss(call, retries, "req", lambda: retried.append(1)))
    return result, len(retried)


def test_a_lost_replica_sends_the_chunk_again() -> None:
    call, calls = flaky([ActorDiedError(), ActorUnavailableError("node gone", None)])
    assert run(call, retries=2) == ("text", 2)
    assert len(calls) == 3


def test_a_chunk_that_keeps_losing_replicas_is_given_up() -> None:
    call, calls = flaky([ActorDiedError() for _ in range(5)])
    with pytest.raises(ReplicaLost) as raised:
        run(call, retries=2)
    assert len(calls) == 3  # not replayed onto every replica there is
    assert isinstance(raised.value.__cause__, ActorDiedError)


def test_a_failing_chunk_is_not_retried() -> None:
    error = RayTaskError("transcribe", "traceback", ValueError("bad audio"))
    call, calls = flaky([error])
    with pytest.raises(RayTaskError):
        run(call, retries=2)
    assert len(calls) == 1
