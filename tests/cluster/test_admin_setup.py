"""What a new admin meets following docs/deploy.md ("Start it by hand"): the shipped Redis ACL
users load as the docs say, and each process refuses or names a mistake instead of running with
something else than what the admin asked."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from helpers.servers import free_port, wait_until

from .conftest import ACL_FILE

REPO = Path(__file__).resolve().parents[2]
PASSWORDS = {"api": "api-pw-1", "scheduler": "scheduler-pw-2", "worker": "worker-pw-3"}


def test_the_shipped_acl_users_load_as_the_docs_say(tmp_path: Path) -> None:
    """deploy/redis/users.acl, its passwords set, loaded with the redis.conf line the docs give
    (``include``; ``aclfile`` refuses its comment lines): each role logs in, the default user is off."""
    doc = (REPO / "docs" / "deploy.md").read_text()
    assert "`include /etc/redis/users.acl` in redis.conf" in doc
    acl = ACL_FILE.read_text()
    for role, pw in PASSWORDS.items():
        acl = acl.replace(f">CHANGE-ME-{role}", f">{pw}")
    (tmp_path / "users.acl").write_text(acl)
    port = free_port()
    (tmp_path / "redis.conf").write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nappendonly yes\n"
                                         f"include {tmp_path / 'users.acl'}\n")
    p = subprocess.Popen(["redis-server", str(tmp_path / "redis.conf")], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            if p.poll() is not None:
                raise AssertionError(f"redis-server refused the config: {p.stdout.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                redis.Redis(port=port, username="gpuqueue-api", password=PASSWORDS["api"]).ping()
                return True
            except redis.ConnectionError:
                return False

        wait_until(up, 20, 0.05, "redis-server")
        for role, pw in PASSWORDS.items():
            assert redis.Redis(port=port, username=f"gpuqueue-{role}", password=pw).ping()
        try:
            redis.Redis(port=port).ping()
            raise AssertionError("the default user is on")
        except redis.AuthenticationError:
            pass
    finally:
        p.kill()
        p.wait(10)
