"""The pending queue of one pool, in the structures the pass merges.

Per priority tier and queue key (GPUs, has a time limit), a heap of the users with pending
jobs there, by share key (lazy: an entry is stale once its user's version moved on), and a
heap of the *aged* jobs (waited past ``oldest_first_after``), oldest first. Each user's pending
jobs of a tier and key are a sorted list, oldest first. Split by key so that backfill visits
only the groups of jobs that can still start (see ``scheduling_pass.fit_keys``).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from typing import Iterator

from .ledger import User
from .records import N_TIERS, AgedEntry, Job, JobClass, QueueKey, UserEntry

ListKey = tuple[int, QueueKey]
"""(tier, queue key): which of a user's job lists."""


class PoolQueue:
    """Pending jobs of one pool (see the module docstring)."""

    def __init__(self) -> None:
        self.queued = 0  # pending + waiting (retry backoff)
        # pending jobs by class -> count: lets a pass stop as soon as no class can start
        self.classes: dict[JobClass, int] = {}
        self.user_heaps: list[dict[QueueKey, list[UserEntry]]] = [{} for _ in range(N_TIERS)]
        self.aged_heaps: list[dict[QueueKey, list[AgedEntry]]] = [{} for _ in range(N_TIERS)]
        # user -> (tier, queue key) -> the user's pending jobs there, by Job.order_key
        self.lists: dict[str, dict[ListKey, list[tuple[float, int, str]]]] = {}
        # user -> the (tier, queue key) user heaps that hold a live entry for it
        self.in_heap: dict[str, set[ListKey]] = {}

    # ------------------------------------------------------------------ counts by class
    def count_class(self, job_class: JobClass, delta: int) -> None:
        """One pending job of ``job_class`` more (+1) or less (-1)."""
        n = self.classes.get(job_class, 0) + delta
        if n:
            self.classes[job_class] = n
        else:
            del self.classes[job_class]

    # ------------------------------------------------------------------ jobs in and out
    def add_aged(self, job: Job, tier: int, key: QueueKey) -> None:
        """File an aged job in its tier's aged heap."""
        req = job.request
        heapq.heappush(self.aged_heaps[tier].setdefault(key, []),
                       AgedEntry(req.submit_time, job.seq, req.id, job.queue_version))

    def add(self, job: Job, user: User, tier: int, key: QueueKey) -> None:
        """File a job in its user's list and make sure the user is in the heap."""
        lists = self.lists.get(user.name)
        if lists is None:
            lists = self.lists[user.name] = {}
            self.in_heap[user.name] = set()
        lst = lists.get((tier, key))
        if lst is None:
            lst = lists[(tier, key)] = []
        insort(lst, job.order_key)
        self.push_user(user, tier, key)

    def remove(self, job: Job, tier: int, key: QueueKey) -> None:
        """Take a job out of its user's list (aged heaps are lazy: nothing to do there)."""
        lists = self.lists.get(job.request.user)
        lst = lists.get((tier, key)) if lists is not None else None
        if not lst:
            return
        k = job.order_key
        i = bisect_left(lst, k)
        if i < len(lst) and lst[i] == k:
            del lst[i]

    # ------------------------------------------------------------------ users in the heaps
    def push_user(self, user: User, tier: int, key: QueueKey) -> None:
        """Put the user into the (tier, key) heap with its current share key, unless there."""
        marks = self.in_heap[user.name]
        if (tier, key) in marks:
            return
        marks.add((tier, key))
        heapq.heappush(self.user_heaps[tier].setdefault(key, []),
                       (user.scaled / user.weight, user.name, user.version))

    def rekey(self, user: User) -> bool:
        """The user's share key changed: push it again where it has pending jobs. True if
        it has any here."""
        lists = self.lists.get(user.name)
        if not lists:
            return False
        self.in_heap[user.name].clear()
        any_jobs = False
        for (tier, key), lst in lists.items():
            if lst:
                self.push_user(user, tier, key)
                any_jobs = True
        return any_jobs

    def rebuild_user_heaps(self, users: dict[str, User]) -> None:
        """Drop every user heap and push each user again (after a renormalization)."""
        self.user_heaps = [{} for _ in range(N_TIERS)]
        for name, lists in self.lists.items():
            self.in_heap[name].clear()
            for (tier, key), lst in lists.items():
                if lst:
                    self.push_user(users[name], tier, key)

    def user_jobs(self, name: str, tier: int, key: QueueKey) -> list[tuple[float, int, str]]:
        """The user's pending jobs of this tier and key, oldest first (empty if none)."""
        lists = self.lists.get(name)
        if lists is None:
            return []
        return lists.get((tier, key), [])

    # ------------------------------------------------------------------ introspection
    def tier_lists(self, tier: int) -> Iterator[tuple[str, list[tuple[float, int, str]]]]:
        """(user, its non-aged pending jobs of the tier, oldest first) for users with some."""
        for name, lists in self.lists.items():
            keys = sorted(k for (t, _), lst in lists.items() if t == tier for k in lst)
            if keys:
                yield name, keys
