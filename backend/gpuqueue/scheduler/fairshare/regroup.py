"""A user moving to another group (a hub user moved to another hub group): what follows for
its usage, its running jobs' charges ahead, the order of both groups' members and its quota
answers (docs/scheduling.md, "Moving between groups")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..base import JobRequest
from .ledger import User
from .records import RUNNING, STOPPING

if TYPE_CHECKING:
    from .policy import FairShareScheduler


def regroup(sched: FairShareScheduler, u: User, req: JobRequest, now: float, restoring: bool) -> None:
    """A job of the user arrived: its group is the user's from now on (see the ledger's
    ``move``). At a rebuild, the newest job's group wins, whatever the order jobs are
    restored in. The two groups' members' pending jobs are re-keyed in every pool (their
    share keys changed), the user's cached quota answers are dropped, and the unused part
    of what its running jobs were charged ahead goes to the new group (their true-up at the
    end comes from there)."""
    if not sched.ledger.hierarchical or (restoring and req.submit_time < u.group_since):
        return
    u.group_since = max(u.group_since, req.submit_time)
    old = sched.ledger.move(u, sched.group_name(req))
    if old is None:
        return
    new = u.group
    assert new is not None
    scale = sched.ledger.scale(now)
    for j in sched.jobs.values():
        r = j.request
        if r.user == u.name and j.state in (RUNNING, STOPPING):
            ahead = j.charged_scaled - r.gpus * max(0.0, now - j.started_at) / 3600.0 * scale
            if ahead > 0:
                old.scaled = max(0.0, old.scaled - ahead)
                new.scaled += ahead
    for m in old.members + new.members:
        m.version += 1
    for key in [k for k in sched.quota_bound if k[0] is u]:
        del sched.quota_bound[key]
    sched.order_epoch += 1
    for pool in sched.pools.values():
        pool.quota_free.pop(u.name, None)  # its group's limits may differ
        for m in old.members + new.members:
            if pool.queue.rekey(m):
                pool.dirty = True
