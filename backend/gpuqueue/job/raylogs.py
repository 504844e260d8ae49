"""What a job run through Ray Train (embedded mode, ``--nodes M``) shows: its ranks' own output,
not Ray's.

Each rank's process writes through its Ray worker, which marks every line with the rank
(:data:`RANK_LINE`, as torchrun ranks do: :func:`gpuqueue.job.distributed._copy_marked`). Ray
brings the workers' output to the driver (the launcher); :class:`RayOutput` replaces Ray's
printer there: a marked line is the job's (rank 0's as it is, another rank's shown ``[rankN]``
by the runner), every other line (Ray's controllers and workers: their logs, the
``Error in training function`` traceback, ``[repeated 3x across cluster]``) and the driver's
own Ray log records go to :data:`RAY_LOG` in the attempt's folder, which the launcher names
when the job fails.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import IO, Any, Optional

RAY_LOG = "ray.log"  # in the attempt's folder
RAY_LOG_DRAIN_S = 1.5  # the ranks' output reaches the driver through Ray's log monitor, a moment late
RANK_LINE = "\x1b]gpuqueue-rank;"  # = gpuqueue.job.distributed.RANK_LINE, as text


class RayOutput:
    """The driver's side (see the module docstring). :meth:`before_init` before ``ray.init``,
    :meth:`after_init` after it, :meth:`close` at the end."""

    def __init__(self, attempt_dir: str, runner: bool) -> None:
        self.path = os.path.join(attempt_dir, RAY_LOG)
        self.runner = runner  # under gpuqueue's runner, which shows RANK_LINE lines as [rankN]
        self._lock = threading.Lock()
        self._file: Optional[IO[str]] = None
        self._handler: Optional[logging.Handler] = None
        self.installed = False  # the ranks' output goes through handle()

    @property
    def logging_to_file(self) -> bool:
        """The driver's Ray log records go to the file (``ray.init(configure_logging=False)``)."""
        return self._file is not None

    def before_init(self) -> None:
        """Send the driver's Ray log records (``Started a local Ray instance``, warnings) to the
        file. Ray's ``configure_logging=False`` leaves its logger without a handler of its own."""
        try:
            self._file = open(self.path, "a", buffering=1, encoding="utf-8", errors="replace")
        except OSError:
            return  # Ray's output then shows as Ray prints it
        self._handler = logging.StreamHandler(self._file)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(self._handler)
        root.setLevel(logging.INFO)
        logging.getLogger("ray").propagate = True

    def after_init(self) -> None:
        """Put :meth:`handle` in place of Ray's printer of the workers' output (an internal of
        Ray's: where it is not there, Ray prints as it does)."""
        if self._file is None:
            return
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

            dispatcher.remove_handler("ray_print_logs")
            dispatcher.add_handler("gpuqueue_ranks", self.handle)
        except (ImportError, AttributeError, TypeError):
            return
        self.installed = True

    def handle(self, data: dict[str, Any]) -> None:
        """One batch of a Ray process's output lines (``lines``, ``is_err``, ``pid``, ...)."""
        sink = sys.stderr if data.get("is_err") else sys.stdout
        who = f"({data.get('actor_name') or data.get('task_name') or ''} pid={data.get('pid')}) ".replace("( ", "(")
        job: list[str] = []
        other: list[str] = []
        for line in data.get("lines") or []:
            i = line.find(RANK_LINE) if isinstance(line, str) else -1
            if i < 0:
                other.append(who + str(line))
                continue
            rank, _, text = line[i + len(RANK_LINE):].partition(";")
            if rank == "0":
                job.append(text)
            else:
                job.append(f"{RANK_LINE}{rank};{text}" if self.runner else f"[rank{rank}] {text}")
        with self._lock:
            if job:
                try:
                    sink.write("".join(x + "\n" for x in job))
                    sink.flush()
                except (OSError, ValueError):
                    pass
            if other and self._file is not None:
                try:
                    self._file.write("".join(x + "\n" for x in other))
                except (OSError, ValueError):
                    pass

    def close(self) -> None:
        """Stop writing to the file."""
        with self._lock:
            if self._handler is not None:
                logging.getLogger().removeHandler(self._handler)
            if self._file is not None:
                self._file.close()
                self._file = None
