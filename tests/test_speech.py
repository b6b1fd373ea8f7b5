"""The speech detector decides on speech, not level: the real Silero model on committed
speech at several levels and on signals that are not speech."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serve_app.audio import SAMPLE_RATE
from serve_app.speech import SpeechDetector, SpeechOptions, TurnDetector
from serve_app.speech.levels import detector_gains
from serve_app.speech.segments import ONSET_ALLOWANCE_WINDOWS, speech_segments
from serve_app.speech.silero import WINDOW
from tests.speech import LONG_FIXTURE, load_fixture, load_speech_fixtures

REPO_ROOT = Path(__file__).resolve().parent.parent
SECONDS = 10


@pytest.fixture(scope="module")
def detector() -> SpeechDetector:
    return SpeechDetector()


def db(level_db: float) -> np.float32:
    return np.float32(10 ** (level_db / 20))


def at_dbfs(signal: np.ndarray, dbfs: float) -> np.ndarray:
    return (signal / np.sqrt(np.mean(signal**2)) * db(dbfs)).astype(np.float32)


def pcm16(audio: np.ndarray) -> np.ndarray:
    """As an upload holds it: quiet speech keeps only a few bits."""
    return (np.round(np.clip(audio, -1, 1) * 32767) / 32767).astype(np.float32)


def pink(rng: np.random.Generator, n: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.arange(spectrum.size), 1)
    return np.fft.irfft(spectrum / np.sqrt(f), n).astype(np.float32)


def non_speech() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    n = SECONDS * SAMPLE_RATE
    t = np.arange(n) / SAMPLE_RATE
    quiet_speech_dbfs = -52.0  # the fixtures' level (-22 dBFS) 30 dB down
    clicks = np.zeros(n, np.float32)
    clicks[:: SAMPLE_RATE // 3] = 0.8
    hum = sum(a * np.sin(2 * np.pi * f * t) for f, a in ((50, 1.0), (100, 0.5), (150, 0.3)))
    return {
        "digital silence": np.zeros(n, np.float32),
        "white -50 dBFS": at_dbfs(rng.standard_normal(n), -50),
        "pink -50 dBFS": at_dbfs(pink(rng, n), -50),
        "white at quiet speech's level": at_dbfs(rng.standard_normal(n), quiet_speech_dbfs),
        "pink at quiet speech's level": at_dbfs(pink(rng, n), quiet_speech_dbfs),
        "white -20 dBFS": at_dbfs(rng.standard_normal(n), -20),
        "mains hum": at_dbfs(hum, -30),
        "clicks": clicks,
        "tone 1 kHz": at_dbfs(np.sin(2 * np.pi * 1000 * t), -20),
        "tone 440 Hz": at_dbfs(np.sin(2 * np.pi * 440 * t), -12),
    }


@pytest.mark.parametrize("name", list(non_speech()))
def test_non_speech_has_no_speech(detector: SpeechDetector, name: str) -> None:
    analysis = detector.analyse(pcm16(non_speech()[name]), SpeechOptions())
    assert analysis.segments == ()


@pytest.mark.parametrize("level_db", [0, -30, -40])
def test_speech_is_found_the_same_at_every_level(detector: SpeechDetector, level_db: int) -> None:
    for fixture in load_speech_fixtures():
        padded = np.concatenate([np.zeros(8000, np.float32), fixture.audio, np.zeros(8000, np.float32)])
        normal = detector.analyse(pcm16(padded), SpeechOptions()).segments
        quiet = detector.analyse(pcm16(padded * db(level_db)), SpeechOptions()).segments
        assert len(normal) == len(quiet) == 1, (fixture.name, normal, quiet)
        assert abs(normal[0][0] - quiet[0][0]) <= 2 * WINDOW, fixture.name
        assert abs(normal[0][1] - quiet[0][1]) <= 2 * WINDOW, fixture.name
        speech = normal[0][1] - normal[0][0]
        assert speech >= 0.8 * fixture.audio.size, fixture.name  # the words are in it


def test_the_detectors_input_does_not_depend_on_the_level() -> None:
    audio = load_fixture("report.wav").audio
    quiet = audio * db(-30)
    np.testing.assert_allclose(audio * detector_gains(audio).repeat(WINDOW)[: audio.size],
                               quiet * detector_gains(quiet).repeat(WINDOW)[: audio.size],
                               rtol=1e-3, atol=1e-6)


def test_a_live_stream_gets_the_same_probabilities_as_the_file(detector: SpeechDetector) -> None:
    audio = load_fixture(LONG_FIXTURE).audio[: 12 * SAMPLE_RATE]
    whole = detector.vad.probabilities(audio)
    stream = detector.vad.stream(level_independent=False)
    parts = [stream.push(audio[i : i + 2400]) for i in range(0, audio.size, 2400)]  # 150 ms
    live = np.concatenate(parts)
    assert live.size == audio.size // WINDOW
    np.testing.assert_allclose(live, whole[: live.size], atol=1e-6)


def test_live_turns_follow_the_pauses_between_sentences(detector: SpeechDetector) -> None:
    audio = load_fixture(LONG_FIXTURE).audio  # nine sentences, 1 s apart
    stream, turns = detector.vad.stream(), TurnDetector(silence_duration_ms=500)
    events = []
    for i in range(0, audio.size, 1600):  # 100 ms at a time, as a microphone sends
        events += turns.update(stream.push(audio[i : i + 1600]))
    events += turns.update(stream.push(np.zeros(SAMPLE_RATE, np.float32)))  # then silence
    kinds = [e.kind for e in events]
    assert kinds == ["speech_started", "speech_stopped"] * 9, kinds
    for started, stopped in zip(events[::2], events[1::2]):
        assert started.audio_ms == max(0, started.speech_ms - 300)  # prefix padding
        assert stopped.audio_ms >= stopped.speech_ms + 500  # the silence that ended it
        assert 1500 < stopped.speech_ms - started.speech_ms < 7000  # one sentence


def _live_turns(detector: SpeechDetector, audio: np.ndarray) -> list:
    stream, turns = detector.vad.stream(), TurnDetector(silence_duration_ms=500)
    events = []
    for i in range(0, audio.size, 1600):
        events += turns.update(stream.push(audio[i : i + 1600]))
    return events + turns.update(stream.push(np.zeros(SAMPLE_RATE, np.float32)))


@pytest.mark.parametrize("level_db", [-40, -20, 6])
def test_live_turns_do_not_depend_on_the_level(detector: SpeechDetector, level_db: int) -> None:
    """The live gain (the file gain's causal twin) makes a quiet or loud speaker start and
    end turns where a normal one does: within 3 windows (~0.1 s)."""
    audio = load_fixture(LONG_FIXTURE).audio[: 20 * SAMPLE_RATE]
    normal = _live_turns(detector, audio)
    other = _live_turns(detector, np.clip(audio * db(level_db), -1, 1).astype(np.float32))
    assert [e.kind for e in other] == [e.kind for e in normal]
    for a, b in zip(normal, other):
        assert abs(a.speech_ms - b.speech_ms) <= 3 * WINDOW * 1000 / SAMPLE_RATE, (a, b)


def test_segment_rules_on_made_up_probabilities() -> None:
    def windows(seconds: float, p: float) -> np.ndarray:
        return np.full(int(round(seconds * SAMPLE_RATE / WINDOW)), p, dtype=np.float32)

    options = SpeechOptions(threshold=0.5, min_silence_ms=300, speech_pad_ms=0, min_speech_ms=100)
    probs = np.concatenate([
        windows(1, 0.0),
        windows(1, 0.9), windows(0.2, 0.0), windows(1, 0.9),  # a 0.2 s dip: one stretch
        windows(1, 0.0),
        windows(1, 0.9), windows(1, 0.4), windows(1, 0.9),  # 0.4 is above 0.35: still speech
        windows(1, 0.0),
        windows(0.064, 0.9),  # a 64 ms blip: shorter than min_speech
        windows(1, 0.0),
    ])
    segments = speech_segments(probs, probs.size * WINDOW, options)
    onset = ONSET_ALLOWANCE_WINDOWS * WINDOW / SAMPLE_RATE  # starts get a little more room
    expected = [(1.0 - onset, 3.2), (4.2 - onset, 7.2)]  # within a window or two of rounding
    assert len(segments) == len(expected), segments
    for (start, end), (want_start, want_end) in zip(segments, expected):
        assert abs(start / SAMPLE_RATE - want_start) < 0.1 and abs(end / SAMPLE_RATE - want_end) < 0.1
    padded = speech_segments(probs, probs.size * WINDOW, SpeechOptions(speech_pad_ms=600))
    assert padded[0][1] == padded[1][0]  # a 1 s gap shared half and half, no overlap


def test_a_detector_that_cannot_load_says_why(tmp_path: Path) -> None:
    broken = tmp_path / "vad.onnx"
    broken.write_bytes(b"not an onnx model")
    detector = SpeechDetector(str(broken))
    assert not detector.ready and detector.error
    assert detector.describe()["ready"] is False


def test_the_ingress_side_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "import serve_app.app, serve_app.ingress, serve_app.transcriber, serve_app.chunking\n"
        "from serve_app.speech import SpeechDetector, SpeechOptions\n"
        "import numpy as np\n"
        "SpeechDetector().analyse(np.zeros(16000, np.float32), SpeechOptions())\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120)


def test_the_bundled_model_is_the_one_named_and_is_packaged() -> None:
    import hashlib
    import tomllib

    from serve_app.speech.silero import BUNDLED_MODEL

    notice = (BUNDLED_MODEL.parent / "NOTICE").read_text()
    assert hashlib.sha256(BUNDLED_MODEL.read_bytes()).hexdigest() in notice
    package_data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package_dir = BUNDLED_MODEL.parent.parent  # serve_app/speech
    packaged = {path for pattern in package_data["serve_app.speech"] for path in package_dir.glob(pattern)}
    # ... so the wheel the Dockerfile installs carries both.
    assert {BUNDLED_MODEL, BUNDLED_MODEL.parent / "NOTICE"} <= packaged
