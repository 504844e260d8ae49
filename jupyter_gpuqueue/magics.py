"""``%%train`` and ``%gpuqueue``: run a cell as a queued GPU job, and manage jobs.

``%%train --priority high --gpus 2`` packages the cell with the notebook names it reads, sends
it to the Jupyter server's queue, shows its output live, and when it succeeds puts the names the
cell assigned back into the notebook. Interrupting the kernel stops waiting, not the job.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import shlex
import sys
import types
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, cast

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class

from gpuqueue.rest.client import Client
from gpuqueue.queue import ckptref
from gpuqueue.queue.durations import MAX_TIMEOUT_S, format_duration, parse_duration
from gpuqueue.queue.errors import GPUQueueError
from gpuqueue.queue.models import JobSpec
from gpuqueue.job.payload import PreflightError, build_payload, source_hash, unpack_results
from gpuqueue.queue.states import STATE_GROUPS
from gpuqueue.queue.text import pending_text

from .cellcheck import largest_inputs, syntax_error_message, undefined_names_warning
from .display import JobView, TextView, say_why_it_waits, use_widgets
from .prefetch import modules_coming_back, prefetch

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

TERMINAL = set(STATE_GROUPS["terminal"])
MAX_RETRIES = next(m.le for m in JobSpec.model_fields["retries"].metadata if hasattr(m, "le"))
"""The most ``--retries`` a job may ask for (the server's own bound)."""


NOT_RETURNED_HINT = (
    "[gpuqueue] the names above stay in the job (the others came back): save what you need of one "
    "to a file in the cell (e.g. trainer.save_model(path)), or name only what should come back "
    "with --outputs a,b"
)
"""Said once under the names a succeeded cell assigned that could not come back."""


class RemoteJobError(Exception):
    """The job failed; shown like a local error, with the job's own traceback."""

    def __init__(self, job: dict[str, Any]):
        self.job = job
        attempt = (job.get("attempts") or [{}])[-1]
        self.remote_traceback = attempt.get("message") or job.get("error") or ""
        super().__init__(f"job {job['id']} {job['state']}: {job.get('error') or _why_ended(job)}")

    def _render_traceback_(self) -> list[str]:
        """IPython shows this instead of a local traceback."""
        tries = len(self.job.get("attempts") or [])
        head = f"Job {self.job['id']} {self.job['state']} " + (f"(attempt {tries})" if tries else "(before it started)")
        lines = [head, "Remote traceback:"] if self.remote_traceback else [head]
        lines += self.remote_traceback.rstrip("\n").splitlines()
        if not self.remote_traceback:
            lines.append(str(self))
        return lines


def _why_ended(job: dict[str, Any]) -> str:
    """Why a job that did not succeed ended, when its record carries no error text."""
    if job["state"] == "timed_out":
        limit = (job.get("spec") or {}).get("timeout_s")
        of = f" of {format_duration(limit)}" if limit else " (its pool's longest run)"
        return f"it ran past its time limit{of}; a longer --timeout gives it more time"
    if job["state"] == "cancelled":
        return "it was cancelled before it finished; it has no results to bring back"
    return str(job["state"])


class _HelpShown(Exception):
    """``--help`` was asked for: its text is printed, and nothing is run."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (a clean message in the cell) instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}{self._hint(message)}\n{self.format_usage().strip()}")

    def _hint(self, message: str) -> str:
        """For words it does not know: the option a typo was meant to be, or, for a stray
        value, that each option takes one word (``--timeout 2 hours``)."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        words = message.split(":", 1)[1].split()
        known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        for word in words:
            if word.startswith("-"):
                close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.8)
                return f" (did you mean {close[0]}?)" if close else f" ({word.split('=', 1)[0]} is not an option)"
        return f" (each option takes one value: {words[0]!r} follows one that took its value; quote a value with spaces)"

    def print_help(self, file: Any = None) -> None:
        """``--help``: the options on stdout, then stop (not an error: *Run All* goes on)."""
        print(self.format_help(), file=file or sys.stdout, flush=True)
        raise _HelpShown

    def exit(self, status: int = 0, message: Optional[str] = None) -> None:  # type: ignore[override]
        raise UsageError(message or self.format_help())


