"""Speech detection measured: quiet speech is still transcribed, non-speech never reaches
the model, and the detector's cost per hour of audio.

    python -m benchmarks.quiet_speech [--eval-dir DIR]   (make_espeak_eval_set.sh DIR first)

Levels are pinned: speech is played at its own level ("0 dB", about -21 dBFS RMS for the
espeak-ng sentences), 30 dB and 40 dB below it, each clean and with pink room noise
30 dB under the speech (recorded with it, so it falls with the level; NOISE_DRAWS draws),
stored as 16-bit PCM as an upload would be. Every file goes through the service's own pipeline in process:
speech detector -> chunks -> gain -> the demo model (INT8, trimmed windows, as
configs/local.yaml runs it). "no model gain" is the same pipeline without the gain before
the model, to show what that step is worth. Writes benchmarks/results/quiet_speech-*.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from benchmarks.accuracy import word_error_rate
from benchmarks.common import LANGUAGE, SAMPLE_RATE, SPEECH_DIR, Engine, timestamp, write_json

LEVELS_DB = (0, -30, -40)
ROOM_NOISE_SNR_DB = 30.0
# Whisper base flips a word or two per file on small changes to noisy input, which moved
# one noise draw's word error rate by up to 4 points: noisy figures average this many
# draws, each file keeping the same noise at every level, so levels differ by level alone.
NOISE_DRAWS = 3
NOISE_SECONDS = 20


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _pcm16(x: np.ndarray) -> np.ndarray:
    return (np.round(np.clip(x, -1, 1) * 32767) / 32767).astype(np.float32)


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spectrum.size, dtype=np.float64)
    f[0] = 1.0
    y = np.fft.irfft(spectrum / np.sqrt(f), n)
    return (y / np.std(y)).astype(np.float32)


def _at_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    return (x / max(_rms(x), 1e-12) * 10 ** (dbfs / 20)).astype(np.float32)


def load_set(directory: Path) -> list[tuple[str, np.ndarray, str]]:
    import json

    import librosa

    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    items = []
    for name, text in manifest.items():
        audio, _ = librosa.load(directory / name, sr=SAMPLE_RATE, mono=True)
        items.append((name, audio.astype(np.float32), text))
    return items


def recording(audio: np.ndarray, level_db: float, noisy: bool, seed: int) -> np.ndarray:
    """Half a second of room before and after, noise under the speech, the level, 16 bits."""
    rng = np.random.default_rng(seed)
    pad = np.zeros(SAMPLE_RATE // 2, np.float32)
    x = np.concatenate([pad, audio, pad])
    if noisy:
        speech_rms = _rms(audio[np.abs(audio) > 0.01 * np.abs(audio).max()])
        x = x + _pink(rng, x.size) * speech_rms * 10 ** (-ROOM_NOISE_SNR_DB / 20)
    return _pcm16(x * 10 ** (level_db / 20))


def non_speech(rng: np.random.Generator, quiet_speech_dbfs: float) -> dict[str, np.ndarray]:
    n = NOISE_SECONDS * SAMPLE_RATE
    t = np.arange(n) / SAMPLE_RATE
    clicks = np.zeros(n, np.float32)
    clicks[:: SAMPLE_RATE // 2] = 0.9  # two sharp clicks a second
    hum = np.sin(2 * np.pi * 50 * t) + 0.5 * np.sin(2 * np.pi * 100 * t) + 0.3 * np.sin(2 * np.pi * 150 * t)
    return {
        "digital silence": np.zeros(n, np.float32),
        "white noise -50 dBFS": _at_dbfs(rng.standard_normal(n), -50),
        "pink noise -50 dBFS": _at_dbfs(_pink(rng, n), -50),
        f"white noise {quiet_speech_dbfs:.0f} dBFS (quiet speech's RMS)": _at_dbfs(rng.standard_normal(n), quiet_speech_dbfs),
        f"pink noise {quiet_speech_dbfs:.0f} dBFS (quiet speech's RMS)": _at_dbfs(_pink(rng, n), quiet_speech_dbfs),
        "white noise -20 dBFS": _at_dbfs(rng.standard_normal(n), -20),
        "mains hum 50 Hz + harmonics -30 dBFS": _at_dbfs(hum, -30),
        "clicks": clicks,
        "pure tone 1 kHz -20 dBFS": _at_dbfs(np.sin(2 * np.pi * 1000 * t), -20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-dir", type=Path, default=None, help="more speech (manifest.json)")
    args = parser.parse_args()

    from serve_app.backends.base import DecodeOptions
    from serve_app.chunking import speech_chunks
    from serve_app.speech import SpeechDetector, SpeechOptions

    detector = SpeechDetector()
    backend = Engine("int8", "trimmed").load(threads=2, decode_threads=1)
    options, speech = DecodeOptions(language=LANGUAGE), SpeechOptions()
    rng = np.random.default_rng(0)  # the non-speech signals and the hour

    def transcribe(audio: np.ndarray, model_gain: bool = True) -> tuple[str, int]:
        chunks = speech_chunks(audio, detector, speech)
        if not model_gain:
            chunks = [dataclasses.replace(c, gain=1.0) for c in chunks]
        pieces = [c.samples(audio) for c in chunks]
        results = backend.transcribe_batch(pieces, options) if pieces else []
        return " ".join(r.text.strip() for r in results).strip(), len(chunks)

    items = [i for i in load_set(SPEECH_DIR) if not i[0].startswith("long")]
    if args.eval_dir:
        items += load_set(args.eval_dir)
    speech_dbfs = 20 * np.log10(_rms(np.concatenate([a for _, a, _ in items])))
    refs = [text for _, _, text in items]
    results: dict = {"files": len(items), "speech_dbfs": round(speech_dbfs, 1), "wer": {}}
    print(f"{len(items)} files, speech at {speech_dbfs:.1f} dBFS RMS")
    for noisy in (False, True):
        for level in LEVELS_DB:
            variants = [True] if level == 0 else [True, False]
            for model_gain in variants:
                # Clean audio is the same every time; noise gets several draws.
                draws = NOISE_DRAWS if noisy and model_gain else 1
                wers, empty = [], 0
                for draw in range(draws):
                    audios = [recording(a, level, noisy, seed=1000 * draw + i)
                              for i, (_, a, _) in enumerate(items)]
                    hyps = [transcribe(a, model_gain)[0] for a in audios]
                    wers.append(word_error_rate(refs, hyps))
                    empty += sum(1 for h in hyps if not h)
                label = (f"{level:+d} dB, {'room noise' if noisy else 'clean'}"
                         + ("" if model_gain else ", no model gain"))
                results["wer"][label] = {"wer": round(float(np.mean(wers)), 4),
                                         "draws": [round(w, 4) for w in wers], "empty": empty}
                print(f"  {label:40s} WER {np.mean(wers):6.2%}  draws "
                      f"{' '.join(f'{w:.2%}' for w in wers)}  empty {empty}", flush=True)

    results["non_speech"] = {}
    for name, audio in non_speech(rng, speech_dbfs - 30).items():
        text, n_chunks = transcribe(_pcm16(audio))
        results["non_speech"][name] = {"chunks_to_model": n_chunks, "text": text}
        print(f"  {name:50s} chunks to the model: {n_chunks}  text: {text!r}")

    hour = _pcm16(0.001 * rng.standard_normal(3600 * SAMPLE_RATE).astype(np.float32))
    started = time.process_time()
    detector.analyse(hour, speech)
    results["detector_cpu_s_per_hour"] = round(time.process_time() - started, 2)
    print(f"  detector: {results['detector_cpu_s_per_hour']} s of one core per hour of audio")
    path = write_json("quiet_speech", results, timestamp())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
