"""A new admin's walkthrough of docs/deploy.md on real processes: Redis loaded with the shipped
ACL file exactly as the docs say, the scheduler daemon (a leader and a standby), a worker and the
API service. Each test is a step where the product or the docs once surprised the admin."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import redis
import requests
import yaml

from helpers.servers import free_port, wait_until

from .conftest import ACL_FILE, Cluster

REPO = Path(__file__).resolve().parents[2]
PASSWORDS = {"api": "api-pw-1", "scheduler": "scheduler-pw-2", "worker": "worker-pw-3"}


class AclRedis:
    """redis-server from a redis.conf written as docs/deploy.md says: append-only file on
    (``everysec``), ``include`` of ``deploy/redis/users.acl`` as shipped, its passwords set."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        acl = ACL_FILE.read_text()
        for role, pw in PASSWORDS.items():
            acl = acl.replace(f">CHANGE-ME-{role}", f">{pw}")
        (root / "users.acl").write_text(acl)
        (root / "redis.conf").write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {root}\nappendonly yes\nappendfsync everysec\n"
            f"include {root / 'users.acl'}\n")
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def role_url(self, role: str) -> str:
        return f"redis://gpuqueue-{role}:{PASSWORDS[role]}@127.0.0.1:{self.port}/0"

    @property
    def url(self) -> str:  # what Cluster uses for a role without its own URL: none here
        return self.role_url("scheduler")

    def start(self) -> "AclRedis":
        self.proc = subprocess.Popen(["redis-server", str(self.root / "redis.conf")],
                                     stdout=open(self.root / "redis.log", "ab"), stderr=subprocess.STDOUT)
        r = redis.Redis.from_url(self.role_url("api"))

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (self.root / "redis.log").read_text()[-2000:]
            try:
                return bool(r.ping())
            except redis.ConnectionError:
                return False

        wait_until(up, 20, 0.05, "redis-server")
        return self

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits, as `systemctl restart` does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


def _cluster(tmp_path: Path, nodes: dict[str, int], **kw: Any) -> tuple[Cluster, AclRedis]:
    r = AclRedis(tmp_path / "redis").start()
    c = Cluster(tmp_path / "cluster", r, nodes, **kw)  # type: ignore[arg-type]
    c.role_urls = {role: r.role_url(role) for role in PASSWORDS}
    return c, r


def test_a_redis_restart_keeps_the_jobs_with_the_shipped_acl_file(tmp_path: Path) -> None:
    """docs/deploy.md: "with the AOF, a restart loses nothing acknowledged". With the shipped
    users.acl (its default user had no permission), Redis 7.0 replayed the append-only file's
    transactions as that user and dropped them all: after a restart every job was gone."""
    c, r = _cluster(tmp_path, {"n1": 1})
    try:
        c.start_api()
        p = c.cli("alice", "submit", "--gpus", "1", "--", "true")
        assert p.returncode == 0, p.stderr
        job = p.stdout.strip()
        r.stop()
        r.start()
        shown = wait_until(lambda: (lambda q: q if q.returncode == 0 else None)(c.cli("alice", "show", job)),
                           20, 0.2, "the API to reach the restarted Redis")
        assert '"state": "queued"' in shown.stdout
        log = (r.root / "redis.log").read_text()
        assert "NOPERM" not in log, log[-2000:]
        # the default user stays off: no connection logs in as it
        for how in ({}, {"username": "default", "password": "x"}):
            try:
                redis.Redis(port=r.port, **how).set("gq:x", "1")  # type: ignore[arg-type]
                raise AssertionError(f"the default user could write ({how})")
            except (redis.AuthenticationError, redis.ResponseError):
                pass
    finally:
        c.close()
        r.stop()


def test_a_job_over_a_users_gpu_cap_is_refused_at_submit(tmp_path: Path) -> None:
    """A job asking more GPUs than the user may ever hold was taken (the CLI printed its id, exit
    0) and then failed as "rejected: ..." with no output; the API now refuses it at once, with
    the scheduler's words, and stores nothing."""
    c, r = _cluster(tmp_path, {"n1": 2}, config_extra="[defaults]\nmax_gpus = 1\n")
    try:
        c.start()
        p = c.cli("alice", "submit", "--gpus", "2", "--", "true")
        assert p.returncode == 1 and "Traceback" not in p.stderr, (p.stdout, p.stderr)
        assert "2 GPUs is over your quota of 1 GPU; ask for at most 1" in p.stderr, p.stderr
        assert p.stdout.strip() == ""
        ls = c.cli("alice", "ls", "--json")
        assert ls.returncode == 0 and ls.stdout.strip() == "[]", ls.stdout
        ok = c.cli("alice", "submit", "--gpus", "1", "--", "true")
        assert ok.returncode == 0, ok.stderr
        # `ls --all` by a user who is not a queue admin says why it lists only their own jobs
        mine = c.cli("alice", "ls", "--all")
        assert mine.returncode == 0 and ok.stdout.strip() in mine.stdout, mine
        assert "--all lists every user's jobs for queue admins only; you (alice) are not one" in mine.stderr
        everyone = c.cli("root", "ls", "--all")
        assert everyone.returncode == 0 and ok.stdout.strip() in everyone.stdout and everyone.stderr == ""
        # docs/metrics.md: the API serves /metrics on its own port, and counted the refusal
        metrics = requests.get(f"{c.url}metrics", timeout=10).text
        assert 'gpuqueue_api_request_duration_seconds_count{code="400",handler="JobsHandler",method="POST"}' in metrics
    finally:
        c.close()
        r.stop()


