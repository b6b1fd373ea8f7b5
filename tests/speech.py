"""Speech fixtures and word error rate for tests.

The fixtures are English sentences synthesised once with espeak-ng by
tests/data/make_speech_fixtures.sh and committed with their exact text in manifest.json,
so tests need nothing outside Python and pip.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import jiwer
import numpy as np
import soundfile as sf
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

SPEECH_DIR = Path(__file__).parent / "data" / "speech"
SAMPLE_RATE = 16_000  # the fixtures are written at the rate every backend consumes
LONG_FIXTURE = "long_45s.wav"  # ~44 s: the sentences with 1 s pauses, crosses a 30 s chunk


class SpeechFixture(NamedTuple):
    name: str
    audio: np.ndarray  # mono float32 at SAMPLE_RATE
    text: str


@lru_cache(maxsize=1)
def _manifest() -> dict[str, str]:
    return json.loads((SPEECH_DIR / "manifest.json").read_text(encoding="utf-8"))


def load_fixture(name: str) -> SpeechFixture:
    audio, rate = sf.read(SPEECH_DIR / name, dtype="float32", always_2d=False)
    if rate != SAMPLE_RATE or audio.ndim != 1:
        raise ValueError(
            f"{name}: expected mono {SAMPLE_RATE} Hz, got {rate} Hz, shape {audio.shape}"
        )
    return SpeechFixture(name, audio, _manifest()[name])


def load_speech_fixtures(include_long: bool = False) -> list[SpeechFixture]:
    """The short sentences (2-8 s each) in manifest order; the long file only when asked."""
    return [load_fixture(n) for n in _manifest() if include_long or n != LONG_FIXTURE]


@lru_cache(maxsize=1)
def _normalizer() -> EnglishTextNormalizer:
    # Whisper's normaliser takes a British->American spelling map (normalizer.json in
    # openai's checkpoints). The demo checkpoint ships none and the fixtures hold no such
    # words, so an empty map scores the same.
    return EnglishTextNormalizer({})


def normalize(text: str) -> str:
    return _normalizer()(text)


def word_error_rate(refs: list[str], hyps: list[str]) -> float:
    """Corpus WER after Whisper's English normalisation (case, punctuation, numbers)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    pairs = [(normalize(r), normalize(h)) for r, h in zip(refs, hyps, strict=True)]
    # jiwer rejects empty references; a sentence that normalises to nothing carries no words.
    pairs = [(r, h) for r, h in pairs if r.strip()]
    if not pairs:
        raise ValueError("no reference holds any words")
    return jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])
