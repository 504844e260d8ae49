"""The ``gpuqueue`` command line: the magic's verbs, against the same REST API.

    gpuqueue submit [--gpus N --priority high ...] -- python train.py   # prints the job id
    gpuqueue ls (or list) | show ID | logs [-f] ID | checkpoints ID | cancel ID | wait ID | preempt ID
    gpuqueue rm ID [ID ...]   # delete finished jobs and what they keep (logs, results, checkpoints)
    gpuqueue simulate TRACE.csv --cluster prod=64x8 ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Optional

from .cluster.cliargs import number
from .queue import ckptref
from .queue.durations import MAX_TIMEOUT_S, parse_duration
from .queue.errors import GPUQueueError
from .queue.states import STATE_GROUPS
from .queue.text import (OutputLines, message_event_line, pending_text, printable, state_event_line, terminal_output,
                         waiting_line)

EXIT_USAGE = 2


def _add_job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--priority", choices=["high", "medium", "low"], default="medium")
    # the ranges JobSpec allows, refused by name here rather than in the server's words
    p.add_argument("--gpus", type=number(int, 0, 4096), default=0, help="GPUs in all (default 0: CPU)")
    p.add_argument("--nodes", type=number(int, 1, 512), default=1, help="nodes to span (default 1)")
    p.add_argument("--pool", help="pool (default: the first configured)")
    p.add_argument("--name", help="a name to recognise the job by")
    p.add_argument("--timeout", help="time limit, e.g. 90m or 2h")
    p.add_argument("--retries", type=number(int, 0, 20), help="retries after a failure, 0 to 20 (default: config)")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="extra environment")
    p.add_argument("--cwd", default=None, help="working directory (default: here)")


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """A JobSpec dict from the shared job options (raises ValueError naming the bad option)."""
    spec: dict[str, Any] = {"priority": args.priority, "gpus": args.gpus, "nodes": args.nodes}
    for key in ("pool", "name", "retries", "resume_from"):
        if getattr(args, key, None) is not None:
            spec[key] = getattr(args, key)
    if args.timeout:
        spec["timeout_s"] = parse_duration(args.timeout, MAX_TIMEOUT_S)
    env = {}
    for item in args.env:
        if "=" not in item:
            raise ValueError(f"--env {item!r}: write KEY=VALUE")
        k, v = item.split("=", 1)
        env[k] = v
    if env:
        spec["env"] = env
    return spec


def _client() -> Any:
    from .rest.client import Client

    return Client()


def cmd_submit(args: argparse.Namespace) -> int:
    command = list(args.command or [])  # everything after the first `--`, as the user wrote it
    if not command:
        raise ValueError("nothing to run: gpuqueue submit [options] -- python train.py")
    spec = spec_from_args(args)
    spec.update(kind="command", command=command, cwd=os.path.abspath(args.cwd or os.getcwd()))
    job = _client().submit(spec)
    print(printable(job["id"]))
    return 0


NOT_ADMIN = ("gpuqueue: --all lists every user's jobs for queue admins only; you ({}) are not one, so "
             "these are your own (queue admins: `admin = true` in the API's users file, or the hub "
             "scope custom:gpuqueue:admin through the role gpuqueue-admin; docs/deploy.md)")


def cmd_ls(args: argparse.Namespace) -> int:
    client = _client()
    jobs = client.list(all_users=args.all)
    if args.all:  # the API lists a non-admin's own jobs only: say so rather than show a short list
        me = client.queue().get("me") or {}
        if me and not me.get("admin"):
            print(printable(NOT_ADMIN.format(me.get("user", "?"))), file=sys.stderr)
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    rows: list[tuple[str, ...]] = [("ID", "NAME", "OWNER", "STATE", "PRIO", "GPUS", "POOL", "NODE", "INFO")]
    for j in jobs:
        info = pending_text(j["pending"]) if j.get("pending") else ""  # why it waits, in words
        cells = (j["id"], (j.get("name") or "")[:24], j["owner"], j["state"], j["priority"],
                 j["gpus"], j.get("pool") or "", j.get("node") or "", info)
        rows.append(tuple(printable(c) for c in cells))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print(json.dumps(_client().get(args.id), indent=2))
    return 0


class _EventPrinter:
    """Prints a job's events: log lines on stdout/stderr as the job wrote them, state changes
    and messages on stderr. A line the job is still writing (a progress bar: ``transient``
    records) is drawn in place only when ``live`` and on a terminal, and then replaced by the
    next one; otherwise only the lines that stay are printed (:class:`OutputLines`)."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.lines = OutputLines()
        self.shown: Any = None  # the terminal where a transient line is drawn

    def _erase(self) -> None:
        if self.shown is not None:
            print("\r\x1b[K", end="", file=self.shown, flush=True)
            self.shown = None

    def _log(self, d: dict[str, Any], end: str = "\n") -> None:
        stream = sys.stderr if d.get("stream") == "stderr" else sys.stdout
        self._erase()
        print(terminal_output(d.get("line", "")), end=end, file=stream, flush=True)
        if end == "":
            self.shown = stream

    def event(self, ev: dict[str, Any]) -> None:
        d = ev["data"]
        if ev["type"] == "log":
            done, now = self.lines.feed(d)
            for line in done:
                self._log(line)
            if now is not None and self.live:
                stream = sys.stderr if now.get("stream") == "stderr" else sys.stdout
                if stream.isatty():
                    self._log(now, end="")
            return
        self._erase()
        if ev["type"] == "state":
            said = state_event_line(d)  # the cell's words (a stop request has no new state)
            if said and d.get("error") and not d.get("why"):  # (a retried attempt's line says why itself)
                said += f": {d['error']}"
            if said:
                print(printable(said), file=sys.stderr, flush=True)
            if d.get("traceback"):
                print(terminal_output(d["traceback"]), file=sys.stderr, flush=True)
        elif (said := message_event_line(ev["type"], d)) is not None:  # the cell's words too
            print(printable(said), file=sys.stderr, flush=True)

    def end(self) -> None:
        for line in self.lines.end():
            self._log(line)
        self._erase()