def _names(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise UsageError(f"not Python names: {', '.join(bad)} (write e.g. --inputs data,config)")
    return names


def train_parser() -> _Parser:
    """The ``%%train`` option parser."""
    p = _Parser(prog="%%train", add_help=True, description="Run this cell as a queued GPU job.")
    p.add_argument("--priority", choices=["high", "medium", "low"], default="medium",
                   help="order among your and others' jobs (default medium)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs (default 0: CPU)")
    p.add_argument("--nodes", type=int, default=1, help="nodes to span (Ray)")
    p.add_argument("--pool", help="pool name (default: the first configured)")
    p.add_argument("--name", help="a name for the job")
    p.add_argument("--timeout", help="time limit, e.g. 30m or 2h")
    p.add_argument(
        "--retries", type=int, default=0,
        help="retries after a failure (default 0: an exception in a cell is usually not worth "
        "re-running; preemption and node loss always requeue)",
    )
    p.add_argument("--inputs", help="names to send, comma-separated (default: what the cell reads)")
    p.add_argument("--outputs", help="names to bring back (default: what the cell assigns)")
    p.add_argument("--background", action="store_true", help="return at once; the job goes on")
    p.add_argument("--new", action="store_true", help="submit even if this cell's job is still active")
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"],
                   help="for gpuqueue.distributed.autocast() and a Hugging Face Trainer (default fp32)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="turn on gradient checkpointing in a Hugging Face Trainer")
    p.add_argument("--resume-from", metavar="JOB_ID[/step-N]|PATH",
                   help="checkpoint to resume from: one of your jobs' (its latest, or step N, as "
                   "`%%gpuqueue checkpoints JOB_ID` lists them; on any node), or a folder or .pt file")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="set an environment variable in the job (again for more), e.g. "
                   "--env OMP_NUM_THREADS=4; not for secrets: the job's record shows it")
    return p


def _env(pairs: list[str]) -> dict[str, str]:
    """``--env NAME=VALUE`` options as a dict (the server checks the names and sizes)."""
    env: dict[str, str] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name:
            raise UsageError(f"--env {pair!r}: write --env NAME=VALUE, e.g. --env OMP_NUM_THREADS=4")
        env[name] = value
    return env


