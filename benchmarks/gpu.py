"""What only a GPU shows: FP16 against FP32 on a Whisper checkpoint, the full-size
GLM-ASR-Nano-2512 architecture (random weights) at batch 1-64, and the cost of a live
re-decode.

    python -m benchmarks.gpu run --whisper models/whisper-base --clips DIR --out gpu.json
    python -m benchmarks.gpu report gpu.json        # word error rates and tables, any machine

`run` needs torch, transformers and numpy only (what a GPU image has; no Ray, no librosa),
and calls the backends the model deployment calls (`serve_app/backends/`). Its phases:

1. whisper  the checkpoint in FP32 and in FP16, full 30-s and trimmed encoder windows, at
            batch 1, 8 and 32 over every clip (16-kHz mono WAVs with a manifest.json of
            their texts, as benchmarks/make_espeak_eval_set.sh writes them, plus the
            committed fixtures up to 30 s): clips/s, and each clip's text at every batch
            size, so `report` can score both precisions and count the clips whose text
            FP16, or a batch size, changes;
2. glm      GLM-ASR-Nano-2512's dimensions (tests/tiny_glm_asr.py with `full_size`), random
            weights, saved and loaded through the backend like the real checkpoint, in
            FP16; batches of 1-64 five-second clips of speech, each forced to 40 new tokens
            (about what 5 s of speech takes), in full and trimmed windows: median and p95
            batch latency, clips/s, and the first batch of each size (`--glm-cache
            static` compiles there);
3. live     the Whisper checkpoint in FP16 with trimmed windows, as live sessions decode:
            a turn of 2-15 s decoded whole and continuing its first words (`text_prefix`),
            alone and with 7 other streams' turns in the same batch.

Each timing follows a warm-up of the same shapes. FP32 runs with PyTorch's defaults (no
TF32 for matrix products, TF32 for convolutions), as the service does.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "data" / "speech"
SAMPLE_RATE = 16_000
MAX_CLIP_S = 30
LANGUAGE = "en"

WHISPER_BATCHES = (1, 8, 32)
GLM_BATCHES = (1, 2, 4, 8, 16, 32, 64)
GLM_CLIP_S = 5.0
GLM_NEW_TOKENS = 40  # about what 5 s of speech takes; forced so random weights cannot stop early
LIVE_TURNS_S = (2.0, 5.0, 10.0, 15.0)
LIVE_STREAMS = 8
MIN_TIMED_S = 2.0  # repeat a timing until it covers this much, and at least MIN_REPEATS times
MIN_REPEATS = 3


def read_wav(path: Path) -> np.ndarray:
    """16-kHz mono 16-bit PCM, as float32 in [-1, 1]."""
    with wave.open(str(path)) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise ValueError(f"{path.name}: not 16-kHz mono 16-bit PCM")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def load_clips(directories: list[Path]) -> list[dict]:
    """Every clip of up to 30 s in each directory's manifest.json, with its text."""
    clips = []
    for directory in directories:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        for name, text in manifest.items():
            audio = read_wav(directory / name)
            if audio.shape[0] <= MAX_CLIP_S * SAMPLE_RATE:
                clips.append({"name": f"{directory.name}/{name}", "text": text, "audio": audio})
    return clips


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(run: Callable[[], object], repeats: int = MIN_REPEATS,
          warm_up: Callable[[], object] | None = None) -> list[float]:
    """Seconds of each run after a warm-up (the run itself unless given), repeated
    `repeats` times and for MIN_TIMED_S."""
    (warm_up or run)()
    synchronize()
    seconds: list[float] = []
    while len(seconds) < repeats or sum(seconds) < MIN_TIMED_S:
        started = time.perf_counter()
        run()
        synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


def p95(values: list[float]) -> float:
    # Not benchmarks.common.percentile: that module needs soundfile and httpx, which `run`
    # does without (a GPU image has neither).
    return float(np.percentile(values, 95))


def environment(device: str) -> dict:
    import torch
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    return info


def load_whisper(model: str, device: str, dtype_name: str, window: str):
    import torch

    from serve_app.backends.whisper import WhisperBackend

    return WhisperBackend(model, device=device, dtype=getattr(torch, dtype_name),
                          encoder_window=window)


def free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def whisper_phase(model: str, clips: list[dict], device: str, rows: list[dict],
                  saved: Callable[[], None]) -> None:
    from serve_app.backends.base import DecodeOptions

    options = DecodeOptions(language=LANGUAGE)
    audios = [clip["audio"] for clip in clips]
    audio_s = sum(a.shape[0] for a in audios) / SAMPLE_RATE
    for dtype_name in ("float32", "float16"):
        for window in ("full", "trimmed"):
            backend = load_whisper(model, device, dtype_name, window)
            for batch in WHISPER_BATCHES:
                texts: list[str] = []

                def one_pass() -> None:
                    texts.clear()
                    for start in range(0, len(audios), batch):
                        results = backend.transcribe_batch(audios[start:start + batch], options)
                        texts.extend(r.error or r.text for r in results)

                # A pass is every clip already; one batch warms the shapes up.
                seconds = timed(one_pass, repeats=2,
                                warm_up=lambda: backend.transcribe_batch(audios[:batch], options))
                rows.append({
                    "dtype": dtype_name, "window": window, "batch": batch,
                    "pass_s": statistics.median(seconds), "passes": len(seconds),
                    "clips_per_s": len(audios) / statistics.median(seconds),
                    "audio_s_per_s": audio_s / statistics.median(seconds),
                    "texts": list(texts),
                })
                print(f"whisper {dtype_name} {window} batch {batch}: "
                      f"{rows[-1]['clips_per_s']:.1f} clips/s", flush=True)
                saved()
            backend = None  # its weights go before the next load
            free(device)


