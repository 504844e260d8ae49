"""Job-relative checkpoint references: ``--resume-from JOB_ID`` (that job's latest complete
checkpoint), ``JOB_ID/step-N`` or ``JOB_ID/NAME/step-N`` (``NAME``: the ``Checkpointer``'s
``name``, needed only where two of the job's runs saved the same step). They work in both modes
and on any node, where a path works only where its files are.

One place for their grammar (:func:`parse`), for which checkpoint one names (:func:`choose`),
for the refusals a user reads (:class:`RefError`), and for what a listing of a job's
checkpoints says (:func:`listing`, :func:`listing_lines`: ``%gpuqueue checkpoints``, the
widget, ``gpuqueue checkpoints``). Who resolves one:

* at submit, the queue's edge (the embedded service, the cluster's API service) checks that the
  job is the submitter's own (same owner, as the server identifies them; another user's job is
  refused in the very words of a job that does not exist) and that it has the checkpoint;
* when an attempt starts, the embedded service gives the job the checkpoint's folder in the
  source job's folder (``gpuqueue.attempt.resume``); a cluster worker copies it from the shared
  root into the new job's own folder (``gpuqueue.cluster.shared_resume``). The job then finds
  its path in ``GPUQUEUE_RESUME_FROM``, as for a path given by hand.

Anything whose first path component is not a job id (``j-`` and 12 hex digits) is a path or
URL, as before; a folder named like a job is written ``./j-...``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from .text import printable

JOB_ID = re.compile(r"j-[0-9a-f]{12}")
"""A job id (``gpuqueue.queue.models.new_job_id``)."""
MAX_REF_LEN = 160
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}"
_NAME_RE = re.compile(_NAME)
_REF = re.compile(rf"(?P<job>j-[0-9a-f]{{12}})(?:/(?:(?P<name>{_NAME})/)?step-(?P<step>[0-9]{{1,12}}))?/?")
_SHOWN = 12  # steps a refusal names at most
_STEP_DIGITS = re.compile(r"[0-9]{1,12}")


class RefError(ValueError):
    """A reference that names no checkpoint the caller may resume from. ``str()`` is the user's
    message: what was wrong and what to write instead."""


@dataclass(frozen=True)
class Ref:
    """A parsed reference: ``job`` its job id; ``name`` the run (None: any); ``step`` (None:
    the latest); ``text`` as the user wrote it."""

    job: str
    name: Optional[str]
    step: Optional[int]
    text: str


def _said(text: str) -> str:
    """``text`` as a message quotes it: printable, and cut short."""
    return printable(text if len(text) <= 100 else text[:100] + "...")


def is_ref(text: str) -> bool:
    """Whether ``text`` is meant as a job reference: its first path component is a job id."""
    return bool(JOB_ID.fullmatch(text.split("/", 1)[0]))


def parse(text: Optional[str]) -> Optional[Ref]:
    """The reference ``text`` is, or None for a path or URL (or nothing). A job id followed by
    something that is not a checkpoint of it raises :class:`RefError`, as does one over
    :data:`MAX_REF_LEN` characters."""
    if not text or not is_ref(text):
        return None
    m = _REF.fullmatch(text)
    if len(text) > MAX_REF_LEN or m is None:
        job = text.split("/", 1)[0]
        raise RefError(f"--resume-from {_said(text)}: {job} is a job id, but the rest is not a checkpoint of it: "
                       f"write {job} (its latest checkpoint), {job}/step-N or {job}/NAME/step-N, as "
                       f"`%gpuqueue checkpoints {job}` prints them (a folder named like a job: ./{_said(text)})")
    step = m.group("step")
    return Ref(m.group("job"), m.group("name"), int(step) if step is not None else None, text)


def check_syntax(text: Optional[str]) -> None:
    """At a request's edge: a reference must parse (ValueError with the user's message)."""
    parse(text)


def no_job(ref: Ref) -> RefError:
    """The refusal of a job that does not exist, and of another user's (the same words: whether
    someone else has a job of that id is not the caller's to learn)."""
    return RefError(f"--resume-from {_said(ref.text)}: you have no job {ref.job}; give one of your own jobs' ids "
                    f"(`%gpuqueue list`, `gpuqueue ls`): only your own jobs' checkpoints can be resumed from")


def check_owner(ref: Ref, source_owner: Optional[str], owner: str) -> None:
    """Refuse unless the referenced job exists (``source_owner`` not None) and is ``owner``'s."""
    if source_owner is None or source_owner != owner:
        raise no_job(ref)


def no_shared_root(ref: Ref, node: str) -> RefError:
    """A cluster worker without a shared root cannot fetch another job's checkpoint."""
    return RefError(f"--resume-from {_said(ref.text)}: node {node} keeps checkpoints on its own disk only, so it "
                    f"cannot fetch job {ref.job}'s; resuming from another job's checkpoint on any node needs the "
                    f"workers' shared root (`gpuqueue worker --shared-dir`, docs/deploy.md): ask your admin")


def step_folder(step: int) -> str:
    """A checkpoint's folder name (``gpuqueue.job.checkpoint``'s layout)."""
    return f"step-{step:09d}"


