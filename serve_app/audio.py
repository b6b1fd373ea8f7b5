"""Decode uploaded bytes into 16 kHz mono float32, or say precisely why not.

soundfile (libsndfile) reads WAV, FLAC, OGG and MP3 without spawning anything; PyAV, whose
wheels bundle ffmpeg, reads the containers libsndfile cannot (mp4/m4a, webm, mpeg).
Errors distinguish bytes no decoder understands (415) from a known container that is
broken (400), so clients learn whether to convert or to re-upload.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
import soxr

from serve_app.errors import APIError

SAMPLE_RATE = 16_000  # what every supported model consumes
# Telephone audio is 8 kHz; nothing below 4 kHz carries intelligible speech. A lower rate
# in a header is a forgery that would make a few KB decode into hours of resampled audio.
MIN_SAMPLE_RATE = 4_000
# libsndfile caps a read at this many frames per call, so a lying header cannot make us
# allocate more than this beyond what the file actually holds.
_READ_BLOCK_FRAMES = 1 << 20

# Leading bytes of containers we know. Bytes that start like one of these but fail to
# decode are a broken file (400), anything else is a format we do not understand (415).
_MAGIC_PREFIXES: tuple[bytes, ...] = (
    b"RIFF",  # WAV / RF64 container
    b"RF64",
    b"fLaC",  # FLAC
    b"OggS",  # Ogg (Vorbis, Opus, FLAC)
    b"ID3",  # MP3 with an ID3 tag
    b"\x1a\x45\xdf\xa3",  # Matroska / WebM
    b"FORM",  # AIFF
)


def looks_like_known_container(data: bytes) -> bool:
    if data.startswith(_MAGIC_PREFIXES):
        return True
    # MP4 / M4A. A bare MPEG audio frame sync (11 set bits) is not sniffed: one random
    # upload in two thousand starts with it, and such bytes are not a broken MP3.
    return len(data) >= 12 and data[4:8] == b"ftyp"


def _too_long(seconds: float, max_seconds: float) -> APIError:
    return APIError(
        413,
        "audio_too_long",
        f"Audio is {seconds:.1f} s long; the limit is {max_seconds:.0f} s.",
        param="file",
    )


def _invalid(reason: str) -> APIError:
    return APIError(400, "invalid_audio", f"The audio file is invalid: {reason}.", param="file")


def _to_mono_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """(frames, channels) float at any rate -> (frames,) float32 at 16 kHz."""
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if sample_rate != SAMPLE_RATE and mono.size:
        mono = soxr.resample(mono, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return mono


def _decode_with_soundfile(data: bytes, max_seconds: float) -> np.ndarray | None:
    """Returns None when libsndfile does not recognise the format at all."""
    try:
        handle = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    with handle:
        if handle.channels <= 0:
            raise _invalid("the header declares no channels")
        if handle.samplerate < MIN_SAMPLE_RATE:
            raise _invalid(f"a sample rate of {handle.samplerate} Hz cannot hold speech")
        if handle.frames > 0 and handle.frames / handle.samplerate > max_seconds:
            raise _too_long(handle.frames / handle.samplerate, max_seconds)
        max_frames = int(max_seconds * handle.samplerate) + 1
        blocks: list[np.ndarray] = []
        read = 0
        try:
            while True:
                block = handle.read(_READ_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if not len(block):
                    break
                blocks.append(block)
                read += len(block)
                if read > max_frames:  # header understated the length (or had none)
                    raise _too_long(read / handle.samplerate, max_seconds)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise _invalid(f"it could not be read ({exc})") from exc
        samples = np.concatenate(blocks) if blocks else np.zeros((0, handle.channels), np.float32)
        return _to_mono_16k(samples, handle.samplerate)


def _decode_with_av(data: bytes, max_seconds: float) -> np.ndarray | None:
    """Returns None when ffmpeg finds no audio it can decode."""
    import av  # imported lazily: only the containers libsndfile cannot read need it

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, OSError):
        return None
    with container:
        streams = container.streams.audio
        if not streams:
            return None
        codec = streams[0].codec_context  # None when ffmpeg found no decoder for it
        rate = (codec.sample_rate if codec is not None else 0) or 0
        if 0 < rate < MIN_SAMPLE_RATE:
            raise _invalid(f"a sample rate of {rate} Hz cannot hold speech")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        max_samples = int(max_seconds * SAMPLE_RATE) + 1
        pieces: list[np.ndarray] = []
        total = 0
        try:
            for frame in container.decode(streams[0]):
                for out in resampler.resample(frame):
                    piece = out.to_ndarray().reshape(-1)
                    pieces.append(piece)
                    total += piece.size
                if total > max_samples:
                    raise _too_long(total / SAMPLE_RATE, max_seconds)
            for out in resampler.resample(None):  # flush the resampler's delay line
                pieces.append(out.to_ndarray().reshape(-1))
        except (av.FFmpegError, ValueError) as exc:
            if not pieces:
                return None
            raise _invalid(f"decoding stopped part way ({exc})") from exc
        if not pieces:
            return None
        return np.concatenate(pieces).astype(np.float32, copy=False)


def probe_duration(data: bytes) -> float | None:
    """The audio's length from its header alone (no decoding): a job's size before it runs.
    None when the header does not say, or the bytes are no container this service reads."""
    try:
        info = sf.info(io.BytesIO(data))
        if info.frames > 0 and info.samplerate > 0:
            return info.frames / info.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        pass
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if container.streams.audio and container.duration:
                return container.duration / av.time_base
    except (av.FFmpegError, ValueError, OSError):
        pass
    return None


def decode_audio(data: bytes, max_seconds: float) -> np.ndarray:
    """Bytes of any supported format -> 16 kHz mono float32 samples.

    Raises APIError: 415 unsupported_audio, 400 invalid_audio, 413 audio_too_long.
    """
    if not data:
        raise APIError(400, "missing_file", "The uploaded file is empty.", param="file")
    audio = _decode_with_soundfile(data, max_seconds)
    if audio is None:
        audio = _decode_with_av(data, max_seconds)
    if audio is None:
        if looks_like_known_container(data):
            raise _invalid("the container is corrupt or holds no decodable audio")
        raise APIError(
            415,
            "unsupported_audio",
            "The file is not audio in a supported format "
            "(flac, mp3, mp4, mpeg, mpga, m4a, ogg, wav, webm).",
            param="file",
        )
    if audio.size == 0:
        raise _invalid("it holds no samples")
    if not np.isfinite(audio).all():
        raise _invalid("it contains NaN or infinite samples")
    if audio.size / SAMPLE_RATE > max_seconds:
        raise _too_long(audio.size / SAMPLE_RATE, max_seconds)
    return audio
