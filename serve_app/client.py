"""asr-client: transcribe files or whole folders against the ASR service.

Self-contained on purpose: people install it on laptops, so it imports only httpx, tqdm and
the standard library, never ray, torch or the server's modules. It asks the server for the
exact output format, so files hold the server's own rendering, and it never decodes audio.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import mimetypes
import os
import random
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Literal, Sequence

import httpx
from tqdm import tqdm

AUDIO_EXTENSIONS = frozenset(
    ".flac .mp3 .mp4 .mpeg .mpga .m4a .ogg .oga .opus .wav .webm".split()
)  # the containers OpenAI's endpoint accepts; other files in a folder are ignored
# Output format -> the server's response_format. json asks for verbose_json: segments,
# language and duration are worth keeping, and the duration feeds the progress bar.
SERVER_FORMATS = {"txt": "text", "srt": "srt", "vtt": "vtt", "json": "verbose_json"}
ENDPOINT = "/v1/audio/transcriptions"
DURATION_HEADER = "X-Audio-Duration"  # seconds as a float; absent on older servers

# 429/503 mean "come back later" (Retry-After says when); 502/504 are a proxy that lost
# its upstream for a moment. Any other status is the answer for this file.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
BACKOFF_BASE_S = 0.5  # first retry after ~0.5 s, doubling: 5 retries span ~15 s in all
BACKOFF_MAX_S = 30.0
MAX_RETRY_AFTER_S = 300.0  # a longer Retry-After is likely a misconfiguration; don't hang
DEFAULT_TIMEOUT_S = 3600.0  # the server's own request limit: hour-long files take minutes
CONNECT_TIMEOUT_S = 10.0

Status = Literal["done", "skipped", "failed"]


@dataclass(frozen=True)
class Job:
    source: Path
    output: Path
    problem: str = ""  # set when the job can't run at all (missing path, output clash)


@dataclass(frozen=True)
class Outcome:
    job: Job
    status: Status
    audio_s: float = 0.0
    error: str = ""


@dataclass(frozen=True)
class Options:
    url: str
    api_key: str | None
    fmt: str
    concurrency: int
    language: str | None
    model: str | None
    retries: int
    timeout_s: float
    progress: bool
    overwrite: bool
    words: bool = False  # json output carries each word's time (Whisper models)


# ---- finding inputs -------------------------------------------------------------------


def _is_audio(path: Path) -> bool:
    # Dot-files are skipped: macOS leaves "._name.wav" metadata files beside real audio.
    return path.suffix.lower() in AUDIO_EXTENSIONS and not path.name.startswith(".")


def collect_jobs(paths: Sequence[Path], fmt: str, output_dir: Path | None) -> list[Job]:
    """One job per input file, in a stable order. Folders are recursed and their relative
    structure mirrored under `output_dir`; files named directly are taken whatever their
    extension, since the user chose them."""
    pairs: list[tuple[Path, Path, str]] = []  # source, output stem, problem
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and _is_audio(p)):
                base = output_dir / file.relative_to(path) if output_dir else file
                pairs.append((file, base, ""))
        elif path.is_file():
            pairs.append((path, output_dir / path.name if output_dir else path, ""))
        else:
            pairs.append((path, path, "no such file or directory"))
    jobs: list[Job] = []
    seen_sources: set[Path] = set()
    claimed: dict[Path, Path] = {}
    for source, base, problem in pairs:
        key = source.resolve()
        if key in seen_sources:
            continue  # the same file reached twice (a folder and a file in it)
        seen_sources.add(key)
        output = base.with_suffix(f".{fmt}")
        owner = claimed.setdefault(output.resolve(), source)
        if not problem and owner != source:
            # e.g. talk.wav and talk.mp4 side by side: the first (sorted) one wins.
            problem = f"output {output} is already the output of {owner}"
        jobs.append(Job(source, output, problem))
    return jobs


# ---- one request, with retries ----------------------------------------------------------


def backoff_delay(attempt: int) -> float:
    """Exponential backoff with jitter, so many clients don't retry in lockstep."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def retry_after_delay(response: httpx.Response) -> float | None:
    """Retry-After in seconds or as an HTTP date; None when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


async def send_with_retries(
    send: Callable[[], Awaitable[httpx.Response]],
    retries: int,
    on_retry: Callable[[str, float], None] = lambda reason, delay: None,
) -> httpx.Response:
    """The first non-transient response, or the last one after `retries` retries.
    Connection errors and timeouts are retried too; the last one is raised."""
    for attempt in range(retries + 1):
        try:
            response = await send()
        except httpx.TransportError as exc:
            if attempt == retries:
                raise
            reason, delay = f"{type(exc).__name__}: {exc}", backoff_delay(attempt)
        else:
            if response.status_code not in TRANSIENT_STATUSES or attempt == retries:
                return response
            delay = None
            if response.status_code in (429, 503):
                delay = retry_after_delay(response)
            reason, delay = f"HTTP {response.status_code}", (
                backoff_delay(attempt) if delay is None else delay
            )
        on_retry(reason, delay)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")


def describe_error(response: httpx.Response) -> str:
    """`HTTP 415 unsupported_audio: message` from the service's OpenAI-style error body."""
    try:
        error = response.json()["error"]
        return f"HTTP {response.status_code} {error.get('code')}: {error.get('message')}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200].strip()}"


