"""Property-based fuzzing of the edge code, in-process (no Ray): decoding, speech segments,
chunking, params.

CI runs a small, derandomized number of examples (the same inputs every run, well under a
minute). For a longer, randomized hunt set FUZZ_EXAMPLES, e.g.
    FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz.py
"""

from __future__ import annotations

import io
import os
from functools import lru_cache

import numpy as np
import soundfile as sf
import soxr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from serve_app.audio import SAMPLE_RATE, decode_audio
from serve_app.chunking import MAX_CHUNK_SECONDS, split_into_chunks
from serve_app.errors import APIError
from serve_app.params import ISO_639_1, TranscriptionParams, parse_params
from serve_app.speech import SpeechDetector, SpeechOptions
from serve_app.speech.segments import speech_segments
from serve_app.speech.silero import WINDOW
from tests.speech import load_fixture

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0"))


def fuzz(ci_examples: int) -> settings:
    """Few derandomized examples in CI; FUZZ_EXAMPLES random ones when asked for."""
    return settings(
        max_examples=FUZZ_EXAMPLES or ci_examples,
        derandomize=not FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---- decode_audio ---------------------------------------------------------------------

DECODE_LIMITS_S = (0.5, 5.0, 600.0)  # a limit shorter than the seeds exercises the 413 paths
ALLOWED_STATUSES = {400, 413, 415}
SLACK_SAMPLES = 16  # rounding in resamplers; the documented bound is max_seconds * 16 kHz


def _encode(samples: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def _encode_with_av(samples: np.ndarray, rate: int, container: str, codec: str) -> bytes:
    """Containers libsndfile cannot write (m4a, webm), which decode through PyAV."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        for start in range(0, samples.size, 960):
            frame = av.AudioFrame.from_ndarray(
                samples[None, start : start + 960].astype(np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


@lru_cache(maxsize=1)
def seed_files() -> tuple[bytes, ...]:
    """Small valid files in every container we read: 0.4 s of real speech."""
    clip = load_fixture("fox_dog.wav").audio[8000:14400]
    clip_8k = soxr.resample(clip, SAMPLE_RATE, 8000)
    stereo = np.stack([clip_8k, -0.5 * clip_8k], axis=1)
    return (
        _encode(clip, SAMPLE_RATE, "WAV", "PCM_16"),
        _encode(clip, SAMPLE_RATE, "WAV", "FLOAT"),
        _encode(stereo, 8000, "WAV", "PCM_U8"),
        _encode(clip, SAMPLE_RATE, "FLAC", "PCM_16"),
        _encode(clip, SAMPLE_RATE, "OGG", "VORBIS"),
        _encode(clip, SAMPLE_RATE, "MP3", "MPEG_LAYER_III"),
        _encode_with_av(clip, SAMPLE_RATE, "ipod", "aac"),  # .m4a
        _encode_with_av(soxr.resample(clip, SAMPLE_RATE, 48000), 48000, "webm", "libopus"),
    )


# Values that break header arithmetic: zero, one, sign bits, all ones.
EXTREME_U32 = (0, 1, 2, 3, 8000, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A valid seed file with a few flips, overwrites, insertions, deletions, truncations.

    Positions lean towards the first 64 bytes, where the headers that decoders trust live.
    """
    data = bytearray(draw(st.sampled_from(seed_files())))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        pos = draw(st.one_of(st.integers(0, min(63, len(data) - 1)), st.integers(0, len(data) - 1)))
        op = draw(st.sampled_from(["flip", "u32", "u16", "insert", "delete", "truncate"]))
        if op == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif op in ("u32", "u16"):
            width = 4 if op == "u32" else 2
            value = draw(st.one_of(st.sampled_from(EXTREME_U32), st.integers(0, 2**32 - 1)))
            data[pos : pos + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 256))]
        else:
            del data[pos:]
    return bytes(data)


MAGICS = (b"RIFF", b"RF64", b"fLaC", b"OggS", b"ID3", b"\x1a\x45\xdf\xa3", b"FORM", b"\xff\xfb")
arbitrary_bytes = st.one_of(
    st.binary(max_size=4096),
    st.builds(lambda magic, rest: magic + rest, st.sampled_from(MAGICS), st.binary(max_size=2048)),
)


def check_decode(data: bytes, max_seconds: float) -> None:
    try:
        audio = decode_audio(data, max_seconds)
    except APIError as exc:
        assert exc.status in ALLOWED_STATUSES, (exc.status, exc.code, exc.message)
        return
    assert isinstance(audio, np.ndarray)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0 < audio.size <= max_seconds * SAMPLE_RATE + SLACK_SAMPLES
    assert np.isfinite(audio).all()


@fuzz(ci_examples=300)
@given(arbitrary_bytes, st.sampled_from(DECODE_LIMITS_S))
def test_decode_arbitrary_bytes(data: bytes, max_seconds: float) -> None:
    check_decode(data, max_seconds)


@fuzz(ci_examples=600)
@given(mutated_files(), st.sampled_from(DECODE_LIMITS_S))
def test_decode_mutated_real_files(data: bytes, max_seconds: float) -> None:
    check_decode(data, max_seconds)


def test_seed_files_decode_to_speech() -> None:
    """The fuzzer mutates files that are valid to begin with."""
    for data in seed_files():
        audio = decode_audio(data, 600.0)
        assert abs(audio.size - 6400) <= 2000 and np.abs(audio).max() > 0.05


# ---- speech segments and chunks -------------------------------------------------------

MAX_INPUT_SAMPLES = 20 * SAMPLE_RATE

