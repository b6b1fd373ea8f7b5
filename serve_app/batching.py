"""Batch shaping for the model deployment, as plain functions that tests can call.

`@serve.batch` hands over a list of chunk requests from many HTTP requests, its size
counted in seconds of audio rather than chunks (`batch_size_in_windows`). Chunks only share
a `generate` call when their decode options match, similar lengths go together so padding
wastes little (and what is wasted is measured), and a failure is narrowed down by halving so
one bad chunk (or an out-of-memory batch) never fails its batch mates.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from serve_app.backends.base import (
    MAX_CHUNK_SECONDS,
    SAMPLE_RATE,
    ChunkResult,
    DecodeOptions,
    Preempted,
)
from serve_app.priority import Priority

logger = logging.getLogger(__name__)

# A chunk shorter than this is billed as this long: each chunk also costs a sequence of
# its own in `generate`, whatever its length.
MIN_COST_SECONDS = 2.0
SIMILAR_LENGTH_RATIO = 2.0

TranscribeFn = Callable[[list[np.ndarray], DecodeOptions], list[ChunkResult]]


@dataclass(frozen=True)
class ChunkRequest:
    audio: np.ndarray
    options: DecodeOptions
    enqueued_at: float = 0.0  # monotonic time the chunk reached the replica
    # The encoder window this chunk is padded to (BackendInfo.window_for: Whisper 30 s, or
    # 5-30 s trimmed); None when a call is padded to its longest chunk only.
    window_s: float | None = float(MAX_CHUNK_SECONDS)
    priority: Priority = Priority.SYNC  # only for metrics here: the gate already ordered it

    @property
    def cost_s(self) -> float:
        """Seconds of (padded) audio the model computes on for this chunk."""
        return chunk_cost_seconds(self.audio.size, self.window_s)


def chunk_cost_seconds(n_samples: int, window_s: float | None) -> float:
    """What one chunk costs the model, in seconds of (padded) audio."""
    if window_s is not None:
        return window_s
    return max(n_samples / SAMPLE_RATE, MIN_COST_SECONDS)


def batch_size_in_windows(requests: list[ChunkRequest]) -> int:
    """`@serve.batch`'s batch_size_fn: a batch's cost in 30-second windows of audio.

    So `max_batch_size: 8` means 240 s of audio, whatever the chunk lengths: eight
    Whisper chunks padded to 30 s, or up to forty-eight 5-second GLM-ASR chunks.
    """
    seconds = sum(r.cost_s for r in requests)
    return max(1, math.ceil(seconds / MAX_CHUNK_SECONDS - 1e-9))


def group_for_generate(requests: list[ChunkRequest]) -> list[list[int]]:
    """Indices of the chunks that share one `generate` call, each call ordered by length.

    Chunks share a call only when their options and their window match, so what a chunk
    is padded to never depends on its batch mates. Chunks without a window (padded to the
    call's longest) get calls of similar lengths: the longest at most SIMILAR_LENGTH_RATIO
    times the shortest, so padding stays under half of each call.
    """
    groups: dict[tuple[DecodeOptions, float | None], list[int]] = defaultdict(list)
    for index, request in enumerate(requests):
        groups[(request.options, request.window_s)].append(index)
    calls: list[list[int]] = []
    for (_, window_s), indices in groups.items():
        indices.sort(key=lambda i: requests[i].audio.size)
        if window_s is not None:
            calls.append(indices)
            continue
        current: list[int] = []
        for i in indices:
            shortest = requests[current[0]].audio.size if current else 0
            if current and requests[i].audio.size > SIMILAR_LENGTH_RATIO * max(shortest, 1):
                calls.append(current)
                current = []
            current.append(i)
        calls.append(current)
    return calls


@dataclass(frozen=True)
class BatchShape:
    """How much of what a batch computed on was audio and how much was padding."""

    audio_s: float
    padded_s: float  # audio plus padding: what the model actually processed

    @property
    def padding_ratio(self) -> float:
        return 1.0 - self.audio_s / self.padded_s if self.padded_s else 0.0


def batch_shape(requests: list[ChunkRequest], calls: list[list[int]]) -> BatchShape:
    audio = padded = 0.0
    for call in calls:
        lengths = [requests[i].audio.size / SAMPLE_RATE for i in call]
        longest = max(lengths, default=0.0)
        audio += sum(lengths)
        padded += sum(
            requests[i].window_s if requests[i].window_s is not None else longest for i in call
        )
    return BatchShape(audio, padded)


def run_isolated(
    transcribe: TranscribeFn, audios: list[np.ndarray], options: DecodeOptions
) -> list[ChunkResult]:
    """Run a group; on failure split it in halves so only the failing chunk errs."""
    try:
        results = transcribe(audios, options)
        if len(results) != len(audios):
            raise RuntimeError(f"backend returned {len(results)} results for {len(audios)}")
        return results
    except Preempted:
        raise  # the whole batch stops: splitting it would only redo the encoder
    except Exception as exc:  # noqa: BLE001 - any failure becomes a per-chunk value
        if len(audios) == 1:
            logger.warning("chunk failed: %s: %s", type(exc).__name__, exc)
            return [ChunkResult(error=f"{type(exc).__name__}: {exc}")]
        logger.warning("batch of %d failed (%s); retrying in halves", len(audios), exc)
        half = len(audios) // 2
        return run_isolated(transcribe, audios[:half], options) + run_isolated(
            transcribe, audios[half:], options
        )


def run_batch(
    transcribe: TranscribeFn, requests: list[ChunkRequest], calls: list[list[int]] | None = None
) -> list[ChunkResult]:
    """One result per request, in the order the requests came.

    `calls` is how to split the batch into `generate` calls (group_for_generate's answer
    by default).
    """
    results: list[ChunkResult | None] = [None] * len(requests)
    for indices in calls if calls is not None else group_for_generate(requests):
        group_results = run_isolated(
            transcribe, [requests[i].audio for i in indices], requests[indices[0]].options
        )
        for index, result in zip(indices, group_results):
            results[index] = result
    return [r if r is not None else ChunkResult(error="no result") for r in results]


# This many consecutive batches in which every chunk failed means the model (or the
# device under it) is broken, not the audio: health checks fail so Serve replaces us.
UNHEALTHY_AFTER_FAILED_BATCHES = 3


class BatchHealth:
    """Tells a broken model from bad audio by watching whole batches fail in a row."""

    def __init__(self, threshold: int = UNHEALTHY_AFTER_FAILED_BATCHES) -> None:
        self._threshold = threshold
        self._failed_in_a_row = 0

    def record(self, results: list[ChunkResult]) -> None:
        all_failed = bool(results) and all(r.error for r in results)
        self._failed_in_a_row = self._failed_in_a_row + 1 if all_failed else 0

    def check(self) -> None:
        if self._failed_in_a_row >= self._threshold:
            raise RuntimeError(f"{self._failed_in_a_row} batches in a row failed entirely")
