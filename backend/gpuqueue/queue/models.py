"""Records and request schemas (pydantic): what a job is, what one attempt was, what an event says.

The request models (:class:`JobSpec`, :class:`SubmitRequest`) are the one place where what a
client sends is checked: every number finite and bounded, every string free of what cannot work
where it goes (a NUL byte in an argument, a control character in a name), every list and mapping
bounded. A failed check names the field and the fix. These checks apply to requests, validated
with ``context=EDGE`` (``gpuqueue.rest.jsonbody``); records already stored are read as they are, so a
job stored by an older version never makes a listing, or a restart, fail.
"""

from __future__ import annotations

import math
import mmap
import re
import secrets
import time
from typing import Annotated, Any, Callable, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator,
                      model_validator)

from . import ckptref
from .durations import MAX_TIMEOUT_S
from .states import JobState, Outcome, Priority
from .text import CONTROL_CHARS

EDGE = {"edge": True}
"""Validation context of a client's request: the request checks below apply."""

MAX_NAME_LEN = 200
MAX_ARGS = 4096  # arguments of a command
MAX_ARG_LEN = 128 * 1024  # Linux's limit on one argument or environment string (MAX_ARG_STRLEN)
MAX_ENV = 1024  # extra environment variables
# a command and its extra environment together: Linux gives a new process 2 MB of both (less
# the 1/4 of the stack limit it may be), and the job's record keeps them (in Redis, for every user)
MAX_ARGV_ENV_BYTES = 1024 * 1024
MAX_PATH_LEN = 4096  # PATH_MAX
MAX_ID_LEN = 256  # pool names, cell ids, hashes
MAX_NAMES = 4096  # inputs / outputs of a cell

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def new_job_id() -> str:
    """A short, unguessable, URL-safe job id such as ``j-3f9c2a71d0b4``."""
    return "j-" + secrets.token_hex(6)


def _at_edge(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("edge"))


def _edge(check: Callable[[Any], None]) -> AfterValidator:
    """A validator that runs ``check`` (raising ValueError) on a request's value only."""

    def run(v: Any, info: ValidationInfo) -> Any:
        if _at_edge(info):
            check(v)
        return v

    return AfterValidator(run)


def _max_len(n: int, what: str = "characters") -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if len(v) > n:
            raise ValueError(f"has {len(v)} {what}, more than the {n} allowed")
    return check


def _arg(v: str) -> None:
    _max_len(MAX_ARG_LEN)(v)
    if "\x00" in v:
        raise ValueError("contains a NUL byte, which no program argument or environment string can hold: remove it")


def _one_line(n: int) -> Callable[[str], None]:
    def check(v: str) -> None:
        _max_len(n)(v)
        m = CONTROL_CHARS.search(v)
        if m:
            raise ValueError(f"contains the control character {m.group()!r} at position {m.start()}: "
                             f"use printable text on one line")
    return check


def _absolute(v: str) -> None:
    if not v.startswith("/"):
        raise ValueError(f"{v[:50]!r} is a relative path: give the absolute one (e.g. /home/you/project); "
                         f"the job runs elsewhere, where a relative path would mean another folder")


def _env_key(v: str) -> None:
    if not _ENV_KEY.fullmatch(v) or len(v) > MAX_ID_LEN:
        raise ValueError(f"{v[:50]!r} is not an environment variable name: use letters, digits and _, "
                         f"not starting with a digit")


def _identifier(v: str) -> None:
    if not v.isidentifier() or len(v) > MAX_ID_LEN:
        raise ValueError(f"{v[:50]!r} is not a Python name (write e.g. data or config)")


Arg = Annotated[str, _edge(_arg)]
"""A command-line argument or environment value: any text but NUL (newlines and tabs work)."""
Name = Annotated[str, _edge(_one_line(MAX_NAME_LEN))]
Path_ = Annotated[str, _edge(_one_line(MAX_PATH_LEN))]
"""A path shown in listings and terminals: printable text on one line."""
Id = Annotated[str, _edge(_one_line(MAX_ID_LEN))]
EnvKey = Annotated[str, _edge(_env_key)]
PyName = Annotated[str, _edge(_identifier)]
ResumeFrom = Annotated[str, _edge(_one_line(MAX_PATH_LEN)), _edge(ckptref.check_syntax)]
"""A checkpoint path or URL, or a job reference (``j-.../step-N``: ``gpuqueue.queue.ckptref``)."""



Buffer = Union[bytes, mmap.mmap]
"""Bytes, or an anonymous memory map holding them (a large request body or payload: indexing,
slicing, ``find`` and ``re`` work the same on both)."""