unit_floats = st.floats(-1.0, 1.0, width=32, allow_nan=False)

# Arbitrary arrays; `fill` keeps a 20 s array cheap: hypothesis draws some elements and
# fills the rest with one drawn value.
arbitrary_audio = arrays(
    np.float32, st.integers(0, MAX_INPUT_SAMPLES), elements=unit_floats, fill=unit_floats
)
# Whatever the detector might say of each window, including long runs of one value.
arbitrary_probabilities = arrays(
    np.float32, st.integers(0, 3000), elements=st.floats(0.0, 1.0, width=32),
    fill=st.floats(0.0, 1.0, width=32),
)
arbitrary_options = st.builds(
    SpeechOptions,
    threshold=st.floats(0.05, 0.95),
    min_silence_ms=st.integers(0, 10_000),
    speech_pad_ms=st.integers(0, 2_000),
    min_speech_ms=st.integers(0, 10_000),
)
chunk_limits = st.one_of(st.just(MAX_CHUNK_SECONDS), st.floats(1.0, MAX_CHUNK_SECONDS))


@lru_cache(maxsize=1)
def detector() -> SpeechDetector:
    return SpeechDetector()


def check_chunk_shape(chunks: list, audio_size: int, max_seconds: float) -> None:
    previous_end = 0
    for chunk in chunks:
        assert 0 <= previous_end <= chunk.start < chunk.end <= audio_size, chunks
        assert chunk.end - chunk.start <= max_seconds * SAMPLE_RATE, chunk
        assert chunk.gain >= 1.0, chunk  # quiet speech is lifted, nothing is attenuated
        previous_end = chunk.end


def covered(chunks: list, audio_size: int) -> np.ndarray:
    mask = np.zeros(audio_size, dtype=bool)
    for chunk in chunks:
        mask[chunk.start : chunk.end] = True
    return mask


@fuzz(ci_examples=200)
@given(arbitrary_probabilities, arbitrary_options, st.integers(0, WINDOW - 1))
def test_segments_of_arbitrary_probabilities(
    probabilities: np.ndarray, options: SpeechOptions, short_by: int
) -> None:
    n_samples = max(0, probabilities.size * WINDOW - short_by)
    segments = speech_segments(probabilities, n_samples, options)
    previous_end = 0
    for start, end in segments:
        assert 0 <= previous_end <= start < end <= n_samples, segments
        previous_end = end
    if not (probabilities >= options.threshold).any():
        assert segments == []  # speech never started


@fuzz(ci_examples=100)
@given(arbitrary_audio, chunk_limits, arbitrary_options)
def test_chunks_of_arbitrary_audio(
    audio: np.ndarray, max_seconds: float, options: SpeechOptions
) -> None:
    analysis = detector().analyse(audio, options)
    assert analysis.probabilities.size == -(-audio.size // WINDOW)
    chunks = split_into_chunks(audio, analysis, max_seconds)
    check_chunk_shape(chunks, audio.size, max_seconds)
    mask = covered(chunks, audio.size)
    for start, end in analysis.segments:  # whatever the detector calls speech is sent
        assert mask[start:end].all(), f"speech {start}..{end} not in any chunk: {chunks}"


@fuzz(ci_examples=100)
@given(arbitrary_audio, chunk_limits)
def test_unguarded_chunks_cover_all_the_audio(audio: np.ndarray, max_seconds: float) -> None:
    chunks = split_into_chunks(audio, None, max_seconds)
    check_chunk_shape(chunks, audio.size, max_seconds)
    assert all(c.gain == 1.0 for c in chunks)  # as it is: no level change without a guard
    missed = np.flatnonzero(~covered(chunks, audio.size))
    # Only a tail shorter than one detector window may be left out.
    assert missed.size == 0 or (missed[0] > audio.size - WINDOW), (missed[:3], chunks)


# ---- parse_params ---------------------------------------------------------------------

FIELD_NAMES = (*TranscriptionParams.model_fields, "timestamp_granularities[]", "file")
# Valid values, edge cases of each type, and near misses.
INTERESTING_VALUES = (
    "json", "text", "srt", "vtt", "verbose_json", "en", "EN", " de ", "", "0", "0.5", "1",
    "1.0000001", "-0", "nan", "inf", "1e-3", "true", "false", "segment", "word", "whisper-1",
)
names = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=30))
values = st.one_of(
    st.sampled_from(INTERESTING_VALUES), st.text(max_size=40), st.text(min_size=990, max_size=1100)
)
pairs = st.lists(st.tuples(names, values), max_size=10)
non_text_pairs = st.lists(
    st.tuples(
        st.sampled_from(FIELD_NAMES), st.one_of(values, st.none(), st.integers(), st.builds(object))
    ),
    max_size=6,
)


def check_params(items: list) -> None:
    try:
        params = parse_params(items)
    except APIError as exc:
        assert (exc.status, exc.code) == (400, "invalid_parameter"), exc
        assert isinstance(exc.param, str) and exc.param, exc
        return
    assert isinstance(params, TranscriptionParams)
    assert 0.0 <= params.temperature <= 1.0
    assert params.language is None or params.language in ISO_639_1
    assert params.response_format in ("json", "text", "srt", "vtt", "verbose_json")


@fuzz(ci_examples=300)
@given(pairs)
def test_params_from_arbitrary_text_pairs(items: list[tuple[str, str]]) -> None:
    check_params(items)


@fuzz(ci_examples=100)
@given(non_text_pairs)
def test_params_with_non_text_values(items: list) -> None:
    check_params(items)
