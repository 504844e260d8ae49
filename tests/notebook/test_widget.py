"""The cell widget, driven by real jobs in a kernel started by a real Jupyter server.

A raw kernel client renders no widgets, but the widget models live in the kernel: the tests
read them with a cell (``last_view.model_state()``) or from the ``comm_msg`` updates the
kernel sends on iopub, exactly what a frontend would receive."""

from __future__ import annotations

import html
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from helpers.servers import Kernel, wait_until

ROOT = Path(__file__).resolve().parents[2]

SETUP = """
%load_ext jupyter_gpuqueue
import os, json
os.environ["GPUQUEUE_VIEW"] = "{mode}"
_gq = get_ipython().magics_manager.registry["GPUQueueMagics"]
"""

JOB = """%%train {flags}
import time
from gpuqueue.job import channel
for i in range({n}):
    print(f"line {{i}}", flush=True)
    channel.emit("metrics", {{"step": i, "loss": 1.0 / (i + 1)}})
    channel.emit("progress", {{"done": i + 1, "total": {n}}})
    time.sleep({pause})
time.sleep({hold})
answer = 42
"""

PEEK = "print('STATE=' + json.dumps(_gq.last_view.model_state()))"


def peek(kernel: Kernel) -> dict[str, Any]:
    """The widget's model values, read in the kernel."""
    res = kernel.run(PEEK)
    assert res.error is None, res.error
    return json.loads(res.stdout.split("STATE=", 1)[1])


def polyline_points(svg: str) -> int:
    m = re.search(r'<polyline[^>]*points="([^"]*)"', svg)
    return len(m.group(1).split()) if m else 0


def test_widget_follows_a_background_job(jupyter_server):
    k = jupyter_server.start_kernel()
    assert k.run(SETUP.format(mode="widget")).error is None
    res = k.run(JOB.format(flags="--background --name curve", n=30, pause=0.1, hold=2.0))
    assert res.error is None, res.error
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in res.outputs)
    assert "[gpuqueue] running in the background" in res.stdout

    # while it runs: state line, progress, curve points and log lines move
    st = wait_until(lambda: (s := peek(k))["progress"] and s["progress"] >= 0.5 and s, 60, 0.3,
                    "the widget's progress to pass 50%")
    assert st["state"] == "running"
    assert "running on" in st["status"] and "elapsed" in st["status"]
    assert polyline_points(st["curve_svg"]) >= 14
    assert "line 14" in st["log"]
    assert st["lines_total"] >= 15
    # the final state
    # the job's state is taken in as its event arrives, the widget draws it (cancel off) at its
    # next redraw: wait for the drawn final state
    st = wait_until(lambda: (s := peek(k))["state"] == "succeeded" and s["cancel_disabled"] and s, 60, 0.3,
                    "the job to succeed and the widget to draw it, its cancel button off")
    assert st["progress"] == 1.0
    assert "30 / 30" in st["progress_text"]
    assert st["lines_total"] == 30
    assert [f"line {i}" for i in range(30)] == re.findall(r"line \d+", st["log"])
    assert polyline_points(st["curve_svg"]) == 30 and "loss 0.03333 @ step 29" in st["curve_svg"]
    assert st["cancel_disabled"] is True
    # throttled: far fewer redraws than the 90 events it folded in
    assert st["redraws"] < 40, st["redraws"]


