"""%%train end to end: a real Jupyter server subprocess, a real kernel it started, real jobs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

from helpers.servers import wait_until

TRAIN_CELL = """%%train --name tiny-regression
import torch
torch.manual_seed(0)
model = torch.nn.Linear(3, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
losses = []
for step in range(50):
    loss = ((model(X) - y) ** 2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    losses.append(loss.item())
    if step % 10 == 0:
        print(f"step {step} loss {loss.item():.4f}")
"""


def _jobs(server):
    return server.client().list()


def test_torch_cell_returns_model_and_losses(jupyter_server):
    k = jupyter_server.start_kernel()
    assert k.run("%load_ext jupyter_gpuqueue").error is None
    setup = k.run(
        "import torch\ntorch.manual_seed(1)\nX = torch.randn(64, 3)\n"
        "y = X @ torch.tensor([[1.0], [-2.0], [0.5]])"
    )
    assert setup.error is None, setup.error
    res = k.run(TRAIN_CELL, timeout=180)
    assert res.error is None, res.text
    assert "step 0 loss" in res.stdout and "step 40 loss" in res.stdout
    assert "back in the notebook" in res.stdout and "model" in res.stdout
    check = k.run(
        "print(type(model).__name__, len(losses), losses[-1] < losses[0] * 0.1)\n"
        "print(float(((model(X) - y) ** 2).mean()) < 0.05)"
    )
    assert check.error is None, check.error
    assert check.stdout.split() == ["Linear", "50", "True", "True"]
    [job] = _jobs(jupyter_server)
    assert job["state"] == "succeeded" and job["name"] == "tiny-regression"


def test_log_lines_stream_before_the_job_ends(jupyter_server):
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    res = k.run(
        "%%train\nimport time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(1.0)\nprint('done')",
        timeout=60,
    )
    assert res.error is None, res.text
    times = {text.strip(): t for t, text in res.stream_times}
    tick0 = next(t for line, t in times.items() if line.startswith("tick 0"))
    done = next(t for line, t in times.items() if line.endswith("done") or "done" in line.split())
    # the first line reached the cell output about 2 s before the job printed its last
    assert done - tick0 > 1.5, res.stream_times


def test_cancel_stops_the_process(jupyter_server, tmp_path):
    marker = tmp_path / "alive"
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    res = k.run(
        "%%train --background --name sleeper\nimport os, time, pathlib\n"
        f"p = pathlib.Path({str(marker)!r})\n"
        "for i in range(600):\n    p.write_text(str(os.getpid()))\n    time.sleep(0.1)"
    )
    assert res.error is None, res.text
    [job] = _jobs(jupyter_server)
    wait_until(marker.exists, 30, what="the job to start")
    pid = int(marker.read_text())
    out = k.run(f"%gpuqueue cancel {job['id']}")
    assert "stopping" in out.stdout or "cancelled" in out.stdout
    client = jupyter_server.client()
    wait_until(lambda: client.get(job["id"])["state"] == "cancelled", 30, what="cancelled state")
    import psutil

    wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 10,
               what="the job process to exit")
    attempt = client.get(job["id"])["attempts"][-1]
    assert attempt["outcome"] == "cancelled"


def test_running_job_survives_server_restart(jupyter_server):
    client = jupyter_server.client()
    code = (
        "import time\n"
        "for i in range(40):\n"
        "    print('line', i, flush=True)\n"
        "    time.sleep(0.1)\n"
    )
    import sys

    job = client.submit({"kind": "command", "command": [sys.executable, "-c", code], "name": "survivor"})
    wait_until(lambda: any(e["type"] == "log" for e in client.events(job["id"])), 30, what="first line")
    runner_pids = jupyter_server.job_pids()
    assert runner_pids, "the job's runner should be running"
    jupyter_server.stop()  # the server goes away; the job must not
    time.sleep(1.0)
    assert all(_alive(p) for p in runner_pids), "the job died with the server"
    jupyter_server.start()
    client = jupyter_server.client()
    wait_until(lambda: client.get(job["id"])["state"] == "succeeded", 60, what="the job to finish")
    lines = [e["data"]["line"] for e in client.events(job["id"]) if e["type"] == "log"]
    assert lines == [f"line {i}" for i in range(40)], lines
    assert len(client.get(job["id"])["attempts"]) == 1


def _alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"


def test_two_one_gpu_jobs_share_two_gpus_and_two_gpu_jobs_take_turns(jupyter_server, tmp_path):
    import sys

    client = jupyter_server.client()
    script = tmp_path / "probe.py"
    script.write_text(
        "import json, os, sys, time\n"
        "start = time.time(); time.sleep(1.5)\n"
        "print(json.dumps({'cvd': os.environ['CUDA_VISIBLE_DEVICES'], 'start': start, 'end': time.time()}))\n"
    )
    one = [client.submit({"kind": "command", "command": [sys.executable, str(script)], "gpus": 1}) for _ in range(2)]
    two = [client.submit({"kind": "command", "command": [sys.executable, str(script)], "gpus": 2}) for _ in range(2)]

    def report(job_id):
        wait_until(lambda: client.get(job_id)["state"] in ("succeeded", "failed"), 60, what=job_id)
        assert client.get(job_id)["state"] == "succeeded"
        line = [e["data"]["line"] for e in client.events(job_id) if e["type"] == "log"][-1]
        return json.loads(line)

    a, b = (report(j["id"]) for j in one)
    assert {a["cvd"], b["cvd"]} == {"0", "1"}  # disjoint devices
    assert a["start"] < b["end"] and b["start"] < a["end"]  # at the same time
    c, d = (report(j["id"]) for j in two)
    assert c["cvd"] == d["cvd"] == "0,1"
    assert c["end"] <= d["start"] or d["end"] <= c["start"]  # one after the other


BAD_CELLS = [
    ("%%train\nprint(lock)", "input 'lock'"),
    ("%%train --gpus 99\nprint(1)", "99 GPUs do not fit"),
    ("%%train --pool nowhere\nprint(1)", "unknown pool 'nowhere'"),
    ("%%train --priority urgent\nprint(1)", "invalid choice: 'urgent'"),
    ("%%train --gpus two\nprint(1)", "invalid int value: 'two'"),
    ("%%train --gpus -1\nprint(1)", "--gpus must be 0 or more"),
    ("%%train --timeout soon\nprint(1)", "cannot read duration 'soon'"),
    ("%%train --timeout " + "9" * 400 + "\nprint(1)", "--timeout: duration '9999"),
    ("%%train --timeout 400d\nprint(1)", "is too long: at most 366d00h"),
    ("%%train --name '\x1b[2Jx'\nprint(1)", "spec.name: contains the control character '\\x1b'"),
    ("%%train --bogus\nprint(1)", "unrecognized arguments: --bogus (--bogus is not an option)"),
    ("%%train --gpsu 1\nprint(1)", "unrecognized arguments: --gpsu 1 (did you mean --gpus?)"),
    ("%%train --prority=high\nprint(1)", "unrecognized arguments: --prority=high (did you mean --priority?)"),
    ("%%train --timeout 2 hours\nprint(1)", "unrecognized arguments: hours (each option takes one value: 'hours' "
     "follows one that took its value; quote a value with spaces)"),
    ("%%train --inputs not-a-name\nprint(1)", "not Python names: not-a-name"),
    ("%%train --inputs ghost\nprint(1)", "ghost, which the notebook does not define"),
    ("%%train\nprint(1", "syntax error"),
    ("%%train\nx = 1\n!ls -l", "line 2: '!ls -l' is IPython syntax, and a job runs plain Python"),
    ("%%train\n%time x = 1", "line 1: '%time x = 1' is IPython syntax"),
    ("%%train\nimport asyncio\nawait asyncio.sleep(0)", "line 2: 'await' outside function (the notebook allows"),
    ("%%train --resume-from /no/such/ckpt\nprint(1)", "--resume-from /no/such/ckpt: no such file or folder (give a "
     "checkpoint folder, such as one `%gpuqueue checkpoints ID` lists, or a .pt file); nothing was queued"),
    ("%%train --env OMP_NUM_THREADS\nprint(1)", "--env 'OMP_NUM_THREADS': write --env NAME=VALUE, e.g. --env OMP_NUM_THREADS=4"),
    ("%%train --env 1BAD=x\nprint(1)", "'1BAD' is not an environment variable name"),
    ("%%train --retries -3\nprint(1)", "--retries must be 0 to 20 (retries after a failure), got -3"),
    ("%%train --retries 100\nprint(1)", "--retries must be 0 to 20 (retries after a failure), got 100"),
]


def test_bad_input_is_a_clear_error_and_queues_nothing(jupyter_server):
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue\nimport threading\nlock = threading.Lock()")
    for cell, message in BAD_CELLS:
        res = k.run(cell)
        assert res.error is not None, (cell, res.text)
        assert res.error["ename"] == "UsageError", (cell, res.error)
        assert message in res.stderr, (cell, res.stderr)
        assert "Traceback" not in res.stderr, (cell, res.stderr)
    assert _jobs(jupyter_server) == []


def test_failed_cell_shows_the_remote_traceback(jupyter_server):
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    res = k.run("%%train\ndef f(x):\n    return 1 / x\ny = f(0)")
    assert res.error is not None
    assert res.error["ename"] == "RemoteJobError"
    tb = res.error["traceback"]
    assert "ZeroDivisionError" in tb and "return 1 / x" in tb and "<gpuqueue-cell>" in tb
    [job] = _jobs(jupyter_server)
    assert job["state"] == "failed" and job["attempts"] == 1  # a cell's exception is not retried


def test_interrupt_leaves_the_job_running_and_attach_brings_results(jupyter_server):
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    res = k.run(
        "%%train\nimport time\nfor i in range(8):\n    print('step', i, flush=True)\n    time.sleep(0.5)\nanswer = 42",
        interrupt_after=2.0,
        timeout=60,
    )
    assert "stopped waiting" in res.stdout and "goes on" in res.stdout, res.text
    [job] = _jobs(jupyter_server)
    assert job["state"] in ("queued", "starting", "running")
    k.restart()  # a fresh namespace: the results must come back through attach
    k.run("%load_ext jupyter_gpuqueue")
    out = k.run(f"%gpuqueue attach {job['id']}", timeout=60)
    assert out.error is None, out.text
    steps = [line for line in out.stdout.splitlines() if line.startswith("step ")]
    assert steps == [f"step {i}" for i in range(8)]  # replayed from the start, once, in order
    assert k.run("print(answer)").stdout.strip() == "42"


def test_gpuqueue_verbs(jupyter_server):
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    k.run("%%train --name verbs\nprint('hello from the job')\nz = 7")
    [job] = _jobs(jupyter_server)
    assert job["id"] in k.run("%gpuqueue list").stdout
    # an ended job: where it ran and for how long (it said `succeeded` only)
    status = k.run(f"%gpuqueue status {job['id']}").stdout.strip()
    assert re.fullmatch(rf"{job['id']}: succeeded on local \(CPU\), ran \d+s", status), status
    assert "hello from the job" in k.run(f"%gpuqueue logs {job['id']}").stdout
    late = k.run(f"%gpuqueue cancel {job['id']}")  # it has ended: nothing to cancel, and it says so
    assert late.stdout.strip() == f"{job['id']}: already succeeded; nothing to cancel", late.text
    k.run("del z")
    assert k.run(f"%gpuqueue result {job['id']}").error is None
    assert k.run("print(z)").stdout.strip() == "7"
    for asked in ("%gpuqueue --help", "%gpuqueue help"):
        usage = k.run(asked)  # asked for, so not an error
        assert usage.error is None and usage.stdout.startswith("usage: %gpuqueue list"), (asked, usage.text)
    bad = k.run("%gpuqueue frobnicate")
    assert bad.error["ename"] == "UsageError" and "unknown verb" in bad.stderr
    missing = k.run("%gpuqueue status j-000000000000")
    assert missing.error["ename"] == "UsageError" and "no job" in missing.stderr
    assert "`%gpuqueue list`" in missing.stderr and "`gpuqueue ls`" not in missing.stderr  # the notebook's verb
    typo = k.run("%gpuqueue attach j-nope")
    assert "`%gpuqueue list`" in typo.stderr and "`gpuqueue ls`" not in typo.stderr, typo.stderr
    for line in ("%gpuqueue list --mine", "%gpuqueue list " + job["id"], "%gpuqueue dashboard --everyone"):
        wrong = k.run(line)  # a flag that does nothing is refused, not ignored
        assert wrong.error is not None and wrong.error["ename"] == "UsageError", (line, wrong.text)
        assert "takes only --all" in wrong.stderr and line.split()[-1] in wrong.stderr, wrong.stderr


def test_job_that_died_while_the_server_was_down_is_retried_and_queued_jobs_stay(jupyter_server, tmp_path):
    import sys

    client = jupyter_server.client()
    script = tmp_path / "flaky.py"
    script.write_text(
        "import os, time\n"
        "print('attempt', os.environ['GPUQUEUE_ATTEMPT'], flush=True)\n"
        "if os.environ['GPUQUEUE_ATTEMPT'] == '1':\n    time.sleep(300)\n"
    )
    first = client.submit({"kind": "command", "command": [sys.executable, str(script)], "gpus": 2})
    waiting = client.submit({"kind": "command", "command": [sys.executable, "-c", "print('my turn')"], "gpus": 2})
    wait_until(lambda: client.get(first["id"])["state"] == "running", 30, what="first job running")
    assert client.get(waiting["id"])["state"] == "queued"
    jupyter_server.stop()
    jupyter_server.kill_jobs()  # the node lost the job while nobody was watching
    jupyter_server.start()
    client = jupyter_server.client()
    wait_until(lambda: client.get(first["id"])["state"] == "succeeded", 60, what="the retry to succeed")
    job = client.get(first["id"])
    assert [a["outcome"] for a in job["attempts"]] == ["lost", "succeeded"]
    assert job["failures"] == 0  # a lost process is not the job's failure
    wait_until(lambda: client.get(waiting["id"])["state"] == "succeeded", 60, what="the queued job to run")


def test_job_runs_with_the_kernels_directory_interpreter_and_relative_paths(jupyter_server, tmp_path):
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    where = tmp_path / "project"
    where.mkdir()
    (where / "data.txt").write_text("42\n")
    k.run(f"import os, sys\nos.chdir({str(where)!r})\nkernel_python = sys.executable")
    res = k.run(
        "%%train --gpus 0\nimport os, sys\n"
        "answer = int(open('data.txt').read())\n"  # a relative path, as in the notebook
        "job_cwd, job_python, job_cvd = os.getcwd(), sys.executable, os.environ['CUDA_VISIBLE_DEVICES']"
    )
    assert res.error is None, res.text
    out = k.run("print(answer, job_cwd == os.getcwd(), job_python == kernel_python, repr(job_cvd))")
    assert out.stdout.split() == ["42", "True", "True", "''"]


def test_time_limit_stops_the_job_with_a_warning_first(jupyter_server):
    import sys

    client = jupyter_server.client()
    job = client.submit({"kind": "command", "command": [sys.executable, "-c", "import time; time.sleep(120)"],
                         "timeout_s": 3})
    wait_until(lambda: client.get(job["id"])["state"] == "timed_out", 60, what="the time limit")
    done = client.get(job["id"])
    assert [a["outcome"] for a in done["attempts"]] == ["timed_out"]  # a timeout is final
    events = client.events(job["id"])
    kinds = [e["type"] for e in events]
    assert "warning" in kinds
    # 10% of a 3 s limit ahead: not "in 0s"
    assert any(e["type"] == "warning" and e["data"]["message"] == "the time limit comes in less than a second: save a "
               "checkpoint" for e in events), [e["data"] for e in events if e["type"] == "warning"]


def test_help_lists_the_options_and_runs_nothing(jupyter_server):
    """docs/user-guide.md: `%train --help` lists the options; on a `%%train` line it lists them
    and runs nothing, without failing the cell (Run All goes on)."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    line = k.run("%train --help")
    assert line.error is None, line.text
    assert "--gpus" in line.stdout and "--priority" in line.stdout and "--timeout" in line.stdout
    words = " ".join(line.stdout.split())  # argparse wraps the help text
    assert "(default medium)" in words and "Hugging Face Trainer" in words  # the options say what they do
    cell = k.run("%%train --gpus 1 --help\nran = True")
    assert cell.error is None, cell.text
    assert "--retries" in cell.stdout and "UsageError" not in cell.text
    assert "ran" not in k.run("print(sorted(globals()))").stdout.split("'")
    bare = k.run("%train --gpus 1")  # the line form does not run anything
    assert bare.error["ename"] == "UsageError" and "first line of the cell" in bare.stderr
    empty = k.run("%%train --help")  # IPython refuses an empty cell magic; it points at %train
    assert "%train" in empty.stderr
    assert _jobs(jupyter_server) == []


def test_a_cell_past_its_time_limit_says_it_is_stopping(jupyter_server):
    """The text view of a job stopped by --timeout: a 'stopping' line, never '[gpuqueue] None'."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    res = k.run("%%train --timeout 2s\nimport time\ntime.sleep(60)", timeout=60)
    assert res.error is not None and res.error["ename"] == "RemoteJobError", res.text
    assert "None" not in res.stdout, res.stdout
    assert "[gpuqueue] stopping (timed out); it has 10s to save a checkpoint" in res.stdout, res.stdout
    said = [line for line in res.stdout.splitlines() if "stopping" in line or "grace" in line]
    assert len(said) == 1, said  # once, as in the widget and `gpuqueue logs`


def test_a_timed_out_cell_names_its_time_limit_and_the_fix(jupyter_server):
    """The error of a cell stopped by --timeout says why, not 'timed_out: timed_out'."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    res = k.run("%%train --timeout 2s\nimport time\ntime.sleep(60)", timeout=60)
    assert res.error is not None and res.error["ename"] == "RemoteJobError", res.text
    assert "timed_out: timed_out" not in res.error["traceback"], res.error
    assert "it ran past its time limit of 2s; a longer --timeout gives it more time" in res.error["traceback"]


def test_an_output_the_cell_never_assigned_is_named(jupyter_server):
    """--outputs names a variable the cell does not set: the cell says it did not come back."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    res = k.run("%%train --outputs model,modle\nmodel = 'trained'")
    assert res.error is None, res.text
    assert "back in the notebook: model" in res.stdout, res.text
    assert "[gpuqueue] not returned: modle: --outputs names it, but the cell did not assign it" in res.stderr


def test_the_result_of_a_job_cancelled_while_queued_says_what_happened(jupyter_server):
    """`%gpuqueue result` of a cancelled job: why there is nothing, not 'cancelled: cancelled
    (attempt 0)'."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    k.run("%%train --gpus 2 --background\nimport time\ntime.sleep(60)")
    k.run("%%train --gpus 2 --background --name waits\nx = 1")
    job = next(j for j in _jobs(jupyter_server) if j["name"] == "waits")
    assert "cancelled" in k.run(f"%gpuqueue cancel {job['id']}").stdout
    res = k.run(f"%gpuqueue result {job['id']}")
    assert res.error is not None and res.error["ename"] == "RemoteJobError", res.text
    tb = res.error["traceback"]
    assert f"Job {job['id']} cancelled (before it started)" in tb, tb
    assert "it was cancelled before it finished; it has no results to bring back" in tb, tb
    assert "cancelled: cancelled" not in tb and "attempt 0" not in tb, tb


def test_list_says_why_a_job_waits_in_words(jupyter_server):
    """`%gpuqueue list` gave a waiting job's reason as its code (`#1 resources`); it says it in
    the words `%gpuqueue status` uses."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    k.run("%%train --gpus 2 --background --name holds\nimport time\ntime.sleep(60)")
    k.run("%%train --gpus 2 --background --name waits\nx = 1")
    wait_until(lambda: any(j["state"] == "running" for j in _jobs(jupyter_server)), 30, what="the first job to run")
    line = next(li for li in k.run("%gpuqueue list").stdout.splitlines() if "waits" in li)
    assert "#1: waiting for 2 GPUs in pool 'default' (0/2 free)" in line, line
    assert not line.rstrip().endswith("resources"), line
    for j in _jobs(jupyter_server):
        jupyter_server.client().cancel(j["id"])


def test_status_says_where_a_job_runs_and_why_it_ended(jupyter_server):
    """`%gpuqueue status` of a running job said `j-…: running` only; it says where (node, GPUs)
    and for how long. Of a job that ran out of time it said `timed_out` only; it says why and
    what to change, as the cell's error does."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    k.run("%%train --gpus 1 --background --name runs\nimport time\ntime.sleep(60)")
    [job] = _jobs(jupyter_server)
    wait_until(lambda: jupyter_server.client().get(job["id"])["state"] == "running", 30, what="the job to run")
    line = k.run(f"%gpuqueue status {job['id']}").stdout.strip()
    assert re.fullmatch(rf"{job['id']}: running on local \(GPU [01]\), for \d+s", line), line
    jupyter_server.client().cancel(job["id"])
    late = k.run("%%train --timeout 1s --name late\nimport time\ntime.sleep(30)")
    assert late.error is not None, late.text
    tmo = next(j for j in _jobs(jupyter_server) if j["name"] == "late")
    line = k.run(f"%gpuqueue status {tmo['id']}").stdout.strip()
    assert re.fullmatch(re.escape(f"{tmo['id']}: timed_out on local (CPU), ran ") + r"\ds"
                        + re.escape(" - it ran past its time limit of 1s; a longer --timeout gives it more time"),
                        line), line


PRECISION_CELL = """%%train --precision bf16 --grad-checkpointing --outputs opts
import os, torch
from gpuqueue.distributed import autocast, grad_checkpointing
from transformers import Trainer, TrainingArguments
with autocast():
    dtype = str((torch.ones(2, 2) @ torch.ones(2, 2)).dtype)
class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)
    def forward(self, x):
        return {"loss": self.lin(x).sum()}
args = TrainingArguments(output_dir=os.path.join(os.environ["GPUQUEUE_JOB_DIR"], "hf"), report_to=[])
built = Trainer(model=Tiny(), args=args).args
opts = [os.environ["GPUQUEUE_PRECISION"], grad_checkpointing(), dtype, built.bf16, built.fp16,
        built.gradient_checkpointing]
"""


def test_env_sets_variables_in_the_job(jupyter_server):
    """`%%train --env NAME=VALUE` (again for more) sets them in the job's environment, as
    `gpuqueue submit --env` does for a command: the knobs training.md names for a job's env
    (OMP_NUM_THREADS, GPUQUEUE_LAUNCHER, GPUQUEUE_HF_HOOK) had no way into a cell's job."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    res = k.run("%%train --env GREETING=hi --env OMP_NUM_THREADS=3 --env EQ=a=b\nimport os\n"
                "seen = [os.environ[n] for n in ('GREETING', 'OMP_NUM_THREADS', 'EQ')]")
    assert res.error is None, res.text
    assert k.run("print(seen)").stdout.strip() == "['hi', '3', 'a=b']"
    assert "--env NAME=VALUE" in k.run("%train --help").stdout
    # --precision and --grad-checkpointing (README, training.md): gpuqueue.distributed.autocast() and a
    # Hugging Face Trainer built in the job (the job's import hook) take them, with nothing in the cell
    res = k.run(PRECISION_CELL)
    assert res.error is None, res.text
    assert k.run("print(opts)").stdout.strip() == "['bf16', True, 'torch.bfloat16', True, False, True]"


def test_checkpoints_mark_the_best_one_only(jupyter_server):
    """`%gpuqueue checkpoints` marks the best checkpoint (step 1, val_loss 0.5), not every
    checkpoint that was the best when it was saved; and it lists only the checkpoints that still
    exist: step 0, deleted by the rotation (max_checkpoints=2), is not offered as a path to load
    or to --resume-from (it was, as if it were there), and the listing says one was deleted. The
    widget's list says the same, with the reference --resume-from takes."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue\nimport os\nos.environ['GPUQUEUE_VIEW'] = 'widget'")
    res = k.run(
        "%%train --name ck\nimport gpuqueue, torch\n"
        "ckpt = gpuqueue.Checkpointer(every_steps=1, max_checkpoints=2, monitor='val_loss', mode='min')\n"
        "for step, v in enumerate([0.9, 0.5, 0.7, 0.6]):\n"
        "    ckpt.save(step, {'w': torch.zeros(1)}, metrics={'val_loss': v})\n"
    )
    assert res.error is None, res.text
    [job] = _jobs(jupyter_server)
    out = k.run(f"%gpuqueue checkpoints {job['id']}").stdout.splitlines()
    heads, saved = out[0:6:2], out[1:6:2]  # each: what --resume-from takes, then where its files were saved
    assert [line.split(":")[0] for line in heads] == ["step 1", "step 2", "step 3"], out
    assert [line.endswith("(best)") for line in heads] == [True, False, False], out
    assert out[7:] == ["(1 older checkpoint was deleted by rotation: Checkpointer(max_checkpoints=...) "
                       "keeps the newest and the best)"], out
    for line in saved:
        assert os.path.isdir(line.split(": ", 1)[1]), line  # each path listed exists
    widget = k.run("print(get_ipython().magics_manager.registry['GPUQueueMagics'].last_view.ckpts.value)").stdout
    assert "step 0:" not in widget and "step 1:" in widget and "1 older checkpoint was deleted" in widget, widget
    assert f"step 1: --resume-from {job['id']}/step-1" in widget and "saved on node local: " in widget, widget


def test_resume_from_a_checkpoint_another_job_listed(jupyter_server):
    """docs/training.md, "Resume as a new job": a path `%gpuqueue checkpoints` lists, given to
    `%%train --resume-from`, is where the new job's `Checkpointer.load()` starts (its own folder
    has none yet)."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    first = k.run("%%train --name first\nimport gpuqueue\n"
                  "gpuqueue.Checkpointer().save(7, {'w': 3.5}, metrics={'loss': 0.25})")
    assert first.error is None, first.text
    [job] = _jobs(jupyter_server)
    listed = k.run(f"%gpuqueue checkpoints {job['id']}").stdout
    path = listed.splitlines()[1].split(": ", 1)[1]  # where its files were saved
    second = k.run(f"%%train --resume-from {path}\nimport gpuqueue\nstate = gpuqueue.Checkpointer().load()")
    assert second.error is None, second.text
    assert k.run("print(state)").stdout.strip() == "{'w': 3.5}"


def test_a_name_that_cannot_come_back_says_what_to_do(jupyter_server):
    """A cell whose `trainer` (or a lock, a generator...) cannot be pickled: the other names come
    back, and the cell says what to do about the one that did not (it named it and the pickling
    error only; every Hugging Face cell showed that for `trainer`, with no next step)."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    res = k.run("%%train\nimport threading\nlk = threading.Lock()\nweights = [1.0, 2.0]")
    assert res.error is None, res.text
    assert "back in the notebook: weights" in res.stdout, res.stdout
    assert "[gpuqueue] not returned: lk: TypeError: cannot pickle '_thread.lock' object" in res.stderr, res.stderr
    assert ("the names above stay in the job (the others came back): save what you need of one to a file "
            "in the cell (e.g. trainer.save_model(path)), or name only what should come back with --outputs a,b"
            ) in res.stderr, res.stderr
    assert k.run("print(weights, 'lk' in dir())").stdout.split() == ["[1.0,", "2.0]", "False"]


def test_a_payload_over_the_servers_limit_names_the_largest_inputs(jupyter_server_factory):
    """The server's limit (max_payload_mb, or a cluster API's) can be lower than the kernel's own
    check: its refusal then names the inputs that make the cell big, as the kernel's does."""
    server = jupyter_server_factory(args=["--GPUQueueApp.max_payload_mb=1"])
    k = server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue\nbig = b'x' * 3_000_000\nsmall = 1")
    res = k.run("%%train\nn = len(big) + small")
    assert res.error is not None and res.error["ename"] == "UsageError", res.text
    assert "over the 1 MB limit" in res.stderr, res.stderr
    assert "The largest inputs: big (3.0 MB) (save them to a file" in res.stderr, res.stderr
    assert _jobs(server) == []


def test_the_result_of_a_command_job_says_there_is_nothing_to_bring_back(jupyter_server):
    """`%gpuqueue result` of a job submitted with `gpuqueue submit` (a command): a line saying
    what it is, not an empty cell."""
    import sys

    client = jupyter_server.client()
    job = client.submit({"kind": "command", "command": [sys.executable, "-c", "print('from the CLI')"]})
    wait_until(lambda: client.get(job["id"])["state"] == "succeeded", 60, what="the command job")
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    res = k.run(f"%gpuqueue result {job['id']}")
    assert res.error is None, res.text
    assert res.stdout.strip() == (f"[gpuqueue] {job['id']} succeeded (a command job: nothing comes back to the "
                                  f"notebook; `%gpuqueue logs {job['id']}` shows its output)"), res.text


def _as_shown(text):
    """A stream's text as a frontend (or a terminal) shows it: each line as its last ``\\r``
    redraw left it."""
    return [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")[:-1]]


def _job_lines(stdout):
    return [line for line in _as_shown(stdout) if not line.startswith("[gpuqueue]")]


BAR_CELL = (
    "%%train\nimport sys, time\ntime.sleep(1)  # 'running' is printed before the bar starts\n"
    "for i in range(3):\n"
    "    sys.stderr.write(f'\\rbar {{i}}/2'); sys.stderr.flush(); time.sleep({pause})\n"
    "sys.stderr.write('\\n')\nprint('after the bar', flush=True)\n"
)


def _check_bar_output(server, k, res):
    """The cell shows the bar's last state, then the line printed after it; `%gpuqueue logs`
    and `gpuqueue logs` print those two lines, in that order, and nothing else of the job's (the
    CLI says the queue's lines too, "[gpuqueue] ...", on stderr)."""
    assert res.error is None, res.text
    assert _as_shown(res.stderr) == ["bar 2/2"], repr(res.stderr)
    assert _job_lines(res.stdout) == ["after the bar"], repr(res.stdout)
    [job] = _jobs(server)
    logs = k.run(f"%gpuqueue logs {job['id']}")
    assert logs.error is None and logs.stdout.splitlines() == ["bar 2/2", "after the bar"], logs.text
    cli = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "logs", job["id"]], capture_output=True, text=True,
                         env=dict(os.environ, GPUQUEUE_URL=server.url, GPUQUEUE_TOKEN=server.token), timeout=60)
    # the job's own lines, and the queue's ("[gpuqueue] running", ...) on stderr as with -f
    job_stderr = [line for line in cli.stderr.splitlines() if not line.startswith("[gpuqueue]")]
    assert (cli.returncode, job_stderr, cli.stdout) == (0, ["bar 2/2"], "after the bar\n"), cli
    assert "[gpuqueue] succeeded" in cli.stderr.splitlines(), cli


def test_a_progress_bars_last_state_stays_in_the_output(jupyter_server):
    """A tqdm-style bar (\\r redraws, then a newline): its last state is printed once, before the
    next line, in the cell's text and in `%gpuqueue logs`, as a terminal shows it."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    _check_bar_output(jupyter_server, k, k.run(BAR_CELL.format(pause=0.1)))


def test_a_slowly_redrawn_bar_leaves_only_its_last_state(jupyter_server):
    """Redraws further apart than the runner's flush of a line being written (0.5 s): each is
    shown in place, none stays as a line of its own, and the last state shows once."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    _check_bar_output(jupyter_server, k, k.run(BAR_CELL.format(pause=0.8)))


def test_a_gpu_cell_on_a_server_without_gpus_says_how_to_declare_them(jupyter_server_factory):
    """README: without NVIDIA GPUs, GPUQUEUE_GPUS=2 declares two. A user who started Jupyter
    without it and asks for a GPU is told that, not only 'ask for at most 0'."""
    server = jupyter_server_factory(gpus=0)
    k = server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    res = k.run("%%train --gpus 1\nx = 1")
    assert res.error is not None and res.error["ename"] == "UsageError", res.text
    assert "This Jupyter server has no GPUs" in res.stderr and "GPUQUEUE_GPUS=2" in res.stderr, res.stderr
    assert _jobs(server) == []
    cpu = k.run("%%train --gpus 0\nx = 1")  # a CPU cell still runs there
    assert cpu.error is None, cpu.text


def test_a_cell_reading_a_name_nobody_defines_is_warned_at_once(jupyter_server):
    """A job may wait hours for GPUs: a name the cell reads that neither the notebook nor the
    cell defines is named when it is queued, not only by the job's NameError. Names of the
    cell's own functions, comprehensions and builtins are not."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue\nsteps = 3")
    res = k.run("%%train\ndef f(a):\n    return [b * a for b in range(steps)]\nloss = f(2) + train_step()")
    assert res.error is not None and res.error["ename"] == "RemoteJobError", res.text  # it still ran
    warning = [line for line in res.stderr.splitlines() if line.startswith("[gpuqueue] warning")]
    assert warning == ["[gpuqueue] warning: the cell reads train_step, which is neither sent with it (a "
                       "notebook name) nor defined in the cell: in the job that line stops with a NameError"], res.stderr
    clean = k.run("%%train\ndef f(a):\n    return [b * a for b in range(steps)]\nloss = f(2)")
    assert clean.error is None and "warning" not in clean.text, clean.text


def test_re_running_a_cell_after_a_kernel_restart_attaches_without_a_false_warning(jupyter_server):
    """user-guide.md: after a kernel restart, re-running the cell attaches to its job. The
    notebook's names are gone then, and the cell warned that the job would stop with a NameError
    on `X`, while the job it attached to had been sent X and went on to succeed."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue\nX = [1.0, 2.0]")
    cell = "%%train --background --name rerun\nimport time\ntime.sleep(4)\nm = sum(X)"
    assert k.run(cell, cell_id="cell-1").error is None
    k.restart()
    k.run("%load_ext jupyter_gpuqueue")
    again = k.run(cell.replace(" --background", ""), cell_id="cell-1", timeout=60)
    assert again.error is None, again.text
    assert "[gpuqueue] attached to" in again.stdout, again.stdout
    assert "warning" not in again.stderr, again.stderr
    assert k.run("print(m)").stdout.strip() == "3.0"
    assert len(_jobs(jupyter_server)) == 1