def cmd_logs(args: argparse.Namespace) -> int:
    c = _client()
    waits = waiting_line(c.get(args.id))  # a job that waits has no output yet: where it stands, why
    if waits:
        print(printable(waits), file=sys.stderr, flush=True)
    events = c.follow(args.id) if args.follow else c.events(args.id)
    printer = _EventPrinter(live=args.follow)
    for ev in events:  # with or without -f the same lines: its warnings and state changes too
        printer.event(ev)
    printer.end()
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    print("\n".join(ckptref.listing_lines(args.id, _client().events(args.id))))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job = _client().cancel(args.id)
    state = job["state"]
    if state in STATE_GROUPS["terminal"] and state != "cancelled":  # it ended before the request: nothing to stop
        print(printable(f"{job['id']}: already {state.replace('_', ' ')}, nothing to cancel"))
        return 0
    print(printable(f"{job['id']}: {state}") + (" (stopping)" if state in ("running", "starting") else ""))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    """Delete finished jobs: one line per job (deleted, or why not); 1 if any was not deleted."""
    failed = 0
    for job_id, out, err in _client().delete_jobs(args.ids):
        if err is not None:
            failed += 1
            print(printable(f"{job_id}: not deleted: {err}"), file=sys.stderr)
            continue
        assert out is not None
        note = f"; {out['note']}" if out.get("note") else ""
        print(printable(f"{out['id']}: deleted ({', '.join(out.get('deleted') or [])}){note}"))
    return 1 if failed else 0


def cmd_preempt(args: argparse.Namespace) -> int:
    job = _client().preempt(args.id)
    print(printable(job["id"]) + ": preempting (it will checkpoint, stop and be queued again)")
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    c = _client()
    printer = _EventPrinter(live=True)
    for ev in c.follow(args.id):
        if args.logs:
            printer.event(ev)
    printer.end()
    job = c.get(args.id)
    why = f": {job['error']}" if job["state"] != "succeeded" and job.get("error") else ""  # why it failed
    print(printable(f"{job['id']}: {job['state']}{why}"), file=sys.stderr)
    return 0 if job["state"] == "succeeded" else 1


def cmd_release_name(args: argparse.Namespace) -> int:
    """A queue admin releases a hub user name (cluster API as a JupyterHub service): the next hub
    account of that name starts with no jobs (``gpuqueue.cluster.hub_names``)."""
    out = _client().release_name(args.name)
    print(printable(f"hub user name {out['name']!r} released: {out['deleted_jobs']} finished job(s) of the earlier "
                    f"account (created {out['account_created']}) deleted; the next hub account named "
                    f"{out['name']!r} starts with no jobs"))
    uid = out.get("retired_uid")
    if uid is not None:
        print(printable(f"its dynamic uid {uid} is retired: the new account's jobs get a new uid, so they cannot read "
                        f"the former user's files; those files are untouched, owned by uid {uid} (the workers' "
                        f"<state-dir>/home/{uid} on each node, anything the jobs wrote elsewhere; the deleted jobs' "
                        f"folders and checkpoints go with the next sweeps): remove or archive them "
                        f"(e.g. find <state-dir>/home/{uid} /tmp -uid {uid})"))
    elif "retired_uid" in out:
        print(printable(f"no worker gave {out['name']!r} a dynamic uid (--identities dynamic): no uid to retire"))
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    q = _client().queue()
    if args.json:
        print(json.dumps(q, indent=2))
        return 0
    if q.get("warning"):  # e.g. no scheduler daemon has published the queue yet
        print(printable(f"gpuqueue: {q['warning']}"), file=sys.stderr)
    for name, p in q.get("pools", {}).items():
        print(printable(f"{name}: {p.get('gpus_used', 0)}/{p.get('gpus_total', 0)} GPUs used, "
                        f"{p.get('queued', 0)} queued, {p.get('running', 0)} running"))
    return 0


