"""Live transcription over /v1/realtime, OpenAI's Realtime protocol in transcription mode,
against the real service (Whisper demo model) through HAProxy, with a plain WebSocket
client. Audio goes faster than real time; pacing is the benchmark's business."""

from __future__ import annotations

import re
import time

import httpx
import numpy as np
import pytest

from tests.conftest import wait_until
from tests.realtime_client import LiveClient, silence
from tests.speech import load_fixture, normalize, word_error_rate

pytestmark = pytest.mark.usefixtures("service")

GA_SESSION = {
    "type": "session.update",
    "session": {
        "type": "transcription",
        "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
            "turn_detection": {"type": "server_vad", "threshold": 0.5,
                               "prefix_padding_ms": 300, "silence_duration_ms": 500},
        }},
    },
}


def _file_text(client: httpx.Client, audio: np.ndarray) -> str:
    import io

    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio, 16_000, format="WAV")
    response = client.post("/v1/audio/transcriptions",
                           files={"file": ("turn.wav", buffer.getvalue(), "audio/wav")},
                           data={"model": "whisper-1", "language": "en"},
                           headers={"Cache-Control": "no-store"})
    assert response.status_code == 200, response.text
    return response.json()["text"]


def test_two_turns_with_server_vad(service: str, client: httpx.Client) -> None:
    first, second = load_fixture("fox_dog.wav"), load_fixture("weather.wav")
    with LiveClient(service) as live:
        created = live.receive()
        assert created["type"] == "session.created"
        assert created["session"]["type"] == "transcription"
        live.send(GA_SESSION)
        updated = live.until_type("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500
        live.append(np.concatenate([silence(0.6), first.audio, silence(1.2),
                                    second.audio, silence(1.2)]))
        live.until(lambda e: e["type"].endswith("completed")
                   and len(live.of_type("conversation.item.input_audio_transcription.completed")) == 2)

    started = live.of_type("input_audio_buffer.speech_started")
    stopped = live.of_type("input_audio_buffer.speech_stopped")
    committed = live.of_type("input_audio_buffer.committed")
    completed = live.of_type("conversation.item.input_audio_transcription.completed")
    assert len(started) == len(stopped) == len(committed) == 2
    # Speech in the first turn begins at 0.6 s; the start includes the 300 ms padding.
    assert 150 <= started[0]["audio_start_ms"] <= 600
    # The stop is where the closing pause reached 500 ms: after the speech (the file has a
    # short silent tail of its own), before the second sentence begins.
    first_end_ms = (0.6 + first.audio.size / 16_000) * 1000
    assert first_end_ms - 500 <= stopped[0]["audio_end_ms"] <= first_end_ms + 1200
    assert [c["item_id"] for c in committed] == [s["item_id"] for s in started]
    assert committed[0]["previous_item_id"] is None
    assert committed[1]["previous_item_id"] == committed[0]["item_id"]
    added = live.of_type("conversation.item.added")
    assert [a["item"]["id"] for a in added] == [c["item_id"] for c in committed]
    assert [c["item_id"] for c in completed] == [c["item_id"] for c in committed]
    for fixture, event in zip((first, second), completed):
        assert event["content_index"] == 0 and event["usage"]["type"] == "duration"
        live_wer = word_error_rate([fixture.text], [event["transcript"]])
        file_wer = word_error_rate([fixture.text], [_file_text(client, fixture.audio)])
        assert live_wer <= file_wer + 0.02, (event["transcript"], fixture.text)
    # Deltas only append: together they are the completed transcript, but for a word a
    # decode sent on its own reading when a delta was due (docs/realtime.md).
    for event in completed:
        deltas = [d["delta"] for d in live.of_type(
            "conversation.item.input_audio_transcription.delta") if d["item_id"] == event["item_id"]]
        assert word_error_rate([event["transcript"]], ["".join(deltas)]) <= 0.2, deltas


def test_manual_turns_commit_and_clear(service: str) -> None:
    fixture = load_fixture("oak_tree.wav")
    with LiveClient(service) as live:
        live.until_type("session.created")
        live.send({"type": "session.update", "event_id": "evt_1", "session": {
            "type": "transcription", "audio": {"input": {"turn_detection": None}}}})
        assert live.until_type("session.updated")["session"]["audio"]["input"][
            "turn_detection"] is None
        live.send({"type": "input_audio_buffer.commit", "event_id": "evt_2"})
        empty = live.until_type("error")["error"]
        assert empty["code"] == "input_audio_buffer_commit_empty"
        assert empty["event_id"] == "evt_2"
        live.append(silence(1.0))
        live.send({"type": "input_audio_buffer.clear"})
        live.until_type("input_audio_buffer.cleared")
        live.append(fixture.audio)
        live.send({"type": "input_audio_buffer.commit"})
        completed = live.until_type("conversation.item.input_audio_transcription.completed")
    assert not live.of_type("input_audio_buffer.speech_started")  # no detector: no turns
    committed = live.of_type("input_audio_buffer.committed")
    assert [c["item_id"] for c in committed] == [completed["item_id"]]
    assert word_error_rate([fixture.text], [completed["transcript"]]) <= 0.15
    # The cleared second of silence is not in the turn.
    assert completed["usage"]["seconds"] == pytest.approx(fixture.audio.size / 16_000, abs=0.1)


def test_hostile_events_get_error_events_and_the_session_goes_on(service: str) -> None:
    import base64

    hostile = [
        ("{not json", "invalid_json", None),
        ('["a", "list"]', "invalid_json", None),
        ({"type": "response.create"}, "invalid_value", "type"),
        ({"type": "input_audio_buffer.append", "audio": "%%% not base64 %%%"},
         "invalid_audio", "audio"),
        ({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()},
         "invalid_audio", "audio"),
        ({"type": "input_audio_buffer.append"}, "invalid_value", "audio"),
        ({"type": "session.update", "session": {"type": "realtime"}}, "invalid_value",
         "session.type"),
        ({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "transcription": {"model": "gpt-5-ears"}}}}}, "model_not_found",
         "session.audio.input.transcription.model"),
        ({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "transcription": {"language": "tlh"}}}}}, "invalid_value",
         "session.audio.input.transcription.language"),
        ({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "silence_duration_ms": -5}}}}},
         "invalid_value", "session.audio.input.turn_detection.silence_duration_ms"),
    ]
    with LiveClient(service) as live:
        live.until_type("session.created")
        for event, code, param in hostile:
            live.send(event)
            error = live.until_type("error")
            assert error["error"]["code"] == code, (event, error)
            assert error["error"]["param"] == param, (event, error)
            assert error["error"]["type"] == "invalid_request_error"
        live.ws.send(b"\x00\x01 binary")
        assert live.until_type("error")["error"]["code"] == "invalid_event"
        # Still usable, and no refused update changed anything.
        live.send({"type": "session.update", "session": {"type": "transcription"}})
        session = live.until_type("session.updated")["session"]
        assert session["audio"]["input"]["transcription"]["model"] == "whisper-base"
        assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"