def audio_duration(response: httpx.Response, fmt: str) -> float:
    """Seconds of audio from the server's header, or verbose_json's field; 0 if unknown."""
    try:
        if DURATION_HEADER in response.headers:
            return max(0.0, float(response.headers[DURATION_HEADER]))
        if fmt == "json":
            return max(0.0, float(response.json().get("duration") or 0.0))
    except (ValueError, TypeError, AttributeError):
        pass
    return 0.0


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a hidden temp file beside `path`, then rename: an interrupted run leaves
    either the old file or the whole new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    # os.open with 0o666 honours the umask, unlike mkstemp's private 0o600 files.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


async def transcribe_file(
    http: httpx.AsyncClient, job: Job, options: Options, log: Callable[[str], None]
) -> Outcome:
    try:
        data = await asyncio.to_thread(job.source.read_bytes)
    except OSError as exc:
        return Outcome(job, "failed", error=f"cannot read: {exc}")
    fields = {"response_format": SERVER_FORMATS[options.fmt]}
    if options.words and options.fmt == "json":
        fields["timestamp_granularities[]"] = ["word", "segment"]
    if options.language:
        fields["language"] = options.language
    if options.model:
        fields["model"] = options.model
    content_type = mimetypes.guess_type(job.source.name)[0] or "application/octet-stream"
    files = {"file": (job.source.name, data, content_type)}

    def on_retry(reason: str, delay: float) -> None:
        log(f"retry {job.source}: {reason}; next try in {delay:.1f} s")

    try:
        response = await send_with_retries(
            lambda: http.post(ENDPOINT, files=files, data=fields), options.retries, on_retry
        )
    except httpx.TransportError as exc:
        return Outcome(job, "failed", error=f"{type(exc).__name__}: {exc}")
    if response.status_code != 200:
        return Outcome(job, "failed", error=describe_error(response))
    try:
        await asyncio.to_thread(write_atomic, job.output, response.content)
    except OSError as exc:
        return Outcome(job, "failed", error=f"cannot write {job.output}: {exc}")
    return Outcome(job, "done", audio_s=audio_duration(response, options.fmt))


# ---- the whole run ----------------------------------------------------------------------


async def run_jobs(jobs: Sequence[Job], options: Options) -> list[Outcome]:
    """Transcribe the jobs `options.concurrency` at a time; skipped and impossible jobs
    are settled first and never touch the network."""
    outcomes: list[Outcome] = []
    pending: list[Job] = []
    for job in jobs:
        if job.problem:
            outcomes.append(Outcome(job, "failed", error=job.problem))
        elif job.output.exists() and not options.overwrite:
            outcomes.append(Outcome(job, "skipped"))
        else:
            pending.append(job)
    for outcome in outcomes:
        if outcome.status == "failed":
            print(f"FAILED {outcome.job.source}: {outcome.error}", file=sys.stderr)
    if not pending:
        return outcomes

    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in pending:
        queue.put_nowait(job)
    bar = tqdm(
        total=len(pending),
        unit="file",
        desc="transcribing",
        file=sys.stderr,
        disable=None if options.progress else True,  # None: only on a terminal
    )
    audio_s = 0.0

    def log(message: str) -> None:
        tqdm.write(message, file=sys.stderr)

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal audio_s
        while not queue.empty():
            job = queue.get_nowait()
            outcome = await transcribe_file(http, job, options, log)
            outcomes.append(outcome)
            if outcome.status == "failed":
                log(f"FAILED {job.source}: {outcome.error}")
            audio_s += outcome.audio_s
            bar.set_postfix_str(f"{audio_s / 60:.1f} audio min", refresh=False)
            bar.update(1)

    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    timeout = httpx.Timeout(options.timeout_s, connect=min(CONNECT_TIMEOUT_S, options.timeout_s))
    limits = httpx.Limits(max_connections=options.concurrency)
    try:
        async with httpx.AsyncClient(
            base_url=options.url, headers=headers, timeout=timeout, limits=limits
        ) as http:
            await asyncio.gather(*(worker(http) for _ in range(options.concurrency)))
    finally:
        bar.close()
    return outcomes


