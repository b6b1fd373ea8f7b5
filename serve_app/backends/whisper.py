"""Whisper-family backend: any Whisper checkpoint (local folder or hub id) via transformers.

One call runs one padded batch: features for every chunk at once, one encoder pass, language
detection on those encoder states when the language is not given, then `generate`. A chunk
that cannot be decoded comes back as `ChunkResult(error=...)`, not as an exception, so one
bad chunk does not fail the requests that share its batch. Options are shared by the whole
batch, so invalid ones raise ValueError (`validate_options` lets the caller check first).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import unicodedata
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from transformers import (
    AutoModelForSpeechSeq2Seq,
    AutoProcessor,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.modeling_outputs import BaseModelOutput

from serve_app.backends import word_timing
from serve_app.backends.base import (
    MAX_CHUNK_SECONDS,
    SAMPLE_RATE,
    BackendInfo,
    ChunkResult,
    DecodeOptions,
    Preempted,
    chunk_problem,
    encoder_windows,
    per_window,
)

logger = logging.getLogger(__name__)

TASKS = ("transcribe", "translate")
# Decoder positions taken by <|startoftranscript|> <|lang|> <|task|> <|notimestamps|>.
_INIT_TOKENS = 4
TRIMMED_STEP_S = 5  # trimmed windows of 5, 10, ... 30 s: any length fits the encoder
# Signs that a trimmed window (base.encoder_windows) still sent the decoder into a loop,
# after which the chunk is decoded again in a larger window: gzip compressing the text
# more than Whisper's own fallback threshold, or more tokens than any speech fits in the
# audio (a second of slack). The cap follows the audio, not its window: a 1.5-s live
# decode that loops in its 5-s window stops after 30 tokens, not 60 (~0.4 s on 2 cores).
LOOP_COMPRESSION_RATIO = 2.4
MAX_TOKENS_PER_SECOND = 12
TOKEN_CAP_SLACK_S = 1.0
# A decode in a chunk's first trimmed window that says again, at once, a phrase of at least
# this many tokens has looped too ("My grandfather planted them. My grandfather planted
# them."): it stops there instead of at the cap. A short live decode given its first words
# loops so often, and each loop to the cap cost the lane ~0.4 s on 2 cores. The larger
# windows after it stop only at the cap, so a phrase said twice on purpose costs one
# decode more, not one per window.
MIN_LOOP_PERIOD = 4


def loop_token_cap(longest_audio_s: float, given_tokens: int = 0) -> int:
    """New tokens past which a decode in a trimmed window is taken for a loop: more than
    the longest chunk's speech can need, less the transcript's start given to the decoder
    (`DecodeOptions.text_prefix`), and never under the slack's own share."""
    whole = math.ceil(MAX_TOKENS_PER_SECOND * (longest_audio_s + TOKEN_CAP_SLACK_S))
    return max(whole - given_tokens, math.ceil(MAX_TOKENS_PER_SECOND * TOKEN_CAP_SLACK_S))


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` inside, restored after (None: as is)."""
    if threads is None or threads == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SuppressTokens(LogitsProcessor):
    """transformers' SuppressTokensLogitsProcessor with its mask built once, not per step.

    That one runs `torch.isin` over the whole vocabulary at every decoder step: 2 ms a step
    on CPU for Whisper's 88 suppressed tokens, against 0.04 ms for this lookup.
    """

    def __init__(self, token_ids: list[int], vocab_size: int, device: torch.device) -> None:
        self.mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        self.mask[torch.tensor(token_ids, dtype=torch.long, device=device)] = True

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.masked_fill(self.mask, -float("inf"))


def repeats_itself(tokens: Sequence[int], min_period: int) -> bool:
    """The tokens end with a run of them said twice in a row, the shortest such run being
    at least `min_period` long: "no, no, no, no," repeats a run of two, which is speech."""
    n = len(tokens)
    for k in range(1, n // 2 + 1):
        if tokens[-1] != tokens[-1 - k]:
            continue  # most periods fail here, before any copying
        if list(tokens[n - 2 * k : n - k]) == list(tokens[n - k :]):
            return k >= min_period
    return False


class StopOnRepeat(StoppingCriteria):
    """Ends each row whose generated tokens repeat themselves (`repeats_itself`), and
    keeps which rows it ended (`stopped`). The rows handed in start with the decoder's given
    input (start tokens, prompt, text prefix); the first call comes after one generated
    token, which tells how long that input is. A row ended at EOS is padded with EOS, a run
    of one: it never counts as a repeat."""

    def __init__(self) -> None:
        self._given: int | None = None
        self.stopped: list[bool] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if self._given is None:
            self._given = input_ids.shape[1] - 1
            self.stopped = [False] * input_ids.shape[0]
        rows = input_ids[:, self._given :].tolist()
        done = [repeats_itself(row, MIN_LOOP_PERIOD) for row in rows]
        self.stopped = [before or now for before, now in zip(self.stopped, done, strict=True)]
        return torch.tensor(done, device=input_ids.device)


def compression_ratio(text: str) -> float:
    """Whisper's repetition test: how well the text compresses (a loop compresses well)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def encode_window(encoder: torch.nn.Module, input_features: torch.Tensor) -> torch.Tensor:
    """WhisperEncoder's forward on fewer than its 3000 frames, which its own forward refuses.

    The same layers in the same order; positions are the window's first ones.
    """
    hidden = torch.nn.functional.gelu(encoder.conv1(input_features))
    hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    for layer in encoder.layers:
        hidden = layer(hidden, None)
    return encoder.layer_norm(hidden)


class WhisperBackend:
    """Loads a Whisper checkpoint and transcribes batches of 16 kHz mono float32 chunks.

    `encoder_window="trimmed"` pads a chunk to the next 5-s step at least 3 s past its end
    instead of to 30 s: a 5-s clip costs the encoder a third of the work. It is opt-in
    because it is not how Whisper was trained; a chunk whose trimmed decode looks like a
    loop is decoded again in a larger window (twice as long, up to 30 s).
    """

    def __init__(
        self,
        model_id: str,
        *,
        device: str,
        dtype: torch.dtype,
        revision: str | None = None,
        decode_threads: int | None = None,
        encoder_window: str = "full",
    ) -> None:
        windows_s, window_margin_s = encoder_windows(encoder_window, TRIMMED_STEP_S)
        self.device = torch.device(device)
        # CPU only: on a GPU the host threads only launch kernels.
        self._decode_threads = decode_threads if self.device.type == "cpu" else None
        self.processor = AutoProcessor.from_pretrained(model_id, revision=revision)
        model = AutoModelForSpeechSeq2Seq.from_pretrained(model_id, revision=revision, dtype=dtype)
        self.model = model.to(self.device).eval()
        gen = self.model.generation_config
        self._logits_processors = LogitsProcessorList()
        if gen.suppress_tokens:  # taken over by SuppressTokens, so generate does not add its own
            self._logits_processors.append(
                SuppressTokens(gen.suppress_tokens, self.model.config.vocab_size, self.device)
            )
            gen.suppress_tokens = None
        # lang_to_id maps "<|en|>" -> token id; clients speak ISO codes ("en"). English-only
        # checkpoints (*.en) take neither a language nor a task token.
        lang_to_id = (
            (getattr(gen, "lang_to_id", None) or {})
            if getattr(gen, "is_multilingual", False)
            else {}
        )
        self._lang_by_id = {tid: tok.strip("<|>") for tok, tid in lang_to_id.items()}
        self._languages = frozenset(self._lang_by_id.values())
        self._can_translate = bool(self._languages) and "translate" in (
            getattr(gen, "task_to_id", None) or {}
        )
        self._alignment_heads = word_timing.alignment_heads(self.model)
        if self._alignment_heads:  # numba compiles the time warping once, here, not per request
            word_timing.dtw(np.zeros((2, 2)))
        self._max_positions = self.model.config.max_target_positions  # 448 for every Whisper
        # openai/whisper's defaults: sample at most half the context, keep at most the last
        # half minus one of a prompt, so prompt, start tokens and output always fit.
        self._default_new_tokens = self._max_positions // 2
        self._max_prompt_tokens = self._max_positions // 2 - 1
        self.info = BackendInfo(
            model_id=model_id,
            family="whisper",
            can_translate=self._can_translate,
            languages=tuple(sorted(self._languages)),
            windows_s=windows_s,
            window_margin_s=window_margin_s,
            word_timestamps_unavailable=None if self._alignment_heads else (
                "its generation config names no alignment heads"),
        )

    def validate_options(self, options: DecodeOptions) -> None:
        """Raise ValueError, with a message fit for a client, if the model cannot honour these."""
        if options.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {options.task!r}")
        if options.task == "translate" and not self._can_translate:
            raise ValueError(f"{self.info.model_id} cannot translate (English-only model)")
        if options.language is not None:
            if not self._languages:
                raise ValueError(f"{self.info.model_id} is English-only; leave the language unset")
            if options.language not in self._languages:
                raise ValueError(
                    f"unsupported language {options.language!r}; use an ISO-639-1 code such as"
                    f" 'en', one of: {', '.join(sorted(self._languages))}"
                )
        if options.word_timestamps and options.task == "translate":
            raise ValueError(
                "word timestamps are not available for translations: the English words "
                "do not follow the other language's audio word by word")
        if options.word_timestamps and options.text_prefix:
            raise ValueError("word timestamps are not available for a decode that continues "
                             "a text prefix: the prefix's words are not decoded")
        if options.word_timestamps and not self._alignment_heads:
            raise ValueError(
                f"word timestamps are not available for {self.info.model_id}: its "
                "generation config names no alignment heads")
        if not (math.isfinite(options.temperature) and options.temperature >= 0):
            raise ValueError(
                f"temperature must be a finite number >= 0, not {options.temperature}"
            )
        if (
            options.max_new_tokens is not None and options.max_new_tokens < 1
        ):  # larger ones are clamped
            raise ValueError(f"max_new_tokens must be at least 1, not {options.max_new_tokens}")

    def transcribe_batch(
        self, audios: list[np.ndarray], options: DecodeOptions
    ) -> list[ChunkResult]:
        """One result per chunk, in order. Invalid options raise ValueError (they are shared)."""
        self.validate_options(options)
        results: list[ChunkResult | None] = [None] * len(audios)
        todo: list[int] = []
        for i, audio in enumerate(audios):
            if (problem := chunk_problem(audio)) is not None:
                results[i] = ChunkResult(error=problem)
            elif audio.size == 0:  # nothing to hear is not an error
                results[i] = ChunkResult(text="", language=options.language)
            else:
                todo.append(i)
        if todo:
            try:
                decoded = self._decode([audios[i] for i in todo], options)
            except Preempted:
                raise  # the batch was given up for a live turn: no chunk failed
            except Exception:
                if len(todo) == 1:
                    logger.exception("Whisper failed on a chunk")
                    decoded = [ChunkResult(error="the model failed on this audio")]
                else:  # find the chunk that broke the batch: its mates still get text
                    logger.exception(
                        "Whisper failed on a batch of %d; retrying one by one", len(todo)
                    )
                    decoded = [self.transcribe_batch([audios[i]], options)[0] for i in todo]
            for i, result in zip(todo, decoded, strict=True):
                results[i] = result
        return [r or ChunkResult(error="not decoded") for r in results]  # every slot is filled

    def _decode(self, audios: list[np.ndarray], options: DecodeOptions) -> list[ChunkResult]:
        # One call per window, so batch mates never change a chunk's padding (the model
        # deployment already batches one window at a time: batching.group_for_generate).
        return per_window(
            self.info,
            audios,
            lambda chunks, window_s: self._decode_window(
                chunks, options, window_s or float(MAX_CHUNK_SECONDS)
            ),
        )

    def _decode_window(
        self, audios: list[np.ndarray], options: DecodeOptions, window_s: float,
        stop_on_repeat: bool = True,
    ) -> list[ChunkResult]:
        results, ran_out = self._decode_in_window(audios, options, window_s, stop_on_repeat)
        if window_s < MAX_CHUNK_SECONDS:
            looped = [
                i
                for i, result in enumerate(results)
                if ran_out[i] or compression_ratio(result.text) > LOOP_COMPRESSION_RATIO
            ]
            if looped:
                # A window twice as long first, up to 30 s: it ends the loops seen in 5-s
                # windows (1-2 s of speech) at a third of a 30-s decode's cost.
                larger_s = min(2 * window_s, float(MAX_CHUNK_SECONDS))
                logger.info("%d of %d chunks looped in a %.0f-s window; decoding them in %.0f s",
                            len(looped), len(audios), window_s, larger_s)
                again = self._decode_window([audios[i] for i in looped], options, larger_s,
                                            stop_on_repeat=False)
                for i, result in zip(looped, again, strict=True):
                    results[i] = result
        return results

    @torch.inference_mode()
    def _decode_in_window(
        self, audios: list[np.ndarray], options: DecodeOptions, window_s: float,
        stop_on_repeat: bool,
    ) -> tuple[list[ChunkResult], list[bool]]:
        """Results, and for each whether it looped: stopped at the loop token cap or, with
        `stop_on_repeat` in a trimmed window, on a repeat; not at EOS."""
        # Features of the window only: the same frames as the first ones of a 30-s window
        # (the padding is zeros either way), without the STFT of the rest.
        features = self.processor.feature_extractor(
            audios,
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
            return_attention_mask=True,
            padding="max_length",
            max_length=int(window_s * SAMPLE_RATE),
            device=str(self.device),  # the STFT runs on the GPU when there is one
        )
        input_features = features.input_features.to(self.device, dtype=self.model.dtype)
        attention_mask = features.attention_mask.to(self.device)
        # One encoder pass serves both language detection and decoding.
        encoder = self.model.get_encoder()
        if window_s < MAX_CHUNK_SECONDS:
            encoder_outputs = BaseModelOutput(last_hidden_state=encode_window(encoder, input_features))
        else:
            encoder_outputs = encoder(input_features)
        if options.language is not None:
            languages = [options.language] * len(audios)
        elif self._languages:
            lang_ids = self.model.detect_language(encoder_outputs=encoder_outputs).tolist()
            languages = [self._lang_by_id[i] for i in lang_ids]
        else:
            languages = ["en"] * len(audios)  # English-only checkpoints: no language token

        kwargs: dict = {
            "attention_mask": attention_mask,
            "encoder_outputs": encoder_outputs,
            "logits_processor": self._logits_processors,
        }
        if self._languages:
            kwargs.update(language=languages, task=options.task)
        prompt_ids: list[int] = []
        if options.prompt:
            prompt_ids = self.processor.tokenizer.get_prompt_ids(options.prompt).tolist()
            # Keep <|startofprev|> and the prompt's end, which matters most for context.
            prompt_ids = prompt_ids[:1] + prompt_ids[1:][-self._max_prompt_tokens :]
        forced = self._text_prefix_ids(options.text_prefix)
        if forced:
            # generate takes the whole decoder input as given: prompt, start tokens, prefix.
            kwargs["decoder_input_ids"] = torch.tensor(
                [prompt_ids + self._prefix_ids(lang, options.task) + forced for lang in languages],
                device=self.device)
        elif prompt_ids:
            kwargs["prompt_ids"] = torch.tensor(prompt_ids, device=self.device)
        budget = self._max_positions - len(prompt_ids) - _INIT_TOKENS - len(forced)
        # Whisper's generate reads max_length as the count of new tokens and adds the start
        # tokens itself; passing max_new_tokens instead draws a transformers warning per call.
        wanted = min(options.max_new_tokens or self._default_new_tokens, budget)
        repeats = StopOnRepeat()
        if window_s < MAX_CHUNK_SECONDS:
            cap = loop_token_cap(max(a.shape[0] for a in audios) / SAMPLE_RATE, len(forced))
            if stop_on_repeat:
                kwargs["stopping_criteria"] = StoppingCriteriaList([repeats])
        else:
            cap = wanted  # no larger window to decode a loop again in
        kwargs["max_length"] = min(wanted, cap)
        if options.temperature > 0:
            kwargs.update(do_sample=True, temperature=options.temperature)
        else:
            kwargs.update(do_sample=False, num_beams=1)

        with torch_threads(self._decode_threads):
            sequences = self.model.generate(**kwargs)
        # generate returns only the new tokens: no start tokens, no prompt, no text prefix.
        texts = self.processor.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        if forced:
            start = self.processor.tokenizer.decode(forced, skip_special_tokens=True)
            texts = [start + text for text in texts]
        # generate strips each row's EOS and right-pads the rows to the longest, so a row
        # ran out only if the rows are as long as the cap and it ends in a plain token; or
        # it was stopped on a repeat.
        gen = self.model.generation_config
        at_cap = cap < wanted and sequences.shape[-1] >= cap
        ends = {gen.eos_token_id, gen.pad_token_id}
        stopped = repeats.stopped or [False] * len(audios)  # never called: no criterion
        ran_out = [
            (at_cap and int(row[-1]) not in ends) or stopped[i]
            for i, row in enumerate(sequences)
        ]
        results = [
            ChunkResult(text=t.strip(), language=lang)
            for t, lang in zip(texts, languages, strict=True)
        ]
        if options.word_timestamps:
            words = self._time_words(
                encoder_outputs.last_hidden_state, sequences, languages, options.task, audios)
            results = [dataclasses.replace(r, words=w) for r, w in zip(results, words, strict=True)]
        return results, ran_out

    def _text_prefix_ids(self, text_prefix: str | None) -> list[int]:
        """The tokens of a text prefix as Whisper writes the start of a transcript (a space
        before a first word, none before a Chinese or Japanese character); none when it is
        empty or longer than a prompt may be (the chunk is then decoded whole)."""
        text = (text_prefix or "").strip()
        if not text:
            return []
        if unicodedata.east_asian_width(text[0]) not in ("W", "F"):
            text = " " + text
        ids = self.processor.tokenizer(text, add_special_tokens=False).input_ids
        return ids if len(ids) <= self._max_prompt_tokens else []

    def _prefix_ids(self, language: str, task: str) -> list[int]:
        """The decoder's start tokens without timestamps, as generate wrote them."""
        tokens = ["<|startoftranscript|>"]
        if self._languages:
            tokens += [f"<|{language}|>", f"<|{task}|>"]
        tokens.append("<|notimestamps|>")
        return self.processor.tokenizer.convert_tokens_to_ids(tokens)

    def _time_words(self, encoder_states: torch.Tensor, sequences: torch.Tensor,
                    languages: list[str], task: str, audios: list[np.ndarray],
                    ) -> list[tuple[tuple[str, float, float], ...]]:
        """Each chunk's words with times (word_timing): one teacher-forced decoder pass
        over the batch, capturing the alignment heads' cross-attention."""
        tokenizer = self.processor.tokenizer
        end = self.model.generation_config.eos_token_id
        rows = []
        for row, language in zip(sequences.tolist(), languages, strict=True):
            text = [t for t in row if t < end]  # special tokens, EOS and padding come after text
            rows.append((self._prefix_ids(language, task), text))
        length = max(len(prefix) + len(text) + 1 for prefix, text in rows)
        input_ids = torch.full((len(rows), length), end, dtype=torch.long)
        for i, (prefix, text) in enumerate(rows):
            input_ids[i, : len(prefix) + len(text)] = torch.tensor(prefix + text)
        decoder = self.model.get_decoder()
        with word_timing.CrossAttentionCapture(decoder, self._alignment_heads) as capture:
            decoder(input_ids=input_ids.to(self.device), encoder_hidden_states=encoder_states,
                    use_cache=False)
        scores = torch.stack([capture.scores[h] for h in self._alignment_heads], dim=1)
        timed = []
        for i, ((prefix, text), audio) in enumerate(zip(rows, audios, strict=True)):
            if not text:
                timed.append(())
                continue
            n_tokens = len(prefix) + len(text) + 1
            n_frames = min(math.ceil(audio.size / word_timing.SAMPLES_PER_FRAME),
                           scores.shape[-1])
            frames = word_timing.token_frames(scores[i, :, :n_tokens], n_frames, len(prefix))
            words = word_timing.words_from_frames(
                text, frames, languages[i], audio.size / SAMPLE_RATE, tokenizer.decode)
            timed.append(tuple((w.word, round(w.start, 3), round(w.end, 3)) for w in words))
        return timed
