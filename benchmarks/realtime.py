"""Live transcription over /v1/realtime: latency, accuracy and capacity of real-time streams.

    python -m benchmarks.realtime                                   # a private configs/local.yaml
    python -m benchmarks.realtime --url http://127.0.0.1:8000       # a running service
    python -m benchmarks.realtime --url http://127.0.0.1:8000 --streams 1,2,4,8,16 --seconds 120
    python -m benchmarks.realtime --url http://127.0.0.1:8000 --streams 1,4 --with-files 2
    python -m benchmarks.realtime --url http://127.0.0.1:8000 --streams 1 --seconds 30   # smoke
    python -m benchmarks.realtime --streams 1,2 --language auto     # language left to the model

Each stream is a WebSocket session of OpenAI's Realtime protocol in transcription mode
(`/v1/realtime?intent=transcription`, `session.update` with server_vad: threshold 0.5,
prefix_padding_ms 300, silence_duration_ms 500) fed recorded speech at real-time pace: one
`input_audio_buffer.append` of 100 ms of PCM16 at 24 kHz (resampled from 16 kHz with soxr)
every 100 ms against a monotonic clock; a sender that falls behind sends at once until it
has caught up, and its largest lag is recorded.

Speech: the committed espeak-ng sentences (tests/data/speech, texts in manifest.json),
trimmed to their speech; long_45s.wav is cut at its 1.4 s pauses and the sentences the short
files lack are added. A stream is turns of 1-3 sentences (at most 15 s of speech) joined by
0.2 s gaps (under the 500 ms closing pause, so a turn stays one turn), each turn followed
by 1.5 s of silence; streams start with 0.5-2.5 s of silence each and take the sentences
in a different order, so their turns do not end in step. After its last turn a stream
keeps sending silence at the same pace until every turn's transcript has come (or
--drain seconds passed), then closes.

Per turn (a turn's items are matched to it by the audio_start_ms/audio_end_ms of their
speech_started/speech_stopped events):
- final latency: from the send of the append holding the turn's last speech sample to the
  `...input_audio_transcription.completed` of its (last) item;
- first delta: from the send of the append holding its first speech sample to its first
  `...input_audio_transcription.delta`;
- WER of the completed transcript against the turn's text (Whisper's English normaliser,
  as tests/speech.py), and the corpus WER of all turns; the corpus WER of what the deltas
  spelled, joined, too (a decode may send words on its own reading when a delta is due);
- delta cadence: the largest gap between successive deltas received while the turn's
  speech was being sent (None with fewer than two), and how many came then;
- for diagnosis: end of speech -> speech_stopped, committed -> completed.

Each stream count in --streams runs in turn on a fresh set of sockets; the largest count
whose p95 final latency is within the target (silence_duration_ms + 1 s = 1.5 s, set for
one stream on 2 cores), whose every turn was transcribed and whose every sender kept
real-time pace (lag under 0.5 s) is the capacity. --with-files N runs each count again
while N clients keep POSTing tests/data/speech/long_45s.wav to /v1/audio/transcriptions
(`Cache-Control: no-store`) in a loop, and reports the loaded / unloaded p95 final latency
(target: at most 2x) and how many files completed. Prints a table; every turn's raw numbers
go to benchmarks/results/realtime-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import textwrap
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import soxr

from benchmarks.common import (
    LONG_FIXTURE,
    NO_STORE,
    REPO_ROOT,
    SAMPLE_RATE,
    SPEECH_DIR,
    TRANSCRIBE_PATH,
    LocalService,
    fmt,
    load_average,
    load_clip,
    percentile,
    silence,
    timestamp,
    write_json,
)

PCM_RATE = 24_000  # OpenAI's only rate for audio/pcm
APPEND_S = 0.1  # 100 ms of audio per append, one append every 100 ms
APPEND_SAMPLES = int(PCM_RATE * APPEND_S)
SILENCE_MS = 500
TURN_DETECTION = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                  "silence_duration_ms": SILENCE_MS}
SESSION_UPDATE = {"type": "session.update", "session": {
    "type": "transcription",
    "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": PCM_RATE},
        "transcription": {"model": "whisper-1", "language": "en"},
        "turn_detection": TURN_DETECTION,
    }},
}}
TARGET_S = SILENCE_MS / 1000 + 1.0  # p95 final latency, one stream on 2 cores
LOADED_RATIO_TARGET = 2.0  # p95 final latency with file traffic / without
MAX_LAG_S = 0.5  # a sender further behind real time than this did not keep pace
TURN_GAP_S = 1.5  # silence between turns
INNER_GAP_S = 0.2  # between sentences of one turn: shorter than the closing pause
MAX_TURN_S = 15.0
GROUPS = (1, 2, 3, 1, 3, 2, 1, 2)  # sentences per turn, cycled
TERMINAL = ("conversation.item.input_audio_transcription.completed",
            "conversation.item.input_audio_transcription.failed")
DELTA = "conversation.item.input_audio_transcription.delta"


# ---- speech ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sentence:
    name: str
    audio: np.ndarray  # 16 kHz float32, trimmed to the speech
    text: str


def _loud_frames(audio: np.ndarray, threshold: float = 1e-3, frame: int = 160) -> np.ndarray:
    n = audio.size // frame
    return (np.abs(audio[: n * frame]) > threshold).reshape(n, frame).any(axis=1)


def trim(audio: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio[:0]


def split_at_pauses(audio: np.ndarray, min_pause_s: float = 0.7) -> list[np.ndarray]:
    """The stretches of `audio` between pauses of at least `min_pause_s` (10 ms frames)."""
    loud = _loud_frames(audio)
    pieces, start, quiet = [], None, 0
    for i, is_loud in enumerate(loud):
        if is_loud:
            if start is None:
                start = i
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet * 0.01 >= min_pause_s:
                pieces.append(trim(audio[start * 160 : (i - quiet + 1) * 160]))
                start, quiet = None, 0
    if start is not None:
        pieces.append(trim(audio[start * 160 :]))
    return [p for p in pieces if p.size]


def sentences() -> list[Sentence]:
    """The short fixtures, then long_45s.wav's sentences that they lack (when its pauses
    cut it into as many pieces as its text has sentences)."""
    manifest = json.loads((SPEECH_DIR / "manifest.json").read_text(encoding="utf-8"))
    out = [Sentence(name, trim(load_clip(name).audio), text)
           for name, text in manifest.items() if name != LONG_FIXTURE]
    if LONG_FIXTURE in manifest:
        known = {s.text for s in out}
        texts = re.split(r"(?<=[.!?])\s+", manifest[LONG_FIXTURE].strip())
        pieces = split_at_pauses(load_clip(LONG_FIXTURE).audio)
        if len(pieces) == len(texts):
            out += [Sentence(f"{LONG_FIXTURE}#{i}", piece, text)
                    for i, (piece, text) in enumerate(zip(pieces, texts)) if text not in known]
    return out


@dataclass
class TurnPlan:
    index: int
    sentences: list[str]
    text: str
    start: int  # stream sample (16 kHz) of the first speech sample
    end: int  # one past the last speech sample
    # Each sentence's [start, end) in stream samples: the turn without its inner gaps.
    sentences_at: list[tuple[int, int]] = field(default_factory=list)

    @property
    def speech_s(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE

    @property
    def span_ms(self) -> tuple[float, float]:
        return self.start * 1000 / SAMPLE_RATE, self.end * 1000 / SAMPLE_RATE


@dataclass
class StreamPlan:
    index: int
    turns: list[TurnPlan]
    pcm: np.ndarray  # PCM16 at 24 kHz, the whole stream

    @property
    def appends(self) -> int:
        return -(-self.pcm.size // APPEND_SAMPLES)

    @property
    def seconds(self) -> float:
        return self.pcm.size / PCM_RATE

    def append_of(self, sample_16k: int) -> int:
        """Index of the append that carries this stream sample."""
        return min(int(sample_16k * PCM_RATE / SAMPLE_RATE) // APPEND_SAMPLES, self.appends - 1)

    def chunk(self, k: int) -> str:
        return base64.b64encode(
            self.pcm[k * APPEND_SAMPLES : (k + 1) * APPEND_SAMPLES].tobytes()).decode()


def plan_stream(index: int, pool: list[Sentence], seconds: float) -> StreamPlan:
    """Turns until the stream lasts `seconds` (at least one turn)."""
    order = pool[index % len(pool):] + pool[: index % len(pool)]
    if index % 2:
        order.reverse()
    lead_s = 0.5 + (index * 0.7) % 2.0
    parts: list[np.ndarray] = [silence(lead_s)]
    position = parts[0].size
    turns: list[TurnPlan] = []
    next_sentence = 0
    while not turns or position / SAMPLE_RATE < seconds:
        wanted = GROUPS[(len(turns) + index) % len(GROUPS)]
        chosen: list[Sentence] = []
        speech_s = 0.0
        while len(chosen) < wanted:
            sentence = order[next_sentence % len(order)]
            added_s = sentence.audio.size / SAMPLE_RATE + (INNER_GAP_S if chosen else 0.0)
            if chosen and speech_s + added_s > MAX_TURN_S:
                break
            chosen.append(sentence)
            speech_s += added_s
            next_sentence += 1
        start = position
        sentences_at = []
        for i, sentence in enumerate(chosen):
            if i:
                parts.append(silence(INNER_GAP_S))
                position += parts[-1].size
            parts.append(sentence.audio)
            sentences_at.append((position, position + sentence.audio.size))
            position += sentence.audio.size
        turns.append(TurnPlan(len(turns), [s.name for s in chosen],
                              " ".join(s.text for s in chosen), start, position, sentences_at))
        parts.append(silence(TURN_GAP_S))
        position += parts[-1].size
    return StreamPlan(index, turns, to_pcm(np.concatenate(parts).astype(np.float32)))


def to_pcm(audio: np.ndarray) -> np.ndarray:
    """16-kHz float audio as the PCM16 at PCM_RATE that the streams send."""
    resampled = soxr.resample(audio, SAMPLE_RATE, PCM_RATE)
    return (np.clip(resampled, -1.0, 1.0) * 32767).astype("<i2")


# ---- word error rate ------------------------------------------------------------------


_NORMALIZER = None


def normalize(text: str) -> str:
    global _NORMALIZER
    if _NORMALIZER is None:
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        _NORMALIZER = EnglishTextNormalizer({})  # as tests/speech.py
    return _NORMALIZER(text)


def wer(reference: str, hypothesis: str) -> float:
    import jiwer

    return float(jiwer.wer(normalize(reference), normalize(hypothesis)))


def corpus_wer(pairs: list[tuple[str, str]]) -> float | None:
    import jiwer

    pairs = [(normalize(r), normalize(h)) for r, h in pairs]
    pairs = [(r, h) for r, h in pairs if r.strip()]
    if not pairs:
        return None
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    return float(jiwer.wer(refs, hyps))


# ---- one live stream ------------------------------------------------------------------


def realtime_url(url: str) -> str:
    return re.sub(r"^http", "ws", url.rstrip("/")) + "/v1/realtime?intent=transcription"


class Tracker:
    """Follows a session's turn events as they come: is every turn transcribed yet?"""

    def __init__(self, plan: StreamPlan) -> None:
        self.spans = [t.span_ms for t in plan.turns]
        self.covered: set[int] = set()
        self.open: dict[str, float] = {}  # item -> audio_start_ms, speech not yet stopped
        self.pending: set[str] = set()  # stopped or committed, no final yet

    def see(self, event: dict) -> None:
        kind, item = event.get("type"), event.get("item_id")
        if kind == "input_audio_buffer.speech_started":
            self.open[item] = event.get("audio_start_ms", 0)
            self.pending.add(item)
        elif kind == "input_audio_buffer.speech_stopped":
            start = self.open.pop(item, None)
            end = event.get("audio_end_ms")
            if start is not None and end is not None:
                self.covered |= {i for i, (a, b) in enumerate(self.spans) if a < end and b > start}
        elif kind == "input_audio_buffer.committed":
            self.open.pop(item, None)
            self.pending.add(item)
        elif kind in TERMINAL:
            self.pending.discard(item)

    @property
    def done(self) -> bool:
        return len(self.covered) == len(self.spans) and not self.open and not self.pending


