"""Model families behind one interface; the family is read from the checkpoint's config.

Importing this package is cheap and torch-free (the ingress imports the option types);
torch and transformers load only when a backend is built inside the model deployment.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from serve_app.backends.base import ASRBackend, BackendInfo, ChunkResult, DecodeOptions

if TYPE_CHECKING:
    import torch

__all__ = [
    "ASRBackend",
    "BackendInfo",
    "ChunkResult",
    "DecodeOptions",
    "load_backend",
    "resolve_device",
    "resolve_dtype",
    "resolve_quantization",
]

# config.model_type -> family; a new family is one file plus one line here.
FAMILIES = {"whisper": "whisper", "glmasr": "glm_asr"}


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was configured but no GPU is visible")
    return setting


def resolve_dtype(setting: str, device: str) -> "torch.dtype":
    """FP16 on GPUs (half the memory, tensor cores); FP32 on CPU, where FP16 is slow."""
    import torch

    if setting == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    return getattr(torch, setting)


def resolve_quantization(setting: str, device: str) -> str:
    """The configured quantization, refused where it cannot run (int8 is CPU-only)."""
    if setting == "int8" and device != "cpu":
        raise ValueError(
            f"quantization int8 runs on CPU only, but this replica runs on {device}; "
            "on a GPU leave quantization 'none' (float16 is the fast path there)"
        )
    return setting


def detect_family(model_id: str, revision: str | None = None) -> str:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_id, revision=revision)
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise ValueError(
            f"{model_id}: model_type {config.model_type!r} is not a supported ASR family "
            f"(supported: {', '.join(sorted(FAMILIES))})"
        )
    return family


def load_backend(
    model_id: str,
    *,
    device: str,
    dtype: "torch.dtype",
    revision: str | None = None,
    quantization: str = "none",
    decode_threads: int | None = None,
    encoder_window: str = "full",
    timings: dict[str, float] | None = None,
) -> ASRBackend:
    """The backend of `model_id`'s family; `timings`, when given, receives the seconds spent
    importing the family's code, loading weights and quantizing (a cold start's parts)."""
    timings = {} if timings is None else timings
    quantization = resolve_quantization(quantization, device)
    family = detect_family(model_id, revision)
    started = time.monotonic()
    if family == "whisper":
        import serve_app.backends.whisper  # noqa: F401 - torch and transformers' Whisper
    else:
        import serve_app.backends.glm_asr  # noqa: F401
    timings["imports_s"] = time.monotonic() - started
    started = time.monotonic()
    backend: ASRBackend
    if family == "whisper":
        from serve_app.backends.whisper import WhisperBackend

        backend = WhisperBackend(
            model_id,
            device=device,
            dtype=dtype,
            revision=revision,
            decode_threads=decode_threads,
            encoder_window=encoder_window,
        )
    else:
        from serve_app.backends.glm_asr import GlmAsrBackend

        # decode_threads does not apply: GLM-ASR encodes the audio inside generate.
        backend = GlmAsrBackend(
            model_id, device=device, dtype=dtype, revision=revision, encoder_window=encoder_window
        )
    timings["weights_s"] = time.monotonic() - started
    if quantization == "int8":
        from serve_app.backends.int8 import quantize_linear_layers

        started = time.monotonic()
        quantize_linear_layers(backend.model)
        timings["int8_s"] = time.monotonic() - started
    return backend
