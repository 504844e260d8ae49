"""Write docs/config.md from the code: the TOML config models and the server extension's
traitlets, so the reference cannot drift. ``python scripts/gen_config_docs.py [--check]``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gpuqueue.queue.bounds import MB, dropped_for_newer, logs_dropped_for_newer
from gpuqueue.queue.config import GroupConfig, PolicyConfig, PoolConfig, QueueConfig, UserLimits

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "config.md"
EXAMPLE = ROOT / "deploy" / "pools.toml"

HEAD = """# Configuration reference

*Generated from the code by `python scripts/gen_config_docs.py`; a test keeps it current.*

There are two places to configure:

1. **The queue file** (TOML): pools, their nodes, limits, quotas, share weights and the
   scheduler's knobs. The same file serves the embedded mode (`c.GPUQueueApp.config_file` or
   `GPUQUEUE_CONFIG`) and the cluster daemon (`gpuqueue scheduler --config FILE`). Without one,
   the embedded mode has a single pool `default` holding this machine's GPUs. Durations accept
   `90s`, `15m`, `2h`, `1h30m`, `2d` or a number of seconds. A bad file is refused with the key
   and the fix, and nothing starts (the daemon exits; a Jupyter server turns its queue off, below).
2. **The Jupyter server extension** (traitlets): `c.GPUQueueApp.<name>` in
   `jupyter_server_config.py`, or `--GPUQueueApp.<name>=...` on the command line. A setting it
   cannot use (a value of the wrong kind or out of range, a name it does not have, a queue file
   that is missing or invalid, a state folder it cannot write or that another server's queue
   holds, a `$GPUQUEUE_GPUS` that is not a count, a log format or level it does not know) turns
   the queue off rather than running
   something else: the server starts, its log says at start what to fix, and every request to the
   queue (`%%train`, the CLI, the REST API the sidebar reads, `gpuqueue/metrics`) answers 503 with that message until the
   server is restarted with the fix. (Other settings are not dropped silently, as traitlets would
   drop those after a bad value: an `api_url` behind a typo never becomes an embedded queue.)

The product's default queue file, `deploy/pools.toml` (a dev pool of small preemptible jobs of an
hour at most, a prod pool of whole 8-GPU nodes for runs of up to two days); copy it and put in
your node names:

```toml
{example}```
"""

ENV = """
## Environment variables

| variable | meaning |
| --- | --- |
| `GPUQUEUE_STATE_DIR` | embedded mode: folder of the SQLite file and job folders (default `<jupyter data dir>/gpuqueue`) |
| `GPUQUEUE_GPUS` | GPUs to schedule on this machine when there is no NVML (or to override it), e.g. `4` |
| `GPUQUEUE_CONFIG` | the queue file, when `c.GPUQueueApp.config_file` is not set |
| `GPUQUEUE_URL`, `GPUQUEUE_TOKEN` | where the CLI and the magic find the REST API (set by the extension for the kernels it starts) |
| `GPUQUEUE_CELERY_EVENTS` | cluster mode: `1` turns on Celery task events and remote control on the workers and the scheduler, for Flower (as `--celery-events`; deploy.md "Flower") |
| `GPUQUEUE_VIEW` | in the kernel's environment: `text` forces the plain-text cell view, `widget` the widget; the default `auto` chooses (docs/user-guide.md) |
| `GPUQUEUE_MAX_OUTPUT_MB` | on the Jupyter server (embedded) or each worker: how much of its output and events (lines, metrics, progress, checkpoint records) one attempt of a job keeps, default `256`; past it the runner drops the job's further records after one stderr line saying so, so that no job fills the queue's store (shared by every user) by printing without end |
| `GPUQUEUE_PASS_ENV` | more variables a job takes from the environment of the Jupyter server (or worker) that launches it, e.g. `HF_HOME,WANDB_*` (names, or prefixes with `*`); names of credentials (in any case: `*TOKEN*`, `*PASSWORD*`, `*PASSWD*`, `*SECRET*`, `*CREDENTIAL*`, `*_KEY`, `*_AUTH*`, `*COOKIE*`, `JPY_*`, `JUPYTER*`, `GPUQUEUE_REDIS*`, `GPUQUEUE_URL`, `GPUQUEUE_API*`) never pass |