@functools.cache
def long_fixture() -> np.ndarray:
    return read_wav(FIXTURES / "long_45s.wav")


def speech_slices(seconds: float, count: int) -> list[np.ndarray]:
    """`count` different `seconds`-long slices of the committed long speech fixture."""
    audio = long_fixture()
    n = int(seconds * SAMPLE_RATE)
    step = max(1, (audio.shape[0] - n) // max(1, count))
    return [audio[i * step:i * step + n].copy() for i in range(count)]


def glm_phase(device: str, full_size: bool, cache: str | None, result: dict,
              saved: Callable[[], None]) -> None:
    import torch

    from serve_app.backends.base import DecodeOptions
    from serve_app.backends.glm_asr import GlmAsrBackend
    from tests.tiny_glm_asr import build_random_glm_asr

    dtype = torch.float16 if device == "cuda" else torch.float32
    result.update(full_size=full_size, dtype=str(dtype).removeprefix("torch."), cache=cache,
                  new_tokens=GLM_NEW_TOKENS, clip_s=GLM_CLIP_S, rows=[])
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        build_random_glm_asr(Path(tmp), full_size=full_size, device=device, dtype=dtype)
        result["build_s"] = time.perf_counter() - started
        result["checkpoint_gib"] = sum(
            f.stat().st_size for f in Path(tmp).glob("*.safetensors")) / 2**30
        options = DecodeOptions(max_new_tokens=GLM_NEW_TOKENS)
        for window in ("full", "trimmed"):
            started = time.perf_counter()
            backend = GlmAsrBackend(tmp, device=device, dtype=dtype, encoder_window=window)
            synchronize()
            result.setdefault("load_s", {})[window] = time.perf_counter() - started
            result["parameters"] = sum(p.numel() for p in backend.model.parameters())
            # Random weights may pick an end token at any step; every clip makes 40 tokens.
            backend.model.generation_config.min_new_tokens = GLM_NEW_TOKENS
            if cache:  # "static": transformers compiles the decoding step on CUDA
                backend.model.generation_config.cache_implementation = cache
            for batch in GLM_BATCHES:
                audios = speech_slices(GLM_CLIP_S, batch)
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                started = time.perf_counter()  # the first batch of a shape: compiles
                backend.transcribe_batch(audios, options)
                synchronize()
                first_s = time.perf_counter() - started
                seconds = timed(lambda: backend.transcribe_batch(audios, options),
                                warm_up=lambda: None)
                row = {
                    "window": window, "batch": batch, "first_s": first_s,
                    "median_s": statistics.median(seconds), "p95_s": p95(seconds),
                    "clips_per_s": batch / statistics.median(seconds), "repeats": len(seconds),
                }
                if device == "cuda":
                    row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
                result["rows"].append(row)
                print(f"glm {window} batch {batch}: {row['clips_per_s']:.1f} clips/s, "
                      f"median {row['median_s']:.3f} s", flush=True)
                saved()
            backend = None  # its weights go before the next load
            free(device)


def live_phase(model: str, device: str, rows: list[dict], saved: Callable[[], None]) -> None:
    from serve_app.backends.base import DecodeOptions

    dtype_name = "float16" if device == "cuda" else "float32"
    backend = load_whisper(model, device, dtype_name, "trimmed")
    options = DecodeOptions(language=LANGUAGE)
    for turn_s in LIVE_TURNS_S:
        turns = speech_slices(turn_s, LIVE_STREAMS)
        # The words a session has sent by then: the first two thirds of the turn's text.
        heard = [r.text for r in backend.transcribe_batch(turns, options)]
        prefixes = [" ".join(t.split()[: len(t.split()) * 2 // 3]) or None for t in heard]
        for streams in (1, LIVE_STREAMS):
            for continued in (False, True):
                def decode() -> None:
                    # Streams share a batch only when their options match: a continued
                    # decode of each stream is its own call, as the model deployment runs it.
                    if continued:
                        for audio, prefix in zip(turns[:streams], prefixes[:streams]):
                            backend.transcribe_batch(
                                [audio], DecodeOptions(language=LANGUAGE, text_prefix=prefix))
                    else:
                        backend.transcribe_batch(turns[:streams], options)

                seconds = timed(decode)
                rows.append({"turn_s": turn_s, "streams": streams, "continued": continued,
                             "median_s": statistics.median(seconds), "p95_s": p95(seconds)})
                print(f"live {turn_s:.0f} s x{streams} {'continued' if continued else 'whole'}: "
                      f"{rows[-1]['median_s'] * 1000:.0f} ms", flush=True)
                saved()


def run(args: argparse.Namespace) -> None:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out: dict = {"environment": environment(device), "started": time.time()}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after each measurement, so a run cut short keeps what it measured
        args.out.write_text(json.dumps(out, indent=1), encoding="utf-8")

    phases = args.phases.split(",")
    if "glm" in phases:
        glm_phase(device, not args.tiny_glm, args.glm_cache, out.setdefault("glm", {}), save)
    if "whisper" in phases:
        clips = load_clips([*args.clips, FIXTURES])[: args.max_clips]
        out["clips"] = [{"name": c["name"], "text": c["text"],
                         "seconds": c["audio"].shape[0] / SAMPLE_RATE} for c in clips]
        whisper_phase(args.whisper, clips, device, out.setdefault("whisper", []), save)
    if "live" in phases:
        live_phase(args.whisper, device, out.setdefault("live", []), save)


def report(path: Path) -> str:
    """Markdown tables of a run's figures, with word error rates against the clips' texts."""
    from benchmarks.accuracy import word_error_rate  # jiwer: here, not on the GPU machine

    data = json.loads(path.read_text(encoding="utf-8"))
    env = data["environment"]
    lines = [f"{env.get('gpu', env['device'])}, torch {env['torch']}, "
             f"transformers {env['transformers']}", ""]
    if "whisper" in data:
        references = [c["text"] for c in data["clips"]]
        rows = data["whisper"]
        canonical = {(r["dtype"], r["window"]): r["texts"] for r in rows if r["batch"] == 1}
        canonical.setdefault(("float32", "trimmed"), canonical.get(("float32", "full"), []))
        lines += ["| precision | window | batch | clips/s | audio s/s | WER | texts unlike FP32's |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            fp32 = canonical[("float32", r["window"])]
            changed = sum(a != b for a, b in zip(r["texts"], fp32, strict=True))
            lines.append(
                f"| {r['dtype']} | {r['window']} | {r['batch']} | {r['clips_per_s']:.1f} | "
                f"{r['audio_s_per_s']:.0f} | {word_error_rate(references, r['texts']):.3f} | "
                f"{changed} of {len(fp32)} |")
        lines.append("")
    if "glm" in data:
        glm = data["glm"]
        lines += [f"GLM-ASR ({glm['parameters'] / 1e9:.2f} B parameters, {glm['dtype']}, "
                  f"{glm['checkpoint_gib']:.1f} GiB checkpoint, load "
                  + ", ".join(f"{w} {s:.1f} s" for w, s in glm["load_s"].items())
                  + f"), {glm['clip_s']:.0f}-s clips, {glm['new_tokens']} new tokens each, "
                  f"{glm.get('cache') or 'default'} cache", "",
                  "| window | batch | clips/s | median batch s | p95 batch s | first batch s "
                  "| peak GiB |",
                  "|---|---|---|---|---|---|---|"]
        for r in glm["rows"]:
            lines.append(f"| {r['window']} | {r['batch']} | {r['clips_per_s']:.1f} | "
                         f"{r['median_s']:.3f} | {r['p95_s']:.3f} | "
                         f"{r.get('first_s', float('nan')):.2f} | "
                         f"{r.get('peak_gib', float('nan')):.1f} |")
        lines.append("")
    if "live" in data:
        lines += ["| turn s | streams | decode | median ms | p95 ms |", "|---|---|---|---|---|"]
        for r in data["live"]:
            kind = "continued" if r["continued"] else "whole"
            lines.append(f"| {r['turn_s']:.0f} | {r['streams']} | {kind} | "
                         f"{r['median_s'] * 1000:.0f} | {r['p95_s'] * 1000:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="measure on this machine's GPU")
    run_parser.add_argument("--whisper", default="models/whisper-base",
                            help="a Whisper checkpoint directory or hub id")
    run_parser.add_argument("--clips", type=Path, action="append", default=[],
                            help="a directory of 16-kHz WAVs and their manifest.json; repeatable")
    run_parser.add_argument("--phases", default="glm,whisper,live")
    run_parser.add_argument("--glm-cache", choices=("static",), default=None,
                            help="GLM-ASR's KV cache: transformers' default, or static "
                            "(compiled on CUDA; each new shape compiles first)")
    run_parser.add_argument("--max-clips", type=int, default=None,
                            help="use only the first N clips (a smoke run)")
    run_parser.add_argument("--device", choices=("cuda", "cpu"), default=None)
    run_parser.add_argument("--tiny-glm", action="store_true",
                            help="the tests' tiny GLM-ASR instead of the full size (a CPU smoke run)")
    run_parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.json"))
    report_parser = sub.add_parser("report", help="tables of a run, with word error rates")
    report_parser.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args)
    else:
        print(report(args.results))


if __name__ == "__main__":
    sys.exit(main())
