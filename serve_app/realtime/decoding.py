"""What a live session asks of the rest of the service: the speech detector's stream, one
quick decode of the growing turn, and the final transcript of a turn as a file gets it.

Every model call goes to the model replica's live lane, ahead of files and jobs: a turn
that has ended (or paused, and may have) as `Priority.LIVE`, the re-decodes of a growing
turn as `Priority.LIVE_PARTIAL` behind them.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from serve_app.audio import SAMPLE_RATE
from serve_app.backends.base import DecodeOptions
from serve_app.config import AppArgs
from serve_app.errors import APIError
from serve_app.metrics import IngressMetrics
from serve_app.params import SpeechParams
from serve_app.priority import Priority
from serve_app.realtime.events import RealtimeError
from serve_app.replica_loss import call_surviving_replica_loss
from serve_app.speech import SpeechDetector
from serve_app.speech.levels import apply_gain, model_gain
from serve_app.speech.silero import SileroStream
from serve_app.transcriber import Transcriber

logger = logging.getLogger("ray.serve")


class Heard(NamedTuple):
    """A decode's text, and the language the model heard it in (None where the model does
    not say: GLM-ASR detects none)."""

    text: str
    language: str | None = None


class LiveDecoder:
    def __init__(
        self,
        transcriber: Transcriber,
        model,  # DeploymentHandle of the model deployment
        detector: SpeechDetector,
        args: AppArgs,
        metrics: IngressMetrics,
        request_id: str,
    ) -> None:
        self._transcriber = transcriber
        self._model = model
        self._detector = detector
        self._args = args
        self._metrics = metrics
        self._request_id = request_id
        # A turn's final decode finds its speech as a file's does: a request that sets no
        # vad_* field.
        self._speech = SpeechParams().speech_options(args.speech)

    def vad_stream(self) -> SileroStream:
        return self._detector.vad.stream()

    @staticmethod
    def options(language: str | None, prompt: str | None) -> DecodeOptions:
        return DecodeOptions(language=language, prompt=prompt)

    async def partial(self, audio: np.ndarray, options: DecodeOptions, item_id: str,
                      urgent: bool = False) -> Heard:
        """The growing turn decoded once, in one chunk (best effort: a failure sends no
        delta, and the final decode reports it). `urgent`: the speaker has paused, and
        this decode may be the turn's final one. With `options.text_prefix` the decoder
        continues the words already sent, and the text comes back with them."""
        priority = Priority.LIVE if urgent else Priority.LIVE_PARTIAL
        if audio.size < SAMPLE_RATE // 10:
            return Heard("")
        audio = apply_gain(audio, model_gain(audio))  # quiet speakers, as files' chunks
        self._metrics.model_chunks.inc()
        try:
            result = await call_surviving_replica_loss(
                lambda: self._model.transcribe.remote(audio, options, int(priority)),
                self._args.limits.replica_loss_retries,
                f"{self._request_id}/{item_id}",
            )
        except Exception as exc:  # noqa: BLE001 - the turn's final decode reports failures
            logger.warning("request_id=%s/%s partial decode failed: %r",
                           self._request_id, item_id, exc)
            return Heard("")
        return Heard("") if result.error else Heard(result.text.strip(), result.language)

    async def final(self, audio: np.ndarray, options: DecodeOptions, item_id: str) -> Heard:
        """The whole turn through the file pipeline (speech found, split at pauses past the
        model's window, merged): the authoritative transcript."""
        request_id = f"{self._request_id}/{item_id}"
        transcriber = self._transcriber
        # Counted with the files' audio, so admission sees live load, but never refused:
        # the session was admitted when it opened.
        reservation = transcriber.admission.reserve(audio.size / SAMPLE_RATE, refusable=False)
        try:
            job = await transcriber.prepare_decoded(
                audio, reservation, options, self._speech, request_id, None, Priority.LIVE)
            transcription = await transcriber.run(job)
        except APIError as exc:
            raise RealtimeError(exc.code, exc.message, error_type=exc.type) from None
        except Exception as exc:  # noqa: BLE001 - reported as the turn's .failed event
            logger.error("request_id=%s turn failed: %r", request_id, exc)
            raise RealtimeError("inference_failed", "The model failed on this turn.",
                                error_type="server_error") from None
        finally:
            reservation.release()
        self._metrics.audio_seconds_transcribed.inc(max(audio.size / SAMPLE_RATE, 1e-9))
        return Heard(transcription.text, transcription.language)

    def observe_first_delta(self, seconds: float) -> None:
        self._metrics.live_first_delta.observe(seconds)

    def observe_final(self, seconds: float) -> None:
        self._metrics.live_final_latency.observe(seconds)
        self._metrics.live_turns.inc()
