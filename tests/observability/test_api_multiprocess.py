"""The API service with ``--processes 2`` answers one ``/metrics`` for the whole service: real
``gpuqueue api`` processes on a real redis-server, scraped over HTTP as Prometheus would."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import psutil
import pytest
import requests

from gpuqueue.observability import multiproc
from helpers.servers import RedisServer, free_port, wait_until
from observability.obstools import Scrape

TOKEN = "multiprocess-test-token"
REQ = "gpuqueue_api_request_duration_seconds_count"
UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "gpuqueue-api.service"


def unit_args() -> list[str]:
    """The options the shipped systemd unit gives ``gpuqueue api``."""
    argv = shlex.split(re.search(r"^ExecStart=(.*)$", UNIT.read_text(), re.M).group(1))  # type: ignore[union-attr]
    assert argv[1] == "api", argv
    return argv[2:]


def _set(args: list[str], opt: str, value: str) -> list[str]:
    if opt in args:
        args = list(args)
        args[args.index(opt) + 1] = value
        return args
    return [*args, opt, value]


class Api:
    """One ``gpuqueue api`` service (a parent and its forked processes) in its own session."""

    def __init__(self, root: Path, redis: RedisServer, args: list[str], metrics_dir: Optional[Path],
                 env: Optional[dict[str, str]] = None):
        """``args``: options of ``gpuqueue api``; its port, address, users file and metrics
        directory are replaced by this test's (``metrics_dir`` None: no ``--metrics-dir``)."""
        base = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        self.env = dict(base, PYTHONUNBUFFERED="1", **(env or {}))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        users = root / "users.toml"
        users.write_text(f'[[user]]\nname = "alice"\ntoken = "{TOKEN}"\n')
        users.chmod(0o600)
        for opt, value in (("--port", str(self.port)), ("--address", "127.0.0.1"), ("--users", str(users))):
            args = _set(args, opt, value)
        if metrics_dir is not None:
            args = _set(args, "--metrics-dir", str(metrics_dir))
        elif "--metrics-dir" in args:
            i = args.index("--metrics-dir")
            args = args[:i] + args[i + 2:]
        self.processes = int(args[args.index("--processes") + 1]) if "--processes" in args else 1
        self.args = [sys.executable, "-m", "gpuqueue.cli", "api", "--redis", redis.url, *args]
        self.log = root / f"api-{self.port}.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> "Api":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=self.env)
        if self.processes > 1:
            wait_until(lambda: len(self.children()) == self.processes or self.proc.poll() is not None, 30, 0.1,
                       "the forks")
        wait_until(self._up, 30, 0.1, f"the API service ({self.log.read_text()})")
        return self

    def _up(self) -> bool:
        try:
            return requests.get(self.url + "/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def children(self) -> list[int]:
        assert self.proc is not None
        try:
            return sorted(c.pid for c in psutil.Process(self.proc.pid).children())
        except psutil.NoSuchProcess:
            return []

    def request(self) -> None:
        """One authenticated REST request on a new connection (either process may take it)."""
        r = requests.get(self.url + "/gpuqueue/api/queue", headers={"Authorization": f"token {TOKEN}",
                                                                     "Connection": "close"}, timeout=10)
        assert r.status_code == 200, r.text

    def scrape(self) -> Scrape:
        r = requests.get(self.url + "/metrics", headers={"Connection": "close"}, timeout=10)
        assert r.status_code == 200, r.text
        return Scrape(r.text)

    def stop(self) -> None:
        """SIGKILL to the whole service, as a crash or ``systemctl kill`` would (nothing is tidied)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def api_factory(tmp_path: Path, redis_factory: Callable[..., RedisServer]):
    redis = redis_factory()
    made: list[Api] = []

    def make(processes: int = 2, metrics_dir: Optional[Path] = None, env: Optional[dict[str, str]] = None) -> Api:
        """The API as the shipped systemd unit runs it (2 processes), or with ``processes``."""
        a = Api(tmp_path, redis, _set(unit_args(), "--processes", str(processes)), metrics_dir, env)
        made.append(a)
        return a

    yield make
    for a in made:
        a.stop()


def queue_requests(s: Scrape) -> float:
    return s.sum(REQ, handler="QueueHandler", method="GET", code="200")


def settled(api: Api, n: int) -> Scrape:
    """The first scrape that counts ``n`` requests. A process counts a request just after it has
    sent the answer, so a scrape that another process takes at once may miss the last one; one
    process' count alone (the old ``/metrics``) never reaches ``n``."""
    def counted() -> Optional[Scrape]:
        s = api.scrape()
        return s if queue_requests(s) == n else None

    return wait_until(counted, 10, 0.05, f"a scrape counting {n} requests")


def test_the_shipped_unit_gives_a_private_fresh_directory_per_start() -> None:
    unit = UNIT.read_text()
    args = unit_args()
    assert args[args.index("--processes") + 1] == "2"
    runtime = re.search(r"^RuntimeDirectory=(\S+)$", unit, re.M)
    assert runtime and args[args.index("--metrics-dir") + 1] == f"/run/{runtime.group(1)}"
    assert re.search(r"^RuntimeDirectoryMode=0700$", unit, re.M)
    assert not re.search(r"^RuntimeDirectoryPreserve=(yes|restart)", unit, re.M)


def test_counter_is_the_service_total_in_every_scrape(api_factory, tmp_path: Path) -> None:
    d = tmp_path / "metrics"
    api = api_factory(metrics_dir=d).start()  # the shipped unit's command, its paths and port replaced
    n = 40
    for _ in range(n):
        api.request()
    settled(api, n)
    for _ in range(8):  # and every scrape after it, whichever process takes it
        s = api.scrape()
        assert queue_requests(s) == n, s.text
    # the directory is the service's own: created 0700, owned by the API's user
    st = os.lstat(d)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    # each process once in gpuqueue_process_info and in the process_* metrics, by pid
    pids = {str(p) for p in api.children()}
    assert {x["pid"] for x in s.series("gpuqueue_process_info")} == pids, s.text
    assert {x["pid"] for x in s.series("process_resident_memory_bytes")} == pids, s.text
    assert s.get("gpuqueue_build_info", version=s.series("gpuqueue_build_info")[0]["version"], mode="cluster",
                 policy="") == 1
    assert s.get("gpuqueue_scheduler_leader") == 0
    assert not [n for (n, _) in s.samples if n.startswith("python_")], s.text


def test_without_metrics_dir_the_variable_then_the_temporary_folder(api_factory, tmp_path: Path) -> None:
    named = tmp_path / "named"
    api = api_factory(env={"PROMETHEUS_MULTIPROC_DIR": str(named)}).start()
    api.request()
    assert settled(api, 1) and any(p.suffix == ".db" for p in named.iterdir())
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    api = api_factory(env={"TMPDIR": str(tmp)}).start()
    api.request()
    assert settled(api, 1)
    d = tmp / f"gpuqueue-api-{os.getuid()}-{api.port}-metrics"
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700 and any(p.suffix == ".db" for p in d.iterdir())


def test_a_restart_starts_from_a_clean_directory(api_factory, tmp_path: Path) -> None:
    d = tmp_path / "metrics"
    first = api_factory(metrics_dir=d).start()
    for _ in range(30):
        first.request()
    settled(first, 30)
    old = {str(p) for p in first.children()}
    first.stop()  # killed: its files stay behind
    assert any(p.suffix == ".db" for p in d.iterdir())
    again = api_factory(metrics_dir=d).start()
    for _ in range(7):
        again.request()
    settled(again, 7)
    for _ in range(5):
        assert queue_requests(again.scrape()) == 7
    assert old and not old & {x["pid"] for x in again.scrape().series("gpuqueue_process_info")}


def test_a_process_that_dies_is_replaced_and_nothing_is_lost(api_factory, tmp_path: Path) -> None:
    api = api_factory(metrics_dir=tmp_path / "metrics").start()
    for _ in range(20):
        api.request()
    settled(api, 20)
    victim = api.children()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(api.children()) == 2 and victim not in api.children(), 30, 0.1, "tornado's restart")
    wait_until(api._up, 30, 0.1, "the API")
    s = settled(api, 20)  # the dead process' requests still count: no reset for rate()
    assert str(victim) not in {x["pid"] for x in s.series("gpuqueue_process_info")}  # mark_process_dead