@magics_class
class GPUQueueMagics(Magics):
    """The magics; one Client per kernel, made on first use."""

    view_factory: Any = TextView  # the text view; the widget is used where widgets render

    def __init__(self, shell: Any):
        super().__init__(shell)
        self._client: Optional[Client] = None
        self.last_view: Any = None  # the newest job widget (tests and debugging read it)
        self.last_dashboard: Any = None
        self._asked_outputs: dict[str, list[str]] = {}  # job id -> the names --outputs named

    @property
    def _user_ns(self) -> dict[str, Any]:
        """The notebook's names. Magics.shell may be None, but not here: these magics are made
        on the kernel's shell (``load_ipython_extension``)."""
        return cast("InteractiveShell", self.shell).user_ns

    @property
    def client(self) -> Client:
        if self._client is None:
            try:
                self._client = Client()
            except GPUQueueError as e:
                raise UsageError(str(e)) from None
        return self._client

    # -- %%train ----------------------------------------------------------------------------
    @line_cell_magic
    def train(self, line: str, cell: Optional[str] = None) -> None:
        """Run the cell as a queued job: ``%%train --gpus 1 --priority high``. The line form
        only answers ``%train --help`` (IPython refuses a ``%%train`` cell with no body)."""
        try:
            args = train_parser().parse_args(shlex.split(line))
        except ValueError as e:
            raise UsageError(f"%%train: cannot read the options: {e}") from None
        except _HelpShown:
            return
        if cell is None:
            raise UsageError("%%train runs a cell: put `%%train OPTIONS` on the first line of the "
                             "cell that trains (two %); `%train --help` lists the options")
        spec = self._spec(args, cell)
        try:
            compile(cell, "<gpuqueue-cell>", "exec", dont_inherit=True)  # as the job will
            payload, inputs, outputs = build_payload(
                cell, self._user_ns, _names(args.inputs), _names(args.outputs)
            )
        except SyntaxError as e:
            raise UsageError(syntax_error_message(e)) from None
        except PreflightError as e:
            raise UsageError(str(e)) from None
        spec.update(inputs=inputs, outputs=outputs)
        if args.resume_from:
            self._check_resume_from(args.resume_from)
        warning = undefined_names_warning(cell, inputs)
        try:
            job = self.client.submit(spec, payload, new=args.new)
        except GPUQueueError as e:
            hint = largest_inputs(str(e), payload) or (self._no_gpus_hint() if args.gpus else "")
            raise UsageError(f"the job was not queued: {e}{hint}") from None
        if warning and not job.get("attached"):  # a warning, not a refusal: the line that reads it may never run
            # (a re-run cell that attached to its job, e.g. after a kernel restart, has the names it was sent)
            print(warning, file=sys.stderr, flush=True)
        if args.outputs is not None:
            self._asked_outputs[job["id"]] = outputs
        if not args.background:  # what the results will import, imported while the job runs
            prefetch(modules_coming_back(cell, outputs))
        self._follow(job, background=args.background)

    def _check_resume_from(self, path: str) -> None:
        """A ``--resume-from`` path that is not there fails the job only once it has waited its
        turn: refused now where the job runs on this machine (embedded mode), else a warning
        (a cluster's nodes may see files this kernel does not). URLs (``s3://``) and job
        references (``j-.../step-N``, ``gpuqueue.queue.ckptref``) are not checked here."""
        if "://" in path or ckptref.is_ref(path) or os.path.exists(os.path.expanduser(path)):  # fsspec expands ~ too
            return  # a job reference (j-.../step-N) is checked by the server, which resolves it
        what = (f"--resume-from {path}: no such file or folder (give a checkpoint folder, such as "
                "one `%gpuqueue checkpoints ID` lists, or a .pt file)")
        try:
            embedded = self.client.queue().get("mode") == "embedded"
        except GPUQueueError:
            embedded = False
        if embedded:
            raise UsageError(f"{what}; nothing was queued")
        print(f"[gpuqueue] warning: {what}: the job stops with FileNotFoundError when it loads it, "
              "unless the node it runs on has it", file=sys.stderr, flush=True)

    def _no_gpus_hint(self) -> str:
        """For a refused GPU job: when this embedded queue has no GPU at all (no NVIDIA GPU
        found, none declared), how to declare some, as the README's tour says."""
        try:
            queue = self.client.queue()
        except GPUQueueError:
            return ""
        pools = queue.get("pools") or {}
        if queue.get("mode") != "embedded" or any(p.get("gpus_total") for p in pools.values()):
            return ""
        return (". This Jupyter server has no GPUs: it found no NVIDIA GPU and none were declared. "
                "To try the queue without GPUs, start it with GPUQUEUE_GPUS=2 in its environment "
                "(two declared GPUs); --gpus 0 runs the cell on the CPU")

    def _spec(self, args: argparse.Namespace, cell: str) -> dict[str, Any]:
        for flag, value in (("--gpus", args.gpus), ("--nodes", args.nodes)):
            if value < 0 or (flag == "--nodes" and value < 1):
                raise UsageError(f"{flag} must be {'1' if flag == '--nodes' else '0'} or more, got {value}")
        if args.retries is not None and not 0 <= args.retries <= MAX_RETRIES:
            raise UsageError(f"--retries must be 0 to {MAX_RETRIES} (retries after a failure), got {args.retries}")
        spec: dict[str, Any] = {
            "kind": "cell",
            "priority": args.priority,
            "gpus": args.gpus,
            "nodes": args.nodes,
            "python": sys.executable,
            "cwd": os.getcwd(),
            "source_hash": source_hash(cell),
            "grad_checkpointing": args.grad_checkpointing,
        }
        if args.timeout:
            try:
                spec["timeout_s"] = parse_duration(args.timeout, MAX_TIMEOUT_S)
            except ValueError as e:
                raise UsageError(f"--timeout: {e}") from None
        if args.env:
            spec["env"] = _env(args.env)
        for key in ("pool", "name", "retries", "precision", "resume_from"):
            if getattr(args, key) is not None:
                spec[key] = getattr(args, key)
        notebook, cell_id = self._where()
        if notebook:
            spec["notebook"] = notebook
        if cell_id:
            spec["cell_id"] = cell_id
        return spec

    def _where(self) -> tuple[Optional[str], Optional[str]]:
        """The notebook path and the running cell's id, when the frontend says them."""
        notebook = os.environ.get("JPY_SESSION_NAME")
        cell_id = None
        kernel = getattr(self.shell, "kernel", None)
        if kernel is not None:
            try:
                cell_id = (kernel.get_parent() or {}).get("metadata", {}).get("cellId")
            except Exception:  # noqa: BLE001 - older ipykernel: no parent header access
                cell_id = None
        return notebook, cell_id

    def _request_metadata(self) -> dict[str, Any]:
        """The metadata of the execute request being run (says which frontend sent it)."""
        kernel = getattr(self.shell, "kernel", None)
        try:
            return dict((kernel.get_parent() or {}).get("metadata") or {}) if kernel else {}
        except Exception:  # noqa: BLE001 - older ipykernel
            return {}

    def _follow(self, job: dict[str, Any], background: bool = False, after: int = 0) -> None:
        if use_widgets(self._request_metadata()):
            self._follow_widget(job, background, after)
            return
        view: JobView = self.view_factory()
        view.start(job)
        say_why_it_waits(self.client, job)
        if background:
            _say_background(job["id"])
            return
        try:
            for ev in self.client.follow(job["id"], after):
                view.event(ev)
            final = self.client.get(job["id"])
        except KeyboardInterrupt:
            print(f"\n[gpuqueue] stopped waiting; {_goes_on(job['id'])}", flush=True)
            return
        except GPUQueueError as e:  # the server's words, not a traceback; the job goes on
            raise UsageError(f"{e}; {_goes_on(job['id'])}") from None
        view.finish(final)
        self._conclude(final)

    def _follow_widget(self, job: dict[str, Any], background: bool, after: int) -> None:
        """Show the job widget, fed by a follower thread. In the foreground the cell waits in a
        ``CommWaiter``: the widget's Cancel and Detach work meanwhile (no CPU spent waiting),
        and Kernel > Interrupt stops waiting and leaves the job running."""
        from .commwait import CommWaiter
        from .widget import JobWidget

        follower = _Follower(self._thread_client(), job["id"], after)
        waiter = None if background else CommWaiter.open()
        cancel_client, refresh_client = self._thread_client(), self._thread_client()
        view = JobWidget(cancel=cancel_client.cancel, detach=follower.stop, refresh=refresh_client.get,
                         foreground=not background, buttons_live=background or waiter is not None)
        follower.view = view
        self.last_view = view
        view.start(job)
        if background:
            follower.start()
            _say_background(job["id"])
            return
        if waiter is not None:
            follower.on_done = waiter.wake
        follower.start()
        try:
            with waiter if waiter is not None else contextlib.nullcontext():
                while not follower.done.is_set():
                    if waiter is not None:
                        waiter.wait(1.0)
                    else:
                        follower.done.wait(0.1)
        except KeyboardInterrupt:
            follower.stop()
            view.request_detach()
            print(f"\n[gpuqueue] stopped waiting; {_goes_on(job['id'])}", flush=True)
            return
        if follower.error is not None:
            raise UsageError(str(follower.error))
        if follower.final is None:  # the Detach button
            print(f"[gpuqueue] detached; {_goes_on(job['id'])}", flush=True)
            return
        if follower.final["state"] == "cancelled" and view.cancel_requested:
            print(f"[gpuqueue] {job['id']} cancelled (its Cancel button); nothing came back", flush=True)
            return
        self._conclude(follower.final)

    def _thread_client(self) -> Client:
        """A client of its own for a background thread (a requests.Session is not shared)."""
        return Client(self.client.server)

    def _conclude(self, job: dict[str, Any]) -> None:
        """Bring the results back, or raise the job's error."""
        if job["state"] != "succeeded":
            raise RemoteJobError(job)
        self._pull_results(job)

    def _pull_results(self, job: dict[str, Any]) -> None:
        if job["spec"]["kind"] != "cell":
            print(f"[gpuqueue] {job['id']} succeeded (a command job: nothing comes back to the notebook; "
                  f"`%gpuqueue logs {job['id']}` shows its output)", flush=True)
            return
        try:
            blob = self.client.result(job["id"])
        except GPUQueueError as e:  # e.g. not kept (its owner's max_results_mb): the server's words, no traceback
            raise UsageError(f"{job['id']} succeeded, but its results cannot come back: {e}") from None
        values, failed = unpack_results(blob)
        self._user_ns.update(values)
        data = [n for n, v in values.items() if not isinstance(v, types.ModuleType)]
        if data:
            print(f"[gpuqueue] {job['id']} succeeded; back in the notebook: {', '.join(data)}", flush=True)
        else:
            print(f"[gpuqueue] {job['id']} succeeded", flush=True)
        for name, why in failed.items():
            print(f"[gpuqueue] not returned: {name}: {why}", file=sys.stderr, flush=True)
        if failed:
            print(NOT_RETURNED_HINT, file=sys.stderr, flush=True)
        for name in self._asked_outputs.pop(job["id"], []):
            if name not in values and name not in failed:
                print(f"[gpuqueue] not returned: {name}: --outputs names it, but the cell did not assign it",
                      file=sys.stderr, flush=True)

    # -- %gpuqueue --------------------------------------------------------------------------
    @line_magic
    def gpuqueue(self, line: str) -> Any:
        """``%gpuqueue list | status ID | logs ID | cancel ID | rm ID [ID ...] | attach ID | result ID | preempt ID``"""
        parts = shlex.split(line)
        if not parts:
            raise UsageError(_GPUQUEUE_USAGE)
        verb, rest = parts[0], parts[1:]
        if verb in ("help", "--help", "-h"):  # asked for: the usage, not an error
            print(_GPUQUEUE_USAGE)
            return None
        handler = getattr(self, f"_cmd_{verb}", None)
        if handler is None:
            raise UsageError(f"unknown verb {verb!r}.\n{_GPUQUEUE_USAGE}")
        try:
            return handler(*rest)
        except TypeError:
            raise UsageError(f"%gpuqueue {verb}: wrong arguments.\n{_GPUQUEUE_USAGE}") from None
        except GPUQueueError as e:  # the server's words name the CLI's verb; here it is a magic
            raise UsageError(str(e).replace("`gpuqueue ls`", "`%gpuqueue list`")) from None

    def _cmd_list(self, *flags: str) -> None:
        jobs = self.client.list(all_users=_all_flag("list", flags))
        if not jobs:
            print("no jobs")
        for j in jobs:
            info = f"  {pending_text(j['pending'])}" if j.get("pending") else ""  # why it waits, in words
            print(f"{j['id']}  {j['state']:<10} {j['priority']:<6} gpus={j['gpus']}  {j.get('name') or ''}{info}")

    def _cmd_status(self, job_id: str) -> dict[str, Any]:
        job = self.client.get(job_id)
        line = f"{job['id']}: {job['state']}"
        attempt = (job.get("attempts") or [{}])[-1]
        if job.get("pending"):
            line += f" ({pending_text(job['pending'])})"
        elif attempt.get("started_at") and job["state"] not in ("queued", "retrying"):
            # where it runs, and for how long; of an ended job, where its last attempt ran and how long
            ids = attempt.get("gpu_ids") or []
            gpus = f"GPU{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}" if ids else "CPU"
            since, until = attempt["started_at"], attempt.get("ended_at")
            line += f" on {attempt.get('node') or '?'} ({gpus})"
            if job["state"] in ("starting", "running"):
                line += f", for {format_duration(max(0.0, time.time() - since))}"
            elif until:
                line += f", ran {format_duration(max(0.0, until - since))}"
            line += f", attempt {attempt.get('number')}" if (attempt.get("number") or 1) > 1 else ""
        if job.get("error"):
            line += f" - {job['error']}"
        elif job["state"] in ("timed_out", "cancelled"):
            line += f" - {_why_ended(job)}"
        print(line)
        return None  # type: ignore[return-value]

    def _cmd_logs(self, job_id: str) -> None:
        view = TextView(err=sys.stdout)  # every line that stays, on stdout
        for ev in self.client.events(job_id):
            if ev["type"] == "log":
                view.event(ev)
        view.finish({})

    def _cmd_cancel(self, job_id: str) -> None:
        job = self.client.cancel(job_id)
        state = job["state"]
        if state in ("running", "starting"):
            print(f"{job['id']}: stopping")
        elif state in TERMINAL and state != "cancelled":
            print(f"{job['id']}: already {state}; nothing to cancel")
        else:
            print(f"{job['id']}: {state}")

    def _cmd_rm(self, *job_ids: str) -> None:
        """Delete finished jobs (``gpuqueue rm``): a line for each, deleted or why not."""
        if not job_ids:
            raise TypeError("no job id")
        for job_id, out, err in self.client.delete_jobs(job_ids):
            if err is not None:
                print(f"{job_id}: not deleted: {err}", file=sys.stderr)
            else:
                assert out is not None
                note = f"; {out['note']}" if out.get("note") else ""
                print(f"{out['id']}: deleted ({', '.join(out.get('deleted') or [])}){note}")

    def _cmd_preempt(self, job_id: str) -> None:
        self.client.preempt(job_id)
        print(f"{job_id}: preempting: it is asked to stop, then queued again; it goes on from its "
              "latest checkpoint if it saves any (gpuqueue.Checkpointer), else it starts over")

    def _cmd_attach(self, job_id: str) -> None:
        job = self.client.get(job_id)
        job["attached"] = True
        self._follow(job, after=0)

    def _cmd_dashboard(self, *flags: str) -> None:
        """The live queue dashboard (text where widgets cannot render)."""
        from .dashboard import Dashboard, text_dashboard

        all_users = _all_flag("dashboard", flags)
        if not use_widgets(self._request_metadata()):
            print(text_dashboard(self.client.queue(), self.client.list(all_users=all_users)))
            return
        if self.last_dashboard is not None:
            self.last_dashboard.stop()
        self.last_dashboard = Dashboard(self._thread_client, all_users=all_users)
        self.last_dashboard.show()

    def _cmd_checkpoints(self, job_id: str) -> None:
        """The job's checkpoints (from its events), oldest first: what ``--resume-from`` takes for
        each, and where its files were saved (``gpuqueue.queue.ckptref.listing_lines``)."""
        print("\n".join(ckptref.listing_lines(job_id, self.client.events(job_id))))

    def _cmd_result(self, job_id: str) -> None:
        job = self.client.get(job_id)
        if job["state"] not in TERMINAL:
            raise UsageError(f"job {job_id} is {job['state']}: `%gpuqueue attach {job_id}` waits for it")
        self._conclude(job)


