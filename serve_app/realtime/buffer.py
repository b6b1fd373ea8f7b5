"""The input audio buffer of a live session: 16-kHz samples addressed by their position in
the whole session, so OpenAI's `audio_start_ms` / `audio_end_ms` need no bookkeeping.

Appends are kept as a list of blocks and joined only when a slice is read (a decode, a
commit), instead of growing one array by a copy per append.
"""

from __future__ import annotations

import numpy as np

from serve_app.audio import SAMPLE_RATE


class SessionAudio:
    def __init__(self) -> None:
        self._blocks: list[np.ndarray] = []
        self.start = 0  # session position of the first sample still held
        self.end = 0  # session position just past the last sample received

    @property
    def held_samples(self) -> int:
        return self.end - self.start

    @property
    def held_seconds(self) -> float:
        return self.held_samples / SAMPLE_RATE

    def append(self, samples: np.ndarray) -> None:
        if samples.size:
            self._blocks.append(samples)
            self.end += samples.size

    def slice(self, start: int, end: int | None = None) -> np.ndarray:
        """Samples [start, end) of the session (clipped to what is still held)."""
        end = self.end if end is None else min(end, self.end)
        start = max(start, self.start)
        if end <= start:
            return np.zeros(0, np.float32)
        joined = np.concatenate(self._blocks) if len(self._blocks) > 1 else self._blocks[0]
        self._blocks = [joined]  # later reads reuse the join
        return joined[start - self.start : end - self.start].copy()

    def drop_before(self, position: int) -> None:
        """Forget samples before `position` (audio no turn will need)."""
        position = min(max(position, self.start), self.end)
        if position == self.start:
            return
        joined = np.concatenate(self._blocks) if len(self._blocks) > 1 else self._blocks[0]
        rest = joined[position - self.start :]
        self._blocks = [rest.copy()] if rest.size else []
        self.start = position

    def clear(self) -> None:
        self._blocks = []
        self.start = self.end


def ms(position: int) -> int:
    return int(round(position * 1000 / SAMPLE_RATE))


def samples_at(milliseconds: float) -> int:
    return int(round(milliseconds * SAMPLE_RATE / 1000))
