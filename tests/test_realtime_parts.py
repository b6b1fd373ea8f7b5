"""The live pipeline's parts without a service: the model replica's priority gate, deltas
that only grow, OpenAI's input formats and the client events' validation."""

from __future__ import annotations

import asyncio
import audioop  # noqa: F401 - only as the reference G.711 codec (removed in Python 3.13)
import base64

import numpy as np
import pytest

from serve_app.priority import Priority, PriorityGate
from serve_app.realtime.audio_input import AudioInput
from serve_app.realtime.events import CLIENT_EVENTS, RealtimeError, validation_error
from serve_app.realtime.partials import StableText, units


# ---- priority gate ---------------------------------------------------------------------


def test_waiting_work_enters_by_class_then_arrival() -> None:
    async def scenario() -> list[str]:
        gate = PriorityGate(capacity_s=30.0)
        order: list[str] = []
        release = asyncio.Event()

        async def work(name: str, priority: Priority, cost: float) -> None:
            async with gate.admitted(priority, cost):
                order.append(name)
                await release.wait()

        running = asyncio.ensure_future(work("file-1", Priority.SYNC, 30.0))  # fills it
        await asyncio.sleep(0)
        waiting = [asyncio.ensure_future(work(n, p, 30.0)) for n, p in (
            ("job", Priority.JOB), ("file-2", Priority.SYNC), ("live-1", Priority.LIVE),
            ("live-2", Priority.LIVE))]
        await asyncio.sleep(0)
        assert order == ["file-1"]
        assert gate.waiting_by_class[Priority.LIVE] == 2
        release.set()
        await asyncio.gather(running, *waiting)
        return order

    assert asyncio.run(scenario()) == ["file-1", "live-1", "live-2", "file-2", "job"]


def test_a_cancelled_waiter_leaves_no_trace() -> None:
    async def scenario() -> float:
        gate = PriorityGate(capacity_s=10.0)
        hold = asyncio.Event()

        async def work(cost: float) -> None:
            async with gate.admitted(Priority.SYNC, cost):
                await hold.wait()

        first = asyncio.ensure_future(work(10.0))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(work(5.0))
        await asyncio.sleep(0)
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)
        hold.set()
        await first
        return gate.inside_s

    assert asyncio.run(scenario()) == 0.0


def test_one_piece_larger_than_the_gate_enters_when_it_is_empty() -> None:
    async def scenario() -> bool:
        gate = PriorityGate(capacity_s=10.0)
        async with gate.admitted(Priority.JOB, 60.0):
            return gate.inside_s == 60.0

    assert asyncio.run(scenario())


# ---- deltas that only grow -------------------------------------------------------------


def test_text_is_sent_once_two_decodes_agree_and_never_taken_back() -> None:
    stable = StableText()
    assert stable.update("The quick") == ""  # nothing to compare with yet
    assert stable.update("The quick brown") == "The quick"  # "brown" may still change
    assert stable.update("The quick brown fax") == " brown"
    assert stable.update("The quack brown fox jumps") == ""  # disagrees with the last decode
    # "fox", then "fax", and only one word after it that both heard: nothing yet.
    assert stable.update("The quack brown fax jumps over") == ""
    # Two words after the disputed one agree: the newer reading of it goes out with them.
    assert stable.update("The quick brown fox jumps over the") == " fox jumps over"
    assert stable.update("The quick brown fox jumps over the lazy") == " the"
    assert stable.finish("The quick brown fox jumps over the dog.") == " dog."
    assert stable.sent_text.strip() == "The quick brown fox jumps over the dog."


