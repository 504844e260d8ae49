"""An attempt that could not start: before the user's code ran, its program could not be run, its
working folder entered, its folders made, or its owner given an identity on the node.

One record for every place a launch can fail (the runner's exec and the working folder it
enters, the cluster worker's folders and identities, the embedded queue's runner), put in the
attempt's exit record under ``launch_error``; and the one rule, :func:`permanent`, for whether its
cause will go away by itself. ``queue.lifecycle.attempt_outcome`` reads it: a permanent cause
fails the job at once (``Outcome.CANNOT_START``: no retry is spent on it) with
:func:`message`, which names the cause and the fix; a transient one (the runner could not be
forked, the disk was full) is an ordinary failure, retried with backoff.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Mapping, Optional

# the stages a launch goes through, in order
IDENTITY = "identity"  # the owner's Unix identity on the node (cluster workers running as root)
FOLDER = "folder"  # the job's and the attempt's folders on the node
CWD = "cwd"  # the job's working folder, entered as the job's user
EXEC = "exec"  # the program: the job's Python (a cell) or its command's first word

# errors that the same launch meets again on a retry: a path that is missing, not reachable or
# not a program. Anything else (ENOMEM, EAGAIN, ENOSPC, EIO, ...) may pass and is retried.
PERMANENT_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.ENOTDIR,
                              errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG})


def record(stage: str, error: BaseException | str, path: Optional[str] = None,
           user: Optional[Mapping[str, Any]] = None, node: Optional[str] = None) -> dict[str, Any]:
    """The ``launch_error`` of an exit record: the ``stage`` that failed, the OS error's number
    and text (or ``error``'s text), the ``path`` it concerned, the ``user`` the job was to run as
    (``{"name", "uid"}``; None: the launching process's own uid) and the ``node``."""
    num = error.errno if isinstance(error, OSError) else None
    if num is None and isinstance(error, PermissionError):  # raised with a sentence: a refusal all the same
        num = errno.EACCES
    text = (error.strerror or str(error)) if isinstance(error, OSError) else str(error)
    if path is None and isinstance(error, OSError) and error.filename is not None:
        path = os.fsdecode(error.filename)
    return {"stage": stage, "errno": num, "error": text, "path": path, "node": node,
            "uid": int(user["uid"]) if user else os.getuid(), "user": str(user["name"]) if user else None}


def permanent(rec: Optional[Mapping[str, Any]]) -> bool:
    """Whether the launch error ``rec`` (an exit record's ``launch_error``) will be met again by
    every retry, so that the job should fail at once: a user the node has no identity for (the
    node's setup), or a path that is missing, unreachable or not a program."""
    if not rec:
        return False
    return rec.get("stage") == IDENTITY or rec.get("errno") in PERMANENT_ERRNOS


def message(rec: Mapping[str, Any]) -> str:
    """What the user is told: the job could not start, where, why, and what to do."""
    where = f" on node {rec['node']}" if rec.get("node") else ""
    who = f"uid {rec.get('uid')}" + (f" (user {rec['user']})" if rec.get("user") else "")
    path, num, stage = rec.get("path"), rec.get("errno"), rec.get("stage")
    if stage == EXEC and num == errno.ENOENT:
        why = (f"{path} does not exist: fix the path (the job's first word, or its --python), "
               f"or ask your admin to install it there")
    elif stage == EXEC and num in (errno.EACCES, errno.EPERM):
        why = (f"{path} is not executable by {who}: make it executable by that user (chmod a+rx, "
               f"and a+x on its folders), or ask your admin to")
    elif stage == EXEC and num == errno.ENOEXEC:
        why = f"{path} is not a program (no #! line?): add one, or run it with its interpreter"
    elif stage == CWD and num == errno.ENOENT:
        why = f"its working folder {path} does not exist: create it, or submit the job with another working folder"
    elif stage == CWD:
        why = (f"its working folder {path} cannot be entered by {who} ({rec.get('error')}): let that user "
               f"reach it (a+x on the folders above it), or submit the job with another working folder")
    elif stage == FOLDER:
        why = (f"its folder {path or ''} cannot be made ({rec.get('error')}): ask your admin to check "
               f"the worker's --state-dir on that node")
    elif stage == IDENTITY:
        why = f"{rec.get('error')}"
    else:
        why = f"cannot run {path}: {rec.get('error')}"
    return f"the job could not start{where}: {why}"


class LaunchFailed(Exception):
    """Raised where a launch stops before the runner starts (the cluster worker's identity and
    folders); ``rec`` is its :func:`record`."""

    def __init__(self, rec: dict[str, Any]):
        super().__init__(message(rec))
        self.rec = rec
