"""Word timestamps through the whole service on the demo model, as OpenAI's SDK asks for
them, timed against speech whose word times are known (espeak-ng's synthesis events:
tests/data/words, made by benchmarks.espeak_words)."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from openai import OpenAI

from tests.conftest import GLM_API_KEY
from tests.speech import SPEECH_DIR

WORDS_DIR = Path(__file__).resolve().parent / "data" / "words"
EXAMPLES = sorted(p.stem for p in WORDS_DIR.glob("*.wav"))
# Bounds over both committed files, loose enough for run-to-run variation (the measured
# figures are in docs/performance.md, "Word timestamps").
MAX_MEDIAN_START_ERROR_S = 0.1
MAX_P95_START_ERROR_S = 0.3
MAX_MEDIAN_END_ERROR_S = 0.15


@pytest.fixture(scope="module")
def sdk(service: str) -> OpenAI:
    return OpenAI(base_url=f"{service}/v1", api_key="unused", max_retries=0, timeout=300)


def words_of(sdk: OpenAI, path: Path, **extra):
    with open(path, "rb") as f:
        return sdk.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", language="en",
            timestamp_granularities=["word"], **extra)


def _key(word: str) -> str:
    return "".join(c for c in word.lower() if c.isalnum() or c == "'")


def errors_against_truth(sdk: OpenAI, name: str) -> list[tuple[float, float]]:
    """(start, end) errors of the words recognised as spoken, matched in order: the model
    may write "ten" as "10", which has no known time."""
    truth = json.loads((WORDS_DIR / f"{name}.json").read_text())["words"]
    found = words_of(sdk, WORDS_DIR / f"{name}.wav").words
    matcher = difflib.SequenceMatcher(a=[_key(t["word"]) for t in truth],
                                      b=[_key(w.word) for w in found], autojunk=False)
    pairs = [(truth[b.a + k], found[b.b + k])
             for b in matcher.get_matching_blocks() for k in range(b.size)]
    assert len(pairs) >= 0.7 * len(truth), [w.word for w in found]
    return [(w.start - t["start"], w.end - t["end"]) for t, w in pairs]


def test_the_openai_sdk_gets_words_timed_within_bounds(sdk: OpenAI) -> None:
    errors = [e for name in EXAMPLES for e in errors_against_truth(sdk, name)]
    starts = np.abs([e[0] for e in errors])
    ends = np.abs([e[1] for e in errors])
    assert np.median(starts) < MAX_MEDIAN_START_ERROR_S, starts
    assert np.percentile(starts, 95) < MAX_P95_START_ERROR_S, starts
    assert np.median(ends) < MAX_MEDIAN_END_ERROR_S, ends


def test_words_only_leave_segments_out_and_both_give_both(sdk: OpenAI, service: str) -> None:
    path = WORDS_DIR / f"{EXAMPLES[0]}.wav"
    only_words = words_of(sdk, path)
    assert only_words.words and not getattr(only_words, "segments", None)
    with open(path, "rb") as f:
        both = httpx.post(f"{service}/v1/audio/transcriptions", timeout=300,
                          files={"file": ("a.wav", f.read())},
                          data={"response_format": "verbose_json", "language": "en",
                                "timestamp_granularities[]": ["word", "segment"]}).json()
    assert both["words"] and both["segments"]
    starts = [w["start"] for w in both["words"]]
    assert starts == sorted(starts) and all(w["end"] >= w["start"] for w in both["words"])
    assert both["words"][-1]["end"] <= both["duration"]


def test_a_transcript_cached_without_words_never_answers_for_words(service: str) -> None:
    import io

    import soundfile as sf

    # A file no other test sends: the fixture with a tail of silence of its own.
    audio, rate = sf.read(SPEECH_DIR / "oak_tree.wav", dtype="float32")
    buffer = io.BytesIO()
    sf.write(buffer, np.concatenate([audio, np.zeros(1237, np.float32)]), rate, format="WAV")
    data = buffer.getvalue()

    def ask(**fields) -> httpx.Response:
        return httpx.post(f"{service}/v1/audio/transcriptions", timeout=300,
                          files={"file": ("a.wav", data)}, data=fields)

    assert ask(response_format="json").headers["X-Cache"] == "miss"  # no words timed
    words = {"response_format": "verbose_json", "timestamp_granularities[]": "word"}
    second = ask(**words)
    assert second.headers["X-Cache"] == "miss" and second.json()["words"]
    assert ask(**words).headers["X-Cache"] == "hit"
    # Timed formats share that entry; words appear only where they were asked for.
    plain = ask(response_format="verbose_json")
    assert plain.headers["X-Cache"] == "hit" and "words" not in plain.json()


@pytest.mark.parametrize("fields,reason", [
    ({"timestamp_granularities[]": "word"}, "verbose_json"),  # json: OpenAI's rule
    ({"timestamp_granularities[]": "word", "response_format": "srt"}, "verbose_json"),
    ({"timestamp_granularities[]": "word", "response_format": "verbose_json",
      "stream": "true"}, "verbose_json"),
])
def test_words_need_verbose_json(service: str, fields: dict, reason: str) -> None:
    data = (SPEECH_DIR / "oak_tree.wav").read_bytes()
    response = httpx.post(f"{service}/v1/audio/transcriptions", timeout=300,
                          files={"file": ("a.wav", data)}, data=fields)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "timestamp_granularities" and reason in error["message"]


def test_translations_and_glm_asr_refuse_words_and_say_why(service: str,
                                                           service_urls: dict) -> None:
    data = (SPEECH_DIR / "oak_tree.wav").read_bytes()
    fields = {"timestamp_granularities[]": "word", "response_format": "verbose_json"}
    translated = httpx.post(f"{service}/v1/audio/translations", timeout=300,
                            files={"file": ("a.wav", data)}, data=fields)
    assert translated.status_code == 400 and "translations" in translated.json()["error"]["message"]
    glm = httpx.post(f"{service_urls['glm']}/v1/audio/transcriptions", timeout=300,
                     headers={"Authorization": f"Bearer {GLM_API_KEY}"},
                     files={"file": ("a.wav", data)}, data=fields)
    assert glm.status_code == 400
    assert "GLM" in glm.json()["error"]["message"] or "audio in time" in glm.json()["error"]["message"]


def test_subtitles_appear_when_their_first_word_is_spoken(service: str) -> None:
    """srt without asking for words: cues are timed by them all the same."""
    import srt as srt_format

    truth = json.loads((WORDS_DIR / "traffic_gaps.json").read_text())["words"]
    known_starts = [w["start"] for w in truth]
    data = (WORDS_DIR / "traffic_gaps.wav").read_bytes()
    response = httpx.post(f"{service}/v1/audio/transcriptions", timeout=300,
                          files={"file": ("a.wav", data)},
                          data={"response_format": "srt", "language": "en"})
    cues = list(srt_format.parse(response.text))
    assert cues
    for cue in cues:
        start = cue.start.total_seconds()
        assert min(abs(start - k) for k in known_starts) < 0.1, (start, known_starts)
        assert all(len(line) <= 42 for line in cue.content.split("\n"))


def test_the_batch_endpoint_times_each_files_words(service: str) -> None:
    files = [("file", (f"{name}.wav", (WORDS_DIR / f"{name}.wav").read_bytes()))
             for name in EXAMPLES]
    response = httpx.post(f"{service}/v1/audio/transcriptions/batch", timeout=300, files=files,
                          data={"response_format": "verbose_json", "language": "en",
                                "timestamp_granularities[]": "word"})
    assert response.status_code == 200, response.text
    items = response.json()["data"]
    assert [item["status"] for item in items] == [200] * len(EXAMPLES)
    for name, item in zip(EXAMPLES, items):
        truth = json.loads((WORDS_DIR / f"{name}.json").read_text())["words"]
        words = item["response"]["words"]
        assert len(words) >= 0.7 * len(truth) and "segments" not in item["response"]
        assert abs(words[0]["start"] - truth[0]["start"]) < 0.3
