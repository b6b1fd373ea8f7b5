"""Batch shaping for the model deployment, as plain functions that tests can call.

`@serve.batch` hands over a list of chunk requests from many HTTP requests. Chunks only
share a `generate` call when their decode options match, similar lengths go together so
padding wastes little, and a failure is narrowed down by halving so one bad chunk (or an
out-of-memory batch) never fails its batch mates.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from serve_app.backends.base import ChunkResult, DecodeOptions

logger = logging.getLogger(__name__)

TranscribeFn = Callable[[list[np.ndarray], DecodeOptions], list[ChunkResult]]


@dataclass(frozen=True)
class ChunkRequest:
    audio: np.ndarray
    options: DecodeOptions
    enqueued_at: float = 0.0  # monotonic time the chunk reached the replica


def group_for_generate(requests: list[ChunkRequest]) -> list[list[int]]:
    """Indices grouped by equal options, each group ordered by audio length."""
    groups: dict[DecodeOptions, list[int]] = defaultdict(list)
    for index, request in enumerate(requests):
        groups[request.options].append(index)
    return [
        sorted(indices, key=lambda i: requests[i].audio.size) for indices in groups.values()
    ]


def run_isolated(
    transcribe: TranscribeFn, audios: list[np.ndarray], options: DecodeOptions
) -> list[ChunkResult]:
    """Run a group; on failure split it in halves so only the failing chunk errs."""
    try:
        results = transcribe(audios, options)
        if len(results) != len(audios):
            raise RuntimeError(f"backend returned {len(results)} results for {len(audios)}")
        return results
    except Exception as exc:  # noqa: BLE001 - any failure becomes a per-chunk value
        if len(audios) == 1:
            logger.warning("chunk failed: %s: %s", type(exc).__name__, exc)
            return [ChunkResult(error=f"{type(exc).__name__}: {exc}")]
        logger.warning("batch of %d failed (%s); retrying in halves", len(audios), exc)
        half = len(audios) // 2
        return run_isolated(transcribe, audios[:half], options) + run_isolated(
            transcribe, audios[half:], options
        )


def run_batch(transcribe: TranscribeFn, requests: list[ChunkRequest]) -> list[ChunkResult]:
    """One result per request, in the order the requests came."""
    results: list[ChunkResult | None] = [None] * len(requests)
    for indices in group_for_generate(requests):
        group_results = run_isolated(
            transcribe, [requests[i].audio for i in indices], requests[indices[0]].options
        )
        for index, result in zip(indices, group_results):
            results[index] = result
    return [r if r is not None else ChunkResult(error="no result") for r in results]


def padding_waste(lengths: list[int]) -> float:
    """Share of a padded batch that is padding (0 = none)."""
    if not lengths:
        return 0.0
    return 1.0 - sum(lengths) / (max(lengths) * len(lengths))


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