@dataclass
class StreamRun:
    plan: StreamPlan
    events: list[tuple[float, dict]] = field(default_factory=list)  # (monotonic, event)
    sent: list[float] = field(default_factory=list)  # monotonic time of each append's send
    lags: list[float] = field(default_factory=list)  # send time - due time, per append
    connect_s: float | None = None
    start_at: float | None = None  # monotonic time the first append was due
    error: str | None = None
    close: str | None = None
    drained: bool = False  # every turn's final came before --drain ran out

    @property
    def max_lag_s(self) -> float | None:
        planned = self.lags[: self.plan.appends]
        return max(planned) if planned else None


async def open_session(url: str, run: StreamRun):
    """Connect, read session.created, configure, read session.updated: the socket."""
    from websockets.asyncio.client import connect

    began = time.monotonic()
    ws = await connect(realtime_url(url), max_size=None, open_timeout=120,
                       ping_interval=None, close_timeout=5)
    try:
        event = json.loads(await asyncio.wait_for(ws.recv(), 60))
        run.events.append((time.monotonic(), event))
        if event.get("type") != "session.created":
            raise RuntimeError(f"expected session.created, got {event}")
        await ws.send(json.dumps(SESSION_UPDATE))
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), 60))
            run.events.append((time.monotonic(), event))
            if event.get("type") == "session.updated":
                break
            if event.get("type") == "error":
                raise RuntimeError(f"session.update refused: {event.get('error')}")
    except BaseException:
        await ws.close()
        raise
    run.connect_s = time.monotonic() - began
    return ws


