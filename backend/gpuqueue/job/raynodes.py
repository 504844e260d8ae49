"""A job the scheduler gang-placed on several nodes, run on exactly those nodes and GPUs through
an existing Ray cluster (cluster mode: ``--nodes M``).

Where the workers are given no shared Ray, the attempt has a Ray cluster of its own under the
job owner's identity (``gpuqueue.cluster.rayjob``): the launcher starts its head here
(``GPUQUEUE_RAY_HEAD``, token auth), waits for the other nodes' workers to join it, and ends it.

The worker of the attempt's first node starts the job's launcher (``python -m
gpuqueue.distributed ray``); with ``GPUQUEUE_PLACEMENT`` (``{node: [gpu ids]}``, first node
first) it comes here. Every Ray node of a GPU node declares the custom resource
``gpuqueue-node-<name>`` (``ray start --resources '{"gpuqueue-node-gpu-1": 1}'``, see
docs/deploy.md), so each rank is a Ray actor pinned to its node by that resource, and it runs the
job's command with ``CUDA_VISIBLE_DEVICES`` the GPUs the scheduler assigned on that node and the
torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``NODE_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``; ``GPUQUEUE_NODE`` its node). One rank per assigned GPU (one per node for a CPU
job); rank 0 runs on the first node, next to the worker that reads its events and copies its
checkpoints. Ranks on the other nodes get a scratch job folder of their own on their node (the
job folder lives on the first node's disk), with the cell's payload sent through Ray's object
store for cell jobs; only rank 0 reports, saves and returns results.

Stopping: a stop notice (SIGTERM to the launcher: cancel, preempt, time limit) is forwarded to
every rank's process, wherever it runs; a rank that fails makes the launcher stop the others.
The launcher killed outright takes its actors with it (Ray ends a dead driver's actors) and a
rank's process dies with its actor (``PR_SET_PDEATHSIG``).

Why not Ray Train's ``TorchTrainer`` here: its ``ScalingConfig`` gives every worker the same
resources, so it cannot pin rank *i* to node *n*; the embedded mode's single-node Ray path
(``gpuqueue.distributed.run_ray``) still uses it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import time
from typing import Any, Optional

from ..attempt.failtext import rank_error
from .distributed import rank_failures, record_failure, report_failure, stop_requested_by_queue
from .rayletwatch import end_when_raylet_ends
from .raylogs import RAY_LOG_DRAIN_S

RESOURCE = "gpuqueue-node-{}"
# JSON of the job's environment that names its identity's own folders on a node (TMPDIR, a dynamic
# identity's HOME), from that node's worker (gpuqueue.cluster.rayjob): in the launcher's
# environment on the first node, in that of the job's Ray on the others. A rank on another node
# gets its own node's values of those the job has as its first node gave them (not the job's own
# ``env``'s): the first node's folders are not on its node, or are not its own there
NODE_ENV = "GPUQUEUE_NODE_ENV"


# Ray enforces ``RAY_AUTH_MODE=token`` from 2.52 on; an older Ray ignores it and answers anyone
# who reaches its ports, who then runs code as the job's owner (checked with Ray 2.51.2)
TOKEN_AUTH_SINCE = (2, 52)


def no_token_auth(ray: Any) -> Optional[str]:
    """Why a job may not start its own Ray with the imported module ``ray`` (a version without
    token authentication), or None."""
    version = str(getattr(ray, "__version__", ""))
    m = re.match(r"(\d+)\.(\d+)", version)
    if m and (int(m.group(1)), int(m.group(2))) >= TOKEN_AUTH_SINCE:
        return None
    since = ".".join(map(str, TOKEN_AUTH_SINCE))
    return (f"gpuqueue: the job's Python has Ray {version}, which has no token authentication (Ray {since} "
            f"and later): the job's own Ray would run code for anyone who reaches its ports, as you. Install "
            f"'ray[train]>={since}' where the job runs (its --python, or the environment that runs the jobs); "
            "docs/deploy.md, Multi-node jobs on Ray")


def node_resource(node: str) -> str:
    """The Ray custom resource that a GPU node's Ray node declares."""
    return RESOURCE.format(node)


