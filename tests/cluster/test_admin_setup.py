"""What a new admin meets following docs/deploy.md ("Start it by hand"): the shipped Redis ACL
users load as the docs say, and each process refuses or names a mistake instead of running with
something else than what the admin asked."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import redis

from helpers.servers import free_port, wait_until

from .conftest import ACL_FILE

REPO = Path(__file__).resolve().parents[2]
PASSWORDS = {"api": "api-pw-1", "scheduler": "scheduler-pw-2", "worker": "worker-pw-3"}


def test_the_shipped_acl_users_load_as_the_docs_say(tmp_path: Path) -> None:
    """deploy/redis/users.acl, its passwords set, loaded with the redis.conf line the docs give
    (``include``; ``aclfile`` refuses its comment lines): each role logs in, the default user is off."""
    doc = (REPO / "docs" / "deploy.md").read_text()
    assert "`include /etc/redis/users.acl` in redis.conf" in doc
    acl = ACL_FILE.read_text()
    for role, pw in PASSWORDS.items():
        acl = acl.replace(f">CHANGE-ME-{role}", f">{pw}")
    (tmp_path / "users.acl").write_text(acl)
    port = free_port()
    (tmp_path / "redis.conf").write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nappendonly yes\n"
                                         f"include {tmp_path / 'users.acl'}\n")
    p = subprocess.Popen(["redis-server", str(tmp_path / "redis.conf")], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            if p.poll() is not None:
                raise AssertionError(f"redis-server refused the config: {p.stdout.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                redis.Redis(port=port, username="gpuqueue-api", password=PASSWORDS["api"]).ping()
                return True
            except redis.ConnectionError:
                return False

        wait_until(up, 20, 0.05, "redis-server")
        for role, pw in PASSWORDS.items():
            assert redis.Redis(port=port, username=f"gpuqueue-{role}", password=pw).ping()
        try:
            redis.Redis(port=port).ping()
            raise AssertionError("the default user is on")
        except redis.AuthenticationError:
            pass
    finally:
        p.kill()
        p.wait(10)


def _gpuqueue(*args: str, env: Optional[dict[str, str]] = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GPUQUEUE_", "JUPYTERHUB_"))}
    return subprocess.run([sys.executable, "-m", "gpuqueue.cli", *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def _one_line(p: subprocess.CompletedProcess[str], rc: int, *words: str) -> None:
    assert p.returncode == rc and "Traceback" not in p.stderr, p.stderr
    for w in words:
        assert w in p.stderr, p.stderr


def test_a_log_level_or_format_typo_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    for role in ("scheduler", "api", "worker"):
        _one_line(_gpuqueue(role, "--log-level", "debugg", "--redis", "redis://127.0.0.1:1/0"), 2,
                  f"gpuqueue {role}: log level 'DEBUGG' is not one of DEBUG, INFO")
    _one_line(_gpuqueue("scheduler", "--redis", "redis://127.0.0.1:1/0", env={"GPUQUEUE_LOG_FORMAT": "jsn"}), 2,
              "log format 'jsn' is not one of: json, human, auto")


def test_a_port_in_use_is_one_line_naming_the_fix(tmp_path: Path, redis_factory: Any) -> None:
    r = redis_factory()
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = str(held.getsockname()[1])
    try:
        users = tmp_path / "users.toml"
        users.write_text('[[user]]\nname = "ana"\ntoken = "ana-token-0123456789"\n')
        _one_line(_gpuqueue("api", "--redis", r.url, "--users", str(users), "--port", port), 1,
                  f"cannot listen on 127.0.0.1:{port} (Address already in use)", "--port")
        _one_line(_gpuqueue("scheduler", "--redis", r.url, "--metrics-port", port), 1,
                  f"cannot serve /metrics on port {port} (Address already in use)", "--metrics-port")
        _one_line(_gpuqueue("worker", "--redis", r.url, "--node", "n1", "--gpus", "1", "--identities", "none",
                            "--state-dir", str(tmp_path / "node"), "--metrics-port", port), 1,
                  f"cannot serve /metrics on port {port} (Address already in use)", "--metrics-port")
    finally:
        held.close()


def test_a_worker_the_config_does_not_place_or_without_gpus_is_named_in_the_logs(cluster_factory: Any,
                                                                                 monkeypatch: Any) -> None:
    """Each still runs (as docs/deploy.md says: the first pool, 0 GPUs), but the daemon's log names a
    node that pools.toml does not list, a --pool that no pool has and a node offering other GPUs
    than the config lists, and a worker that found no GPU says how to declare them."""
    from gpuqueue.attempt.gpus import nvml_gpu_count

    monkeypatch.delenv("GPUQUEUE_GPUS", raising=False)  # cpu-1 declares none
    c = cluster_factory(nodes={"n1": 1}, start=False)
    c.start_daemon()
    for node, more in (("gpu-01", ["--gpus", "2"]), ("n7", ["--gpus", "1", "--pool", "prod"]), ("cpu-1", []),
                       ("n1", ["--gpus", "4"])):
        c._spawn(f"worker-{node}", ["worker", "--node", node, *more, "--heartbeat", "0.2", "--identities", "none",
                                    "--state-dir", str(c.root / f"node-{node}")], role="worker")
    wait_until(lambda: all(f"node {n} up" in c.log("daemon") for n in ("gpu-01", "n7", "cpu-1", "n1")), 60, 0.2,
               "the four nodes up")
    log = c.log("daemon")
    assert "node gpu-01 is in no pool's nodes in the config: it joins pool gpu (the first) with its 2 GPUs" in log, log
    assert "node n7: its worker's --pool prod is no pool of the config (gpu): it joins pool gpu" in log, log
    assert "node n1 offers 4 GPUs, the config lists 1: the queue uses the 4 it offers" in log, log
    if not nvml_gpu_count():
        assert "this node offers 0 GPUs" in c.log("worker-cpu-1") and "--gpus N" in c.log("worker-cpu-1")


def test_a_wrong_redis_password_is_named_where_the_admin_looks(tmp_path: Path, redis_factory: Any) -> None:
    """The scheduler retries (Redis may be restarting) and the API serves 503s, but both logs say
    which URL (password masked) Redis refused and where the URL comes from."""
    r = redis_factory(password="the-right-one")
    wrong = f"redis://:a-wrong-one@127.0.0.1:{r.port}/0"
    users = tmp_path / "users.toml"
    users.write_text('[[user]]\nname = "ana"\ntoken = "ana-token-0123456789"\n')
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GPUQUEUE_", "JUPYTERHUB_"))}
    procs = {}
    for role, args in (("scheduler", []), ("api", ["--users", str(users), "--port", str(free_port())])):
        log = tmp_path / f"{role}.log"
        procs[role] = (subprocess.Popen([sys.executable, "-m", "gpuqueue.cli", role, *args], env=dict(base, GPUQUEUE_REDIS_URL=wrong),
                                        stdout=log.open("wb"), stderr=subprocess.STDOUT), log)
    try:
        for role, (p, log) in procs.items():
            wait_until(lambda: "GPUQUEUE_REDIS_URL" in log.read_text(), 30, 0.1, f"the {role}'s word on Redis")
            text = log.read_text()
            assert f"redis at redis://:***@127.0.0.1:{r.port}/0" in text and "a-wrong-one" not in text, text
            assert "--redis-file" in text and "invalid username-password pair" in text, text
    finally:
        for p, _ in procs.values():
            p.kill()
            p.wait(10)


def test_a_gpuqueue_url_without_its_scheme_is_named() -> None:
    _one_line(_gpuqueue("ls", env={"GPUQUEUE_URL": "gpuqueue-api:8780", "GPUQUEUE_TOKEN": "t" * 12}), 1,
              "GPUQUEUE_URL='gpuqueue-api:8780' is not an http(s) URL", "http://gpuqueue-api:8780/")


def test_gpuqueue_queue_says_when_no_scheduler_has_published_the_queue(cluster_factory: Any) -> None:
    """The API started before any `gpuqueue scheduler`: `gpuqueue queue` printed nothing at all;
    it now says what its JSON says."""
    c = cluster_factory(start=False)
    c.start_api()
    p = c.cli("alice", "queue")
    assert p.returncode == 0 and "is `gpuqueue scheduler` running?" in p.stderr, (p.stdout, p.stderr)


def test_a_scheduler_given_another_roles_redis_user_says_so(redis_factory: Any) -> None:
    """With the API's (or a worker's) user of deploy/redis/users.acl the scheduler led, placed jobs
    and then retried sending them for ever; it now refuses at once, naming the user to use."""
    from .conftest import shipped_acl

    r = redis_factory(password="admin-pw", conf=shipped_acl(PASSWORDS))
    for role in ("api", "worker"):
        url = f"redis://gpuqueue-{role}:{PASSWORDS[role]}@127.0.0.1:{r.port}/0"
        _one_line(_gpuqueue("scheduler", env={"GPUQUEUE_REDIS_URL": url}, timeout=30), 2,
                  f"Redis refuses the user of redis://gpuqueue-{role}:***@", "gpuqueue-scheduler in deploy/redis/users.acl")
    url = f"redis://gpuqueue-api:{PASSWORDS['api']}@127.0.0.1:{r.port}/0"
    _one_line(_gpuqueue("worker", "--node", "n1", "--gpus", "1", "--identities", "none", "--state-dir", str(r.root / "n1"),
                        env={"GPUQUEUE_REDIS_URL": url}, timeout=30), 2,
              "Redis refuses the user of redis://gpuqueue-api:***@", "gpuqueue-worker in deploy/redis/users.acl")


def test_a_users_file_others_may_read_is_named(tmp_path: Path, redis_factory: Any) -> None:
    """... and, by default, the API says where it listens (it used to log nothing at all)."""
    r = redis_factory()
    users = tmp_path / "users.toml"
    users.write_text('[[user]]\nname = "ana"\ntoken = "ana-token-0123456789"\n')
    users.chmod(0o644)
    log = tmp_path / "api.log"
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "gpuqueue.cli", "api", "--redis", r.url, "--users", str(users),
                          "--port", str(port)], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "gpuqueue api on" in log.read_text(), 30, 0.1, "the API's word on where it listens")
        text = log.read_text()
        assert f"users file {users} is mode 644: other users of this host may read every user's token" in text, text
        assert f"gpuqueue api on 127.0.0.1:{port}/ (1 user in {users})" in text, text
    finally:
        p.kill()
        p.wait(10)


def test_numbers_out_of_range_are_refused_by_name() -> None:
    """A worker offered -1 GPUs, a heartbeat of 0 made a busy loop, a leader TTL of 0 read as
    'redis unavailable (invalid expire time)' for ever: argparse now names the option."""
    for args, words in ((["worker", "--gpus", "-1"], "argument --gpus: -1 is not at least 0"),
                        (["worker", "--heartbeat", "0"], "argument --heartbeat: 0 is not above 0"),
                        (["api", "--processes", "-1"], "argument --processes: -1 is not at least 1"),
                        (["api", "--port", "70000"], "argument --port: 70000 is not between 1 and 65535"),
                        (["scheduler", "--leader-ttl", "0"], "argument --leader-ttl: 0 is not above 0"),
                        (["scheduler", "--node-timeout", "1m"], "argument --node-timeout: '1m' is not a number"),
                        # 30 meant 30 seconds: finished jobs deleted half a minute after they ended
                        (["scheduler", "--keep-finished", "30"], "argument --keep-finished: 30 has no unit: write e.g. 30d")):
        _one_line(_gpuqueue(*args, "--redis", "redis://127.0.0.1:1/0"), 2, words)


def test_a_misspelt_gpuqueue_variable_is_named(tmp_path: Path) -> None:
    """GPUQUEUE_CONIFG: the scheduler ran without its pools and said nothing."""
    log = tmp_path / "scheduler.log"
    p = subprocess.Popen([sys.executable, "-m", "gpuqueue.cli", "scheduler", "--redis", "redis://127.0.0.1:1/0"],
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("GPUQUEUE_")},
                              "GPUQUEUE_CONIFG": "/etc/gpuqueue/pools.toml"},
                         stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "GPUQUEUE_CONIFG" in log.read_text(), 30, 0.1, "the word on GPUQUEUE_CONIFG")
        assert "GPUQUEUE_CONIFG is no gpuqueue setting and is ignored: did you mean GPUQUEUE_CONFIG?" in log.read_text()
    finally:
        p.kill()
        p.wait(10)


def test_the_known_variables_are_every_one_the_sources_name() -> None:
    import re

    from gpuqueue.cluster.envcheck import KNOWN

    named = set()  # the scripts' too: `GPUQUEUE_TEST_WORKERS=0 bash scripts/test.sh` (the README's) made
    # the in-process scheduler of a test warn of it, and that test fail
    for src in [*(REPO / "backend" / "gpuqueue").rglob("*.py"), *(REPO / "jupyter_gpuqueue").rglob("*.py"),
                *(REPO / "scripts").glob("*.sh")]:
        if src.name != "envcheck.py":  # its docstring names misspellings
            named |= set(re.findall(r"GPUQUEUE_[A-Z0-9_]*[A-Z0-9]", src.read_text()))
    assert named - KNOWN == set()


def test_jobs_queued_before_the_first_scheduler_in_no_pool_of_its_config_fail_saying_why(cluster_factory: Any) -> None:
    """The API took jobs before any scheduler had published the config (it cannot check pools
    then); the scheduler that came up with a config without their pool left them queued for
    ever ("waiting for the next scheduling pass"). They fail now, naming the pools there are.
    One that names no pool runs in the config's first pool (it was sent to a pool 'default',
    which a config rarely has, and failed)."""
    c = cluster_factory(start=False)
    c.start_api()
    lost = c.submit("alice", ticks=1, pool="nosuch")
    fine = c.submit("alice", ticks=1, pool="gpu")
    anywhere = c.submit("alice", ticks=1)
    c.start_daemon()
    for n in c.nodes:
        c.start_worker(n)
    jobs = c.wait_done([lost, fine, anywhere], timeout=60)
    assert jobs[fine]["state"] == "succeeded", jobs[fine]
    assert jobs[anywhere]["state"] == "succeeded" and jobs[anywhere]["spec"]["pool"] == "gpu", jobs[anywhere]
    assert jobs[lost]["state"] == "failed", jobs[lost]
    assert jobs[lost]["error"] == (
        "cannot be queued with the queue's config: unknown pool 'nosuch': the pools are gpu; submit it again"), jobs[lost]["error"]


def test_a_queued_job_the_shrunk_pool_can_never_run_fails_at_the_rebuild(cluster_factory: Any) -> None:
    """The admin took node n2 out of the pool and restarted the scheduler: the queued job that
    only n2 could hold waited for ever; it fails, naming the numbers and the fix, and a job
    that fits runs."""
    c = cluster_factory(nodes={"n1": 1, "n2": 2}, start=False)
    c.start_daemon()
    c.start_worker("n1")
    c.start_api()
    c.wait_nodes({"n1"})
    big = c.submit("alice", ticks=1, gpus=2)  # n2 (listed, not up yet) will hold it
    assert c.client("alice").get(big)["state"] == "queued"
    c.kill("daemon")
    c.config.write_text(c.config.read_text().replace('"n1" = 1, "n2" = 2', '"n1" = 1'))
    assert '"n2"' not in c.config.read_text()
    c.start_daemon()
    job = c.wait_done([big], 60)[big]
    assert job["state"] == "failed", job
    assert job["error"] == ("cannot be queued with the queue's config: 2 GPUs do not fit on one node of pool 'gpu' "
                            "(its largest node has 1); ask for at most 1; submit it again"), job["error"]
    small = c.submit("alice", ticks=1)
    assert c.wait_done([small], 60)[small]["state"] == "succeeded"
