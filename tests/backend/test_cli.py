"""The gpuqueue command line against a real jupyter server (subprocesses all the way)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers.servers import wait_until


def gq(server, *args, timeout=120):
    env = dict(os.environ, GPUQUEUE_URL=server.url, GPUQUEUE_TOKEN=server.token)
    return subprocess.run([sys.executable, "-m", "gpuqueue.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=server.work_dir)


def test_submit_show_logs_wait(jupyter_server):
    r = gq(jupyter_server, "submit", "--gpus", "1", "--name", "cli-job", "--", sys.executable, "-c",
           "import os; print('on', os.environ['CUDA_VISIBLE_DEVICES']); print('bye')")
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    assert job_id.startswith("j-") and "\n" not in job_id  # the id alone on stdout
    w = gq(jupyter_server, "wait", job_id)
    assert w.returncode == 0, w.stderr
    show = json.loads(gq(jupyter_server, "show", job_id).stdout)
    assert show["id"] == job_id and show["state"] == "succeeded"
    [attempt] = show["attempts"]
    assert attempt["node"] == "local" and attempt["gpu_ids"] in ([0], [1])
    assert attempt["started_at"] <= attempt["ended_at"] and attempt["outcome"] == "succeeded"
    logs = gq(jupyter_server, "logs", job_id)
    assert logs.stdout.splitlines() == [f"on {attempt['gpu_ids'][0]}", "bye"]
    follow = gq(jupyter_server, "logs", "-f", job_id)
    assert "bye" in follow.stdout and "succeeded" in follow.stderr
    ls = gq(jupyter_server, "ls")
    assert job_id in ls.stdout and "cli-job" in ls.stdout


def test_wait_fails_for_a_failed_job_and_cancel_works(jupyter_server):
    fail = gq(jupyter_server, "submit", "--retries", "0", "--", sys.executable, "-c", "raise SystemExit(3)").stdout.strip()
    w = gq(jupyter_server, "wait", fail)
    job = json.loads(gq(jupyter_server, "show", fail).stdout)
    assert job["state"] == "failed" and job["attempts"][-1]["exit_code"] == 3
    assert w.returncode == 1 and f"{fail}: failed: {job['error']}" in w.stderr and "code 3" in w.stderr, w  # says why
    late = gq(jupyter_server, "cancel", fail)  # it had ended: say so, not just its state
    assert late.returncode == 0 and late.stdout.strip() == f"{fail}: already failed, nothing to cancel", late
    slow = gq(jupyter_server, "submit", "--", sys.executable, "-c", "import time; time.sleep(60)").stdout.strip()
    client = jupyter_server.client()
    wait_until(lambda: client.get(slow)["state"] == "running", 30, what="running")
    c = gq(jupyter_server, "cancel", slow)
    assert c.returncode == 0 and slow in c.stdout
    assert gq(jupyter_server, "wait", slow).returncode == 1
    assert client.get(slow)["state"] == "cancelled"
    # the stop request is a state event with no new state: `logs -f` says it (it raised KeyError)
    follow = gq(jupyter_server, "logs", "-f", slow)
    assert follow.returncode == 0 and "Traceback" not in follow.stderr, follow
    assert "[gpuqueue] stopping (cancelled)" in follow.stderr and "[gpuqueue] cancelled" in follow.stderr, follow
    # without -f, the same lines: it printed the output only, so a finished job's log never said
    # that it was asked to stop (nor a lost attempt, nor dropped output)
    logs = gq(jupyter_server, "logs", slow)
    assert logs.returncode == 0 and "Traceback" not in logs.stderr, logs
    assert logs.stderr == follow.stderr and logs.stdout == follow.stdout, (logs, follow)


def test_logs_of_a_finished_job_say_its_warnings_with_or_without_follow(jupyter_server):
    """A job stopped at its time limit: the queue warned it ("the time limit comes in ..."), asked it
    to stop and ended it. `gpuqueue logs -f` printed those lines; `gpuqueue logs` printed only
    the job's output, so a user reading a finished job's log never learnt why it ended (nor,
    elsewhere, that an attempt was lost or its output dropped). Both print the same now."""
    job = gq(jupyter_server, "submit", "--retries", "0", "--timeout", "3s", "--", sys.executable, "-c",
             "import time; print('training', flush=True); time.sleep(60)").stdout.strip()
    assert gq(jupyter_server, "wait", job).returncode == 1
    assert jupyter_server.client().get(job)["state"] == "timed_out"
    logs, follow = gq(jupyter_server, "logs", job), gq(jupyter_server, "logs", "-f", job)
    assert logs.returncode == 0 and logs.stdout == "training\n", logs
    said = logs.stderr.splitlines()
    # the cell's words: its warnings read "warning:" (they read as the job's own lines), and the
    # stop is said once (the queue's "info: stopping (timed_out); grace 10s" said it again)
    assert any(line.startswith("[gpuqueue] warning: the time limit comes in ") and line.endswith(": save a checkpoint")
               for line in said), said
    assert [line for line in said if "stopping" in line or "grace" in line] == [
        "[gpuqueue] stopping (timed out); it has 10s to save a checkpoint, then it is killed"], said
    assert any(line.startswith("[gpuqueue] timed out") for line in said), said
    # the cell's words, not the event's fields as a Python dict ("[gpuqueue] running {'node': ...}")
    assert any(line.startswith("[gpuqueue] starting attempt 1 on ") for line in said), said
    assert not any("{'" in line for line in said), said
    assert (logs.stdout, logs.stderr) == (follow.stdout, follow.stderr), (logs, follow)


def test_user_mistakes_are_one_line_errors(jupyter_server):
    cases = [
        (("submit", "--gpus", "9", "--", "true"), "9 GPUs do not fit"),
        (("submit", "--timeout", "later", "--", "true"), "cannot read duration"),
        (("submit", "--"), "nothing to run"),
        (("show", "j-0123456789ab"), "no job"),
        (("submit", "--env", "NOEQUALS", "--", "true"), "KEY=VALUE"),
        # the spec's ranges, named as options (they came back in pydantic's words about spec.retries)
        (("submit", "--retries", "-1", "--", "true"), "argument --retries: -1 is not between 0 and 20"),
        (("submit", "--nodes", "0", "--", "true"), "argument --nodes: 0 is not between 1 and 512"),
        (("submit", "--gpus", "two", "--", "true"), "argument --gpus: 'two' is not a whole number"),
    ]
    for args, message in cases:
        r = gq(jupyter_server, *args)
        assert r.returncode != 0, args
        assert message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    assert jupyter_server.client().list() == []


HOSTILE_OUTPUT = r"""
print("\x1b]52;c;cm0gLXJmIH4K\x07copied? \x1b]0;pwned\x07 \x1b[2J\x1b[H \x1b[31mred\x1b[0m\tend")
raise SystemExit("\x1b]52;c;cm0gLXJmIH4K\x07 in the traceback")
"""


def test_a_jobs_output_cannot_drive_the_terminal_that_shows_it(jupyter_server):
    """`gpuqueue logs` (an admin's, too, on another user's job) printed the job's output as it
    came: an OSC 52 sequence set the reader's clipboard (a command to paste), another the title,
    CSI 2J cleared the screen. Colours, tabs and newlines are kept; the rest is escaped."""
    r = gq(jupyter_server, "submit", "--retries", "0", "--", sys.executable, "-c", HOSTILE_OUTPUT)
    job = r.stdout.strip()
    w = gq(jupyter_server, "wait", "--logs", job)
    assert w.returncode == 1
    logs = gq(jupyter_server, "logs", job)
    for shown in (logs.stdout + logs.stderr, w.stdout + w.stderr):
        assert "\\x1b]52;c;cm0gLXJmIH4K\\x07copied?" in shown and "\\x1b[2J\\x1b[H" in shown, shown
        assert "in the traceback" not in shown or "\\x1b]52;c;cm0gLXJmIH4K\\x07 in the traceback" in shown
        assert "\x1b]" not in shown and "\x07" not in shown and "\x1b[2J" not in shown, shown
        assert "\x1b[31mred\x1b[0m\tend" in shown  # colour and tab kept


def test_no_server_configured_says_what_to_set(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUQUEUE_", "JPY_"))}
    r = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "ls"], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "GPUQUEUE_URL" in r.stderr and "Traceback" not in r.stderr


def test_the_command_is_kept_whole_and_what_a_terminal_shows_is_escaped(jupyter_server_factory):
    owner = "eve\x1b]0;pwned\x07\u202e"  # a user name holding a terminal escape and a bidi override (a Hub name, say)
    s = jupyter_server_factory(env={"JUPYTERHUB_USER": owner})
    r = gq(s, "submit", "--", sys.executable, "-c", "import sys; print(sys.argv[1:])", "--", "x", "--")
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip()
    assert gq(s, "wait", job).returncode == 0
    assert gq(s, "logs", job).stdout.strip() == "['--', 'x', '--']"
    ls = gq(s, "ls", "--all").stdout
    assert "eve\\x1b]0;pwned\\x07\\u202e" in ls and "\x1b" not in ls and "\x07" not in ls and "\u202e" not in ls
    r = gq(s, "show", "j-\x1b[2J")
    assert r.returncode == 1 and "no job" in r.stderr and "\x1b" not in r.stderr, r.stderr
    r = gq(s, "submit", "--timeout", "9" * 400, "--", "true")
    assert r.returncode == 2 and "is too long: write at most 366d00h" in r.stderr and "Traceback" not in r.stderr
    # not the API (an HTML error page): one line that says what to check, not the page
    env = dict(os.environ, GPUQUEUE_URL=s.url + "elsewhere/", GPUQUEUE_TOKEN=s.token)
    r = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "ls"], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and f"{s.url}elsewhere/ has no gpuqueue API (it answered 404)" in r.stderr, r.stderr
    assert "<" not in r.stderr and r.stderr.count("\n") == 1 and len(r.stderr) < 400, r.stderr


BAR = ("import sys, time\ntime.sleep(1)\nfor i in range(3):\n"
       "    sys.stderr.write(f'\\rbar {i}/2'); sys.stderr.flush(); time.sleep(1.2)\n"
       "sys.stderr.write('\\n')\nprint('after the bar', flush=True)\n")


def _screen(raw: str) -> list[str]:
    """What a terminal shows of ``raw``: \\r goes back to the line's start, ESC[K clears to its end."""
    lines: list[str] = []
    cur: list[str] = []
    col, i = 0, 0
    while i < len(raw):
        if raw.startswith("\x1b[K", i):
            del cur[col:]
            i += 3
            continue
        c = raw[i]
        if c == "\r":
            col = 0
        elif c == "\n":
            lines.append("".join(cur))
            cur, col = [], 0
        else:
            cur[col:col + 1] = [c]
            col += 1
        i += 1
    return lines + (["".join(cur)] if cur else [])


