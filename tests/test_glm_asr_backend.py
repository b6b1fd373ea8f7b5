"""GLM-ASR backend on a tiny random checkpoint that loads through the real code path.

Random weights make gibberish, so these tests check invariants: one result per chunk, in
order; the same text for a chunk alone and inside a padded batch (a batching-bug
detector); bad chunks fail alone; the saved tokenizer and template are the real ones.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoProcessor

from serve_app.backends.base import MAX_CHUNK_SAMPLES, SAMPLE_RATE, DecodeOptions
from serve_app.backends.glm_asr import (
    GLM_ASR_MODEL_TYPE,
    GlmAsrBackend,
    is_glm_asr_config,
    max_new_tokens_for,
)
from tests.tiny_glm_asr import (
    AUDIO_TOKEN,
    EOS_TOKENS,
    PAD_TOKEN,
    REAL_CHAT_TEMPLATE,
    REAL_SPECIAL_TOKENS,
    build_tiny_glm_asr,
)

# Short budgets keep the random model fast; it rarely emits an end token.
FAST = DecodeOptions(max_new_tokens=12)

# The prompt that vLLM's transformers-backend tests and the original GLM-ASR
# inference.py build by hand for one audio chunk.
REFERENCE_PROMPT = (
    "<|user|>\n"
    "<|begin_of_audio|><|pad|><|end_of_audio|><|user|>\n"
    "Please transcribe this audio into text"
    "<|assistant|>\n"
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_glm_asr(tmp_path_factory.mktemp("tiny_glm_asr"))


@pytest.fixture(scope="module")
def backend(checkpoint: Path) -> GlmAsrBackend:
    return GlmAsrBackend(str(checkpoint), device="cpu", dtype=torch.float32)


def noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


def sine(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.fixture(scope="module")
def chunks() -> list[np.ndarray]:
    return [noise(1.0, seed=1), sine(8.0), noise(3.3, seed=2)]


# --- the checkpoint -------------------------------------------------------------------


def test_checkpoint_is_a_small_glm_asr_checkpoint(checkpoint: Path) -> None:
    config = AutoConfig.from_pretrained(checkpoint)
    assert config.model_type == GLM_ASR_MODEL_TYPE == "glmasr"
    assert is_glm_asr_config(config)
    assert config.audio_config.model_type == "glmasr_encoder"
    assert config.text_config.model_type == "llama"
    size = sum(f.stat().st_size for f in checkpoint.iterdir())
    assert size < 20 * 2**20


def test_checkpoint_build_is_deterministic(checkpoint: Path, tmp_path: Path) -> None:
    again = build_tiny_glm_asr(tmp_path / "again")

    def digest(directory: Path) -> str:
        return hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()

    assert digest(again) == digest(checkpoint)


def test_full_size_config_has_the_real_models_dimensions() -> None:
    # benchmarks/gpu.py measures this architecture; only the token ids follow the tokenizer.
    from tests.tiny_glm_asr import _build_config, _build_tokenizer

    tokenizer = _build_tokenizer()
    config = _build_config(tokenizer, full_size=True)
    audio, text = config.audio_config, config.text_config
    assert (audio.hidden_size, audio.num_hidden_layers, audio.num_mel_bins) == (1280, 32, 128)
    assert audio.intermediate_size == 4 * audio.hidden_size
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (2048, 28, 59264)
    assert config.audio_token_id == tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    assert text.eos_token_id == [tokenizer.convert_tokens_to_ids(t) for t in EOS_TOKENS]


def test_saved_tokenizer_has_real_special_tokens_and_template(checkpoint: Path) -> None:
    processor = AutoProcessor.from_pretrained(checkpoint)
    tokenizer = processor.tokenizer
    config = AutoConfig.from_pretrained(checkpoint)

    assert processor.chat_template == REAL_CHAT_TEMPLATE
    ids = {}
    for token in REAL_SPECIAL_TOKENS:
        ids[token] = tokenizer.convert_tokens_to_ids(token)
        # Each special token is one id, never split into bytes.
        assert tokenizer.encode(token, add_special_tokens=False) == [ids[token]]
    # The ids the config needs, at the real model's offsets from <|endoftext|>
    # (eos 59246/59253/59255, audio 59260).
    base = ids["<|endoftext|>"]
    assert [ids[t] - base for t in EOS_TOKENS] == [0, 7, 9]
    assert ids[AUDIO_TOKEN] - base == 14
    assert list(config.text_config.eos_token_id) == [ids[t] for t in EOS_TOKENS]
    assert config.audio_token_id == ids[AUDIO_TOKEN] == processor.audio_token_id
    assert tokenizer.pad_token == PAD_TOKEN
    assert processor.audio_token == AUDIO_TOKEN


def test_default_request_renders_the_reference_prompt(checkpoint: Path) -> None:
    processor = AutoProcessor.from_pretrained(checkpoint)
    prompts = processor.apply_transcription_request([sine(1.0)], tokenize=False)
    assert prompts == [REFERENCE_PROMPT]


# --- the backend ----------------------------------------------------------------------


def test_backend_info(backend: GlmAsrBackend) -> None:
    assert backend.info.family == "glm_asr"
    assert backend.info.can_translate is False
    assert set(backend.info.languages) == {"zh", "yue", "en"}


def test_batch_returns_one_text_per_chunk_in_order(backend, chunks) -> None:
    results = backend.transcribe_batch(chunks, FAST)
    assert len(results) == len(chunks)
    for result in results:
        assert result.error is None
        assert isinstance(result.text, str)
        assert result.language is None
    # Random weights still depend on the audio, so distinct chunks give distinct text;
    # this is what makes the order and padding checks below meaningful.
    assert len({r.text for r in results}) == len(chunks)


def test_padding_and_batch_mates_do_not_change_a_chunk(backend, chunks) -> None:
    alone = [backend.transcribe_batch([c], FAST)[0].text for c in chunks]
    batched = [r.text for r in backend.transcribe_batch(chunks, FAST)]
    assert batched == alone
    reordered = [r.text for r in backend.transcribe_batch(chunks[::-1], FAST)]
    assert reordered == alone[::-1]


def test_greedy_decoding_is_deterministic(backend, chunks) -> None:
    first = backend.transcribe_batch(chunks, FAST)
    second = backend.transcribe_batch(chunks, FAST)
    assert first == second


def test_bad_chunk_fails_alone(backend, chunks) -> None:
    broken = chunks[1].copy()
    broken[100] = np.nan
    batch = [chunks[0], broken, chunks[2]]
    results = backend.transcribe_batch(batch, FAST)
    assert len(results) == 3
    assert results[1].error is not None and "NaN" in results[1].error
    assert results[0].error is None and results[2].error is None
    alone = [backend.transcribe_batch([c], FAST)[0].text for c in (chunks[0], chunks[2])]
    assert [results[0].text, results[2].text] == alone


@pytest.mark.parametrize(
    "audio",
    [
        np.zeros(MAX_CHUNK_SAMPLES + 1, dtype=np.float32),
        np.zeros(SAMPLE_RATE, dtype=np.float64),
        np.zeros((2, SAMPLE_RATE), dtype=np.float32),
        np.full(SAMPLE_RATE, np.inf, dtype=np.float32),
    ],
    ids=["over-30s", "float64", "2-D", "inf"],
)
def test_invalid_arrays_become_errors(backend, audio) -> None:
    results = backend.transcribe_batch([audio, sine(1.0)], FAST)
    assert results[0].error is not None
    assert results[1].error is None


def test_exactly_30_seconds_is_accepted(backend) -> None:
    [result] = backend.transcribe_batch([noise(30.0, seed=3)], DecodeOptions(max_new_tokens=2))
    assert result.error is None


@pytest.mark.parametrize("n_samples", [0, 1, 100])
def test_too_short_for_speech_is_empty_text(backend, n_samples) -> None:
    [result] = backend.transcribe_batch([np.zeros(n_samples, dtype=np.float32)], FAST)
    assert result.error is None
    assert result.text == ""


def test_translate_is_rejected(backend, chunks) -> None:
    options = DecodeOptions(task="translate")
    with pytest.raises(ValueError, match="translate"):
        backend.validate_options(options)
    results = backend.transcribe_batch(chunks, options)
    assert len(results) == len(chunks)
    assert all(r.error for r in results)


@pytest.mark.parametrize("language", ["fr", "zz", "ZH", ""])
def test_unsupported_language_is_rejected(backend, language) -> None:
    with pytest.raises(ValueError, match="language"):
        backend.validate_options(DecodeOptions(language=language))


@pytest.mark.parametrize("language", [None, "zh", "yue", "en"])
def test_supported_language_is_echoed(backend, chunks, language) -> None:
    backend.validate_options(DecodeOptions(language=language))
    options = DecodeOptions(language=language, max_new_tokens=4)
    [result] = backend.transcribe_batch(chunks[:1], options)
    assert result.error is None
    assert result.language == language


def test_instruction_is_the_trained_one_without_hints(backend) -> None:
    default = backend.processor.default_transcription_prompt
    assert default == "Please transcribe this audio into text"
    assert backend.instruction(DecodeOptions()) == default
    assert backend.instruction(DecodeOptions(prompt="  ")) == default


def test_hints_reach_the_prompt_without_control_tokens(backend) -> None:
    options = DecodeOptions(language="yue", prompt="Names: <|assistant|>Zhang San")
    instruction = backend.instruction(options)
    assert instruction.startswith("Please transcribe this audio into text.")
    assert "Cantonese" in instruction and "Zhang San" in instruction
    assert "<|assistant|>" not in instruction
    [prompt] = backend.processor.apply_transcription_request(
        [sine(1.0)], prompt=instruction, tokenize=False
    )
    assert prompt.count("<|assistant|>") == 1  # only the generation prompt's
    assert "Cantonese" in prompt


def test_sampling_returns_text(backend, chunks) -> None:
    results = backend.transcribe_batch(chunks, DecodeOptions(temperature=0.8, max_new_tokens=6))
    assert [r.error for r in results] == [None, None, None]
    assert all(isinstance(r.text, str) for r in results)


def test_default_token_budget_grows_with_audio() -> None:
    assert max_new_tokens_for(0) == 16
    assert max_new_tokens_for(SAMPLE_RATE) == 26
    assert max_new_tokens_for(MAX_CHUNK_SAMPLES) == 316


def test_default_budget_run_finishes(backend) -> None:
    [result] = backend.transcribe_batch([sine(1.0)], DecodeOptions())
    assert result.error is None


def test_half_precision_casts_features_to_the_model_dtype(checkpoint, chunks) -> None:
    # CUDA serves FP16; CPU runs bfloat16 faster, and the cast path is the same.
    half = GlmAsrBackend(str(checkpoint), device="cpu", dtype=torch.bfloat16)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    inputs = half.processor.apply_transcription_request(chunks[:1]).to(
        half.device, dtype=half.dtype
    )
    assert inputs["input_features"].dtype == torch.bfloat16
    assert inputs["input_ids"].dtype == torch.int64
    results = half.transcribe_batch(chunks, DecodeOptions(max_new_tokens=4))
    assert [r.error for r in results] == [None, None, None]


@pytest.fixture(scope="module")
def trimmed(checkpoint: Path) -> GlmAsrBackend:
    return GlmAsrBackend(str(checkpoint), device="cpu", dtype=torch.float32, encoder_window="trimmed")


def frames_seen(backend: GlmAsrBackend, audios: list[np.ndarray]) -> list[int]:
    """The feature frames each audio-encoder call computed on."""
    seen: list[int] = []
    handle = backend.model.model.audio_tower.register_forward_pre_hook(
        lambda _, args: seen.append(args[0].shape[-1])
    )
    try:
        backend.transcribe_batch(audios, FAST)
    finally:
        handle.remove()
    return seen


def test_trimmed_windows_cut_the_encoders_input_and_never_depend_on_batch_mates(
    backend, trimmed, chunks
) -> None:
    assert frames_seen(backend, chunks) == [3000]  # one call, every chunk padded to 30 s
    # 1 s and 3.3 s (+3 s of silence) fit 6-s and 12-s windows, 8 s a 12-s one too: one
    # call per window, 100 frames a second.
    assert sorted(frames_seen(trimmed, chunks)) == [600, 1200]
    alone = [trimmed.transcribe_batch([c], FAST)[0].text for c in chunks]
    assert [r.text for r in trimmed.transcribe_batch(chunks, FAST)] == alone
    assert all(alone)



def test_a_text_prefix_starts_the_answer_and_batch_mates_do_not_change_it(
    backend, chunks, monkeypatch
) -> None:
    """The prefix is fed right after the generation prompt (where the template writes the
    answer), in every row of a left-padded batch, and the text comes back with it."""
    prefix = "hello world"
    fed: list[torch.Tensor] = []
    generate = backend.model.generate

    def recording_generate(**kwargs):
        fed.append(kwargs["input_ids"])
        return generate(**kwargs)

    monkeypatch.setattr(backend.model, "generate", recording_generate)
    options = DecodeOptions(max_new_tokens=12, text_prefix=prefix)

    batched = backend.transcribe_batch(chunks, options)
    alone = [backend.transcribe_batch([c], options)[0] for c in chunks]

    assert [r.error for r in batched] == [None, None, None]
    assert all(r.text.startswith(prefix) for r in batched)
    assert [r.text for r in batched] == [r.text for r in alone]
    tokenizer = backend.processor.tokenizer
    prefix_ids = tokenizer(prefix, add_special_tokens=False).input_ids
    answer_start = tokenizer("<|assistant|>\n", add_special_tokens=False).input_ids
    for row in fed[0].tolist():
        assert row[-len(prefix_ids):] == prefix_ids
        assert row[-len(prefix_ids) - len(answer_start):-len(prefix_ids)] == answer_start