def _published_nodes(r: AclRedis) -> dict[str, int]:
    import json

    raw = redis.Redis.from_url(r.role_url("scheduler")).get("gq:config")
    return dict(json.loads(raw)["pools"]["gpu"]["nodes"]) if raw else {}


def test_growing_the_config_needs_only_the_leaders_restart(tmp_path: Path) -> None:
    """docs/deploy.md "Growing to many nodes": a standby read --config only when it started, so
    after an edit the leader's restart handed the queue to a standby with the old file (the new
    node was missing from the published config, and nothing said so). A daemon now reads the
    file again when it takes the lead and logs what changed; a file it cannot read then leaves
    it on the config it had, with a log line naming the fix. No job is lost."""
    c, r = _cluster(tmp_path, {"n1": 1})
    try:
        c.start()
        c.start_daemon("standby")
        wait_until(lambda: "standing by" in c.log("standby"), 30, 0.1, "the standby")
        done = c.submit("alice", ticks=1)
        # the admin adds node n2 to pools.toml and restarts the leader: the standby takes over
        good = c.config.read_text().replace('"n1" = 1', '"n1" = 1, "n2" = 1')
        c.config.write_text(good)
        c.kill("daemon", 15)
        wait_until(lambda: _published_nodes(r).get("n2") == 1, 30, 0.1, "the new config in force")
        assert f"config {c.config} read again: pools.gpu.nodes.n2: added (1)" in c.log("standby")
        c.nodes["n2"] = 1
        c.start_worker("n2")
        c.wait_nodes({"n1", "n2"})
        jobs = c.wait_done([done, c.submit("bob", ticks=1)])
        assert {j["state"] for j in jobs.values()} == {"succeeded"}, jobs
        # a broken edit at the next takeover: the daemon leads with the config it had, and says so
        c.start_daemon("daemon2")
        wait_until(lambda: "standing by" in c.log("daemon2"), 30, 0.1, "the restarted daemon")
        c.config.write_text(good.replace("[pools.gpu]", "[pools.gpu"))
        c.kill("standby", 15)
        wait_until(lambda: "cannot read the config again" in c.log("daemon2"), 30, 0.1, "the takeover")
        assert f"Fix {c.config}, then restart the leading daemon" in c.log("daemon2")
        time.sleep(0.5)
        assert _published_nodes(r) == {"n1": 1, "n2": 1}
        jobs = c.wait_done([c.submit("alice", ticks=1), c.submit("bob", ticks=1)])
        assert {j["state"] for j in jobs.values()} == {"succeeded"}, jobs
    finally:
        c.close()
        r.stop()


def _unit_ports() -> dict[str, set[int]]:
    """Ports the shipped systemd units serve /metrics on (the API: its own --port)."""
    out: dict[str, set[int]] = {}
    for role, flag in (("scheduler", "--metrics-port"), ("worker", "--metrics-port"), ("api", "--port")):
        unit = next((REPO / "deploy" / "systemd").glob(f"gpuqueue-{role}*.service")).read_text()
        out[role] = {int(m) for m in re.findall(rf"{flag} (\d+)", unit)}
    return out


def test_the_scrape_config_targets_the_ports_the_units_serve() -> None:
    """deploy/prometheus/prometheus.yml scraped ports 9750-9752 while the units serve /metrics
    on 9464 (scheduler), 9465 (worker) and the API's own port 8780: every scrape failed."""
    prom = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    ports = _unit_ports()
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    for role in ("scheduler", "worker", "api"):
        targets = [t for sc in jobs[f"gpuqueue-{role}"]["static_configs"] for t in sc["targets"]]
        assert targets and {int(t.rsplit(":", 1)[1]) for t in targets} == ports[role], (role, targets, ports[role])
        assert jobs[f"gpuqueue-{role}"].get("metrics_path", "/metrics") == "/metrics"
    # the daemon's /metrics names every job and user: the unit does not open it on every interface
    unit = (REPO / "deploy" / "systemd" / "gpuqueue-scheduler.service").read_text()
    assert "--metrics-address 127.0.0.1" in unit


