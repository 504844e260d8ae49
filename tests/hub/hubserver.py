"""A real JupyterHub for tests: ``jupyterhub`` with configurable-http-proxy, DummyAuthenticator
and SimpleLocalProcessSpawner, loading the documented gpuqueue snippet
(deploy/jupyterhub/jupyterhub_config.py) that makes ``gpuqueue api`` a hub service."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import psutil
import requests

from helpers.servers import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
SNIPPET = REPO / "deploy" / "jupyterhub" / "jupyterhub_config.py"
PASSWORD = "hub-test-password"

# the documented snippet, as is, with the venv's gpuqueue (a deployment has "gpuqueue" on its PATH)
MANAGED = f"""load_subconfig({str(SNIPPET)!r})  # noqa: F821
c.JupyterHub.services[0]["command"] = [sys.executable, "-m", "gpuqueue.cli", "api", "--log-level", "INFO"]
"""

CONFIG = '''
import sys
c = get_config()  # noqa: F821
{gpuqueue}
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_port}"
c.ConfigurableHTTPProxy.pid_file = {root!r} + "/proxy.pid"
c.JupyterHub.db_url = "sqlite:///{root}/hub.sqlite"
c.JupyterHub.cookie_secret_file = {root!r} + "/cookie_secret"
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {password!r}
c.Authenticator.allowed_users = {{"alice", "bob", "carol"}}
c.JupyterHub.load_groups = {{"gpuqueue-admins": {{"users": ["carol"]}}}}  # carol: queue admin by role
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {root!r} + "/home/{{username}}"
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.args = ["--allow-root"]  # CI runs the tests as root
c.Spawner.environment.update({{"JUPYTER_RUNTIME_DIR": lambda sp: {root!r} + "/home/" + sp.user.name + "/runtime"}})
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
'''


class UserServer:
    """A hub user's single-user server, reached through the hub's proxy with a user token
    (the shape ``helpers.servers.Kernel`` drives)."""

    def __init__(self, hub: "Hub", user: str, token: str):
        self.hub, self.user, self.token = hub, user, token
        self.url = f"{hub.url}user/{user}/"
        self.runtime_dir = hub.root / "home" / user / "runtime"
        self.kernels: list[Any] = []

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        return requests.request(method, self.url + path, headers={"Authorization": f"token {self.token}"},
                                timeout=30, **kw)

    def start_kernel(self) -> Any:
        from helpers.servers import Kernel

        r = self.api("POST", "api/kernels", json={"name": "python3"})
        r.raise_for_status()
        k = Kernel(self, r.json()["id"])  # type: ignore[arg-type]
        self.kernels.append(k)
        return k


class Hub:
    """One ``jupyterhub`` process (it starts the proxy, the gpuqueue service and user servers)."""

    def __init__(self, root: Path, redis_url: str, gpuqueue_config: str = MANAGED):
        """``gpuqueue_config``: the hub config lines of the gpuqueue service (default: the
        documented snippet, a managed service)."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "home").mkdir(exist_ok=True)
        self.port, self.api_port, self.hub_port = free_port(), free_port(), free_port()
        self.config = root / "jupyterhub_config.py"
        self.config.write_text(CONFIG.format(gpuqueue=gpuqueue_config, port=self.port, hub_port=self.hub_port,
                                             proxy_port=free_port(), root=str(root), password=PASSWORD))
        self.env = dict(os.environ, GPUQUEUE_REDIS_URL=redis_url, GPUQUEUE_API=f"http://127.0.0.1:{self.api_port}",
                        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1")
        for k in ("GPUQUEUE_URL", "GPUQUEUE_TOKEN", "JUPYTERHUB_API_TOKEN", "JPY_PARENT_PID"):
            self.env.pop(k, None)
        self.log_path = root / "hub.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def service_url(self) -> str:
        """The gpuqueue service through the hub's proxy."""
        return f"{self.url}services/gpuqueue/"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self, healthy: bool = True) -> "Hub":
        """Start the hub; wait until the service answers ``/healthz`` with 200 (``healthy=False``:
        with anything, e.g. a 503 where the service cannot use its Redis URL)."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(self.config)], cwd=self.root,
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"jupyterhub exited: {self.log()[-4000:]}")
            try:
                r = requests.get(self.service_url + "healthz", timeout=2)
                # the service's own 503 is JSON; the proxy's, while the service is not up, is not
                return r.status_code == 200 or (not healthy and r.status_code == 503
                                                and "json" in r.headers.get("Content-Type", ""))
            except requests.RequestException:
                return False

        wait_until(up, 120, 0.2, "the hub, its proxy and the gpuqueue service")
        return self

    def login(self, user: str) -> requests.Session:
        """A browser session of ``user``, logged in through the hub's login form."""
        s = requests.Session()
        s.trust_env = False
        s.get(self.url + "hub/login", timeout=30).raise_for_status()
        r = s.post(self.url + "hub/login", data={"username": user, "password": PASSWORD, "_xsrf": _xsrf(s)},
                   allow_redirects=False, timeout=30)
        assert r.status_code == 302, (r.status_code, r.text[:500])
        return s

    def start_server(self, s: requests.Session, user: str) -> UserServer:
        """Start ``user``'s server from their session (as the hub's Start button), and make
        them a token (as the hub's token page)."""
        h = {"X-XSRFToken": _xsrf(s)}
        r = s.post(f"{self.url}hub/api/users/{user}/server", headers=h, timeout=60)
        assert r.status_code in (201, 202), (r.status_code, r.text)

        def ready() -> bool:
            m = s.get(f"{self.url}hub/api/users/{user}", headers=h, timeout=30).json()
            return bool(m.get("servers", {}).get("", {}).get("ready"))

        wait_until(ready, 150, 0.5, f"{user}'s server")
        r = s.post(f"{self.url}hub/api/users/{user}/tokens", json={"note": "test", "expires_in": 3600},
                   headers=h, timeout=30)
        assert r.status_code == 201, (r.status_code, r.text)
        return UserServer(self, user, r.json()["token"])

    def stop(self) -> None:
        if self.proc is None:
            return
        procs = []
        try:
            procs = [psutil.Process(self.proc.pid)] + psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for p in procs:  # user servers, kernels, the proxy and the service
            try:
                p.kill()
            except psutil.Error:
                pass


def _xsrf(s: requests.Session) -> str:
    for c in s.cookies:
        if c.name == "_xsrf":
            return c.value or ""
    return ""


def service_request(hub: Hub, token: str, method: str, path: str, **kw: Any) -> requests.Response:
    """A request to the gpuqueue API service behind ``hub`` (``path`` under ``gpuqueue/api/``)."""
    return requests.request(method, f"{hub.service_url}gpuqueue/api/{path}",
                            headers={"Authorization": f"token {token}"}, timeout=30, **kw)


def hub_request(hub: Hub, token: str, method: str, path: str, **kw: Any) -> requests.Response:
    """A request to the hub's own REST API (``path`` under ``hub/api/``)."""
    return requests.request(method, f"{hub.url}hub/api/{path}", headers={"Authorization": f"token {token}"},
                            timeout=30, **kw)
