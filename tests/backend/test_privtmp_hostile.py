"""``gpuqueue.attempt.privtmp.link_instead`` against another user's job on the node: where a
multi-node job's processes on a node cannot enter their own namespaces after all, root makes
``/tmp/gqr-<random>`` in the NODE's ``/tmp`` a link to the job's Ray folder (the name its
processes use: its token, Ray's sockets and session). The name is on the command line of the
worker's ``python -I -c EXEC_AS ... /tmp/gqr-<random> <folder> -- ...`` (root's, readable by every
uid in ``/proc/<pid>/cmdline``) a moment before root makes the link, so Bob's job, watching
``/proc``, makes it first: the same link. Root kept it ("a link that is already there, to the same
folder, was kept"), so the name is Bob's in the sticky ``/tmp``, and he points it, once root has
checked it, at a folder of his own: Alice's Ray on that node then takes its token and makes its
sockets and session where Bob chose (where ``fs.protected_symlinks`` is 1, no uid but Bob's may
follow his link in the sticky ``/tmp``: her Ray on that node fails instead). A folder of Bob's
under the name makes ``link_instead`` raise: that node does not join. On 7399b37 the test failed
(root kept Bob's link: Alice's Ray read Bob's token); now root makes its link under a name of its
own and renames it over whatever another uid put there."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from gpuqueue.attempt import privtmp

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it switches to other uids")

ALICE, BOB = 70990, 70991  # nobody's here: no process of them runs but the test's


def _as_bob(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", script], user=BOB, group=BOB, extra_groups=[], cwd="/",
                          capture_output=True, text=True, timeout=30)


def test_a_link_another_uid_made_first_under_the_rays_name_does_not_stay_his() -> None:
    base = Path(tempfile.mkdtemp(prefix="gq-privtmp-hostile-", dir="/var/lib" if os.path.isdir("/var/lib") else "/"))
    base.chmod(0o711)
    name = f"gqr-{secrets.token_hex(4)}"
    folder, inside = base / name, Path("/tmp") / name  # Alice's Ray folder; the name her processes use
    folder.mkdir(mode=0o700)
    (folder / "token").write_text("alice's token")
    os.chown(folder, ALICE, ALICE)
    os.chown(folder / "token", ALICE, ALICE)
    bobs = Path(tempfile.mkdtemp(prefix="gq-bob-", dir="/tmp"))
    (bobs / "token").write_text("bob's token")
    os.chown(bobs, BOB, BOB)
    os.chown(bobs / "token", BOB, BOB)
    try:
        # Bob read the name from root's command line: he makes the very link root is about to make
        planted = _as_bob(f"ln -s {folder} {inside}")
        if planted.returncode != 0:  # not the finding
            raise RuntimeError(planted.stderr)
        privtmp.link_instead({str(inside): str(folder)})  # root: the fallback of exec_as (and the runner)
        # once root checked it: Bob points the name at his own folder (or fails: a link of root's)
        _as_bob(f"rm -f {inside} && ln -s {bobs} {inside}")
        # on privtmp.py as it is: Alice's Ray now reads "bob's token" and makes its sockets in Bob's folder
        assert (inside / "token").read_text() == "alice's token"
        assert os.lstat(inside).st_uid == 0, "the link under the job's name is not root's"
    finally:
        if os.path.islink(inside):
            inside.unlink()
        shutil.rmtree(bobs, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
