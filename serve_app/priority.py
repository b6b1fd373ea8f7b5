"""Priority classes at the model replica: live turns, then synchronous files, then jobs.

Ray's queues and `@serve.batch` are first-in-first-out, and a batch cannot be interrupted:
on 2 CPU cores a batch of eight 30-s file chunks takes ~20 s. So the classes get two lanes:

- **Live** chunks have a lane of their own: a second batcher (a 10-ms wait) whose batches
  run on a second inference thread beside the files' batch, with the same weights. A live
  turn starts at once; on CPU the two lanes share the cores while both run, on a GPU their
  kernels interleave. The files' lane gives way while a live batch runs (ASRModel pauses
  its decoding steps and lowers its thread's CPU priority), since both lanes share one
  Python process. Within the lane, a turn that has ended goes before the re-decodes of
  turns still growing, and stops a batch of them at its next step (their deltas can wait a
  little; a finished sentence should not). Measured in docs/performance.md ("Live
  transcription").
- **Synchronous files before jobs**: the files' batcher is let in only about one batch's
  worth of audio at a time; the rest waits ordered by class, then by arrival, so a backlog
  of jobs would never delay a file by more than the batch in progress.

Each lane has a `PriorityGate` in front of its batcher doing that ordering.

What is not reordered: chunks still at the caller's router (past the replica's
`max_ongoing_requests`) wait there in arrival order; the ingress's admission control keeps
that queue short (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from contextlib import asynccontextmanager
from enum import IntEnum
from typing import AsyncIterator


class Priority(IntEnum):
    """Lower goes first."""

    LIVE = 0  # a turn has ended (or paused) and its speaker waits for the transcript
    LIVE_PARTIAL = 1  # a growing turn decoded again for its deltas
    SYNC = 2  # an HTTP request is held open for this file
    JOB = 3  # background work whose client polls or gets a callback

    @property
    def live(self) -> bool:
        """Runs on the live lane."""
        return self in (Priority.LIVE, Priority.LIVE_PARTIAL)


class PriorityGate:
    """Admits work into the batcher in priority order while at most `capacity_s` seconds
    of (padded) audio are in it; one piece larger than the capacity enters an empty gate."""

    def __init__(self, capacity_s: float) -> None:
        self._capacity_s = capacity_s
        self._inside_s = 0.0
        self._waiting: list[tuple[int, int, float, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self.waiting_by_class: dict[Priority, int] = {p: 0 for p in Priority}

    @property
    def inside_s(self) -> float:
        return self._inside_s

    def set_capacity(self, capacity_s: float) -> None:
        self._capacity_s = capacity_s
        self._wake()

    @asynccontextmanager
    async def admitted(self, priority: Priority, cost_s: float) -> AsyncIterator[None]:
        if self._waiting or not self._fits(cost_s):
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (int(priority), next(self._arrivals), cost_s, future)
            heapq.heappush(self._waiting, entry)
            self.waiting_by_class[priority] += 1
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._inside_s -= cost_s  # admitted just as the caller gave up
                elif entry in self._waiting:  # else _wake already dropped it
                    self._waiting.remove(entry)
                    heapq.heapify(self._waiting)
                self._wake()
                raise
            finally:
                self.waiting_by_class[priority] -= 1
        else:
            self._inside_s += cost_s
        try:
            yield
        finally:
            self._inside_s -= cost_s
            self._wake()

    def _fits(self, cost_s: float) -> bool:
        return self._inside_s == 0 or self._inside_s + cost_s <= self._capacity_s + 1e-9

    def _wake(self) -> None:
        # Strictly in order: a large file chunk at the head is not overtaken by smaller
        # ones behind it of the same class, or it could wait forever.
        while self._waiting and self._fits(self._waiting[0][2]):
            _, _, cost_s, future = heapq.heappop(self._waiting)
            if future.done():
                continue
            self._inside_s += cost_s
            future.set_result(None)
