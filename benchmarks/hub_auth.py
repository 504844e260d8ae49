"""What JupyterHub authentication costs a request to ``gpuqueue api`` as a hub service.

Starts redis-server and a real JupyterHub (configurable-http-proxy, the documented managed
service from deploy/jupyterhub/jupyterhub_config.py), logs a user in and makes them a token,
then times, N times each, straight to the service's port (no proxy):

* ``GET /hub/api/user`` on the hub with that token: what a cache miss of the service costs;
* ``GET .../gpuqueue/api/jobs`` with the same token after the first: the service's cached path;
* ``POST .../gpuqueue/api/jobs`` (a command job; no scheduler runs, it stays queued).

    python benchmarks/hub_auth.py [--runs 200]

Prints JSON (milliseconds). The goal: a submit costs no hub round trip once the token is known.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers.servers import RedisServer  # noqa: E402
from hub.hubserver import Hub, _xsrf  # noqa: E402


def _times(fn, runs: int) -> dict[str, float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    out.sort()
    return {"median_ms": round(statistics.median(out), 2), "p95_ms": round(out[int(len(out) * 0.95) - 1], 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        r = RedisServer(root / "redis").start()
        hub = Hub(root / "hub", r.url)
        try:
            hub.start()
            s = hub.login("alice")
            token = s.post(f"{hub.url}hub/api/users/alice/tokens", json={}, headers={"X-XSRFToken": _xsrf(s)},
                           timeout=30).json()["token"]
            h = {"Authorization": f"token {token}"}
            api = f"http://127.0.0.1:{hub.api_port}/services/gpuqueue/gpuqueue/api/jobs"
            http = requests.Session()
            http.trust_env = False
            assert http.get(api, headers=h, timeout=30).status_code == 200
            hub_user = f"http://127.0.0.1:{hub.hub_port}/hub/api/user"
            body = json.dumps({"spec": {"kind": "command", "gpus": 0, "command": ["true"]}, "new": True})
            before = hub.log().count("GET /hub/api/user (alice@")
            listed = _times(lambda: http.get(api, headers=h, timeout=30).raise_for_status(), args.runs)
            submitted = _times(lambda: http.post(api, data=body, headers=h, timeout=30).raise_for_status(), args.runs)
            lookups = hub.log().count("GET /hub/api/user (alice@") - before
            print(json.dumps({
                "runs": args.runs,
                "list, cached token": listed,
                "submit, cached token": submitted,
                "hub lookups during those": lookups,
                "hub lookup (what a cache miss adds)": _times(
                    lambda: http.get(hub_user, headers=h, timeout=30).raise_for_status(), args.runs),
            }, indent=1))
        finally:
            hub.stop()
            r.kill()


if __name__ == "__main__":
    main()
