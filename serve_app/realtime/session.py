"""One live transcription session: its configuration, input buffer, turns and transcripts.

Transport-free: events come in as parsed dicts through `handle`, and go out through the
`send` coroutine the transport gives. One handler per client event type; a failing handler
answers with an `error` event and the session goes on. A detected end of speech and a
manual `commit` share one path (`_commit`).

Order of a turn's events (server_vad): speech_started → deltas while the speaker talks →
speech_stopped → committed → item added/done → last delta → completed (or failed).
Completed events come in turn order.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable

import numpy as np
from pydantic import ValidationError

from serve_app.audio import SAMPLE_RATE
from serve_app.backends.base import DecodeOptions
from serve_app.config import RealtimeSettings
from serve_app.realtime.audio_input import BETA_FORMATS, GA_FORMATS, AudioInput
from serve_app.realtime.buffer import SessionAudio, ms, samples_at
from serve_app.realtime.decoding import Heard, LiveDecoder
from serve_app.realtime.events import (
    CLIENT_EVENT_TYPES,
    CLIENT_EVENTS,
    BetaSessionUpdate,
    BufferAppend,
    BufferClear,
    BufferCommit,
    RealtimeError,
    SemanticVAD,
    SessionUpdate,
    new_id,
    server_event,
    validation_error,
)
from serve_app.realtime.partials import StableText
from serve_app.speech.silero import WINDOW
from serve_app.speech.turns import TurnDetector

logger = logging.getLogger("ray.serve")

Send = Callable[[dict], Awaitable[None]]

# OpenAI refuses a commit of less than 100 ms of audio (input_audio_buffer_commit_empty).
MIN_COMMIT_MS = 100
# semantic_vad's eagerness as the closing pause of server_vad (docs/realtime.md): OpenAI's
# own eagerness waits at most 8/4/2 s; without a model of sentence ends, a fixed pause.
SEMANTIC_PAUSE_MS = {"high": 400, "auto": 700, "medium": 700, "low": 1200}
# Where a long turn's decoded part may be cut: the deepest pause after this much of it,
# before the model's 30-s window is full (with a margin for the resampler's rounding).
SEAL_SEARCH_FROM_S = 5.0
SEAL_MAX_S = 29.0
SMOOTH_WINDOWS = 9  # ~0.3 s
# A decode starts as soon as the speaker has paused this long (~130 ms), and counts as
# the turn's final decode when it reaches this far past the end of speech (~64 ms). With
# a closing pause longer than PAUSE_DECODE_LEAD_MS + 130 ms, it starts that long before
# the pause would end the turn instead: pauses inside a long-pause speaker's turn are
# many, and each decode of the whole turn costs the lane seconds.
PAUSE_DECODE_WINDOWS = 4
PAUSE_DECODE_LEAD_MS = 500
END_MARGIN_WINDOWS = 2
# A language detected on this much of a turn's audio is given to later re-decodes.
LANGUAGE_FROM_S = 2.0
# A decode of less of the turn than this is never sent on its own reading: on a turn's
# first second Whisper base often mishears the start ("That would be a quick...", "The
# Quake Brow." at 1.0 s of audio, "The quick brown fog" at 1.3 s). With the default 300-ms
# prefix padding this is a second of speech.
OVERDUE_FROM_S = 1.3
# After a decode that was due to send a delta and could not (past the sent text it heard
# only the word still being said), the next comes after this share of partial_every_s, or
# after the recent re-decodes' own time rather than one and a half times it: the word is most
# often whole a few hundred ms later, and a stalled decode is rare, so the lane can spare it.
STALLED_EVERY = 0.5
# Re-decodes are spaced by the median time of this many recent ones: one slow decode (a
# busy moment of the machine) does not hold back the next, a loaded model soon does.
DECODE_TIMES_KEPT = 3
# Turns committed and not yet transcribed, per session, before the reader waits.
MAX_PENDING_TURNS = 3
# Where a refused field is, in each dialect's session shape (OpenAI's `param`).
GA_PARAMS = {"model": "session.audio.input.transcription.model",
             "language": "session.audio.input.transcription.language",
             "format": "session.audio.input.format"}
BETA_PARAMS = {"model": "session.input_audio_transcription.model",
               "language": "session.input_audio_transcription.language",
               "format": "session.input_audio_format"}


@dataclass
class VADParams:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500

    def as_event(self) -> dict:
        return {"type": "server_vad", "threshold": self.threshold,
                "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms}


@dataclass
class SessionConfig:
    format_type: str = "audio/pcm"
    model: str = ""
    language: str | None = None
    prompt: str | None = None
    vad: VADParams | None = field(default_factory=VADParams)


@dataclass
class OpenTurn:
    """Speech the detector has found and not yet closed."""

    item_id: str
    start: int  # session sample where the turn's audio starts (prefix padding included)
    segment_start: int  # start of the part still decoded whole (long turns are sealed)
    stable: StableText = field(default_factory=StableText)
    sent_before_segment: list[str] = field(default_factory=list)  # sealed parts' units
    decoded_to: int = 0  # session sample the last partial decode reached
    # The text of a decode of the whole turn up to a sample (None once sealed or before
    # any): when it reaches past the end of speech it is the turn's final transcript.
    decoded: tuple[int, Heard] | None = None
    newest_decode_end: int = 0  # session sample the newest decode whose text was used reached
    last_delta_end: int = 0  # session sample the decode that sent the last delta reached
    stalled: bool = False  # the last decode was overdue and sent nothing
    probabilities: list[float] = field(default_factory=list)  # per window, for sealing
    probabilities_from: int = 0  # session sample of the first of them
    started_at: float = field(default_factory=time.monotonic)
    # How long the last few re-decodes took, end to end (a pause's decode of the whole
    # turn is not one: it says little of the next re-decode).
    decode_times: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=DECODE_TIMES_KEPT))
    urgent_started: bool = False  # a pause's decode runs beside a regular one
    first_delta_sent: bool = False

    @property
    def sent_units(self) -> list[str]:
        return self.sent_before_segment + self.stable.sent


class RealtimeSession:
    def __init__(
        self,
        send: Send,
        decoder: LiveDecoder,
        settings: RealtimeSettings,
        model_name: str,
        accepts_model: Callable[[str], bool],
        languages: tuple[str, ...],
        beta: bool,
        session_id: str | None = None,
    ) -> None:
        self._send = send
        self._decoder = decoder
        self._settings = settings
        self._accepts_model = accepts_model
        self._languages = languages
        self.beta = beta
        self.id = session_id or new_id("sess")
        self.created_at = time.time()
        self.config = SessionConfig(model=model_name)
        self._input = AudioInput(self.config.format_type)
        self._audio = SessionAudio()
        self._vad_stream = decoder.vad_stream()
        self._turns: TurnDetector | None = None
        self._vad_origin = 0  # session sample where the current detector started
        self._next_item_id = new_id("item")
        self._previous_item_id: str | None = None
        # The language the last long enough decode detected (_note_language), for the
        # re-decodes after it when the client names none: a decode of the first half
        # second of a turn, left to detect it, often hears another language (Whisper base
        # heard English as Japanese), and nothing agrees with it.
        self._heard_language: str | None = None
        self._turn: OpenTurn | None = None
        self._partial: asyncio.Task | None = None
        self._last_final: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._finals: collections.deque[asyncio.Task] = collections.deque()
        # A background decode that fails to send, or a bug in one, ends the session as a
        # failing handler would (the transport waits on `failed`).
        self.failed = asyncio.Event()
        self.failure: Exception | None = None
        self._reset_turn_detection()
        self.turns_committed = 0
        self._handlers: dict[type, Callable[[Any], Awaitable[None]]] = {
            SessionUpdate: self._on_session_update,
            BetaSessionUpdate: self._on_beta_session_update,
            BufferAppend: self._on_append,
            BufferCommit: self._on_commit,
            BufferClear: self._on_clear,
        }

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self._send(server_event(
            "transcription_session.created" if self.beta else "session.created",
            session=self._describe()))

    async def handle(self, message: Any) -> None:
        """One client event (already parsed JSON); errors become `error` events."""
        client_event_id = message.get("event_id") if isinstance(message, dict) else None
        try:
            event = self._parse(message)
            await self._handlers[type(event)](event)
        except RealtimeError as exc:
            if exc.close_code is not None:
                raise
            await self._send(exc.event(client_event_id))

    async def finish_open_turn(self) -> None:
        """Commit what is being said or buffered (the session is ending) and wait for every
        transcript."""
        if self._turn is not None:
            await self._commit(self._turn.start, self._audio.end, self._turn.item_id)
        elif self.config.vad is None and self._audio.held_samples >= samples_at(MIN_COMMIT_MS):
            await self._commit(self._audio.start, self._audio.end, self._next_item_id)
        if self._last_final is not None:
            await asyncio.shield(self._last_final)

    async def close(self) -> None:
        """Free everything: pending decodes are cancelled (the client is gone)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._audio.clear()

    def _spawn(self, coroutine: Awaitable) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None or self.failure is not None:
            return
        exc = task.exception()
        if not (isinstance(exc, RealtimeError) and exc.close_code is not None):
            logger.error("live session %s: a background task failed: %r", self.id, exc)
            exc = RealtimeError("internal_error", "Internal error; see server logs.",
                                error_type="server_error", close_code=1011)
        self.failure = exc
        self.failed.set()

    # ---- parsing -----------------------------------------------------------------------

    def _parse(self, message: Any):
        if not isinstance(message, dict):
            raise RealtimeError("invalid_json", "Each message must be a JSON object.")
        event_type = message.get("type")
        if event_type not in CLIENT_EVENT_TYPES:
            raise RealtimeError(
                "invalid_value",
                f"Invalid value: {event_type!r}. A transcription session takes "
                + ", ".join(f"'{t}'" for t in CLIENT_EVENT_TYPES) + ".",
                param="type",
            )
        try:
            return CLIENT_EVENTS.validate_python(message)
        except ValidationError as exc:
            raise validation_error(exc, event_type) from None

    # ---- session -----------------------------------------------------------------------

    async def _on_session_update(self, event: SessionUpdate) -> None:
        session = event.session
        if session.type != "transcription":
            raise RealtimeError(
                "invalid_value",
                "This endpoint serves transcription sessions: set session.type to "
                "'transcription' (and connect with ?intent=transcription).",
                param="session.type",
            )
        audio_in = session.audio.input if session.audio else None
        if audio_in is not None:
            await self._apply(
                format_type=audio_in.format.type if audio_in.format else None,
                transcription=audio_in.transcription,
                vad_given="turn_detection" in audio_in.model_fields_set,
                vad=audio_in.turn_detection,
                params=GA_PARAMS,
            )
        await self._send(server_event("session.updated", session=self._describe()))

    async def _on_beta_session_update(self, event: BetaSessionUpdate) -> None:
        session = event.session
        vad = None
        if session.turn_detection is not None:
            detection = session.turn_detection
            vad = (SemanticVAD(type="semantic_vad", eagerness=detection.eagerness or "auto")
                   if detection.type == "semantic_vad" else detection)
        await self._apply(
            format_type=BETA_FORMATS[session.input_audio_format]
            if session.input_audio_format else None,
            transcription=session.input_audio_transcription,
            vad_given="turn_detection" in session.model_fields_set,
            vad=vad,
            params=BETA_PARAMS,
        )
        self.beta = True  # from the first accepted beta update on, answers use its names
        await self._send(server_event("transcription_session.updated", session=self._describe()))

    async def _apply(self, format_type, transcription, vad_given: bool, vad,
                     params: dict[str, str]) -> None:
        """Check everything first, then change: a refused update changes nothing. A change
        of turn detection first commits the turn being spoken."""
        config = self.config
        model, language, prompt = config.model, config.language, config.prompt
        if transcription is not None:
            fields = transcription.model_fields_set
            if transcription.model is not None:
                if not self._accepts_model(transcription.model):
                    raise RealtimeError(
                        "model_not_found",
                        f"The model '{transcription.model}' is not served here.",
                        param=params["model"],
                    )
                model = transcription.model
            if "language" in fields:
                language = transcription.language or None
                if language and self._languages and language not in self._languages:
                    raise RealtimeError(
                        "invalid_value",
                        f"'{language}' is not supported by this model.",
                        param=params["language"],
                    )
            if "prompt" in fields:
                prompt = transcription.prompt or None
        new_vad = config.vad
        if vad_given:
            new_vad = self._vad_params(vad)
        if format_type is not None and format_type != config.format_type:
            if self._audio.held_samples:
                raise RealtimeError(
                    "invalid_value",
                    "The audio format cannot change while the input buffer holds audio; "
                    "commit or clear it first.",
                    param=params["format"],
                )
            self._input = AudioInput(format_type)
            config.format_type = format_type
        config.model, config.language, config.prompt = model, language, prompt
        if vad_given:
            if self._turn is not None:  # announced with speech_started: it gets its answer
                await self._commit(self._turn.start, self._audio.end, self._turn.item_id)
            config.vad = new_vad
            self._reset_turn_detection()

    @staticmethod
    def _vad_params(vad) -> VADParams | None:
        if vad is None:
            return None
        if isinstance(vad, SemanticVAD):
            return VADParams(silence_duration_ms=SEMANTIC_PAUSE_MS[vad.eagerness])
        defaults = VADParams()
        return VADParams(
            threshold=vad.threshold if vad.threshold is not None else defaults.threshold,
            prefix_padding_ms=vad.prefix_padding_ms
            if vad.prefix_padding_ms is not None else defaults.prefix_padding_ms,
            silence_duration_ms=vad.silence_duration_ms
            if vad.silence_duration_ms is not None else defaults.silence_duration_ms,
        )

    def _reset_turn_detection(self) -> None:
        """A fresh detector (and speech model state and live gain) from here on."""
        vad = self.config.vad
        self._turns = (TurnDetector(vad.threshold, vad.prefix_padding_ms, vad.silence_duration_ms)
                       if vad is not None else None)
        self._vad_origin = self._audio.end  # the detector counts windows from here
        self._vad_stream = self._decoder.vad_stream()
        if self._turn is not None:  # dropped (a clear): its announced item id is not reused
            self._next_item_id = new_id("item")
        self._turn = None
        if self._partial is not None:
            self._partial.cancel()

    def _describe(self) -> dict:
        config = self.config
        transcription = {"model": config.model, "language": config.language,
                         "prompt": config.prompt or ""}
        expires_at = int(self.created_at + self._settings.max_session_s)
        if self.beta:
            vad = config.vad.as_event() if config.vad else None
            return {
                "id": self.id, "object": "realtime.transcription_session",
                "expires_at": expires_at,
                "input_audio_format": GA_FORMATS[config.format_type],
                "input_audio_transcription": transcription,
                "turn_detection": vad, "input_audio_noise_reduction": None,
                "include": [], "modalities": ["text"],
            }
        audio_format = {"type": config.format_type}
        if config.format_type == "audio/pcm":
            audio_format["rate"] = 24000
        return {
            "type": "transcription", "id": self.id,
            "object": "realtime.transcription_session", "expires_at": expires_at,
            "audio": {"input": {
                "format": audio_format, "transcription": transcription,
                "turn_detection": config.vad.as_event() if config.vad else None,
                "noise_reduction": None,
            }},
            "include": [],
        }

    # ---- input audio buffer -----------------------------------------------------------

    async def _on_append(self, event: BufferAppend) -> None:
        samples = self._input.decode(event.audio)
        held_after = self._audio.held_samples + samples.size
        if self._turns is None and held_after > self._settings.max_buffer_s * SAMPLE_RATE:
            raise RealtimeError(
                "input_audio_buffer_full",
                f"The input buffer holds at most {self._settings.max_buffer_s:g} s of audio; "
                "commit or clear it. This append was dropped.",
                param="audio",
            )
        self._audio.append(samples)
        if self._turns is None:
            return
        probabilities = self._vad_stream.push(samples)
        if self._turn is not None:
            self._turn.probabilities.extend(probabilities.tolist())
        for turn_event in self._turns.update(probabilities):
            position = self._vad_origin + samples_at(turn_event.audio_ms)
            if turn_event.kind == "speech_started":
                self._turn = OpenTurn(self._next_item_id, position, position, decoded_to=position)
                # This append's windows, for choosing where a long turn is sealed.
                self._turn.probabilities = probabilities.tolist()
                self._turn.probabilities_from = (
                    self._vad_origin + (self._turns_windows_seen() - probabilities.size) * WINDOW)
                await self._send(server_event(
                    "input_audio_buffer.speech_started", audio_start_ms=ms(position),
                    item_id=self._turn.item_id))
            elif self._turn is not None:
                turn = self._turn
                await self._send(server_event(
                    "input_audio_buffer.speech_stopped", audio_end_ms=ms(position),
                    item_id=turn.item_id))
                speech_end = self._vad_origin + samples_at(turn_event.speech_ms)
                await self._commit(turn.start, position, turn.item_id, speech_end)
        if self._turn is None:
            # Keep only what a turn that starts next may take as its prefix padding.
            keep = samples_at(self.config.vad.prefix_padding_ms) + WINDOW
            self._audio.drop_before(self._audio.end - keep)
            return
        if (self._audio.end - self._turn.start) / SAMPLE_RATE >= self._settings.max_turn_s:
            turn = self._turn
            await self._send(server_event(
                "input_audio_buffer.speech_stopped", audio_end_ms=ms(self._audio.end),
                item_id=turn.item_id))
            await self._commit(turn.start, self._audio.end, turn.item_id)
            self._reset_turn_detection()
            return
        self._maybe_decode_partial()

    def _turns_windows_seen(self) -> int:
        return (self._audio.end - self._vad_origin) // WINDOW

    async def _on_commit(self, event: BufferCommit) -> None:
        # The resampler's filter still holds the last ~20 ms: the turn ends with them.
        self._audio.append(self._input.flush())
        start = self._turn.start if self._turn is not None else self._audio.start
        if self._audio.end - start < samples_at(MIN_COMMIT_MS):
            raise RealtimeError(
                "input_audio_buffer_commit_empty",
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has "
                f"{ms(self._audio.end - start)}ms of audio.",
            )
        item_id = self._turn.item_id if self._turn is not None else self._next_item_id
        await self._commit(start, self._audio.end, item_id)
        if self.config.vad is not None:
            self._reset_turn_detection()

    async def _on_clear(self, event: BufferClear) -> None:
        self._audio.clear()
        if self.config.vad is not None:
            self._reset_turn_detection()
        await self._send(server_event("input_audio_buffer.cleared"))

    # ---- turns -------------------------------------------------------------------------

    async def _commit(self, start: int, end: int, item_id: str,
                      speech_end: int | None = None) -> None:
        """The one path from audio to a final transcript: VAD end of turn, manual commit,
        a turn past max_turn_s and the end of the session all come here.

        When the turn's latest decode (started in the closing pause, `_in_pause`) already
        covers all of its speech, that decode is the final one: the transcript comes as
        soon as it does, not one more decode after the pause."""
        turn = self._turn if self._turn is not None and self._turn.item_id == item_id else None
        self._turn = None
        covering: asyncio.Task | None = None
        if (turn is not None and speech_end is not None and turn.segment_start == turn.start
                and turn.decoded_to >= speech_end + END_MARGIN_WINDOWS * WINDOW):
            covering = self._partial if self._partial is not None else _done_task()
            self._partial = None
        if self._partial is not None:
            self._partial.cancel()
            self._partial = None
        audio = self._audio.slice(start, end)
        self._audio.drop_before(end)
        previous, self._previous_item_id = self._previous_item_id, item_id
        self._next_item_id = new_id("item")
        self.turns_committed += 1
        await self._send(server_event(
            "input_audio_buffer.committed", item_id=item_id, previous_item_id=previous))
        item = {"id": item_id, "object": "realtime.item", "type": "message",
                "status": "completed", "role": "user",
                "content": [{"type": "input_audio", "transcript": None}]}
        if self.beta:
            await self._send(server_event(
                "conversation.item.created", item=item, previous_item_id=previous))
        else:
            await self._send(server_event(
                "conversation.item.added", item=item, previous_item_id=previous))
            await self._send(server_event(
                "conversation.item.done", item=item, previous_item_id=previous))
        sent = list(turn.sent_units) if turn is not None else []
        reuse = (turn, covering, speech_end) if covering is not None else None
        self._last_final = self._spawn(self._transcribe_turn(
            audio, item_id, sent, self._last_final, committed_at=time.monotonic(),
            reuse=reuse))
        self._finals.append(self._last_final)
        # A client sending faster than real time is slowed to the model's pace here (the
        # reader waits), instead of queueing unrefusable live work ahead of every file.
        while len(self._finals) > MAX_PENDING_TURNS:
            await asyncio.gather(asyncio.shield(self._finals.popleft()), return_exceptions=True)

    async def _transcribe_turn(
        self, audio: np.ndarray, item_id: str, sent: list[str],
        previous: asyncio.Task | None, committed_at: float, reuse=None,
    ) -> None:
        heard, error = None, None
        if reuse is not None:
            turn, covering, speech_end = reuse
            await asyncio.gather(asyncio.shield(covering), return_exceptions=True)
            if (turn.decoded is not None and turn.decoded[0] >= speech_end
                    and turn.decoded[1].text):
                heard = turn.decoded[1]
        if heard is None:  # no decode covers the turn, or it failed: the file pipeline
            try:
                heard = await self._decoder.final(audio, self._options(), item_id)
            except RealtimeError as exc:
                heard, error = Heard(""), exc
        text = heard.text
        if previous is not None:  # completed events in turn order
            await asyncio.gather(asyncio.shield(previous), return_exceptions=True)
        self._note_language(heard, audio.size)  # after the turns before it
        if error is not None:
            await self._send(server_event(
                "conversation.item.input_audio_transcription.failed", item_id=item_id,
                content_index=0, error={"type": error.error_type, "code": error.code,
                                        "message": error.message, "param": error.param}))
            return
        stable = StableText()
        stable.sent = sent
        remainder = stable.finish(text)
        if remainder:
            await self._delta(item_id, remainder)
        self._decoder.observe_final(time.monotonic() - committed_at)
        await self._send(server_event(
            "conversation.item.input_audio_transcription.completed", item_id=item_id,
            content_index=0, transcript=text,
            usage={"type": "duration", "seconds": round(audio.size / SAMPLE_RATE, 3)}))

    async def _delta(self, item_id: str, delta: str) -> None:
        await self._send(server_event(
            "conversation.item.input_audio_transcription.delta", item_id=item_id,
            content_index=0, delta=delta))

    def _note_language(self, heard: Heard, samples: int) -> None:
        """Remember the language of a decode that detected it on at least LANGUAGE_FROM_S
        of audio (short decodes are where the model mishears it), if the session's model
        takes it as a language to decode in (an English-only Whisper names "en" and
        refuses it)."""
        if (heard.text and heard.language in self._languages
                and samples >= LANGUAGE_FROM_S * SAMPLE_RATE):
            self._heard_language = heard.language

    def _options(self, follow_heard_language: bool = False):
        """Decoding options from the session's config. `follow_heard_language`: a re-decode
        of a growing turn; with no language configured it takes the one last noted. A
        decode that may be a turn's final one still detects the language itself."""
        language = self.config.language
        if language is None and follow_heard_language:
            language = self._heard_language
        return self._decoder.options(language, self.config.prompt)

    # ---- partial results while the speaker talks --------------------------------------

    def _maybe_decode_partial(self) -> None:
        turn = self._turn
        if turn is None:
            return
        if self._in_pause(turn):
            # One decode per pause, at once (beside a running one): if the pause ends the
            # turn, it holds the turn's final transcript.
            if not turn.urgent_started:
                turn.urgent_started = True
                self._partial = self._start_decode(turn, urgent=True)
            return
        turn.urgent_started = False  # speaking again: the next pause gets its decode
        if self._partial is not None and not self._partial.done():
            return  # one re-decode at a time
        new_speech_s = (self._audio.end - turn.decoded_to) / SAMPLE_RATE
        if new_speech_s >= self._decode_every_s(turn):
            self._partial = self._start_decode(turn)

    def _decode_every_s(self, turn: OpenTurn) -> float:
        """New speech between two re-decodes. Re-decodes that take long (a loaded model)
        space the next ones out: re-decoding a growing turn takes at most two thirds of
        the lane's time per stream, except right after a stalled decode, which is
        followed sooner (STALLED_EVERY)."""
        if turn.decoded_to == turn.start and self._settings.delta_deadline_s is not None:
            # A turn's first decode waits for OVERDUE_FROM_S of its audio: a shorter one is
            # mostly misheard ("Lucky." for "The"), and could send nothing on its own.
            # (Agreement only, an early decode is the one the next agrees with.)
            return max(OVERDUE_FROM_S, self._settings.partial_every_s)
        if turn.stalled:
            return max(STALLED_EVERY * self._settings.partial_every_s, _median(turn.decode_times))
        return self._regular_every_s(turn)

    def _regular_every_s(self, turn: OpenTurn) -> float:
        return max(self._settings.partial_every_s, 1.5 * _median(turn.decode_times))

    def _overdue(self, turn: OpenTurn, end: int) -> bool:
        """A decode that reached `end` is the last one to send a delta before the speech
        since the last delta (or since the turn began) outlasts `delta_deadline_s`: the
        next decode comes only after another `_decode_every_s` of speech."""
        deadline = self._settings.delta_deadline_s
        if deadline is None or (end - turn.segment_start) / SAMPLE_RATE < OVERDUE_FROM_S:
            return False
        since = max(turn.last_delta_end, turn.start)
        # The regular spacing: a decode after a stall is judged as any other.
        return (end - since) / SAMPLE_RATE + self._regular_every_s(turn) > deadline

    def _in_pause(self, turn: OpenTurn) -> bool:
        """The speaker has paused: the last ~130 ms are below the detector's threshold, or
        with a long closing pause, all but its last PAUSE_DECODE_LEAD_MS."""
        vad = self.config.vad
        windows = PAUSE_DECODE_WINDOWS
        if vad is not None:
            lead_windows = samples_at(vad.silence_duration_ms - PAUSE_DECODE_LEAD_MS) // WINDOW
            windows = max(windows, lead_windows)
        return self._quiet_for(turn, windows)

    def _quiet_for(self, turn: OpenTurn, windows: int = PAUSE_DECODE_WINDOWS) -> bool:
        """The turn's last `windows` are below the detector's threshold."""
        vad = self.config.vad
        recent = turn.probabilities[-windows:]
        quiet = vad.threshold - 0.15 if vad else 0.35
        return len(recent) == windows and max(recent) < quiet

    def _start_decode(self, turn: OpenTurn, urgent: bool = False) -> asyncio.Task:
        """A decode of the turn's audio so far, taken now: the task starts at the event
        loop's next turn, and a burst of appends may have committed the turn (and dropped
        its audio) by then."""
        end = self._audio.end
        turn.decoded_to = end
        if (end - turn.segment_start) / SAMPLE_RATE > self._settings.seal_after_s:
            # Decoded whole: given the sent words, a decode that ends at a pause right
            # after them tends to loop or invent what comes next.
            cut = self._seal_point(turn, end)
            return self._spawn(self._seal(turn, cut, self._audio.slice(turn.segment_start, cut)))
        # A re-decode continues the words already sent (half the work of decoding the turn
        # again: docs/performance.md). A pause's decode does not: it may be the final one,
        # and the final transcript is the model's own reading of the whole turn.
        options = self._options(follow_heard_language=not urgent)
        if not urgent and self._settings.continue_sent_text and turn.stable.sent:
            options = replace(options, text_prefix=turn.stable.sent_text)
        audio = self._audio.slice(turn.segment_start, end)
        # Audio that ends in a pause ends with a whole word: the decode may confirm it.
        ends_in_pause = self._quiet_for(turn)
        return self._spawn(self._decode_partial(turn, end, audio, options, urgent,
                                                ends_in_pause))

    async def _decode_partial(self, turn: OpenTurn, end: int, audio: np.ndarray,
                              options: DecodeOptions, urgent: bool,
                              ends_in_pause: bool) -> None:
        started = time.monotonic()
        heard = await self._decoder.partial(audio, options, turn.item_id, urgent=urgent)
        text = heard.text
        if not urgent:
            turn.decode_times.append(time.monotonic() - started)
        # Only a decode that detected its language may stand as the final transcript.
        whole = (turn.segment_start == turn.start and options.text_prefix is None
                 and options.language == self.config.language)
        if whole and (turn.decoded is None or end > turn.decoded[0]):
            turn.decoded = (end, heard)  # a slower, older decode never replaces a newer one
            # A speaker who switched languages: the rest of the turn follows at once.
            self._note_language(heard, audio.size)
        if self._turn is not turn:
            return  # the turn was committed meanwhile: its final decode takes over
        if end < turn.newest_decode_end:
            return  # overtaken by a newer decode (a pause's)
        turn.newest_decode_end = end
        overdue = self._overdue(turn, end)
        delta = turn.stable.update(text, ends_in_pause, overdue=overdue)
        turn.stalled = overdue and not delta
        if delta:
            turn.last_delta_end = end
            await self._delta(turn.item_id, delta)
            if not turn.first_delta_sent:
                turn.first_delta_sent = True
                self._decoder.observe_first_delta(time.monotonic() - turn.started_at)
        if self._partial is asyncio.current_task():
            self._partial = None
        self._maybe_decode_partial()  # audio that came during the decode

    async def _seal(self, turn: OpenTurn, cut: int, audio: np.ndarray) -> None:
        """Decode the long turn's part up to its deepest recent pause (`cut`) once, send
        what it adds, and go on decoding only what follows, as a long file is split."""
        text = (await self._decoder.partial(
            audio, self._options(follow_heard_language=True), turn.item_id)).text
        if self._turn is not turn or not text:
            return  # committed meanwhile, or the decode failed: nothing is set aside
        delta = turn.stable.finish(text)
        if delta:
            turn.last_delta_end = cut
            await self._delta(turn.item_id, delta)
        # Words already sent past the cut are expected again at the start of what follows.
        kept = turn.stable.covered_by(text)
        turn.sent_before_segment += turn.stable.sent[:kept]
        turn.stable = turn.stable.rest_after(kept, follows_text=bool(turn.sent_before_segment))
        turn.segment_start = cut

    def _seal_point(self, turn: OpenTurn, end: int) -> int:
        origin = turn.probabilities_from
        first = max(turn.segment_start + int(SEAL_SEARCH_FROM_S * SAMPLE_RATE), origin)
        # A part set aside is one decode: it stays inside the model's window.
        last = min(end, turn.segment_start + int(SEAL_MAX_S * SAMPLE_RATE))
        windows = np.asarray(turn.probabilities, dtype=np.float32)
        lo = (first - origin) // WINDOW
        hi = min((last - origin) // WINDOW, windows.size)
        if hi - lo < SMOOTH_WINDOWS:
            return last
        # The least speech-like 0.3 s (a smoothed minimum), not a single quiet window; the
        # edges are padded with themselves, so they do not look like pauses.
        part = np.pad(windows[lo:hi], SMOOTH_WINDOWS // 2, mode="edge")
        smoothed = np.convolve(part, np.ones(SMOOTH_WINDOWS) / SMOOTH_WINDOWS, mode="valid")
        return origin + (lo + int(np.argmin(smoothed))) * WINDOW


def _median(seconds: collections.deque[float]) -> float:
    return float(np.median(seconds)) if seconds else 0.0


def _done_task() -> asyncio.Future:
    """An awaitable that is already done (the covering decode has finished)."""
    future = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future
