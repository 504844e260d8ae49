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
import stat
from typing import Any, Mapping, Optional

from .privtmp import HIDDEN

# the stages a launch goes through, in order
IDENTITY = "identity"  # the owner's Unix identity on the node (cluster workers running as root)
FOLDER = "folder"  # the job's and the attempt's folders on the node
CWD = "cwd"  # the job's working folder, entered as the job's user
EXEC = "exec"  # the program: the job's Python (a cell) or its command's first word
RESUME = "resume"  # the checkpoint its --resume-from JOB_ID names (gpuqueue.queue.ckptref): the error says why

# errors that the same launch meets again on a retry: a path that is missing, not reachable or
# not a program. Anything else (ENOMEM, EAGAIN, ENOSPC, EIO, ...) may pass and is retried.
# components the looks into a refused program's way take in all (find_program over the job's PATH,
# _way): a PATH of thousands of entries, each through 40 links of thousands of components (the
# job's own), would hold root's runner for minutes before it reports the launch's failure
MAX_STEPS = 20_000
PERMANENT_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.ENOTDIR,
                              errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG})


def record(stage: str, error: BaseException | str, path: Optional[str] = None,
           user: Optional[Mapping[str, Any]] = None, node: Optional[str] = None,
           search_path: Optional[str] = None) -> dict[str, Any]:
    """The ``launch_error`` of an exit record: the ``stage`` that failed, the OS error's number
    and text (or ``error``'s text), the ``path`` it concerned, the ``user`` the job was to run as
    (``{"name", "uid", "gid"}``; None: the launching process's own uid) and the ``node``.

    A program that was refused (``EACCES``) is looked into here, on the node, where its files
    are: ``found`` is the file a bare name resolved to on ``search_path`` (the job's PATH),
    ``real`` where its links lead, and ``refused`` the first thing on the way that the job's uid
    may not pass (:func:`refusal`)."""
    num = error.errno if isinstance(error, OSError) else None
    if num is None and isinstance(error, PermissionError):  # raised with a sentence: a refusal all the same
        num = errno.EACCES
    text = (error.strerror or str(error)) if isinstance(error, OSError) else str(error)
    if path is None and isinstance(error, OSError) and error.filename is not None:
        path = os.fsdecode(error.filename)
    rec: dict[str, Any] = {"stage": stage, "errno": num, "error": text, "path": path, "node": node,
                           "uid": int(user["uid"]) if user else os.getuid(), "user": str(user["name"]) if user else None}
    if stage == EXEC and num in (errno.EACCES, errno.EPERM) and path:
        gids = {int(user["gid"])} if user and "gid" in user else ({os.getgid(), *os.getgroups()} if not user else set())
        found = find_program(path, search_path, rec["uid"], gids)
        if found is not None and os.path.isabs(found):
            rec["found"] = found
            refused, real = _way(found, rec["uid"], gids, [MAX_STEPS])
            if real is not None and real != found:
                rec["real"] = real
            rec["refused"] = refused
    return rec


def find_program(name: str, search_path: Optional[str], uid: Optional[int] = None,
                 gids: Optional[set[int]] = None) -> Optional[str]:
    """The file that an exec of ``name`` tried first: ``name`` itself if it holds a ``/``, else
    the first entry of ``search_path`` (``os.pathsep``-separated; default: this process's PATH)
    that holds ``name`` (None if none does). ``uid`` (in ``gids``): the job's, for which root
    looks only where that uid may: an entry it may not search is the one its exec was refused
    at, whether or not ``name`` is there (root does not look: that would tell the job what
    another user's folder holds)."""
    if "/" in name:
        return name
    steps = [MAX_STEPS]
    for d in (search_path if search_path is not None else os.environ.get("PATH", os.defpath)).split(os.pathsep):
        p = os.path.join(d or ".", name)
        if uid is not None and os.path.isabs(p):
            closed, _ = _way(d, uid, gids or set(), steps)
            if steps[0] <= 0:  # past MAX_STEPS: nothing more is looked at
                return None
            if closed is not None and closed["kind"] == "folder":
                return p
        if os.path.lexists(p):
            return p
    return None