def test_a_word_heard_two_ways_does_not_hold_back_the_words_after_it() -> None:
    # Seen live: "nine" and "I and" stalled the deltas for 3.6 s until a third decode
    # agreed with one of them.
    stable = StableText()
    stable.update("The train leaves from platform")
    stable.update("The train leaves from platform nine every morning")
    assert stable.sent_text == "The train leaves from platform"
    assert stable.update("The train leaves from platform I and every morning she") == (
        " I and every morning")
    # A decode that drops a word the last one had is bridged the same way.
    stable = StableText()
    stable.update("she bought three red apples and")
    assert stable.update("she bought three apples and two") == "she bought three apples and"
    # The last sent word heard again as two is not bridged: "I'm am" would be sent.
    stable = StableText()
    stable.sent = units("so I'm")
    stable.update("so I'm every day we")
    assert stable.update("so I am every day we go") == ""
    # More than MAX_DISPUTED words apart is no agreement.
    stable = StableText()
    stable.update("we should finish the report before")
    assert stable.update("we could not find a report before the") == "we"


def test_decodes_that_word_the_sent_part_differently_agree_on_what_follows() -> None:
    # Seen live: a pause's decode of the whole turn hears "I'm every" as "high in every";
    # the next decode, continuing the sent words, must not wait for a third to agree.
    stable = StableText()
    stable.update("leaves from platform I'm every morning")
    assert stable.update("leaves from platform I'm every morning she") == (
        "leaves from platform I'm every morning")
    assert stable.update(
        "leaves from platform high in every morning, she bought three apples.") == " she"
    assert stable.update("leaves from platform I'm every morning, she bought three apples, "
                         "two oranges") == " bought three apples,"


def test_a_decode_that_ends_in_a_pause_may_confirm_its_last_word() -> None:
    stable = StableText()
    stable.update("over the lazy dog.")
    assert stable.update("over the lazy dog.") == "over the lazy"  # "dog" may go on
    assert stable.update("over the lazy dog.", ends_in_pause=True) == " dog."
    # A last word the previous decode did not have is still not confirmed.
    stable.update("over the lazy dog. The", ends_in_pause=True)
    assert stable.sent_text == "over the lazy dog."


def test_an_overdue_decode_sends_its_own_words_but_the_one_being_said() -> None:
    stable = StableText()
    stable.update("The quick brown")
    assert stable.update("The quick brown fax") == "The quick brown"
    # The older decode ended inside "fox" and heard "fax": the two agree on nothing new.
    assert stable.update("The quick brown fox jumps over", overdue=True) == " fox jumps"
    # Agreement, when there is some, is all an overdue decode sends.
    assert stable.update("The quick brown fox jumps over the lazy", overdue=True) == " over"
    # A decode with nothing past the sent text but its last word has nothing to send.
    assert stable.update("The quick brown fox jumps over a", overdue=True) == ""
    assert stable.sent_text == "The quick brown fox jumps over"
    # Heard again with more audio and no word after it: "the" is whole.
    assert stable.update("The quick brown fox jumps over the", overdue=True) == ""
    assert stable.update("The quick brown fox jumps over the.", overdue=True) == " the."
    assert stable.update("The quick brown fox jumps over the.") == ""


def test_a_decode_that_reads_the_sent_words_again_sends_no_repeat() -> None:
    # A decoder started on the sent sentence looped and read it again: on its own reading
    # (overdue) or agreed by a second decode that looped alike, the repeat is not sent,
    # and the words before it are.
    sentence = "The quick brown fox jumps over the lazy dog."
    stable = StableText()
    stable.sent = units(sentence)
    looped = f"{sentence} {sentence} The"
    assert stable.update(looped, overdue=True) == ""
    assert stable.update(looped) == ""
    stable = StableText()
    stable.sent = units("The quick brown fox")
    assert stable.update("The quick brown fox jumps over the lazy dog. Over the lazy dog. "
                         "Over the", overdue=True) == " jumps over the lazy dog."
    # Or the decoder started the turn over after the sent words.
    stable = StableText()
    stable.sent = units("The quick brown")
    assert stable.update("The quick brown fox jumps. The quick brown fox jumps", overdue=True) == (
        " fox jumps.")
    stable = StableText()
    stable.sent = units("The quick brown")
    # Cut before a whole run: the stretch's first words, again, wait for the next decode.
    assert stable.update("The quick brown fox jumps. The quick brown fox", overdue=True) == (
        " fox jumps.")
    # A phrase of fewer than REPEAT_RUN words said again is speech, not a loop.
    stable = StableText()
    assert stable.update("No, no, no, I don't know, I don't know why", overdue=True) == (
        "No, no, no, I don't know, I don't know")
    stable = StableText()
    assert stable.update("No no no no no no no no no really", overdue=True) == (
        "No no no no no no no no no")