async def stream(ws, run: StreamRun, start_at: float, drain_s: float) -> None:
    """Send the stream at real-time pace from `start_at`, then silence until every turn's
    transcript came (or `drain_s` passed); events are recorded as they arrive."""
    from websockets.exceptions import ConnectionClosed

    plan, tracker = run.plan, Tracker(run.plan)
    quiet = base64.b64encode(np.zeros(APPEND_SAMPLES, "<i2").tobytes()).decode()

    async def receive() -> None:
        try:
            async for message in ws:
                event = json.loads(message)
                run.events.append((time.monotonic(), event))
                tracker.see(event)
        except ConnectionClosed:
            pass
        if ws.close_code is not None:
            run.close = f"{ws.close_code} {ws.close_reason or ''}".strip()

    run.start_at = start_at
    receiver = asyncio.create_task(receive())
    give_up = start_at + plan.seconds + drain_s
    k = 0
    try:
        while not receiver.done():
            due = start_at + k * APPEND_S
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if k >= plan.appends:
                if tracker.done:
                    run.drained = True
                    break
                if time.monotonic() >= give_up:
                    break
            audio = plan.chunk(k) if k < plan.appends else quiet
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
            now = time.monotonic()
            run.sent.append(now)
            run.lags.append(now - due)
            k += 1
        if receiver.done() and not run.drained:
            run.error = f"the server closed the socket ({run.close}) after {k} appends"
    except ConnectionClosed as exc:
        run.error = f"closed while sending: {exc}"
    finally:
        await ws.close()
        try:
            await asyncio.wait_for(receiver, 10)
        except asyncio.TimeoutError:
            receiver.cancel()


