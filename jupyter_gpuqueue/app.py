"""The Jupyter server extension: an ExtensionApp that owns the queue service and its REST API."""

from __future__ import annotations

import logging
import os
from copy import deepcopy
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, cast

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Enum, Float, Int, List, TraitError, Unicode, default
from traitlets.config import Config, DeferredConfig, LazyConfigValue

from gpuqueue.queue.config import load_config
from gpuqueue.queue.errors import GPUQueueError
from gpuqueue.queue.durations import KEEP_FINISHED, parse_retention
from gpuqueue.attempt.gpus import local_gpu_count
from gpuqueue.embedded.service import QueueService
from gpuqueue.scheduler import make_scheduler

from .handlers import handlers, register_job_event
from .queue_off import QueueOff

if TYPE_CHECKING:
    from jupyter_server.serverapp import ServerApp

    from .remote import RemoteService


# the extension's own lines go where gpuqueue's do (setup_logging below); ExtensionApp.log
# printed them as blank lines in the server's log
log = logging.getLogger("gpuqueue.jupyter")

TOKEN_ON_COMMAND_LINE = (
    "GPUQueueApp.api_token was given on the command line, which every user of this machine can read "
    "(/proc/PID/cmdline), so it is not used and the queue is off: set $GPUQUEUE_API_TOKEN instead, or "
    "c.GPUQueueApp.api_token in a config file only you can read, and restart the server"
)


EMBEDDED_UNDER_HUB = (
    "this JupyterHub user server runs an embedded queue of its own: its jobs run here, on this "
    "server's machine, not on the cluster; for the cluster, set GPUQUEUE_API_URL in the hub's "
    "c.Spawner.environment (docs/deploy.md, JupyterHub)"
)