def test_preempt_says_a_job_without_checkpoints_starts_over(jupyter_server):
    """`%gpuqueue preempt` promised "it checkpoints" of any job; one that saves none starts over."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    k.run("%%train --background\nimport time\ntime.sleep(60)")
    [job] = _jobs(jupyter_server)
    wait_until(lambda: jupyter_server.client().get(job["id"])["state"] == "running", 30, what="the job to run")
    out = k.run(f"%gpuqueue preempt {job['id']}")
    assert out.error is None, out.text
    assert "it checkpoints" not in out.stdout, out.stdout
    assert "if it saves any (gpuqueue.Checkpointer), else it starts over" in out.stdout, out.stdout
    k.run(f"%gpuqueue cancel {job['id']}")


def test_a_two_rank_cell_shows_rank_0_plainly_and_the_others_marked(jupyter_server):
    """`%%train --gpus 2` runs the cell as 2 torchrun ranks (here on CPU): rank 0's output shows
    as a single process's would (no torchrun `[default0]:` prefix, its bar live); rank 1's
    shows too, each line marked `[rank1]`, and so does its error when it fails."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    res = k.run(
        "%%train --gpus 2\nimport os, sys, time\nrank = int(os.environ['RANK'])\n"
        "for i in range(3):\n"
        "    sys.stderr.write(f'\\rbar {i}/2'); sys.stderr.flush(); time.sleep(0.2)\n"
        "sys.stderr.write('\\n')\nprint(f'hello from rank {rank}', flush=True)\nanswer = 42\n", timeout=180)
    assert res.error is None, res.text
    assert sorted(_job_lines(res.stdout)) == ["[rank1] hello from rank 1", "hello from rank 0"], repr(res.stdout)
    bars = [line for line in _as_shown(res.stderr) if "bar" in line]
    assert sorted(bars) == ["[rank1] bar 2/2", "bar 2/2"], repr(res.stderr)
    assert k.run("print(answer)").stdout == "42\n"
    assert "[default" not in res.text


