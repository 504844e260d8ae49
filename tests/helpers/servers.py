"""Real processes for tests: a ``jupyter server`` subprocess with the extension, kernels that
server starts (driven over ZMQ with jupyter_client), and ``redis-server`` on a free port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import requests

from gpuqueue.rest.client import Client, ServerInfo


# Ports for the servers tests start: below the kernel's ephemeral range (32768-60999 here), which
# port 0 binds, client connections and other programs' own picks (kernels' ZMQ ports) draw from,
# and above Ray's worker ports (10002-19999); split between pytest-xdist workers, each taking
# its ports in turn. A port picked with bind(0) is only free until someone binds it: two
# workers' picks collided, and the server that came second could not listen.
PORTS = range(20000, 32000)
_next_port: list[int] = []


def _worker_ports() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    size = len(PORTS) // max(count, 1)
    start = PORTS.start + (index % max(count, 1)) * size
    return range(start, start + size)


def free_port() -> int:
    """A TCP port nobody listens on right now, from this pytest worker's own share of
    ``PORTS`` (taken in turn, so that a port is picked again only after the others)."""
    ports = _worker_ports()
    if not _next_port:
        _next_port.append(ports.start + (os.getpid() * 7919) % len(ports))
    for _ in range(len(ports)):
        port = _next_port[0]
        _next_port[0] = port + 1 if port + 1 < ports.stop else ports.start
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


def wait_until(pred: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``pred`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        time.sleep(interval)


@dataclass
class CellResult:
    """What a cell showed: its streams, display outputs, and error if any."""

    stdout: str = ""
    stderr: str = ""
    error: Optional[dict[str, Any]] = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    stream_times: list[tuple[float, str]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


class Kernel:
    """A kernel started by the Jupyter server, driven directly over ZMQ."""

    def __init__(self, server: "JupyterServer", kernel_id: str):
        from jupyter_client import BlockingKernelClient

        self.server = server
        self.id = kernel_id
        cf = server.runtime_dir / f"kernel-{kernel_id}.json"
        wait_until(cf.exists, 30, what=f"connection file {cf}")
        self.client = BlockingKernelClient()
        self.client.load_connection_file(str(cf))
        self.client.start_channels()
        self.wait_ready()

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait for a kernel_info reply (no heartbeat check: a busy 2-core CI box can miss beats)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg_id = self.client.kernel_info()
            t_end = time.monotonic() + 2
            while time.monotonic() < t_end:
                try:
                    reply = self.client.get_shell_msg(timeout=0.5)
                except Exception:  # noqa: BLE001 - queue.Empty
                    continue
                if reply["parent_header"].get("msg_id") == msg_id:
                    # drain iopub so later cells only see their own messages
                    while True:
                        try:
                            self.client.get_iopub_msg(timeout=0.2)
                        except Exception:  # noqa: BLE001
                            return
        raise AssertionError(f"kernel {self.id} did not answer kernel_info in {timeout}s")

    def run(
        self,
        code: str,
        timeout: float = 120.0,
        on_output: Optional[Callable[[dict[str, Any]], None]] = None,
        cell_id: Optional[str] = None,
        interrupt_after: Optional[float] = None,
    ) -> CellResult:
        """Execute ``code`` and collect what it shows until the kernel is idle again."""
        res = CellResult()
        msg = self.client.session.msg(
            "execute_request",
            {"code": code, "silent": False, "store_history": True, "user_expressions": {},
             "allow_stdin": False, "stop_on_error": True},
            metadata={"cellId": cell_id} if cell_id else {},
        )
        self.client.shell_channel.send(msg)
        msg_id = msg["header"]["msg_id"]
        deadline = time.monotonic() + timeout
        start = time.monotonic()
        interrupted = False
        while True:
            if interrupt_after is not None and not interrupted and time.monotonic() - start > interrupt_after:
                self.interrupt()
                interrupted = True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"cell did not finish in {timeout}s; so far: {res.text[-2000:]}")
            try:
                m = self.client.get_iopub_msg(timeout=min(remaining, 0.5))
            except Exception:  # noqa: BLE001 - queue.Empty
                continue
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            t, c = m["msg_type"], m["content"]
            if on_output is not None:
                on_output(m)
            if t == "stream":
                res.stream_times.append((time.monotonic(), c["text"]))
                if c["name"] == "stdout":
                    res.stdout += c["text"]
                else:
                    res.stderr += c["text"]
            elif t == "error":
                res.error = {"ename": c["ename"], "evalue": c["evalue"], "traceback": "\n".join(c["traceback"])}
            elif t in ("display_data", "execute_result", "update_display_data"):
                res.outputs.append(c)
            elif t == "status" and c["execution_state"] == "idle":
                self._read_reply(msg_id, res)
                return res

    def _read_reply(self, msg_id: str, res: CellResult) -> None:
        """A UsageError is printed to stderr, not sent as an error message; the execute reply
        still says it failed. Record it as the cell's error too."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                reply = self.client.get_shell_msg(timeout=1)
            except Exception:  # noqa: BLE001
                continue
            if reply["parent_header"].get("msg_id") != msg_id:
                continue
            c = reply["content"]
            if c.get("status") == "error" and res.error is None:
                res.error = {"ename": c.get("ename", ""), "evalue": c.get("evalue", ""),
                             "traceback": "\n".join(c.get("traceback", [])) or res.stderr}
            return

    def interrupt(self) -> None:
        """Interrupt the kernel through the server, as the notebook's stop button does."""
        self.server.api("POST", f"api/kernels/{self.id}/interrupt")

    def restart(self) -> None:
        """Restart the kernel through the server (its namespace is lost)."""
        self.server.api("POST", f"api/kernels/{self.id}/restart")
        self.wait_ready()

    def close(self) -> None:
        self.client.stop_channels()