def ranks_of(placement: dict[str, list[int]]) -> list[dict[str, Any]]:
    """One entry per rank, in rank order: its node, node rank, local rank and the node's GPUs."""
    out = []
    for node_rank, (node, ids) in enumerate(placement.items()):
        per_node = max(len(ids), 1)
        for local in range(per_node):
            out.append({"node": node, "node_rank": node_rank, "local_rank": local, "local_world": per_node,
                        "gpus": list(ids)})
    return out


def _rank_actor() -> Any:
    import ray

    # ray.remote's overloads (ray 2.x) leave out the actor options, max_concurrency among them
    @ray.remote(max_concurrency=2, num_cpus=0)  # type: ignore[call-overload]
    class Rank:
        """One rank: runs the job's command in a process that dies with this actor."""

        def __init__(self) -> None:
            self.proc: Any = None
            self.stopped = False
            self.error: Optional[dict[str, Any]] = None  # error.json of a rank on another node
            self.scratch: Optional[str] = None  # that rank's attempt folder
            self.tail: list[str] = []  # its last lines on stderr, once it ended

        def error_record(self) -> Optional[dict[str, Any]]:
            return self.error

        def stderr_tail(self) -> list[str]:
            return self.tail

        def where(self) -> tuple[str, int]:
            import socket

            ip = ray.util.get_node_ip_address()
            with socket.socket() as s:
                s.bind(("", 0))
                return ip, s.getsockname()[1]

        def run(self, argv: list[str], env: dict[str, str], cwd: Optional[str], payload: Optional[bytes] = None,
                scratch: bool = False, node_local: tuple[str, ...] = ()) -> int:
            import shutil
            import subprocess
            import tempfile
            import threading

            from gpuqueue.attempt.failtext import StderrTail
            from gpuqueue.cluster.forkserver import die_with_parent
            from gpuqueue.job.distributed import _copy_raw

            if self.stopped:
                return 143
            env = dict(env, GPUQUEUE_RAY_NODE_ID=ray.get_runtime_context().get_node_id())
            if os.environ.get("GPUQUEUE_RAY_DIR"):  # the job's own Ray: the worker ends what carries its mark
                env["GPUQUEUE_RAY_DIR"] = os.environ["GPUQUEUE_RAY_DIR"]
            local = None
            if scratch:  # a rank on another node: the job folder is on the first node's disk
                here = _node_env(os.environ)  # its own folders on this node (NODE_ENV)
                env.update({k: here[k] for k in node_local if k in here})
                tmp = here.get("TMPDIR")
                local = tempfile.mkdtemp(prefix=f"gpuqueue-{env.get('GPUQUEUE_JOB_ID', 'job')}-rank{env['RANK']}-",
                                         dir=tmp if tmp and os.path.isdir(tmp) else None)
                old_job = env.get("GPUQUEUE_JOB_DIR", "")
                attempt = os.path.join(local, "attempt")
                os.mkdir(attempt)
                open(os.path.join(attempt, "events.jsonl"), "wb").close()
                if payload is not None:
                    with open(os.path.join(local, "payload.pkl"), "wb") as f:
                        f.write(payload)
                argv = [local if a == old_job else a for a in argv]
                env.update(GPUQUEUE_JOB_DIR=local, GPUQUEUE_ATTEMPT_DIR=attempt)
                self.scratch = attempt
                if cwd and not os.path.isdir(cwd):
                    cwd = local
            try:  # its stderr copied to Ray's as it comes, its last lines kept for its error
                self.proc = subprocess.Popen(argv, env=env, cwd=cwd or None, stderr=subprocess.PIPE,
                                             preexec_fn=lambda: die_with_parent(signal.SIGKILL),
                                             start_new_session=True)
                assert self.proc.stderr is not None
                tail = StderrTail()
                copy = threading.Thread(target=_copy_raw, args=(self.proc.stderr.fileno(), 2, tail), daemon=True)
                copy.start()
                code = self.proc.wait()
                copy.join(timeout=5)
                self.tail = tail.lines()
                return code
            finally:
                if local is not None:
                    try:  # the cell's error, which the scratch folder held: the launcher reports it
                        with open(os.path.join(local, "attempt", "error.json")) as f:
                            self.error = json.load(f)
                    except (OSError, ValueError):
                        pass
                    shutil.rmtree(local, ignore_errors=True)

        def signal(self, sig: int, failed: Optional[int] = None) -> bool:
            self.stopped = True
            if failed is not None and self.scratch:  # the rank then says why it stops (channel.stop_message)
                record_failure(str(failed), 1, "", self.scratch)
            if self.proc is not None and self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    pass
                return True
            return False

    return Rank


