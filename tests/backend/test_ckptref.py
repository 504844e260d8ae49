"""Job-relative checkpoint references (``gpuqueue.queue.ckptref``): which text is one, which
checkpoint one names, and the words of a refusal. End to end: tests/jupyter/test_resume_ref.py
(embedded mode) and tests/cluster/test_shared_resume.py (cluster mode)."""

from __future__ import annotations

import pytest

from gpuqueue.queue import ckptref
from gpuqueue.queue.models import EDGE, JobSpec

JOB = "j-0123456789ab"


@pytest.mark.parametrize("text, job, name, step", [
    (JOB, JOB, None, None), (f"{JOB}/", JOB, None, None), (f"{JOB}/step-7", JOB, None, 7),
    (f"{JOB}/step-000000007", JOB, None, 7), (f"{JOB}/trainer-0/step-40", JOB, "trainer-0", 40),
])
def test_the_forms_of_a_reference(text: str, job: str, name: str, step: int) -> None:
    assert ckptref.parse(text) == ckptref.Ref(job, name, step, text)


@pytest.mark.parametrize("text", ["/ckpt/step-000000007", "./j-0123456789ab", "s3://b/j-0123456789ab",
                                  "j-0123456789", "j-0123456789abc/step-1", "checkpoint.pt", ""])
def test_paths_and_urls_are_not_references(text: str) -> None:
    assert ckptref.parse(text) is None


@pytest.mark.parametrize("text", [f"{JOB}/step-", f"{JOB}/step-x", f"{JOB}/step-1/x", f"{JOB}/../x",
                                  f"{JOB}/.hidden/step-1", f"{JOB}/step-{'1' * 13}", f"{JOB}/{'n' * 101}/step-1"])
def test_a_malformed_reference_is_refused_at_the_edge_naming_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match=f"{JOB} is a job id, but the rest is not a checkpoint of it: write {JOB} "):
        JobSpec.model_validate({"kind": "command", "command": ["true"], "resume_from": text}, context=EDGE)


def test_which_checkpoint_a_reference_names() -> None:
    found = [("default", 10), ("default", 20), ("eval", 20), ("eval", 30)]
    assert ckptref.choose(ckptref.parse(JOB), found) == ("eval", 30)  # the highest step
    assert ckptref.choose(ckptref.parse(f"{JOB}/step-10"), found) == ("default", 10)
    assert ckptref.choose(ckptref.parse(f"{JOB}/default/step-20"), found) == ("default", 20)
    with pytest.raises(ckptref.RefError) as e:
        ckptref.choose(ckptref.parse(f"{JOB}/step-20"), found)
    assert str(e.value) == (f"--resume-from {JOB}/step-20: job {JOB} has step 20 in several runs (default, eval): "
                            f"write {JOB}/NAME/step-20, e.g. {JOB}/default/step-20")
    with pytest.raises(ckptref.RefError, match=f"job {JOB} has no complete checkpoint at step 5; it has steps 10, 20, 30"):
        ckptref.choose(ckptref.parse(f"{JOB}/step-5"), found)


def test_a_listing_names_the_run_only_where_two_runs_kept_the_same_step() -> None:
    events = [{"type": "state", "data": {"state": "starting", "node": "n1"}},
              {"type": "checkpoint", "data": {"step": 20, "name": "default", "path": "/a/default/step-000000020"}},
              {"type": "checkpoint", "data": {"step": 20, "name": "eval", "path": "/a/eval/step-000000020"}},
              {"type": "state", "data": {"state": "starting", "node": "n2"}},
              {"type": "checkpoint", "data": {"step": 30, "name": "eval", "path": "/b/eval/step-000000030"}}]
    assert ckptref.listing_lines(JOB, events)[:6] == [
        f"step 20: --resume-from {JOB}/default/step-20", "    saved on node n1: /a/default/step-000000020",
        f"step 20: --resume-from {JOB}/eval/step-20", "    saved on node n1: /a/eval/step-000000020",
        f"step 30: --resume-from {JOB}/step-30", "    saved on node n2: /b/eval/step-000000030"]


@pytest.mark.parametrize("folder", ["step-\u00b2", "step-\u0663", "step-" + "9" * 13, "step-" + "9" * 5000, "step-",
                                    "step--1", "step-1 ", "step-+1"])
def test_a_folder_whose_step_is_not_ascii_digits_is_no_checkpoint(folder: str) -> None:
    assert ckptref.step_of(folder) is None  # was: ValueError from int() for some ('²', 5000 digits)


def test_checkpoint_records_no_checkpointer_writes_are_left_out_of_a_listing() -> None:
    forged = [{"type": "checkpoint", "data": d} for d in (
        {"step": 5, "name": ["a"]}, {"step": 6, "rotated": 5}, {"step": 7, "metrics": "x"}, {"step": True},
        {"step": "9"}, {"step": 3, "name": "default", "path": "/p"})]
    assert ckptref.listing_lines(JOB, forged)[0::2][:3] == [
        f"step 6: --resume-from {JOB}/step-6", f"step 7: --resume-from {JOB}/step-7", f"step 3: --resume-from {JOB}/step-3"]
    assert ckptref.found_in([e["data"] for e in forged]) == [("default", 6), ("default", 7), ("default", 3)]


@pytest.mark.parametrize("name", ["my run", "\u00fcber", ".hidden", "a/b", "-lead"])
def test_a_run_whose_name_fits_no_reference_is_listed_with_its_path_not_a_refused_reference(name: str) -> None:
    """Two runs kept step 20 and one's name fits no ``JOB_ID/NAME/step-N``: its entry (in
    ``%gpuqueue checkpoints``, ``gpuqueue checkpoints`` and the widget, all ``entry_lines``) says to
    resume from its path; was ``--resume-from JOB/my run/step-20``, which the submit refused."""
    events = [{"type": "state", "data": {"state": "starting", "node": "n1"}},
              {"type": "checkpoint", "data": {"step": 20, "name": "default", "path": "/a/default/step-000000020"}},
              {"type": "checkpoint", "data": {"step": 20, "name": name, "path": f"/a/{name}/step-000000020"}}]
    lines = ckptref.listing_lines(JOB, events)
    assert lines[:4] == [
        f"step 20: --resume-from {JOB}/default/step-20", "    saved on node n1: /a/default/step-000000020",
        f"step 20: run '{name}', which no reference names (another run kept this step, and the run name in "
        f"JOB_ID/NAME/step-N has only letters, digits, _ . -): --resume-from its path below, where its files are",
        f"    saved on node n1: /a/{name}/step-000000020"]
    for line in lines:  # every reference a listing offers is one a submit takes
        if "--resume-from j-" in line:
            ckptref.parse(line.split("--resume-from ", 1)[1].split()[0].rstrip(")"))
    with pytest.raises(ckptref.RefError) as e:  # the refusal of JOB/step-20 names the run that fits
        ckptref.choose(ckptref.parse(f"{JOB}/step-20"), [("default", 20), (name, 20)])
    assert f"e.g. {JOB}/default/step-20" in str(e.value)
    with pytest.raises(ckptref.RefError) as e:  # neither fits: the path, not a refused reference
        ckptref.choose(ckptref.parse(f"{JOB}/step-20"), [("my run", 20), (name + "2", 20)])
    assert "resume from the checkpoint's path" in str(e.value) and f"{JOB}/my run/" not in str(e.value)
