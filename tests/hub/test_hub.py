"""JupyterHub as the front door: a real hub (configurable-http-proxy, DummyAuthenticator,
SimpleLocalProcessSpawner) runs ``gpuqueue api`` as a hub service, from the snippet that
docs/deploy.md shows, in front of a real cluster (redis-server, scheduler, a worker). Each user
logs in through the hub and runs a ``%%train`` cell in a kernel of their own server."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import psutil
import pytest
import requests

from cluster.conftest import Cluster
from gpuqueue.cluster.redis_store import RedisStore
from gpuqueue.queue.errors import GPUQueueError
from gpuqueue.rest.client import Client, ServerInfo
from helpers.servers import free_port, wait_until

from .hubserver import SNIPPET, Hub, UserServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("configurable-http-proxy") is None,
                       reason="needs configurable-http-proxy (npm install -g configurable-http-proxy)"),
]
REPO = Path(__file__).resolve().parents[2]
CELL = ("%%train --gpus 1\nimport os\nanswer = base * 2\n"
        "print('ran on', os.environ['GPUQUEUE_NODE'], 'hub token in job:', 'JUPYTERHUB_API_TOKEN' in os.environ)")


@contextlib.contextmanager
def _hub_and_cluster(tmp_path: Path, redis_factory: Any, config_extra: str = "",
                     hub_extra: str = "") -> Iterator[tuple[Hub, Cluster]]:
    """A cluster (daemon, worker n1 with 2 GPUs; ``config_extra``: more queue config) behind a
    hub (``hub_extra``: more hub config lines)."""
    r = redis_factory(appendonly=True)
    c = Cluster(tmp_path / "cluster", r, {"n1": 2}, config_extra=config_extra)
    c.users.unlink()  # the Cluster helper writes one for its own API; with a hub there is none
    hub = Hub(tmp_path / "hub", r.url)
    hub.config.write_text(hub.config.read_text() + hub_extra)
    try:
        c.start_daemon()
        c.start_worker("n1")
        hub.start()
        yield hub, c
    finally:
        hub.stop()
        c.close()


@pytest.fixture
def hub_cluster(tmp_path: Path, redis_factory: Any) -> Iterator[tuple[Hub, Cluster]]:
    with _hub_and_cluster(tmp_path, redis_factory) as hc:
        yield hc


def _service(hub: Hub, token: str) -> Client:
    return Client(ServerInfo(hub.service_url, token), timeout=30)


def _cli(hub: Hub, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``gpuqueue`` as in a hub terminal: the server's environment, no GPUQUEUE_TOKEN."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GPUQUEUE_", "JUPYTERHUB_"))}
    return subprocess.run([sys.executable, "-m", "gpuqueue.cli", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=60)


def test_hub_users_queue_with_their_hub_identity(hub_cluster: tuple[Hub, Cluster]) -> None:
    hub, c = hub_cluster
    servers: dict[str, UserServer] = {}
    for user in ("alice", "bob", "carol"):
        session = hub.login(user)
        servers[user] = hub.start_server(session, user)
        if user == "alice":
            alice_session = session
    wait_until(lambda: "n1" in _service(hub, servers["carol"].token).queue()["nodes"], 60, 0.2, "node n1 up")

    # a %%train cell in each user's own kernel: the extension forwards with the server's own token
    jobs: dict[str, str] = {}
    hub_tokens: dict[str, str] = {}
    for user in ("alice", "bob"):
        k = servers[user].start_kernel()
        assert k.run("%load_ext jupyter_gpuqueue").error is None
        env = k.run("import os; print(os.environ['GPUQUEUE_URL'], os.environ.get('GPUQUEUE_API_URL'), "
                    "os.environ['JUPYTERHUB_API_TOKEN'])")
        local_url, api_url, hub_tokens[user] = env.stdout.split()
        assert local_url.endswith(f"/user/{user}/") and api_url.endswith("/services/gpuqueue/")
        k.run("base = 21" if user == "alice" else "base = 50")
        res = k.run(CELL, timeout=180)
        assert res.error is None, (res.text, hub.log()[-3000:])
        assert "ran on n1 hub token in job: False" in res.text, res.text
        assert k.run("print(answer)").stdout.strip() == ("42" if user == "alice" else "100")
        [job] = _service(hub, servers[user].token).list()
        assert job["owner"] == user and job["state"] == "succeeded"
        jobs[user] = job["id"]

    # each sees only their own jobs: REST on the service, the sidebar's GET /queue, the CLI
    for user, other in (("alice", "bob"), ("bob", "alice")):
        svc = _service(hub, servers[user].token)
        assert [j["id"] for j in svc.list(all_users=True)] == [jobs[user]]
        r = requests.get(f"{hub.service_url}gpuqueue/api/jobs/{jobs[other]}",
                         headers={"Authorization": f"token {servers[user].token}"}, timeout=30)
        assert r.status_code == 404, r.text
        # the sidebar's requests, through the user's own server
        q = servers[user].api("GET", "gpuqueue/api/queue").json()
        assert q["me"]["user"] == user and q["me"]["admin"] is False and "users" not in q
        listed = servers[user].api("GET", "gpuqueue/api/jobs?all=1").json()["jobs"]
        assert [j["id"] for j in listed] == [jobs[user]]
        # a hub terminal: the server's environment (GPUQUEUE_URL, JUPYTERHUB_API_TOKEN), no token file
        ls = _cli(hub, {"GPUQUEUE_URL": servers[user].url, "JUPYTERHUB_API_TOKEN": hub_tokens[user]}, "ls", "--all")
        assert ls.returncode == 0, ls.stderr
        assert jobs[user] in ls.stdout and jobs[other] not in ls.stdout
        # the same token, straight to the service
        ls = _cli(hub, {"GPUQUEUE_URL": hub.service_url, "JUPYTERHUB_API_TOKEN": hub_tokens[user]}, "ls", "--all")
        assert ls.returncode == 0 and jobs[user] in ls.stdout and jobs[other] not in ls.stdout, ls

    # the admin (the gpuqueue-admin role, through a hub group) sees all and preempts alice's job
    carol = _service(hub, servers["carol"].token)
    assert carol.queue()["me"]["admin"] is True
    # the hub's answer for a token is reused (--hub-cache-s): more requests, no more hub lookups
    lookups = hub.log().count("GET /hub/api/user (carol@")
    assert lookups >= 1
    for _ in range(5):
        carol.list()
    assert hub.log().count("GET /hub/api/user (carol@") == lookups
    assert {j["id"] for j in carol.list(all_users=True)} >= set(jobs.values())
    long = _service(hub, servers["alice"].token).submit(
        {"kind": "command", "gpus": 1, "command": [sys.executable, str(c.script), str(c.marks), "400"]})
    wait_until(lambda: carol.get(long["id"])["state"] == "running", 60, 0.2, "alice's long job to run")
    r = requests.post(f"{hub.service_url}gpuqueue/api/jobs/{long['id']}/preempt",
                      headers={"Authorization": f"token {servers['bob'].token}"}, timeout=30)
    assert r.status_code in (403, 404), r.text  # bob: not his job, not an admin
    assert carol.preempt(long["id"])["id"] == long["id"]
    wait_until(lambda: carol.get(long["id"])["state"] != "running", 60, 0.2, "the preempted job to stop")
    assert carol.get(long["id"])["owner"] == "alice"

    # refused: no token, a forged one, a token without access to the service; a cookie never writes
    r = requests.get(f"{hub.service_url}gpuqueue/api/jobs", timeout=30)
    assert r.status_code == 401 and "JupyterHub token" in r.json()["message"]
    r = requests.get(f"{hub.service_url}gpuqueue/api/jobs", headers={"Authorization": "token forged-0123456789abcdef"},
                     timeout=30)
    assert r.status_code == 401 and "JupyterHub token" in r.json()["message"]
    narrow = alice_session.post(f"{hub.url}hub/api/users/alice/tokens", json={"scopes": ["read:users:name!user=alice"]},
                                headers={"X-XSRFToken": _cookie(alice_session, "_xsrf")}, timeout=30)
    assert narrow.status_code == 201, narrow.text
    r = requests.get(f"{hub.service_url}gpuqueue/api/jobs",
                     headers={"Authorization": f"token {narrow.json()['token']}"}, timeout=30)
    assert r.status_code == 403 and "access:services!service=gpuqueue" in r.json()["message"], r.text

    # a browser: the service's page logs in through the hub (OAuth) and shows alice's queue
    page = alice_session.get(hub.service_url, timeout=60)
    assert page.status_code == 200 and page.url.endswith("/services/gpuqueue/gpuqueue/api/queue"), page.url
    assert page.json()["me"]["user"] == "alice"
    r = alice_session.post(f"{hub.service_url}gpuqueue/api/jobs", json={"spec": {"kind": "command", "command": ["true"]}},
                           timeout=30)
    assert r.status_code == 401 and "cookie only reads" in r.json()["message"]

    # no users file anywhere: the hub is the only source of users
    assert not list(hub.root.parent.rglob("users*.toml"))
    assert "--users" not in open(hub.config).read() + SNIPPET.read_text()


GROUPS_TOKEN = os.urandom(16).hex()
# a service that manages hub groups through the hub's REST API, as an admin's script would
GROUPS_ADMIN = f"""
c.JupyterHub.services.append({{"name": "groups-admin", "api_token": {GROUPS_TOKEN!r}}})
c.JupyterHub.load_roles.append({{"name": "groups-admin", "scopes": ["admin:groups"], "services": ["groups-admin"]}})
"""


def test_a_hub_group_is_the_users_fair_share_group(tmp_path: Path, redis_factory: Any) -> None:
    """A [groups.NAME] without members takes the hub group of that name: a user put in it
    through the hub's REST API submits with a hub token and the group's quota holds for the
    user, also after the scheduler daemon restarts (it reads the group from the job records)."""
    first_line = '[groups.ml]        # the hub group "ml"'
    doc = first_line + "\n" + _doc_block("toml", first_line)  # docs/deploy.md, "Groups from the hub"
    assert "members" not in doc
    with _hub_and_cluster(tmp_path, redis_factory, doc, GROUPS_ADMIN) as (hub, c):
        r = requests.post(f"{hub.url}hub/api/groups/ml", json={"users": ["alice"]},
                          headers={"Authorization": f"token {GROUPS_TOKEN}"}, timeout=30)
        assert r.status_code == 201, r.text
        sessions = {name: hub.login(name) for name in ("alice", "bob")}

        def narrow_token(name: str) -> Client:
            """The narrowest token the service takes: no scope to read the user's groups."""
            s = sessions[name]
            t = s.post(f"{hub.url}hub/api/users/{name}/tokens", json={"scopes": ["access:services!service=gpuqueue"]},
                       headers={"X-XSRFToken": _cookie(s, "_xsrf")}, timeout=30)
            assert t.status_code == 201, t.text
            return _service(hub, t.json()["token"])

        alice, bob = narrow_token("alice"), narrow_token("bob")
        wait_until(lambda: "n1" in alice.queue()["nodes"], 60, 0.2, "node n1 up")

        # the group's cap refuses the job at submit (the API places alice in ml from the hub)
        with pytest.raises(GPUQueueError, match="2 GPUs is over group 'ml''s quota of 1 GPU; ask for at most 1"):
            alice.submit({"kind": "command", "gpus": 2, "command": ["true"]})
        bobs = bob.submit({"kind": "command", "gpus": 2, "command": ["true"]})  # bob is in no group
        assert bobs["group"] == ""
        wait_until(lambda: bob.get(bobs["id"])["state"] == "succeeded", 60, 0.2, "bob's 2-GPU job")

        long_cmd = [sys.executable, str(c.script), str(c.marks), "400"]
        first = alice.submit({"kind": "command", "gpus": 1, "command": long_cmd})
        wait_until(lambda: alice.get(first["id"])["state"] == "running", 60, 0.2, "alice's first job to run")
        second = alice.submit({"kind": "command", "gpus": 1, "command": long_cmd})

        def waits_for_the_group() -> bool:
            j = alice.get(second["id"])
            assert j["state"] == "queued", j  # a GPU is free: only the group's quota holds it
            return (j["pending"] or {}).get("reason") == "quota_group_gpus"

        wait_until(waits_for_the_group, 30, 0.2, "alice's second job held by group ml's quota")
        # the daemon restarts: the group comes back from the job records (the config names no member)
        c.kill("daemon")
        store = RedisStore(c.redis.url, "gq")
        store.r.hdel(store.k("pending"), second["id"])  # what the new daemon says, not the old one
        # ... and with no config published (a first start), the API takes a job without knowing
        # the groups: the scheduler still places alice in ml, from the hub groups the job kept
        store.r.delete(store.k("config"))
        time.sleep(2.5)  # the API's cached config runs out (CONFIG_REFRESH_S)
        early = alice.submit({"kind": "command", "gpus": 2, "command": ["true"]})
        assert early["group"] is None and early["hub_groups"] == ["ml"], early
        c.start_daemon()
        wait_until(waits_for_the_group, 60, 0.2, "the restarted daemon to hold alice's second job")
        wait_until(lambda: alice.get(early["id"])["state"] == "failed", 30, 0.2, "the early 2-GPU job refused")
        assert alice.get(early["id"])["error"] == "rejected: 2 GPUs is over group 'ml''s quota of 1 GPU; ask for at most 1"
        alice.cancel(first["id"])
        wait_until(lambda: alice.get(second["id"])["state"] == "running", 60, 0.2,
                   "the second job, once the first is gone")

        # alice leaves ml in the hub: a token whose answer the service has cached still says ml
        # (for --hub-cache-s), a new token says no group
        r = requests.delete(f"{hub.url}hub/api/groups/ml/users", json={"users": ["alice"]},
                            headers={"Authorization": f"token {GROUPS_TOKEN}"}, timeout=30)
        assert r.status_code == 200, r.text
        tiny = {"kind": "command", "gpus": 0, "command": ["true"]}
        assert alice.submit(tiny)["group"] == "ml"
        assert narrow_token("alice").submit(tiny)["group"] == ""


