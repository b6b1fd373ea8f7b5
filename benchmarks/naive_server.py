"""The baseline most tutorials build: one process, one request at a time, no batching.

    python -m benchmarks.naive_server --model models/whisper-base --port 8123

A Starlette app under uvicorn that loads WhisperBackend once and transcribes each upload
alone, behind a lock, on the request's thread. `benchmarks.run` starts it in a subprocess
and measures it over HTTP with the same client and the same audio as the service.
"""

from __future__ import annotations

import argparse
import asyncio
import io

import soundfile as sf
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from benchmarks.common import Engine

SAMPLE_RATE = 16_000


def build(model: str, threads: int, engine: Engine) -> Starlette:
    from serve_app.backends.base import DecodeOptions

    # The same weights and engine as the service, so the comparison is about serving.
    backend = engine.load(threads, model=model)
    lock = asyncio.Lock()  # one request at a time: no batching, no overlap

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def transcribe(request: Request) -> JSONResponse:
        form = await request.form()
        data = await form["file"].read()
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
        if rate != SAMPLE_RATE or audio.ndim != 1:
            return JSONResponse({"error": "send 16 kHz mono"}, status_code=400)
        async with lock:
            options = DecodeOptions(language=form.get("language") or None)
            result = await asyncio.to_thread(backend.transcribe_batch, [audio], options)
        if result[0].error:
            return JSONResponse({"error": result[0].error}, status_code=500)
        return JSONResponse({"text": result[0].text})

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/v1/audio/transcriptions", transcribe, methods=["POST"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quantization", choices=("none", "int8"), default="none")
    parser.add_argument("--encoder-window", choices=("full", "trimmed"), default="full")
    args = parser.parse_args()
    app = build(args.model, args.threads, Engine(args.quantization, args.encoder_window))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