def test_foreground_widget_updates_over_comm_and_brings_results_back(jupyter_server):
    k = jupyter_server.start_kernel()
    assert k.run(SETUP.format(mode="widget")).error is None
    updates: list[tuple[float, dict[str, Any]]] = []

    def on_output(m: dict[str, Any]) -> None:
        if m["msg_type"] == "comm_msg" and m["content"]["data"].get("method") == "update":
            updates.append((time.monotonic(), m["content"]["data"]["state"]))

    res = k.run(JOB.format(flags="--name fg", n=20, pause=0.1, hold=0.5), on_output=on_output)
    assert res.error is None, res.error
    assert re.search(r"back in the notebook: .*answer", res.stdout), res.stdout
    assert k.run("print(answer)").stdout.strip() == "42"
    statuses = [u["value"] for _, u in updates if "value" in u and isinstance(u["value"], str)]
    assert any("running on" in s for s in statuses), statuses[:5]
    assert any("succeeded" in s for s in statuses)
    progress = [u["value"] for _, u in updates if isinstance(u.get("value"), float)]
    assert progress and progress[-1] == 1.0 and 0 < min(progress) < 1.0
    # a log line shows up in the log tail's HTML
    assert any("line 19" in u.get("value", "") for _, u in updates if isinstance(u.get("value"), str))


def test_rerunning_the_cell_attaches_and_new_submits_again(jupyter_server):
    k = jupyter_server.start_kernel()
    assert k.run(SETUP.format(mode="text")).error is None
    cell = JOB.format(flags="--background", n=5, pause=0.1, hold=20)
    first = k.run(cell, cell_id="cell-1")
    assert "[gpuqueue] submitted" in first.stdout, first.text
    again = k.run(cell, cell_id="cell-1")
    assert "[gpuqueue] attached to" in again.stdout, again.text
    client = jupyter_server.client()
    assert len(client.list()) == 1
    forced = k.run(cell.replace("--background", "--background --new"), cell_id="cell-1")
    assert "[gpuqueue] submitted" in forced.stdout
    jobs = client.list()
    assert len(jobs) == 2
    for j in jobs:
        client.cancel(j["id"])


def test_attach_after_kernel_restart_replays_every_line_once_then_goes_live(jupyter_server):
    k = jupyter_server.start_kernel()
    assert k.run(SETUP.format(mode="text")).error is None
    res = k.run(JOB.format(flags="--background", n=60, pause=0.05, hold=0), cell_id="c")
    job_id = re.search(r"submitted (j-[0-9a-f]+)", res.stdout).group(1)
    client = jupyter_server.client()
    wait_until(lambda: any(e["type"] == "log" for e in client.events(job_id)), 60, 0.2, "first log line")
    k.restart()
    assert k.run(SETUP.format(mode="text")).error is None
    out = k.run(f"%gpuqueue attach {job_id}")
    assert out.error is None, out.error
    lines = re.findall(r"^line \d+$", out.stdout, re.M)
    assert lines == [f"line {i}" for i in range(60)], lines
    assert f"{job_id} succeeded; back in the notebook: " in out.stdout

    # the widget view replays the same, once each, in order
    assert k.run(SETUP.format(mode="widget")).error is None
    out = k.run(f"%gpuqueue attach {job_id}")
    assert out.error is None, out.error
    st = peek(k)
    assert st["state"] == "succeeded" and st["lines_total"] == 60
    assert re.findall(r"line \d+", st["log"]) == [f"line {i}" for i in range(60)]


def test_interrupt_detaches_the_foreground_widget_and_its_cancel_button_cancels(jupyter_server):
    k = jupyter_server.start_kernel()
    assert k.run(SETUP.format(mode="widget")).error is None
    res = k.run(JOB.format(flags="--name long", n=3, pause=0.1, hold=60), interrupt_after=4)
    assert "stopped waiting" in res.stdout and "goes on" in res.stdout, res.text
    job_id = re.search(r"job (j-[0-9a-f]+) goes on", res.stdout).group(1)
    client = jupyter_server.client()
    assert client.get(job_id)["state"] in ("queued", "starting", "running")
    st = peek(k)
    assert "detached" in st["status"] and st["cancel_disabled"] is False
    # the Cancel button's handler (what a confirmed click runs, now that the kernel is idle)
    assert k.run("_gq.last_view.request_cancel(confirmed=True)").error is None
    wait_until(lambda: client.get(job_id)["state"] == "cancelled", 30, 0.2, "the job to be cancelled")
    assert "cancelling" in peek(k)["status"]