class JupyterServer:
    """``jupyter server`` with jupyter-gpuqueue, in a subprocess with its own dirs and port."""

    def __init__(self, root: Path, gpus: int = 2, env: Optional[dict[str, str]] = None,
                 args: Optional[list[str]] = None):
        self.root = root
        self.port = free_port()
        self.token = "test-token-" + os.urandom(4).hex()
        self.state_dir = root / "state"
        self.runtime_dir = root / "runtime"
        self.work_dir = root / "work"
        for d in (self.state_dir, self.runtime_dir, self.work_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env.update(
            {
                "GPUQUEUE_STATE_DIR": str(self.state_dir),
                "GPUQUEUE_GPUS": str(gpus),
                "JUPYTER_RUNTIME_DIR": str(self.runtime_dir),
                "JUPYTER_CONFIG_DIR": str(root / "config"),
                "JUPYTER_DATA_DIR": str(root / "data"),
                "IPYTHONDIR": str(root / "ipython"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        for k in ("GPUQUEUE_URL", "GPUQUEUE_TOKEN", "JPY_PARENT_PID"):
            self.env.pop(k, None)
        self.env.update(env or {})
        self.args = args or []
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.log_path = root / "server.log"
        self.kernels: list[Kernel] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, ready: str = "gpuqueue/api/queue") -> "JupyterServer":
        """Start and wait until ``ready`` (a path; by default gpuqueue's API) answers."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "server", "--no-browser", "--allow-root",
             f"--port={self.port}", "--ip=127.0.0.1", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={self.work_dir}", "--ServerApp.port_retries=0", *self.args],
            cwd=self.work_dir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"jupyter server exited: {self.log_path.read_text()[-3000:]}")
            try:
                return requests.get(self.url + ready, headers=self.headers, timeout=2).ok
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or busy starting
                return False

        try:
            wait_until(up, 90, 0.1, "the jupyter server to answer")
        except AssertionError:
            self.stop(signal.SIGKILL)
            raise
        return self

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        """A raw request to the server (relative path, e.g. 'gpuqueue/api/jobs')."""
        return requests.request(method, self.url + path, headers=self.headers, timeout=30, **kw)

    def client(self) -> Client:
        """A gpuqueue REST client for this server."""
        return Client(ServerInfo(self.url, self.token))

    def start_kernel(self) -> Kernel:
        """A python3 kernel started by the server (so it inherits the server's environment)."""
        r = self.api("POST", "api/kernels", json={"name": "python3"})
        r.raise_for_status()
        k = Kernel(self, r.json()["id"])
        self.kernels.append(k)
        return k

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (jobs it started keep running)."""
        for k in self.kernels:
            k.close()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> "JupyterServer":
        """Stop, then start again on the same port and state dir (kernels are gone)."""
        self.stop()
        self.kernels = []
        return self.start()

    def _runner_records(self) -> list[dict[str, Any]]:
        """The ``runner`` records (runner pid, job pid, and ``t``: when it was written) of every
        attempt this server launched."""
        out = []
        for events in self.state_dir.glob("jobs/*/attempt-*/events.jsonl"):
            for line in events.read_text().splitlines():
                if '"type": "runner"' in line:
                    rec = json.loads(line)
                    out.append({**rec["data"], "t": rec["t"]})
        return out

    @staticmethod
    def _created_after(pid: int, recorded_at: float) -> Optional[bool]:
        """Whether process ``pid`` was created after a record written at ``recorded_at`` (then
        it is not the one the record names: a pid freed and taken again, by another test's
        runner on a busy machine); None if no such process."""
        import psutil

        try:
            return psutil.Process(pid).create_time() > recorded_at + 1.0
        except psutil.Error:
            return None

    def job_pids(self, wait_s: float = 0.0) -> list[int]:
        """PIDs of the runner processes of this server's jobs still alive, after waiting up to
        ``wait_s`` for them all to be gone. (A runner reports its job's end once the job's
        processes are killed, then exits: under load that may take a moment.)"""
        import psutil

        def alive() -> list[int]:
            out = []
            for r in self._runner_records():
                if self._created_after(r["runner_pid"], r["t"]) is False:
                    try:
                        if psutil.Process(r["runner_pid"]).status() != "zombie":
                            out.append(r["runner_pid"])
                    except psutil.Error:
                        pass
            return out

        deadline = time.monotonic() + wait_s
        while (pids := alive()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return pids

    def kill_jobs(self) -> None:
        """Kill every job process this server started (test clean-up)."""
        for r in self._runner_records():
            for pid, group in ((r["runner_pid"], False), (r["pid"], True)):
                # a reused pid is not ours; a group whose leader ended is, while members live
                # (its id cannot be taken again then)
                after = self._created_after(pid, r["t"])
                if after or (after is None and not group):
                    continue
                try:
                    os.killpg(pid, signal.SIGKILL) if group else os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        subprocess.run(["pkill", "-9", "-f", f"gpuqueue.job.jobmain {self.state_dir}"], capture_output=True)


class RedisServer:
    """A ``redis-server`` on a free port, in its own folder, that a test can kill and restart."""

    def __init__(self, root: Path, appendonly: bool = True, password: Optional[str] = None, conf: str = ""):
        """``password``: the default user's (``requirepass``); ``conf``: more redis.conf lines
        (e.g. ACL users). Both go in a redis.conf of mode 600, never on the command line."""
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        self.password = password
        self.conf = conf + (f"\nrequirepass {password}\n" if password else "")
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        conf: list[str] = []
        if self.conf:
            path = self.root / "redis.conf"
            path.touch(mode=0o600)
            path.write_text(self.conf)
            conf = [str(path)]
        self.proc = subprocess.Popen(
            ["redis-server", *conf, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
             "--save", "", "--daemonize", "no", "--logfile", str(self.root / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        r = redis.Redis.from_url(self.url)
        wait_until(lambda: _ping(r), 20, 0.05, "redis-server to answer")
        return self

    def kill(self) -> None:
        """SIGKILL (no chance to save)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def restart(self) -> "RedisServer":
        self.stop()
        return self.start()


def _ping(r: Any) -> bool:
    try:
        return bool(r.ping())
    except Exception:  # noqa: BLE001
        return False


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