def _delegate(module: str, attr: str = "cli_main") -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), attr)(argv))

    return run


# Subcommands implemented in their own modules, which parse their own arguments.
DELEGATED = {
    "simulate": _delegate("gpuqueue.simulate"),
    "scheduler": _delegate("gpuqueue.cluster.daemon"),
    "worker": _delegate("gpuqueue.cluster.worker"),
    "api": _delegate("gpuqueue.cluster.api"),
}


# what the cluster commands import from the `cluster` extra (pyproject.toml)
CLUSTER_EXTRA = ("celery", "kombu", "redis", "fsspec")


def _extra_hint(command: str, e: ModuleNotFoundError) -> str:
    """The install that brings a delegated command's missing module, as a sentence; '' if unknown."""
    top = (e.name or "").split(".")[0]
    if command in ("scheduler", "worker", "api") and top in CLUSTER_EXTRA:
        return ("; cluster mode needs the `cluster` extra: in the clone, "
                "pip install \".[cluster,train]\" (docs/deploy.md)")
    return ""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public for the docs and tests)."""
    p = argparse.ArgumentParser(prog="gpuqueue", description="Queue GPU jobs; see `gpuqueue COMMAND -h`.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("submit", help="queue a command; prints the job id")
    _add_job_options(s)
    s.add_argument("--resume-from", metavar="JOB_ID[/step-N]|PATH",
                   help="checkpoint to resume from: one of your jobs' (its latest, or step N, as `gpuqueue "
                   "checkpoints JOB_ID` lists them; on any node), or a folder or .pt file the job's node has")
    s.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    s.set_defaults(fn=cmd_submit)
    s = sub.add_parser("ls", aliases=["list"], help="list your jobs (and why each waits)")
    s.add_argument("--all", action="store_true", help="everyone's (admins)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_ls)
    for name, fn, helptext in (
        ("show", cmd_show, "a job as JSON (state, attempts, why it waits)"),
        ("checkpoints", cmd_checkpoints, "a job's checkpoints: what --resume-from takes for each"),
        ("cancel", cmd_cancel, "cancel a job"),
        ("preempt", cmd_preempt, "preempt a running job (admins)"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("id")
        s.set_defaults(fn=fn)
    s = sub.add_parser("rm", help="delete finished jobs and what they keep (logs, results, checkpoints), freeing "
                       "your max_results_mb, max_logs_mb, max_shared_gb and max_shared_files")
    s.add_argument("ids", nargs="+", metavar="ID")
    s.set_defaults(fn=cmd_rm)
    s = sub.add_parser("logs", help="a job's output; its state changes and warnings on stderr")
    s.add_argument("-f", "--follow", action="store_true", help="go on until the job ends")
    s.add_argument("id")
    s.set_defaults(fn=cmd_logs)
    s = sub.add_parser("wait", help="wait for a job; exit 0 only if it succeeded")
    s.add_argument("--logs", action="store_true", help="print its output meanwhile")
    s.add_argument("id")
    s.set_defaults(fn=cmd_wait)
    s = sub.add_parser("queue", help="pools and GPUs in use")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_queue)
    s = sub.add_parser("release-name", help="give a deleted hub user's name to a new hub account (queue admins; "
                       "deletes the earlier account's finished jobs)")
    s.add_argument("name")
    s.set_defaults(fn=cmd_release_name)
    for name in DELEGATED:
        sub.add_parser(name, help=f"see `gpuqueue {name} -h`", add_help=False)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``gpuqueue`` command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        try:
            return DELEGATED[argv[0]](argv[1:])
        except ModuleNotFoundError as e:
            print(f"gpuqueue {argv[0]}: not available in this installation ({e}){_extra_hint(argv[0], e)}",
                  file=sys.stderr)
            return EXIT_USAGE
    command: Optional[list[str]] = None
    if argv and argv[0] == "submit" and "--" in argv:  # the user's command is left untouched
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if command is not None:
        args.command = command
    try:
        return int(args.fn(args))
    except (GPUQueueError, ValueError) as e:
        print(printable(f"gpuqueue: {e}"), file=sys.stderr)
        return 1 if isinstance(e, GPUQueueError) else EXIT_USAGE
    except KeyboardInterrupt:
        print("\ngpuqueue: stopped waiting; the job goes on", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `gpuqueue show ID | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