def test_api_refuses_hub_auth_outside_a_hub() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    p = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "api", "--auth", "hub", "--redis", "redis://127.0.0.1:1/0"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "JUPYTERHUB_API_TOKEN and JUPYTERHUB_API_URL not set" in p.stderr, p.stderr
    p = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "api", "--redis", "redis://127.0.0.1:1/0"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--users FILE is required" in p.stderr and "--auth hub" in p.stderr, p.stderr
    hub_env = dict(env, JUPYTERHUB_API_TOKEN="x" * 32, JUPYTERHUB_API_URL="http://127.0.0.1:1/hub/api",
                   JUPYTERHUB_SERVICE_NAME="gpuqueue")
    p = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "api", "--auth", "users", "--redis", "redis://127.0.0.1:1/0"],
                       env=hub_env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--users FILE is required" in p.stderr, p.stderr  # no hub auth when told so


def _cookie(s: requests.Session, name: str) -> str:
    return next((c.value or "" for c in s.cookies if c.name == name), "")


def _doc_block(lang: str, first_line: str) -> str:
    doc = (REPO / "docs" / "deploy.md").read_text()
    return doc.split(f"```{lang}\n{first_line}\n", 1)[1].split("```", 1)[0]


def _helm_hub_config(values: dict[str, Any], url: str, api_token: str) -> str:
    """The hub config lines zero-to-jupyterhub makes of ``hub.services``, ``hub.loadRoles`` and
    ``hub.config`` (the service's url and token filled in, as the chart's values would be)."""
    hub = values["hub"]
    services = [dict(v, name=k) for k, v in hub["services"].items()]
    services[0].update(url=url, api_token=api_token)
    roles = [dict(v, name=v.get("name", k)) for k, v in hub["loadRoles"].items()]
    lines = [f"c.JupyterHub.services = {services!r}", f"c.JupyterHub.load_roles = {roles!r}"]
    for cls, traits in hub["config"].items():
        lines += [f"c.{cls}.{k} = {v!r}" for k, v in traits.items()]
    return "\n".join(lines) + "\n"


