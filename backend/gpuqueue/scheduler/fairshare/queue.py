"""The pending queue of one pool, in the structures the pass merges.

Per priority tier and queue key (GPUs, has a time limit), a heap of the users with pending
jobs there, by share key (lazy: an entry is stale once its user's version moved on). Each
user's pending jobs of a tier and key are a sorted list, oldest first, filed by tier then key
(a pass walks one tier's lists of a user). Split by key so that
backfill visits only the groups of jobs that can still start (see
``scheduling_pass.SchedulingPass.fit_keys``). Beside them, the pending jobs of each priority by
age (lazy heaps, by when they starve): the oldest ones are the starved jobs that go first.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from typing import Iterator

from .ledger import User
from .records import N_TIERS, AgeEntry, Job, JobClass, QueueKey, UserEntry, class_key

ListKey = tuple[int, QueueKey]
"""(tier, queue key): which of a user's job lists."""


class PoolQueue:
    """Pending jobs of one pool (see the module docstring)."""

    def __init__(self) -> None:
        self.queued = 0  # pending + waiting (retry backoff)
        # pending jobs by class -> count: lets a pass stop as soon as no class can start
        # pending jobs by (queue key, nodes) -> time limit -> count, and the shortest limit of
        # each: its jobs have the widest view of reserved GPUs, which is all a pass needs to
        # tell whether a key may still start (see SchedulingPass.fit_keys)
        self.limits: dict[tuple[QueueKey, int], dict[float, int]] = {}
        self.shortest: dict[tuple[QueueKey, int], float] = {}
        self.shortest_version = 0  # bumps when ``shortest`` changes
        self.user_heaps: list[dict[QueueKey, list[UserEntry]]] = [{} for _ in range(N_TIERS)]
        # (priority rank, seconds after which they starve) -> pending jobs, oldest first (lazy)
        self.by_age: dict[tuple[int, float], list[AgeEntry]] = {}
        # user -> per tier: queue key -> the user's pending jobs there (never empty), by
        # Job.order_key
        self.lists: dict[str, list[dict[QueueKey, list[tuple[float, int, str]]]]] = {}
        # user -> (tier, queue key) -> the version of the user's live entry in that heap. When
        # the user's share key changes, the entry is left in place and pushed again with the new
        # key when it comes to the top (``refresh``). A key that grew is then exact (the user is
        # only ever later); a key that shrank (a refund: a job ended before its charged chunk)
        # takes effect when the old entry surfaces.
        self.in_heap: dict[str, dict[ListKey, int]] = {}

    # ------------------------------------------------------------------ counts by class
    def count_class(self, job_class: JobClass, delta: int) -> None:
        """One pending job of ``job_class`` more (+1) or less (-1)."""
        k = (class_key(job_class), job_class[1])
        limit = job_class[2]
        counts = self.limits.get(k)
        if counts is None:
            counts = self.limits[k] = {}
        n = counts.get(limit, 0) + delta
        if n:
            counts[limit] = n
        else:
            del counts[limit]
        shortest = self.shortest.get(k)
        if delta > 0 and (shortest is None or limit < shortest):
            self.shortest[k] = limit
            self.shortest_version += 1
        elif not n and limit == shortest:
            if counts:
                self.shortest[k] = min(counts)
            else:
                del self.shortest[k], self.limits[k]
            self.shortest_version += 1

    def __bool__(self) -> bool:
        """Whether any job is pending (retry backoff aside)."""
        return bool(self.shortest)

    # ------------------------------------------------------------------ jobs in and out
    def add(self, job: Job, user: User, tier: int, key: QueueKey, by_age: bool) -> None:
        """File a job in its user's list and make sure the user is in the heap; with
        ``by_age`` (it may starve), also in its priority's age heap."""
        lists = self.lists.get(user.name)
        if lists is None:
            lists = self.lists[user.name] = [{} for _ in range(N_TIERS)]
            self.in_heap[user.name] = {}
        mine = lists[tier]
        lst = mine.get(key)
        if lst is None:
            lst = mine[key] = []
        k = job.order_key
        insort(lst, k)
        self.push_user(user, tier, key)
        if by_age:
            heap = self.by_age.get((job.request.priority.rank, job.starve_after))
            if heap is None:
                heap = self.by_age[(job.request.priority.rank, job.starve_after)] = []
            heapq.heappush(heap, AgeEntry(k[0], k[1], k[2], job.queue_version))

    def remove(self, job: Job, tier: int, key: QueueKey) -> None:
        """Take a job out of its user's list (the age heap is lazy: nothing to do there)."""
        lists = self.lists.get(job.request.user)
        mine = lists[tier] if lists is not None else None
        lst = mine.get(key) if mine is not None else None
        if not lst:
            return
        k = job.order_key
        i = bisect_left(lst, k)
        if i < len(lst) and lst[i] == k:
            del lst[i]
            if not lst:  # a user's lists are walked in every pass: keep only the ones in use
                del mine[key]  # type: ignore[union-attr]

    # ------------------------------------------------------------------ users in the heaps
    def push_user(self, user: User, tier: int, key: QueueKey) -> None:
        """Put the user into the (tier, key) heap with its current share key, unless there."""
        marks = self.in_heap[user.name]
        if (tier, key) in marks:
            return
        self._push(user, tier, key, marks)

    def _push(self, user: User, tier: int, key: QueueKey, marks: dict[ListKey, int]) -> None:
        marks[(tier, key)] = user.version
        g = user.group  # the share key, inline: this is the policy's hottest allocation
        share = user.scaled / user.weight if g is None else (g.scaled / g.weight, user.scaled / user.weight)
        heapq.heappush(self.user_heaps[tier].setdefault(key, []), (share, user.name, user.version))

    def refresh(self, user: User, tier: int, key: QueueKey, version: int) -> None:
        """A stale entry (of ``version``) was popped from the (tier, key) heap: if it was the
        user's live one and the user still has jobs there, push the user's current key."""
        marks = self.in_heap[user.name]
        if marks.get((tier, key)) != version:
            return  # a newer entry is in the heap
        if key in self.lists[user.name][tier]:
            self._push(user, tier, key, marks)
        else:
            del marks[(tier, key)]

    def refresh_top(self, heap: list[UserEntry], user: User, tier: int, key: QueueKey, version: int) -> None:
        """``refresh`` for the stale entry (of ``version``) at the top of the (tier, key) heap,
        in one step: ``heapreplace`` instead of a pop and a push (the same entries are left,
        so the heap yields the same order)."""
        marks = self.in_heap[user.name]
        if marks.get((tier, key)) != version:
            heapq.heappop(heap)  # a newer entry is in the heap
        elif key in self.lists[user.name][tier]:
            marks[(tier, key)] = user.version
            g = user.group
            share = user.scaled / user.weight if g is None else (g.scaled / g.weight, user.scaled / user.weight)
            heapq.heapreplace(heap, (share, user.name, user.version))
        else:
            heapq.heappop(heap)
            del marks[(tier, key)]

    def rekey(self, user: User) -> bool:
        """Push the user again, now, with its current share key, where it has pending jobs.
        True if it has any here."""
        lists = self.lists.get(user.name)
        if not lists:
            return False
        marks = self.in_heap[user.name]
        marks.clear()
        any_jobs = False
        for tier, mine in enumerate(lists):
            for key in mine:
                self._push(user, tier, key, marks)
                any_jobs = True
        return any_jobs

    def rebuild_user_heaps(self, users: dict[str, User]) -> None:
        """Drop every user heap and push each user again (after a renormalization)."""
        self.user_heaps = [{} for _ in range(N_TIERS)]
        for name, lists in self.lists.items():
            marks = self.in_heap[name]
            marks.clear()
            for tier, mine in enumerate(lists):
                for key in mine:
                    self._push(users[name], tier, key, marks)

    # ------------------------------------------------------------------ introspection
    def tier_lists(self, tier: int) -> Iterator[tuple[str, list[tuple[float, int, str]]]]:
        """(user, its pending jobs of the tier, oldest first) for users with some."""
        for name, lists in self.lists.items():
            keys = sorted(k for lst in lists[tier].values() for k in lst)
            if keys:
                yield name, keys
