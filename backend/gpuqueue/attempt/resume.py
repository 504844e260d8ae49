"""The checkpoint a job reference (``--resume-from j-.../step-N``, ``gpuqueue.queue.ckptref``)
names, where the job that saved it ran on this machine: its folder in that job's own
``checkpoints`` folder (embedded mode, where every job's folder is on the one machine).

A cluster worker instead copies it from the shared root (``gpuqueue.cluster.shared_resume``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..job.checkpoint import MARKER
from ..queue import ckptref


def local_checkpoints(job_folder: Path) -> dict[tuple[str, int], Path]:
    """The complete checkpoints in ``job_folder/checkpoints`` (``$GPUQUEUE_JOB_DIR`` of that job):
    ``(name, step)`` -> its folder. A folder without its ``COMPLETE`` marker is not one."""
    root = job_folder / "checkpoints"
    out: dict[tuple[str, int], Path] = {}
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return out
    for name in names:
        if name.startswith("."):
            continue
        try:
            steps = os.listdir(root / name)
        except OSError:
            continue
        for folder in steps:
            step = ckptref.step_of(folder)
            if step is not None and (root / name / folder / MARKER).is_file():
                out[(name, step)] = root / name / folder
    return out


def local_checkpoint(ref: ckptref.Ref, source_owner: Optional[str], owner: str, job_folder: Path) -> str:
    """The folder of the checkpoint ``ref`` names, for a job of ``owner``: ``ref``'s job
    (``source_owner``, None if there is none; its folder ``job_folder``) must be ``owner``'s.
    Raises :class:`~gpuqueue.queue.ckptref.RefError` with the user's message."""
    ckptref.check_owner(ref, source_owner, owner)
    found = local_checkpoints(job_folder)
    return str(found[ckptref.choose(ref, found)])
