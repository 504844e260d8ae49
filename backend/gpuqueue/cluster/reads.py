"""The cluster API's reads of the store: off the event loop, and bounded per user.

One event loop serves every request of an API process. A page of a job's events reads up to
10,000 stored records from Redis, parses them and writes them out as JSON: about 0.15 s of
work. Done on the loop, a user with 20 concurrent readers held up every other user's requests
for seconds (``benchmarks/api_fairness.py``). So each read runs in a thread of one bounded pool
(:class:`ReadGate`), and one user may have at most ``per_user`` reads in flight in a process:
a request past that is answered at once with 429, ``Retry-After`` and a message naming the fix
(:meth:`ReadGate.admit`), and a live follow's next batch waits for one of its user's own
slots (:meth:`ReadGate.slot`), so one user never holds more than ``per_user`` of the threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable, TypeVar

from ..queue.errors import RateLimited
from ..queue.text import count

T = TypeVar("T")
MAX_READS_PER_USER = 4
"""Default of ``gpuqueue api --max-reads-per-user``: reads one user may have in flight in one API process."""
READ_THREADS = 16
"""Default of ``gpuqueue api --read-threads``: threads of one API process that read the store."""
MAX_FOLLOWS_PER_USER = 32
"""Default of ``gpuqueue api --max-follows-per-user``: live event streams one process serves one user."""
RETRY_AFTER_S = 1.0
REFUSAL_PAUSE_S = 0.25
"""A refused read is answered after this pause: a client that ignores Retry-After and asks again
at once (a script's loop) gets a few refusals a second per connection, not hundreds, each of
which the event loop every user shares would have to serve."""


class _Slots:
    """One user's slots: a semaphore of ``per_user``, and how many use or wait on it."""

    def __init__(self, per_user: int):
        self.sem = asyncio.Semaphore(per_user)
        self.holders = 0


class ReadGate:
    """The threads that read the store for one API process, and each user's share of them."""

    def __init__(self, per_user: int = MAX_READS_PER_USER, threads: int = READ_THREADS,
                 follows_per_user: int = MAX_FOLLOWS_PER_USER):
        if per_user < 1 or threads < 1 or follows_per_user < 1:
            raise ValueError("per_user, threads and follows_per_user must be 1 or more")
        self.per_user = per_user
        self.threads = threads
        self.follows_per_user = follows_per_user
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gpuqueue-read")
        self._users: dict[str, _Slots] = {}

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in one of the pool's threads (the caller holds its user's slot)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    @contextlib.asynccontextmanager
    async def admit(self, user: str) -> AsyncIterator[None]:
        """One of ``user``'s slots for a request, held until it is answered; RateLimited (429,
        ``Retry-After``) at once when the user has ``per_user`` reads in flight already."""
        slots = self._users.get(user)
        if slots is not None and slots.sem.locked():
            await asyncio.sleep(REFUSAL_PAUSE_S)
            raise RateLimited(
                f"you have {count(self.per_user, 'read')} of the queue in flight at once on this API server, the most "
                f"it serves one user: wait for an answer before you ask again (a script that reads in "
                f"parallel: read one at a time, or honour Retry-After); the admin sets this bound with "
                f"`gpuqueue api --max-reads-per-user`", retry_after=RETRY_AFTER_S)
        async with self.slot(user):
            yield

    @contextlib.asynccontextmanager
    async def slot(self, user: str) -> AsyncIterator[None]:
        """One of ``user``'s slots, waited for (a live follow's next batch of reads)."""
        slots = self._users.get(user)
        if slots is None:
            slots = self._users[user] = _Slots(self.per_user)
        slots.holders += 1
        try:
            async with slots.sem:
                yield
        finally:
            slots.holders -= 1
            if not slots.holders:
                del self._users[user]

    def in_flight(self, user: str) -> int:
        """Slots ``user`` holds or waits for now."""
        slots = self._users.get(user)
        return slots.holders if slots is not None else 0

    def close(self) -> None:
        """Stop the threads (those reading finish first)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
