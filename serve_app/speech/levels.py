"""Gain that makes quiet speech look like speech to the detector and to the model.

Measured on 46 espeak-ng sentences (docs/performance.md, "Quiet speech"): Silero v6 finds
speech 50 dB below its normal level but suppresses near-zero signals (its maintainers do
so on purpose) and misses it at -60 dB, and where it cuts speech moves with the level;
Whisper's log-mel features are level-dependent, so quiet chunks cost it 5-7 points of
word error rate until they are brought back to a normal level.
"""

from __future__ import annotations

import numpy as np

from serve_app.speech.silero import WINDOW, WINDOW_SECONDS


def _db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


# The detector hears every stretch of audio at one level, whatever the recording's: its
# segment edges then do not move with the level (measured: at -30 dB, 44 of 46 files were
# cut differently from the same files at their own level, which alone cost Whisper 3.6
# points of word error rate). The gain of each window brings the loudest window within
# DETECTOR_ENVELOPE_SECONDS on either side to DETECTOR_TARGET_DBFS; it follows the level of
# long recordings slowly and stays within DETECTOR_GAIN_DB. Silero's probabilities on noise
# rise with its level: over 12 noises of -70 to -20 dBFS the highest was 0.42 with the
# envelope at -12 dBFS, 0.22 at -20 and -26, with the same share of speech found.
DETECTOR_TARGET_DBFS = -26.0
DETECTOR_ENVELOPE_SECONDS = 2.0
DETECTOR_GAIN_DB = (-20.0, 60.0)
# The gain curve is smoothed over this much audio, so it never jumps within a word.
DETECTOR_SMOOTHING_SECONDS = 0.25
# A chunk the detector found is brought up until its loud speech windows (90th
# percentile) reach this before the model hears it: where the test speech at its own
# level sits (-19 to -14 dBFS), so speech at a normal level is left as it is.
MODEL_TARGET_DBFS = -16.0
# 50 dB lifts speech at -72 dBFS to normal; 16-bit audio's own noise (-101 dBFS) stays
# far below it.
MAX_MODEL_GAIN_DB = 50.0
LOUD_WINDOW_PERCENTILE = 90


def window_rms(audio: np.ndarray) -> np.ndarray:
    """RMS of each whole 32-ms window (a trailing partial window is left out)."""
    n = audio.size // WINDOW
    if n == 0:
        return np.sqrt(np.mean(np.square(audio, dtype=np.float64), keepdims=True))
    windows = audio[: n * WINDOW].reshape(n, WINDOW)
    # einsum sums squares without a float64 copy of the audio: 40x faster over an hour.
    return np.sqrt(np.einsum("ij,ij->i", windows, windows) / WINDOW)


def detector_gains(audio: np.ndarray) -> np.ndarray:
    """One gain per 32-ms window (the last partial one included) for the detector's input."""
    n_windows = -(-audio.size // WINDOW)
    if n_windows == 0:
        return np.ones(0, dtype=np.float32)
    levels_db = np.full(n_windows, -240.0)
    whole = audio.size // WINDOW
    if whole:
        levels_db[:whole] = 20 * np.log10(np.maximum(window_rms(audio), 1e-12))
    if whole < n_windows:
        levels_db[-1] = 20 * np.log10(max(float(window_rms(audio[whole * WINDOW :])[0]), 1e-12))
    reach = int(round(DETECTOR_ENVELOPE_SECONDS / WINDOW_SECONDS))
    padded = np.pad(levels_db, reach, constant_values=-240.0)
    envelope = np.lib.stride_tricks.sliding_window_view(padded, 2 * reach + 1).max(axis=1)
    gain_db = np.clip(DETECTOR_TARGET_DBFS - envelope, *DETECTOR_GAIN_DB)
    smooth = max(1, int(round(DETECTOR_SMOOTHING_SECONDS / WINDOW_SECONDS)))
    kernel = np.ones(2 * smooth + 1) / (2 * smooth + 1)
    gain_db = np.convolve(np.pad(gain_db, smooth, mode="edge"), kernel, mode="valid")
    return (10.0 ** (gain_db / 20.0)).astype(np.float32)


class LiveDetectorGain:
    """`detector_gains` for live audio, which has no future: the envelope is the loudest
    window of the past DETECTOR_ENVELOPE_SECONDS, this one included, so a loud onset lowers
    the gain at once (nothing clips), while the gain rises back only at RELEASE_DB_PER_S
    (a pause inside a turn does not lift the room's noise to speech level)."""

    RELEASE_DB_PER_S = 20.0

    def __init__(self) -> None:
        self._reach = int(round(DETECTOR_ENVELOPE_SECONDS / WINDOW_SECONDS)) + 1
        self._levels_db: list[float] = []
        self._gain_db: float | None = None

    def gains(self, windows: np.ndarray) -> np.ndarray:
        """One gain per row of `windows` (n x WINDOW samples), in order."""
        out = np.empty(windows.shape[0], dtype=np.float32)
        rms = np.sqrt(np.einsum("ij,ij->i", windows, windows) / windows.shape[1])
        release = self.RELEASE_DB_PER_S * WINDOW_SECONDS
        for i, level in enumerate(20 * np.log10(np.maximum(rms, 1e-12))):
            self._levels_db.append(float(level))
            del self._levels_db[: -self._reach]
            target = float(np.clip(DETECTOR_TARGET_DBFS - max(self._levels_db),
                                   *DETECTOR_GAIN_DB))
            if self._gain_db is None or target < self._gain_db:
                self._gain_db = target
            else:
                self._gain_db = min(target, self._gain_db + release)
            out[i] = 10.0 ** (self._gain_db / 20.0)
        return out


def model_gain(chunk: np.ndarray) -> float:
    """Gain for one chunk of detected speech: >= 1, so normal speech is untouched."""
    if chunk.size == 0:
        return 1.0
    loud = float(np.percentile(window_rms(chunk), LOUD_WINDOW_PERCENTILE))
    return _clamped_gain(_db_to_gain(MODEL_TARGET_DBFS) / max(loud, 1e-12), MAX_MODEL_GAIN_DB)


def _clamped_gain(gain: float, max_db: float) -> float:
    return float(min(max(gain, 1.0), _db_to_gain(max_db)))


def apply_gain(audio: np.ndarray, gain: float) -> np.ndarray:
    if gain == 1.0:
        return audio
    return np.clip(audio * np.float32(gain), -1.0, 1.0).astype(np.float32, copy=False)
