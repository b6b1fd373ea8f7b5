"""Silero VAD v6 through onnxruntime: speech probability per 32-ms window, numpy only.

The bundled ONNX export (assets/NOTICE) takes windows as rows of one input and runs its
LSTM across the rows in order, carrying its state in `h`/`c`. So a whole file is a few
calls of thousands of windows (cheap per window), and a live stream is the same model fed
a few windows at a time with the state kept between calls: both give the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000  # the model's rate (and the rate the ingress decodes to)
WINDOW = 512  # samples per decision: 32 ms, the window Silero was trained on at 16 kHz
WINDOW_SECONDS = WINDOW / SAMPLE_RATE
CONTEXT = 64  # trailing samples of the previous window the model sees before each window
STATE_SHAPE = (1, 1, 128)  # the LSTM's hidden and cell state
# Rows per call: 1000 windows are 32 s of audio and 2.3 MB of input. On 2 cores an hour
# took 6.3 s of one core at 500-2000 rows per call, 7.2 s at 10 000 and 8.0 s at 40 000
# (the input no longer fits in cache).
WINDOWS_PER_CALL = 1_000
BUNDLED_MODEL = Path(__file__).parent / "assets" / "silero_vad_v6.onnx"


class SileroVAD:
    """One onnxruntime session on one thread: the ingress shares its cores with Ray."""

    def __init__(self, model_path: str | Path = BUNDLED_MODEL) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = False  # arena memory is never given back
        options.log_severity_level = 3  # errors only: no per-call warnings in replica logs
        self._session = onnxruntime.InferenceSession(
            str(model_path), providers=["CPUExecutionProvider"], sess_options=options
        )
        self.model_path = str(model_path)

    def probabilities(self, audio: np.ndarray, gains: np.ndarray | None = None) -> np.ndarray:
        """Speech probability of each 32-ms window of `audio` (the last one zero-padded).

        `gains`, one per window, scale the audio as the model sees it (speech.levels); the
        scaled copy is made a block at a time, so an hour never exists twice in memory.
        """
        n_windows = -(-audio.size // WINDOW)
        out = np.empty(n_windows, dtype=np.float32)
        state = (np.zeros(STATE_SHAPE, np.float32), np.zeros(STATE_SHAPE, np.float32))
        context = np.zeros((1, CONTEXT), dtype=np.float32)
        for first in range(0, n_windows, WINDOWS_PER_CALL):
            count = min(WINDOWS_PER_CALL, n_windows - first)
            windows = np.zeros((count, WINDOW), dtype=np.float32)
            block = audio[first * WINDOW : (first + count) * WINDOW]
            windows.reshape(-1)[: block.size] = block
            if gains is not None:
                windows *= gains[first : first + count, None]
            rows = np.concatenate(
                [np.concatenate([context, windows[:-1, -CONTEXT:]], axis=0), windows], axis=1
            )
            context = windows[-1:, -CONTEXT:].copy()
            out[first : first + count], state = self._run(rows, state)
        return out

    def _run(
        self, rows: np.ndarray, state: tuple[np.ndarray, np.ndarray]
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        probs, h, c = self._session.run(None, {"input": rows, "h": state[0], "c": state[1]})
        return probs.reshape(-1), (h, c)

    def stream(self, level_independent: bool = True) -> "SileroStream":
        return SileroStream(self, level_independent)


class SileroStream:
    """Probabilities of live audio as it arrives. With `level_independent`, each window is
    scaled by speech.levels' live gain (the file gain's causal twin), so quiet and loud
    speakers start and end turns alike; without, they equal `probabilities` of the whole."""

    def __init__(self, vad: SileroVAD, level_independent: bool = True) -> None:
        from serve_app.speech.levels import LiveDetectorGain  # levels imports this module

        self._vad = vad
        self._gain = LiveDetectorGain() if level_independent else None
        self._state = (np.zeros(STATE_SHAPE, np.float32), np.zeros(STATE_SHAPE, np.float32))
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)  # less than one window, not yet judged

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities of every window completed by `samples` (possibly none)."""
        pending = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        n_windows = pending.size // WINDOW
        self._pending = pending[n_windows * WINDOW :].copy()
        if n_windows == 0:
            return np.zeros(0, dtype=np.float32)
        windows = pending[: n_windows * WINDOW].reshape(n_windows, WINDOW)
        if self._gain is not None:
            windows = windows * self._gain.gains(windows)[:, None]
        context = np.concatenate([self._context[None, :], windows[:-1, -CONTEXT:]], axis=0)
        self._context = windows[-1, -CONTEXT:].copy()
        probs, self._state = self._vad._run(np.concatenate([context, windows], axis=1), self._state)
        return probs