def _may(st: os.stat_result, uid: int, gids: set[int], bit: int) -> bool:
    """Whether ``uid`` (in groups ``gids``) has permission ``bit`` (1: x, 4: r) on ``st``, by its
    mode bits (root: any x bit on a file, always on a folder)."""
    if uid == 0:
        return bit != 1 or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    shift = 6 if st.st_uid == uid else 3 if st.st_gid in gids else 0
    return bool((st.st_mode >> shift) & bit)


def refusal(path: str, uid: int, gids: set[int]) -> Optional[dict[str, Any]]:
    """The first thing on the way to the program ``path`` (following its links) that ``uid`` (in
    groups ``gids``) may not pass: ``{"kind": "folder", "path", "mode", "owner"}`` for a folder it
    may not enter, or ``"kind": "file"`` for the program it may not execute; None if none is
    found (or the way cannot be read)."""
    return _way(path, uid, gids)[0]


def _way(path: str, uid: int, gids: set[int],
         steps: Optional[list[int]] = None) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """:func:`refusal` of ``path``, and where ``path`` leads as far as ``uid`` may follow it: its
    links are read, as root, only in folders that uid may enter, so the rest of the way past a
    folder it may not enter is left as the last link it may read named it (the links and names in
    another user's closed folder are that user's). None for where it leads: over 40 links, over
    ``steps[0]`` components (taken off it), or the way cannot be read."""
    todo = [c for c in path.split("/") if c]
    cur, hops = "/", 0
    try:
        while True:
            if steps is not None:
                steps[0] -= 1
                if steps[0] < 0:
                    return None, None
            st = os.stat(cur)
            if stat.S_ISDIR(st.st_mode) and not _may(st, uid, gids, 1):
                return ({"kind": "folder", "path": cur, "mode": f"{st.st_mode & 0o7777:03o}", "owner": st.st_uid},
                        os.path.normpath(os.path.join(cur, *todo)))
            if not todo:
                break
            name = todo.pop(0)
            if name in (".", ".."):
                cur = os.path.dirname(cur) if name == ".." else cur
                continue
            nxt = os.path.join(cur, name)
            if os.path.islink(nxt):
                hops += 1
                if hops > 40:
                    return None, None
                target = os.readlink(nxt)
                todo = [c for c in target.split("/") if c] + todo
                cur = "/" if target.startswith("/") else cur
                continue
            cur = nxt
        if not stat.S_ISDIR(st.st_mode) and not _may(st, uid, gids, 1):
            return {"kind": "file", "path": cur, "mode": f"{st.st_mode & 0o7777:03o}", "owner": st.st_uid}, cur
    except OSError:
        return None, None
    return None, cur


def permanent(rec: Optional[Mapping[str, Any]]) -> bool:
    """Whether the launch error ``rec`` (an exit record's ``launch_error``) will be met again by
    every retry, so that the job should fail at once: a user the node has no identity for (the
    node's setup), a checkpoint reference that names none it may have, or a path that is
    missing, unreachable or not a program."""
    if not rec:
        return False
    return rec.get("stage") in (IDENTITY, RESUME) or rec.get("errno") in PERMANENT_ERRNOS