# ---- what one stream's events say ---------------------------------------------------


@dataclass
class Item:
    id: str
    start_ms: float | None = None
    end_ms: float | None = None
    started_t: float | None = None
    stopped_t: float | None = None
    committed_t: float | None = None
    deltas: list[tuple[float, str]] = field(default_factory=list)
    final_t: float | None = None
    transcript: str | None = None
    failed: dict | None = None


def items_of(run: StreamRun) -> tuple[list[Item], list[str], list[dict]]:
    """The session's items in order of speech, the oddities seen, the error events."""
    items: dict[str, Item] = {}
    oddities: list[str] = []
    errors: list[dict] = []
    commit_order: list[str] = []
    final_order: list[str] = []

    def item(item_id: str, kind: str) -> Item:
        if item_id not in items:
            if kind != "input_audio_buffer.speech_started":
                oddities.append(f"{kind} for {item_id} before its speech_started")
            items[item_id] = Item(item_id)
        return items[item_id]

    for t, event in run.events:
        kind = event.get("type", "")
        item_id = event.get("item_id")
        if kind == "error":
            errors.append(event.get("error", event))
            continue
        if not item_id or not kind.startswith(("input_audio_buffer.", "conversation.item.input")):
            continue
        it = item(item_id, kind)
        if kind == "input_audio_buffer.speech_started":
            it.start_ms, it.started_t = event.get("audio_start_ms"), t
        elif kind == "input_audio_buffer.speech_stopped":
            it.end_ms, it.stopped_t = event.get("audio_end_ms"), t
        elif kind == "input_audio_buffer.committed":
            it.committed_t = t
            commit_order.append(item_id)
        elif kind == DELTA:
            if it.final_t is not None:
                oddities.append(f"delta after the final transcript of {item_id}")
            it.deltas.append((t, event.get("delta", "")))
        elif kind in TERMINAL:
            if it.committed_t is None:
                oddities.append(f"{kind.rsplit('.', 1)[1]} before committed for {item_id}")
            if it.final_t is not None:
                oddities.append(f"a second final event for {item_id}")
            it.final_t = t
            final_order.append(item_id)
            if kind.endswith("completed"):
                it.transcript = event.get("transcript", "")
            else:
                it.failed = event.get("error", {})
    if [i for i in final_order] != [i for i in commit_order if i in final_order]:
        oddities.append("final transcripts out of commit order")
    for it in items.values():
        if it.committed_t is not None and it.end_ms is None:
            oddities.append(f"{it.id} committed without speech_stopped")
        if it.transcript is not None:
            joined = "".join(d for _, d in it.deltas)
            if " ".join(joined.split()) != " ".join(it.transcript.split()):
                oddities.append(f"deltas {joined!r} != transcript {it.transcript!r}")
            if not it.deltas and it.transcript.strip():
                oddities.append(f"no delta for {it.id} ({it.transcript!r})")
    ordered = sorted(items.values(), key=lambda i: (i.start_ms is None, i.start_ms or 0))
    return ordered, oddities, errors


def speech_sent_between(run: StreamRun, turn: TurnPlan, after: float, until: float) -> float:
    """Seconds of the turn's speech in the appends sent in (after, until]."""
    per_append = APPEND_SAMPLES * SAMPLE_RATE // PCM_RATE  # stream samples an append holds
    samples = 0
    for k, sent_at in enumerate(run.sent):
        if after < sent_at <= until:
            lo, hi = k * per_append, (k + 1) * per_append
            samples += sum(max(0, min(hi, b) - max(lo, a)) for a, b in turn.sentences_at)
    return samples / SAMPLE_RATE