class GPUQueueApp(ExtensionApp):
    """GPU queue for Jupyter. Configure with ``c.GPUQueueApp.<trait>`` in jupyter_server_config."""

    name = "jupyter_gpuqueue"
    load_other_extensions = True
    # embedded, forwarding to the cluster's API (api_url), or off (a setting that cannot be used)
    service: Union[QueueService, RemoteService, QueueOff]

    state_dir = Unicode(
        help="Folder of the embedded queue's SQLite file and job folders. "
        "Default: $GPUQUEUE_STATE_DIR, else <jupyter data dir>/gpuqueue.",
    ).tag(config=True)

    gpus = Int(
        None,
        allow_none=True,
        min=0,
        help="GPUs to schedule on this machine. Default: $GPUQUEUE_GPUS, else what NVML finds, else 0. "
        "Declaring a count on a machine without GPUs is how demos and tests run.",
    ).tag(config=True)

    config_file = Unicode(
        "",
        help="TOML file with pools, quotas and policy (docs/config.md). Default: $GPUQUEUE_CONFIG; "
        "without one, a single pool 'default' holds this machine's GPUs.",
    ).tag(config=True)

    policy = Enum(
        ["gpuqueue", "fifo"], "gpuqueue",
        help="Scheduling policy: 'gpuqueue' (fair share, docs/scheduling.md) or 'fifo' (strict "
        "arrival order, no backfill; it enforces queue depth limits only: over a config with other "
        "quotas the fair-share policy runs instead, and the log says why).",
    ).tag(config=True)

    admin_users = List(
        Unicode(),
        help="Users who see and manage every job. The server's own user is always an admin "
        "in embedded mode.",
    ).tag(config=True)

    stop_grace_s = Float(
        10.0, min=0.0, help="Seconds a job has to stop (and checkpoint) after cancel/preempt/timeout."
    ).tag(config=True)

    max_payload_mb = Float(200.0, min=0.001, help="Largest cell payload (inputs) accepted, in MB.").tag(
        config=True
    )

    keep_finished = Unicode(
        KEEP_FINISHED,
        help="How long a finished job is kept (its record, logs, results and checkpoints), e.g. "
        "7d or 12h; 'forever' keeps every one. Older ones are deleted every minute (as the "
        "cluster scheduler's --keep-finished does). A value that cannot be read keeps every "
        "one (and says so in the log): nothing is deleted on a typo.",
    ).tag(config=True)

    export_env = Bool(
        True,
        help="Set GPUQUEUE_URL and GPUQUEUE_TOKEN in the server's environment so kernels it "
        "starts find it with no configuration.",
    ).tag(config=True)

    @default("state_dir")
    def _default_state_dir(self) -> str:
        return os.environ.get("GPUQUEUE_STATE_DIR") or str(Path(jupyter_data_dir()) / "gpuqueue")

    @default("config_file")
    def _default_config_file(self) -> str:
        return os.environ.get("GPUQUEUE_CONFIG", "")

    api_url = Unicode(
        "",
        help="Cluster mode: URL of the `gpuqueue api` service (e.g. http://gpuqueue-api:8780/). "
        "When set, every REST verb is forwarded there instead of running an embedded queue. "
        "Default: $GPUQUEUE_API_URL (a JupyterHub config sets it for user servers).",
    ).tag(config=True)

    api_token = Unicode(
        "",
        help="Cluster mode: this server's token for the API service (its users file names the "
        "user it stands for). Default: $GPUQUEUE_API_TOKEN, else (in a JupyterHub user server, "
        "the API running as a hub service) the server's own $JUPYTERHUB_API_TOKEN.",
    ).tag(config=True)

    @default("api_url")
    def _default_api_url(self) -> str:
        # a hub config sets it for every user server: c.Spawner.environment (docs/deploy.md)
        return os.environ.get("GPUQUEUE_API_URL", "")

    @default("api_token")
    def _default_api_token(self) -> str:
        return os.environ.get("GPUQUEUE_API_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN", "")

    log_format = Enum(
        ["", "json", "human", "auto"], "",
        help="Format of gpuqueue's own log records: 'json' (one object a line, with job id, "
        "user, attempt and node), 'human', or '' for $GPUQUEUE_LOG_FORMAT, else human on a "
        "terminal and JSON otherwise.",
    ).tag(config=True)

    def _load_config(self, cfg: Config, section_names: Any = None, traits: Any = None) -> None:
        """Load the settings as traitlets does, but one that cannot be used (a value of the
        wrong kind, an option gpuqueue does not have) is left out and kept in
        ``config_errors``, instead of failing the whole section: traitlets would stop at the
        first bad value and drop the ones after it (``api_url`` among them: an embedded queue
        where the admin meant the cluster). ``initialize_settings`` then turns the queue off."""
        errors: dict[str, str] = self.__dict__.setdefault("config_errors", {})
        if traits is None:
            traits = self.traits(config=True)
        mine = self._find_my_config(cfg)
        own = cfg["GPUQueueApp"] if cfg._has_section("GPUQueueApp") else {}
        bad = []
        for name, value in mine.items():
            if name in traits:
                try:
                    if isinstance(value, DeferredConfig):  # a command-line string
                        value = value.get_value(traits[name])
                    if not isinstance(value, LazyConfigValue):
                        traits[name]._validate(self, value)
                except (TraitError, ValueError) as e:
                    errors[name] = f"GPUQueueApp.{name} cannot be used: {str(e).rstrip('.')}"
                    bad.append(name)
                    continue
                errors.pop(name, None)
            elif name in own and not isinstance(value, Config):
                near = get_close_matches(name, list(traits), n=1)
                errors[name] = (f"GPUQueueApp.{name} is not a gpuqueue setting"
                                + (f" (did you mean {near[0]}?)" if near else "")
                                + "; docs/config.md lists the GPUQueueApp settings")
                bad.append(name)
        if bad:  # load the rest
            cfg = deepcopy(cfg)
            for section in self.section_names():
                if cfg._has_section(section):
                    for name in bad:
                        cfg[section].pop(name, None)
        super()._load_config(cfg, section_names, traits)

    def _why_off(self) -> str:
        """Why the queue must stay off with these settings ('' if it may run)."""
        errors = list(self.__dict__.get("config_errors", {}).values())
        if errors:
            return "; ".join(errors) + (
                ". The queue is off until this is fixed (in jupyter_server_config.py or on the "
                "server's command line) and the server restarted")
        if self.api_url and self._token_on_command_line():
            return TOKEN_ON_COMMAND_LINE
        return ""

    def _turn_off(self, why: str) -> None:
        """Serve every verb with a 503 that says ``why`` (see ``queue_off``), logged once."""
        log.error("gpuqueue: %s", why)
        self.service = QueueOff(why)
        self.settings["gpuqueue_service"] = self.service
        self.settings["gpuqueue_app"] = self

    def initialize_settings(self) -> None:
        """Build the service (started later, once the event loop runs)."""
        from gpuqueue.observability.logs import setup_logging

        try:
            setup_logging(self.log_format or None, logger="gpuqueue", component="jupyter")
            why = self._why_off()
        except ValueError as e:  # a log format or level that cannot be read
            setup_logging("json", logger="gpuqueue", component="jupyter", level="INFO")
            why = (f"{e} (GPUQueueApp.log_format, $GPUQUEUE_LOG_FORMAT, $GPUQUEUE_LOG_LEVEL). The queue "
                   "is off until this is fixed and the server restarted")
        if why:
            self._turn_off(why)
            return
        if self.api_url:  # cluster mode: forward to the API service (no Redis credentials here)
            from .remote import RemoteService

            self.service = RemoteService(self.api_url, self.api_token)
            self.settings["gpuqueue_service"] = self.service
            self.settings["gpuqueue_app"] = self
            log.info("gpuqueue: cluster mode, forwarding to %s%s", self.api_url,
                     "" if os.environ.get("GPUQUEUE_API_TOKEN") or not os.environ.get("JUPYTERHUB_API_TOKEN")
                     else " with this hub user's own token")
            return
        try:
            config = load_config(self.config_file) if self.config_file else None
        except GPUQueueError as e:
            self._turn_off(f"{e}. The queue is off until the file is fixed (docs/config.md) and the server restarted")
            return
        try:
            keep_finished = parse_retention(self.keep_finished)
        except ValueError as e:
            log.error("gpuqueue: GPUQueueApp.keep_finished: %s; until it is fixed, finished jobs are kept", e)
            keep_finished = None
        policy = self.policy
        if config is not None:
            try:
                make_scheduler(config, policy)  # FIFO over a config with quotas it would not enforce
            except ValueError as e:
                log.error("gpuqueue: GPUQueueApp.policy: %s; the fair-share policy runs instead, which does", e)
                policy = "gpuqueue"
        try:
            gpus = local_gpu_count(self.gpus)
        except ValueError as e:  # $GPUQUEUE_GPUS that is not a count
            self._turn_off(f"{e}. The queue is off until this is fixed and the server restarted")
            return
        self.service = QueueService(
            state_dir=self.state_dir,
            config=config,
            gpus=gpus,
            policy=policy,
            stop_grace_s=self.stop_grace_s,
            max_payload_bytes=int(self.max_payload_mb * 1e6),
            keep_finished=keep_finished,
        )
        self.settings["gpuqueue_service"] = self.service
        self.settings["gpuqueue_app"] = self
        log.info(
            "gpuqueue: embedded queue in %s, pools %s",
            self.state_dir,
            {p: c.total_gpus for p, c in self.service.config.pools.items()},
        )
        if os.environ.get("JUPYTERHUB_API_TOKEN"):  # a hub's user server that was given no API URL
            log.warning("gpuqueue: %s", EMBEDDED_UNDER_HUB)

    def _token_on_command_line(self) -> bool:
        cli: Any = getattr(self.serverapp, "cli_config", None)  # what the server's command line set
        return bool(cli) and "GPUQueueApp" in cli and "api_token" in cli["GPUQueueApp"]

    def initialize_handlers(self) -> None:
        """Register the REST routes under <base_url>gpuqueue/api/, and the event they emit."""
        self.handlers.extend(handlers())
        register_job_event(getattr(self.serverapp, "event_logger", None))

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        try:
            await self.service.start()
        except (OSError, RuntimeError) as e:  # a state folder it cannot use, another server's queue
            self._turn_off(f"the queue cannot start in {self.state_dir}: {_reason(e)}. The queue is off until "
                           "this is fixed (GPUQueueApp.state_dir, $GPUQUEUE_STATE_DIR) and the server restarted")
            serverapp.web_app.settings["gpuqueue_service"] = self.service
        from .metrics_handler import setup_metrics

        setup_metrics(serverapp.web_app.settings)  # count from the start, not the first scrape
        if self.export_env:
            self._export_env(serverapp)

    def _export_env(self, serverapp: Any) -> None:
        url = f"http://127.0.0.1:{serverapp.port}{serverapp.base_url}"
        os.environ["GPUQUEUE_URL"] = url
        token = getattr(serverapp.identity_provider, "token", "") or ""
        if token:
            os.environ["GPUQUEUE_TOKEN"] = token

    async def stop_extension(self) -> None:
        """Stop the loops; running jobs go on and are re-adopted by the next server."""
        await self.service.stop()

    identity = Enum(
        ["auto", "user", "server_owner"], "auto",
        help="Who owns a job: 'user' (the authenticated user's name, as with JupyterHub), "
        "'server_owner' (everyone who can reach this personal server is its owner), or 'auto' "
        "(server_owner with jupyter_server's own token/password login, which names each "
        "token request a random anonymous user; user otherwise).",
    ).tag(config=True)

    def owner_of(self, user: Any) -> str:
        """The job owner for an authenticated request's user."""
        mode = self.identity
        if mode == "auto":
            # the server this extension was loaded into: set before any request comes
            provider = type(cast("ServerApp", self.serverapp).identity_provider)
            mode = "server_owner" if provider.__module__.startswith("jupyter_server.") else "user"
        if mode == "server_owner":
            return _server_owner()
        return getattr(user, "username", None) or str(user)

    def is_admin(self, username: str) -> bool:
        """Admins: those listed in ``admin_users``, and the server's own user (in embedded
        mode on a personal server, its owner manages the whole queue)."""
        return username in self.admin_users or username == _server_owner()


def _reason(e: BaseException) -> str:
    """An OS error as its message and path ("Permission denied: '/srv/q'"), others as their text."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename!r}" if e.filename else e.strerror
    return str(e)


def _server_owner() -> str:
    return os.environ.get("JUPYTERHUB_USER") or _os_user() or "owner"


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return ""