def test_the_final_decode_adds_what_follows_sent_text_worded_with_more_units() -> None:
    # A long turn's deltas (some sent on one decode's reading) came to three units more
    # than the final decode's wording of the same speech; counted, the remainder lost its
    # first words. A run of three words at the end of the sent text anchors it.
    stable = StableText()
    stable.sent = units("The quick brown fox jump over the lazy dog. The train is on the city "
                        "leaves from the platform high in every morning. Our flight was")
    final = ("The quick brown fox jumps over the lazy dog. The train to the city leaves from "
             "platform 9 every morning. Our flight was delayed by two hours.")
    assert stable.finish(final) == " delayed by two hours."


def test_a_decode_that_is_not_overdue_waits_for_agreement() -> None:
    stable = StableText()
    stable.update("The quick brown")
    assert stable.update("The quick brown fax") == "The quick brown"
    assert stable.update("The quick brown fox jumps over") == ""
    assert stable.update("The quick brown fox jumps over the") == " fox jumps over"


def test_after_a_sealed_part_the_next_decode_agrees_with_the_last_one_at_once() -> None:
    stable = StableText()
    stable.update("many years ago. We")
    stable.update("many years ago. We should finish")  # sends "...ago. We"
    rest = stable.rest_after(3, follows_text=True)  # "many years ago." set aside
    assert rest.sent_text == " We"
    # The first decode after the cut confirms what the last one before it also heard.
    assert rest.update("We should finish the report") == " should finish"


def test_a_sealed_part_that_leaves_out_a_phrase_still_ends_where_its_words_do() -> None:
    # Seen live: the part's decode left out a phrase, so counting its words put the cut
    # ten words early, and the words after it were forced on audio that did not hold them.
    stable = StableText()
    stable.sent = units("She bought apples. My grandfather planted an old oak tree. We should")
    assert stable.covered_by("She bought apples. My grandfather planted a tree.") == 10
    assert stable.covered_by("Something else entirely") == 3  # no match: counted


def test_a_stretch_after_a_sealed_part_is_joined_to_it_by_a_space() -> None:
    # A decode's text starts without a space; after a long turn's sealed part ("...
    # many years ago.") its first delta must not glue to it ("ago.We").
    stable = StableText(follows_text=True)
    stable.update("We should finish")
    assert stable.update("We should finish the") == " We should finish"
    assert stable.update("We should finish the report") == " the"
    first = StableText()  # the turn's first words: no space before them
    first.update("We should")
    assert first.update("We should finish") == "We should"


def test_punctuation_and_case_do_not_stop_the_deltas() -> None:
    stable = StableText()
    stable.update("every morning she")
    assert stable.update("every morning she bought") == "every morning she"
    assert stable.finish("Every morning, she bought three apples.") == " bought three apples."


def test_a_word_split_in_two_by_one_decode_agrees_with_it_whole() -> None:
    stable = StableText()
    stable.update("My grand father")
    assert stable.update("My grandfather planted") == "My grandfather"
    # Sent whole, the word is found again split: nothing after it is skipped or repeated.
    assert stable.update("My grand father planted an") == " planted"
    assert stable.finish("My grand father planted an old oak tree.") == " an old oak tree."
    # Half a word is no agreement: "grand" alone is not sent.
    stable = StableText()
    stable.update("My grandfather planted")
    assert stable.update("My grand fa there") == "My"