def turn_results(run: StreamRun) -> tuple[list[dict], dict]:
    """One record per planned turn, and the stream's own record."""
    plan = run.plan
    items, oddities, errors = items_of(run)
    assigned: dict[int, list[Item]] = {t.index: [] for t in plan.turns}
    spurious: list[dict] = []
    for it in items:
        start = it.start_ms if it.start_ms is not None else 0.0
        end = it.end_ms if it.end_ms is not None else float("inf")
        overlaps = [min(end, b) - max(start, a) for a, b in (t.span_ms for t in plan.turns)]
        best = int(np.argmax(overlaps))
        if overlaps[best] > 0:
            assigned[best].append(it)
        else:
            spurious.append({"item_id": it.id, "start_ms": it.start_ms, "end_ms": it.end_ms,
                             "transcript": it.transcript})
    records = []
    for turn in plan.turns:
        mine = assigned[turn.index]
        first_k, last_k = plan.append_of(turn.start), plan.append_of(turn.end - 1)
        first_sent = run.sent[first_k] if first_k < len(run.sent) else None
        last_sent = run.sent[last_k] if last_k < len(run.sent) else None
        deltas = sorted(d for it in mine for d in it.deltas)
        finals = [it.final_t for it in mine]
        complete = bool(mine) and all(it.transcript is not None for it in mine)
        failed = [it.failed for it in mine if it.failed is not None]
        status = ("missing" if not mine else "failed" if failed
                  else "completed" if complete else "incomplete")
        transcript = " ".join(it.transcript.strip() for it in mine
                              if it.transcript) if complete else None
        during = [t for t, _ in deltas if last_sent is not None and t <= last_sent]
        stopped = [it.stopped_t for it in mine if it.stopped_t is not None]
        committed = [it.committed_t for it in mine if it.committed_t is not None]
        records.append({
            "stream": plan.index, "turn": turn.index, "sentences": turn.sentences,
            "speech_s": round(turn.speech_s, 3),
            "start_s": round(turn.start / SAMPLE_RATE, 3),
            "text": turn.text, "status": status, "items": [it.id for it in mine],
            "transcript": transcript,
            "wer": wer(turn.text, transcript) if transcript is not None else None,
            # What the deltas spelled (the final decode's remainder included), each item's
            # joined as the transcripts are: an item's first delta has no space before it.
            "deltas_text": " ".join("".join(text for _, text in it.deltas) for it in mine),
            "final_latency_s": max(finals) - last_sent
            if complete and last_sent is not None else None,
            "first_delta_s": deltas[0][0] - first_sent
            if deltas and first_sent is not None else None,
            "deltas": len(deltas),
            "deltas_during_speech": len(during),
            "max_delta_gap_s": float(np.max(np.diff(during))) if len(during) >= 2 else None,
            "delta_gaps_s": [round(float(g), 3) for g in np.diff(during)],
            # The same gaps in seconds of speech sent meanwhile (the issue's "every second
            # of new speech"): the 0.2-s gaps between a turn's sentences left out.
            "delta_speech_gaps_s": [round(speech_sent_between(run, turn, a, b), 3)
                                    for a, b in zip(during, during[1:])],
            # The same, counted from the first speech sample's send to the last one's: a
            # turn whose partials stall entirely shows here, not above.
            "longest_wait_s": float(np.max(np.diff([first_sent, *during, last_sent])))
            if first_sent is not None and last_sent is not None else None,
            "speech_stopped_s": max(stopped) - last_sent
            if stopped and last_sent is not None else None,
            "committed_to_final_s": max(finals) - max(committed)
            if complete and committed else None,
            "delta_texts": [d for _, d in deltas],
            "failed": failed or None,
        })
    info = {
        "stream": plan.index, "seconds": round(plan.seconds, 1), "turns": len(plan.turns),
        "connect_s": run.connect_s, "max_lag_s": run.max_lag_s,
        "drained": run.drained, "error": run.error, "close": run.close,
        "items": len(items), "spurious_items": spurious, "oddities": oddities,
        "errors": errors,
        "events": event_log(run),
    }
    return records, info


def event_log(run: StreamRun) -> list[list]:
    """[seconds since the first append was due, type, item, detail] for each turn event."""
    origin = run.start_at if run.start_at is not None else (run.events[0][0] if run.events else 0)
    log = []
    for t, event in run.events:
        kind = event.get("type", "")
        if kind.startswith("session.") or kind.startswith("conversation.item.added") \
                or kind.startswith("conversation.item.done"):
            continue
        detail = (event.get("audio_start_ms") or event.get("audio_end_ms") or event.get("delta")
                  or event.get("transcript") or event.get("error"))
        log.append([round(t - origin, 3), kind.replace("conversation.item.input_audio_", "")
                    .replace("input_audio_buffer.", ""), event.get("item_id"), detail])
    return log


# ---- file traffic ---------------------------------------------------------------------


