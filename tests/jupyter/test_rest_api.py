"""The REST API of the server extension, in-process with pytest-jupyter: auth, ownership,
validation, event replay and SSE."""

from __future__ import annotations

import asyncio
import base64
import json
import sys

import pytest
from jupyter_server.auth.identity import IdentityProvider, User

USERS = {"alice-token": "alice", "bob-token": "bob", "boss-token": "boss"}


class TokenUsers(IdentityProvider):
    """Each test token is one named user (the way JupyterHub names users)."""

    def get_user(self, handler):  # type: ignore[override]
        tok = handler.request.headers.get("Authorization", "").removeprefix("token ").strip()
        name = USERS.get(tok)
        if name is None:
            return None
        handler._token_authenticated = True  # API tokens are exempt from the XSRF check
        return User(username=name)


def auth(user: str) -> dict[str, str]:
    token = next(t for t, u in USERS.items() if u == user)
    return {"Authorization": f"token {token}"}


@pytest.fixture
def jp_server_config(tmp_path):
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_gpuqueue": True},
            "identity_provider_class": TokenUsers,
        },
        "GPUQueueApp": {"state_dir": str(tmp_path / "state"), "gpus": 2, "admin_users": ["boss"]},
    }


@pytest.fixture
def service(jp_serverapp, jp_asyncio_loop):
    """The extension's queue, started as the server's start hook would."""
    app = jp_serverapp.extension_manager.extension_points["jupyter_gpuqueue"].app
    jp_asyncio_loop.run_until_complete(app.service.start())
    yield app.service
    jp_asyncio_loop.run_until_complete(app.service.stop())


@pytest.fixture
def api(jp_fetch, service):
    async def call(method, *path, user="alice", body=None, raw=None, **params):
        kw = {"method": method, "headers": auth(user) if user else {}, "raise_error": False}
        if body is not None or raw is not None:
            kw["body"] = raw if raw is not None else json.dumps(body)
        elif method == "POST":
            kw["body"] = b""
        if params:
            kw["params"] = params
        r = await jp_fetch("gpuqueue", "api", *path, **kw)
        ctype = r.headers.get("Content-Type", "")
        data = json.loads(r.body) if "json" in ctype and r.body else r.body
        return r.code, data

    return call


def command(code: str, **spec):
    return {"spec": {"kind": "command", "command": [sys.executable, "-c", code], **spec}}


async def wait_state(api, job_id, states, user="alice", timeout=30.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        code, job = await api("GET", "jobs", job_id, user=user)
        if job["state"] in states:
            return job
        assert loop.time() < end, f"{job_id} stayed {job['state']}"
        await asyncio.sleep(0.1)


async def test_submit_stamps_the_server_side_owner(api):
    code, job = await api("POST", "jobs", body=command("print('hi')", name="mine"))
    assert code == 201
    assert job["owner"] == "alice" and job["state"] == "queued" and job["spec"]["pool"] == "default"
    done = await wait_state(api, job["id"], {"succeeded"})
    assert done["attempts"][0]["outcome"] == "succeeded"


async def test_owner_in_the_body_is_refused(api):
    body = command("print(1)")
    body["spec"]["owner"] = "bob"
    code, err = await api("POST", "jobs", body=body)
    assert code == 400 and "owner" in err["message"]
    code, data = await api("GET", "jobs")
    assert data["jobs"] == []


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"{not json", "not valid JSON"),
        (json.dumps({"spec": {"kind": "command", "command": ["true"], "gpus": -1}}), "spec.gpus"),
        (json.dumps({"spec": {"kind": "command"}}), "needs a command"),
        (json.dumps({"spec": {"kind": "cell"}}), "needs payload_b64"),
        (json.dumps({"spec": {"kind": "cell"}, "payload_b64": "***"}), "not valid base64"),
        (json.dumps({"spec": {"kind": "command", "command": ["true"], "pool": "gpu-xl"}}), "unknown pool 'gpu-xl'"),
        (json.dumps({"spec": {"kind": "command", "command": ["true"], "gpus": 3}}), "3 GPUs do not fit"),
        (json.dumps({"spec": {"kind": "command", "command": ["true"], "priority": "urgent"}}), "spec.priority"),
        (json.dumps([1, 2]), "Input should be"),
    ],
)
async def test_bad_bodies_are_400_with_a_message_and_change_nothing(api, raw, message):
    code, err = await api("POST", "jobs", raw=raw)
    assert code == 400, err
    assert message in err["message"], err
    code, data = await api("GET", "jobs")
    assert data["jobs"] == []


