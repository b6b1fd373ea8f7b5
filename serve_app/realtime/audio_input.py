"""Live input audio in OpenAI's formats, turned into 16-kHz float32 as it arrives.

`audio/pcm` is 16-bit little-endian mono at 24 kHz; `audio/pcmu` and `audio/pcma` are
G.711 mu-law and A-law at 8 kHz (telephony). One soxr stream per session resamples
without seams between appends, so the detector and the model see the same samples a
whole recording would give.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np
import soxr

from serve_app.audio import SAMPLE_RATE
from serve_app.realtime.events import RealtimeError

PCM_RATE = 24_000  # OpenAI's rate for audio/pcm
G711_RATE = 8_000


def _mulaw_table() -> np.ndarray:
    """ITU-T G.711 mu-law: byte -> linear sample in [-1, 1)."""
    codes = ~np.arange(256, dtype=np.uint8)
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent
    linear = np.where(sign != 0, 0x84 - magnitude, magnitude - 0x84)
    return (linear / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    """ITU-T G.711 A-law: byte -> linear sample in [-1, 1)."""
    codes = np.arange(256, dtype=np.uint8) ^ 0x55
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = (codes & 0x0F).astype(np.int32)
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent.astype(np.int32) - 1, 0),
    )
    linear = np.where(sign != 0, magnitude, -magnitude)
    return (linear / 32768.0).astype(np.float32)


MULAW = _mulaw_table()
ALAW = _alaw_table()

# The beta protocol's names for the same formats.
BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
GA_FORMATS = {ga: beta for beta, ga in BETA_FORMATS.items()}


class AudioInput:
    """Base64 appends in one format -> 16-kHz float32, seamless across appends."""

    def __init__(self, format_type: str = "audio/pcm") -> None:
        if format_type not in GA_FORMATS:
            raise ValueError(f"unknown format {format_type}")
        self.format_type = format_type
        self.rate = PCM_RATE if format_type == "audio/pcm" else G711_RATE
        # The filter's delay is audio held back until the next append: 21 ms at HQ from
        # 24 kHz; from 8 kHz HQ holds 66 ms, MQ 26 ms (telephone audio has no content
        # near 4 kHz for the steeper filter to keep).
        self._quality = "HQ" if format_type == "audio/pcm" else "MQ"
        self._resampler = self._new_resampler()

    def _new_resampler(self) -> soxr.ResampleStream:
        return soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32",
                                   quality=self._quality)

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.format_type == "audio/pcm" else 1

    def decode(self, audio_b64: str) -> np.ndarray:
        """The 16-kHz samples of one append; a RealtimeError for bad base64 or a byte count
        that is not whole samples (the stream is left as it was)."""
        try:
            raw = base64.b64decode(audio_b64, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError(
                "invalid_audio", "The 'audio' field is not valid base64.", param="audio"
            ) from None
        if len(raw) % self.bytes_per_sample:
            raise RealtimeError(
                "invalid_audio",
                f"{self.format_type} carries {self.bytes_per_sample}-byte samples; "
                f"{len(raw)} bytes is not a whole number of them.",
                param="audio",
            )
        if self.format_type == "audio/pcm":
            samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
        else:
            table = MULAW if self.format_type == "audio/pcmu" else ALAW
            samples = table[np.frombuffer(raw, dtype=np.uint8)]
        return self._resampler.resample_chunk(samples)

    def flush(self) -> np.ndarray:
        """What the resampler's filter still holds, at a manual commit (the client says
        the turn is over); the next append starts a fresh stream."""
        tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        self._resampler = self._new_resampler()
        return tail
