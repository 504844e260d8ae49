"""The service of a server whose gpuqueue configuration cannot be used: the queue is off.

A setting that cannot be read (``--GPUQueueApp.policy=foo``), an option gpuqueue does not have
(a typo of ``api_url``), a config file that is missing or invalid, or a token on the command
line: the server still starts, and instead of guessing (an embedded queue where the admin meant
the cluster, a default policy where they asked for another) every verb answers 503 with
:attr:`QueueOff.message`, which names the setting and the fix. The sidebar, ``%%train`` and the
CLI show it; the server's log has it once, with no traceback.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, NoReturn, Optional

from gpuqueue.queue.errors import Unavailable
from gpuqueue.queue.models import Event


class QueueOff:
    """The queue verbs of ``QueueService``, each answering 503 with ``message``."""

    def __init__(self, message: str):
        self.message = message
        self.listeners: list[Any] = []  # nothing happens here: no metrics to feed
        self.scheduler = None

    async def start(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        """Nothing to stop."""

    async def _off(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Refused: the queue is off."""
        raise Unavailable(self.message)

    submit = list_jobs = get_job = cancel = delete_job = preempt = events = result = summary = _off

    async def follow(self, *args: Any, **kwargs: Any) -> AsyncIterator[Optional[Event]]:
        """Refused: the queue is off (an async generator, as the other services' is)."""
        raise Unavailable(self.message)
        yield None  # pragma: no cover - makes this an async generator, as the others' are