# -- the buttons of a waiting foreground cell, clicked over the kernel protocol -----------------
# A frontend sends a Button click as a comm_msg on the shell channel, exactly as below; the kernel
# is busy running the waiting cell all the while.

def click(k: Kernel, comm_id: str) -> None:
    """What a frontend sends when a Button is clicked."""
    msg = k.client.session.msg("comm_msg", {"comm_id": comm_id,
                                            "data": {"method": "custom", "content": {"event": "click"}}})
    k.client.shell_channel.send(msg)


class Buttons:
    """Collects the cell's Button comms (by label) and its state lines from iopub."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}
        self.labels: list[str] = []  # new button labels, in order
        self.status: list[str] = []

    def __call__(self, m: dict[str, Any]) -> None:
        c = m["content"]
        state = c.get("data", {}).get("state", {})
        if m["msg_type"] == "comm_open" and state.get("_model_name") == "ButtonModel":
            self.ids[state["description"]] = c["comm_id"]
        elif m["msg_type"] == "comm_msg":
            if isinstance(state.get("value"), str):
                self.status.append(state["value"])
            if "description" in state:
                self.labels.append(state["description"])

    def running(self) -> bool:
        return any("running on" in s for s in self.status)


def alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kernel_cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


IPYKERNEL6 = os.environ.get("GPUQUEUE_IPYKERNEL6_PYTHON", str(ROOT / ".venv-ipykernel6" / "bin" / "python"))


def start_kernel(server: Any, ipykernel: int) -> Kernel:
    """A kernel of the venv's ipykernel (7), or of an ipykernel 6 beside it (scripts/test.sh
    makes one: ``.venv-ipykernel6``, whose other packages are the venv's)."""
    if ipykernel == 7:
        return server.start_kernel()
    if not Path(IPYKERNEL6).exists():
        pytest.skip(f"no ipykernel 6 interpreter at {IPYKERNEL6} (scripts/test.sh makes one)")
    spec = server.root / "data" / "kernels" / "ipykernel6"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [IPYKERNEL6, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel 6)", "language": "python"}))
    r = server.api("POST", "api/kernels", json={"name": "ipykernel6"})
    r.raise_for_status()
    k = Kernel(server, r.json()["id"])
    server.kernels.append(k)
    assert k.run("import ipykernel; print(ipykernel.version_info[0])").stdout == "6\n"
    return k


@pytest.mark.parametrize("ipykernel", [7, 6])
def test_cancel_button_of_a_waiting_cell_cancels_and_the_cell_returns(jupyter_server, ipykernel):
    k = start_kernel(jupyter_server, ipykernel)
    assert k.run(SETUP.format(mode="widget")).error is None
    pid = int(k.run("print(os.getpid())").stdout)
    client = jupyter_server.client()
    buttons = Buttons()
    clicked: dict[str, float] = {}
    nxt: dict[str, str] = {}

    def on_output(m: dict[str, Any]) -> None:
        buttons(m)
        if "cpu" not in clicked and buttons.running():
            clicked["cpu"], clicked["cpu_t"] = kernel_cpu_seconds(pid), time.monotonic()
        elif "first" not in clicked and buttons.running() and time.monotonic() - clicked["cpu_t"] > 3:
            clicked["cpu_used"] = kernel_cpu_seconds(pid) - clicked["cpu"]
            nxt["id"] = k.client.execute("print('the next cell ran')")  # queued behind this one
            click(k, buttons.ids["Cancel"])  # arms it: "Confirm cancel"
            clicked["first"] = time.monotonic()
        elif "second" not in clicked and "Confirm cancel" in buttons.labels:
            click(k, buttons.ids["Cancel"])
            clicked["second"] = time.monotonic()

    res = k.run(JOB.format(flags="--name doomed", n=3, pause=0.1, hold=120), on_output=on_output, timeout=90)
    assert res.error is None, res.error
    [job] = client.list()
    job_id = job["id"]
    assert f"{job_id} cancelled (its Cancel button)" in res.stdout, res.text
    job = client.get(job_id)
    assert job["state"] == "cancelled"
    # its processes are gone: the runner and the job's own
    assert [r["pid"] for r in jupyter_server._runner_records() if alive(r["pid"])] == []
    assert jupyter_server.job_pids(wait_s=10) == []
    # while it waited the kernel spent almost no CPU (no busy loop), and the next cell ran after it
    print(f"\nkernel CPU while the cell waited: {clicked['cpu_used']:.2f} s in 3 s; "
          f"second click -> cell returned: {res.stream_times[-1][0] - clicked['second']:.1f} s")
    assert clicked["cpu_used"] < 0.6, clicked
    out = wait_for_reply(k, nxt["id"])
    assert out == "the next cell ran\n"
    st = peek(k)
    assert st["state"] == "cancelled" and st["cancel_disabled"] is True