Inside a job: `CUDA_VISIBLE_DEVICES`, `GPUQUEUE_JOB_ID`, `GPUQUEUE_ATTEMPT`, `GPUQUEUE_JOB_DIR`,
`GPUQUEUE_ATTEMPT_DIR`, `GPUQUEUE_NODE`, `GPUQUEUE_NUM_GPUS`, and where asked
`GPUQUEUE_PRECISION`, `GPUQUEUE_GRAD_CHECKPOINTING`, `GPUQUEUE_RESUME_FROM`. Nothing else of the
launching process's environment reaches a job but an allow-list (`gpuqueue.attempt.launch.PASS_ENV`: `PATH`,
`PYTHONPATH`, `LANG`/`LC_*`, `TZ`, `TMPDIR`, `HOME`, `CUDA_*`, `NVIDIA_*`, `NCCL_*`,
`LD_LIBRARY_PATH`, CA bundles, the Ray address, ...), `GPUQUEUE_PASS_ENV`, and the job's own
`env`: no token or store URL of the server or worker.
"""


def _default(field: Any) -> str:
    if field.is_required():
        return "*required*"
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(table)"
        return f"`{value!r}`"
    return f"`{field.default!r}`"


def _type(field: Any) -> str:
    import typing

    ann = field.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) is typing.Union and len(args) == 1:
        return f"{getattr(args[0], '__name__', args[0])} or none"
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def model_table(model: type[BaseModel]) -> str:
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {_type(field)} | {_default(field)} | {desc} |")
    return "\n".join(rows)


def traitlets_table() -> str:
    from jupyter_gpuqueue.app import GPUQueueApp

    rows = ["| `c.GPUQueueApp.` | type | default | meaning |", "| --- | --- | --- | --- |"]
    app_traits = GPUQueueApp.class_own_traits(config=True)
    for name in sorted(app_traits):
        t = app_traits[name]
        shown = "(computed)" if name in ("state_dir", "config_file") else f"`{t.default_value_repr()}`"
        helptext = " ".join((t.help or "").split()).replace("|", "\\|")
        rows.append(f"| `{name}` | {type(t).__name__} | {shown} | {helptext} |")
    return "\n".join(rows)


RATE_LIMITS = """## Submit rate limits

Each user has a token bucket of `submit_burst` submits that refills at `submit_rate`; a submit
takes one, and when none is left it is refused with HTTP 429 and `Retry-After` (seconds), and
nothing is queued. A submit the queue refuses for another reason (too many GPUs, a full queue:
`max_queued`, a quota) costs no token. `%%train` and the `gpuqueue` CLI say so in words:

```
gpuqueue: you are submitting faster than your limit of 30/min (bursts of 10): try again in 1.6 s (the admin sets this limit: submit_rate and submit_burst in the queue config)
```

Without configuration every user has a bucket of 100 submits that refills at 10 a second: no
one at a notebook (or a sweep of a few hundred jobs) meets it, but a loop that submits and
cancels as fast as it can no longer makes records at the store's own speed (with
`max_finished`, below, it keeps at most that many). The cluster's API service applies these
defaults (and the default `max_queued`) also before any scheduler has published its config.
`submit_rate = "unlimited"` in `[defaults]` or a `[users.NAME]` table lifts the limit (a load
test, a service account).

The rate comes from the user's `[users.NAME]` table if there is one, else from the user's
group (`[groups.NAME]` submit_rate and submit_burst, each where the group sets it), else from
`[defaults]`. The bucket is each user's own, also in a group,
so one user submitting too fast never holds up another. Set `exempt_admins_from_submit_rate =
true` to let admins submit without it. In cluster mode the buckets live in Redis and hold across
every API process (an atomic WATCH/MULTI update); the embedded mode keeps them in the server.
A resubmitted cell that joins its active job takes no token either, and a request refused as
invalid or as a job that can never run in its pool is refused (HTTP 400) before any token is
looked at.

```toml
[defaults]
submit_rate = "30/min"
submit_burst = 10

[groups.students]
members = ["carol", "dave"]
submit_rate = "10/min"
```
"""

STORE_BOUNDS = """## What one user keeps in the store

Every user's jobs share one store (the cluster's Redis; the embedded mode's SQLite file and
state folder). Finished jobs stay in it for `keep_finished` / `gpuqueue scheduler
--keep-finished` (30 days) so that their owner can still read them, but never without bound:

* `max_results_mb` (default 2048 MB a user): the results of a user's succeeded cell jobs (the
  names the cell assigned, up to 200 MB each) take at most this much together. When a new
  result would pass it, that user's oldest results are dropped first: their jobs stay
  succeeded, and fetching their results (`%gpuqueue result`, `%%train` re-attaching) answers
  HTTP 410 saying so and naming the knob. The newest result is the one its owner is waiting for
  (the cell that just ran), so it is kept rather than refused; one result larger than the
  whole allowance is not kept (its job says so) and nothing else goes for it.
* `max_logs_mb` (default 4096 MB a user): the output of a user's finished jobs (their log
  lines, progress and metrics records: up to `GPUQUEUE_MAX_OUTPUT_MB`, 256 MB, per attempt),
  measured as each job ends (in a cluster, what its event stream takes in Redis; in the
  embedded mode, what its attempts wrote), takes at most this much together. When a job's end
  would pass it, that user's oldest finished jobs' output is dropped first: their records and
  their `state`, `warning`, `info`, `checkpoint` and `result` records stay (the attempts, the
  errors and tracebacks, `%gpuqueue checkpoints`), and reading their logs (`gpuqueue logs`,
  `%gpuqueue logs`, `%gpuqueue attach`, `GET /jobs/ID/events`) gives one line that says so and
  names the knob. One job whose output alone is over the whole allowance keeps none. 4096 MB
  is sixteen attempts that each wrote the most an attempt may: a user's last jobs keep their
  output whole, while one user's finished jobs take at most 4 GB of the store, not
  `max_finished` times 256 MB.