_GPUQUEUE_USAGE = (
    "usage: %gpuqueue list [--all] | status ID | logs ID | cancel ID | rm ID [ID ...] | attach ID | result ID | "
    "preempt ID | checkpoints ID | dashboard [--all]"
)


def _all_flag(verb: str, flags: tuple[str, ...]) -> bool:
    """Whether ``--all`` was given to ``%gpuqueue VERB``; anything else is refused by name."""
    other = [f for f in flags if f != "--all"]
    if other:
        raise UsageError(f"%gpuqueue {verb} takes only --all (everyone's jobs, for admins), "
                         f"not {' '.join(other)}.\n{_GPUQUEUE_USAGE}")
    return bool(flags)


class _Follower(threading.Thread):
    """Feeds a job's events to a view from a background thread until the job ends or
    ``stop()``; then ``final`` is the job record (None when stopped) and ``done`` is set."""

    def __init__(self, client: Client, job_id: str, after: int = 0):
        super().__init__(name=f"gpuqueue-follow-{job_id}", daemon=True)
        self.client = client
        self.job_id = job_id
        self.after = after
        self.view: Any = None
        self.final: Optional[dict[str, Any]] = None
        self.error: Optional[BaseException] = None
        self.done = threading.Event()
        self.on_done: Optional[Callable[[], None]] = None  # called (any thread) once done is set
        self._stopped = threading.Event()

    def _set_done(self) -> None:
        self.done.set()
        if self.on_done is not None:
            self.on_done()

    def stop(self) -> None:
        """Stop following (the job goes on); the thread ends at the next event or keep-alive."""
        self._stopped.set()
        self._set_done()

    def run(self) -> None:
        try:
            for ev in self.client.follow(self.job_id, self.after):
                if self._stopped.is_set():
                    return
                self.view.event(ev)
            if self._stopped.is_set():
                return
            final = self.client.get(self.job_id)
            self.view.finish(final)
            self.final = final
        except Exception as e:  # noqa: BLE001 - shown by the waiting cell / in the widget
            self.error = e
            self.view.note = f"lost the job's stream: {e}"
            self.view.close_updates()
        finally:
            self._set_done()


def _goes_on(job_id: str) -> str:
    """What a cell says when it stops waiting for a job that goes on."""
    return (f"job {job_id} goes on. `%gpuqueue attach {job_id}` re-attaches, "
            f"`%gpuqueue cancel {job_id}` cancels.")


def _say_background(job_id: str) -> None:
    """What a cell says when its job goes on in the background."""
    print(
        f"[gpuqueue] running in the background; `%gpuqueue attach {job_id}` to watch, "
        f"`%gpuqueue result {job_id}` for its results",
        flush=True,
    )