def test_detach_button_of_a_waiting_cell_returns_at_once_and_the_job_goes_on(jupyter_server):
    k = jupyter_server.start_kernel()
    assert k.run(SETUP.format(mode="widget")).error is None
    buttons = Buttons()
    clicked: dict[str, float] = {}

    def on_output(m: dict[str, Any]) -> None:
        buttons(m)
        if "at" not in clicked and buttons.running():
            click(k, buttons.ids["Detach"])
            clicked["at"] = time.monotonic()

    res = k.run(JOB.format(flags="--name detached", n=20, pause=0.2, hold=0), on_output=on_output, timeout=60)
    returned = time.monotonic()
    assert res.error is None, res.error
    assert "[gpuqueue] detached; job" in res.stdout and "goes on" in res.stdout, res.text
    print(f"\nDetach click -> cell returned: {returned - clicked['at']:.2f} s")
    assert returned - clicked["at"] < 2.0
    job_id = re.search(r"job (j-[0-9a-f]+) goes on", res.stdout).group(1)
    client = jupyter_server.client()
    assert client.get(job_id)["state"] == "running"
    assert k.run("'answer' in dir()").outputs[-1]["data"]["text/plain"] == "False"
    assert k.run("print('idle again')").stdout == "idle again\n"
    # attach: the job's results come back
    out = k.run(f"%gpuqueue attach {job_id}", timeout=60)
    assert out.error is None, out.error
    assert k.run("print(answer)").stdout.strip() == "42"


def wait_for_reply(k: Kernel, msg_id: str, timeout: float = 30) -> str:
    """The stdout of a request sent with ``k.client.execute``, once it is done."""
    text, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            m = k.client.get_iopub_msg(timeout=1)
        except Exception:  # noqa: BLE001 - queue.Empty
            continue
        if m["parent_header"].get("msg_id") != msg_id:
            continue
        if m["msg_type"] == "stream":
            text += m["content"]["text"]
        elif m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            return text
    raise AssertionError(f"request {msg_id} did not finish in {timeout}s")


def test_the_widget_marks_the_best_checkpoint_only(jupyter_server):
    """The widget's checkpoint list marks the best one now (step 1), not each one that was the
    best when it was saved (step 0 was, then step 1); step 0, deleted by the rotation
    (max_checkpoints=2), is not listed, and the list says one was deleted."""
    k = jupyter_server.start_kernel()
    assert k.run(SETUP.format(mode="widget")).error is None
    res = k.run(
        "%%train --name ck\nimport gpuqueue, torch\n"
        "ckpt = gpuqueue.Checkpointer(every_steps=1, max_checkpoints=2, monitor='val_loss', mode='min')\n"
        "for step, v in enumerate([0.9, 0.5, 0.7, 0.6]):\n"
        "    ckpt.save(step, {'w': torch.zeros(1)}, metrics={'val_loss': v})\n"
    )
    assert res.error is None, res.error
    shown = peek(k)["checkpoints"]
    items = re.findall(r"<li>(.*?)</li>", shown)
    assert [item.split(":")[0] for item in items] == ["step 1", "step 2", "step 3"], shown
    assert [("(best)" in item) for item in items] == [True, False, False], shown
    assert "1 older checkpoint was deleted by rotation" in shown, shown