async def test_a_new_job_is_announced_on_the_event_bus(api, jp_serverapp):
    """What the JupyterLab extension listens to, to look at once (sidebar hidden or not): one
    event per job queued, without its data; none for a refused body or a read."""
    from jupyter_gpuqueue.handlers import JOB_EVENT

    seen: list[dict] = []

    async def listener(logger, schema_id, data):
        seen.append(data)

    jp_serverapp.event_logger.add_listener(schema_id=JOB_EVENT, listener=listener)
    code, _ = await api("POST", "jobs", raw=b"{not json")
    assert code == 400
    code, _ = await api("GET", "jobs")
    assert code == 200
    await asyncio.sleep(0.2)
    assert seen == []
    code, job = await api("POST", "jobs", body=command("pass", name="announced"))
    assert code == 201
    for _ in range(50):
        if seen:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    assert seen == [{"action": "submitted"}]


async def test_unauthenticated_requests_are_refused(api):
    code, _ = await api("GET", "jobs", user=None)
    assert code in (401, 403)
    code, _ = await api("POST", "jobs", user=None, body=command("print(1)"))
    assert code in (401, 403)


async def test_users_see_and_change_only_their_own_jobs(api):
    _, job = await api("POST", "jobs", body=command("import time; time.sleep(30)"))
    jid = job["id"]
    for method, path in (("GET", ("jobs", jid)), ("GET", ("jobs", jid, "events")),
                         ("POST", ("jobs", jid, "cancel")), ("GET", ("jobs", jid, "result"))):
        code, err = await api(method, *path, user="bob")
        assert code == 404, (path, code)
        assert "no job" in err["message"]
    _, bobs = await api("GET", "jobs", user="bob", all="1")
    assert bobs["jobs"] == []  # not an admin: ?all=1 changes nothing
    _, everyone = await api("GET", "jobs", user="boss", all="1")
    assert [j["id"] for j in everyone["jobs"]] == [jid]
    code, cancelled = await api("POST", "jobs", jid, "cancel", user="boss")
    assert code == 200
    await wait_state(api, jid, {"cancelled"})


async def test_preempt_is_for_admins(api):
    _, job = await api("POST", "jobs", body=command("import time; time.sleep(30)"))
    code, err = await api("POST", "jobs", job["id"], "preempt")
    assert code == 403 and "admins" in err["message"]
    await api("POST", "jobs", job["id"], "cancel")