@pytest.mark.parametrize("bad", ["group-readable", "link", "another user's"])
def test_a_metrics_dir_others_could_touch_is_refused(api_factory, tmp_path: Path, bad: str) -> None:
    d = tmp_path / "metrics"
    if bad == "another user's":
        if os.getuid() != 0:
            pytest.skip("needs root to give a directory to another user")
        d.mkdir(mode=0o700)
        os.chown(d, 65534, 65534)
    elif bad == "link":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        d.symlink_to(tmp_path / "elsewhere")
    else:
        d.mkdir()
        d.chmod(0o750)
    api = api_factory(metrics_dir=d)
    out = subprocess.run(api.args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr
    want = {"group-readable": "chmod 700", "link": "not a directory", "another user's": "belongs to uid 65534"}
    assert want[bad] in out.stderr, out.stderr


def test_one_process_is_unchanged(api_factory, tmp_path: Path) -> None:
    d = tmp_path / "metrics"
    api = api_factory(processes=1, metrics_dir=d).start()
    for _ in range(5):
        api.request()
    s = api.scrape()
    assert queue_requests(s) == 5
    assert s.series("process_resident_memory_bytes") == [{}]  # its own, no pid label
    assert not d.exists()


def _dead_pid() -> int:
    """The pid of a process that has ended (a killed process of the service)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(60)
    return p.pid


def test_a_metrics_file_still_empty_does_not_fail_the_scrape(api_factory, tmp_path: Path) -> None:
    """A process creates its metrics file empty and sizes it just after: a scrape at that moment
    (a new process' first request), or ever after when the process was killed in between, still
    answers with every other file's values (prometheus-client alone fails the whole scrape)."""
    d = tmp_path / "metrics"
    api = api_factory(metrics_dir=d).start()
    for _ in range(3):
        api.request()
    settled(api, 3)
    pid = _dead_pid()
    for kind in ("counter", "histogram", "gauge_max", "gauge_liveall"):
        (d / f"{kind}_{pid}.db").touch()
    for _ in range(4):  # whichever process takes it
        s = api.scrape()
        assert queue_requests(s) == 3, s.text
    assert "Traceback" not in api.log.read_text()


def test_a_damaged_metrics_file_answers_503_naming_the_fix(api_factory, tmp_path: Path) -> None:
    d = tmp_path / "metrics"
    api = api_factory(metrics_dir=d).start()
    api.request()
    settled(api, 1)
    (d / f"counter_{_dead_pid()}.db").write_bytes((4096).to_bytes(4, "little") + b"\0" * 12)  # says more than it holds
    r = requests.get(api.url + "/metrics", timeout=10)
    assert r.status_code == 503 and "restart the service" in r.json()["message"], r.text
    assert "Traceback" not in api.log.read_text()


def _sweep_rounds(d: Path, barrier: "multiprocessing.synchronize.Barrier", rounds: int,
                  errors: "multiprocessing.Queue[list[str]]") -> None:
    """One of several scrapes at once: ``rounds`` times, wait for the others, sweep; then put
    the list of what failed."""
    failed = []
    for _ in range(rounds):
        barrier.wait()
        try:
            multiproc.sweep_dead(d)
        except OSError as e:
            failed.append(repr(e))
        barrier.wait()
    errors.put(failed)


def test_scrapes_at_once_each_forget_a_dead_process_without_error(tmp_path: Path) -> None:
    """Four processes of the service scrape at the same moment, right after one of them died
    with a file for each of prometheus-client's five live-gauge modes: each scrape removes what
    the others have not (before, a scrape that found a file gone under it failed: 503)."""
    ctx = multiprocessing.get_context("fork")
    n, rounds = 4, 300
    barrier, errors = ctx.Barrier(n + 1), ctx.Queue()
    scrapes = [ctx.Process(target=_sweep_rounds, args=(tmp_path, barrier, rounds, errors)) for _ in range(n)]
    for p in scrapes:
        p.start()
    pid = _dead_pid()
    try:
        for _ in range(rounds):
            for mode in ("liveall", "livesum", "livemax", "livemin", "livemostrecent"):
                (tmp_path / f"gauge_{mode}_{pid}.db").touch()
            barrier.wait(30)
            barrier.wait(30)
            assert list(tmp_path.iterdir()) == []
        assert [e for _ in scrapes for e in errors.get(timeout=30)] == []
    finally:
        for p in scrapes:
            p.kill()
            p.join(10)


def test_a_removed_directory_answers_503_naming_the_fix(api_factory, tmp_path: Path) -> None:
    d = tmp_path / "metrics"
    api = api_factory(metrics_dir=d).start()
    shutil.rmtree(d)
    r = requests.get(api.url + "/metrics", timeout=10)
    assert r.status_code == 503 and "restart the service" in r.json()["message"], r.text


def test_enable_after_prometheus_client_was_imported(tmp_path: Path) -> None:
    """A metric made after ``enable`` writes to the directory even when prometheus-client was
    imported before the variable was set."""
    code = ("import os, sys, prometheus_client\n"
            "from gpuqueue.observability import multiproc\n"
            "multiproc.enable(multiproc.prepare_dir(sys.argv[1]))\n"
            "prometheus_client.Counter('x', 'x', registry=None).inc()\n")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], check=True, env=env, timeout=60)
    assert [p.name.split("_")[0] for p in (tmp_path / "m").iterdir()] == ["counter"]