def summary_line(outcomes: Sequence[Outcome], wall_s: float) -> str:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    audio_s = sum(o.audio_s for o in outcomes)
    if audio_s > 0 and wall_s > 0:
        speed = f"{audio_s / wall_s:.1f}x (audio s / wall s; above 1 is faster than real time)"
    else:
        speed = "n/a (no audio durations reported)"
    return (
        f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; "
        f"audio {audio_s / 3600:.3f} h; wall {wall_s:.1f} s; real-time factor {speed}"
    )


# ---- command line -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asr-client",
        description="Transcribe audio/video files, or whole folders, with an ASR service "
        "(OpenAI-compatible POST /v1/audio/transcriptions). Folders are searched "
        f"recursively for: {' '.join(sorted(e[1:] for e in AUDIO_EXTENSIONS))}.",
        epilog="Each input gets <name>.<format> beside it (or under --output-dir). Inputs "
        "whose output exists are skipped unless --overwrite. Exit status: 0 when every file "
        "succeeded or was skipped, 1 when any failed, 2 for bad arguments, 130 on Ctrl-C.",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000",
        help="server base URL; a trailing /v1 is accepted (default: %(default)s)",
    )
    parser.add_argument(
        "--api-key", default=None, metavar="KEY",
        help="sent as 'Authorization: Bearer KEY' (default: $ASR_API_KEY, else none)",
    )
    parser.add_argument(
        "--format", dest="fmt", choices=sorted(SERVER_FORMATS), default="txt",
        help="output format, rendered by the server; json is verbose_json with segments "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=None, metavar="DIR",
        help="write outputs here, mirroring each folder's structure (default: beside inputs)",
    )
    parser.add_argument(
        "--concurrency", type=_positive_int, default=4, metavar="N",
        help="files in flight at once (default: %(default)s)",
    )
    parser.add_argument(
        "--language", default=None, metavar="CODE",
        help="ISO-639-1 code of the speech, e.g. en (default: detected)",
    )
    parser.add_argument(
        "--model", default=None, metavar="NAME",
        help="model name, e.g. whisper-1 (default: the server's model)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="transcribe again even if the output exists"
    )
    parser.add_argument(
        "--words", action="store_true",
        help="with --format json: each word with its start and end (Whisper models); srt "
        "and vtt cues are timed by the words in any case",
    )
    parser.add_argument(
        "--retries", type=_non_negative_int, default=5, metavar="N",
        help="retries per file on 429/503 (after Retry-After), 502/504 and connection "
        "errors (exponential backoff); other errors fail the file at once "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--timeout", dest="timeout_s", type=_positive_float, default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="seconds to wait for one response (default: %(default)s)",
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide the progress bar"
    )
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = Options(
        url=args.url.rstrip("/").removesuffix("/v1"),  # accept OpenAI-style base URLs too
        api_key=args.api_key or os.environ.get("ASR_API_KEY") or None,
        fmt=args.fmt,
        concurrency=args.concurrency,
        language=args.language,
        model=args.model,
        retries=args.retries,
        timeout_s=args.timeout_s,
        progress=args.progress,
        overwrite=args.overwrite,
        words=args.words,
    )
    started = time.monotonic()
    jobs = collect_jobs(args.paths, args.fmt, args.output_dir)
    try:
        outcomes = asyncio.run(run_jobs(jobs, options))
    except KeyboardInterrupt:
        print("interrupted; finished outputs are kept, none is half-written", file=sys.stderr)
        return 130
    print(summary_line(outcomes, time.monotonic() - started))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
