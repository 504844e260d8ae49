"""``GET <base_url>gpuqueue/metrics``: Prometheus metrics of the embedded queue.

Authentication: by default a scrape needs the server's credentials like every other route
(Prometheus sends ``Authorization: token <token>``; see ``deploy/prometheus/prometheus.yml``).
To let anyone who can reach the port scrape without a token, set either

* ``c.ServerApp.tornado_settings = {"gpuqueue_metrics_public": True}`` in jupyter_server_config,
* or ``GPUQUEUE_METRICS_PUBLIC=1`` in the server's environment.

The metrics hold user names, job ids and training metric values: only open them on a network
you trust. A scrape does not count as user activity (it never keeps an idle server alive).

In cluster mode (``c.GPUQueueApp.api_url`` set) the server runs no queue: the endpoint then
reports only this server's API latency and ``gpuqueue_build_info{mode="forwarding"}``; the queue,
GPU and job metrics come from the cluster's own processes.

The first request attaches the metrics to the queue service (once per server; ``setup_metrics``
may also be called earlier, e.g. when the extension starts) and installs the request timer
behind ``gpuqueue_api_request_duration_seconds``: the tornado ``log_function`` setting is wrapped
so that every gpuqueue handler's finished request is observed, then passed on to Jupyter's
own request log unchanged.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable, TypeVar

from jupyter_server.base.handlers import JupyterHandler
from tornado import web

from gpuqueue.observability.metrics import QueueMetrics, attach, render, tornado_log_function

from .queue_off import QueueOff

try:  # jupyter_server >= 2.13 checks auth in prepare() unless a method opts out
    from jupyter_server.auth.decorator import allow_unauthenticated
except ImportError:  # pragma: no cover - older jupyter_server: nothing to opt out of

    FuncT = TypeVar("FuncT", bound=Callable[..., Any])  # as jupyter_server's own decorator

    def allow_unauthenticated(method: FuncT) -> FuncT:
        return method


PUBLIC_SETTING = "gpuqueue_metrics_public"
PUBLIC_ENV = "GPUQUEUE_METRICS_PUBLIC"
METRICS_SETTING = "gpuqueue_metrics"


def metrics_public(settings: dict[str, Any]) -> bool:
    """True when scrapes need no credentials (see the module docstring)."""
    if settings.get(PUBLIC_SETTING):
        return True
    return os.environ.get(PUBLIC_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _is_gpuqueue_handler(handler: Any) -> bool:
    return type(handler).__module__.startswith("jupyter_gpuqueue.")


def setup_metrics(settings: dict[str, Any]) -> QueueMetrics:
    """Attach metrics to ``settings["gpuqueue_service"]`` and time gpuqueue's API requests.
    Idempotent: the second call returns what the first made. Pass the web app's settings."""
    m = settings.get(METRICS_SETTING)
    if m is not None:
        return m
    service = settings["gpuqueue_service"]
    # cluster mode: the extension forwards to the API service and runs no queue (no store); it
    # reports its own API latency only, and the cluster's processes report the queue
    forwarding = not hasattr(service, "store")
    m = attach(service, mode="forwarding" if forwarding else "embedded", leader=not forwarding,
               nvml=not forwarding)
    inner = settings.get("log_function")
    if getattr(inner, "_gpuqueue_metrics", None) is None:
        settings["log_function"] = tornado_log_function(m, inner, include=_is_gpuqueue_handler)
    settings[METRICS_SETTING] = m
    return m


class MetricsHandler(JupyterHandler):
    """The Prometheus scrape target of the embedded queue."""

    auth_resource = "gpuqueue"

    @allow_unauthenticated  # auth is checked below, so that it can be switched off
    async def get(self) -> None:
        if not metrics_public(self.settings):
            user = self.current_user
            if user is None:
                raise web.HTTPError(403, reason="scraping gpuqueue metrics needs the server's token "
                                    "(Authorization: token ...) or GPUQUEUE_METRICS_PUBLIC=1")
            ok = self.authorizer.is_authorized(self, user, "read", self.auth_resource)
            if inspect.isawaitable(ok):
                ok = await ok
            if not ok:
                raise web.HTTPError(403, reason="not allowed to read gpuqueue metrics")
        service = self.settings.get("gpuqueue_service")
        if isinstance(service, QueueOff):  # a scrape that fails: the queue-down alert fires
            raise web.HTTPError(503, reason=service.message)
        if service is None or (hasattr(service, "store") and service.store is None):
            raise web.HTTPError(503, reason="the gpuqueue queue has not started yet")
        m = setup_metrics(self.settings)
        body, content_type = render(m.registry, self.request.headers.get("Accept"))
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-store")
        self.finish(body)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        reason = getattr(exc, "reason", None) or self._reason
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code} {reason}\n")
