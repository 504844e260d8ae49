"""The gpuqueue service's ``/metrics`` through the hub's proxy (``/services/gpuqueue/metrics``):
no login, request counts only (no user name, job id or path a user chose), one total for the
service's two processes. A real JupyterHub starts the documented service with ``--processes 2``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import requests

from helpers.servers import wait_until
from hub.hubserver import MANAGED, Hub, _xsrf
from observability.obstools import Scrape

# the labels a scrape of the API may carry, each with the values it may take
ALLOWED_LABELS = {"handler", "method", "code", "le", "version", "mode", "policy", "component", "node", "pid",
                  "reason", "implementation", "major", "minor", "patchlevel", "generation"}


def test_hub_service_metrics_need_no_login_and_name_no_user(tmp_path: Path, redis_factory: Any) -> None:
    r = redis_factory()
    more = ["--processes", "2", "--metrics-dir", str(tmp_path / "metrics")]
    hub = Hub(tmp_path / "hub", r.url, gpuqueue_config=MANAGED + f'c.JupyterHub.services[0]["command"] += {more!r}\n')
    try:
        hub.start()
        s = hub.login("alice")
        t = s.post(f"{hub.url}hub/api/users/alice/tokens", json={"note": "test"},
                   headers={"X-XSRFToken": _xsrf(s)}, timeout=30)
        assert t.status_code == 201, t.text
        auth = {"Authorization": f"token {t.json()['token']}", "Connection": "close"}
        marker = os.urandom(6).hex()
        n = 12
        for i in range(n):  # paths, job ids and a method of the user's choosing
            assert requests.get(f"{hub.service_url}gpuqueue/api/jobs", headers=auth, timeout=30).status_code == 200
            requests.get(f"{hub.service_url}gpuqueue/api/jobs/j-{marker}{i:02d}", headers=auth, timeout=30)
            requests.get(f"{hub.service_url}{marker}/{i}", headers=auth, timeout=30)
            requests.request(f"X{marker.upper()}", f"{hub.service_url}gpuqueue/api/jobs", headers=auth, timeout=30)

        def get() -> requests.Response:
            return requests.get(f"{hub.service_url}metrics", allow_redirects=False, timeout=30)  # no credentials

        def listings(text: str) -> float:
            return Scrape(text).sum("gpuqueue_api_request_duration_seconds_count", handler="JobsHandler",
                                    method="GET", code="200")

        # a process counts a request just after its answer: the first scrape may miss the last one
        wait_until(lambda: get().status_code == 200 and listings(get().text) == n, 10, 0.05, f"{n} listings")
        for _ in range(4):
            m = get()
            assert m.status_code == 200, (m.status_code, m.headers.get("Location"))
            scrape = Scrape(m.text)
            assert listings(m.text) == n, m.text
            labels = {(k, v) for (_, ls) in scrape.samples for k, v in ls}
            assert {k for k, _ in labels} <= ALLOWED_LABELS, labels
            assert marker not in m.text and marker.upper() not in m.text and "alice" not in m.text
            assert {v for k, v in labels if k == "method"} <= {"GET", "other"}, labels
            assert all(re.fullmatch(r"[A-Za-z]+Handler", v) for k, v in labels if k == "handler"), labels
            assert len(scrape.series("gpuqueue_process_info")) == 2, m.text  # both processes, one answer
    finally:
        hub.stop()