def test_logs_follow_on_a_terminal_draws_a_progress_bar_in_place(jupyter_server):
    """`gpuqueue logs -f` in a terminal: a bar redrawn with \\r is drawn in place while it runs
    (each state replacing the last), and the screen then holds its last state once, then the
    next line; not one line per state."""
    import pty

    r = gq(jupyter_server, "submit", "--", sys.executable, "-c", BAR)
    job_id = r.stdout.strip()
    master, slave = pty.openpty()
    env = dict(os.environ, GPUQUEUE_URL=jupyter_server.url, GPUQUEUE_TOKEN=jupyter_server.token)
    p = subprocess.Popen([sys.executable, "-m", "gpuqueue.cli", "logs", "-f", job_id], stdout=slave, stderr=slave,
                         env=env)
    os.close(slave)
    raw = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the command ended and closed the terminal
            break
        if not chunk:
            break
        raw += chunk
    os.close(master)
    assert p.wait(timeout=60) == 0
    text = raw.decode()
    shown = [line for line in _screen(text) if not line.startswith("[gpuqueue]")]
    assert shown == ["bar 2/2", "after the bar"], repr(text)
    assert "bar 1/2" in text, repr(text)  # drawn live, then replaced


def test_logs_of_a_long_job_are_not_cut_at_the_first_page(jupyter_server):
    """The events endpoint answers 10,000 events a request: ``gpuqueue logs`` (and ``%gpuqueue
    logs``, the same client) showed a long job's first 10,000 lines and stopped there, silently."""
    n = 25_000
    job = gq(jupyter_server, "submit", "--", sys.executable, "-c",
             f"for i in range({n}): print('line', i)").stdout.strip()
    assert gq(jupyter_server, "wait", job).returncode == 0
    lines = gq(jupyter_server, "logs", job).stdout.splitlines()
    assert len(lines) == n and lines[0] == "line 0" and lines[-1] == f"line {n - 1}", (len(lines), lines[-1:])
