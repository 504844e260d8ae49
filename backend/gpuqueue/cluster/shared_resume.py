"""A cluster job's ``--resume-from JOB_ID[/step-N]`` (a job reference, ``gpuqueue.queue.ckptref``):
before the attempt starts, its worker copies the checkpoint the reference names from the shared
root (``<root>/jobs/<source job>/checkpoints/<name>/step-N/``, :class:`SharedRoot`) into the new
job's own folder, ``$GPUQUEUE_JOB_DIR/resume/<source job>/<name>/step-N/`` (created as the job's
own, marker last), and the job gets that folder in ``GPUQUEUE_RESUME_FROM``. So it resumes on any
node, and never touches the root nor holds its credentials.

The API service checked the reference at submit (the submitter's own job, a checkpoint its
events list); the worker checks the owner again against the store, and refuses what it cannot
give: no shared root on this node, or the checkpoint is not on the root. A refusal is the
attempt's permanent launch failure (``launchfail.RESUME``: no retry), in the user's words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..attempt import launchfail
from ..queue import ckptref
from ..queue.models import JobSpec
from .redis_store import RedisStore
from .shared_root import SharedRoot

RESUME_DIR = "resume"


def fetch(shared: Optional[SharedRoot], store: RedisStore, node: str, job_id: str, spec: JobSpec, job_dir: Path,
          uid: Optional[int] = None, gid: Optional[int] = None) -> Optional[str]:
    """The local folder the job resumes from when ``spec.resume_from`` is a job reference,
    copied from ``shared`` into ``job_dir`` (None: no reference, or the job has checkpoints of
    its own on the root, which a resume takes first). Raises :class:`launchfail.LaunchFailed` (stage
    ``resume``) when the reference names no checkpoint the job's owner may have here, and
    :class:`~gpuqueue.cluster.shared_root.StorageError` when the root cannot be read."""
    ref = ckptref.parse(spec.resume_from)
    if ref is None or (shared is not None and shared.checkpoints(job_id)):  # a later attempt: its own come first
        return None
    try:
        return _fetch(shared, store, node, job_id, ref, job_dir, uid, gid)
    except ckptref.RefError as e:
        raise launchfail.LaunchFailed(launchfail.record(launchfail.RESUME, str(e), node=node)) from None


def _fetch(shared: Optional[SharedRoot], store: RedisStore, node: str, job_id: str, ref: ckptref.Ref,
           job_dir: Path, uid: Optional[int], gid: Optional[int]) -> str:
    job, source = store.get_job(job_id), store.get_job(ref.job)
    if job is None:
        raise RuntimeError("its record is missing from the store")
    ckptref.check_owner(ref, source.owner if source else None, job.owner)
    if shared is None:
        raise ckptref.no_shared_root(ref, node)
    on_root = shared.checkpoints(ref.job)
    by_step = {(name, ckptref.step_of(folder)): folder for name, folder in on_root}
    found = [(n, s) for n, s in by_step if s is not None and ref.name in (None, n) and ref.step in (None, s)]
    if not found:
        raise ckptref.not_on_root(ref)
    name, step = ckptref.choose(ref, found)  # several runs' at one step: which to write
    folder = by_step[(name, step)]
    dest = [RESUME_DIR, ref.job, name, folder]
    shared.pull_one(on_root[(name, folder)], job_dir, dest, uid, gid)
    return str(job_dir.joinpath(*dest))