def run_pinned(placement: dict[str, list[int]], argv: list[str], address: Optional[str]) -> int:
    """Run ``argv`` as one rank per assigned GPU on each node of ``placement`` (see the module
    docstring); the exit status for the runner."""
    try:
        import ray
    except ImportError as e:
        print(f"gpuqueue: a job on several nodes runs through Ray, which is not usable here ({e}). "
              "Install it: pip install 'ray[default]'", file=sys.stderr)
        return 1
    own = os.environ.get("GPUQUEUE_RAY_HEAD") if not address else None
    if not address and not own:
        print("gpuqueue: a job placed on several nodes needs the Ray cluster of the GPU nodes: the worker's "
              "RAY_ADDRESS (or GPUQUEUE_RAY_ADDRESS) is not set (docs/deploy.md, Multi-node jobs)", file=sys.stderr)
        return 1
    if own and (why := no_token_auth(ray)):
        print(why, file=sys.stderr)  # before any Ray of the job starts (its joins wait for the head)
        return 1
    head = None
    try:
        if own:  # the job's own Ray (gpuqueue.cluster.rayjob): its head here, as this job's user
            head, why = _own_ray(ray, own, placement)
            if why:
                print(why, file=sys.stderr)
                return 1
        else:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=True)
            except Exception as e:  # noqa: BLE001 - the user sees what failed, not Ray's traceback
                print(f"gpuqueue: cannot reach the Ray cluster at {address}: {e}", file=sys.stderr)
                return 1
        try:
            return _run(ray, placement, argv)
        finally:
            ray.shutdown()
    finally:
        if head is not None:  # the job's Ray ends with it (the worker ends what is left)
            _end_head(head)


def _end_head(head: Any) -> None:
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    head.wait()


OWN_RAY_WAIT_S = float(os.environ.get("GPUQUEUE_RAY_JOIN_WAIT_S", "120"))  # the worker sets it (rayjob.JOIN_WAIT_S)
# Ray's raylet waits at most 15 s for its dashboard agent to write the port it listens on, even
# where that port was given (``--dashboard-agent-listen-port`` is not passed on to the raylet), and
# dies at start when the agent is late, as it is on a loaded node (ray-project/ray#65983; seen in
# this project's CI). Nothing of the job ran there yet, so that node's Ray is started again: the
# head by the launcher (:func:`_own_ray`), a join by its worker (``gpuqueue.cluster.rayjob``).
RESTART_NOTE = "starting it again (an agent of Ray late at start, on a loaded node, ends its raylet)"


def _own_ray(ray: Any, address: str, placement: dict[str, list[int]]) -> tuple[Any, Optional[str]]:
    """Start the head of the job's own Ray here, connect to it and wait until every node of the
    gang joined, each within :data:`OWN_RAY_WAIT_S`: (the head's process, None), or (it, why not).
    A head that exits meanwhile, within that time of the first start, is started again
    (:data:`RESTART_NOTE`)."""
    first = time.monotonic()
    while True:
        logged = _head_log_size()  # what this start of the head writes comes after
        head = _start_head(address, placement)
        raylet_ended: list[bool] = []  # its raylet died while ray start still waited for it
        watching = end_when_raylet_ends(head, lambda: raylet_ended.append(True))
        why = (_head_started(head, logged, time.monotonic() + OWN_RAY_WAIT_S)
               or _connect(ray, address, head, time.monotonic() + OWN_RAY_WAIT_S)
               or _wait_nodes(ray, placement, head, time.monotonic() + OWN_RAY_WAIT_S))
        watching.set()  # up (ray start --block ends with its raylet from now on), or started again
        if why is None or head.poll() is None or time.monotonic() > first + OWN_RAY_WAIT_S:
            return head, why
        how = "its raylet ended" if raylet_ended else f"exit code {head.returncode}"
        print(f"gpuqueue: the job's Ray head exited at start ({how}); {RESTART_NOTE}:\n"
              f"{_head_log()[-600:]}", file=sys.stderr)
        ray.shutdown()
        _end_head(head)