def test_when_one_rank_of_a_cell_fails_rank_0_and_the_error_name_that_rank(jupyter_server):
    """Rank 1 of a `--gpus 2` cell raises: its lines show marked `[rank1]`; rank 0, which
    torchrun then stops, says it stopped because rank 1 failed (not that the job was asked to
    stop: nobody cancelled), torchrun's report naming its wrapper is not shown, and the cell's
    error and `%gpuqueue status` name the failing rank and its exception."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    failed = k.run(
        "%%train --gpus 2\nimport os, sys, time\nif os.environ['RANK'] == '1':\n"
        "    print('careful', file=sys.stderr, flush=True)\n    raise ValueError('rank 1 fails')\n"
        "time.sleep(30)\n", timeout=180)
    assert failed.error is not None and failed.error["ename"] == "RemoteJobError", failed.text
    shown = _as_shown(failed.stderr)
    assert "[rank1] careful" in shown and "[rank1] ValueError: rank 1 fails" in shown, repr(failed.stderr)
    assert "gpuqueue: stopped: rank 1 failed (see [rank1] above)" in shown, repr(failed.stderr)
    assert "gpuqueue: rank 1 failed: ValueError: rank 1 fails; the other ranks were stopped" in shown, repr(failed.stderr)
    for noise in ("JobStopped", "asked to stop", "gpuqueue.job.distributed", "FAILED", "exitcode", "[default"):
        assert noise not in failed.text + failed.error["traceback"], (noise, failed.text, failed.error)
    [job] = _jobs(jupyter_server)
    assert failed.error["evalue"] == f"job {job['id']} failed: rank 1 failed: ValueError: rank 1 fails", failed.error
    remote = failed.error["traceback"]
    assert "rank 1 failed:" in remote and "raise ValueError('rank 1 fails')" in remote, remote
    status = k.run(f"%gpuqueue status {job['id']}")
    assert "rank 1 failed: ValueError: rank 1 fails" in status.stdout, status.text


def test_a_cancelled_two_rank_cell_still_says_it_was_asked_to_stop(jupyter_server):
    """A real cancel of a `--gpus 2` cell: both ranks say the job was asked to stop, and no rank
    is named as failed (each rank's own exit on the notice is not a failure)."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    k.run("%%train --gpus 2 --background\nimport os, time\nprint('up', os.environ['RANK'], flush=True)\n"
          "time.sleep(120)\n")
    [job] = _jobs(jupyter_server)
    client = jupyter_server.client()
    wait_until(lambda: len([e for e in client.events(job["id"]) if e["type"] == "log" and "up" in e["data"]["line"]]) == 2,
               120, what="both ranks to start")
    k.run(f"%gpuqueue cancel {job['id']}")
    wait_until(lambda: client.get(job["id"])["state"] == "cancelled", 60, what="the job to stop")
    logs = k.run(f"%gpuqueue logs {job['id']}").stdout
    assert "JobStopped: the job was asked to stop (cancel, preemption or time limit)" in logs.splitlines(), logs
    assert "[rank1] JobStopped: the job was asked to stop (cancel, preemption or time limit)" in logs.splitlines(), logs
    assert "failed" not in logs, logs
