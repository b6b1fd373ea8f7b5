"""Synthetic English speech with known word times, to measure an ASR model's word timestamps.

    python -m benchmarks.espeak_words --text "The park is open." --out DIR/name
    python -m benchmarks.espeak_words --sentences FILE --out DIR/name
        [--voice en-gb] [--rate-wpm 160] [--word-gap-10ms 20]

writes DIR/name.wav (16 kHz mono 16-bit PCM) and DIR/name.json ({"text", "voice",
"rate_wpm", "word_gap_10ms", "words": [{"word", "start", "end"}, ...]}); with --sentences,
one pair per non-blank line: DIR/name-001.wav, DIR/name-001.json, ...

Speech comes from espeak-ng's C library through ctypes rather than its command line,
because only the library reports what it is saying where: for every word a WORD event and
for every phoneme a PHONEME event, each with the word's character position in the input
and the output sample it starts at.

How the times are derived (seconds into the returned 16 kHz audio):

* A word's sound starts at its first phoneme, not at its WORD event, which can come up to
  ~40 ms early: where a vowel meets a vowel ("honey at") espeak-ng lengthens the first
  word with a phoneme ";" that it emits after the next word's WORD event. Every phoneme
  event carries the position of the word it belongs to, so phonemes are grouped by that.
* A word's sound ends, at the latest, where the next word starts or where the first pause
  after its last phoneme starts, whichever comes first. No event marks the end itself.
* Both are checked in the signal, in 5 ms frames: espeak-ng writes zeros before a phoneme
  and in its pauses. `start` is the first audible sample from the word's first phoneme
  on (they coincided within ~1 ms in every check made), `end` one past the last audible
  sample before that latest end. Silence inside a word (a stop closure) stays in it,
  silence between words belongs to neither. Where speech runs on into the next word (no
  word gap, no pause) there is nothing to find and `end` is the next word's `start`:
  the boundary is espeak-ng's.

The audio is not bit-identical from run to run (espeak-ng 1.51 varies it by about 1 %):
keep each WAV with its JSON.
"""

from __future__ import annotations

import argparse
import bisect
import ctypes
import ctypes.util
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000  # the rate every backend of the service consumes
FRAME_S = 0.005
# espeak-ng writes zeros in its pauses, but for the last few ms of the sound before and a
# stray sample (up to 0.005). -60 dBFS over 5 ms is above those and well below its
# quietest fricatives, about -45 dBFS.
SILENCE_DBFS = -60.0
_SILENCE_AMPLITUDE = 10 ** (SILENCE_DBFS / 20)
RATE_WPM_RANGE = (80, 450)  # espeakRATE_MINIMUM, espeakRATE_MAXIMUM

# ---- espeak-ng's C API (speak_lib.h, 1.51) -------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2  # like RETRIEVAL (samples and events to our callback), but
# espeak_Synth returns only when the text is done, so one call is one utterance
_INITIALIZE_PHONEME_EVENTS = 0x0001  # espeak-ng mnemonics ("_:", "aI"), not IPA
_INITIALIZE_DONT_EXIT = 0x8000  # report missing espeak-ng-data instead of exit()ing
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000  # end with a sentence pause: the last word is not cut short
_PARAM_RATE = 1
_PARAM_WORDGAP = 7
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_EVENT_SAMPLERATE = 8  # a voice that changes the output rate (MBROLA) announces it so
_PAUSE_PREFIX = b"_"  # "_", "_:", "_!": espeak-ng's pauses


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """espeak_EVENT: 40 bytes on x86-64 (six 4-byte fields, a pointer, an 8-byte union)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        # 1-based index of the word's first character in the input, counted in characters,
        # not UTF-8 bytes. The same for a WORD event and its word's phonemes; a pause has
        # the position of the space or punctuation mark that caused it.
        ("text_position", ctypes.c_int),
        # Not used: 8 bits wide inside espeak-ng and wrong for some words ("don't": 3).
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds, truncated: sample * 1000 // rate
        ("sample", ctypes.c_int),  # output sample, counted from 0 in each espeak_Synth
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),  # a PHONEME event's name is in id.string
    ]


class _Voice(ctypes.Structure):
    """espeak_VOICE: what espeak_ListVoices takes (a language) and returns (voice files)."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