def _start_head(address: str, placement: dict[str, list[int]]) -> Any:
    """``ray start --head`` of the job's own Ray on this (the first) node, in its own process
    group, dying with this launcher; its output in the private folder's ``ray-head.log``."""
    import subprocess

    from gpuqueue.cluster.forkserver import die_with_parent

    ip, port = address.rsplit(":", 1)
    first = next(iter(placement))
    folder = os.environ["GPUQUEUE_RAY_DIR"]
    # --no-monitor: no autoscaler (the job's nodes are fixed), whose metrics port (44217, every
    # address) answers anyone without the token
    argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--disable-usage-stats",
            "--port", port, "--node-ip-address", ip, "--num-gpus", str(len(placement[first])),
            "--resources", json.dumps({node_resource(first): 1}), "--include-dashboard", "false", "--no-monitor",
            *_client_server_args(), *agent_port_args(), "--temp-dir", os.path.join(folder, "ray")]
    env = dict(os.environ, HOME=os.environ.get("HOME") or folder)
    env.pop("GPUQUEUE_EVENT_FD", None)
    with open(os.path.join(folder, "ray-head.log"), "ab") as out:  # a head started again: both logs
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=lambda: die_with_parent(signal.SIGKILL))


def agent_port_args() -> list[str]:
    """``ray start`` arguments that give the node's Ray agents ports picked here (free now).
    Left to pick their own, the agents write them to files the raylet waits for at most 15 s;
    on a loaded node an agent is late and the raylet dies at start (``Timed out waiting for
    file .../metrics_agent_port_...``; ray-project/ray#65983), seen in this project's CI. The
    raylet still waits for the listen port's file (Ray does not pass that port on to it): a node's
    Ray that dies of it is started again (:func:`_own_ray`, ``RayNodes._watch``)."""
    socks = [socket.socket() for _ in range(4)]
    try:
        for s in socks:  # all bound at once: four different ports
            s.bind(("", 0))
        grpc, listen, metrics, runtime_env = (str(s.getsockname()[1]) for s in socks)
    finally:
        for s in socks:
            s.close()
    return ["--dashboard-agent-grpc-port", grpc, "--dashboard-agent-listen-port", listen,
            "--metrics-export-port", metrics, "--runtime-env-agent-port", runtime_env]


def _client_server_args() -> list[str]:
    """Where Ray's client packages (``grpcio``) are installed, ``ray start --head`` runs a Ray
    client server on port 10001 unless told otherwise, and fails outright if that port is taken:
    by another job's Ray on this node, or by any process of another user. A free port instead
    (the server refuses calls without the token); none where Ray has no client (it then refuses
    the flag)."""
    import importlib.util
    import socket

    if importlib.util.find_spec("grpc") is None:  # what Ray checks (ray._private.utils.get_ray_client_dependency_error)
        return []
    with socket.socket() as s:
        s.bind(("", 0))
        return ["--ray-client-server-port", str(s.getsockname()[1])]


def _head_log(since: int = 0, tail: int = 2000) -> str:
    """The last ``tail`` characters of the head's log after its first ``since`` bytes."""
    try:
        with open(os.path.join(os.environ["GPUQUEUE_RAY_DIR"], "ray-head.log"), "rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")[-tail:]
    except OSError:
        return ""


def _head_log_size() -> int:
    try:
        return os.path.getsize(os.path.join(os.environ["GPUQUEUE_RAY_DIR"], "ray-head.log"))
    except OSError:
        return 0


