"""transformers' return_token_timestamps against the service's extra decoder pass.

    python -m benchmarks.token_timestamps_alternative

`return_token_timestamps` needs attention weights, which only eager attention returns; the
service decodes with SDPA and recomputes the alignment heads' scores in one extra pass
(serve_app/backends/word_timing.py). Demo model in FP32 (INT8 converts Linear layers only;
the attention is the same), full 30-s windows, 5-s clips, batch 1 and 8, best of 3.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

from benchmarks.common import DEMO_MODEL_DIR, fit, speech_clips, timestamp, write_json
from serve_app.backends import load_backend
from serve_app.backends.base import DecodeOptions


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return round(min(times), 3)


def main() -> None:
    torch.set_num_threads(2)
    clips = [fit(c.audio, 5.0) for c in speech_clips()][:8]
    path = str(DEMO_MODEL_DIR)
    processor = AutoProcessor.from_pretrained(path)
    eager = AutoModelForSpeechSeq2Seq.from_pretrained(path, attn_implementation="eager").eval()
    service = load_backend(path, device="cpu", dtype=torch.float32, quantization="none",
                           decode_threads=None, encoder_window="full")
    result = {}
    for batch in (1, 8):
        audios = clips[:batch]
        features = processor.feature_extractor(audios, sampling_rate=16_000,
                                               return_tensors="pt").input_features

        def eager_generate(token_timestamps: bool) -> None:
            with torch.inference_mode():
                eager.generate(features, language="en", task="transcribe",
                               return_token_timestamps=token_timestamps)

        row = {
            "transformers_eager_plain": best_of(lambda: eager_generate(False)),
            "transformers_eager_token_timestamps": best_of(lambda: eager_generate(True)),
            "service_plain": best_of(
                lambda: service.transcribe_batch(audios, DecodeOptions(language="en"))),
            "service_words": best_of(lambda: service.transcribe_batch(
                audios, DecodeOptions(language="en", word_timestamps=True))),
        }
        result[f"batch_{batch}"] = row
        print(batch, row, flush=True)
    print(f"wrote {write_json('token_timestamps_alternative', result, timestamp())}")


if __name__ == "__main__":
    main()