def _load_library() -> ctypes.CDLL:
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as e:
        raise RuntimeError("espeak-ng's library is missing: apt-get install -y espeak-ng") from e
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_ListVoices.argtypes = [ctypes.POINTER(_Voice)]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
        ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
    ]  # fmt: skip
    return lib


@dataclass(frozen=True)
class _Phoneme:
    position: int  # 0-based character position of the word it belongs to
    sample: int  # where it starts
    pause: bool


@dataclass
class _Utterance:
    samples: np.ndarray  # int16, as espeak-ng wrote them
    sample_rate: int
    words: list[int]  # each WORD event's 0-based character position
    phonemes: list[_Phoneme]  # in the order espeak-ng emitted them


class _Espeak:
    """The library, initialised once per process. Its synthesiser is one global state
    (voice, parameters, callback), so a lock makes one utterance at a time."""

    def __init__(self) -> None:
        self._lib = _load_library()
        self._rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT
        )
        if self._rate <= 0:
            raise RuntimeError("espeak_Initialize failed (is espeak-ng-data installed?)")
        # ctypes frees a callback once its Python object is collected: keep a reference.
        self._callback = _SynthCallback(self._on_synth)
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._words: list[int] = []
        self._phonemes: list[_Phoneme] = []

    def _on_synth(self, wav, n_samples: int, events) -> int:
        # Called from inside espeak_Synth, on this thread. The buffers are espeak-ng's and
        # reused after we return, hence the copies. Returning 0 asks it to go on.
        if wav and n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_WORD:
                self._words.append(event.text_position - 1)
            elif event.type == _EVENT_PHONEME:
                pause = event.id.string.startswith(_PAUSE_PREFIX)
                self._phonemes.append(_Phoneme(event.text_position - 1, event.sample, pause))
            elif event.type == _EVENT_SAMPLERATE:
                self._rate = event.id.number
            i += 1
        return 0

    def _set_voice(self, voice: str) -> None:
        """A voice file's name ("en-us", "gmw/en", "en-us+f3"), else the best voice file
        for a language ("en-gb", "en-gb+f3"): in 1.51 no file is called en-gb, and the
        espeak-ng command's fallback (espeak_SetVoiceByProperties) drops the "+f3"."""
        if self._lib.espeak_SetVoiceByName(voice.encode("utf-8")) == 0:
            return
        language, plus, variant = voice.partition("+")
        listed = self._lib.espeak_ListVoices(ctypes.byref(_Voice(languages=language.encode())))
        if listed and listed[0]:
            name = listed[0].contents.identifier + (plus + variant).encode("utf-8")
            if self._lib.espeak_SetVoiceByName(name) == 0:
                return
        raise ValueError(f"espeak-ng has no voice {voice!r} (see espeak-ng --voices=en)")

    def speak(self, text: str, voice: str, rate_wpm: int, word_gap_10ms: int) -> _Utterance:
        data = text.encode("utf-8")
        with self._lock:
            self._set_voice(voice)
            # Set on every call: they persist in the library between utterances.
            self._lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0)
            self._lib.espeak_SetParameter(_PARAM_WORDGAP, word_gap_10ms, 0)
            self._chunks, self._words, self._phonemes = [], [], []
            status = self._lib.espeak_Synth(
                data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None
            )
            self._lib.espeak_Synchronize()
            if status != 0:
                raise RuntimeError(f"espeak_Synth failed with status {status}")
            samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            return _Utterance(samples, self._rate, self._words, self._phonemes)


_engine: _Espeak | None = None
_engine_lock = threading.Lock()


def _espeak() -> _Espeak:
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _Espeak()
        return _engine


# ---- words ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    begin: int  # character span in the input
    end: int
    word: str


# Signs espeak-ng reads out ("5%" is "five percent", "&" is "and"): kept at a token's edge.
_SPOKEN_SIGNS = "%$€£¥&#@+=°"
_EDGE_PUNCTUATION = re.compile(rf"^[^\w{_SPOKEN_SIGNS}]+|[^\w{_SPOKEN_SIGNS}]+$")


def _clean(token: str) -> str:
    """The token without the punctuation around it ("(open," -> "open", "'no'" -> "no",
    "U.S." -> "U.S"); marks inside stay ("don't", "3.5", "well-known"). A token that is
    punctuation alone ("--") is kept whole: espeak-ng does not say it anyway."""
    return _EDGE_PUNCTUATION.sub("", token) or token


def _tokens(text: str) -> list[_Token]:
    return [_Token(m.start(), m.end(), _clean(m.group(0))) for m in re.finditer(r"\S+", text)]