def test_the_systemd_steps_create_what_the_units_need() -> None:
    """The units run as user `gpuqueue` from /opt/gpuqueue/venv and read /etc/gpuqueue/*: the
    docs' systemd steps must create each (they began with `install ... /etc/gpuqueue/...`, which
    fails while the folder does not exist)."""
    doc = (REPO / "docs" / "deploy.md").read_text()
    steps = doc.split("## With systemd", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    units = "".join(p.read_text() for p in (REPO / "deploy" / "systemd").glob("*.service"))
    assert "User=gpuqueue" in units and "useradd --system" in steps and " gpuqueue" in steps
    assert "/opt/gpuqueue/venv/bin/gpuqueue" in units and "python3 -m venv /opt/gpuqueue/venv" in steps
    assert 0 <= steps.find("mkdir -p /etc/gpuqueue") < steps.find("install -m 644 deploy/systemd/gpuqueue.env")
    roles = re.search(r"for role in ([\w ]+);", steps)
    assert roles, steps
    steps += "".join(steps.replace("$role", role) for role in roles.group(1).split())
    for path in sorted(set(re.findall(r"/etc/gpuqueue/[\w.{}$]+", units))):
        if "$" in path or "{" in path:
            continue
        assert path in steps, f"{path} (a unit reads it) is made by no step"
    assert "/etc/gpuqueue/pools.toml" in steps  # GPUQUEUE_CONFIG of gpuqueue.env


def test_a_cluster_command_without_the_cluster_extra_names_the_install() -> None:
    """Without Celery (the `cluster` extra), `gpuqueue scheduler` said only "not available in
    this installation (No module named 'celery')"; it now names the install the docs give."""
    code = ("import sys; sys.modules['celery'] = None; from gpuqueue.cli import main; "
            "sys.exit(main(['scheduler', '--redis', 'redis://127.0.0.1:1/0']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert 'pip install ".[cluster,train]"' in p.stderr, p.stderr
    assert 'pip install torch ".[cluster,train]"' in (REPO / "docs" / "deploy.md").read_text()
    assert '".[cluster,train]"' in (REPO / "README.md").read_text()


def test_the_api_as_a_hub_service_starts_without_library_noise(redis_factory: Any) -> None:
    """`gpuqueue api` started by a hub logged seven alembic "setup plugin" lines before its own
    first line; an admin reading the hub's log now sees the API's own line first."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUQUEUE_", "JUPYTERHUB_"))}
    env.update(JUPYTERHUB_API_TOKEN="x" * 32, JUPYTERHUB_API_URL="http://127.0.0.1:1/hub/api",
               JUPYTERHUB_SERVICE_NAME="gpuqueue", JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}",
               JUPYTERHUB_SERVICE_PREFIX="/services/gpuqueue/", GPUQUEUE_REDIS_URL=redis_factory().url)
    p = subprocess.Popen([sys.executable, "-m", "gpuqueue.cli", "api"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        assert p.stdout is not None
        first = p.stdout.readline()
        assert "gpuqueue api on 127.0.0.1:" in first and "JupyterHub auth" in first, first
    finally:
        p.kill()
        p.wait(10)


def test_an_edited_users_file_takes_effect_without_a_restart(tmp_path: Path, redis_factory: Any) -> None:
    """An admin who added a user to users.toml found the new token refused until the API was
    restarted (nothing said so). Each API process now reads the file again when it changes; an
    edit it cannot read keeps the users it had and its log names the problem."""
    c = Cluster(tmp_path / "cluster", redis_factory(), {"n1": 1})
    try:
        c.start_api()
        carol = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "ls"], capture_output=True, text=True,
                               env=dict(os.environ, GPUQUEUE_URL=c.url, GPUQUEUE_TOKEN="carol-token-4444"))
        assert carol.returncode == 1 and "not authenticated" in carol.stderr
        original = c.users.read_text()
        c.users.write_text(original + '[[user]]\nname = "carol"\ntoken = "carol-token-4444"\n')

        def carol_in() -> bool:
            p = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "ls"], capture_output=True, text=True,
                               env=dict(os.environ, GPUQUEUE_URL=c.url, GPUQUEUE_TOKEN="carol-token-4444"))
            return p.returncode == 0

        t0 = time.monotonic()
        wait_until(carol_in, 15, 0.2, "carol's token to work")
        assert time.monotonic() - t0 < 5
        # a broken edit: the API keeps the users it had and says what is wrong
        c.users.write_text(original + '[[user]]\nname = "dave"\ntoken = "short"\n')
        wait_until(lambda: carol_in() and "user 'dave' needs a token of 8 characters or more; the API goes on "
                   "with the 4 users it had" in c.log("api"), 15, 0.2, "the API to log the broken file")
        assert c.cli("alice", "ls").returncode == 0 and carol_in()
    finally:
        c.close()