def step_of(folder: str) -> Optional[int]:
    """The step of a ``step-N`` folder name (N: 1 to 12 ASCII digits, as a reference writes
    it), or None: a folder a job named ``step-²`` or ``step-`` and 5000 digits is no checkpoint
    (``int()`` refuses those, and the queue's start of the next job must not)."""
    head, _, digits = folder.partition("-")
    return int(digits) if head == "step" and _STEP_DIGITS.fullmatch(digits) else None


def choose(ref: Ref, found: Iterable[tuple[str, int]]) -> tuple[str, int]:
    """The ``(name, step)`` of ``found`` (the job's complete checkpoints) that ``ref`` names:
    its step (in its run, if named), else the highest step. Refused with the steps there are
    when there is none, and with the form to write when several runs hold that step."""
    have = sorted({(n, s) for n, s in found if ref.name is None or n == ref.name}, key=lambda c: (c[1], c[0]))
    of_run = f" of run {ref.name}" if ref.name else ""
    listed = f"`%gpuqueue checkpoints {ref.job}` lists them"
    if not have:
        raise RefError(f"--resume-from {_said(ref.text)}: job {ref.job} has no complete checkpoint{of_run}; {listed}")
    step = ref.step if ref.step is not None else have[-1][1]
    names = [n for n, s in have if s == step]
    if not names:
        steps = sorted({s for _, s in have})
        shown = ", ".join(str(s) for s in steps[-_SHOWN:])
        raise RefError(f"--resume-from {_said(ref.text)}: job {ref.job} has no complete checkpoint at step {step}"
                       f"{of_run}; it has step{'s' if len(steps) > 1 else ''} {shown} ({listed})")
    if len(names) > 1:
        writable = [n for n in names if writable_name(n)]
        example = (f"e.g. {ref.job}/{writable[0]}/step-{step}" if writable else
                   f"or, as no run's name there fits a reference, resume from the checkpoint's path ({listed})")
        raise RefError(f"--resume-from {_said(ref.text)}: job {ref.job} has step {step} in several runs "
                       f"({', '.join(_said(n) for n in names)}): write {ref.job}/NAME/step-{step}, {example}")
    return names[0], step


def writable_name(name: str) -> bool:
    """Whether a run's name (``Checkpointer(name=...)``) fits ``JOB_ID/NAME/step-N``: ASCII letters,
    digits, ``_``, ``.`` and ``-``, not starting with ``.`` or ``-``, at most 100 characters."""
    return bool(_NAME_RE.fullmatch(name))


def not_on_root(ref: Ref) -> RefError:
    """The checkpoint ``ref`` names is not on the workers' shared root (the job's events listed it
    at submit: it stayed on the node that saved it, or was deleted since)."""
    which = f"step {ref.step}" + (f" of run {ref.name}" if ref.name else "") if ref.step is not None else "latest"
    return RefError(f"--resume-from {_said(ref.text)}: the {which} checkpoint of job {ref.job} is not on the "
                    f"workers' shared root: it stayed on the node that saved it (over the root's --shared-max-gb, "
                    f"or its copy failed: that job's log says which), or it was deleted since; `%gpuqueue "
                    f"checkpoints {ref.job}` lists its checkpoints")


# -- what a listing says ----------------------------------------------------------------------
def best_checkpoints(cps: list[dict[str, Any]]) -> set[int]:
    """Indexes in ``cps`` (``checkpoint`` events, oldest first) of the best checkpoint now, one
    per checkpointer name: an event's ``best`` says it was the best *when saved*, so only the
    newest such event of each name is still the best."""
    last: dict[Any, int] = {}
    for i, cp in enumerate(cps):
        if cp.get("best"):
            last[cp.get("name")] = i
    return set(last.values())


def _well_formed(cp: Any) -> Optional[dict[str, Any]]:
    """A ``checkpoint`` event's data as a listing reads it, or None for one no ``Checkpointer``
    writes: the job process writes these records itself, so a job may send any JSON object (a
    list for a name, a number for ``rotated``), which must not break a listing or a submit that
    resumes from the job. ``rotated`` keeps only its integer steps, ``metrics`` only an object."""
    if not isinstance(cp, dict):
        return None
    step, name = cp.get("step"), cp.get("name")
    if not isinstance(step, int) or isinstance(step, bool) or not (name is None or isinstance(name, str)):
        return None
    rotated = cp.get("rotated")
    rotated = [s for s in rotated if isinstance(s, int) and not isinstance(s, bool)] \
        if isinstance(rotated, list) else []
    metrics = cp.get("metrics") if isinstance(cp.get("metrics"), dict) else {}
    return dict(cp, rotated=rotated, metrics=metrics)