def message(rec: Mapping[str, Any]) -> str:
    """What the user is told: the job could not start, where, why, and what to do."""
    where = f" on node {rec['node']}" if rec.get("node") else ""
    who = f"uid {rec.get('uid')}" + (f" (user {rec['user']})" if rec.get("user") else "")
    path, num, stage = rec.get("path"), rec.get("errno"), rec.get("stage")
    if stage == EXEC and num == errno.ENOENT:
        why = (f"{path} does not exist: fix the path (the job's first word, or its --python), "
               f"or ask your admin to install it there")
    elif stage == EXEC and num in (errno.EACCES, errno.EPERM) and _closed_folder(rec):
        why = (f"{_program(rec)} cannot be run by {who}: {_closed_folder(rec)}: install the environment where "
               f"every user may read it, let them in (chmod o+x {rec['refused']['path']}), or run the job with an "
               f"interpreter that uid may run (its --python, or the full path of its first word)")
    elif stage == EXEC and num in (errno.EACCES, errno.EPERM):
        why = (f"{_program(rec)} is not executable by {who}: make it executable by that user (chmod a+rx, "
               f"and a+x on its folders), or ask your admin to")
    elif stage == EXEC and num == errno.ENOEXEC:
        why = f"{path} is not a program (no #! line?): add one, or run it with its interpreter"
    elif num == errno.ENOENT and stage in (CWD, EXEC) and _in_own_tmp(rec):
        what = "its working folder" if stage == CWD else "the program"
        why = (f"{what} {path} is under {_in_own_tmp(rec)}, which is the job's own on that node (the worker gives "
               f"each job its own /tmp, /var/tmp and /dev/shm): put it in a folder outside them, e.g. in your home, "
               f"or ask your admin (gpuqueue worker --private-tmp)")
    elif stage == CWD and num == errno.ENOENT:
        why = f"its working folder {path} does not exist: create it, or submit the job with another working folder"
    elif stage == CWD:
        why = (f"its working folder {path} cannot be entered by {who} ({rec.get('error')}): let that user "
               f"reach it (a+x on the folders above it), or submit the job with another working folder")
    elif stage == FOLDER:
        why = (f"its folder {path or ''} cannot be made ({rec.get('error')}): ask your admin to check "
               f"the worker's --state-dir on that node")
    elif stage in (IDENTITY, RESUME):
        why = f"{rec.get('error')}"
    else:
        why = f"cannot run {path}: {rec.get('error')}"
    return f"the job could not start{where}: {why}"


def _in_own_tmp(rec: Mapping[str, Any]) -> str:
    """The folder the job had its own of (``/tmp``...: ``gpuqueue.attempt.privtmp``) that the
    record's path lies under, if the job ran with them (``own_tmp``); else ''."""
    path = rec.get("path")
    if not rec.get("own_tmp") or not isinstance(path, str):
        return ""
    return next((d for d in HIDDEN if path == d or path.startswith(d.rstrip("/") + "/")), "")


def _program(rec: Mapping[str, Any]) -> str:
    """The program as the job named it, with the file it was found at (or looked for at, in a
    folder the job's uid may not enter: ``find_program``) and where that leads."""
    path, found, real = rec.get("path"), rec.get("found"), rec.get("real")
    if found and found != path:
        closed = (rec.get("refused") or {}).get("path") if (rec.get("refused") or {}).get("kind") == "folder" else None
        at = "looked for at" if closed and found.startswith(closed.rstrip("/") + "/") else "found at"
        return f"{path} ({at} {found}" + (f", a link to {real})" if real else ")")
    return f"{path} (a link to {real})" if real else str(path)


def _closed_folder(rec: Mapping[str, Any]) -> str:
    """'that uid may not enter FOLDER (mode ..., owner uid ...)', if the record found one; else ''."""
    refused = rec.get("refused")
    if not refused or refused.get("kind") != "folder":
        return ""
    return f"that uid may not enter {refused['path']} (mode {refused['mode']}, owner uid {refused['owner']})"


def detail(rec: Mapping[str, Any]) -> str:
    """What the job's log adds after the OS error of a refused launch: the folder or file that
    refused and the fix (the part of :func:`message` after the cause), or '' if nothing was
    found out."""
    if not rec.get("refused"):
        return ""
    return message(rec).split(": ", 1)[1]


class LaunchFailed(Exception):
    """Raised where a launch stops before the runner starts (the cluster worker's identity and
    folders); ``rec`` is its :func:`record`."""

    def __init__(self, rec: dict[str, Any]):
        super().__init__(message(rec))
        self.rec = rec