def _owners(tokens: list[_Token], words: list[int]) -> dict[int, int]:
    """{character position espeak-ng reported: index of the input token it belongs to}.

    The output has one entry per whitespace-separated token, but espeak-ng may say a token
    as several words, with a WORD event each: "123" is "one hundred twenty three", events
    at its characters 0, 1 and 1; "3.5", "$20", "5%", "10:30am" alike, the later positions
    inside the token. "well-known", "e.g." and "U.S." are one event. A position can also
    precede its word:
    the space before it after an abbreviation ("St. with"), or a dash that is not said
    ("- dashes"). So a position in a token is that token's, one in whitespace the next
    token's, and a token of punctuation alone that is followed by a word with no position
    of its own hands its positions on to that word ("&" keeps its own: it is said "and").
    """
    begins = [t.begin for t in tokens]
    owner: dict[int, int] = {}
    for position in sorted(set(words)):
        index = bisect.bisect_right(begins, position) - 1
        if index < 0 or position >= tokens[index].end:
            index += 1
        owner[position] = min(index, len(tokens) - 1)
    owned = set(owner.values())
    for position, index in owner.items():
        following = index + 1
        if (
            not re.search(r"\w", tokens[index].word)
            and following < len(tokens)
            and following not in owned
            and re.search(r"\w", tokens[following].word)
        ):
            owner[position] = following
    return owner


@dataclass(frozen=True)
class _Said:
    token: int  # index into the tokens
    first: int  # sample where its first sounding phoneme starts
    pause: int | None  # sample where the first pause after its last sounding phoneme starts


def _spoken(tokens: list[_Token], words: list[int], phonemes: list[_Phoneme]) -> list[_Said]:
    """The tokens espeak-ng says, in spoken order. A phoneme belongs to the WORD event
    whose position it carries; a token without a sounding phoneme (a dash, a WORD event at
    the very end) was not said."""
    owner = _owners(tokens, words)
    first: dict[int, int] = {}
    last: dict[int, int] = {}  # token: index of its last sounding phoneme in `phonemes`
    for i, phoneme in enumerate(phonemes):
        if not phoneme.pause and phoneme.position in owner:
            token = owner[phoneme.position]
            first[token] = min(phoneme.sample, first.get(token, phoneme.sample))
            last[token] = i
    said = [
        _Said(token, sample, _next_pause(phonemes, last[token] + 1))
        for token, sample in first.items()
    ]
    return sorted(said, key=lambda w: w.first)


def _next_pause(phonemes: list[_Phoneme], begin: int) -> int | None:
    # By order of emission, not by sample: a pause can share its sample with the next
    # word's first phoneme and be emitted before it.
    return next((p.sample for p in phonemes[begin:] if p.pause), None)


# ---- sound boundaries -------------------------------------------------------------------


def _is_silent(chunk: np.ndarray) -> bool:
    return float(np.sqrt(np.mean(np.square(chunk, dtype=np.float64)))) < _SILENCE_AMPLITUDE


def _sound_start(x: np.ndarray, begin: int, limit: int, frame: int) -> int | None:
    """First audible sample in the first non-silent frame of x[begin:limit]."""
    for pos in range(begin, limit, frame):
        chunk = x[pos : min(pos + frame, limit)]
        if not _is_silent(chunk):
            return pos + int(np.flatnonzero(np.abs(chunk) >= _SILENCE_AMPLITUDE)[0])
    return None


def _sound_end(x: np.ndarray, begin: int, limit: int, frame: int) -> int | None:
    """One past the last audible sample in the last non-silent frame of x[begin:limit]."""
    for pos in range(limit, begin, -frame):
        chunk = x[max(pos - frame, begin) : pos]
        if not _is_silent(chunk):
            last = int(np.flatnonzero(np.abs(chunk) >= _SILENCE_AMPLITUDE)[-1])
            return max(pos - frame, begin) + last + 1
    return None


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _word_spans(x: np.ndarray, rate: int, said: list[_Said]) -> list[tuple[int, int]]:
    """(start, end) sample of each word's sound."""
    frame = round(FRAME_S * rate)
    firsts = [w.first for w in said]
    # A word without an audible frame is not expected; it keeps its phoneme's sample.
    starts = [
        _or(_sound_start(x, first, limit, frame), first)
        for first, limit in zip(firsts, firsts[1:] + [len(x)])
    ]
    # A pause is silent in espeak-ng's own voices, but a variant can breathe into it
    # (en-us+f3: up to -43 dBFS in the word gap): the word ends by the pause at the latest.
    limits = [
        max(min(following, _or(w.pause, following)), start)
        for w, start, following in zip(said, starts, starts[1:] + [len(x)])
    ]
    ends = [_or(_sound_end(x, start, limit, frame), start) for start, limit in zip(starts, limits)]
    return list(zip(starts, ends))


