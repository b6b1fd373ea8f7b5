"""The offline demo checkpoint: CTranslate2 parsing, a model that transcribes, idempotence."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor, GenerationConfig

from serve_app import demo_model
from serve_app.demo_model import ensure_demo_model, read_ct2_model
from tests.speech import load_speech_fixtures, word_error_rate

MAX_CORPUS_WER = 0.20  # whisper-base scores ~0.02-0.05 on the espeak-ng fixtures


@pytest.fixture(scope="module")
def model_and_processor(demo_model_path: Path):
    model = AutoModelForSpeechSeq2Seq.from_pretrained(demo_model_path, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(demo_model_path)


def test_checkpoint_is_whisper_base_with_a_complete_generation_config(
    demo_model_path: Path,
) -> None:
    gen = GenerationConfig.from_pretrained(demo_model_path)
    # whisper-base's cross-attention heads that follow the audio (for word timestamps)
    assert gen.alignment_heads == [[3, 1], [4, 2], [4, 3], [4, 7], [5, 1], [5, 2], [5, 4], [5, 6]]
    assert len(gen.lang_to_id) == 99 and gen.lang_to_id["<|en|>"] == 50259
    assert gen.task_to_id == {"transcribe": 50359, "translate": 50358}
    assert gen.is_multilingual and gen.max_length == 448
    assert (gen.decoder_start_token_id, gen.no_timestamps_token_id) == (50258, 50363)
    assert gen.begin_suppress_tokens == [220, 50257] and 50362 in gen.suppress_tokens


def test_checkpoint_loads_with_whisper_shapes(model_and_processor) -> None:
    model, processor = model_and_processor
    config = model.config
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (512, 6, 6)
    assert (config.encoder_attention_heads, config.vocab_size, config.num_mel_bins) == (
        8,
        51865,
        80,
    )
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert processor.feature_extractor.feature_size == 80
    tokenizer = processor.tokenizer
    assert len(tokenizer) == 51865 and tokenizer.convert_ids_to_tokens(51864) == "<|30.00|>"
    # The packaged tokenizer.json lacks the merge "Ġ t"; with it restored, text encodes as in
    # openai/whisper (" this" is one token, 341, not " " + "this").
    assert tokenizer(" this is a test", add_special_tokens=False).input_ids == [
        341,
        307,
        257,
        1500,
    ]


def test_transcribes_the_fixtures(model_and_processor) -> None:
    model, processor = model_and_processor
    fixtures = load_speech_fixtures()
    features = processor(
        [f.audio for f in fixtures],
        sampling_rate=16_000,
        return_tensors="pt",
        return_attention_mask=True,
    )
    with torch.inference_mode():
        ids = model.generate(
            features.input_features,
            attention_mask=features.attention_mask,
            language="en",
            task="transcribe",
        )
        translated = model.generate(features.input_features[:1], language="en", task="translate")
    hyps = processor.batch_decode(ids, skip_special_tokens=True)
    assert word_error_rate([f.text for f in fixtures], hyps) < MAX_CORPUS_WER
    assert "fox" in processor.decode(translated[0], skip_special_tokens=True).lower()


def test_second_ensure_is_a_no_op(demo_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*_args, **_kwargs):
        raise AssertionError("a complete checkpoint was rebuilt")

    monkeypatch.setattr(demo_model, "_convert", must_not_run)
    monkeypatch.setattr(demo_model, "_data_dirs", must_not_run)
    before = {p.name: p.stat().st_mtime_ns for p in demo_model_path.iterdir()}

    assert ensure_demo_model(demo_model_path) == demo_model_path
    assert {p.name: p.stat().st_mtime_ns for p in demo_model_path.iterdir()} == before


def test_interrupted_build_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_then_crash(_dirs, out: Path) -> None:
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_model, "_data_dirs", lambda: [])
    monkeypatch.setattr(demo_model, "_convert", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_model(tmp_path / "whisper-base")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_is_not_a_demo_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        ensure_demo_model(tmp_path)


def _ct2_blob(
    variables: list[tuple[str, np.ndarray, int]], aliases: list[tuple[str, str]]
) -> bytes:
    """A CTranslate2 model.bin (binary version 6) holding the given (name, array, dtype id)."""

    def string(text: str) -> bytes:
        data = text.encode() + b"\0"
        return struct.pack("<H", len(data)) + data

    out = struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for name, array, dtype_id in variables:
        raw = array.tobytes()
        out += (
            string(name)
            + struct.pack("<B", array.ndim)
            + struct.pack(f"<{array.ndim}I", *array.shape)
        )
        out += struct.pack("<BI", dtype_id, len(raw)) + raw
    out += struct.pack("<I", len(aliases))
    return out + b"".join(string(a) + string(t) for a, t in aliases)


def test_read_ct2_model_handles_float16_int8_with_scales_bfloat16_and_aliases() -> None:
    half = np.arange(6, dtype=np.float16).reshape(2, 3) / 4
    weights = np.array([[0.5, -1.0], [0.25, 0.125]], dtype=np.float32)
    scale = (127 / np.abs(weights).max(axis=1)).astype(np.float32)
    quantized = np.round(weights * scale[:, None]).astype(np.int8)
    bf16 = (np.array([1.5, -2.0], dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    blob = _ct2_blob(
        [
            ("a/weight", half, 4),
            ("q/weight", quantized, 1),
            ("q/weight_scale", scale, 0),
            ("b/bias", bf16, 5),
            ("heads", np.array(8, dtype=np.int16), 2),
        ],
        [("tied/weight", "a/weight")],
    )

    variables = read_ct2_model(blob)

    assert variables["a/weight"].dtype == np.float16 and np.array_equal(
        variables["a/weight"], half
    )
    np.testing.assert_allclose(variables["q/weight"], weights, atol=1 / 127)
    assert "q/weight_scale" not in variables
    assert variables["b/bias"].tolist() == [1.5, -2.0]
    assert int(variables["heads"]) == 8
    assert variables["tied/weight"] is variables["a/weight"]
    with pytest.raises(ValueError, match="after the last"):
        read_ct2_model(blob + b"\0")