def test_sent_words_worded_differently_are_aligned_not_repeated() -> None:
    stable = StableText()
    stable.update("leaves from platform high every")
    assert stable.update("leaves from platform high every morning") == (
        "leaves from platform high every")
    # The final hears "high" as "I'm": the deltas go on after "every".
    assert stable.finish("leaves from platform I'm every morning, she said.") == (
        " morning, she said.")
    stable = StableText()
    stable.update("I scream for")
    stable.update("I scream for ice")
    assert stable.finish("Ice cream for ice cream.") == " ice cream."
    # A lone common word far ahead is no alignment: nothing unsent is skipped.
    stable = StableText()
    stable.sent = ["So", " the"]
    assert stable.finish("So a man walked to the store.") == " man walked to the store."


def test_text_without_spaces_is_confirmed_character_by_character() -> None:
    assert units("今天天气") == ["今", "天", "天", "气"]
    stable = StableText()
    stable.update("今天天")
    assert stable.update("今天天气很") == "今天天"
    assert stable.update("今天天气很好") == "气很"


# ---- input formats ---------------------------------------------------------------------


def _sine(rate: int, seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * 16_000 / samples.size)


@pytest.mark.parametrize("format_type", ["audio/pcm", "audio/pcmu", "audio/pcma"])
def test_each_format_arrives_as_the_same_16_khz_tone(format_type: str) -> None:
    import audioop

    decoder = AudioInput(format_type)
    tone = _sine(decoder.rate)
    pcm16 = (tone * 32767).astype("<i2").tobytes()
    raw = {"audio/pcm": pcm16, "audio/pcmu": audioop.lin2ulaw(pcm16, 2),
           "audio/pcma": audioop.lin2alaw(pcm16, 2)}[format_type]
    # Split into odd-sized appends: the resampler must leave no seam between them.
    step = decoder.bytes_per_sample * 701
    out = np.concatenate([decoder.decode(base64.b64encode(raw[i : i + step]).decode())
                          for i in range(0, len(raw), step)])
    assert 0 <= 16_000 - out.size < 500  # the resampler holds back its filter's delay
    assert abs(_peak_hz(out[:15_000]) - 440) < 3
    steady = out[2000:14_000]
    assert abs(np.sqrt(np.mean(steady**2)) - 0.5 / np.sqrt(2)) < 0.02


@pytest.mark.parametrize("audio", ["not base64!!", base64.b64encode(b"\x01\x02\x03").decode()])
def test_bad_base64_and_half_samples_are_refused(audio: str) -> None:
    decoder = AudioInput("audio/pcm")
    with pytest.raises(RealtimeError) as refused:
        decoder.decode(audio)
    assert refused.value.code == "invalid_audio" and refused.value.param == "audio"


# ---- client events ---------------------------------------------------------------------


def _error_param(event: dict) -> str | None:
    try:
        CLIENT_EVENTS.validate_python(event)
    except Exception as exc:  # noqa: BLE001 - what the session turns into an error event
        return validation_error(exc, event.get("type")).param
    return "valid"


def test_a_bad_field_is_named_by_its_path_in_the_event() -> None:
    update = {"type": "session.update", "session": {"type": "transcription", "audio": {
        "input": {"turn_detection": {"type": "server_vad", "threshold": 3}}}}}
    assert _error_param(update) == "session.audio.input.turn_detection.threshold"
    rate = {"type": "session.update", "session": {"type": "transcription", "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 16000}}}}}
    assert _error_param(rate) == "session.audio.input.format.rate"
    assert _error_param({"type": "input_audio_buffer.append"}) == "audio"
    beta = {"type": "transcription_session.update",
            "session": {"input_audio_format": "mp3"}}
    assert _error_param(beta) == "session.input_audio_format"


@pytest.mark.parametrize("format_type", ["audio/pcm", "audio/pcmu"])
def test_a_commit_gets_the_audio_the_resampler_holds(format_type: str) -> None:
    decoder = AudioInput(format_type)
    raw = bytes(decoder.bytes_per_sample * decoder.rate // 10)  # 100 ms
    samples = decoder.decode(base64.b64encode(raw).decode())
    assert samples.size + decoder.flush().size == pytest.approx(1600, abs=2)
