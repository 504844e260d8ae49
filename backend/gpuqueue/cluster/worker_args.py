"""``gpuqueue worker``'s options (:func:`build_parser`), and the checks of its state folder and
user that it makes at start."""

from __future__ import annotations

import argparse
import os
import socket
import stat
from pathlib import Path
from typing import Optional

from . import cliargs, redis_url
from ..attempt import identity as identities
from .worker_sweep import SWEEP_S
from .worker_tail import GIVE_UP_S

SHARED_MAX_GB = 200.0  # what one attempt's checkpoints may take on the shared root, by default


def build_parser() -> argparse.ArgumentParser:
    """``gpuqueue worker`` options."""
    p = argparse.ArgumentParser(prog="gpuqueue worker", description="Run this GPU node's Celery worker.")
    redis_url.add_arguments(p)
    p.add_argument("--node", default=socket.gethostname(), help="this node's name, as in the pools config (default: host name)")
    p.add_argument("--gpus", type=cliargs.GPUS, default=None, help="GPUs to offer (default: $GPUQUEUE_GPUS, else NVML)")
    p.add_argument("--pool", default=None, help="pool, for a node the config does not list")
    p.add_argument("--state-dir", default=None, help="job folders, this worker's own: a second worker on it is refused (default: $GPUQUEUE_STATE_DIR, else "
                        "/var/lib/gpuqueue/worker-NODE as root, ~/.local/share/gpuqueue/worker-NODE otherwise)")
    p.add_argument("--shared-dir", default=None, metavar="PATH|URL",
                   help="shared storage root for checkpoints between attempts, the same for every worker: a folder "
                        "on a shared file system (NFS) or an fsspec URL (s3://bucket/prefix, gs://...); default: "
                        "$GPUQUEUE_SHARED_DIR, else none (checkpoints stay on the node that saved them)")
    p.add_argument("--shared-options", default=None, metavar="FILE.json",
                   help="fsspec storage options of --shared-dir (endpoint_url, key, secret...), a JSON file of mode "
                        "600; credentials may also come from the usual environment (AWS_*), which no job inherits")
    p.add_argument("--shared-max-gb", type=cliargs.number(float, 0), default=SHARED_MAX_GB, metavar="GB",
                   help="what one attempt's checkpoints may take on --shared-dir (the sizes of their files: a "
                        "sparse file counts whole); a checkpoint that would pass it is left on the node and the "
                        "job is told (default %(default)g; 0: no bound); all of a user's jobs' checkpoints "
                        "there are bounded by max_shared_gb in the queue config")
    p.add_argument("--shared-sweep", type=cliargs.SECONDS_OR_ZERO, default=SWEEP_S, metavar="SECONDS",
                   help="how often one of the workers deletes from --shared-dir the checkpoints of jobs whose "
                        "records are gone (the scheduler's --keep-finished after they ended; default %(default)g; "
                        "0: never)")
    p.add_argument("--local-sweep", type=cliargs.SECONDS_OR_ZERO, default=SWEEP_S, metavar="SECONDS",
                   help="how often this worker deletes from its --state-dir the folders (records, payloads, "
                        "checkpoints) of jobs whose records are gone and that no longer run here (the "
                        "scheduler's --keep-finished after they ended; default %(default)g; 0: never)")
    p.add_argument("--give-up-after", type=cliargs.SECONDS, default=GIVE_UP_S, metavar="SECONDS",
                   help="how long the worker keeps trying to copy an attempt's records (output, events, its end) to "
                        "the store when that fails for this attempt alone, before it stops the attempt and reports "
                        "it failed with the error (default %(default)g); an outage of the whole store never ends "
                        "an attempt")
    p.add_argument("--heartbeat", type=cliargs.SECONDS, default=5.0, help="seconds between heartbeats (default 5; keep well under the daemon's --node-timeout)")
    p.add_argument("--concurrency", type=cliargs.COUNT, default=4, help="launch threads (default 4)")
    p.add_argument("--prefix", default="gq")
    p.add_argument("--celery-events", action="store_true",
                   help="send Celery task events and heartbeats and answer remote control, so that Flower "
                        "(`celery --broker URL flower`) sees this worker, its queue and its launches "
                        "(default: $GPUQUEUE_CELERY_EVENTS, else off; docs/deploy.md)")
    p.add_argument("--metrics-port", type=cliargs.PORT, default=None, help="serve Prometheus /metrics (process, NVML GPUs) on this port")
    p.add_argument("--log-level", default="INFO", help="log level; the format is JSON unless on a terminal ($GPUQUEUE_LOG_FORMAT)")
    p.add_argument("--identities", default="auto", metavar="MODE",
                   help="whose uid each job runs as (the worker must be root): 'dynamic' (a uid per user from "
                        "--uid-range, the same on every node), 'passwd' (the OS account of the user's name), "
                        "FILE.toml (user = UID or {uid, gid}), or 'none' (the worker's own user: no isolation "
                        "between users). Default 'auto': dynamic as root, else none")
    p.add_argument("--uid-range", default="%d-%d" % identities.DEFAULT_RANGE, metavar="FIRST-LAST",
                   help="uids (and gids) of dynamic identities (default %(default)s)")
    p.add_argument("--private-tmp", choices=("on", "off"), default="on",
                   help="where jobs run under their users' own identities: run each attempt in mount and IPC "
                        "namespaces of its own, with its identity's own folder as /tmp and /var/tmp and a fresh "
                        "tmpfs as /dev/shm, as systemd's PrivateTmp (no job sees or squats another user's names "
                        "there; docs/deploy.md), on every node of a job on several nodes too (not with a shared "
                        "Ray: RAY_ADDRESS). Default %(default)s")
    p.add_argument("--job-shm-gb", type=cliargs.number(float, 0, low_open=True), default=None, metavar="GB",
                   help="the size bound of each attempt's own /dev/shm with --private-tmp on (default: half this "
                        "node's memory)")
    return p


NOT_ROOT_WARNING = (
    "this worker does not run as root, so every job runs as its user (uid %d): jobs of different "
    "users can read and change each other's files, results and checkpoints on this node, and the "
    "worker's own files. What remains: no job gets the store URL or a token (not in its "
    "environment, command line or /proc: the worker and its runners are not dumpable). Run the "
    "worker as root to give each user's jobs their own identity (docs/deploy.md, Security model)")


def open_to_others(path: Path) -> Optional[str]:
    """Why a user other than this process's could change or replace ``path`` (a root worker's
    state folder, where it makes, chowns and enters each job's folders), or None. Any folder from
    ``/`` down to it that another uid owns, that others may write, or whose group may (a group
    other than root's: a job's own gid may be it) is such a way; above the folder itself, not
    where the sticky bit keeps others from renaming what is not theirs (``/tmp``)."""
    p = path.resolve()
    for d in [*reversed(p.parents), p]:
        st = os.stat(d)
        if st.st_uid not in (0, os.geteuid()):
            return f"{d} belongs to uid {st.st_uid}"
        writable = st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != 0)
        if writable and not (d != p and st.st_mode & stat.S_ISVTX):
            return f"{d} is mode {stat.S_IMODE(st.st_mode):04o} (group {st.st_gid})"
    return None


def unreachable(path: Path) -> Optional[Path]:
    """The first folder on the way to ``path`` that other users may not enter (no ``o+x``)."""
    p = path.resolve()
    for d in [*reversed(p.parents), p]:
        try:
            if not os.stat(d).st_mode & 0o001:
                return d
        except FileNotFoundError:
            return None
    return None
