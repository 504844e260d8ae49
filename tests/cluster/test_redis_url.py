"""The store URL: never on a command line with its password, never shown with it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import requests

from gpuqueue.cluster import redis_url
from helpers.servers import free_port, wait_until

SECRET = "Zq9-secret-pw"


def test_mask_hides_every_password() -> None:
    for url, shown in ((f"redis://:{SECRET}@h:6379/0", "redis://:***@h:6379/0"),
                       (f"rediss://gq-worker:{SECRET}@h:1/0?ssl_ca_certs=/x", "rediss://gq-worker:***@h:1/0?ssl_ca_certs=/x"),
                       (f"redis+sentinel://:{SECRET}@s1:26379,s2:26379/gq/0", "redis+sentinel://:***@s1:26379,s2:26379/gq/0"),
                       (f"redis://:p@ss{SECRET}@h/0", "redis://:***@h/0"),
                       (f"redis://h/0?password={SECRET}", "redis://h/0?password=***"),
                       ("redis://h:6379/0", "redis://h:6379/0")):
        assert redis_url.mask(url) == shown
        assert redis_url.has_password(url) == (shown != url)
    assert redis_url.mask(f"Error connecting to redis://:{SECRET}@h/0 and redis://u:{SECRET}@g/1") == \
        "Error connecting to redis://:***@h/0 and redis://u:***@g/1"


def _args(**kw: str) -> argparse.Namespace:
    return argparse.Namespace(redis=kw.get("redis"), redis_file=kw.get("redis_file"))


def test_the_url_comes_from_the_environment_or_a_private_file_never_the_command_line(tmp_path: Path) -> None:
    url = f"redis://:{SECRET}@h:6379/0"
    with pytest.raises(ValueError, match="GPUQUEUE_REDIS_URL.*--redis-file") as e:
        redis_url.from_args(_args(redis=url), {})
    assert SECRET not in str(e.value)
    assert redis_url.from_args(_args(redis="redis://h:6379/0"), {}) == "redis://h:6379/0"  # no password: fine
    assert redis_url.from_args(_args(), {"GPUQUEUE_REDIS_URL": url}) == url
    f = tmp_path / "url"
    f.write_text(f"# the store\nGPUQUEUE_REDIS_URL={url}\n")
    f.chmod(0o644)
    with pytest.raises(ValueError, match="mode 644.*chmod 600"):
        redis_url.from_args(_args(redis_file=str(f)), {})
    f.chmod(0o600)
    assert redis_url.from_args(_args(redis_file=str(f)), {}) == url
    with pytest.raises(ValueError, match="--redis URL is required"):
        redis_url.from_args(_args(), {})


def _cli(args: list[str], url: str, tmp_path: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUQUEUE_")}
    env.update(GPUQUEUE_REDIS_URL=url, GPUQUEUE_LOG_FORMAT="json")
    return subprocess.run([sys.executable, "-m", "gpuqueue.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path)


def test_no_password_in_what_the_processes_print_on_their_error_paths(tmp_path: Path, redis_factory) -> None:
    closed = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    wrong = redis_factory(appendonly=False, password="the-right-one").url.replace("the-right-one", SECRET)
    users = tmp_path / "users.toml"
    users.write_text('[[user]]\nname = "ana"\ntoken = "ana-token-1"\n')
    out = []
    for url in (closed, wrong):  # Redis down; Redis refusing the password
        r = _cli(["worker", "--node", "n", "--gpus", "1", "--identities", "none", "--state-dir", str(tmp_path / "s")], url, tmp_path)
        assert r.returncode == 1 and "cannot reach Redis at redis://:***@127.0.0.1:" in r.stderr, r.stderr
        out.append(r.stdout + r.stderr)
    for cmd in (["scheduler"], ["api", "--users", str(users), "--port", str(free_port())]):
        env = dict({k: v for k, v in os.environ.items() if not k.startswith("GPUQUEUE_")}, GPUQUEUE_REDIS_URL=wrong)
        p = subprocess.Popen([sys.executable, "-m", "gpuqueue.cli", *cmd], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
        if cmd[0] == "api":  # a request that needs the store: 503, and the reply holds no password
            (r,) = wait_until(lambda: _get(f"http://127.0.0.1:{cmd[-1]}/gpuqueue/api/jobs", "ana-token-1"), 30, 0.2, "the API")
            assert r.status_code == 503 and SECRET not in r.text, r.text
        try:
            out.append(p.communicate(timeout=2.5)[0])
        except subprocess.TimeoutExpired:
            p.terminate()
            out.append(p.communicate(timeout=10)[0])
    r = _cli(["worker", "--redis", closed], "", tmp_path)  # the same check in all three (redis_url.from_args)
    assert r.returncode == 2 and "GPUQUEUE_REDIS_URL" in r.stderr, r.stderr
    out.append(r.stdout + r.stderr)
    text = "\n".join(out)
    assert "unavailable" in text or "NOAUTH" in text or "invalid" in text.lower()
    assert SECRET not in text, text


def _get(url: str, token: str) -> Optional[tuple[requests.Response]]:
    try:
        return (requests.get(url, headers={"Authorization": f"token {token}"}, timeout=5),)
    except requests.RequestException:
        return None
