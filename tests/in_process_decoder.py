"""What a live session asks of LiveDecoder, answered by a backend in this process: the
session is the service's own, only the hop to the model deployment is a direct call, on
one thread as the model's live lane. Each decode is recorded, so tests and
benchmarks.live_decoding can see what the session asked for."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from serve_app.audio import SAMPLE_RATE
from serve_app.backends.base import DecodeOptions
from serve_app.realtime.decoding import Heard
from serve_app.speech import SpeechDetector


@dataclasses.dataclass
class Decode:
    urgent: bool
    language: str | None  # as asked for (None: the model detected it)
    text_prefix: str | None
    text: str
    audio_s: float
    seconds: float


class InProcessDecoder:
    def __init__(self, backend, detector: SpeechDetector) -> None:
        self._backend = backend
        self._detector = detector
        self._thread = ThreadPoolExecutor(1)
        self.decodes: list[Decode] = []  # the partial decodes, in the order they ended
        self.running = 0  # decodes asked for and not yet answered
        self.errors: list[str] = []  # what the backend said of chunks it could not decode

    def vad_stream(self):
        return self._detector.vad.stream()

    @staticmethod
    def options(language: str | None, prompt: str | None) -> DecodeOptions:
        return DecodeOptions(language=language, prompt=prompt)

    async def _decode(self, audio: np.ndarray, options: DecodeOptions) -> Heard:
        self.running += 1
        try:
            result, = await asyncio.get_running_loop().run_in_executor(
                self._thread, self._backend.transcribe_batch, [audio], options)
        finally:
            self.running -= 1
        if result.error:
            self.errors.append(result.error)
            return Heard("")
        return Heard(result.text.strip(), result.language)

    async def partial(self, audio, options: DecodeOptions, item_id: str,
                      urgent: bool = False) -> Heard:
        if audio.size < SAMPLE_RATE // 10:  # as LiveDecoder
            return Heard("")
        started = time.monotonic()
        heard = await self._decode(audio, options)
        self.decodes.append(Decode(urgent, options.language, options.text_prefix, heard.text,
                                   audio.size / SAMPLE_RATE, time.monotonic() - started))
        return heard

    async def final(self, audio, options: DecodeOptions, item_id: str) -> Heard:
        return await self._decode(audio, options)

    def observe_first_delta(self, seconds: float) -> None:
        pass

    def observe_final(self, seconds: float) -> None:
        pass
