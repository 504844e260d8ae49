"""The rules of a job's life that every queue shell applies the same way: the embedded
``QueueService`` and the cluster's daemon and API service.

Pure functions over records: the spec's defaults from the pool, what the scheduler is told of a
job, how an attempt ended, and the job's next state once it has. No I/O.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Iterable, Optional

from ..attempt import failtext, launchfail
from ..attempt.jobdir import MALFORMED
from .config import MAX_LOST_ATTEMPTS, QueueConfig
from . import ckptref
from .errors import BadRequest, Conflict, Forbidden, Rejected
from .models import Attempt, Buffer, JobRecord, JobSpec, SubmitRequest
from ..scheduler.base import Decision, JobRequest, Retry
from .states import JobState, Outcome


def same_cell_job(req: SubmitRequest, live_jobs: Iterable[JobRecord]) -> Optional[JobRecord]:
    """The caller's live job of the same notebook cell and source (re-attach), unless the
    request asks for a new one."""
    spec = req.spec
    if req.new or not (spec.cell_id and spec.source_hash):
        return None
    key = (spec.notebook, spec.cell_id, spec.source_hash)
    return next((j for j in live_jobs if (j.spec.notebook, j.spec.cell_id, j.spec.source_hash) == key), None)


def results_for_owner_only(caller_name: str, job: JobRecord) -> None:
    """Forbidden unless ``caller_name`` owns ``job``: a job's results are a pickle that its own
    (untrusted) code wrote, and unpickling runs code in the process that loads it, so only the
    owner's kernel may fetch them. An admin sees every job's record, events and logs, never its
    pickle: ``%gpuqueue attach`` by an admin would otherwise run a user's code in the admin's kernel."""
    if job.owner != caller_name:
        raise Forbidden(f"the results of job {job.id} are {job.owner}'s: they are a pickle its code wrote, which "
                        f"would run that code in your kernel, so only {job.owner}'s own kernel may fetch them; "
                        f"read its events and logs instead (`gpuqueue logs {job.id}`)")


def check_deletable(job: JobRecord, live: Iterable[JobRecord]) -> None:
    """Conflict (409, naming the fix) unless ``job`` may be deleted (``DELETE /jobs/ID``,
    ``gpuqueue rm``): it has ended, and none of ``live`` (its owner's queued or running jobs)
    names it in ``--resume-from`` (they would find no checkpoint to resume from)."""
    if not job.state.is_terminal:
        raise Conflict(f"job {job.id} is {job.state.value.replace('_', ' ')}: only a finished job can be deleted; "
                       f"cancel it first: gpuqueue cancel {job.id} (`%gpuqueue cancel {job.id}`), then delete it")
    users = sorted(j.id for j in live if j.id != job.id and _resumes_from(j) == job.id)
    if users:
        shown = ", ".join(users[:10]) + (" ..." if len(users) > 10 else "")
        raise Conflict(f"job {job.id} is not deleted: your queued or running job(s) {shown} resume from its "
                       f"checkpoints (--resume-from {job.id}); delete it once they have ended, or cancel them first")


def _resumes_from(job: JobRecord) -> Optional[str]:
    """The id of the job whose checkpoints ``job`` resumes from (None: none)."""
    try:
        ref = ckptref.parse(job.spec.resume_from)
    except ckptref.RefError:
        return None
    return ref.job if ref is not None else None


def deleted_answer(job: JobRecord, deleted: list[str], note: str = "") -> dict[str, Any]:
    """The answer to a delete (``DELETE /jobs/ID``): the job, what went with it, and ``note``."""
    out: dict[str, Any] = {"id": job.id, "owner": job.owner, "state": job.state.value, "deleted": deleted}
    if note:
        out["note"] = note
    return out


def b64decode(text: str | bytes) -> bytes:
    """Strict base64 (no whitespace); BadRequest naming payload_b64 otherwise."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("payload_b64 is not valid base64") from None


def decode_payload(req: SubmitRequest, max_bytes: int, where: str = "") -> Optional[Buffer]:
    """The cell payload's bytes (None for a command job); BadRequest naming the fix. The REST
    edge has decoded it already (``req._payload``, off the event loop); a request built in
    Python carries it as ``payload_b64``."""
    payload = req._payload
    if payload is None and req.payload_b64:
        payload = b64decode(req.payload_b64)
    if req.spec.kind != "cell":
        if payload:
            raise BadRequest("a command job takes no payload")
        return None
    if not payload:
        raise BadRequest("a cell job needs payload_b64 (the pickled cell)")
    if len(payload) > max_bytes:
        raise BadRequest(
            f"the payload is {len(payload) / 1e6:.1f} MB, over the {where}{max_bytes / 1e6:.0f} MB "
            f"limit: pass big data as a file path{' on shared storage' if where else ''}"
        )
    return payload


def with_defaults(spec: JobSpec, config: QueueConfig) -> JobSpec:
    """The spec with its pool's defaults filled in; Rejected for an unknown pool."""
    pool_name = spec.pool or config.default_pool
    pool = config.pools.get(pool_name)
    if pool is None:
        raise Rejected(f"unknown pool {pool_name!r}: the pools are {', '.join(config.pools)}")
    changes: dict[str, Any] = {"pool": pool_name}
    if spec.preemptible is None:
        changes["preemptible"] = pool.preemptible
    if spec.timeout_s is None and pool.default_timeout:
        changes["timeout_s"] = pool.default_timeout
    if spec.retries is None:
        changes["retries"] = config.retries
    return spec.model_copy(update=changes)


def job_request(job: JobRecord, config: QueueConfig) -> JobRequest:
    """What the scheduler knows of a job."""
    s = job.spec
    pool = s.pool or config.default_pool
    pc = config.pools.get(pool)
    return JobRequest(
        id=job.id,
        user=job.owner,
        pool=pool,
        gpus=s.gpus,
        priority=s.priority,
        submit_time=job.created_at,
        nodes=s.nodes,
        time_limit=s.timeout_s,
        preemptible=bool(s.preemptible if s.preemptible is not None else (pc.preemptible if pc else False)),
        max_retries=s.retries if s.retries is not None else config.retries,
        failures=job.failures,
        not_before=job.not_before or 0.0,
        group=job_group(job, config),
    )


def adopt(job: JobRecord, config: QueueConfig) -> bool:
    """Fill in what the API leaves open when it takes a job before any scheduler has published
    its config: the pool (the config's default where the job names none) with its defaults,
    and the owner's group (by ``members``, then the hub groups the record kept). Rejected for an
    unknown pool. True if the record changed (the caller writes it)."""
    if job.spec.pool is not None:  # the API checked it against a config
        return False
    job.spec = with_defaults(job.spec, config)
    if job.group is None:
        job.group = config.group_of(job.owner, job.hub_groups or ()) or ""
    job.hub_groups = None
    return True


def job_group(job: JobRecord, config: QueueConfig) -> Optional[str]:
    """The job's fair-share group: the one its record stored at submit (``""``: none), else
    (a record made before groups were stored) the owner's by the config's ``members``."""
    return job.group if job.group is not None else config.group_of(job.owner)


MAX_ERROR_CHARS = 10_000  # of the "type: message" a job's error record gives job.error
MAX_TRACEBACK_CHARS = 200_000  # of its traceback kept as the attempt's message


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " …[cut]"


def clean_exit_record(rec: Any) -> dict[str, Any]:
    """The exit record as settling reads it. The runner writes it, but where the job runs as
    the queue's own user (embedded mode, a worker without identities) the job can write the
    runner's files itself: a field of another type than the runner's made settling raise, and
    the job stayed running for ever. Fields of a wrong type are dropped."""
    if not isinstance(rec, dict):
        return {"exit_code": None, "stop_reason": None, "lost": True,
                "error": "the attempt's exit record is not one the runner wrote"}
    out = dict(rec)
    code = out.get("exit_code")
    if not (code is None or (isinstance(code, int) and not isinstance(code, bool))):
        out["exit_code"] = 1 if code else None
    for key, kind in (("stop_reason", str), ("error", str), ("launch_error", dict)):
        if out.get(key) is not None and not isinstance(out[key], kind):
            out.pop(key)
    ended = out.get("ended")
    if ended is not None and (not isinstance(ended, (int, float)) or isinstance(ended, bool)):
        out.pop("ended")
    return out


def job_error(error_record: Any) -> Optional[tuple[str, Optional[str], bool]]:
    """``(error, traceback, well_formed)`` from the job's error record (``error.json``: the
    job writes it, so it may be anything), or None where it left none. One that is not an
    object with a string ``type`` and ``message`` gives a sentence saying so (the readers give
    ``{MALFORMED: why}`` for a file that is not JSON)."""
    if error_record is None or error_record == {}:
        return None
    if isinstance(error_record, dict) and isinstance(error_record.get("type"), str) \
            and isinstance(error_record.get("message"), str):
        tb = error_record.get("traceback")
        what = f"{error_record['type']}: {error_record['message']}".lstrip(": ")
        rank = error_record.get("rank")  # a rank of a multi-rank job (gpuqueue.job.distributed)
        rank = str(rank) if isinstance(rank, (int, str)) and str(rank).isdigit() and len(str(rank)) <= 6 else None
        if rank is not None:
            what = f"rank {rank} failed: {what}"
            tb = f"rank {rank} failed:\n{tb}" if isinstance(tb, str) and tb else tb
        return (_cut(what, MAX_ERROR_CHARS),
                _cut(tb, MAX_TRACEBACK_CHARS) if isinstance(tb, str) and tb else None, True)
    why = error_record.get(MALFORMED) if isinstance(error_record, dict) else None
    why = why if isinstance(why, str) else "not an object with a string type and message"
    return f"its error record (error.json in the attempt's folder) is malformed ({why}) and was ignored", None, False


def job_result(result_record: Any) -> tuple[list[str], dict[str, str]]:
    """The names a cell job returned and those it could not (``result.json``, written by the
    job: what is not a list of names and a map of name to reason is left out)."""
    if not isinstance(result_record, dict):
        return [], {}
    names = result_record.get("names")
    unret = result_record.get("unreturnable")
    return ([n for n in names if isinstance(n, str)] if isinstance(names, list) else [],
            {k: _cut(v if isinstance(v, str) else str(v), 1000) for k, v in unret.items()}
            if isinstance(unret, dict) else {})


def attempt_outcome(job: JobRecord, exit_record: dict[str, Any], has_result: bool,
                    max_lost: int = MAX_LOST_ATTEMPTS) -> Outcome:
    """How the current attempt ended, from the runner's exit record (``exit_code``,
    ``stop_reason``, ``lost``, ``launch_error``) and whether a cell job stored its results. An
    attempt that could not start for a cause every retry would meet again
    (``launchfail.permanent``) is CANNOT_START, and one whose results are over what a job may
    return (``result_too_big``: every retry makes the same) RESULT_TOO_BIG; no policy retries
    either. A lost attempt (not
    counted as a failure, relaunched at once) that makes ``max_lost`` in a row counts as
    FAILED, so that a job whose process keeps vanishing meets its retry limit instead of being
    relaunched forever."""
    a = job.current_attempt
    code = exit_record.get("exit_code")
    reason = exit_record.get("stop_reason") or (a.stop_requested if a else None)
    if reason == "cancelled":
        return Outcome.CANCELLED
    if reason == "preempted":
        return Outcome.PREEMPTED
    if reason == "timed_out":
        return Outcome.TIMED_OUT
    if launchfail.permanent(exit_record.get("launch_error")):
        return Outcome.CANNOT_START
    if exit_record.get("result_too_big"):
        return Outcome.RESULT_TOO_BIG
    if exit_record.get("lost") or reason in ("terminated", "fenced"):
        if exit_record.get("lost") and lost_in_a_row(job) + 1 >= max_lost:
            return Outcome.FAILED
        return Outcome.LOST
    if code == 0 and (job.spec.kind == "command" or has_result):
        return Outcome.SUCCEEDED
    return Outcome.FAILED


LOST_WHY = {
    "terminated": "{node} was stopped (its worker or server shut down) and stopped this job first",
    "fenced": "a newer attempt of the job took its place",
    "": "the job process vanished without an exit record",
}
"""Why an attempt ended lost, by its stop reason, where its exit record says no more (its
message, which the cell, the widget and ``gpuqueue logs`` show)."""


def lost_in_a_row(job: JobRecord) -> int:
    """How many attempts before the current one were lost, counting back from it."""
    n = 0
    for a in reversed(job.attempts[:-1]):
        if a.outcome != Outcome.LOST:
            break
        n += 1
    return n


def settle(
    job: JobRecord,
    outcome: Outcome,
    exit_record: dict[str, Any],
    decisions: list[Decision],
    now: float,
    error_record: Optional[dict[str, Any]] = None,
    result_record: Optional[dict[str, Any]] = None,
) -> tuple[JobState, dict[str, Any]]:
    """Record the attempt's end on ``job`` (outcome, error, results, counters) and return the
    job's next state with the data of its ``state`` event. ``decisions`` are what the scheduler
    returned for the attempt's end (a Retry means the job is queued again)."""
    a = job.current_attempt
    assert a is not None
    err = job_error(error_record)
    code = exit_record.get("exit_code")
    a.outcome, a.exit_code, a.ended_at = outcome, code, float(exit_record.get("ended") or now)
    if outcome in (Outcome.FAILED, Outcome.CANNOT_START, Outcome.RESULT_TOO_BIG):
        if exit_record.get("launch_error"):  # it did not start: the cause, and the fix
            job.error = launchfail.message(exit_record["launch_error"])
            a.message = job.error
        elif err is not None and err[2]:
            job.error = err[0]
            a.message = err[1] or job.error
        elif exit_record.get("lost"):  # the cap of attempt_outcome
            lost = f"the job process was lost {lost_in_a_row(job) + 1} times in a row"
            # the cause where one is known (its node stopped answering, ...); else its runner's log
            job.error = (f"{lost}; the last time: {exit_record['error']}" if exit_record.get("error") else
                         f"{lost}: its runner died without an exit record; see runner.log in the attempt folder")
            a.message = job.error
        else:  # no error record of its own (a command job): its exit, and its last lines on stderr
            tail = failtext.clean_tail(exit_record.get("stderr_tail"))
            job.error = exit_record.get("error") or (
                failtext.process_error(code, tail) if isinstance(code, int) else f"the job process exited with code {code}")
            if err is not None:  # malformed: said beside the exit
                job.error = f"{job.error}; {err[0]}"
            shown = failtext.tail_text(tail)
            a.message = f"{job.error}\n{shown}" if shown else job.error
    if outcome == Outcome.LOST:
        why = LOST_WHY.get(str(exit_record.get("stop_reason") or a.stop_requested or ""), LOST_WHY[""])
        a.message = exit_record.get("error") or why.format(node=f"node {a.node}" if a.node else "its node")
    retry = next((d for d in decisions if isinstance(d, Retry) and d.job_id == job.id), None)
    if outcome == Outcome.SUCCEEDED:
        job.result_names, job.unreturnable = job_result(result_record)
        return JobState.SUCCEEDED, {"exit_code": code}
    if retry is not None:
        if retry.counted:
            job.failures += 1
        if outcome == Outcome.PREEMPTED:
            job.preemptions += 1
        job.not_before = retry.at if retry.at > now else None
        state = JobState.RETRYING if retry.at > now else JobState.QUEUED
        return state, {"after": outcome.value, "retry_at": retry.at, "error": job.error, "attempt": a.number,
                       "why": _why_ended(outcome, job, a)}
    final = {Outcome.CANCELLED: JobState.CANCELLED, Outcome.TIMED_OUT: JobState.TIMED_OUT}.get(outcome, JobState.FAILED)
    if outcome == Outcome.LOST:
        job.error = job.error or "the job process was lost and no retries are left"
    return final, {"exit_code": code, "error": job.error,
                   "traceback": a.message if final == JobState.FAILED else None}


def _why_ended(outcome: Outcome, job: JobRecord, a: Attempt) -> Optional[str]:
    """Why an attempt that is retried ended, in a line for its ``state`` event (the cell, its
    widget and ``gpuqueue logs`` say it): a failure's error, a lost attempt's cause (its node
    stopped answering, its runner vanished); None for a preemption or a time limit."""
    why = job.error if outcome == Outcome.FAILED else a.message if outcome == Outcome.LOST else None
    return str(why).splitlines()[0][:300] if why else None


def result_too_big(nbytes: int, limit: int) -> dict[str, Any]:
    """What an exit record carries (``error``, ``result_too_big``) for a cell job whose results
    are over the ``limit`` bytes one job may return: the job fails at once (RESULT_TOO_BIG)."""
    return {"result_too_big": {"bytes": nbytes, "limit": limit},
            "error": (f"the results are {nbytes / 1e6:.0f} MB, over the {limit / 1e6:.0f} MB that one job may "
                      f"return: save big objects (models, arrays) to shared storage in the cell and return "
                      f"their path instead; the job is not retried, as every attempt would make the same results")}
