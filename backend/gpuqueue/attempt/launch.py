"""How a job attempt is launched: the argv, environment, working directory and identity the
runner uses.

One place for it, shared by the embedded executor and the cluster worker. A job is untrusted
code: its environment is built from an allow-list (:data:`PASS_ENV`), never copied from the
Jupyter server's or the worker's, so no store URL, token or password reaches it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Optional

from ..job.distributed import launch_argv, launcher_for
from .identity import Identity
from ..queue import ckptref
from ..queue.models import JobSpec

# What a job takes from the environment of the process that launches it (the Jupyter server,
# the worker): names, or prefixes ending in "*". Admins add more with $GPUQUEUE_PASS_ENV
# ("NAME,PREFIX*"). Whatever matches NEVER_PASS is left out in any case.
PASS_ENV = (
    "PATH", "PYTHONPATH", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "TERM", "HOME", "USER", "LOGNAME",
    "SHELL", "CUDA_*", "NVIDIA_*", "NCCL_*", "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
    "RAY_ADDRESS", "GPUQUEUE_RAY_ADDRESS", "GPUQUEUE_RAY_CPUS", "GPUQUEUE_CHECKPOINT_DIR",
)
NEVER_PASS = re.compile(
    r"TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL|_KEY$|_AUTH|COOKIE|^JPY_|^JUPYTER|^GPUQUEUE_(REDIS|URL$|API)",
    re.IGNORECASE,
)
# where the job runs under its own identity, these describe the worker's user, not the job's
_OWN_ACCOUNT = ("HOME", "USER", "LOGNAME", "SHELL")
# ... and these would be one place for every user's jobs: a checkpoint folder that all their uids
# can write is one where any user's job plants the checkpoint another user's job resumes from
# (its own job folder, and the shared root, are the place: gpuqueue.job.checkpoint.default_root)
_ONE_FOR_ALL = ("GPUQUEUE_CHECKPOINT_DIR",)
# the Ray cluster's address: only for the launcher of a job that runs through Ray (wants_ray)
RAY_ENV = ("RAY_ADDRESS", "GPUQUEUE_RAY_ADDRESS")


def wants_ray(spec: JobSpec, identity: Optional[Identity], placement: Optional[dict[str, list[int]]]) -> bool:
    """Whether the job's launcher gets the Ray cluster's address (:data:`RAY_ENV`) from the
    environment of the process that launches it. A job the scheduler placed on several nodes
    does (its launcher runs the ranks there). Under its own identity (a root worker), no other:
    every job would otherwise learn where the Ray cluster is, which runs code as the Ray nodes'
    user for whoever reaches it; a one-node job that forces ``GPUQUEUE_LAUNCHER=ray`` starts a
    Ray of its own. Where jobs run as the launching process's own user (embedded mode, a worker
    that is not root), a job whose launcher is Ray gets it too, as before."""
    if placement and len(placement) > 1:
        return True
    if identity is not None:
        return False
    try:
        return launcher_for(spec.kind, spec.gpus, spec.nodes, spec.env) == "ray"
    except ValueError:
        return False


def _patterns(environ: Mapping[str, str]) -> list[str]:
    extra = [p.strip() for p in environ.get("GPUQUEUE_PASS_ENV", "").split(",") if p.strip()]
    return list(PASS_ENV) + extra


def passed_env(environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The part of ``environ`` (default: this process's) that a job or a runner may see."""
    env = os.environ if environ is None else environ
    pats = _patterns(env)
    return {k: v for k, v in env.items()
            if any(fnmatch.fnmatchcase(k, p) for p in pats) and not NEVER_PASS.search(k)}


def package_root() -> str:
    """The folder that holds the ``gpuqueue`` package (put on PYTHONPATH where it must import)."""
    return str(Path(__file__).resolve().parents[2])


def _join(*parts: str) -> str:
    return os.pathsep.join(p for p in parts if p)


