"""`%%train --resume-from JOB_ID[/step-N]` in embedded mode (docs/training.md, "Resume as a new
job"): a real Jupyter server, a real kernel running the magic, real jobs. `%gpuqueue
checkpoints` prints the reference to pass for each checkpoint; a reference to the job's latest
or to one step resumes from it; a reference that names no checkpoint of the user's is refused
before anything is queued, naming the fix."""

from __future__ import annotations

import os

FIRST = ("%%train --name first\nimport gpuqueue\nck = gpuqueue.Checkpointer(max_checkpoints=5)\n"
         "for s in (1, 2, 3):\n    ck.save(s, {'step': s, 'w': s * 1.5}, metrics={'loss': 1.0 / s})\n")
RESUME = ("import gpuqueue\nstate = gpuqueue.Checkpointer().load()\n"
          "print('resumed from step', state['step'], flush=True)\n")


def _ids(server) -> list[str]:
    return [j["id"] for j in server.client().list()]


def test_a_cell_resumes_from_another_jobs_checkpoint_by_reference(jupyter_server):
    k = jupyter_server.start_kernel()
    assert k.run("%load_ext jupyter_gpuqueue").error is None
    first = k.run(FIRST)
    assert first.error is None, first.text
    [job] = _ids(jupyter_server)

    listed = k.run(f"%gpuqueue checkpoints {job}").stdout.splitlines()
    assert listed[0::2][:3] == [f"step 1: --resume-from {job}/step-1  loss=1",
                                f"step 2: --resume-from {job}/step-2  loss=0.5",
                                f"step 3: --resume-from {job}/step-3  loss=0.3333"], listed
    saved = listed[1::2][:3]
    assert all(line.startswith("    saved on node local: ") for line in saved), listed
    assert all(os.path.isdir(line.split(": ", 1)[1]) for line in saved), listed
    assert listed[6] == f"(`--resume-from {job}` takes the latest; a reference works on any node, " \
                        "the files above are where the job saved them)", listed

    latest = k.run(f"%%train --resume-from {job}\n{RESUME}")  # its latest: step 3
    assert latest.error is None, latest.text
    assert "resumed from step 3" in latest.stdout, latest.text
    saved3 = listed[5].split(": ", 1)[1]  # the folder in the first job's own folder
    assert f"[gpuqueue] info: loaded checkpoint step 3 from {saved3}\n" in latest.stdout, latest.text

    for ref in (f"{job}/step-2", f"{job}/step-000000002", f"{job}/default/step-2"):  # as listed, as the folder, by run
        one = k.run(f"%%train --resume-from {ref}\n{RESUME}")
        assert one.error is None, (ref, one.text)
        assert "resumed from step 2" in one.stdout, (ref, one.text)


def test_a_reference_that_names_no_checkpoint_is_refused_and_queues_nothing(jupyter_server):
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    assert k.run(FIRST).error is None
    [job] = _ids(jupyter_server)
    none = k.run("%%train --name none\nx = 1")
    assert none.error is None, none.text
    empty = next(i for i in _ids(jupyter_server) if i != job)
    bad = {
        "j-000000000000": "--resume-from j-000000000000: you have no job j-000000000000; give one of your own "
                          "jobs' ids (`%gpuqueue list`, `gpuqueue ls`): only your own jobs' checkpoints can be "
                          "resumed from",
        f"{job}/step-9": f"--resume-from {job}/step-9: job {job} has no complete checkpoint at step 9; it has "
                         f"steps 1, 2, 3 (`%gpuqueue checkpoints {job}` lists them)",
        f"{job}/other/step-1": f"job {job} has no complete checkpoint of run other; `%gpuqueue checkpoints {job}`",
        empty: f"--resume-from {empty}: job {empty} has no complete checkpoint; `%gpuqueue checkpoints {empty}` "
               "lists them",
        f"{job}/latest": f"--resume-from {job}/latest: {job} is a job id, but the rest is not a checkpoint of it: "
                         f"write {job} (its latest checkpoint), {job}/step-N or {job}/NAME/step-N, as "
                         f"`%gpuqueue checkpoints {job}` prints them (a folder named like a job: ./{job}/latest)",
        f"{job}/step-" + "9" * 13: "is a job id, but the rest is not a checkpoint of it",
        f"{job}/{'n' * 150}/step-1": "is a job id, but the rest is not a checkpoint of it",
    }
    for ref, message in bad.items():
        res = k.run(f"%%train --resume-from {ref}\nx = 2")
        assert res.error is not None and res.error["ename"] == "UsageError", (ref, res.text)
        assert "the job was not queued: " in res.stderr and message in res.stderr, (ref, res.stderr)
        assert "Traceback" not in res.stderr, (ref, res.stderr)
    assert sorted(_ids(jupyter_server)) == sorted([job, empty])  # nothing was queued


PLANTS = ("%%train --name plants\nimport os, gpuqueue\nck = gpuqueue.Checkpointer()\n"
          "for s in (1, 2):\n    ck.save(s, {'step': s})\n"
          "for odd in ('step-\\u00b2', 'step-\\u0663', 'step-' + '9' * 40):  # superscript 2, Arabic-Indic 3, huge\n"
          "    d = os.path.join(os.environ['GPUQUEUE_JOB_DIR'], 'checkpoints', 'default', odd)\n"
          "    os.makedirs(d)\n    open(os.path.join(d, 'COMPLETE'), 'w').close()\n")


def test_folders_a_job_names_like_odd_steps_are_no_checkpoints_and_break_nothing(jupyter_server):
    """A job's own folders named ``step-²`` (a digit to str.isdigit, not to int), ``step-٣`` or
    with 40 digits: a reference to that job resumes from its real latest checkpoint (was: a 500
    at submit, 'internal error in gpuqueue')."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    first = k.run(PLANTS)
    assert first.error is None, first.text
    [job] = _ids(jupyter_server)
    latest = k.run(f"%%train --resume-from {job}\n{RESUME}")
    assert latest.error is None, latest.text
    assert "resumed from step 2" in latest.stdout, latest.text
    three = k.run(f"%%train --resume-from {job}/step-3\n{RESUME}")
    assert three.error is not None and "has no complete checkpoint at step 3; it has steps 1, 2" in three.stderr, \
        three.text