def kept_checkpoints(cps: list[dict[str, Any]]) -> tuple[list[tuple[dict[str, Any], bool]], int]:
    """The checkpoints of ``cps`` (``checkpoint`` events, oldest first) that still exist, each with
    whether it is the best now, and how many older ones its checkpointer's rotation deleted (an
    event's ``rotated`` names the steps its save deleted; one saved again later is back). Events
    no ``Checkpointer`` writes are left out (:func:`_well_formed`)."""
    cps = [c for c in (_well_formed(cp) for cp in cps) if c is not None]
    best_now = best_checkpoints(cps)
    latest: dict[tuple[Any, Any], int] = {}
    gone: set[tuple[Any, Any]] = set()
    for i, cp in enumerate(cps):
        key = (cp.get("name"), cp.get("step"))
        latest[key] = i
        gone.discard(key)
        gone.update((cp.get("name"), step) for step in cp.get("rotated") or ())
    kept = [(cp, i in best_now) for i, cp in enumerate(cps)
            if latest[(cp.get("name"), cp.get("step"))] == i and (cp.get("name"), cp.get("step")) not in gone]
    return kept, len(gone & latest.keys())


def found_in(cps: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """``(name, step)`` of the checkpoints ``cps`` (``checkpoint`` events) says are kept."""
    return [(str(cp.get("name") or "default"), int(cp["step"])) for cp, _ in kept_checkpoints(cps)[0]
            if isinstance(cp.get("step"), int)]


@dataclass
class Listed:
    """One kept checkpoint as a listing shows it: ``ref`` what ``--resume-from`` takes (None: no
    reference names it, as its run's name fits none and another run kept its step), ``path``
    where its files were saved, on ``node`` (None: not known)."""

    step: Any
    ref: Optional[str]
    path: Any
    node: Optional[str]
    best: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    name: str = "default"


def with_nodes(events: Iterable[dict[str, Any]], node: Optional[str] = None
               ) -> tuple[list[dict[str, Any]], Optional[str]]:
    """The ``checkpoint`` events' data of ``events`` (a job's stream, oldest first), each with
    ``node``: where the attempt that saved it ran (from the ``starting`` state event before it;
    ``node`` where the events before these left it); and that node after them."""
    out: list[dict[str, Any]] = []
    for ev in events:
        d = ev.get("data") or {}
        if ev.get("type") == "state" and d.get("state") == "starting" and d.get("node"):
            node = str(d["node"])
        elif ev.get("type") == "checkpoint":
            out.append(dict(d, node=node))
    return out, node


def listing(job_id: str, cps: list[dict[str, Any]]) -> tuple[list[Listed], int]:
    """The kept checkpoints of ``cps`` (checkpoint events' data, with ``node`` as
    :func:`with_nodes` adds it), each with its reference (``JOB/step-N``, or ``JOB/NAME/step-N``
    where another run kept the same step; None there for a run whose name fits no reference,
    :func:`writable_name`, which :func:`parse` would refuse), and how many rotation deleted."""
    kept, rotated = kept_checkpoints(cps)
    runs_of: dict[Any, set[Any]] = {}
    for cp, _ in kept:
        runs_of.setdefault(cp.get("step"), set()).add(cp.get("name"))
    out = []
    for cp, best in kept:
        step, name = cp.get("step"), cp.get("name") or "default"
        ref: Optional[str] = f"{job_id}/step-{step}"
        if len(runs_of[step]) > 1:
            ref = f"{job_id}/{name}/step-{step}" if writable_name(name) else None
        out.append(Listed(step, ref, cp.get("path"), cp.get("node"), best, dict(cp.get("metrics") or {}), name))
    return out, rotated


def rotated_note(count: int) -> str:
    """What a listing of checkpoints says of those rotation deleted (``max_checkpoints``)."""
    if not count:
        return ""
    return (f"({count} older checkpoint{'s were' if count > 1 else ' was'} deleted by rotation: "
            "Checkpointer(max_checkpoints=...) keeps the newest and the best)")


def metrics_text(metrics: dict[str, Any]) -> str:
    """``loss=0.25, acc=0.9`` (floats to 4 significant digits)."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def entry_lines(item: Listed) -> tuple[str, str]:
    """The two lines of one checkpoint: what to resume from, and where its files were saved. One
    that no reference names (``ref`` None) says so and to resume from its path."""
    metrics = metrics_text(item.metrics)
    resume = f"--resume-from {item.ref}" if item.ref is not None else (
        f"run '{_said(item.name)}', which no reference names (another run kept this step, and the run name "
        f"in JOB_ID/NAME/step-N has only letters, digits, _ . -): --resume-from its path below, where its "
        f"files are")
    head = f"step {item.step}: {resume}" + (f"  {metrics}" if metrics else "") + \
        ("  (best)" if item.best else "")
    where = f"on node {item.node}: " if item.node else ""
    return head, f"    saved {where}{item.path}"


def listing_lines(job_id: str, events: Iterable[dict[str, Any]]) -> list[str]:
    """What ``%gpuqueue checkpoints ID`` and ``gpuqueue checkpoints ID`` print for a job's
    events (``events`` oldest first)."""
    items, rotated = listing(job_id, with_nodes(events)[0])
    if not items and not rotated:
        return [f"{job_id}: no checkpoints yet"]
    lines = [line for item in items for line in entry_lines(item)]
    if items:
        lines.append(f"(`--resume-from {job_id}` takes the latest; a reference works on any node, "
                     f"the files above are where the job saved them)")
    if rotated:
        lines.append(rotated_note(rotated))
    return [printable(line) for line in lines]