@pytest.mark.parametrize("pause", [0.1, 0.8])  # redraws closer, and further apart, than the runner's 0.5 s flush
def test_a_progress_bars_last_state_stays_in_the_widgets_log(jupyter_server, pause):
    """The bar's last state (bar 2/2) stays in the log tail once the next line is printed, as in
    a terminal; it is not wiped by that line, and no earlier state stays (each was shown in place)."""
    k = jupyter_server.start_kernel()
    assert k.run(SETUP.format(mode="widget")).error is None
    res = k.run(
        "%%train\nimport sys, time\nfor i in range(3):\n"
        f"    sys.stderr.write(f'\\rbar {{i}}/2'); sys.stderr.flush(); time.sleep({pause})\n"
        "sys.stderr.write('\\n')\nprint('after the bar', flush=True)\n"
    )
    assert res.error is None, res.error
    log = peek(k)["log"]
    assert html.unescape(re.sub(r"<[^>]*>", "", log)).splitlines() == ["bar 2/2", "after the bar"], log


def test_a_failed_cell_shows_its_error_and_no_empty_notes(jupyter_server):
    """A cell that raises: the widget's status names the error, its log the job's own error line;
    the log had a line `[gpuqueue] info: None` (the job's error record, which has no message),
    under every failed cell."""
    k = jupyter_server.start_kernel()
    assert k.run(SETUP.format(mode="widget")).error is None
    res = k.run("%%train --name fails\nx = 1\nraise ValueError('bad lr')")
    assert res.error is not None and res.error["ename"] == "RemoteJobError", res.text
    st = peek(k)
    assert st["state"] == "failed" and "ValueError: bad lr" in st["status"], st["status"]
    assert "ValueError: bad lr" in st["log"], st["log"]
    assert "None" not in st["log"], st["log"]


def test_a_cell_past_its_time_limit_says_so_once_in_the_widget(jupyter_server):
    """A cell stopped at its time limit: the widget's log said the stop twice, in two wordings
    (the queue's "[gpuqueue] info: stopping (timed_out); grace 10s", the runner's "it has 10s to
    save a checkpoint" only in the text view). Now one line, the text view's and `gpuqueue logs`'
    words, after the queue's warning, with its "warning:" as everywhere."""
    k = jupyter_server.start_kernel()
    assert k.run(SETUP.format(mode="widget")).error is None
    res = k.run("%%train --name slow --timeout 3s\nimport time\nprint('training', flush=True)\ntime.sleep(60)",
                timeout=90)
    assert res.error is not None and res.error["ename"] == "RemoteJobError", res.text
    st = wait_until(lambda: (s := peek(k))["state"] == "timed_out" and s, 30, 0.3, "the widget to say timed_out")
    log = html.unescape(st["log"]).removeprefix("<pre class='gpuqueue-log' style='margin:0'>").removesuffix("</pre>")
    lines = log.splitlines()
    assert [line for line in lines if "stopping" in line or "grace" in line] == [
        "[gpuqueue] stopping (timed out); it has 10s to save a checkpoint, then it is killed"], lines
    assert any(line.startswith("[gpuqueue] warning: the time limit comes in ") for line in lines), lines
    assert lines[0] == "training", lines


def test_a_resumed_attempts_steps_replace_those_past_its_checkpoint_on_the_curve(jupyter_server):
    """A job resumed from a checkpoint (a node lost, a preemption) logs again the steps after it:
    the curve drew them after the first attempt's last step, a line running back across the plot
    (step 9 to step 5). The resumed steps replace the first attempt's from there on."""
    k = jupyter_server.start_kernel()
    assert k.run(SETUP.format(mode="widget")).error is None
    job = """%%train --retries 1 --name resumes
import os
from gpuqueue.job import channel
first = os.environ["GPUQUEUE_ATTEMPT"] == "1"
for i in range(10) if first else range(5, 10):  # attempt 2 goes on from its checkpoint at step 4
    channel.emit("metrics", {"step": i, "loss": (10.0 if first else 1.0) - i / 10})
if first:
    raise SystemExit(3)
"""
    assert k.run(job).error is None
    st = peek(k)
    assert st["state"] == "succeeded", st["status"]
    assert st["points"] == [[float(i), 10.0 - i / 10] for i in range(5)] + [[float(i), 1.0 - i / 10] for i in range(5, 10)]
    assert polyline_points(st["curve_svg"]) == 10 and "loss 0.1 @ step 9" in st["curve_svg"]