class JobSpec(BaseModel):
    """What a user asks for. Never carries the owner: the server stamps that from its own auth."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["cell", "command"] = Field(
        "cell", description="'cell': a pickled notebook cell; 'command': an argv to run"
    )
    name: Optional[Name] = Field(None, max_length=MAX_NAME_LEN)
    priority: Priority = Priority.MEDIUM
    gpus: int = Field(0, ge=0, le=4096, description="GPUs in all (over all nodes)")
    nodes: int = Field(1, ge=1, le=512, description="nodes the job spans")
    pool: Optional[Id] = Field(None, description="pool name; default: the first pool")
    timeout_s: Optional[float] = Field(None, gt=0, description="time limit in seconds (at most 366 days)")
    retries: Optional[int] = Field(None, ge=0, le=20, description="retries after a failure")
    preemptible: Optional[bool] = Field(None, description="default: the pool's setting")
    command: Optional[Annotated[list[Arg], _edge(_max_len(MAX_ARGS, "arguments"))]] = Field(
        None, min_length=1, description="argv, for kind 'command'"
    )
    cwd: Optional[Annotated[Path_, _edge(_absolute)]] = Field(
        None, description="working directory of the job process (an absolute path)")
    python: Optional[Path_] = Field(None, description="interpreter that runs the job")
    env: Annotated[dict[EnvKey, Arg], _edge(_max_len(MAX_ENV, "variables"))] = Field(
        default_factory=dict, description="extra environment"
    )
    inputs: Annotated[list[PyName], _edge(_max_len(MAX_NAMES, "names"))] = Field(
        default_factory=list, description="names sent with the cell"
    )
    outputs: Annotated[list[PyName], _edge(_max_len(MAX_NAMES, "names"))] = Field(
        default_factory=list, description="names brought back"
    )
    notebook: Optional[Path_] = Field(None, description="notebook path, for re-attach")
    cell_id: Optional[Id] = Field(None, description="cell id, for re-attach")
    source_hash: Optional[Id] = Field(None, description="hash of the cell source, for re-attach")
    precision: Optional[Literal["bf16", "fp16", "fp32"]] = None
    grad_checkpointing: bool = False
    resume_from: Optional[ResumeFrom] = Field(
        None, description="checkpoint to resume from: a folder, a .pt file or URL, or one of the owner's jobs: "
        "JOB_ID (its latest checkpoint), JOB_ID/step-N or JOB_ID/NAME/step-N")

    @field_validator("timeout_s", mode="wrap")
    @classmethod
    def _timeout(cls, v: Any, handler: Any, info: ValidationInfo) -> Any:
        if not _at_edge(info):
            return handler(v)
        bad = f"must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:.0f} (366 days)"
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10**15:
            raise ValueError(f"{bad}, got a {len(str(abs(v)))}-digit number")
        value = handler(v)
        if value is not None and not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
            raise ValueError(f"{bad}, got {value:.6g}")
        return value

    @model_validator(mode="after")
    def _fits_a_process(self, info: ValidationInfo) -> "JobSpec":
        """At the edge: the command and the extra environment together hold at most
        :data:`MAX_ARGV_ENV_BYTES` (4096 arguments of 128 KB each would pass their own checks,
        fail at exec, and take 512 MB of the store meanwhile)."""
        if not _at_edge(info):
            return self
        size = sum(len(a.encode("utf-8", "surrogatepass")) + 1 for a in self.command or ())
        size += sum(len(k) + len(v.encode("utf-8", "surrogatepass")) + 2 for k, v in self.env.items())
        if size > MAX_ARGV_ENV_BYTES:
            raise ValueError(f"command and env hold {size / 2**20:.1f} MB, more than a process is given "
                             f"({MAX_ARGV_ENV_BYTES // 2**20} MB at most): pass large data in a file, or with the cell")
        return self

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
    # Set by the REST edge (``gpuqueue.rest.jsonbody``), which decodes the payload off the event loop:
    # the payload's bytes, and the request's JSON as received (forwarded as is in cluster mode).
    _payload: Optional[Buffer] = PrivateAttr(None)
    _raw: Optional[Buffer] = PrivateAttr(None)


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
    result_bytes: int = Field(0, description="size of the stored results (a succeeded cell job's pickle)")
    result_dropped: Optional[str] = Field(
        None, description="why the results are no longer kept (the owner's max_results_mb), if so")
    log_bytes: int = Field(0, description="size of the job's stored output (its event stream), measured as it ended")
    logs_dropped: Optional[str] = Field(
        None, description="why the job's logs are no longer kept (the owner's max_logs_mb), if so")
    failures: int = 0
    preemptions: int = 0
    last_event_seq: int = 0
    group: Optional[str] = Field(
        None, description="the owner's fair-share group when the job was submitted (\"\": none); "
        "None in records made before groups were stored: then the config's")
    hub_groups: Optional[list[str]] = Field(
        None, description="the owner's JupyterHub groups, kept while no scheduler had published "
        "its config when the API took the job (``group`` is None then): the scheduler places the "
        "owner in a group from them, as the API would have, and drops them")
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
