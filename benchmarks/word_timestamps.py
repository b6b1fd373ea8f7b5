"""Word timestamps against known word times, and what they cost.

    python -m benchmarks.word_timestamps                  # a private configs/local.yaml
    python -m benchmarks.word_timestamps --url http://127.0.0.1:8000
    python -m benchmarks.word_timestamps --faster-whisper # faster-whisper beside it

The speech is espeak-ng's (benchmarks.espeak_words), whose synthesis events say where each
word's sound starts and ends: the sentences of `make_espeak_eval_set.sh` in several voices,
spoken continuously (word gap 0) and with 200-ms gaps between words. Each file goes to the
service as OpenAI's clients send it (verbose_json, timestamp_granularities[]=word); the
words it returns are matched to the known words in order (difflib, on lowercased letters),
and start and end errors are reported apart: median and 95th percentile of the absolute
error, and the median signed error (negative: early). The cost is the time per file with
words against the same file without, in one run, interleaved, cache off.
"""

from __future__ import annotations

import argparse
import difflib
import re
import time
from contextlib import nullcontext

import httpx
import numpy as np

from benchmarks.common import (
    NO_STORE,
    REPO_ROOT,
    TRANSCRIBE_PATH,
    LocalService,
    timestamp,
    wav_bytes,
    write_json,
)
from benchmarks.espeak_words import synthesize

SENTENCES_SCRIPT = REPO_ROOT / "benchmarks" / "make_espeak_eval_set.sh"
VOICES = ("en-us", "en-gb", "en-us+f3")
GAPS_10MS = (0, 20)  # continuous speech, and 200 ms between words
LEAD_S = 0.5  # silence before the first word: a start that drifts early has room to


def sentences(limit: int) -> list[str]:
    """The eval set's sentences (the shell script holds them one per line, quoted)."""
    text = SENTENCES_SCRIPT.read_text(encoding="utf-8")
    found = re.findall(r'^\s*"([^"]+[.?!])"\s*$', text, re.MULTILINE)
    return found[:limit]


def examples(limit: int) -> list[dict]:
    cases = []
    for index, sentence in enumerate(sentences(limit)):
        voice = VOICES[index % len(VOICES)]
        for gap in GAPS_10MS:
            audio, words = synthesize(sentence, voice=voice, rate_wpm=160, word_gap_10ms=gap)
            lead = np.zeros(int(LEAD_S * 16_000), np.float32)
            audio = np.concatenate([lead, audio, lead])
            truth = [{**w, "start": w["start"] + LEAD_S, "end": w["end"] + LEAD_S}
                     for w in words]
            cases.append({"text": sentence, "voice": voice, "gap_10ms": gap,
                          "audio": audio, "words": truth})
    return cases


def _key(word: str) -> str:
    return re.sub(r"[^a-z0-9']", "", word.lower())


def matched_errors(truth: list[dict], found: list[dict]) -> list[tuple[float, float]]:
    """(start error, end error) of each found word matched in order to a known word."""
    a, b = [_key(w["word"]) for w in truth], [_key(w["word"]) for w in found]
    errors = []
    for block in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            known, got = truth[block.a + k], found[block.b + k]
            errors.append((got["start"] - known["start"], got["end"] - known["end"]))
    return errors


def summary(errors: list[tuple[float, float]], words: int) -> dict:
    starts = np.array([e[0] for e in errors])
    ends = np.array([e[1] for e in errors])

    def stats(values: np.ndarray) -> dict:
        if not values.size:
            return {}
        return {"median_abs_s": round(float(np.median(np.abs(values))), 3),
                "p95_abs_s": round(float(np.percentile(np.abs(values), 95)), 3),
                "median_signed_s": round(float(np.median(values)), 3)}

    return {"words_known": words, "words_matched": len(errors),
            "start": stats(starts), "end": stats(ends)}


def transcribe(client: httpx.Client, url: str, audio: np.ndarray, words: bool) -> tuple[dict, float]:
    data = {"response_format": "verbose_json", "language": "en"}
    if words:
        data["timestamp_granularities[]"] = "word"
    started = time.monotonic()
    response = client.post(f"{url}{TRANSCRIBE_PATH}", headers=NO_STORE, data=data,
                           files={"file": ("speech.wav", wav_bytes(audio))})
    elapsed = time.monotonic() - started
    response.raise_for_status()
    return response.json(), elapsed


def run_service(url: str, cases: list[dict]) -> dict:
    errors: dict[int, list] = {gap: [] for gap in GAPS_10MS}
    known: dict[int, int] = {gap: 0 for gap in GAPS_10MS}
    with_words, without = [], []
    with httpx.Client(timeout=600) as client:
        transcribe(client, url, cases[0]["audio"], True)  # warm both paths
        transcribe(client, url, cases[0]["audio"], False)
        for case in cases:
            body, timed = transcribe(client, url, case["audio"], True)
            _, plain = transcribe(client, url, case["audio"], False)
            with_words.append(timed)
            without.append(plain)
            errors[case["gap_10ms"]] += matched_errors(case["words"], body.get("words", []))
            known[case["gap_10ms"]] += len(case["words"])
    return {
        "accuracy": {f"gap_{gap * 10}ms": summary(errors[gap], known[gap]) for gap in GAPS_10MS},
        "all": summary([e for gap in GAPS_10MS for e in errors[gap]], sum(known.values())),
        "cost": {"s_per_file_with_words": round(float(np.mean(with_words)), 4),
                 "s_per_file_without": round(float(np.mean(without)), 4),
                 "ratio": round(float(np.mean(with_words) / np.mean(without)), 3)},
    }


def run_faster_whisper(cases: list[dict]) -> dict:
    """faster-whisper's word timestamps on the same weights (benchmarks.yardstick)."""
    from faster_whisper import WhisperModel

    from benchmarks.yardstick import ct2_model_dir

    model = WhisperModel(str(ct2_model_dir()), device="cpu", compute_type="int8", cpu_threads=2)
    errors: list = []
    known = 0
    for case in cases:
        segments, _ = model.transcribe(case["audio"], language="en", beam_size=1,
                                       word_timestamps=True, vad_filter=False)
        found = [{"word": w.word.strip(), "start": w.start, "end": w.end}
                 for s in segments for w in (s.words or [])]
        errors += matched_errors(case["words"], found)
        known += len(case["words"])
    return summary(errors, known)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running service (else a private one)")
    parser.add_argument("--sentences", type=int, default=20)
    parser.add_argument("--faster-whisper", action="store_true")
    args = parser.parse_args()
    cases = examples(args.sentences)
    print(f"{len(cases)} files, {sum(len(c['words']) for c in cases)} words", flush=True)
    service = nullcontext() if args.url else LocalService(config_path=REPO_ROOT / "configs" / "local.yaml")
    with service as local:
        result = run_service(args.url or local.url, cases)
    if args.faster_whisper:
        result["faster_whisper"] = run_faster_whisper(cases)
    result["files"] = len(cases)
    result["voices"], result["gaps_ms"] = list(VOICES), [g * 10 for g in GAPS_10MS]
    print(result, flush=True)
    print(f"wrote {write_json('word_timestamps', result, timestamp())}")


if __name__ == "__main__":
    main()
