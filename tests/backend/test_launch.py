"""A job's environment is an allow-list: no credential of the launching process reaches it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from gpuqueue.attempt.identity import Identity
from gpuqueue.attempt.launch import build_launch, passed_env, runner_env
from gpuqueue.queue.models import JobSpec
from helpers.servers import wait_until

SECRETS = {
    "GPUQUEUE_REDIS_URL": "redis://:s3cret@redis:6379/0",
    "GPUQUEUE_TOKEN": "server-token",
    "GPUQUEUE_API_TOKEN": "api-token",
    "GPUQUEUE_URL": "http://127.0.0.1:8888/",
    "JUPYTERHUB_API_TOKEN": "hub-token",
    "JPY_SESSION_NAME": "x.ipynb",
    "DB_PASSWORD": "pw",
    "AWS_SECRET_ACCESS_KEY": "key",
    "SOME_API_KEY": "key",
    # the rest of the names docs/config.md says never pass (GPUQUEUE_PASS_ENV): any case
    "SMTP_PASSWD": "smtp-passwd",
    "GOOGLE_APPLICATION_CREDENTIALS": "/etc/gcp-credentials.json",
    "PROXY_AUTH": "proxy-auth",
    "SESSION_COOKIE": "session-cookie",
    "my_token": "lower-case-token",
}


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("CUDA_HOME", "/usr/local/cuda")
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "eth0")
    monkeypatch.setenv("UNRELATED", "1")
    # an admin's extra list cannot let a credential through
    monkeypatch.setenv("GPUQUEUE_PASS_ENV", "UNRELATED,DB_PASSWORD,GPUQUEUE_*")


def _launch(tmp_path: Path, **kw: object) -> dict:
    spec = JobSpec(kind="command", command=["python", "train.py"], env={"MINE": "yes", "WANDB_API_KEY": "users-own"})
    return build_launch("j-1", spec, tmp_path / "job", tmp_path / "job" / "attempt-1", 1, [2, 3], "gpu-1", **kw)


def test_the_job_environment_holds_no_credential_of_the_launching_process(host: None, tmp_path: Path) -> None:
    env = _launch(tmp_path)["env"]
    assert not set(SECRETS) & set(env)
    assert not any(v in str(env) for v in SECRETS.values())
    # what a job needs does pass: the allow-list, the admin's extra names, the job's own spec
    assert env["LC_ALL"] == "C.UTF-8" and env["CUDA_HOME"] == "/usr/local/cuda" and env["NCCL_SOCKET_IFNAME"] == "eth0"
    assert env["UNRELATED"] == "1" and "PATH" in env
    assert env["MINE"] == "yes" and env["WANDB_API_KEY"] == "users-own"  # the user's own choice
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["GPUQUEUE_JOB_ID"] == "j-1"
    # the names docs/config.md says a job finds ("Inside a job")
    assert {k: env[k] for k in ("GPUQUEUE_ATTEMPT", "GPUQUEUE_JOB_DIR", "GPUQUEUE_ATTEMPT_DIR", "GPUQUEUE_NODE",
                                "GPUQUEUE_NUM_GPUS")} == {
        "GPUQUEUE_ATTEMPT": "1", "GPUQUEUE_JOB_DIR": str(tmp_path / "job"),
        "GPUQUEUE_ATTEMPT_DIR": str(tmp_path / "job" / "attempt-1"), "GPUQUEUE_NODE": "gpu-1", "GPUQUEUE_NUM_GPUS": "2"}


def test_the_runner_environment_holds_no_credential(host: None) -> None:
    env = runner_env()
    assert not set(SECRETS) & set(env)
    assert passed_env({"PATH": "/bin", "GPUQUEUE_TOKEN": "t", "X_TOKEN": "t"}) == {"PATH": "/bin"}


def test_a_job_under_its_own_identity_gets_its_own_home_and_folder(host: None, tmp_path: Path) -> None:
    launch = _launch(tmp_path, identity=Identity("alice", 61184, 61184), home="/var/lib/gpuqueue/home/61184")
    env = launch["env"]
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == ("/var/lib/gpuqueue/home/61184", "alice", "alice")
    assert launch["cwd"] == str(tmp_path / "job")  # no cwd asked: its own folder, not the worker's
    assert launch["user"] == {"name": "alice", "uid": 61184, "gid": 61184}
    # without an identity: as before, the launching process's HOME and working directory
    plain = _launch(tmp_path)
    assert plain["cwd"] is None and "user" not in plain


def test_the_ray_address_reaches_only_a_launcher_that_runs_through_ray(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Under its own identity only a job placed on several nodes learns the Ray cluster's
    address; a one-node job that forces the Ray launcher starts a Ray of its own. Where jobs run
    as the launching process's user (embedded mode), a job whose launcher is Ray gets it."""
    monkeypatch.setenv("RAY_ADDRESS", "ray-head:6379")
    monkeypatch.setenv("GPUQUEUE_RAY_ADDRESS", "ray-head:6379")
    alice = Identity("alice", 61184, 61184)

    def ray_env(spec: JobSpec, **kw: object) -> dict[str, str]:
        env = build_launch("j-1", spec, tmp_path / "job", tmp_path / "job" / "attempt-1", 1, [0], "gpu-1", **kw)["env"]
        return {k: v for k, v in env.items() if k in ("RAY_ADDRESS", "GPUQUEUE_RAY_ADDRESS")}

    cmd = JobSpec(kind="command", command=["python", "train.py"], gpus=1)
    forced = JobSpec(kind="command", command=["python", "train.py"], gpus=1, env={"GPUQUEUE_LAUNCHER": "ray"})
    both = {"RAY_ADDRESS": "ray-head:6379", "GPUQUEUE_RAY_ADDRESS": "ray-head:6379"}
    assert ray_env(cmd, identity=alice) == {} and ray_env(cmd) == {}
    assert ray_env(forced, identity=alice) == {}
    assert ray_env(forced) == both
    assert ray_env(JobSpec(kind="command", command=["python", "train.py"], gpus=2, nodes=2), identity=alice,
                   placement={"gpu-1": [0], "gpu-2": [0]}) == both
    assert ray_env(JobSpec(kind="cell", gpus=2, nodes=2)) == both  # embedded --nodes 2
    assert ray_env(cmd, identity=alice, placement={"gpu-1": [0]}) == {}


def test_an_embedded_job_gets_neither_the_servers_token_nor_its_secrets(jupyter_server_factory) -> None:
    """The real Jupyter server exports its own URL and token into its environment (for the
    kernels it starts); a job it launches sees neither, nor the hub's token."""
    server = jupyter_server_factory(gpus=0, env={"JUPYTERHUB_API_TOKEN": "hub-s3cret", "DB_PASSWORD": "pw-s3cret"})
    code = "import os, json; print(json.dumps(dict(os.environ)))"
    c = server.client()
    job = c.submit({"kind": "command", "command": [sys.executable, "-c", code]})["id"]
    wait_until(lambda: c.get(job)["state"] == "succeeded", 60, 0.1, "the job")
    env = json.loads(next(e["data"]["line"] for e in c.events(job) if e["type"] == "log"))
    assert server.token not in json.dumps(env)
    assert not {"GPUQUEUE_TOKEN", "GPUQUEUE_URL", "JUPYTERHUB_API_TOKEN", "DB_PASSWORD"} & set(env)
    assert env["GPUQUEUE_JOB_ID"] == job and "PATH" in env