def build_launch(
    job_id: str,
    spec: JobSpec,
    job_dir: Path,
    attempt_dir: Path,
    attempt: int,
    devices: list[int],
    node: str,
    identity: Optional[Identity] = None,
    home: Optional[str] = None,
    tmpdir: Optional[str] = None,
    placement: Optional[dict[str, list[int]]] = None,
    resume_from: Optional[str] = None,
) -> dict[str, Any]:
    """The ``launch.json`` content for one attempt.

    ``devices`` are the physical GPU indices this attempt may use; the job sees them (and only
    them) through ``CUDA_VISIBLE_DEVICES``. A ``--gpus 0`` job sees none and runs on the CPU.
    ``job_dir`` / ``attempt_dir`` are the job's own folders. ``identity``: the user the job runs
    as (None: the launching process's own); ``home``: its HOME when the identity has none;
    ``tmpdir``: its TMPDIR (its own folder, not the node's ``/tmp``; the job's ``env`` may name another).
    ``env`` is the job's whole environment. ``placement``: every node of a job the scheduler
    gang-placed on several nodes, with its GPUs (``GPUQUEUE_PLACEMENT``, for the Ray launcher).
    ``resume_from``: the local folder a job reference in ``spec.resume_from`` was resolved to
    (``gpuqueue.queue.ckptref``); None: ``spec.resume_from`` if it is a path or URL (a reference
    is never passed to the job unresolved).
    """
    python = spec.python or sys.executable
    if spec.kind == "cell":
        argv = [python, "-m", "gpuqueue.job.jobmain", str(job_dir)]
    else:
        argv = list(spec.command or [])
    # several processes: torchrun (one node) or Ray Train (several nodes); see gpuqueue.job.distributed
    argv = launch_argv(spec.kind, argv, spec.gpus, spec.nodes, spec.env, python)
    env = passed_env()
    if not wants_ray(spec, identity, placement):
        for k in RAY_ENV:
            env.pop(k, None)
    if identity is not None:
        for k in _OWN_ACCOUNT + _ONE_FOR_ALL:
            env.pop(k, None)
        env["USER"] = env["LOGNAME"] = identity.account or identity.user
        if identity.home or home:
            env["HOME"] = str(identity.home or home)
        if tmpdir:
            env["TMPDIR"] = tmpdir
    env.update(spec.env)
    user_path = spec.env.get("PYTHONPATH", env.get("PYTHONPATH", ""))
    if spec.kind == "cell":
        env["PYTHONPATH"] = _join(package_root(), user_path)  # python -m gpuqueue.job.jobmain
    elif spec.env.get("GPUQUEUE_HF_HOOK", "1") != "0":
        # Python commands get the transformers hook through a chained sitecustomize (gpuqueue.job.hf)
        env["PYTHONPATH"] = _join(str(Path(__file__).resolve().parent / "_site"), user_path)
    env.update(
        {
            "CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices),
            "GPUQUEUE_JOB_ID": job_id,
            "GPUQUEUE_ATTEMPT": str(attempt),
            "GPUQUEUE_JOB_DIR": str(job_dir),
            "GPUQUEUE_ATTEMPT_DIR": str(attempt_dir),
            "GPUQUEUE_NODE": node,
            "GPUQUEUE_NUM_GPUS": str(len(devices)),
        }
    )
    if placement and len(placement) > 1:
        env["GPUQUEUE_PLACEMENT"] = json.dumps({n: list(ids) for n, ids in placement.items()})
    if spec.precision:
        env["GPUQUEUE_PRECISION"] = spec.precision
    if spec.grad_checkpointing:
        env["GPUQUEUE_GRAD_CHECKPOINTING"] = "1"
    if resume_from or (spec.resume_from and not ckptref.is_ref(spec.resume_from)):  # never a reference unresolved
        env["GPUQUEUE_RESUME_FROM"] = resume_from or str(spec.resume_from)
    cwd = spec.cwd or (str(job_dir) if identity is not None else None)
    out: dict[str, Any] = {"argv": argv, "env": env, "cwd": cwd,
                           "job_dir": str(job_dir), "attempt_dir": str(attempt_dir),
                           "max_output_bytes": max_output_bytes()}
    if identity is not None:
        out["user"] = {"name": identity.user, "uid": identity.uid, "gid": identity.gid}
    return out


OUTPUT_ENV = "GPUQUEUE_MAX_OUTPUT_MB"
DEFAULT_MAX_OUTPUT_MB = 256


def max_output_bytes(environ: Optional[Mapping[str, str]] = None) -> int:
    """How much of a job's output and events one attempt keeps (``launch.json``'s
    ``max_output_bytes``, enforced by the runner): ``$GPUQUEUE_MAX_OUTPUT_MB`` of the process that
    launches it (the Jupyter server, the worker), default 256 MB. A value that is not a number
    above 0 is the default."""
    raw = (os.environ if environ is None else environ).get(OUTPUT_ENV, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MAX_OUTPUT_MB
    except ValueError:
        mb = DEFAULT_MAX_OUTPUT_MB
    if not (mb > 0 and mb < 2**40):  # NaN and inf too
        mb = DEFAULT_MAX_OUTPUT_MB
    return int(mb * 2**20)


def runner_env() -> dict[str, str]:
    """The environment to start a runner (or the worker's runner fork server) in: the
    allow-listed part of this one (no credentials), with gpuqueue importable (the runner runs
    with this interpreter). The job's own environment comes from ``launch.json``."""
    env = passed_env()
    env["PYTHONPATH"] = _join(package_root(), env.get("PYTHONPATH", ""))
    return env
