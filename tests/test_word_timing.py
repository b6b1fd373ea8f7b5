"""Word timing's parts that need no model: time warping, words from tokens, the response."""

from __future__ import annotations

import numpy as np
import torch

from serve_app.backends.word_timing import dtw, split_words, token_frames, words_from_frames
from serve_app.formats import to_verbose_json
from serve_app.transcript import Segment, Transcription, Word


def test_time_warping_follows_the_cheapest_monotonic_path() -> None:
    # Three tokens over eight frames, each cheapest on its own stretch of frames.
    cost = np.ones((3, 8))
    cost[0, 0:3] = cost[1, 3:5] = cost[2, 5:8] = 0.0
    rows, columns = dtw(cost)
    assert list(rows) == sorted(rows) and list(columns) == sorted(columns)
    first_frame = {r: c for r, c in reversed(list(zip(rows, columns)))}
    assert first_frame == {0: 0, 1: 3, 2: 5}


def test_token_frames_reads_where_each_token_starts() -> None:
    # Attention of prefix (2) + 3 text tokens + end token over 100 frames: the position
    # before each text token looks at that token's audio.
    heads, tokens, frames = 2, 6, 100
    scores = torch.full((heads, tokens, frames), -10.0)
    for position, frame in [(1, 10), (2, 40), (3, 70), (4, 90)]:
        scores[:, position, frame - 3 : frame + 3] = 10.0
    result = token_frames(scores, frames, n_prefix=2)
    assert len(result) == 4  # three text tokens and the end of the last
    # Each token begins after the previous one's audio and by its own.
    peaks = [10, 40, 70, 90]
    assert result[0] <= peaks[0]
    assert all(peaks[k - 1] < result[k] <= peaks[k] for k in range(1, 4)), result


def test_words_group_tokens_at_spaces_and_keep_punctuation_on_their_word() -> None:
    tokens = [" The", " qu", "ick", " fox", ",", ' "', "jumps", '"', "."]
    assert split_words(tokens, "en") == [[0], [1, 2], [3, 4], [5, 6, 7, 8]]
    assert split_words(["你", "好", "世", "界"], "zh") == [[0], [1], [2], [3]]


def test_words_take_times_from_their_first_and_following_tokens() -> None:
    vocabulary = {1: " Hello", 2: " wor", 3: "ld", 4: "."}
    frames = np.array([10, 40, 55, 80, 90])  # where tokens 0..3 start, then the end
    words = words_from_frames([1, 2, 3, 4], frames, "en", duration_s=1.7,
                              decode=lambda ids: "".join(vocabulary[i] for i in ids))
    assert [(w.word, w.start, w.end) for w in words] == [
        (" Hello", 0.2, 0.8), (" world.", 0.8, 1.7)]  # clipped to the audio's 1.7 s


def test_verbose_json_carries_words_and_leaves_segments_out_when_only_words_were_asked() -> None:
    transcription = Transcription(
        text="Hello world.", language="en", duration=2.0,
        segments=(Segment(0, 0.0, 2.0, "Hello world."),),
        words=(Word("Hello", 0.2, 0.6), Word("world.", 0.7, 1.2)),
    )
    both = to_verbose_json(transcription)
    assert both["words"] == [{"word": "Hello", "start": 0.2, "end": 0.6},
                             {"word": "world.", "start": 0.7, "end": 1.2}]
    assert both["segments"][0]["text"] == "Hello world."
    assert "segments" not in to_verbose_json(transcription, segments=False)
    plain = Transcription(text="x", language="en", duration=1.0, segments=())
    assert "words" not in to_verbose_json(plain)
    assert transcription.approx_bytes() > plain.approx_bytes()


def test_word_edges_move_out_of_pauses_but_not_out_of_a_stop_closure() -> None:
    from serve_app.speech.word_edges import sound_within

    # The span time warping gave a word: the previous word's tail (loud), a 200-ms pause,
    # the word with a 60-ms closure in it, then 150 ms of pause.
    span = np.array([-20, -22] + [-90] * 20 + [-15] * 10 + [-80] * 6 + [-12] * 14 + [-90] * 15,
                    dtype=float)
    assert sound_within(span) == (22, 52)
    # Noise in the pause within the word's range: nothing to tell apart, nothing moves.
    noisy = np.array([-40] * 20 + [-15] * 10 + [-40] * 10, dtype=float)
    assert sound_within(noisy) == (0, 40)


def test_snapping_is_relative_to_each_word_so_quiet_audio_snaps_alike() -> None:
    from serve_app.speech.word_edges import snap_to_sound

    rng = np.random.default_rng(0)
    audio = np.zeros(16_000 * 2, np.float32)
    audio[8_000:16_000] = 0.3 * rng.standard_normal(8_000)  # the word: 0.5 to 1.0 s
    words = (Word("word", 0.2, 1.4),)
    for gain in (1.0, 0.001):  # 0 dB and -60 dB
        (snapped,) = snap_to_sound(words, audio * gain)
        assert (snapped.start, snapped.end) == (0.5, 1.0), gain
