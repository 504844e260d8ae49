"""Cluster mode: job state in Redis, a scheduler daemon (one leader), a Celery worker per GPU
node, and a stateless API service. See docs/deploy.md.

Modules: ``redis_store`` (keys, fenced writes, events in Redis Streams), ``daemon``
(``gpuqueue scheduler``), ``worker`` (``gpuqueue worker``), ``forkserver`` (the worker's runners,
forked ahead of time), ``celeryconfig``, ``frontend`` (the queue verbs over Redis, used by the
API), ``api`` (``gpuqueue api``), ``users`` (the users file).
"""
