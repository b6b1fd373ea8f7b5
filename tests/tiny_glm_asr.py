"""Build a tiny, randomly initialised GLM-ASR checkpoint that loads like the real one.

The real model, `zai-org/GLM-ASR-Nano-2512`, is 1.5B parameters and the Hub is not
reachable from tests. This checkpoint keeps everything the serving path depends on and
shrinks only the numbers:

- `config.json`: `model_type` "glmasr" with a "glmasr_encoder" audio tower and a "llama"
  text model, the same structure as the real config, tiny dimensions. The audio tower's
  `intermediate_size` stays 4 x `hidden_size` because the model folds 4 encoder frames into
  one projector input (a reshape that breaks for any other ratio).
- tokenizer: a byte-level BPE with no merges (256 byte tokens, so any text encodes) plus
  the real model's special tokens, in the GLM-4 order that makes the real config's ids line
  up: `<|endoftext|>` first, `<|user|>` 7 and `<|observation|>` 9 after it (the real
  `eos_token_id` is [59246, 59253, 59255]), `<|pad|>` 14 after it (the real
  `audio_token_id` is 59260). Padding uses `<|endoftext|>`, as the transformers
  conversion script sets (`tokenizer.pad_token = tokenizer.eos_token`).
- processor: `GlmAsrProcessor` with `WhisperFeatureExtractor(feature_size=128)` and the
  chat template of the transformers conversion script, both exactly as the real one is
  built.

Everything is written with `save_pretrained`, so `from_pretrained(output_dir)` runs the
same code as `from_pretrained("zai-org/GLM-ASR-Nano-2512")`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GenerationConfig,
    GlmAsrConfig,
    GlmAsrForConditionalGeneration,
    GlmAsrProcessor,
    TokenizersBackend,
    WhisperFeatureExtractor,
)

REAL_MODEL_ID = "zai-org/GLM-ASR-Nano-2512"
SEED = 0

# The chat template the transformers conversion script
# (src/transformers/models/glmasr/convert_glmasr_weights_to_hf.py) saves with the real
# processor; the Hub's chat_template.jinja for the model carries the same text.
REAL_CHAT_TEMPLATE = """{%- macro to_text(content) -%}
{%- if content is string -%}
{{- content -}}
{%- elif content is iterable and content is not mapping -%}
{%- for item in content -%}
{%- if item is mapping and item.type == 'text' and item.text is defined -%}
{{- item.text -}}
{%- elif item is mapping and (item.type == 'audio' or 'audio' in item) -%}
<|begin_of_audio|><|pad|><|end_of_audio|><|user|>
{% elif item is string -%}
{{- item -}}
{%- endif -%}
{%- endfor -%}
{%- else -%}
{{- content -}}
{%- endif -%}
{%- endmacro -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}
<|system|>
{{ to_text(m.content) | trim }}
{%- elif m.role == 'user' -%}
<|user|>
{{ to_text(m.content) | trim }}
{%- elif m.role == 'assistant' -%}
<|assistant|>
{{ to_text(m.content) | trim }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|assistant|>
{% endif -%}"""

# GLM-4 family special tokens in vocabulary order. Offsets from <|endoftext|> reproduce
# the real config: eos ids are offsets 0, 7, 9 and the audio token is offset 14.
# The positions of <|begin_of_audio|> / <|end_of_audio|> in the real vocabulary are
# not published in anything we could read; only their text matters to the template.
REAL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|pad|>",
    "<|begin_of_audio|>",
    "<|end_of_audio|>",
)
EOS_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")
AUDIO_TOKEN = "<|pad|>"
PAD_TOKEN = "<|endoftext|>"

N_BYTE_TOKENS = 256
# The real vocab_size (59264) is a multiple of 64 above the last token id; do the same
# so the model can emit ids the tokenizer does not know, as the real one can.
VOCAB_SIZE = 320
WEIGHT_GAIN = 2.0


def _build_tokenizer() -> TokenizersBackend:
    byte_alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(byte_alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in REAL_SPECIAL_TOKENS]
    )
    return TokenizersBackend(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token=PAD_TOKEN,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def _build_config(tokenizer: TokenizersBackend, full_size: bool = False) -> GlmAsrConfig:
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in EOS_TOKENS]
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    audio_token_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    if full_size:
        # transformers' GlmAsrConfig defaults are GLM-ASR-Nano-2512's dimensions (a 32-layer
        # 1280-wide encoder, a 28-layer 2048-wide Llama, 59264 tokens); only the special
        # token ids move to where this tokenizer has them.
        config = GlmAsrConfig(audio_token_id=audio_token_id)
        config.text_config.eos_token_id = eos_ids
        config.text_config.pad_token_id = pad_id
        return config
    audio_config = {
        "model_type": "glmasr_encoder",
        "hidden_size": 32,
        "intermediate_size": 128,  # 4 x hidden_size: 4 frames are merged per token
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_mel_bins": 128,  # must match the feature extractor's 128 mel bins
        "max_position_embeddings": 1500,  # 30 s of audio after the stride-2 conv
    }
    text_config = {
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 8192,
        "eos_token_id": eos_ids,
        "pad_token_id": pad_id,
    }
    return GlmAsrConfig(
        audio_config=audio_config, text_config=text_config, audio_token_id=audio_token_id
    )


def _widen_weights(model: torch.nn.Module) -> None:
    # The default init (std 0.02) makes a 1-layer tiny model emit one constant token
    # whatever the audio, which would hide batching bugs (every item "matches").
    # std = WEIGHT_GAIN / sqrt(fan_in) keeps activations O(1), so the output depends on
    # the audio and on every position, and greedy choices have wide margins.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, WEIGHT_GAIN * param.shape[1] ** -0.5)


def build_tiny_glm_asr(output_dir: Path) -> Path:
    """Write a tiny random GLM-ASR checkpoint (model, processor, generation config)."""
    return build_random_glm_asr(output_dir)


def build_random_glm_asr(output_dir: Path, *, full_size: bool = False, device: str = "cpu",
                         dtype: torch.dtype = torch.float32) -> Path:
    """Write a random GLM-ASR checkpoint: tiny (the tests'), or with GLM-ASR-Nano-2512's full
    dimensions for speed and memory measurements (benchmarks/gpu.py), initialised on
    `device` because 2B parameters take minutes to initialise on a CPU."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer()
    config = _build_config(tokenizer, full_size)

    torch.manual_seed(SEED)
    with torch.device(device):
        model = GlmAsrForConditionalGeneration(config).eval()
    if not full_size:
        _widen_weights(model)
    model.to(dtype)
    model.generation_config = GenerationConfig(
        eos_token_id=config.text_config.eos_token_id,
        pad_token_id=config.text_config.pad_token_id,
    )
    model.save_pretrained(output_dir)
    del model

    processor = GlmAsrProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=tokenizer,
        chat_template=REAL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(output_dir)
    return output_dir


if __name__ == "__main__":
    import sys

    print(build_tiny_glm_asr(Path(sys.argv[1])))