def test_beta_dialect_and_telephone_audio(service: str, client: httpx.Client) -> None:
    import audioop  # noqa: F401 - the reference G.711 encoder (Python < 3.13)
    import base64

    import soxr

    fixture = load_fixture("train.wav")
    audio_8k = soxr.resample(np.concatenate([silence(0.5), fixture.audio, silence(1.2)]),
                             16_000, 8_000)
    ulaw = audioop.lin2ulaw((np.clip(audio_8k, -1, 1) * 32767).astype("<i2").tobytes(), 2)
    with LiveClient(service, headers={"OpenAI-Beta": "realtime=v1"}) as live:
        created = live.receive()
        assert created["type"] == "transcription_session.created"
        live.send({"type": "transcription_session.update", "session": {
            "input_audio_format": "g711_ulaw",
            "input_audio_transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 600}}})
        updated = live.until_type("transcription_session.updated")["session"]
        assert updated["input_audio_format"] == "g711_ulaw"
        assert updated["turn_detection"]["silence_duration_ms"] == 600
        for i in range(0, len(ulaw), 800):  # 100 ms of 8-kHz bytes
            live.send({"type": "input_audio_buffer.append",
                       "audio": base64.b64encode(ulaw[i : i + 800]).decode()})
        completed = live.until_type("conversation.item.input_audio_transcription.completed")
    assert live.of_type("conversation.item.created")  # the beta's name for the item
    assert not live.of_type("conversation.item.added")
    # Telephone bandwidth costs the model words; the live path must cost nothing more than
    # the same 8-kHz audio sent as a file.
    heard = np.frombuffer(audioop.ulaw2lin(ulaw, 2), "<i2").astype(np.float32) / 32768
    file_text = _file_text(client, soxr.resample(heard, 8_000, 16_000))
    live_wer = word_error_rate([fixture.text], [completed["transcript"]])
    assert live_wer <= word_error_rate([fixture.text], [file_text]) + 0.02, (
        completed["transcript"], file_text)
    assert "platform" in completed["transcript"].lower()


def test_openai_sdk_realtime_client(service: str) -> None:
    """OpenAI's own client connects, and parses every event the server sends into its
    typed server-event union (unknown shapes would fail to parse)."""
    from openai import OpenAI
    from openai.types.realtime import (
        ConversationItemInputAudioTranscriptionCompletedEvent,
        SessionCreatedEvent,
    )

    from tests.realtime_client import pcm24_appends

    fixture = load_fixture("groceries.wav")
    client = OpenAI(base_url=f"{service}/v1", api_key="unused-here")
    with client.realtime.connect(model="gpt-4o-transcribe",
                                 extra_query={"intent": "transcription"}) as connection:
        first = connection.recv()
        assert isinstance(first, SessionCreatedEvent)
        connection.session.update(session={
            "type": "transcription",
            "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}},
        })
        for chunk in pcm24_appends(np.concatenate([silence(0.5), fixture.audio, silence(1.2)])):
            connection.input_audio_buffer.append(audio=chunk)
        seen = []
        for event in connection:
            seen.append(event.type)
            if isinstance(event, ConversationItemInputAudioTranscriptionCompletedEvent):
                break
    assert "session.updated" in seen and "input_audio_buffer.committed" in seen
    assert "conversation.item.added" in seen and "conversation.item.done" in seen
    assert word_error_rate([fixture.text], [event.transcript]) <= 0.15


# ---- the handshake and the session limits (the tiny GLM-ASR app: API keys, small limits) --


@pytest.fixture(scope="module")
def glm(service_urls: dict) -> str:
    return service_urls["glm"]


def _refused_status(url: str, **kwargs) -> int:
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refused:
        LiveClient(url, **kwargs)
    return refused.value.response.status_code


def test_handshake_checks(service: str, glm: str) -> None:
    from tests.conftest import GLM_API_KEY

    assert _refused_status(service, query="") == 400  # no intent=transcription
    assert _refused_status(service, query="intent=transcription&model=gpt-9") == 404
    assert _refused_status(glm) == 401  # the GLM app requires API keys
    assert _refused_status(glm, headers={"Authorization": "Bearer wrong"}) == 401
    with LiveClient(glm, headers={"Authorization": f"Bearer {GLM_API_KEY}"}) as live:
        assert live.receive()["type"] == "session.created"
    # Browsers cannot set headers on a WebSocket: the key rides in a subprotocol, and the
    # answer must name "realtime" or Chromium drops the socket.
    with LiveClient(glm, subprotocols=["realtime", f"openai-insecure-api-key.{GLM_API_KEY}"]) as live:
        assert live.ws.subprotocol == "realtime"
        assert live.receive()["type"] == "session.created"


def _sessions(url: str) -> int:
    return httpx.get(f"{url}/readyz", timeout=10).json()["realtime"]["sessions"]


def test_session_limits(glm: str) -> None:
    from websockets.exceptions import ConnectionClosed

    from tests.conftest import GLM_API_KEY, GLM_REALTIME_LIMITS

    auth = {"headers": {"Authorization": f"Bearer {GLM_API_KEY}"}}
    wait_until(lambda: _sessions(glm) == 0, 30, what="no open sessions")
    # Per-replica session cap: the next handshake is a 503 with Retry-After.
    first, second = LiveClient(glm, **auth), LiveClient(glm, **auth)
    try:
        assert _refused_status(glm, **auth) == 503
        assert _sessions(glm) == GLM_REALTIME_LIMITS["max_sessions"]
        # Idle: a session that sends nothing is told why and closed normally.
        error = first.until_type("error", timeout_s=30)
        assert error["error"]["code"] == "idle_timeout"
        with pytest.raises(ConnectionClosed) as closed:
            first.receive(timeout_s=30)
        assert closed.value.rcvd.code == 1000
        # A vanished client (no close handshake) frees its session.
        second.ws.socket.close()
    finally:
        first.ws.close()
    wait_until(lambda: _sessions(glm) == 0, 60, what="the vanished client's session freed")
    # The longest session: expiry even while audio keeps coming.
    with LiveClient(glm, **auth) as live:
        started = time.monotonic()
        while time.monotonic() - started < GLM_REALTIME_LIMITS["max_session_s"] + 30:
            try:
                live.append(silence(0.5))
                event = live.receive(timeout_s=1)
            except TimeoutError:
                continue
            except ConnectionClosed as exc:
                assert exc.rcvd.code == 1000
                break
            if event["type"] == "error":
                assert event["error"]["code"] == "session_expired"
        assert live.of_type("error")[-1]["error"]["code"] == "session_expired"


def test_a_turn_longer_than_the_window_is_split_at_pauses(service: str, client: httpx.Client) -> None:
    """44 s of speech with 1-s pauses and a 2-s closing pause: one turn, decoded in parts
    while it grows (sealed at pauses past 25 s) and in chunks at its end, as a file is."""
    from tests.speech import LONG_FIXTURE

    fixture = load_fixture(LONG_FIXTURE)
    audio = np.concatenate([silence(0.5), fixture.audio, silence(2.5)])
    with LiveClient(service) as live:
        live.until_type("session.created")
        live.send({"type": "session.update", "session": {"type": "transcription", "audio": {
            "input": {"transcription": {"language": "en"},
                      "turn_detection": {"type": "server_vad", "silence_duration_ms": 2000}}}}})
        live.until_type("session.updated")
        # Twice real time: partials keep up on a busy 2-core machine too.
        for second in range(0, audio.size, 16_000):
            live.append(audio[second : second + 16_000])
            time.sleep(0.5)
        completed = live.until_type("conversation.item.input_audio_transcription.completed")
    assert len(live.of_type("input_audio_buffer.committed")) == 1
    live_wer = word_error_rate([fixture.text], [completed["transcript"]])
    file_wer = word_error_rate([fixture.text], [_file_text(client, fixture.audio)])
    assert live_wer <= file_wer + 0.02
    deltas = [d for d in live.of_type("conversation.item.input_audio_transcription.delta")]
    speech_stopped_at = live.events.index(live.of_type("input_audio_buffer.speech_stopped")[0])
    early = [d for d in deltas if live.events.index(d) < speech_stopped_at]
    assert len(early) >= 3  # text while the speaker talked, not only at the end
    # What the deltas said is what the turn said, but for seams of sealed parts and words a
    # decode sent on its own reading when a delta was due: and nothing left out at the end
    # (the final decode's remainder once lost its last words to such differences).
    said = "".join(d["delta"] for d in deltas)
    assert normalize(said).split()[-3:] == normalize(completed["transcript"]).split()[-3:], (
        said, completed["transcript"])
    assert word_error_rate([normalize(completed["transcript"])], [normalize(said)]) <= 0.15, (
        said, [d["delta"] for d in deltas], completed["transcript"])
    assert not re.search(r"[.,?!][A-Za-z]", said), said  # parts joined by a space


def test_a_live_turn_is_not_held_up_by_a_batch_of_files(service: str, client: httpx.Client) -> None:
    """Three minutes of file audio (seven 30-s chunks: one batch that takes the model many
    seconds) are in the model when a short turn is spoken: the turn's transcript comes back
    while the file is still being transcribed. Without the live lane the turn's chunk would
    wait for the whole batch, so the file would finish first."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.speech import LONG_FIXTURE

    long_file = np.tile(load_fixture(LONG_FIXTURE).audio, 4)
    turn = load_fixture("fox_dog.wav")
    before = client.get("/readyz").json()["model"]["batches_run"]

    def post_file() -> str:
        with httpx.Client(base_url=service, timeout=600) as own:
            return _file_text(own, long_file)

    with ThreadPoolExecutor(max_workers=1) as pool, LiveClient(service) as live:
        live.until_type("session.created")
        future = pool.submit(post_file)
        wait_until(lambda: client.get("/readyz").json()["model"]["batches_run"] > before,
                   120, interval_s=0.2, what="the file's batch to start")
        live.append(np.concatenate([silence(0.3), turn.audio, silence(1.0)]))
        completed = live.until_type("conversation.item.input_audio_transcription.completed")
        assert not future.done(), "the file finished before the live turn"
        assert word_error_rate([turn.text], [completed["transcript"]]) <= 0.15
        assert "fox" in future.result().lower()