HEAD_STARTED = "Ray runtime started."  # what ray start --head prints once its node is up (Ray 1.x-2.60)
# ray start exits when its node is not up within 30 s: past this, one still running is up
HEAD_SAYS_S = 45.0


def _head_started(head: Any, logged: int, deadline: float) -> Optional[str]:
    """Wait until the head's ``ray start`` says its node is up (its log past ``logged``), so
    that connecting to it never waits on a raylet that died at start (``rayletwatch``); None, or
    why not. A ``ray start`` that says nothing of the kind in :data:`HEAD_SAYS_S` (another
    Ray's wording) is connected to all the same, and the job's log says so."""
    since = time.monotonic()
    while head.poll() is None:
        if HEAD_STARTED in _head_log(logged, 1 << 20):
            return None
        if time.monotonic() > min(deadline, since + HEAD_SAYS_S):
            print(f"gpuqueue: the job's Ray head did not say '{HEAD_STARTED}' in {HEAD_SAYS_S:g} s; "
                  "connecting to it all the same", file=sys.stderr)
            return None
        time.sleep(0.2)
    return f"gpuqueue: the job's Ray head did not start (exit code {head.returncode}):\n{_head_log(logged)}"


def _connect(ray: Any, address: str, head: Any, deadline: float) -> Optional[str]:
    """Connect this launcher to the job's Ray head by ``deadline``; None, or why not."""
    while True:
        if head.poll() is not None:
            return f"gpuqueue: the job's Ray head did not start (exit code {head.returncode}):\n{_head_log()}"
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=True, logging_level="ERROR")
            return None
        except Exception as e:  # noqa: BLE001 - not up yet
            ray.shutdown()
            if time.monotonic() > deadline:
                return f"gpuqueue: cannot reach the job's Ray head at {address} in {OWN_RAY_WAIT_S:g} s: {e}"
            time.sleep(1)


def _wait_nodes(ray: Any, placement: dict[str, list[int]], head: Any, deadline: float) -> Optional[str]:
    """Wait until the Ray node of every node of the gang joined (their workers start them) by
    ``deadline``; None, or why not."""
    while True:
        if head.poll() is not None:  # before asking its GCS, gone with it
            return f"gpuqueue: the job's Ray head exited (exit code {head.returncode}):\n{_head_log()}"
        missing = _missing(ray, placement)
        if not missing:
            return None
        if time.monotonic() > deadline:
            return (f"gpuqueue: the Ray node of {', '.join(missing)} did not join the job's Ray in {OWN_RAY_WAIT_S:g} s "
                    f"(the worker log of {missing[0]} says why)")
        time.sleep(0.5)


def _missing(ray: Any, placement: dict[str, list[int]]) -> list[str]:
    have: set[str] = set()
    for n in ray.nodes():
        if n.get("Alive"):
            have.update(n.get("Resources", {}))
    return [node for node in placement if node_resource(node) not in have]