async def test_events_replay_from_an_offset_and_stream_as_sse(api, jp_fetch):
    code_ = "for i in range(5): print('line', i)"
    _, job = await api("POST", "jobs", body=command(code_))
    await wait_state(api, job["id"], {"succeeded"})
    _, all_events = await api("GET", "jobs", job["id"], "events")
    events = all_events["events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    logs = [e["data"]["line"] for e in events if e["type"] == "log"]
    assert logs == [f"line {i}" for i in range(5)]
    states = [e["data"]["state"] for e in events if e["type"] == "state"]
    assert states == ["queued", "starting", "running", "succeeded"]
    _, later = await api("GET", "jobs", job["id"], "events", after=str(events[3]["seq"]))
    assert [e["seq"] for e in later["events"]] == [e["seq"] for e in events[4:]]
    r = await jp_fetch("gpuqueue", "api", "jobs", job["id"], "events", params={"follow": "1", "after": "2"},
                       headers=auth("alice"))
    assert r.headers["Content-Type"].startswith("text/event-stream")
    text = r.body.decode()
    ids = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
    assert ids == [e["seq"] for e in events[2:]]
    assert text.rstrip().endswith("event: end\ndata: {}")
    code, err = await api("GET", "jobs", job["id"], "events", after="x")
    assert code == 400 and "whole number" in err["message"]


async def test_queue_summary(api):
    code, q = await api("GET", "queue")
    assert code == 200
    assert q["pools"]["default"]["gpus_total"] == 2
    assert q["me"] == {"user": "alice", "admin": False, "jobs": {}}
    # the sidebar sorts jobs by the server's groups of states (no copy of them in TypeScript)
    assert q["state_groups"] == {
        "waiting": ["queued", "retrying", "preempted"],
        "active": ["starting", "running"],
        "live": ["queued", "retrying", "preempted", "starting", "running"],
        "terminal": ["succeeded", "failed", "cancelled", "timed_out"],
    }


async def test_result_of_a_cell_job_round_trips(api):
    __import__("cloudpickle")  # the results need it

    from gpuqueue.job.payload import build_payload, unpack_results

    payload, inputs, outputs = build_payload("y = [v * 2 for v in x]", {"x": [1, 2, 3]})
    body = {"spec": {"kind": "cell", "inputs": inputs, "outputs": outputs, "python": sys.executable},
            "payload_b64": base64.b64encode(payload).decode()}
    _, job = await api("POST", "jobs", body=body)
    done = await wait_state(api, job["id"], {"succeeded", "failed"})
    assert done["state"] == "succeeded", done
    code, blob = await api("GET", "jobs", job["id"], "result")
    assert code == 200
    values, failed = unpack_results(blob)
    assert values == {"y": [2, 4, 6]} and failed == {}
    # an admin sees the job but never loads its pickle (that would run alice's code in boss's kernel)
    assert (await api("GET", "jobs", job["id"], user="boss"))[0] == 200
    code, err = await api("GET", "jobs", job["id"], "result", user="boss")
    assert code == 403 and f"the results of job {job['id']} are alice's" in err["message"], (code, err)


async def test_a_user_deletes_her_finished_jobs_and_only_those(api, service):
    """``DELETE /jobs/ID`` (`gpuqueue rm`): the owner or an admin deletes a finished job, its record,
    events, results and folder (checkpoints); a queued or running one is refused naming cancel, as is
    one that a live job of hers resumes from; another user's is the 404 of a missing job."""
    from gpuqueue.attempt.jobdir import job_dir
    from gpuqueue.job.payload import build_payload

    save = "import gpuqueue; gpuqueue.Checkpointer().save(1, {'w': 1.5}); print('saved')"
    _, saved = await api("POST", "jobs", body=command(save))
    payload, inputs, outputs = build_payload("y = 2", {}, inputs=[], outputs=["y"])
    _, cell = await api("POST", "jobs", body={"spec": {"kind": "cell", "inputs": inputs, "outputs": outputs,
                                                       "python": sys.executable},
                                              "payload_b64": base64.b64encode(payload).decode()})
    _, bobs = await api("POST", "jobs", user="bob", body=command("print(1)"))
    for job, user in ((saved, "alice"), (cell, "alice"), (bobs, "bob")):
        assert (await wait_state(api, job["id"], {"succeeded", "failed"}, user=user))["state"] == "succeeded"
    folder = job_dir(service.state_dir, saved["id"])
    assert list(folder.glob("**/step-*")), "the checkpoint"

    # running (holds both GPUs), and queued behind it resuming from `saved`: 409, cancel first
    _, running = await api("POST", "jobs", body=command("import time; time.sleep(60)", gpus=2))
    await wait_state(api, running["id"], {"running"})
    _, queued = await api("POST", "jobs", body=command("print(1)", gpus=2, resume_from=saved["id"]))
    assert queued["state"] == "queued", queued
    for job in (running, queued):
        code, err = await api("DELETE", "jobs", job["id"])
        assert code == 409 and f"cancel it first: gpuqueue cancel {job['id']}" in err["message"], (code, err)
    code, err = await api("DELETE", "jobs", saved["id"])
    assert code == 409 and f"job {saved['id']} is not deleted" in err["message"], err
    assert f"{queued['id']} resume from its checkpoints (--resume-from {saved['id']})" in err["message"], err

    # another user's job: exactly the answer of a job that does not exist
    code, err = await api("DELETE", "jobs", saved["id"], user="bob")
    code0, err0 = await api("DELETE", "jobs", "j-000000000000", user="bob")
    assert (code, code0) == (404, 404) and err["message"] == err0["message"].replace("j-000000000000", saved["id"])
    assert (await api("GET", "jobs", saved["id"]))[0] == 200

    await api("POST", "jobs", queued["id"], "cancel")
    for job in (saved, cell):
        code, out = await api("DELETE", "jobs", job["id"])
        assert code == 200 and out["id"] == job["id"] and out["owner"] == "alice", out
        assert out["deleted"] == ["record", "events", "logs", "results", "payload", "checkpoints"], out
        for path in (("jobs", job["id"]), ("jobs", job["id"], "events"), ("jobs", job["id"], "result")):
            code, err = await api("GET", *path)
            assert code == 404 and "no job" in err["message"], (path, code, err)
    _, mine = await api("GET", "jobs")
    assert {j["id"] for j in mine["jobs"]} == {running["id"], queued["id"]}
    assert not folder.exists() and not job_dir(service.state_dir, cell["id"]).exists()
    assert service.store.kept_results("alice")[0] == 0 and service.store.read_events(saved["id"]) == []
    assert (await api("DELETE", "jobs", saved["id"]))[0] == 404  # once

    code, out = await api("DELETE", "jobs", bobs["id"], user="boss")  # an admin: another user's finished job
    assert code == 200 and out["owner"] == "bob", out
    assert (await api("GET", "jobs", bobs["id"], user="bob"))[0] == 404
    await api("POST", "jobs", running["id"], "cancel")