def test_external_service_from_the_documented_command_behind_the_helm_values(tmp_path: Path, redis_factory: Any) -> None:
    """The API started by hand (docs/deploy.md's command, two processes) as an external
    service of a hub configured from the documented Helm values."""
    import yaml

    r = redis_factory(appendonly=True)
    token = os.urandom(16).hex()
    values = yaml.safe_load(_doc_block("yaml", "# values.yaml (zero-to-jupyterhub)"))
    hub = Hub(tmp_path / "hub", r.url, gpuqueue_config="")
    hub.config.write_text(hub.config.read_text() + _helm_hub_config(values, f"http://127.0.0.1:{hub.api_port}", token))
    # the documented command: KEY=VALUE lines, then `gpuqueue api ...`
    lines = [ln.rstrip(" \\") for ln in _doc_block("bash", "# an external gpuqueue api service").splitlines()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "GPUQUEUE_"))}
    fill = {"<the service's api_token>": token, "http://hub:8081": f"http://127.0.0.1:{hub.hub_port}",
            "<redis://gpuqueue-api:PASSWORD@redis-host:6379/0>": r.url}
    for ln in lines[:-1]:
        k, _, v = ln.partition("=")
        for a, b in fill.items():
            v = v.replace(a, b)
        env[k] = v
    argv = lines[-1].split()
    assert argv[:2] == ["gpuqueue", "api"]
    argv = [sys.executable, "-m", "gpuqueue.cli", *argv[1:]]
    argv[argv.index("--port") + 1] = str(hub.api_port)
    argv[argv.index("--address") + 1] = "127.0.0.1"
    argv += ["--metrics-dir", str(tmp_path / "api-metrics")]  # not the default in /tmp: SIGKILL below tidies nothing
    api = subprocess.Popen(argv, env=env, stdout=open(tmp_path / "api.log", "wb"), stderr=subprocess.STDOUT)
    try:
        hub.start()
        alice, carol = hub.login("alice"), hub.login("carol")
        tokens = {}
        for name, s in (("alice", alice), ("carol", carol)):
            t = s.post(f"{hub.url}hub/api/users/{name}/tokens", json={}, headers={"X-XSRFToken": _cookie(s, "_xsrf")},
                       timeout=30)
            assert t.status_code == 201, t.text
            tokens[name] = t.json()["token"]
        job = _service(hub, tokens["alice"]).submit({"kind": "command", "gpus": 0, "command": ["true"]})
        assert job["owner"] == "alice"
        admin = _service(hub, tokens["carol"])
        assert admin.queue()["me"] == {**admin.queue()["me"], "user": "carol", "admin": True}
        assert job["id"] in [j["id"] for j in admin.list(all_users=True)]
        assert [j["id"] for j in _service(hub, tokens["alice"]).list(all_users=True)] == [job["id"]]
        # a service's token (here the gpuqueue service's own) is no user's: refused
        r = requests.get(f"{hub.service_url}gpuqueue/api/jobs", headers={"Authorization": f"token {token}"}, timeout=30)
        assert r.status_code == 403 and "not a user's" in r.json()["message"], r.text
        page = alice.get(hub.service_url, timeout=60)  # a browser: the hub's OAuth, then the service's cookie
        assert page.status_code == 200 and page.json()["me"]["user"] == "alice", (page.status_code, page.text[:300])
        # either process takes that cookie (one secret for both): straight to the API's port, a new
        # connection each time (the proxy keeps one open to a single process), no trip to the hub
        path = urlparse(hub.service_url).path
        for _ in range(10):
            r = requests.get(f"http://127.0.0.1:{hub.api_port}{path}gpuqueue/api/queue", cookies=alice.cookies,
                             headers={"Connection": "close"}, allow_redirects=False, timeout=30)
            assert r.status_code == 200, (r.status_code, r.headers.get("Location"))
            assert r.json()["me"]["user"] == "alice"
    finally:
        hub.stop()
        api.kill()
        api.wait(10)
        for p in psutil.Process().children(recursive=True):  # the API's forked processes
            try:
                if p.pid != os.getpid() and "gpuqueue.cli" in " ".join(p.cmdline()):
                    p.kill()
            except psutil.NoSuchProcess:  # it ended meanwhile (a zombie has no command line to read)
                pass


