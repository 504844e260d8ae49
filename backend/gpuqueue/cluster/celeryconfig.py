"""Celery settings for long GPU jobs on Redis (each choice is explained in docs/deploy.md).

The broker only carries "launch attempt N of job J on your GPUs" to one node's own queue; the
job store in Redis owns every job's state, so none of Celery-on-Redis's traps (redelivery after
the visibility timeout, emulated priorities, best-effort revoke) can run a job twice: a
redelivered or late message finds its attempt already claimed or superseded and is dropped.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from celery import Celery

from . import redis_url

TASK_NAME = "gpuqueue.launch_attempt"
MAX_RUNTIME_S = float(os.environ.get("GPUQUEUE_MAX_RUNTIME_S", 7 * 86400))


def node_queue(node: str) -> str:
    """The Celery queue of one node: only that node's worker consumes it."""
    return f"gpuqueue.node.{node}"


EVENTS_ENV = "GPUQUEUE_CELERY_EVENTS"


def events_enabled() -> bool:
    """Whether task events and remote control are on (``$GPUQUEUE_CELERY_EVENTS=1``, or the
    worker's and scheduler's ``--celery-events``): what Flower needs to see the workers, their
    queues and the launch tasks. Off by default (docs/deploy.md, "Flower")."""
    return os.environ.get(EVENTS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def settings(broker_url: str, events: Optional[bool] = None) -> dict[str, Any]:
    """The Celery configuration for ``broker_url`` (a Redis or Sentinel URL, see redis_url.py);
    ``events`` (default: :func:`events_enabled`) turns on task events and remote control."""
    if events is None:
        events = events_enabled()
    broker, transport = redis_url.celery_broker(broker_url)
    return {
        "broker_url": broker,
        # JSON only: a message can never make a worker unpickle anything.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "event_serializer": "json",
        # No result backend: outcomes go to the job store, fenced by attempt number.
        "task_ignore_result": True,
        "result_backend": None,
        # Ack after the launch is claimed and done; a worker that dies mid-launch puts the
        # message back (reject_on_worker_lost), and the claim in the store refuses a duplicate.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Above the longest allowed runtime, so an unacked message is never redelivered while
        # its attempt may still be alive (and if it were, the attempt's fence refuses it).
        "broker_transport_options": {
            "visibility_timeout": int(MAX_RUNTIME_S + 3600),
            "socket_keepalive": True,
            "retry_on_timeout": True,
            "health_check_interval": 10,
            **transport,
        },
        # Retries are the scheduler's (backoff, counting, requeue on node loss), never Celery's.
        "task_annotations": {TASK_NAME: {"max_retries": 0}},
        # Redis blips: keep reconnecting forever; running jobs are separate processes and go on.
        "broker_connection_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_heartbeat": 0,
        # Nothing else on the broker unless asked (Flower): no remote control fan-out, no events.
        "worker_enable_remote_control": events,
        "worker_send_task_events": events,
        "task_send_sent_event": events,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "task_default_queue": "gpuqueue.unrouted",
    }


def make_app(broker_url: str, events: Optional[bool] = None) -> Celery:
    """A Celery app configured for gpuqueue."""
    app = Celery("gpuqueue", set_as_current=False)
    app.conf.update(settings(broker_url, events))
    return app