* `max_inputs_mb` (default 2048 MB a user): the inputs (payloads) of a user's unfinished cell
  jobs, each up to `gpuqueue api --max-payload-mb` (64 MB) in a cluster or the server's
  `max_payload_mb` (200 MB) in the embedded mode, stay in Redis (or the state folder) until the
  job ends; together they take at most this much. A submit past it is refused (HTTP 400,
  nothing stored, no submit token spent) naming the knob; a job that ends frees its room.
* `max_finished` (default 10000 a user): a user's finished jobs (record, events, results) kept;
  past it the oldest finished are deleted, as if their retention had run out. Queued and
  running jobs are never deleted.
* `max_shared_gb` (default 1000 GB a user; a cluster whose workers have a `--shared-dir`): the
  checkpoints of all the user's jobs on the workers' shared root (where a requeued attempt
  resumes from, on any node), counted across jobs, attempts and workers until each job's record
  is deleted, besides each attempt's `gpuqueue worker --shared-max-gb`. A checkpoint past it is
  not copied there: it stays on its node (an attempt elsewhere resumes from an older one), and
  the job gets a warning naming the checkpoint, its size, what the user's jobs take there and
  the knob. Rotated-away checkpoints and swept jobs give their room back (docs/deploy.md,
  "Shared storage for checkpoints"); a user frees room at once with `gpuqueue rm JOB_ID ...`,
  which deletes finished jobs (their checkpoints leave the root at the next shared sweep), as it
  frees room within `max_results_mb`, `max_logs_mb` and `max_finished` (docs/user-guide.md).
* `max_shared_files` (default 1,000,000 a user): the files and folders those checkpoints hold
  there (each checkpoint's, its marker included), counted and given back in the same way. It bounds what
  bytes do not: a job saving many empty or tiny files takes next to nothing of `max_shared_gb`
  but an inode (or object) of the shared root for each. A checkpoint past it is not copied, and
  the job's warning names its files and folders, what the user's jobs hold there and the knob
  (`tests/cluster/test_shared_usage.py`).

```
%gpuqueue result j-1a2b3c4d5e6f
{result_dropped}
```

```
$ gpuqueue logs j-0f1e2d3c4b5a
{logs_dropped}
```

Set any of them in `[defaults]` for everyone or in `[users.NAME]` for one user.

Keeping within them costs a job's end about the same whether its owner has 10 finished jobs or
10,000: in a cluster, each user's kept results and output have a running total and an index by
end time beside them (changed in the same guarded write as the jobs' records, so a scheduler
failover never leaves them half-changed), and an end reads only the oldest entries it drops
(`benchmarks/store_bounds.py`: about 0.5 ms a job end at 10,000 kept jobs, where reading them
all took about 60 ms); in the embedded mode the SQLite file has an index of each (about 2 ms,
where reading every kept row took about 45 ms). After an upgrade from a version without that index, what it kept still
counts: a user's index is built from it at their next job end. Run one scheduler version at a
time: an older standby that takes over writes the kept sets without their index, which the next
end of each user then rebuilds.
"""


def store_bounds() -> str:
    """The store-bounds section, its two examples in the code's own words: what ``%gpuqueue
    result`` says of a job whose results were dropped, and what ``gpuqueue logs`` says of one
    whose output was (``gpuqueue.queue.bounds``; ``tests/jupyter/test_rate_limit.py`` shows the
    first as a cell prints it)."""
    job = "j-1a2b3c4d5e6f"
    result = (f"UsageError: {job} succeeded, but its results cannot come back: job {job}: "
              + dropped_for_newer(int(150 * MB), 2048))
    logs = "[gpuqueue] " + logs_dropped_for_newer(int(212.4 * MB), 4096)
    return STORE_BOUNDS.replace("{result_dropped}", result).replace("{logs_dropped}", logs)


def render() -> str:
    parts = [
        HEAD.replace("{example}", EXAMPLE.read_text()),
        "## Top level of the queue file\n\n" + model_table(QueueConfig),
        "## `[pools.NAME]`\n\n" + model_table(PoolConfig),
        "## `[defaults]` and `[users.NAME]`\n\n" + model_table(UserLimits),
        "## `[groups.NAME]`\n\nA group's limits hold for its members together; fair share goes to the groups "
        "first (by group weight), then to the users within each (by user weight). A user is in at most one "
        "group; users in none share as groups of their own.\n\n" + model_table(GroupConfig),
        RATE_LIMITS,
        store_bounds(),
        "## `[policy]`\n\nThe formula these knobs enter is in [scheduling.md](scheduling.md).\n\n" + model_table(PolicyConfig),
        "## The server extension (`GPUQueueApp`)\n\n" + traitlets_table(),
        ENV,
    ]
    return "\n\n".join(p.strip("\n") for p in parts) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if OUT.read_text() != text:
            print("docs/config.md is out of date: run python scripts/gen_config_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