def test_the_state_line_of_a_job_not_placed_yet_says_why_without_a_position():
    """A cluster's API answers a submit before its scheduler places the job: the widget's state
    line read `queued: position 0: waiting for the next scheduling pass`; it says the words alone,
    and a placed job its position, as `gpuqueue ls` and `%gpuqueue list` do."""
    from jupyter_gpuqueue.widget import JobWidget

    job = {"id": "j-000000000001", "state": "queued", "attempts": [],
           "pending": {"position": 0, "reason": "pending", "message": "waiting for the next scheduling pass"}}
    placed = {**job, "pending": {"position": 2, "eta_s": 250, "reason": "resources",
                                 "message": "waiting for 1 GPU in pool 'default' (0/1 free)"}}
    for shown, line in ((job, "queued: waiting for the next scheduling pass"),
                        (placed, "queued: position 2, ETA 4m10s: waiting for 1 GPU in pool 'default' (0/1 free)")):
        w = JobWidget(show=False)
        w.start(shown)
        try:
            assert w.state_text() == line
        finally:
            w.close_updates()


def test_which_view_a_cell_gets(monkeypatch, capsys):
    """docs/user-guide.md, "Where widgets cannot render": GPUQUEUE_VIEW=text or widget forces one;
    the default, auto, takes the widget for a JupyterLab / Notebook 7 execute request (its
    metadata), a connected widget manager, or a kernel VS Code started, and text otherwise."""
    from jupyter_gpuqueue.display import use_widgets

    for name in ("GPUQUEUE_VIEW", "VSCODE_PID", "JPY_PARENT_PID"):
        monkeypatch.delenv(name, raising=False)
    lab = {"deletedCells": [], "recordTiming": False, "cellId": "c1"}
    assert not use_widgets(None) and not use_widgets({"cellId": "c1"})  # a raw kernel client, nbconvert
    assert use_widgets(lab) and use_widgets({"recordTiming": True})
    monkeypatch.setenv("VSCODE_PID", "42")
    assert use_widgets(None)  # VS Code's own kernel
    monkeypatch.setenv("JPY_PARENT_PID", "7")
    assert not use_widgets(None)  # a Jupyter server's kernel, whoever runs the browser
    monkeypatch.setenv("GPUQUEUE_VIEW", "text")
    assert not use_widgets(lab)
    monkeypatch.setenv("GPUQUEUE_VIEW", "widget")
    assert use_widgets(None)
    monkeypatch.setenv("GPUQUEUE_VIEW", "fancy")
    assert use_widgets(lab) and not use_widgets(None)
    assert "GPUQUEUE_VIEW='fancy' is not text, widget or auto; using auto" in capsys.readouterr().err


def test_where_the_kernel_cannot_take_clicks_the_waiting_cells_buttons_are_off_and_say_why():
    """docs/user-guide.md: outside ipykernel 6 and 7 (here: no kernel at all) a foreground cell
    waits the plain way, and its widget's Cancel and Detach stay off while it waits, saying so."""
    from jupyter_gpuqueue.commwait import CommWaiter
    from jupyter_gpuqueue.widget import JobWidget

    assert CommWaiter.open() is None
    w = JobWidget(show=False, foreground=True, buttons_live=False)
    try:
        for button in (w.cancel_button, w.detach_button):
            assert button.disabled and "Kernel > Interrupt stops waiting" in button.tooltip, button.tooltip
    finally:
        w.close_updates()