def _run(ray: Any, placement: dict[str, list[int]], argv: list[str]) -> int:
    missing = _missing(ray, placement)
    if missing:
        print(f"gpuqueue: no Ray node declares {', '.join(node_resource(n) for n in missing)}: start Ray on "
              f"{', '.join(missing)} with --resources '{{\"{node_resource(missing[0])}\": 1}}' "
              "(docs/deploy.md, Multi-node jobs)", file=sys.stderr)
        return 1
    Rank = _rank_actor()
    ranks = ranks_of(placement)
    actors = [Rank.options(resources={node_resource(r["node"]): 0.001}).remote() for r in ranks]
    stop = {"sig": 0}

    def on_term(signum: int, _: Any) -> None:  # the notice reaches every rank, on every node
        stop["sig"] = signum
        for a in actors:
            a.signal.remote(signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    host, port = ray.get(actors[0].where.remote(), timeout=120)
    base = {k: v for k, v in os.environ.items() if k not in ("GPUQUEUE_EVENT_FD", "RAY_ADDRESS", "GPUQUEUE_RAY_ADDRESS",
                                                      "GPUQUEUE_RAY_HEAD", "GPUQUEUE_RAY_DIR", NODE_ENV)}
    # what names the first node's own folders (not what the job's env set): each node's rank gets its own
    node_local = tuple(sorted(k for k, v in _node_env(os.environ).items() if base.get(k) == v))
    first = next(iter(placement))
    payload = None
    job_dir = os.environ.get("GPUQUEUE_JOB_DIR", "")
    if job_dir and job_dir in argv and os.path.exists(os.path.join(job_dir, "payload.pkl")):  # a cell job
        with open(os.path.join(job_dir, "payload.pkl"), "rb") as f:
            payload = f.read()
    payload_ref = ray.put(payload) if payload is not None else None
    runs = []
    for rank, (info, actor) in enumerate(zip(ranks, actors)):
        env = dict(base)
        env.update(
            RANK=str(rank), WORLD_SIZE=str(len(ranks)), LOCAL_RANK=str(info["local_rank"]),
            LOCAL_WORLD_SIZE=str(info["local_world"]), NODE_RANK=str(info["node_rank"]),
            MASTER_ADDR=host, MASTER_PORT=str(port), GPUQUEUE_NODE=info["node"],
            CUDA_VISIBLE_DEVICES=",".join(str(g) for g in info["gpus"]), GPUQUEUE_RAY_WORKER="1",
        )
        remote = info["node"] != first
        runs.append(actor.run.remote(argv, env, os.getcwd(), payload_ref if remote else None, remote, node_local))
    pending, failed = list(runs), None
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
        for ref in done:
            rank = runs.index(ref)
            try:
                code = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - an actor or its node died
                said = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                code, err, tail = 1, (f"lost its Ray worker on {ranks[rank]['node']} (the job's Ray there ended, "
                                      f"or that worker died): {said}"), []
            else:
                tail = _tail(ray, actors[rank]) if code != 0 and failed is None else []
                err = rank_error(code, tail)
            if code != 0 and failed is None and not stop["sig"] and not stop_requested_by_queue():
                # before the others are stopped: the ranks on this node then say why (channel.stop_message)
                record_failure(str(rank), code, err, tail=tail)
                # a cell's own record (its exception) where the rank runs on this node
                err = next((f["error"] for f in rank_failures() if f["rank"] == str(rank)), err)
                failed = (rank, err, tail)
                for a in actors:  # the others cannot go on without it
                    a.signal.remote(signal.SIGTERM, rank)
    if stop["sig"]:
        return 128 + stop["sig"]
    if failed:
        rank, err, tail = failed
        try:  # a cell's own error from a rank on another node (its scratch folder)
            record = ray.get(actors[rank].error_record.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - its actor is gone: the exit code says what there is
            record = None
        if isinstance(record, dict) and record.get("message") is not None:
            err = f"{record.get('type') or ''}: {record['message']}".lstrip(": ")
        own = record if isinstance(record, dict) else None
        print(f"gpuqueue: {report_failure(str(rank), err, len(runs) > 1, own, tail)}", file=sys.stderr)
        time.sleep(RAY_LOG_DRAIN_S)  # the ranks' last lines (why they stopped) come to the driver a moment late
        return 1
    return 0


def _node_env(environ: Any) -> dict[str, str]:
    """The :data:`NODE_ENV` of ``environ`` (``{}`` where it has none, or it is not a JSON object of strings)."""
    try:
        value = json.loads(environ.get(NODE_ENV) or "{}")
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


def _tail(ray: Any, actor: Any) -> list[str]:
    """A rank's last lines on stderr (its actor keeps them), or none if its actor is gone."""
    try:
        tail = ray.get(actor.stderr_tail.remote(), timeout=10)
    except Exception:  # noqa: BLE001 - its actor or node is gone: the exit code says what there is
        return []
    return [str(x) for x in tail] if isinstance(tail, list) else []


def placement_from_env() -> Optional[dict[str, list[int]]]:
    """``GPUQUEUE_PLACEMENT`` when it names several nodes, else None."""
    raw = os.environ.get("GPUQUEUE_PLACEMENT")
    if not raw:
        return None
    try:
        placement = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(placement, dict) or len(placement) < 2:
        return None
    return {str(n): [int(i) for i in ids] for n, ids in placement.items()}
