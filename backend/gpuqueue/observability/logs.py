"""Structured logs for every gpuqueue process: JSON lines for machines, a short line for people.

Call ``setup_logging()`` once at the start of a process (the scheduler daemon, a worker, the
API service, the CLI). Every record then carries the job it is about, when it is about one:

* ``job_id``, ``user``, ``attempt`` and ``node``, taken in this order from
  1. the record's ``extra=`` (``log.info("started", extra=job_fields(job))``),
  2. the ``log_context(...)`` block the code runs in (a ``contextvars`` value, so each asyncio
     task and thread keeps its own; a new thread starts with an empty context),
  3. the process-wide fields given to ``setup_logging(node=...)`` or ``bind(...)``;
* ``component`` (``scheduler``, ``worker``, ``api``, ``jupyter``...) and ``pid``;
* any other ``extra=`` keys, as they are (values that are not JSON become strings).

The JSON format is one object per line::

    {"ts": "2025-01-31T12:00:00.123Z", "level": "info", "logger": "gpuqueue.service",
     "message": "job started", "component": "worker", "pid": 4242, "job_id": "j-3f9c2a71d0b4",
     "user": "ana", "attempt": 2, "node": "gpu-07"}

with ``exc`` (the formatted traceback) when the record has one. Fields that are unknown are
left out rather than written as null. The human format is
``12:00:00.123 INFO  gpuqueue.service [j-3f9c2a71d0b4 ana #2 @gpu-07] job started``.

The format is ``fmt`` if given, else ``$GPUQUEUE_LOG_FORMAT`` (``json`` or ``human``), else
human when the stream is a terminal and JSON otherwise. The level is ``level``, else
``$GPUQUEUE_LOG_LEVEL``, else INFO.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from types import MappingProxyType
from typing import IO, Any, Iterator, Mapping, Optional

CONTEXT_FIELDS = ("job_id", "user", "attempt", "node")
FORMATS = ("json", "human")

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "gpuqueue_log_context", default=MappingProxyType({})
)
_process: dict[str, Any] = {}

# LogRecord attributes that are not "extra" fields (everything else a record carries is)
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName", "component", "pid", *CONTEXT_FIELDS}
)


def bind(**fields: Any) -> None:
    """Set process-wide fields (e.g. ``node`` of a worker); None removes one."""
    for k, v in fields.items():
        if v is None:
            _process.pop(k, None)
        else:
            _process[k] = v


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Within the block, every record carries these fields (None values are ignored)::

        with log_context(job_id=job.id, user=job.owner, attempt=2, node="gpu-07"):
            log.info("launching")
    """
    merged = dict(_context.get())
    merged.update({k: v for k, v in fields.items() if v is not None})
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    """The fields ``log_context`` blocks have set here (a copy)."""
    return dict(_context.get())


def job_fields(job: Any, attempt: Any = None) -> dict[str, Any]:
    """``extra=`` fields for a job record (``gpuqueue.queue.models.JobRecord`` or alike): its id, owner,
    and the attempt's number and node (the current attempt unless one is given)."""
    out: dict[str, Any] = {}
    jid = getattr(job, "id", None)
    if jid is not None:
        out["job_id"] = jid
    owner = getattr(job, "owner", None) or getattr(job, "user", None)
    if owner is not None:
        out["user"] = owner
    if attempt is None:
        attempts = getattr(job, "attempts", None) or []
        attempt = attempts[-1] if attempts else None
    if attempt is not None:
        number = getattr(attempt, "number", None)
        if number is not None:
            out["attempt"] = number
        node = getattr(attempt, "node", None)
        if node:
            out["node"] = node
    return out


