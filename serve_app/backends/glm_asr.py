"""GLM-ASR backend (`zai-org/GLM-ASR-Nano-2512`): a Whisper-style encoder feeding a Llama LM.

The model is prompted through its chat template: the processor's
`apply_transcription_request` puts each chunk's audio placeholder and an instruction in one
user turn, left-pads the batch and returns the log-mel features; `generate` continues after
`<|assistant|>`. Only the new tokens are decoded.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from transformers import AutoProcessor, GlmAsrForConditionalGeneration

from serve_app.backends.base import (
    MAX_CHUNK_SECONDS,
    SAMPLE_RATE,
    BackendInfo,
    ChunkResult,
    DecodeOptions,
    chunk_problem,
    encoder_windows,
    per_window,
)

# Trimmed windows of 6, 12, ... 30 s: the projector merges 4 encoder positions (50 a
# second) into one audio token, so a window must be a whole number of 2-s spans.
TRIMMED_STEP_S = 6

# `config.model_type` of GLM-ASR checkpoints; load_backend picks this family from it.
GLM_ASR_MODEL_TYPE = "glmasr"
FAMILY = "glm_asr"

# 1600 samples = 0.1 s. Below ~0.06 s the encoder yields zero audio tokens, and the LM
# would then "transcribe" a prompt with no audio in it; nothing this short holds a word.
MIN_SPEECH_SAMPLES = SAMPLE_RATE // 10

# Bound on generated tokens per second of audio. Dense speech is ~4 words/s in English
# and ~5-6 characters/s in Mandarin, each about one token; 10/s is about twice the
# densest speech, so only a degenerate repetition loop reaches it. The floor covers the
# end-of-text token and very short chunks.
TOKENS_PER_SECOND = 10
MIN_NEW_TOKENS = 16

# The model card names Mandarin, Cantonese and English as the optimised languages; the
# wider "17 languages" list is published only as an image. Codes follow Whisper
# (ISO-639-1, plus "yue" for Cantonese, which has no 639-1 code).
LANGUAGE_NAMES: dict[str, str] = {"zh": "Mandarin Chinese", "yue": "Cantonese", "en": "English"}


def is_glm_asr_config(config: Any) -> bool:
    """True for a transformers config (or anything with `model_type`) of this family."""
    return getattr(config, "model_type", None) == GLM_ASR_MODEL_TYPE


def max_new_tokens_for(n_samples: int) -> int:
    """The default generation bound for a chunk of `n_samples` samples."""
    return MIN_NEW_TOKENS + math.ceil(n_samples / SAMPLE_RATE * TOKENS_PER_SECOND)



# The LLM decoder reads the audio through a projector, with no cross-attention head that
# follows the audio in time (what Whisper's alignment heads give).
WORDS_UNAVAILABLE = ("its model has no attention that follows the audio in time; segments "
                     "are timed by the speech detector's pauses")

class GlmAsrBackend:
    """Loads one GLM-ASR checkpoint and transcribes padded batches of chunks."""

    def __init__(
        self,
        model_id: str,
        *,
        device: str,
        dtype: torch.dtype,
        revision: str | None = None,
        encoder_window: str = "full",
    ) -> None:
        windows_s, window_margin_s = encoder_windows(encoder_window, TRIMMED_STEP_S)
        self.device = torch.device(device)
        self.dtype = dtype
        self.processor = AutoProcessor.from_pretrained(model_id, revision=revision)
        self.model = GlmAsrForConditionalGeneration.from_pretrained(
            model_id, revision=revision, dtype=dtype
        )
        self.model.to(self.device).eval()
        self.info = BackendInfo(
            model_id=model_id,
            family=FAMILY,
            can_translate=False,
            languages=tuple(LANGUAGE_NAMES),
            word_timestamps_unavailable=WORDS_UNAVAILABLE,
            # The processor's Whisper feature extractor pads every chunk to 30 s; the
            # encoder (rotary positions) takes any length. It has no attention mask, so a
            # chunk's window must not depend on its batch mates: chunks share a call only
            # within one window (batching.group_for_generate), which each chunk's own
            # length decides. The language model only ever sees the audio's own tokens.
            windows_s=windows_s,
            window_margin_s=window_margin_s,
        )
        # Special-token strings (e.g. "<|assistant|>") in a user's prompt would be parsed
        # as control tokens and could end the user turn early; they are removed.
        self._control_strings = sorted(
            self.processor.tokenizer.get_added_vocab(), key=len, reverse=True
        )

    def validate_options(self, options: DecodeOptions) -> None:
        """Raise ValueError for options this model cannot honour."""
        if options.task != "transcribe":
            raise ValueError(f"task {options.task!r} is not supported: GLM-ASR only transcribes")
        if options.word_timestamps:
            raise ValueError(f"word timestamps are not available for GLM-ASR: {WORDS_UNAVAILABLE}")
        if options.language is not None and options.language not in LANGUAGE_NAMES:
            supported = ", ".join(LANGUAGE_NAMES)
            raise ValueError(f"language {options.language!r} is not supported ({supported})")
        if options.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if options.max_new_tokens is not None and options.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")

    def instruction(self, options: DecodeOptions) -> str:
        """The user-turn text for these options.

        With no hints this is exactly the processor's default instruction, the one the
        model was trained with. Language and prompt hints are appended as plain
        sentences: the model has no language token or prompt slot, and the processor's
        only hook is this free-text instruction.
        """
        base = self.processor.default_transcription_prompt
        hints: list[str] = []
        if options.language is not None:
            hints.append(f"The speech is in {LANGUAGE_NAMES[options.language]}.")
        prompt = self._strip_control(options.prompt or "")
        if prompt:
            hints.append(f"Context: {prompt}")
        return " ".join([f"{base}.", *hints]) if hints else base

    def transcribe_batch(
        self, audios: list[np.ndarray], options: DecodeOptions
    ) -> list[ChunkResult]:
        """Transcribe a padded batch; one result per input, in order.

        Invalid options or arrays come back as per-chunk errors. A failure of the model
        itself (e.g. out of memory) raises, since it is not the fault of any one chunk.
        """
        try:
            self.validate_options(options)
        except ValueError as exc:
            return [ChunkResult(error=str(exc)) for _ in audios]

        results: list[ChunkResult] = [ChunkResult() for _ in audios]
        runnable: list[int] = []
        for i, audio in enumerate(audios):
            error = chunk_problem(audio)
            if error is not None:
                results[i] = ChunkResult(error=error)
            elif audio.shape[0] < MIN_SPEECH_SAMPLES:
                results[i] = ChunkResult(text="", language=options.language)
            else:
                runnable.append(i)

        # One call per window, so batch mates never change a chunk's padding (the model
        # deployment already batches one window at a time: batching.group_for_generate).
        texts = per_window(
            self.info,
            [audios[i] for i in runnable],
            lambda chunks, window_s: self._generate(
                chunks, options, window_s or float(MAX_CHUNK_SECONDS)
            ),
        )
        for i, text in zip(runnable, texts, strict=True):
            results[i] = ChunkResult(text=text, language=options.language)
        return results

    def _generate(
        self, audios: list[np.ndarray], options: DecodeOptions, window_s: float
    ) -> list[str]:
        # Features stop at the window's end instead of at 30 s.
        inputs = self.processor.apply_transcription_request(
            audios,
            prompt=self.instruction(options),
            processor_kwargs={
                "audio_kwargs": {"padding": "max_length", "max_length": int(window_s * SAMPLE_RATE)}
            },
        )
        # Floating tensors (the log-mel features) take the model dtype, FP16 on CUDA;
        # ids and masks stay integer.
        inputs = inputs.to(self.device, dtype=self.dtype)
        # A text prefix continues the assistant's answer, which the template writes trimmed
        # right after the generation prompt; left padding keeps every row's end aligned.
        start = self._strip_control(options.text_prefix or "")
        forced = self.processor.tokenizer(start, add_special_tokens=False).input_ids if start else []
        if forced:
            rows = inputs["input_ids"].shape[0]
            ids = torch.tensor([forced], device=self.device).expand(rows, -1)
            inputs["input_ids"] = torch.cat([inputs["input_ids"], ids], dim=1)
            inputs["attention_mask"] = torch.cat(
                [inputs["attention_mask"], torch.ones_like(ids)], dim=1)
        max_new_tokens = options.max_new_tokens or max_new_tokens_for(
            max(a.shape[0] for a in audios)
        )
        sampling: dict[str, Any] = {"do_sample": False}
        if options.temperature > 0:
            sampling = {"do_sample": True, "temperature": options.temperature}
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling)
        # Left padding puts every prompt's end at the same column; the prefix is kept.
        new_tokens = output[:, inputs["input_ids"].shape[1] - len(forced) :]
        texts = self.processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [text.strip() for text in texts]

    def _strip_control(self, text: str) -> str:
        for control in self._control_strings:
            text = text.replace(control, " ")
        return " ".join(text.split())
