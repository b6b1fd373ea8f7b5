"""What the service knows about one job, as every store keeps it."""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from typing import Any


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class CallbackState(str, enum.Enum):
    PENDING = "pending"  # the job ended; its callback is owed
    DELIVERED = "delivered"
    FAILED = "failed"  # every attempt failed, or the receiver answered 410 Gone


@dataclass
class JobRecord:
    """One job's stored facts; status and progress are derived from them, never guessed."""

    id: str
    owner: str  # sha256 of the API key that submitted it ("" with keys off), never the key
    status: JobStatus
    created_at: float  # Unix seconds
    task: str  # "transcribe" or "translate"
    # The request's form fields as submitted (validated then); validated again when the job
    # runs, through the same code as a synchronous request.
    fields: list[tuple[str, str]]
    audio_bytes: int
    filename: str | None = None
    callback_url: str | None = None
    idempotency_key: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None  # known once the audio is decoded
    done_s: float = 0.0  # audio seconds transcribed so far (speech and skipped silence)
    error: dict[str, Any] | None = None  # the error body's "error" object, when failed
    attempts: int = 0  # runs started (a takeover after a lost replica is another)
    expires_at: float | None = None  # an ended job and its result are deleted then
    callback_state: CallbackState | None = None  # None: no callback_url

    def to_json(self) -> str:
        body = dataclasses.asdict(self)
        body["status"] = self.status.value
        body["callback_state"] = self.callback_state.value if self.callback_state else None
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "JobRecord":
        body = json.loads(text)
        body["status"] = JobStatus(body["status"])
        body["fields"] = [tuple(pair) for pair in body["fields"]]
        if body.get("callback_state"):
            body["callback_state"] = CallbackState(body["callback_state"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in body.items() if k in known})

    def public(self) -> dict[str, Any]:
        """The job as the API shows it (no owner, no fields, no internal bookkeeping)."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": "transcription.job",
            "status": self.status.value,
            "created_at": int(self.created_at),
            "task": self.task,
            "filename": self.filename,
            "progress": {
                "audio_seconds_done": round(self.done_s, 3),
                "audio_seconds_total": (round(self.duration_s, 3)
                                        if self.duration_s is not None else None),
                "fraction": (round(min(1.0, self.done_s / self.duration_s), 4)
                             if self.duration_s else (1.0 if self.status == JobStatus.COMPLETED
                                                      else 0.0)),
            },
            "started_at": int(self.started_at) if self.started_at else None,
            "finished_at": int(self.finished_at) if self.finished_at else None,
            "expires_at": int(self.expires_at) if self.expires_at else None,
            "attempts": self.attempts,
            "error": self.error,
        }
        if self.callback_url:
            body["callback"] = {"url": self.callback_url,
                                "state": self.callback_state.value if self.callback_state
                                else None}
        return body


@dataclass(frozen=True)
class JobStats:
    """The backlog as metrics and the autoscaling policy see it."""

    counts: dict[JobStatus, int] = field(default_factory=dict)
    oldest_queued_age_s: float = 0.0
    queued_bytes: int = 0
    # Audio of queued and running jobs not transcribed yet (a queued job's length is read
    # from its header at submit): the backlog the autoscaling policy sees.
    backlog_audio_s: float = 0.0
