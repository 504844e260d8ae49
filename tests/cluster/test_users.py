"""The API service's users file: bad files get a message naming the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpuqueue.cluster.api import load_users
from gpuqueue.queue.errors import BadRequest


@pytest.mark.parametrize("text, message", [
    ("", "add one [[user]] table per user"),
    ('[[user]]\ntoken = "abcdefgh1"\n', "user #1 needs a name"),
    ('[[user]]\nname = "ana"\ntoken = "short"\n', "needs a token of 8 characters or more"),
    ('[[user]]\nname = "ana"\ntoken = "abcdefgh1"\nadmin = "yes"\n', "admin must be true or false"),
    ('[[user]]\nname = "a"\ntoken = "abcdefgh1"\n[[user]]\nname = "b"\ntoken = "abcdefgh1"\n', "share a token"),
    ("[[user]\n", "not valid TOML"),
    # a misspelt key would leave ops without admin rights; a misspelt table, its users out
    ('[[user]]\nname = "ops"\ntoken = "abcdefgh1"\nadmn = true\n', "user 'ops': unknown 'admn': a [[user]] has name, token and admin"),
    ('[[user]]\nname = "a"\ntoken = "abcdefgh1"\n[[users]]\nname = "b"\ntoken = "abcdefgh2"\n', "unknown 'users'"),
])
def test_bad_users_files_are_refused_with_the_fix(tmp_path, text, message) -> None:
    f = tmp_path / "users.toml"
    f.write_text(text)
    with pytest.raises(BadRequest, match=message.replace("[", r"\[")):
        load_users(f)


def test_users_file_maps_tokens_to_users(tmp_path) -> None:
    f = tmp_path / "users.toml"
    f.write_text('[[user]]\nname = "ana"\ntoken = "ana-token-1"\n[[user]]\nname = "ops"\ntoken = "ops-token-1"\nadmin = true\n')
    users = load_users(f)
    assert users["ana-token-1"].name == "ana" and not users["ana-token-1"].admin
    assert users["ops-token-1"].admin


def test_commands_name_what_is_missing(tmp_path) -> None:
    for cmd, words in ((["api", "--redis", "redis://127.0.0.1:1/0", "--users", str(tmp_path / "nope.toml")], "does not exist"),
                       (["worker"], "--redis URL is required"),
                       (["scheduler", "--redis", "redis://x/0", "--config", str(tmp_path / "nope.toml")], "does not exist")):
        r = subprocess.run([sys.executable, "-m", "gpuqueue.cli", *cmd], capture_output=True, text=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, (cmd, r.stderr)