def test_a_clean_stop_removes_the_default_directory_but_keeps_a_named_one(api_factory, tmp_path: Path) -> None:
    """SIGTERM (systemd's stop) or SIGINT to the API: the parent stops its processes, then
    removes the directory it chose in the temporary folder; a directory the admin named stays."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    named = tmp_path / "named"
    for sig, metrics_dir, env in ((signal.SIGTERM, None, {"TMPDIR": str(tmp)}), (signal.SIGINT, None, {"TMPDIR": str(tmp)}),
                                  (signal.SIGTERM, named, {}), (signal.SIGTERM, None, {"TMPDIR": str(tmp),
                                                                                        "PROMETHEUS_MULTIPROC_DIR": str(named)})):
        api = api_factory(metrics_dir=metrics_dir, env=env).start()
        api.request()
        settled(api, 1)
        d = metrics_dir or Path(env.get("PROMETHEUS_MULTIPROC_DIR") or tmp / f"gpuqueue-api-{os.getuid()}-{api.port}-metrics")
        assert any(p.suffix == ".db" for p in d.iterdir())
        kids = api.children()
        assert api.proc is not None
        os.kill(api.proc.pid, sig)  # the parent only, as systemd's KillMode=mixed or a test does
        code = api.proc.wait(30)
        wait_until(lambda: not [p for p in kids if psutil.pid_exists(p)], 10, 0.05, "the processes' end")
        if d == named:
            assert any(p.suffix == ".db" for p in d.iterdir())  # the admin's: kept
        else:
            assert not d.exists(), sorted(p.name for p in d.iterdir())
        assert code == 0, api.log.read_text()  # a clean stop, not death by the signal
    assert not list(tmp.iterdir())
    assert "Traceback" not in api.log.read_text()
