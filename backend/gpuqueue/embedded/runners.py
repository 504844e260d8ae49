"""The embedded queue's runners: each attempt runs under ``gpuqueue.attempt.runner``, a process
in its own session that outlives the server, under its guard (``gpuqueue.attempt.guard``: it
ends what a killed runner's job left before the attempt is settled). One runner is kept warm (started ahead, and once
primed with the next cell job's interpreter) from the server's first submit on."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from ..attempt import orphans
from ..attempt.pids import still_runs
from ..attempt.launch import build_launch, runner_env
from ..attempt.warmjob import warm_spec
from ..queue.config import QueueConfig
from ..queue.models import Attempt, JobSpec
from .store import SqliteStore

log = logging.getLogger("gpuqueue.service")


class Runners:
    """The service's part that starts, keeps warm and checks runners (a mixin of
    ``QueueService``, which sets the attributes below)."""

    store: Optional[SqliteStore]
    state_dir: Path
    config: QueueConfig
    _procs: dict[int, subprocess.Popen[bytes]]
    _warm: Optional[subprocess.Popen[bytes]]
    _last_python: Optional[str]
    _warm_primed: bool
    _warm_wanted: bool
    _sizes: dict[str, tuple[Path, int]]
    _tail_wake: asyncio.Event

    def _warn_missing_warm_imports(self) -> None:
        """Name the modules of a ``warm_imports`` the config sets that this server's Python
        cannot find: a module that is not installed is skipped, so a misspelt name made every
        cell job start cold without a word (the default's ``torch`` is skipped quietly)."""
        if "warm_imports" not in self.config.model_fields_set:
            return
        missing = [m for m in self.config.warm_imports if importlib.util.find_spec(m.split(".")[0]) is None]
        if missing:
            log.warning("warm_imports: %s not installed for %s: cell jobs are started without %s; "
                        "fix the name%s in the queue config, or install %s", ", ".join(map(repr, missing)),
                        sys.executable, "it" if len(missing) == 1 else "them", "" if len(missing) == 1 else "s",
                        "it" if len(missing) == 1 else "them")

    def _take_runner(self) -> subprocess.Popen[bytes]:
        """The warm runner (started ahead of time) if it is alive, else a new one."""
        proc = self._warm
        self._warm = None
        if proc is None or proc.poll() is not None:
            proc = self._new_runner()
        return proc

    def _new_runner(self) -> subprocess.Popen[bytes]:
        """A runner in its own session (it outlives this server), waiting on stdin. Once primed
        it starts the next cell job's interpreter ahead (``gpuqueue.attempt.warmjob``)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpuqueue.attempt.runner", "--guard", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            env=runner_env(),
        )
        self._warm_primed = False
        return proc

    def _prime_warm_runner(self) -> None:
        """Have the warm runner start the next cell job's interpreter now (its imports take CPU
        time: only while no job runs, so that they never slow one down)."""
        proc = self._warm
        if proc is None or self._warm_primed or self.store is None:
            return
        if self._sizes:  # an attempt is active (known in memory: no store query per pass)
            return
        self._warm_primed = True
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(self._warm_spec()).encode() + b"\n")
            proc.stdin.flush()
        except (OSError, ValueError) as e:  # its job starts cold
            log.warning("cannot prepare a warm job interpreter: %s", e)

    def _warm_spec(self) -> dict[str, Any]:
        """What the next cell job's interpreter is started with: the interpreter of the last
        cell job (the kernel's), the environment ``build_launch`` gives a cell job here."""
        spec = JobSpec(kind="cell", python=self._last_python or sys.executable)
        jd = self.state_dir / "jobs" / "next"
        env = build_launch("next", spec, jd, jd / "1", 1, [], "local")["env"]
        return warm_spec(spec.python or sys.executable, env, self.config.warm_imports)

    def _retire_warm_runner(self, wait: bool = False) -> None:
        """End the warm runner (EOF: it exits without running anything, its job interpreter too)."""
        proc, self._warm = self._warm, None
        if proc is None:
            return
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        if not wait:
            self._procs[proc.pid] = proc  # reaped by the tail loop
            self._tail_wake.set()
            return
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()

    def _keep_runner_warm(self) -> None:
        """Have a runner (and, once primed, a job interpreter) ready for the next launch, from
        the server's first submit on."""
        if not self._warm_wanted:
            return
        if self._warm is None or self._warm.poll() is not None:
            try:
                self._warm = self._new_runner()
            except OSError as e:
                log.warning("cannot start a warm runner: %s", e)
        self._prime_warm_runner()

    def _runner_alive(self, a: Attempt) -> bool:
        """Whether the attempt's runner or its guard (``gpuqueue.attempt.guard``: the attempt's
        pid, the process this server started) still runs. The guard ends only once what a killed
        runner left is gone; a runner whose guard was killed ends its job and records it, and is
        seen in its guard's session (``orphans.session_alive``) until then."""
        if not a.pid:
            return False
        proc = self._procs.get(a.pid)
        if proc is not None:
            if proc.poll() is None:
                return True
        else:
            if still_runs(a.pid, a.pid_started):
                return True
        return orphans.session_alive(a.pid)