class FileLoad:
    """`clients` loops POSTing long_45s.wav (no-store) until stopped."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url.rstrip("/")
        self.clients = clients
        self.body = (SPEECH_DIR / LONG_FIXTURE).read_bytes()
        self.audio_s = load_clip(LONG_FIXTURE).seconds
        self.requests: list[dict] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._began = 0.0

    def start(self) -> None:
        self._began = time.monotonic()
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]

    async def stop(self, timeout_s: float = 600) -> None:
        """No new request; those in flight finish (they would slow the next phase)."""
        self._stop.set()
        done, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()

    async def _client(self) -> None:
        async with httpx.AsyncClient(timeout=900) as client:
            while not self._stop.is_set():
                began = time.monotonic()
                record = {"start_s": round(began - self._began, 3)}
                try:
                    response = await client.post(
                        f"{self.url}{TRANSCRIBE_PATH}", headers=NO_STORE,
                        files={"file": (LONG_FIXTURE, self.body, "audio/wav")},
                        data={"language": "en"})
                    record["status"] = response.status_code
                    if response.status_code != 200:
                        record["error"] = response.text[:200]
                except Exception as exc:  # noqa: BLE001 - counted, not raised
                    response = None
                    record["status"], record["error"] = None, f"{type(exc).__name__}: {exc}"[:200]
                ended = time.monotonic()
                record["end_s"] = round(ended - self._began, 3)
                record["latency_s"] = round(ended - began, 3)
                self.requests.append(record)
                if response is not None and response.status_code == 503:
                    wait = float(response.headers.get("Retry-After", "1") or 1)
                    try:
                        await asyncio.wait_for(self._stop.wait(), wait)
                    except asyncio.TimeoutError:
                        pass

    def summary(self, live_end_s: float | None) -> dict:
        ok = [r for r in self.requests if r["status"] == 200]
        return {
            "clients": self.clients, "file_s": round(self.audio_s, 1),
            "requests": len(self.requests), "completed": len(ok),
            "completed_during_live": sum(1 for r in ok if live_end_s is None
                                         or r["end_s"] <= live_end_s),
            "shed_503": sum(1 for r in self.requests if r["status"] == 503),
            "other": sum(1 for r in self.requests if r["status"] not in (200, 503)),
            "latency_p50_s": percentile([r["latency_s"] for r in ok], 50),
            "latency_max_s": max((r["latency_s"] for r in ok), default=None),
            "requests_detail": self.requests,
        }


# ---- one phase: N streams at once -----------------------------------------------------


def summarise(turns: list[dict], streams: list[dict]) -> dict:
    final = [t["final_latency_s"] for t in turns if t["final_latency_s"] is not None]
    first = [t["first_delta_s"] for t in turns if t["first_delta_s"] is not None]
    gaps = [t["max_delta_gap_s"] for t in turns if t["max_delta_gap_s"] is not None]
    every_gap = [g for t in turns for g in t["delta_gaps_s"]]
    speech_gaps = [g for t in turns for g in t["delta_speech_gaps_s"]]
    wers = [t["wer"] for t in turns if t["wer"] is not None]
    lags = [s["max_lag_s"] for s in streams if s["max_lag_s"] is not None]
    statuses = [t["status"] for t in turns]
    p95 = percentile(final, 95)
    max_lag = max(lags, default=None)
    all_done = statuses.count("completed") == len(turns) and not any(s["error"] for s in streams)
    return {
        "turns": len(turns), "completed": statuses.count("completed"),
        "missing": statuses.count("missing"), "failed": statuses.count("failed"),
        "incomplete": statuses.count("incomplete"),
        "final_p50_s": percentile(final, 50), "final_p95_s": p95,
        "final_max_s": max(final, default=None),
        "first_delta_p50_s": percentile(first, 50), "first_delta_p95_s": percentile(first, 95),
        "first_delta_max_s": max(first, default=None),
        "turns_without_delta_in_time": len(turns) - len(first),
        "max_delta_gap_p95_s": percentile(gaps, 95), "max_delta_gap_max_s": max(gaps, default=None),
        # Every gap between two deltas while a turn was being spoken, over all turns.
        "delta_gap_p50_s": percentile(every_gap, 50),
        "delta_gap_p95_s": percentile(every_gap, 95),
        "delta_gaps_within_1s": (round(sum(g <= 1.0 for g in every_gap) / len(every_gap), 3)
                                 if every_gap else None),
        # The same counted in seconds of speech between two deltas, as the issue asks.
        "speech_gaps_within_1s": (round(sum(g <= 1.0 for g in speech_gaps)
                                        / len(speech_gaps), 3) if speech_gaps else None),
        "speech_gap_max_s": max(speech_gaps, default=None),
        "longest_wait_max_s": max((t["longest_wait_s"] for t in turns
                                   if t["longest_wait_s"] is not None), default=None),
        "speech_stopped_p50_s": percentile(
            [t["speech_stopped_s"] for t in turns if t["speech_stopped_s"] is not None], 50),
        "committed_to_final_p50_s": percentile([t["committed_to_final_s"] for t in turns
                                                if t["committed_to_final_s"] is not None], 50),
        "wer_mean": float(np.mean(wers)) if wers else None,
        "wer_corpus": corpus_wer([(t["text"], t["transcript"] or "") for t in turns]),
        "deltas_wer_corpus": corpus_wer([(t["text"], t["deltas_text"]) for t in turns]),
        "max_lag_s": max_lag,
        "oddities": sum(len(s["oddities"]) for s in streams),
        "errors": sum(len(s["errors"]) for s in streams),
        "spurious_items": sum(len(s["spurious_items"]) for s in streams),
        "within_target": bool(p95 is not None and p95 <= TARGET_S and all_done
                              and max_lag is not None and max_lag <= MAX_LAG_S),
    }


async def phase(url: str, count: int, seconds: float, drain_s: float, pool: list[Sentence],
                files: int = 0, files_lead_s: float = 3.0) -> dict:
    plans = [plan_stream(i, pool, seconds) for i in range(count)]
    runs = [StreamRun(p) for p in plans]
    load = FileLoad(url, files) if files else None
    began = time.monotonic()
    if load:
        load.start()
        await asyncio.sleep(files_lead_s)  # the files are being decoded when speech starts
    opened = await asyncio.gather(*(open_session(url, r) for r in runs), return_exceptions=True)
    live: list[tuple] = []
    for run, ws in zip(runs, opened):
        if isinstance(ws, BaseException):
            run.error = f"could not open the session: {type(ws).__name__}: {ws}"
        else:
            live.append((ws, run))
    start_at = time.monotonic() + 0.5
    await asyncio.gather(*(stream(ws, run, start_at, drain_s) for ws, run in live))
    live_end_s = time.monotonic() - (load._began if load else began)
    if load:
        await load.stop()
    turns, streams = [], []
    for run in runs:
        records, info = turn_results(run)
        turns += records
        streams.append(info)
    result = {"streams": count, "files": files, "summary": summarise(turns, streams),
              "stream_details": streams, "turns": turns,
              "wall_s": round(time.monotonic() - began, 1)}
    if load:
        result["file_load"] = load.summary(live_end_s)
    return result


async def warm_up(url: str, pool: list[Sentence]) -> None:
    """One short turn on one socket, not counted: the first session's imports and caches."""
    plan = plan_stream(0, pool[:1], 0.0)
    run = StreamRun(plan)
    ws = await open_session(url, run)
    await stream(ws, run, time.monotonic(), 30.0)


