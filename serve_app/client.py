"""asr-client: transcribe files or whole folders against the ASR service.

Self-contained on purpose: people install it on laptops, so it imports only httpx, tqdm and
the standard library, never ray, torch or the server's modules. It asks the server for the
exact output format, so files hold the server's own rendering, and it never decodes audio.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import hashlib
import json
import mimetypes
import os
import random
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal, Optional, Sequence
from urllib.parse import quote

import httpx
from tqdm import tqdm

AUDIO_EXTENSIONS = frozenset(
    ".flac .mp3 .mp4 .mpeg .mpga .m4a .ogg .oga .opus .wav .webm".split()
)  # the containers OpenAI's endpoint accepts; other files in a folder are ignored
# Output format -> the server's response_format. json asks for verbose_json: segments,
# language and duration are worth keeping, and the duration feeds the progress bar.
SERVER_FORMATS = {"txt": "text", "srt": "srt", "vtt": "vtt", "json": "verbose_json"}
ENDPOINT = "/v1/audio/transcriptions"
JOBS_ENDPOINT = f"{ENDPOINT}/jobs"  # --async: durable jobs, polled until they end
DURATION_HEADER = "X-Audio-Duration"  # seconds as a float; absent on older servers

# 429/503 mean "come back later" (Retry-After says when); 502/504 are a proxy that lost
# its upstream for a moment. Any other status is the answer for this file.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
BACKOFF_BASE_S = 0.5  # first retry after ~0.5 s, doubling: 5 retries span ~15 s in all
BACKOFF_MAX_S = 30.0
MAX_RETRY_AFTER_S = 300.0  # a longer Retry-After is likely a misconfiguration; don't hang
DEFAULT_TIMEOUT_S = 3600.0  # the server's own request limit: hour-long files take minutes
CONNECT_TIMEOUT_S = 10.0
POLL_TIMEOUT_S = 60.0  # a status poll is small: don't wait --timeout (an hour) on one
# Polls that failed in a row (each after its own retries) before giving up on a job; with
# the growing wait between them this rides out a few minutes of server outage.
MAX_POLL_FAILURES = 10
ENDED_STATUSES = frozenset({"completed", "failed", "cancelled"})

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
    async_jobs: bool = False  # --async: submit each file as a job and poll it
    poll_interval_s: float = 2.0
    keep_jobs: bool = False  # leave ended jobs on the server (they expire there)


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


def format_fields(options: Options) -> dict[str, Any]:
    """What decides the rendering: the response_format and, for json, the word times."""
    fields: dict[str, Any] = {"response_format": SERVER_FORMATS[options.fmt]}
    if options.words and options.fmt == "json":
        fields["timestamp_granularities[]"] = ["word", "segment"]
    return fields


def model_fields(options: Options) -> dict[str, Any]:
    """What decides the transcript itself."""
    fields = {"language": options.language, "model": options.model}
    return {name: value for name, value in fields.items() if value}


def upload_part(source: Path, data: bytes) -> tuple[str, bytes, str]:
    content_type = mimetypes.guess_type(source.name)[0] or "application/octet-stream"
    return (source.name, data, content_type)


def retry_logger(job: Job, log: Callable[[str], None]) -> Callable[[str, float], None]:
    def on_retry(reason: str, delay: float) -> None:
        log(f"retry {job.source}: {reason}; next try in {delay:.1f} s")

    return on_retry


async def transcribe_file(
    http: httpx.AsyncClient, job: Job, options: Options, log: Callable[[str], None]
) -> Outcome:
    try:
        data = await asyncio.to_thread(job.source.read_bytes)
    except OSError as exc:
        return Outcome(job, "failed", error=f"cannot read: {exc}")
    fields = {**format_fields(options), **model_fields(options)}
    files = {"file": upload_part(job.source, data)}
    on_retry = retry_logger(job, log)
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


# ---- --async: one durable job per file -------------------------------------------------


class JobError(Exception):
    """This file's job can't go on; the message says why (the server's error if any)."""


class PollBlip(Exception):
    """A status poll that failed for a reason that may pass (connection error, 5xx)."""


Progress = Callable[[float, Optional[float]], None]  # audio seconds done, total (None: unknown)
Retry = Callable[[str, float], None]


def idempotency_key(source: Path, data: bytes, fields: dict[str, Any]) -> str:
    """The same file at the same place with the same options gets the same key, so rerunning
    a command after a crash or a lost connection finds the job it submitted before instead
    of submitting again. The path is in it so that two identical copies in one run are two
    jobs: the first to finish would otherwise delete the job under the other."""
    digest = hashlib.sha256(hashlib.sha256(data).digest())
    digest.update(json.dumps([str(source.resolve()), fields], sort_keys=True).encode())
    return f"asr-client-{digest.hexdigest()}"


def job_state(response: httpx.Response) -> dict[str, Any]:
    try:
        state = response.json()
        if isinstance(state, dict) and state.get("id") and state.get("status"):
            return state
    except ValueError:
        pass
    raise JobError(f"unexpected job body (HTTP {response.status_code}): {response.text[:200]}")


def job_error(state: dict[str, Any]) -> str:
    """`job 12ab failed: invalid_audio: message` from the job's OpenAI-style error."""
    error = state.get("error") or {}
    detail = f": {error.get('code')}: {error.get('message')}" if error else ""
    return f"job {state['id']} {state['status']}{detail}"


def job_audio_seconds(state: dict[str, Any]) -> tuple[float, float | None]:
    """(done, total) audio seconds from the job's progress; a completed job is all done."""
    progress = state.get("progress") or {}
    try:
        done = float(progress.get("audio_seconds_done") or 0.0)
        total = progress.get("audio_seconds_total")
        total = None if total is None else float(total)
    except (TypeError, ValueError):
        return 0.0, None
    if state["status"] == "completed" and total is not None:
        done = total
    return done, total


async def submit_job(
    http: httpx.AsyncClient, job: Job, data: bytes, options: Options, on_retry: Retry
) -> tuple[str, dict[str, Any]]:
    """The job's URL and its state; a job already submitted with this key comes back as is."""
    fields = {**model_fields(options), **format_fields(options)}
    fields.pop("response_format")  # chosen when the result is fetched
    headers = {"Idempotency-Key": idempotency_key(job.source, data, fields)}
    files = {"file": upload_part(job.source, data)}
    response = await send_with_retries(
        lambda: http.post(JOBS_ENDPOINT, files=files, data=fields, headers=headers),
        options.retries, on_retry,
    )
    if response.status_code not in (200, 202):
        raise JobError(describe_error(response))
    state = job_state(response)
    return f"{JOBS_ENDPOINT}/{quote(str(state['id']), safe='')}", state


async def poll_job(
    http: httpx.AsyncClient, url: str, options: Options, on_retry: Retry
) -> dict[str, Any]:
    timeout = min(options.timeout_s, POLL_TIMEOUT_S)
    try:
        response = await send_with_retries(
            lambda: http.get(url, timeout=timeout), options.retries, on_retry
        )
    except httpx.TransportError as exc:
        raise PollBlip(f"{type(exc).__name__}: {exc}") from exc
    if response.status_code >= 500 or response.status_code in TRANSIENT_STATUSES:
        raise PollBlip(describe_error(response))
    if response.status_code != 200:
        raise JobError(describe_error(response))  # e.g. 404 job_not_found: it expired
    return job_state(response)


async def wait_for_job(
    http: httpx.AsyncClient, url: str, state: dict[str, Any], options: Options,
    progress: Progress, on_retry: Retry,
) -> dict[str, Any]:
    """Poll every --poll-interval until the job ends. Failed polls wait longer each time and
    only give up after MAX_POLL_FAILURES in a row; the job stays on the server then."""
    failures, delay = 0, options.poll_interval_s
    while True:
        progress(*job_audio_seconds(state))
        if state["status"] in ENDED_STATUSES:
            return state
        await asyncio.sleep(delay)
        try:
            state = await poll_job(http, url, options, on_retry)
            failures, delay = 0, options.poll_interval_s
        except PollBlip as exc:
            failures += 1
            if failures >= MAX_POLL_FAILURES:
                raise JobError(f"lost track of job {state['id']} ({exc}); it goes on on the "
                               "server: run the same command again to pick it up") from exc
            delay = max(options.poll_interval_s, backoff_delay(failures - 1))
            on_retry(f"job {state['id']} status: {exc}", delay)


async def save_result(
    http: httpx.AsyncClient, job: Job, url: str, options: Options, on_retry: Retry
) -> httpx.Response:
    """Fetch the completed job's transcript in the output's format and write it."""
    params = format_fields(options)
    response = await send_with_retries(
        lambda: http.get(f"{url}/result", params=params), options.retries, on_retry
    )
    if response.status_code != 200:
        raise JobError(describe_error(response))
    try:
        await asyncio.to_thread(write_atomic, job.output, response.content)
    except OSError as exc:
        raise JobError(f"cannot write {job.output}: {exc}") from exc
    return response


async def delete_job(
    http: httpx.AsyncClient, url: str, options: Options, on_retry: Retry,
    log: Callable[[str], None],
) -> None:
    """Best effort: the transcript is safe by now, and the server expires jobs anyway."""
    try:
        response = await send_with_retries(lambda: http.delete(url), options.retries, on_retry)
    except httpx.TransportError as exc:
        log(f"could not delete {url}: {type(exc).__name__}: {exc}")
        return
    if response.status_code >= 300 and response.status_code != 404:
        log(f"could not delete {url}: {describe_error(response)}")


async def transcribe_as_job(
    http: httpx.AsyncClient, job: Job, options: Options, log: Callable[[str], None],
    progress: Progress,
) -> Outcome:
    """--async: submit the file as a job, follow it, fetch its result. A job that ended is
    then deleted (unless --keep-jobs), so a rerun submits afresh; one whose result could
    not be saved is kept, and a rerun finds it again through its Idempotency-Key."""
    try:
        data = await asyncio.to_thread(job.source.read_bytes)
    except OSError as exc:
        return Outcome(job, "failed", error=f"cannot read: {exc}")
    on_retry = retry_logger(job, log)
    try:
        url, state = await submit_job(http, job, data, options, on_retry)
        state = await wait_for_job(http, url, state, options, progress, on_retry)
        if state["status"] == "completed":
            result = await save_result(http, job, url, options, on_retry)
    except JobError as exc:
        return Outcome(job, "failed", error=str(exc))
    except httpx.TransportError as exc:
        return Outcome(job, "failed", error=f"{type(exc).__name__}: {exc}")
    if not options.keep_jobs:
        await delete_job(http, url, options, on_retry, log)
    if state["status"] != "completed":
        return Outcome(job, "failed", error=job_error(state))
    audio_s = job_audio_seconds(state)[1] or audio_duration(result, options.fmt)
    return Outcome(job, "done", audio_s=audio_s)


class AudioBar:
    """--async's second bar: audio seconds transcribed over the audio seconds known, summed
    over the jobs; a job's length joins the total once the server has decoded its audio."""

    def __init__(self, enabled: bool) -> None:
        self.bar = tqdm(
            unit="s", desc="audio", file=sys.stderr, disable=None if enabled else True
        )
        self.jobs: dict[Path, tuple[float, float | None]] = {}

    def reporter(self, job: Job) -> Progress:
        def report(done: float, total: float | None) -> None:
            self.jobs[job.source] = (done, total)
            self.redraw()

        return report

    def drop(self, job: Job) -> None:
        """A failed job's seconds leave the bar, so that it can still reach 100 %."""
        self.jobs.pop(job.source, None)
        self.redraw()

    def redraw(self) -> None:
        self.bar.total = round(sum(t or 0.0 for _, t in self.jobs.values()), 1) or None
        self.bar.n = round(sum(d for d, _ in self.jobs.values()), 1)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


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
    audio_bar = AudioBar(options.progress) if options.async_jobs else None
    audio_s = 0.0

    def log(message: str) -> None:
        tqdm.write(message, file=sys.stderr)

    async def transcribe(http: httpx.AsyncClient, job: Job) -> Outcome:
        if audio_bar is None:
            return await transcribe_file(http, job, options, log)
        outcome = await transcribe_as_job(http, job, options, log, audio_bar.reporter(job))
        if outcome.status == "failed":
            audio_bar.drop(job)
        return outcome

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal audio_s
        while not queue.empty():
            job = queue.get_nowait()
            outcome = await transcribe(http, job)
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
        if audio_bar is not None:
            audio_bar.close()
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
    parser.add_argument(
        "--async", dest="async_jobs", action="store_true",
        help="submit each file as a durable job (POST /v1/audio/transcriptions/jobs), poll "
        "it, then fetch its result: no request stays open while a long file is "
        "transcribed, and rerunning the same command after a crash or lost connection "
        "finds the jobs already submitted (Idempotency-Key) instead of submitting again",
    )
    parser.add_argument(
        "--poll-interval", dest="poll_interval_s", type=_positive_float, default=2.0,
        metavar="SECONDS", help="with --async: seconds between status polls "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--keep-jobs", action="store_true",
        help="with --async: leave ended jobs and their results on the server (they expire "
        "there) instead of deleting them",
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
        async_jobs=args.async_jobs,
        poll_interval_s=args.poll_interval_s,
        keep_jobs=args.keep_jobs,
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
