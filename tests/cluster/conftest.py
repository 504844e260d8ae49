"""A real cluster for tests: redis-server, the scheduler daemon, Celery workers declaring GPUs,
and the API service, all subprocesses that a test may kill -9 and restart."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import psutil
import pytest
import requests

from gpuqueue.attempt import privtmp
from gpuqueue.attempt.cgroup import AttemptCgroups, CgroupsUnavailable
from gpuqueue.attempt.launch import runner_env
from gpuqueue.rest.client import Client, ServerInfo
from gpuqueue.cluster import redis_url
from helpers.servers import RedisServer, free_port, wait_until

PY = sys.executable
ACL_FILE = Path(__file__).resolve().parents[2] / "deploy" / "redis" / "users.acl"


def shipped_acl(passwords: dict[str, str]) -> str:
    """redis.conf lines with the ACL users of ``deploy/redis/users.acl`` as shipped, each role's
    ``CHANGE-ME`` password replaced by ``passwords[role]``; a role given a password that ships
    ``off`` (Flower) is turned on. The default user is left to the test (its own admin
    connection, with ``requirepass``)."""
    lines = []
    for line in ACL_FILE.read_text().splitlines():
        if not line.startswith("user gpuqueue-"):
            continue
        role = line.split()[1].removeprefix("gpuqueue-")
        if role in passwords:
            line = line.replace(f">CHANGE-ME-{role}", f">{passwords[role]}").replace(" off ", " on ", 1)
        lines.append(line)
    return "\n".join(lines) + "\n"


TOKENS = {"alice": "alice-token-1", "bob": "bob-token-22", "root": "root-token-333"}

JOB_SCRIPT = r'''
import os, sys, time
out, ticks = sys.argv[1], int(sys.argv[2])
job, att = os.environ["GPUQUEUE_JOB_ID"], os.environ["GPUQUEUE_ATTEMPT"]
def mark(what):
    with open(out, "a") as f:
        f.write(f"{what} {job} {att} {time.time():.4f} {os.environ.get('CUDA_VISIBLE_DEVICES', '')}\n")
mark("start")
print(f"hello from {job} attempt {att}", flush=True)
for i in range(ticks):
    time.sleep(0.1)
    mark("alive")
mark("end")
'''


class Cluster:
    """Processes of one test cluster; ``close()`` kills them all (and their job processes)."""

    def __init__(self, root: Path, redis: RedisServer, nodes: dict[str, int], node_timeout: float = 2.0,
                 config_extra: str = "", daemon_args: tuple[str, ...] = (),
                 worker_args: tuple[str, ...] = ("--identities", "none"), zero_config: bool = False):
        self.root = root
        self.zero_config = zero_config  # the daemon runs without --config (pool "default")
        self.redis = redis
        self.nodes = nodes
        self.node_timeout = node_timeout
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        root.mkdir(parents=True, exist_ok=True)
        self.marks = root / "marks.txt"
        self.marks.touch()
        self.script = root / "job.py"
        self.script.write_text(JOB_SCRIPT)
        self.config = root / "pools.toml"
        nodes_toml = ", ".join(f'"{n}" = {g}' for n, g in nodes.items())
        self.config.write_text(f"retries = 3\nretry_backoff = 0.2\n{config_extra}\n[pools.gpu]\nnodes = {{ {nodes_toml} }}\n")
        self.users = root / "users.toml"
        self.users.write_text("".join(
            f'[[user]]\nname = "{n}"\ntoken = "{t}"\nadmin = {"true" if n == "root" else "false"}\n' for n, t in TOKENS.items()
        ))
        self.daemon_args = list(daemon_args)
        # these tests' jobs write one shared marks file with this interpreter: they run as the
        # worker's user; tests/cluster/test_isolation.py runs workers with per-user identities
        self.worker_args = list(worker_args)
        self.role_urls: dict[str, str] = {}  # "scheduler" / "api" / "worker" -> its own URL (ACL user)
        self.redis_file_for: set[str] = set()  # processes that read the URL from --redis-file
        self.api_port = free_port()
        self.metrics_port = free_port()

    # -- processes ------------------------------------------------------------------------
    def _redis(self, role: str, key: str) -> tuple[list[str], dict[str, str]]:
        """How process ``key`` gets the store URL: on its command line when the URL has no
        password; else in its environment, or in a file of mode 600 (``redis_file_for``)."""
        url = self.role_urls.get(role, self.redis.url)
        if not redis_url.has_password(url):
            return ["--redis", url], {}
        if key in self.redis_file_for:
            f = self.root / f"{key}.redis-url"
            f.touch(mode=0o600)
            f.write_text(url + "\n")
            return ["--redis-file", str(f)], {}
        return [], {redis_url.ENV: url}

    def _spawn(self, key: str, args: list[str], role: str = "") -> subprocess.Popen[bytes]:
        log = open(self.root / f"{key}.log", "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if args[0] == "api":  # its threads' stacks on SIGABRT: where a start that never answers is stuck
            env["PYTHONFAULTHANDLER"] = "1"
        if role:
            more, extra_env = self._redis(role, key)
            args = [args[0], *more, *args[1:]]
            env.update(extra_env)
        p = subprocess.Popen([PY, "-m", "gpuqueue.cli", *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root)
        self.procs[key] = p
        return p

    def start_daemon(self, key: str = "daemon") -> subprocess.Popen[bytes]:
        config = [] if self.zero_config else ["--config", str(self.config)]
        return self._spawn(key, ["scheduler", *config,
                                 "--node-timeout", str(self.node_timeout), "--leader-ttl", "1.5",
                                 "--start-timeout", "5", "--stop-grace", "3", *self.daemon_args]
                           + (["--metrics-port", str(self.metrics_port)] if key == "daemon" else []), role="scheduler")

    def start_worker(self, node: str) -> subprocess.Popen[bytes]:
        return self._spawn(f"worker-{node}", ["worker", "--node", node,
                                              "--gpus", str(self.nodes[node]), "--heartbeat", "0.2",
                                              "--state-dir", str(self.root / f"node-{node}"), "--log-level", "INFO",
                                              *self.worker_args], role="worker")

    def start_api(self, timeout: float = 30, new_port_if_taken: bool = False) -> subprocess.Popen[bytes]:
        """Start the API service; return once it answers ``/healthz`` with 200 from its own socket
        (not another test's server that took ``api_port`` first). Fails at once if it exits, and
        on a timeout, with its log (and, if it still runs, the stacks of its threads: it is
        stopped with SIGABRT under ``PYTHONFAULTHANDLER``). ``new_port_if_taken``: where nothing
        knows the URL yet, a port that another process bound between ``free_port()`` and the
        API's start (a free port is only free when it is picked) is replaced by a new one, twice
        at most, instead of failing."""
        for attempt in range(3):
            log_path = self.root / "api.log"
            since = log_path.stat().st_size if log_path.exists() else 0
            p = self._spawn("api", ["api", "--port", str(self.api_port), "--users", str(self.users)], role="api")
            answer = _wait_own_http(p, self.api_port, f"{self.url}healthz", timeout,
                                    lambda: log_path.read_bytes()[since:].decode(errors="replace"))
            if answer is None:
                return p
            if not (new_port_if_taken and attempt < 2 and p.returncode == 1 and "Address already in use" in answer):
                raise AssertionError(answer)
            self.api_port = free_port()
        raise AssertionError("unreachable")

    def start(self) -> "Cluster":
        self.start_daemon()
        for n in self.nodes:
            self.start_worker(n)
        self.start_api(new_port_if_taken=True)
        self.wait_nodes(set(self.nodes))
        return self

    def wait_nodes(self, names: set[str], timeout: float = 30) -> None:
        c = self.client("root")
        wait_until(lambda: set(c.queue().get("nodes", {})) >= names, timeout, 0.1, f"nodes {names} up")

    def log(self, key: str) -> str:
        return (self.root / f"{key}.log").read_text(errors="replace")

    def kill(self, key: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs[key]
        if p.poll() is None:
            p.send_signal(sig)
            p.wait(15)

    def tree(self, key: str) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.procs[key].pid)
            return [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def close(self) -> None:
        kids: list[psutil.Process] = []
        for key in self.procs:
            for p in self.tree(key):
                kids.append(p)
                try:
                    p.resume()
                except psutil.Error:
                    pass
        for key, p in self.procs.items():
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for k in kids:
            try:
                k.kill()
            except psutil.Error:
                pass
        for rp in psutil.process_iter(["cmdline"]):  # runners of this test whose worker died
            try:
                if any(str(self.root) in a for a in (rp.info["cmdline"] or [])):
                    rp.kill()
            except psutil.Error:
                pass
        for node in self.nodes:  # the killed workers' attempt cgroups, where they could make them
            try:
                cgroups = AttemptCgroups.open(self.root / f"node-{node}", node)
            except CgroupsUnavailable:
                break
            cgroups.sweep()
            cgroups.close()

    # -- users ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/"

    def redis_client(self) -> Any:
        """A plain Redis client on the cluster's store (for checks of what is kept)."""
        import redis

        return redis.Redis.from_url(self.redis.url, decode_responses=True)

    def client(self, user: str) -> Client:
        return Client(ServerInfo(self.url, TOKENS[user]), timeout=10)

    def submit(self, user: str = "alice", ticks: int = 10, gpus: int = 1, **spec: Any) -> str:
        body = {"kind": "command", "gpus": gpus, "command": [PY, str(self.script), str(self.marks), str(ticks)], **spec}
        return self.client(user).submit(body)["id"]

    def cli(self, user: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, GPUQUEUE_URL=self.url, GPUQUEUE_TOKEN=TOKENS[user])
        return subprocess.run([PY, "-m", "gpuqueue.cli", *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def wait_done(self, ids: list[str], timeout: float = 60) -> dict[str, dict[str, Any]]:
        c = self.client("root")

        def done() -> Any:
            jobs = {i: c.get(i) for i in ids}
            return jobs if all(j["state"] in ("succeeded", "failed", "cancelled", "timed_out") for j in jobs.values()) else None

        return wait_until(done, timeout, 0.2, f"jobs {ids} to end")

    # -- the proof of "once, never twice at a time" ---------------------------------------
    def runs(self) -> dict[str, dict[str, dict[str, Any]]]:
        """job -> attempt -> {start, last, end} from the jobs' own marks."""
        out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for line in self.marks.read_text().splitlines():
            what, job, att, t = line.split()[:4]
            r = out[job].setdefault(att, {"start": None, "last": None, "end": None})
            if what == "start":
                r["start"] = float(t)
            if what == "end":
                r["end"] = float(t)
            r["last"] = float(t)
        return out

    def assert_once(self, ids: list[str]) -> None:
        """Each job ended exactly once and its attempts never overlapped in time."""
        runs = self.runs()
        for job in ids:
            atts = sorted(runs[job].values(), key=lambda r: r["start"])
            ends = [a for a in atts if a["end"] is not None]
            assert len(ends) == 1, f"{job} completed {len(ends)} times: {atts}"
            for a, b in zip(atts, atts[1:]):
                assert a["last"] < b["start"], f"{job} ran twice at once: {atts}"


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` listens on TCP ``port``."""
    try:
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in psutil.Process(pid).net_connections(kind="tcp"))
    except psutil.Error:
        return False


def _wait_own_http(p: subprocess.Popen[bytes], port: int, url: str, timeout: float,
                   log: Callable[[], str]) -> Optional[str]:
    """Wait until ``p`` listens on ``port`` and ``url`` answers 200: None then; else what went
    wrong, with ``log()`` (its output since it was started): it exited (``p.returncode`` set),
    or it did not answer within ``timeout`` s (then it is stopped with SIGABRT, which makes
    Python print its threads' stacks where PYTHONFAULTHANDLER is set)."""
    t0 = time.monotonic()
    last = "nothing yet"
    while True:
        if p.poll() is not None:
            return (f"the process serving {url} exited with {p.returncode} after {time.monotonic() - t0:.1f}s "
                    f"before it answered; its output:\n{log()[-4000:]}")
        if _listens(p.pid, port):
            try:
                r = requests.get(url, timeout=2)
                if r.status_code == 200:
                    return None
                last = f"{r.status_code} {r.text[:300]}"
            except requests.RequestException as e:
                last = repr(e)
        else:
            last = f"pid {p.pid} does not listen on port {port} yet"
        if time.monotonic() - t0 > timeout:
            break
        time.sleep(0.1)
    p.send_signal(signal.SIGABRT)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)
    return (f"timed out after {timeout}s waiting for {url} (last: {last}); the process was stopped with SIGABRT; "
            f"its output (with its threads' stacks):\n{log()[-6000:]}")


TESTS_ROOT = Path("/var/lib/gpuqueue-tests")  # where the shipped unit's state is: /var/lib, not /tmp
_RUN_ROOT: list[Path] = []  # this test process's own folder in it, made at first use


def _run_root() -> Path:
    """This test process's own folder in ``TESTS_ROOT`` (0711, root's; made at first use,
    removed at the end of the session): pytest-xdist's workers each make their own. Those of
    test processes that no longer run (killed before their end) are removed."""
    if not _RUN_ROOT:
        for _ in range(3):  # another process's session end may rmdir an empty TESTS_ROOT meanwhile
            TESTS_ROOT.mkdir(mode=0o711, exist_ok=True)
            st = TESTS_ROOT.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
                raise AssertionError(f"{TESTS_ROOT} is not a folder of root's: remove it")
            TESTS_ROOT.chmod(0o711)  # whatever the umask: the jobs' uids traverse it
            for old in TESTS_ROOT.glob("run-*-*"):
                pid = old.name.split("-")[1]
                if pid.isdigit() and not psutil.pid_exists(int(pid)):
                    shutil.rmtree(old, ignore_errors=True)
            try:
                _RUN_ROOT.append(Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=TESTS_ROOT)))
                break
            except FileNotFoundError:
                continue
        else:
            raise AssertionError(f"cannot make a folder in {TESTS_ROOT}")
        _RUN_ROOT[0].chmod(0o711)
    return _RUN_ROOT[0]


@pytest.fixture(scope="session", autouse=True)
def _remove_run_root() -> Iterator[None]:
    """At the end of the session: this process's folder in ``TESTS_ROOT`` goes (and the root
    itself, once no other test process has one there)."""
    yield
    if _RUN_ROOT:
        shutil.rmtree(_RUN_ROOT.pop(), ignore_errors=True)
        try:
            TESTS_ROOT.rmdir()
        except OSError:
            pass


def outside_tmp(prefix: str) -> Path:
    """A fresh folder (mode 0711: job identities may traverse it but not list it, as /var/lib)
    for a cluster whose workers run as root with dynamic identities, where the shipped unit keeps
    its state: outside ``/tmp``, ``/var/tmp`` and ``/dev/shm``, which each job's own mount
    namespace hides (a worker whose state or shared folder is there runs its jobs without one:
    not what ships). As root it is under ``TESTS_ROOT`` (that TESTS_ROOT and the folders above it
    are root's and not writable by others: the worker checks); otherwise in the temporary folder
    (such workers run no job under another identity). The caller removes it."""
    under = str(_run_root()) if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=under))
    root.chmod(0o711)
    return root


@functools.lru_cache(maxsize=1)
def _namespaces_here() -> Optional[str]:
    """Why a root worker here cannot give its jobs namespaces of their own, or None (tried once)."""
    return privtmp.probe(runner_env())


def assert_private_tmp(c: Cluster) -> None:
    """Each worker of ``c`` (started, running jobs under dynamic identities) gives each job its
    own ``/tmp``, ``/var/tmp`` and ``/dev/shm``, as the shipped unit does, where this machine
    allows mount namespaces (else nothing is asserted) and ``--private-tmp off`` was not given: a
    change that makes the cluster tests fall back to the node's /tmp (a root under /tmp, say)
    fails here, with the worker's reason."""
    args = list(c.worker_args)
    shared_ids = "--identities" in args and args[args.index("--identities") + 1:][:1] == ["none"]
    if os.geteuid() != 0 or shared_ids or "--private-tmp" in args or _namespaces_here() is not None:
        return
    for node in c.nodes:
        log_text = c.log(f"worker-{node}")
        if "each job gets its own /tmp, /var/tmp and /dev/shm" not in log_text:
            said = [line for line in log_text.splitlines() if "/tmp" in line] or [log_text[-3000:]]
            raise AssertionError(f"the worker of {node} gives its jobs the node's /tmp, not their own (its log:)\n"
                                 + "\n".join(said))


@contextmanager
def identity_cluster(prefix: str, nodes: dict[str, int], *, under: Optional[str] = None,
                     redis_kw: Optional[dict[str, Any]] = None, setup: Optional[Callable[[Cluster], object]] = None,
                     **cluster_kw: Any) -> Iterator[Cluster]:
    """A started Cluster for workers that run jobs under the users' own (dynamic) identities, in
    a fresh folder ``outside_tmp(prefix)`` (or ``mkdtemp(prefix=prefix, dir=under)``) holding
    ``redis/`` (a RedisServer with ``redis_kw``) and ``cluster/`` (the Cluster, with
    ``cluster_kw``). The folder is 0711: job identities may traverse it but not list it, as
    /var/lib; the cluster's own folder is 0755: the jobs (other uids) read the scripts written
    there, while the modes inside (each node's state, each job's folders) must hold. It is out of
    /tmp, so that each job gets its own /tmp as where the unit ships (asserted once the cluster
    has started: ``assert_private_tmp``). ``setup(c)`` runs before the start (files written into
    ``c.root``, role URLs, ...). On exit: the cluster closed, redis stopped, the folder removed."""
    if under is None:
        root = outside_tmp(prefix)
    else:
        root = Path(tempfile.mkdtemp(prefix=prefix, dir=under))
        root.chmod(0o711)
    redis = RedisServer(root / "redis", **(redis_kw or {})).start()
    c = Cluster(root / "cluster", redis, nodes, **cluster_kw)
    try:
        c.root.chmod(0o755)
        if setup is not None:
            setup(c)
        c.start()
        assert_private_tmp(c)
        yield c
    finally:
        c.close()
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cluster_factory(tmp_path: Path, redis_factory: Callable[..., RedisServer]) -> Iterator[Callable[..., Cluster]]:
    """``cluster_factory(nodes={"n1": 2, "n2": 2}, start=True)`` -> a running Cluster."""
    made: list[Cluster] = []

    def make(nodes: Optional[dict[str, int]] = None, start: bool = True, **kw: Any) -> Cluster:
        r = redis_factory(appendonly=True)
        c = Cluster(tmp_path / f"cluster{len(made)}", r, nodes or {"n1": 2, "n2": 2}, **kw)
        made.append(c)
        return c.start() if start else c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def moto_s3(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A local S3-compatible server (moto in server mode) with bucket ``ckpts``; its endpoint URL,
    key and secret (``s3fs_options`` makes fsspec options of them)."""
    pytest.importorskip("s3fs")
    port = free_port()
    log = open(tmp_path / "moto.log", "wb")
    p = subprocess.Popen([PY, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(url), 30, 0.1, "the moto S3 server")
        opts = {"endpoint_url": url, "key": "testing-key", "secret": "testing-secret"}
        import s3fs

        s3fs.S3FileSystem(client_kwargs={"endpoint_url": url}, key=opts["key"], secret=opts["secret"]).mkdir("ckpts")
        yield {"endpoint_url": url, "key": opts["key"], "secret": opts["secret"]}
    finally:
        p.kill()
        p.wait(10)


def _up(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code < 500
    except requests.RequestException:
        return False


def s3fs_options(moto: dict[str, str]) -> dict[str, Any]:
    """fsspec (s3fs) options for the ``moto_s3`` server."""
    return {"client_kwargs": {"endpoint_url": moto["endpoint_url"]}, "key": moto["key"], "secret": moto["secret"]}