class ContextFilter(logging.Filter):
    """Puts ``component``, ``pid`` and the job fields on every record that passes the handler."""

    def __init__(self, component: Optional[str] = None):
        super().__init__()
        self.component = component

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        for k in CONTEXT_FIELDS:
            if getattr(record, k, None) is None:
                v = ctx.get(k, _process.get(k))
                setattr(record, k, v)
        if getattr(record, "component", None) is None:
            record.component = self.component or _process.get("component")
        if getattr(record, "pid", None) is None:
            record.pid = record.process
        for k, v in _process.items():  # other bound fields (e.g. pool, leader epoch)
            if k not in CONTEXT_FIELDS and k != "component" and not hasattr(record, k):
                setattr(record, k, v)
        return True


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k in ("component", "pid", *CONTEXT_FIELDS):
            v = getattr(record, k, None)
            if v is not None:
                out[k] = _jsonable(v)
        for k, v in record.__dict__.items():
            if k not in _STANDARD and not k.startswith("_") and k not in out:
                out[k] = _jsonable(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class HumanFormatter(logging.Formatter):
    """``HH:MM:SS.mmm LEVEL logger [job user #attempt @node] message`` for a terminal."""

    COLORS = {"DEBUG": "\033[2m", "WARNING": "\033[33m", "ERROR": "\033[31m", "CRITICAL": "\033[1;31m"}

    def __init__(self, color: bool = False):
        super().__init__()
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        ctx = []
        jid, user, attempt, node = (getattr(record, k, None) for k in CONTEXT_FIELDS)
        if jid:
            ctx.append(str(jid))
        if user:
            ctx.append(str(user))
        if attempt is not None:
            ctx.append(f"#{attempt}")
        if node:
            ctx.append(f"@{node}")
        where = f" [{' '.join(ctx)}]" if ctx else ""
        level = f"{record.levelname:<5}"
        if self.color and record.levelname in self.COLORS:
            level = f"{self.COLORS[record.levelname]}{level}\033[0m"
        line = f"{t} {level} {record.name}{where} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def resolve_format(fmt: Optional[str] = None, stream: Optional[IO[str]] = None) -> str:
    """``json`` or ``human``: ``fmt``, else ``$GPUQUEUE_LOG_FORMAT``, else by whether ``stream``
    is a terminal. Raises ValueError naming the choices for anything else."""
    choice = (fmt or os.environ.get("GPUQUEUE_LOG_FORMAT") or "auto").strip().lower()
    if choice == "auto":
        s = stream if stream is not None else sys.stderr
        try:
            return "human" if s.isatty() else "json"
        except (AttributeError, ValueError):
            return "json"
    if choice not in FORMATS:
        raise ValueError(f"log format {choice!r} is not one of: json, human, auto")
    return choice


# libraries whose INFO records reach a process of ours without saying anything to its admin:
# alembic (through jupyterhub's HubAuth, in `gpuqueue api` as a hub service) logs one line per
# plugin at import. Their warnings and errors still show.
QUIET_LIBRARIES = ("alembic",)


def setup_logging(
    fmt: Optional[str] = None,
    level: Optional[str | int] = None,
    *,
    stream: Optional[IO[str]] = None,
    component: Optional[str] = None,
    node: Optional[str] = None,
    logger: Optional[str] = None,
) -> logging.Handler:
    """Send this process's logs to ``stream`` (stderr) as JSON or human lines.

    ``logger=None`` configures the root logger (a process of its own: daemon, worker, API, CLI);
    ``logger="gpuqueue"`` only gpuqueue's loggers (inside a host that owns logging, e.g. a Jupyter
    server; they then stop propagating to the root). Calling it again replaces the handler it
    installed before, so it is safe to call twice. ``component`` and ``node`` are stamped on every
    record. Returns the handler.
    """
    s = stream if stream is not None else sys.stderr
    chosen = resolve_format(fmt, s)
    lvl = level if level is not None else (os.environ.get("GPUQUEUE_LOG_LEVEL") or "INFO")
    if isinstance(lvl, str):
        lvl = lvl.strip().upper()
        if not isinstance(logging.getLevelName(lvl), int):
            raise ValueError(f"log level {lvl!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    if component is not None:
        bind(component=component)
    if node is not None:
        bind(node=node)
    target = logging.getLogger(logger)
    for h in list(target.handlers):
        if getattr(h, "_gpuqueue", False):
            target.removeHandler(h)
            h.close()  # a StreamHandler leaves its stream open
    handler = logging.StreamHandler(s)
    handler._gpuqueue = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter(component))
    if chosen == "json":
        handler.setFormatter(JsonFormatter())
    else:
        try:
            color = s.isatty() and not os.environ.get("NO_COLOR")
        except (AttributeError, ValueError):
            color = False
        handler.setFormatter(HumanFormatter(color=color))
    target.addHandler(handler)
    target.setLevel(lvl)
    if logger:
        target.propagate = False
    else:
        logging.captureWarnings(True)  # Python warnings become records too (a process of our own)
        numeric = logging.getLevelName(lvl) if isinstance(lvl, str) else lvl
        for name in QUIET_LIBRARIES:  # their INFO records say nothing to an admin
            logging.getLogger(name).setLevel(max(logging.WARNING, int(numeric)))
    return handler