def test_deploy_doc_shows_the_tested_hub_config() -> None:
    """docs/deploy.md shows the snippet this test loads, and its Helm values hold the same
    service, scope, roles and server token scopes."""
    import yaml

    doc = (REPO / "docs" / "deploy.md").read_text()
    assert SNIPPET.read_text().strip() in doc
    values = yaml.safe_load(_doc_block("yaml", "# values.yaml (zero-to-jupyterhub)"))
    ns: dict[str, Any] = {}

    class C(dict):  # a traitlets-like config: c.JupyterHub.services = ...
        def __getattr__(self, k: str) -> Any:
            return self.setdefault(k, C())

        def __setattr__(self, k: str, v: Any) -> None:
            self[k] = v

    ns["c"] = cfg = C()
    ns["os"] = os
    env = dict(os.environ, GPUQUEUE_REDIS_URL="redis://x",  # and a gpuqueue on the PATH, as in a deployment
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    old = os.environ.copy()
    os.environ.update(env)
    try:
        exec(compile(SNIPPET.read_text(), str(SNIPPET), "exec"), ns)
    finally:
        os.environ.clear()
        os.environ.update(old)
    hub = values["hub"]
    assert hub["services"]["gpuqueue"]["oauth_no_confirm"] is True
    assert hub["config"]["JupyterHub"]["custom_scopes"] == cfg.JupyterHub.custom_scopes
    assert hub["config"]["Spawner"]["server_token_scopes"] == cfg.Spawner.server_token_scopes
    roles = {r["name"]: r["scopes"] for r in hub["loadRoles"].values()}
    assert roles == {r["name"]: r["scopes"] for r in cfg.JupyterHub.load_roles}
    assert values["singleuser"]["extraEnv"]["GPUQUEUE_API_URL"].endswith("/services/gpuqueue/")


def test_a_refused_listing_tells_a_keep_alive_proxy_to_reconnect(tmp_path: Path) -> None:
    """Behind the hub's proxy (keep-alive to the service), a request refused before its body
    is read closes the connection: the answer says so, or the proxy's next request on it
    fails (503 ECONNRESET). Seen with a forged token after a tokenless request."""
    import http.client
    import threading

    from tornado import httpserver, netutil

    from gpuqueue.cluster.api import User, make_app
    from gpuqueue.cluster.redis_store import RedisStore

    socks = netutil.bind_sockets(0, "127.0.0.1")
    port = socks[0].getsockname()[1]
    started = threading.Event()

    def serve() -> None:
        import asyncio

        async def main() -> None:
            app = make_app(RedisStore("redis://127.0.0.1:1/0", "gq"), {"t" * 8: User("a", "t" * 8)})
            httpserver.HTTPServer(app).add_sockets(socks)
            started.set()
            await asyncio.Event().wait()

        asyncio.run(main())

    threading.Thread(target=serve, daemon=True).start()
    assert started.wait(10)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(3):
        conn.request("GET", "/gpuqueue/api/jobs", headers={"Authorization": "token forged-123456"})
        r = conn.getresponse()
        assert r.status == 401 and r.getheader("Connection") == "close"
        r.read()


def test_a_hub_service_with_the_wrong_redis_password_names_the_fix(tmp_path: Path, redis_factory: Any) -> None:
    """The hub's environment holds a Redis URL whose password Redis refuses: a user's request
    gets the 503 that names the fix (as with the users file), not a 500 "internal error"."""
    r = redis_factory(appendonly=True, password="the-right-password")
    hub = Hub(tmp_path / "hub", f"redis://:a-wrong-password@127.0.0.1:{r.port}/0")
    try:
        hub.start(healthy=False)
        s = hub.login("alice")
        t = s.post(f"{hub.url}hub/api/users/alice/tokens", json={"note": "test"},
                   headers={"X-XSRFToken": _cookie(s, "_xsrf")}, timeout=30)
        assert t.status_code == 201, t.text
        got = requests.get(f"{hub.service_url}gpuqueue/api/jobs",
                           headers={"Authorization": f"token {t.json()['token']}"}, timeout=30)
        assert got.status_code == 503, got.text
        message = got.json()["message"]
        assert "refused the API service's credentials" in message and "Redis password" in message, message
        assert "a-wrong-password" not in got.text
    finally:
        hub.stop()


def test_the_hub_config_without_a_redis_url_names_the_fix(tmp_path: Path) -> None:
    """The documented snippet in a hub whose environment lacks GPUQUEUE_REDIS_URL: the hub stops
    with one line naming the variable (no KeyError traceback from the config file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUQUEUE_", "JUPYTERHUB_"))}
    p = subprocess.run([sys.executable, "-m", "jupyterhub", "-f", str(SNIPPET)], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "set GPUQUEUE_REDIS_URL in the hub's environment" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_a_hub_service_listens_on_the_host_of_its_url(tmp_path: Path) -> None:
    """The hub's proxy reaches the service at its url: `gpuqueue api` started by a hub listens on
    that URL's host, not on 127.0.0.1 whatever the url said; a host not of this machine is named."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUQUEUE_", "JUPYTERHUB_"))}
    env.update(JUPYTERHUB_API_TOKEN="x" * 32, JUPYTERHUB_API_URL="http://127.0.0.1:1/hub/api",
               JUPYTERHUB_SERVICE_NAME="gpuqueue", JUPYTERHUB_SERVICE_PREFIX="/services/gpuqueue/",
               JUPYTERHUB_SERVICE_URL=f"http://127.0.0.2:{port}/services/gpuqueue/")
    p = subprocess.Popen([sys.executable, "-m", "gpuqueue.cli", "api", "--redis", "redis://127.0.0.1:1/0"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def answers() -> bool:
            assert p.poll() is None, "gpuqueue api exited"
            try:
                return requests.get(f"http://127.0.0.2:{port}/services/gpuqueue/healthz", timeout=2).status_code == 503
            except requests.RequestException:
                return False

        wait_until(answers, 30, 0.1, "the service on 127.0.0.2")
    finally:
        p.kill()
        p.wait(10)
    env["JUPYTERHUB_SERVICE_URL"] = f"http://192.0.2.1:{port}/services/gpuqueue/"  # TEST-NET: no host's address
    bad = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "api", "--redis", "redis://127.0.0.1:1/0"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "cannot listen on 192.0.2.1" in bad.stderr and "the host of the service's url" in bad.stderr, \
        bad.stderr