# ---- public -----------------------------------------------------------------------------


def synthesize(
    text: str, voice: str = "en-us", rate_wpm: int = 160, word_gap_10ms: int = 0
) -> tuple[np.ndarray, list[dict]]:
    """Speak `text` with espeak-ng: 16 kHz mono float32 audio and, in spoken order, one
    {"word", "start", "end"} per input token it says, in seconds into that audio.

    `word_gap_10ms` adds a pause between words, in units of 10 ms at espeak-ng's default
    rate (it shrinks as `rate_wpm` grows)."""
    if not text.strip():
        raise ValueError("nothing to say")
    if not RATE_WPM_RANGE[0] <= rate_wpm <= RATE_WPM_RANGE[1]:
        raise ValueError(f"rate_wpm must be within {RATE_WPM_RANGE}")
    if word_gap_10ms < 0:
        raise ValueError("word_gap_10ms must be >= 0")
    utterance = _espeak().speak(text, voice, rate_wpm, word_gap_10ms)
    x = utterance.samples.astype(np.float32) / 32768.0
    tokens = _tokens(text)
    said = _spoken(tokens, utterance.words, utterance.phonemes)
    spans = _word_spans(x, utterance.sample_rate, said)

    # Snapped to the 16 kHz samples, so round(start * 16000) indexes the returned audio.
    def seconds(sample: int) -> float:
        return round(sample * SAMPLE_RATE / utterance.sample_rate) / SAMPLE_RATE

    words = [
        {"word": tokens[w.token].word, "start": seconds(start), "end": seconds(end)}
        for w, (start, end) in zip(said, spans)
    ]
    # soxr's filter is linear-phase and its delay removed: the times carry over unchanged.
    audio = soxr.resample(x, utterance.sample_rate, SAMPLE_RATE).astype(np.float32)
    return audio, words


def write_example(
    out: Path, text: str, voice: str = "en-us", rate_wpm: int = 160, word_gap_10ms: int = 0
) -> list[dict]:
    """Write out.wav (16-bit PCM, 16 kHz) and out.json; returns the words."""
    audio, words = synthesize(text, voice, rate_wpm, word_gap_10ms)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Resampling can overshoot a peak a little, and 16-bit PCM must not wrap.
    sf.write(out.with_name(out.name + ".wav"), np.clip(audio, -1.0, 1.0), SAMPLE_RATE, "PCM_16")
    meta = {
        "text": text,
        "voice": voice,
        "rate_wpm": rate_wpm,
        "word_gap_10ms": word_gap_10ms,
        "words": words,
    }
    out.with_name(out.name + ".json").write_text(
        json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return words


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="one utterance")
    source.add_argument("--sentences", type=Path, help="a UTF-8 file, one utterance a line")
    parser.add_argument(
        "--out", type=Path, required=True,
        help="DIR/name: writes name.wav and name.json (name-001.* ... with --sentences)",
    )  # fmt: skip
    parser.add_argument("--voice", default="en-us", help="an espeak-ng voice (default en-us)")
    parser.add_argument("--rate-wpm", type=int, default=160, help="words per minute (160)")
    parser.add_argument("--word-gap-10ms", type=int, default=0, help="pause between words (0)")
    args = parser.parse_args(argv)

    if args.text is not None:
        jobs = [(args.out, args.text)]
    else:
        lines = args.sentences.read_text(encoding="utf-8").splitlines()
        texts = [line.strip() for line in lines if line.strip()]
        jobs = [(args.out.with_name(f"{args.out.name}-{i:03d}"), t) for i, t in enumerate(texts, 1)]
    for out, text in jobs:
        try:
            words = write_example(out, text, args.voice, args.rate_wpm, args.word_gap_10ms)
        except ValueError as e:
            parser.error(str(e))
        print(f"{out}.wav  {len(words)} words  {text}")


if __name__ == "__main__":
    main()
