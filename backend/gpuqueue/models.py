"""Records and request schemas (pydantic): what a job is, what one attempt was, what an event says."""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .states import JobState, Outcome, Priority

MAX_NAME_LEN = 200


def new_job_id() -> str:
    """A short, unguessable, URL-safe job id such as ``j-3f9c2a71d0b4``."""
    return "j-" + secrets.token_hex(6)


class JobSpec(BaseModel):
    """What a user asks for. Never carries the owner: the server stamps that from its own auth."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["cell", "command"] = Field(
        "cell", description="'cell': a pickled notebook cell; 'command': an argv to run"
    )
    name: Optional[str] = Field(None, max_length=MAX_NAME_LEN)
    priority: Priority = Priority.MEDIUM
    gpus: int = Field(0, ge=0, le=4096, description="GPUs in all (over all nodes)")
    nodes: int = Field(1, ge=1, le=512, description="nodes the job spans")
    pool: Optional[str] = Field(None, description="pool name; default: the first pool")
    timeout_s: Optional[float] = Field(None, gt=0, description="time limit in seconds")
    retries: Optional[int] = Field(None, ge=0, le=20, description="retries after a failure")
    preemptible: Optional[bool] = Field(None, description="default: the pool's setting")
    command: Optional[list[str]] = Field(None, description="argv, for kind 'command'")
    cwd: Optional[str] = Field(None, description="working directory of the job process")
    python: Optional[str] = Field(None, description="interpreter that runs the job")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment")
    inputs: list[str] = Field(default_factory=list, description="names sent with the cell")
    outputs: list[str] = Field(default_factory=list, description="names brought back")
    notebook: Optional[str] = Field(None, description="notebook path, for re-attach")
    cell_id: Optional[str] = Field(None, description="cell id, for re-attach")
    source_hash: Optional[str] = Field(None, description="hash of the cell source, for re-attach")
    precision: Optional[Literal["bf16", "fp16", "fp32"]] = None
    grad_checkpointing: bool = False
    resume_from: Optional[str] = Field(None, description="checkpoint to resume from")

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        if v is not None and (not v or not all(isinstance(a, str) for a in v)):
            raise ValueError("command must be a non-empty list of strings")
        return v

    @model_validator(mode="after")
    def _kind_matches(self) -> "JobSpec":
        if self.kind == "command" and not self.command:
            raise ValueError("a 'command' job needs a command, e.g. [\"python\", \"train.py\"]")
        if self.kind == "cell" and self.command:
            raise ValueError("a 'cell' job takes no command; use kind 'command'")
        if self.nodes > 1 and self.gpus and self.gpus % self.nodes:
            raise ValueError(f"gpus ({self.gpus}) must be a multiple of nodes ({self.nodes})")
        return self


class SubmitRequest(BaseModel):
    """The body of ``POST /gpuqueue/api/jobs``: the spec, and the cell payload for cell jobs."""

    model_config = ConfigDict(extra="forbid")

    spec: JobSpec
    payload_b64: Optional[str] = Field(None, description="base64 of the cloudpickled cell")
    new: bool = Field(False, description="submit even if the same cell's job is still active")


class Attempt(BaseModel):
    """One launch of the job process."""

    number: int
    node: str
    gpu_ids: list[int] = Field(default_factory=list, description="devices the job saw")
    placement: dict[str, list[int]] = Field(
        default_factory=dict, description="node -> GPU indices within the node (scheduler's view)"
    )
    started_at: float
    ended_at: Optional[float] = None
    outcome: Optional[Outcome] = None
    exit_code: Optional[int] = None
    pid: Optional[int] = Field(None, description="the runner's pid")
    pid_started: Optional[float] = Field(None, description="its start time, against pid reuse")
    stop_requested: Optional[str] = None
    message: Optional[str] = None


class JobRecord(BaseModel):
    """A job as the store holds it and the API returns it."""

    id: str
    owner: str
    spec: JobSpec
    state: JobState = JobState.QUEUED
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    not_before: Optional[float] = Field(None, description="retry backoff: queued, not before")
    attempts: list[Attempt] = Field(default_factory=list)
    error: Optional[str] = None
    result_names: list[str] = Field(default_factory=list)
    unreturnable: dict[str, str] = Field(default_factory=dict)
    failures: int = 0
    preemptions: int = 0
    last_event_seq: int = 0
    # Filled on read for queued jobs: why it waits, where it stands, when it may start.
    pending: Optional[dict[str, Any]] = None

    @property
    def current_attempt(self) -> Optional[Attempt]:
        """The newest attempt, if any."""
        return self.attempts[-1] if self.attempts else None

    def summary(self) -> dict[str, Any]:
        """The short form used in listings."""
        a = self.current_attempt
        return {
            "id": self.id,
            "name": self.spec.name,
            "owner": self.owner,
            "state": self.state.value,
            "priority": self.spec.priority.value,
            "gpus": self.spec.gpus,
            "pool": self.spec.pool,
            "created_at": self.created_at,
            "started_at": a.started_at if a else None,
            "ended_at": a.ended_at if a and self.state.is_terminal else None,
            "node": a.node if a else None,
            "gpu_ids": a.gpu_ids if a else [],
            "attempts": len(self.attempts),
            "pending": self.pending,
        }


class Event(BaseModel):
    """One entry of a job's event stream. ``seq`` starts at 1 and has no gaps."""

    seq: int
    time: float
    type: str = Field(
        ..., description="log, state, metrics, progress, checkpoint, result, warning or info"
    )
    data: dict[str, Any]
