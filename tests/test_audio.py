"""Decoding: every supported container to 16 kHz mono float32, and precise errors."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import soundfile as sf

from serve_app.audio import SAMPLE_RATE, decode_audio
from serve_app.errors import APIError

LIMIT_S = 600.0


def tone(seconds: float, rate: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * math.pi * freq * t)
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float64)


def encode(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000, 96000])
def test_any_rate_becomes_16k(rate: int) -> None:
    audio = decode_audio(encode(tone(1.0, rate), rate, "WAV"), LIMIT_S)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size - SAMPLE_RATE) <= 2
    assert 0.3 < np.abs(audio).max() <= 0.55  # amplitude survives resampling


@pytest.mark.parametrize("channels", [2, 6])
def test_channels_are_mixed_to_mono(channels: int) -> None:
    audio = decode_audio(encode(tone(0.5, 16000, channels), 16000, "WAV"), LIMIT_S)
    assert audio.ndim == 1 and audio.size == 8000


@pytest.mark.parametrize(
    "fmt,subtype",
    [
        ("WAV", "PCM_U8"),
        ("WAV", "PCM_16"),
        ("WAV", "PCM_24"),
        ("WAV", "PCM_32"),
        ("WAV", "FLOAT"),
        ("WAV", "DOUBLE"),
        ("FLAC", None),
        ("OGG", "VORBIS"),
        ("MP3", "MPEG_LAYER_III"),
    ],
)
def test_formats_decode(fmt: str, subtype: str | None) -> None:
    audio = decode_audio(encode(tone(1.0, 16000), 16000, fmt, subtype), LIMIT_S)
    assert 0.9 * SAMPLE_RATE <= audio.size <= 1.2 * SAMPLE_RATE
    assert np.isfinite(audio).all()


@pytest.mark.parametrize(
    "container_format,codec", [("webm", "libopus"), ("mp4", "aac"), ("ipod", "aac")]
)
def test_containers_libsndfile_cannot_read_go_through_pyav(container_format: str, codec: str) -> None:
    """WebM/Opus (browser recordings), MP4 and M4A (AAC): decoded by PyAV's bundled ffmpeg."""
    av = pytest.importorskip("av")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=48000, layout="mono")
        samples = tone(1.0, 48000)[:, 0].astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.rate = 48000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    audio = decode_audio(buffer.getvalue(), LIMIT_S)
    assert 0.8 * SAMPLE_RATE <= audio.size <= 1.2 * SAMPLE_RATE


def expect_error(data: bytes, status: int, code: str, limit: float = LIMIT_S) -> None:
    with pytest.raises(APIError) as info:
        decode_audio(data, limit)
    assert (info.value.status, info.value.code) == (status, code)


def test_random_bytes_are_unsupported() -> None:
    expect_error(np.random.default_rng(1).bytes(4096), 415, "unsupported_audio")


def test_text_is_unsupported() -> None:
    expect_error(b"hello, this is not audio at all\n" * 20, 415, "unsupported_audio")


def test_truncated_wav_header_is_invalid() -> None:
    expect_error(encode(tone(0.1, 16000), 16000, "WAV")[:20], 400, "invalid_audio")


def test_zero_samples_is_invalid() -> None:
    expect_error(encode(np.zeros((0, 1)), 16000, "WAV"), 400, "invalid_audio")


def test_nan_and_inf_are_invalid() -> None:
    for bad in (np.nan, np.inf):
        samples = tone(0.1, 16000)
        samples[10] = bad
        expect_error(encode(samples, 16000, "WAV", "FLOAT"), 400, "invalid_audio")


def test_header_longer_than_data_decodes_what_is_there() -> None:
    data = encode(tone(1.0, 16000), 16000, "WAV", "PCM_16")
    audio = decode_audio(data[: len(data) // 2], LIMIT_S)
    assert 0 < audio.size < SAMPLE_RATE


def test_audio_longer_than_limit() -> None:
    expect_error(encode(tone(3.0, 8000), 8000, "WAV"), 413, "audio_too_long", limit=2.0)


def test_one_sample_decodes() -> None:
    assert decode_audio(encode(np.full((1, 1), 0.1), 16000, "WAV"), LIMIT_S).size >= 1


def test_empty_bytes() -> None:
    expect_error(b"", 400, "missing_file")


def test_forged_low_sample_rate_is_refused_before_decoding() -> None:
    # 14 KB claiming 1 Hz would otherwise resample into hours of audio.
    expect_error(encode(tone(0.01, 16000)[:7000], 1, "WAV"), 400, "invalid_audio")
