"""The scheduler daemon's ``--config`` file, read again when the daemon takes the lead: a
standby waits for hours, and an admin who edits the file and restarts the leader (docs/deploy.md,
"Growing to many nodes") expects the daemon that takes over to lead with the edited file, not
with the one it read at its own start. A file it cannot read then leaves it on the config it had,
and its log says what to fix."""

from __future__ import annotations

import logging
from typing import Any

from ..queue.config import QueueConfig, load_config
from ..queue.errors import GPUQueueError
from ..scheduler import make_scheduler

log = logging.getLogger("gpuqueue.daemon")

MAX_CHANGES_SAID = 12  # changes named in the log line; the rest are counted


def reread(path: str, policy: str, current: QueueConfig) -> QueueConfig:
    """The config in ``path`` now, with its changes from ``current`` logged; ``current`` (and
    an error naming the fix) when the file cannot be read, is not valid, or ``policy`` refuses
    it."""
    try:
        new = load_config(path)
        make_scheduler(new, policy)  # e.g. FIFO over a config with quotas: refused
    except (GPUQueueError, ValueError, OSError) as e:
        log.error("taking the lead: cannot read the config again (%s); leading with the config this daemon read "
                  "before. Fix %s, then restart the leading daemon (the next one to lead reads it again)", e, path)
        return current
    changes = config_changes(current.model_dump(mode="json"), new.model_dump(mode="json"))
    if not changes:
        log.info("taking the lead: config %s read again: unchanged", path)
    else:
        said = changes[:MAX_CHANGES_SAID] + ([f"and {len(changes) - MAX_CHANGES_SAID} more"]
                                             if len(changes) > MAX_CHANGES_SAID else [])
        log.info("taking the lead: config %s read again: %s", path, "; ".join(said))
    return new


def config_changes(old: Any, new: Any, at: str = "") -> list[str]:
    """What differs between two configs as JSON values, one short line per key:
    ``pools.gpu.nodes.n2: added (1)``, ``defaults.max_gpus: 1 -> 2``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{at}.{key}" if at else str(key)
            if key not in old:
                out.append(f"{name}: added ({_short(new[key])})")
            elif key not in new:
                out.append(f"{name}: removed (was {_short(old[key])})")
            else:
                out += config_changes(old[key], new[key], name)
        return out
    return [] if old == new else [f"{at or '(top)'}: {_short(old)} -> {_short(new)}"]


def _short(v: Any) -> str:
    text = str(v)
    return text if len(text) <= 60 else text[:57] + "..."

