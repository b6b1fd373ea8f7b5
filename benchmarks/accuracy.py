"""Word error rate of each engine the benchmark times, on the same chunks of the same speech.

Speed only counts at equal accuracy: INT8 may cost at most 2 points of WER over FP32
(issue 7), and faster-whisper is only a fair yardstick if it hears the same thing. Every
file is cut by the service's own chunker, so a long file is the same chunks for every engine.

The committed espeak-ng fixtures are always scored. `--eval-dir DIR` adds recorded speech
kept outside the repository: WAV/FLAC files plus a `manifest.json` of {file name: text},
the layout of tests/data/speech.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.common import LANGUAGE, SAMPLE_RATE, SPEECH_DIR, Engine


@dataclass(frozen=True)
class Utterance:
    name: str
    chunks: list[np.ndarray]  # the service's chunks of the file, 16 kHz mono float32
    text: str


def load_eval_set(directory: Path) -> list[Utterance]:
    import librosa

    from serve_app.chunking import speech_chunks
    from serve_app.speech import SpeechDetector

    detector = SpeechDetector()
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    items = []
    for name, text in manifest.items():
        audio, _ = librosa.load(directory / name, sr=SAMPLE_RATE, mono=True)
        audio = audio.astype(np.float32)
        chunks = [c.samples(audio) for c in speech_chunks(audio, detector)]
        items.append(Utterance(name, chunks, text))
    return items


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER after Whisper's English normalisation (case, punctuation, numbers)."""
    import jiwer
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    normalize = EnglishTextNormalizer({})
    pairs = [(normalize(r), normalize(h)) for r, h in zip(references, hypotheses, strict=True)]
    pairs = [(r, h) for r, h in pairs if r.strip()]
    return jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])


Transcriber = Callable[[list[np.ndarray]], list[str]]


def transformers_transcriber(engine: Engine, threads: int) -> Transcriber:
    from serve_app.backends.base import DecodeOptions

    backend = engine.load(threads)
    options = DecodeOptions(language=LANGUAGE)

    def transcribe(chunks: list[np.ndarray]) -> list[str]:
        results = backend.transcribe_batch(chunks, options)
        if any(r.error for r in results):
            raise RuntimeError(f"transcription failed: {[r.error for r in results]}")
        return [r.text for r in results]

    return transcribe


def faster_whisper_transcriber(compute_type: str, threads: int) -> Transcriber:
    from faster_whisper import WhisperModel

    from benchmarks.yardstick import DECODE, ct2_model_dir

    model = WhisperModel(
        str(ct2_model_dir()), device="cpu", compute_type=compute_type, cpu_threads=threads
    )

    def transcribe(chunks: list[np.ndarray]) -> list[str]:
        texts = []
        for chunk in chunks:
            segments, _ = model.transcribe(chunk, **DECODE)
            texts.append("".join(s.text for s in segments).strip())
        return texts

    return transcribe


def score(label: str, transcribe: Transcriber, sets: dict[str, list[Utterance]]) -> dict:
    """WER per evaluation set for one engine, with its transcripts."""
    out: dict = {"engine": label}
    for set_name, utterances in sets.items():
        hypotheses = [" ".join(transcribe(u.chunks)) for u in utterances]
        out[set_name] = {
            "wer": word_error_rate([u.text for u in utterances], hypotheses),
            "words": sum(len(u.text.split()) for u in utterances),
            "files": len(utterances),
            "transcripts": dict(zip((u.name for u in utterances), hypotheses, strict=True)),
        }
        print(f"  {label} on {set_name}: WER {out[set_name]['wer']:.2%} "
              f"({out[set_name]['words']} words)", flush=True)
    return out


def eval_sets(extra: Path | None) -> dict[str, list[Utterance]]:
    sets = {"fixtures": load_eval_set(SPEECH_DIR)}
    if extra is not None:
        sets[extra.name] = load_eval_set(extra)
    return sets