# ---- report ---------------------------------------------------------------------------


def table(phases: list[dict]) -> str:
    head = (f"{'files':>5} {'streams':>7} {'turns':>5} {'done':>5} | "
            f"{'final p50':>9} {'p95':>6} {'max':>6} | {'1st delta p50':>13} {'p95':>6} "
            f"{'max':>6} | {'gap p50':>7} {'≤1s':>4} {'gap max':>7} {'wait max':>8} "
            f"{'sp ≤1s':>6} {'sp max':>6} | "
            f"{'stop':>5} {'c->f':>5} | "
            f"{'WER':>5} {'Δ WER':>5} | {'lag max':>7} | ok")
    lines = [head, "-" * len(head)]
    legend = textwrap.fill(
        "seconds; final / 1st delta: from the send of the turn's last / first speech sample; "
        "gap p50: median gap between two deltas during speech, ≤1s: the share of gaps of at "
        "most a second; gap max: the longest; wait max: the same counted from "
        "the first to the last speech sample; sp ≤1s, sp max: the gaps counted in seconds of "
        "speech sent between two deltas (the 0.2-s gaps inside turns left out); "
        "stop: p50 end of speech -> speech_stopped; "
        "c->f: p50 committed -> completed; WER: mean per turn; Δ WER: of the deltas joined, "
        "over all turns; lag max: how far a sender fell "
        "behind real time; ok: within the target", width=100)
    for p in phases:
        s = p["summary"]
        lines.append(
            f"{p['files']:>5} {p['streams']:>7} {s['turns']:>5} {s['completed']:>5} | "
            f"{fmt(s['final_p50_s']):>9} {fmt(s['final_p95_s']):>6} {fmt(s['final_max_s']):>6} | "
            f"{fmt(s['first_delta_p50_s']):>13} {fmt(s['first_delta_p95_s']):>6} "
            f"{fmt(s['first_delta_max_s']):>6} | {fmt(s['delta_gap_p50_s']):>7} "
            f"{fmt(s['delta_gaps_within_1s']):>4} {fmt(s['max_delta_gap_max_s']):>7} "
            f"{fmt(s['longest_wait_max_s']):>8} {fmt(s['speech_gaps_within_1s']):>6} "
            f"{fmt(s['speech_gap_max_s']):>6} | "
            f"{fmt(s['speech_stopped_p50_s']):>5} {fmt(s['committed_to_final_p50_s']):>5} | "
            f"{fmt(s['wer_mean'], 3):>5} {fmt(s['deltas_wer_corpus'], 3):>5} | "
            f"{fmt(s['max_lag_s']):>7} | "
            f"{'yes' if s['within_target'] else 'NO'}")
    return "\n".join(lines + [legend])


def capacity(phases: list[dict], files: int) -> int | None:
    fit = [p["streams"] for p in phases if p["files"] == files and p["summary"]["within_target"]]
    return max(fit, default=None)


def ratios(phases: list[dict]) -> dict[int, float | None]:
    unloaded = {p["streams"]: p["summary"]["final_p95_s"] for p in phases if not p["files"]}
    out = {}
    for p in phases:
        if p["files"]:
            base, loaded = unloaded.get(p["streams"]), p["summary"]["final_p95_s"]
            out[p["streams"]] = loaded / base if base and loaded is not None else None
    return out


def service_info(url: str) -> dict:
    try:
        return httpx.get(f"{url.rstrip('/')}/readyz", timeout=30).json()
    except Exception as exc:  # noqa: BLE001 - only for the record
        return {"error": repr(exc)}


