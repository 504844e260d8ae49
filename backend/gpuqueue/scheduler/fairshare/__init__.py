"""The gpuqueue policy: priority tiers inside weighted fair queuing between users.

Pure and deterministic: no I/O, no wall clock, no randomness (retry jitter is a hash of the
job id and attempt). The exact formula and every default are in ``docs/scheduling.md``;
in short, a pool's pending jobs are ordered by

    (tier, aged-first, user share key, submit time, submission sequence)

where ``tier = 0`` for high, ``2`` for medium, ``4`` for low, lowered by one step per
``starvation_timeout`` waited (at most ``starvation_boost_cap`` steps, never to 0 unless high),
``share key = decayed GPU-hours charged to the user / user weight``, and a job that waited past
``oldest_first_after`` (7 days) is *aged*: it goes before the rest of its tier, oldest first.
GPU-hours are charged at admission, ``charge_ahead`` seconds of the job's GPUs at a time, and
trued up at the end. The first job that does not fit gets a reservation (EASY backfill); jobs
behind it start only where they cannot delay it. In pools that allow it, the reserved job may
preempt preemptible work of strictly lower base priority, or of a user over its fair share
when its own user has nothing running there.

The parts, each owning its state:

* ``records``: the job record, its states, reasons and heap entries;
* ``ledger``: users' decayed usage and what they hold;
* ``queue``: a pool's pending jobs in the structures the pass merges;
* ``nodes``: the node index (free GPUs by count, jobs per node, end estimates);
* ``reservations``: the nodes, shadow time and spare GPUs set aside for a blocked job;
* ``preemption``: the planner, a pure function that returns victims;
* ``scheduling_pass``: one pass over one pool;
* ``explain``: why a queued job waits;
* ``policy``: ``FairShareScheduler``, the object the shells drive.
"""

from .policy import FairShareScheduler

__all__ = ["FairShareScheduler"]
