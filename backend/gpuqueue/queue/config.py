"""Queue configuration: pools, their nodes, limits and policy knobs, read from one TOML file.

Example (see docs/config.md for every key and default)::

    [pools.dev]
    nodes = { "dev-1" = 2 }          # node name = GPUs on it
    preemptible = true
    max_runtime = "1h"

    [pools.prod]
    nodes = { "gpu-1" = 8, "gpu-2" = 8 }
    max_runtime = "48h"
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Iterable, Optional

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from .durations import MAX_TIMEOUT_S, parse_duration

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (a dependency there)
    import tomli as tomllib
from .errors import BadRequest
from .ratelimit import SubmitLimit, parse_rate

DEFAULT_SUBMIT_RATE = 10.0  # submits a second: a bucket no person at a notebook empties (docs/config.md)

MAX_LOST_ATTEMPTS = 3
# validation context of a config the scheduler daemon publishes: without --config its pool
# "default" holds whatever workers join, so it may have no nodes yet
GROWING = {"growing": True}


def _seconds(v: Any, max_s: Optional[float] = None) -> Optional[float]:
    if v is None:
        return None
    return parse_duration(v) if max_s is None else parse_duration(v, max_s)


class PoolConfig(BaseModel):
    """One pool: a set of nodes and the rules for jobs that run there."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    nodes: dict[str, int] = Field(..., description="node name -> number of GPUs on it")
    preemptible: bool = Field(False, description="jobs here may be preempted")
    max_runtime: Optional[float] = Field(None, description="seconds; longer time limits rejected")
    default_timeout: Optional[float] = Field(None, description="seconds; when a job sets none")
    starvation_timeout: float = Field(
        3600.0,
        description="seconds of waiting per priority boost; a job needing several GPUs a node starves after it "
        "and gets GPUs set aside (docs/scheduling.md); 0: no starvation and no boosts",
    )
    max_queued: int = Field(10_000, ge=1, description="queue depth limit of the pool")
    max_gpus_per_user: Optional[int] = Field(None, ge=0, description="GPUs a user may hold here")
    allow_preemption: bool = Field(
        True,
        description="preemptible jobs here (the pool's own, or jobs that opt in) may be "
        "preempted for higher-priority or under-share demand; false: never preempt here",
    )

    @field_validator("max_runtime", "default_timeout", mode="before")
    @classmethod
    def _time_limit(cls, v: Any) -> Optional[float]:
        return _seconds(v, MAX_TIMEOUT_S)  # what a job's own time limit may be

    @field_validator("starvation_timeout", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Optional[float]:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0:
            return 0.0  # no starvation, no boosts
        s = _seconds(v)
        if s is not None and s < 1:
            raise ValueError("must be at least 1 s, e.g. 1h, or 0: no job starves or climbs a priority step")
        return s

    @field_validator("nodes")
    @classmethod
    def _nodes(cls, v: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        if not v and not (info.context or {}).get("growing"):
            raise ValueError("a pool needs at least one node, e.g. nodes = { \"gpu-1\" = 8 }")
        for name, gpus in v.items():
            if not 0 <= gpus <= 4096:
                raise ValueError(f"node {name!r} has {gpus} GPUs: give a count from 0 to 4096")
        return v

    @property
    def total_gpus(self) -> int:
        """GPUs over all the pool's nodes."""
        return sum(self.nodes.values())


class UserLimits(BaseModel):
    """Per-user quotas and share weight (``[users.NAME]`` tables override ``[defaults]``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    weight: float = Field(1.0, gt=0, description="fair-share weight")
    max_gpus: Optional[int] = Field(None, ge=0, description="GPUs held at once, all pools")
    max_running: Optional[int] = Field(None, ge=0, description="jobs running at once")
    max_queued: int = Field(1000, ge=1, description="jobs queued at once; more are rejected")
    submit_rate: Optional[float] = Field(
        DEFAULT_SUBMIT_RATE, description="submits a second that refill the user's bucket: a number, or e.g. "
        "\"30/min\", \"2/s\", \"100/h\"; a faster submit gets HTTP 429 with Retry-After; "
        "\"unlimited\": no limit")
    submit_burst: int = Field(100, ge=1, description="submits the user may make at once before submit_rate applies")
    max_results_mb: float = Field(
        2048.0, gt=0,
        description="MB of results (the names cell jobs return) the user's succeeded jobs keep in the "
        "queue's store, all together; a new result drops the user's oldest first (their jobs then say so), "
        "and one larger than this is not kept")
    max_logs_mb: float = Field(
        4096.0, gt=0,
        description="MB of output (log lines, progress and metrics records) the user's finished jobs keep in "
        "the queue's store, all together, measured as each job ends; past it the oldest finished jobs' "
        "output goes first (their state, checkpoint and result records stay, and reading their logs says "
        "so)")
    max_inputs_mb: float = Field(
        2048.0, gt=0,
        description="MB of cell inputs (payloads, up to the API's --max-payload-mb or the server's "
        "max_payload_mb each) the user's unfinished jobs hold in the store together; a submit past it is "
        "refused (HTTP 400) until some end")
    max_shared_gb: float = Field(
        1000.0, gt=0,
        description="GB the checkpoints of all the user's jobs may take on the workers' shared root "
        "(gpuqueue worker --shared-dir), counted across workers until each job's record is deleted; "
        "a checkpoint past it is not copied there (it stays on its node, and the job is told)")
    max_shared_files: int = Field(
        1_000_000, ge=1,
        description="files and folders the checkpoints of all the user's jobs may hold on the workers' shared "
        "root (each checkpoint's, its marker included), counted as max_shared_gb is; bounds what bytes do not (many "
        "empty or tiny files, each an inode or object there); a checkpoint past it is not copied there (it "
        "stays on its node, and the job is told)")
    max_finished: int = Field(
        10_000, ge=1,
        description="finished jobs (record, events, results) kept for the user; past it the oldest "
        "finished are deleted, before keep_finished / --keep-finished would (queued and running jobs never)")

    @field_validator("submit_rate", mode="before")
    @classmethod
    def _rate(cls, v: Any) -> Optional[float]:
        return parse_rate(v, unlimited=True)


class GroupConfig(BaseModel):
    """A group of users (a team, a tenant): fair share goes to the groups first, then to the
    users within each (``[groups.NAME]``). Its limits hold for its members together."""

    model_config = ConfigDict(extra="forbid")

    members: list[str] = Field(
        default_factory=list,
        description="the users of the group (a user is in at most one); with the API service "
        "as a JupyterHub service (--auth hub), a user in none is in the first group, in file "
        "order, named as one of the user's hub groups")
    weight: float = Field(1.0, gt=0, description="fair-share weight of the group against the others")
    max_gpus: Optional[int] = Field(None, ge=0, description="GPUs the members hold at once, all pools")
    max_running: Optional[int] = Field(None, ge=0, description="jobs the members run at once")
    max_queued: Optional[int] = Field(None, ge=1, description="jobs the members have queued at once; more are rejected")
    submit_rate: Optional[float] = Field(
        None, description="each member's submit rate (as [defaults] submit_rate), for members "
        "without a [users.NAME] table; none: that of [defaults]")
    submit_burst: Optional[int] = Field(None, ge=1, description="each member's submit burst; none: that of [defaults]")

    @field_validator("submit_rate", mode="before")
    @classmethod
    def _rate(cls, v: Any) -> Optional[float]:
        return parse_rate(v)


MIN_PERIOD_S = 60.0
"""The shortest usage half-life and charge period: shorter ones make the scheduler's timers
(or its arithmetic) run away, and mean nothing for GPU jobs."""


class PolicyConfig(BaseModel):
    """Knobs of the fair-share policy (``[policy]`` table); see docs/scheduling.md."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    half_life: float = Field(7 * 86400.0, description="seconds; usage decay half-life (at least a minute)")
    charge_ahead: float = Field(
        3600.0, description="seconds of a job's GPU time charged at admission, then per chunk "
        "(0: a job is charged only when it ends)"
    )
    starvation_boost_cap: int = Field(
        3, ge=0, le=3, description="tier steps a starving job may climb (never above high)"
    )
    oldest_first_after: float = Field(
        24 * 3600.0, ge=0,
        description="seconds of waiting after which a job of one GPU a node starves: it goes first, oldest first, whatever its user's share (0: never); jobs needing more GPUs a node starve after their pool's starvation_timeout",
    )
    reservations: bool = Field(
        True, description="set GPUs aside for starved jobs and for the first blocked job (false: no backfill protection)"
    )
    starved_priority_credit: float = Field(
        4 * 3600.0, ge=0,
        description="seconds of waiting one priority step is worth in the order of starved jobs "
        "(a starved high job goes as if it had waited twice this much longer than a low one)",
    )
    max_reservations: int = Field(
        8, ge=1, le=1000,
        description="starved jobs a pass serves first, by credited age: each starts, or gets GPUs set aside",
    )
    drain_share: float = Field(
        0.0625, ge=0, le=1,
        description="share of a pool's nodes (at least one) that reservations beyond the fair order's first may drain with no known end time (their free GPUs idle until the jobs there end)",
    )
    backfill_depth: int = Field(500, ge=0, description="jobs examined past the first blocked one")
    min_runtime: float = Field(600.0, ge=0, description="seconds before a job may be preempted")
    grace: float = Field(120.0, ge=0, description="seconds a preempted job has to checkpoint")
    max_preemptions_per_job: int = Field(3, ge=0, description="then the job is no longer a victim")
    preemption_budget: float = Field(
        30.0, ge=0, description="preemptions a pool may issue per preemption_window (token bucket)"
    )
    preemption_window: float = Field(3600.0, gt=0, description="seconds; refill period of the budget")
    timeout_warning: float = Field(300.0, ge=0, description="seconds of warning before a timeout")
    retry_jitter: float = Field(0.25, ge=0, le=1, description="backoff is scaled by 1 ± jitter")

    @field_validator(
        "half_life", "charge_ahead", "min_runtime", "grace", "preemption_window",
        "timeout_warning", "starved_priority_credit", "oldest_first_after", mode="before",
    )
    @classmethod
    def _duration(cls, v: Any) -> float:
        if isinstance(v, (int, float)) and v == 0:
            return 0.0
        return parse_duration(v)

    @field_validator("half_life")
    @classmethod
    def _half_life(cls, v: float) -> float:
        if v < MIN_PERIOD_S:
            raise ValueError(f"must be at least {MIN_PERIOD_S:g} s; e.g. 7d (how long a "
                             f"GPU-hour of usage takes to count half)")
        return v

    @field_validator("charge_ahead")
    @classmethod
    def _charge_ahead(cls, v: float) -> float:
        if 0 < v < MIN_PERIOD_S:
            raise ValueError(f"must be at least {MIN_PERIOD_S:g} s, e.g. 1h (each "
                             f"chunk is a timer of every running job), or 0 to charge jobs when they end")
        return v


class QueueConfig(BaseModel):
    """The whole configuration file."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    pools: dict[str, PoolConfig]
    defaults: UserLimits = Field(default_factory=UserLimits)
    users: dict[str, UserLimits] = Field(default_factory=dict)
    groups: dict[str, GroupConfig] = Field(
        default_factory=dict, description="groups of users: fair share between groups, then within each"
    )
    retries: int = Field(3, ge=0, le=20, description="retries after a failure, by default")
    retry_backoff: float = Field(10.0, gt=0, description="seconds before the first retry")
    retry_backoff_max: float = Field(600.0, gt=0, description="cap on the backoff")
    max_lost_attempts: int = Field(
        MAX_LOST_ATTEMPTS, ge=1, le=100,
        description="attempts in a row whose job process vanished without an exit record (runner "
        "killed, node lost) after which the attempt counts as failed, so that retries apply",
    )
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="scheduler policy knobs")
    exempt_admins_from_submit_rate: bool = Field(
        False, description="admins submit without the submit_rate limit (their bucket is not used)")
    warm_imports: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")]] = Field(
        default_factory=lambda: ["torch"], max_length=32,
        description="modules a cell job's interpreter imports before its job comes (embedded mode: "
        "from the server's first submit on, the next cell's interpreter is started ahead, as the "
        "server's user; a server that never had a job starts none, so its first job starts cold; "
        "what the imports print is discarded); [] starts it with none; a module that is not "
        "installed is skipped (where the config sets this list, the server's log names those its Python "
        "cannot find)",
    )

    @field_validator("pools")
    @classmethod
    def _pools(cls, v: dict[str, PoolConfig]) -> dict[str, PoolConfig]:
        if not v:
            raise ValueError("at least one [pools.NAME] table is needed")
        seen: dict[str, str] = {}
        for pool, cfg in v.items():
            for node in cfg.nodes:
                if node in seen:
                    raise ValueError(f"node {node!r} is in pools {seen[node]!r} and {pool!r}")
                seen[node] = pool
        return v

    _group_of: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _groups(self) -> "QueueConfig":
        seen: dict[str, str] = {}
        for group, cfg in self.groups.items():
            for user in cfg.members:
                if user in seen and seen[user] != group:
                    raise ValueError(f"user {user!r} is in groups {seen[user]!r} and {group!r}: "
                                     "a user belongs to at most one group")
                seen[user] = group
        self._group_of = seen
        return self

    def group_of(self, user: str, hub_groups: Iterable[str] = ()) -> Optional[str]:
        """The user's fair-share group, or None: the ``[groups.NAME]`` whose ``members`` list
        the user, else the first ``[groups.NAME]`` in file order whose NAME is one of
        ``hub_groups`` (the user's JupyterHub groups, with ``--auth hub``), else none."""
        explicit = self._group_of.get(user)
        if explicit is not None:
            return explicit
        mine = set(hub_groups)
        return next((name for name in self.groups if name in mine), None) if mine else None

    @property
    def default_pool(self) -> str:
        """The first pool in the file: where jobs that name none go."""
        return next(iter(self.pools))

    def limits_for(self, user: str) -> UserLimits:
        """The user's own table, or the defaults."""
        return self.users.get(user, self.defaults)

    def submit_limit_for(self, user: str, hub_groups: Iterable[str] = ()) -> Optional[SubmitLimit]:
        """The user's submit bucket: from the user's own table, else each of ``submit_rate``
        and ``submit_burst`` from the user's group (``group_of``) where it sets one, else from
        the defaults; None: no limit."""
        own = self.users.get(user)
        if own is not None:
            rate, burst = own.submit_rate, own.submit_burst
        else:
            rate, burst = self.defaults.submit_rate, self.defaults.submit_burst
            group = self.groups.get(self.group_of(user, hub_groups) or "")
            if group is not None:
                rate = group.submit_rate if group.submit_rate is not None else rate
                burst = group.submit_burst if group.submit_burst is not None else burst
        return SubmitLimit(rate, burst) if rate else None


def single_node_config(gpus: int, node: str = "local", pool: str = "default") -> QueueConfig:
    """The embedded mode's default: one pool holding this machine with ``gpus`` GPUs."""
    return QueueConfig(pools={pool: PoolConfig(nodes={node: gpus})})


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The TOML table in ``path``; BadRequest naming ``what`` (e.g. "config file") and the
    problem if it is missing or not TOML."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise BadRequest(f"{what} {p} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise BadRequest(f"{what} {p} is not valid TOML: {e}") from None


def load_config(path: str | Path) -> QueueConfig:
    """Read and validate a TOML config. Raises BadRequest with the file, key and fix."""
    p = Path(path)
    raw = read_toml(p, "config file")
    try:
        return QueueConfig.model_validate(raw)
    except ValidationError as e:
        raise BadRequest(f"config file {p}: {format_validation_error(e)}") from None


def format_validation_error(e: ValidationError) -> str:
    """One line per problem: ``key.path: message``."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)