async def benchmark(url: str, counts: list[int], seconds: float, files: int, drain_s: float,
                    pause_s: float, warm: bool) -> list[dict]:
    pool = sentences()
    if warm:
        await warm_up(url, pool)
    phases = []
    for count in counts:
        for with_files in ([0, files] if files else [0]):
            await asyncio.sleep(pause_s)
            result = await phase(url, count, seconds, drain_s, pool, with_files)
            phases.append(result)
            s = result["summary"]
            extra = ""
            if with_files:
                fl = result["file_load"]
                extra = f", files completed {fl['completed']} ({fl['shed_503']} shed)"
            print(f"{count} streams, {with_files} file clients: final p95 "
                  f"{fmt(s['final_p95_s'])} s, first delta p50 {fmt(s['first_delta_p50_s'])} s, "
                  f"{s['completed']}/{s['turns']} turns, WER {fmt(s['wer_mean'], 3)}, "
                  f"lag max {fmt(s['max_lag_s'])} s{extra}", flush=True)
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running service (else a private one)")
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "local.yaml")
    parser.add_argument("--streams", default="1,2,4,8",
                        help="comma-separated numbers of simultaneous streams, run in turn")
    parser.add_argument("--seconds", type=float, default=120.0,
                        help="length of each stream's speech and pauses (whole turns)")
    parser.add_argument("--with-files", type=int, default=0, metavar="N",
                        help="also run each count beside N clients POSTing long_45s.wav")
    parser.add_argument("--drain", type=float, default=60.0,
                        help="after its audio, how long a stream waits for missing transcripts")
    parser.add_argument("--pause", type=float, default=3.0, help="idle seconds between runs")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the uncounted one-turn session before the first run")
    parser.add_argument("--language", default="en",
                        help="the sessions' transcription.language ('auto': none, the model "
                        "detects it, as clients that leave it out)")
    args = parser.parse_args()
    transcription = SESSION_UPDATE["session"]["audio"]["input"]["transcription"]
    if args.language == "auto":
        del transcription["language"]
    else:
        transcription["language"] = args.language
    counts = sorted({int(c) for c in args.streams.split(",") if c.strip()})

    service = nullcontext() if args.url else LocalService(config_path=args.config,
                                                          autoscaling={})
    with service as local:
        url = args.url or local.url
        before = service_info(url)
        load_before = load_average()
        phases = asyncio.run(benchmark(url, counts, args.seconds, args.with_files, args.drain,
                                       args.pause, not args.no_warmup))
        after = service_info(url)

    turn_lengths = sorted({t["speech_s"] for p in phases for t in p["turns"]})
    lengths_line = (f"turns: {min(turn_lengths):.1f}-{max(turn_lengths):.1f} s of speech "
                    f"(median {np.median([t['speech_s'] for p in phases for t in p['turns']]):.1f}"
                    f" s), {TURN_GAP_S:g} s of silence between turns, {INNER_GAP_S:g} s gaps "
                    f"inside; appends of {int(APPEND_S * 1000)} ms at real-time pace"
                    if turn_lengths else "no turns")
    cap = capacity(phases, 0)
    cap_loaded = capacity(phases, args.with_files) if args.with_files else None
    ratio = ratios(phases)
    print()
    print(table(phases))
    print()
    print(lengths_line)
    print(f"target: p95 final latency <= silence_duration_ms + 1 s = {TARGET_S:g} s "
          f"(one stream, 2 cores), every turn transcribed, sender lag <= {MAX_LAG_S:g} s")
    print(f"capacity: {f'{cap} streams' if cap is not None else 'no count'} within the target"
          + (f"; {f'{cap_loaded} streams' if cap_loaded is not None else 'no count'} beside "
             f"{args.with_files} file clients (same target)" if args.with_files else ""))
    for count, r in ratio.items():
        print(f"{count} streams: p95 final latency with files / without = {fmt(r)}x "
              f"(target <= {LOADED_RATIO_TARGET:g}x)")
    for p in phases:
        if p["files"]:
            fl = p["file_load"]
            print(f"{p['streams']} streams + {p['files']} file clients: {fl['completed']} files "
                  f"of {fl['file_s']:g} s completed ({fl['completed_during_live']} while the "
                  f"streams ran), {fl['shed_503']} shed, {fl['other']} other; file latency "
                  f"p50 {fmt(fl['latency_p50_s'])} s")
    for p in phases:
        odd = [o for s in p["stream_details"] for o in s["oddities"]]
        errs = [e for s in p["stream_details"] for e in s["errors"]]
        problems = [s["error"] for s in p["stream_details"] if s["error"]]
        if odd or errs or problems:
            print(f"{p['streams']} streams, {p['files']} file clients: {len(odd)} oddities, "
                  f"{len(errs)} error events, {len(problems)} stream failures; first: "
                  f"{(odd + [str(e) for e in errs] + problems)[:3]}")

    result = {
        "url": args.url, "config": None if args.url else args.config.name,
        "load_average_before": load_before, "load_average_after": load_average(),
        "session_update": SESSION_UPDATE, "target_s": TARGET_S,
        "loaded_ratio_target": LOADED_RATIO_TARGET, "max_lag_s": MAX_LAG_S,
        "seconds_per_stream": args.seconds, "turn_gap_s": TURN_GAP_S,
        "inner_gap_s": INNER_GAP_S, "turn_lengths": lengths_line,
        "capacity_streams": cap, "capacity_streams_with_files": cap_loaded,
        "loaded_over_unloaded_p95": ratio, "service_before": before, "service_after": after,
        "phases": phases,
    }
    print(f"wrote {write_json('realtime', result, timestamp())}")


if __name__ == "__main__":
    main()
