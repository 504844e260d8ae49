"""``gpuqueue.attempt.privtmp.exec_as`` where the job's own namespaces cannot be entered on a node
(the worker's start-up probe passed, a mount fails later): the node's part of a multi-node job's
Ray still starts, as the job's uid, in the node's own namespaces (not half in a namespace of its
own), with its Ray folder reachable under the name the job's processes use (``/tmp/gqr-<random>``,
a link to the folder); ``rayjob.end_ray`` then removes the folder and the link. The path where all
goes well is tests/cluster/test_ray_privtmp.py."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from gpuqueue.attempt import privtmp
from gpuqueue.attempt.launch import package_root
from gpuqueue.cluster.rayjob import end_ray

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it switches to another uid")

UID = 67999  # nobody's here: no process of it runs but the test's


def test_where_the_namespaces_cannot_be_entered_the_command_runs_as_the_uid_with_the_nodes_tmp_and_its_folder_linked() -> None:
    why = privtmp.probe({"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": package_root()})
    if why is not None:
        pytest.skip(f"no mount namespace here: {why}")
    base = Path(tempfile.mkdtemp(prefix="gq-privtmp-", dir="/var/lib" if os.path.isdir("/var/lib") else "/"))
    base.chmod(0o711)
    name = f"gqr-{secrets.token_hex(4)}"
    folder, inside = base / name, Path("/tmp") / name
    folder.mkdir(mode=0o700)
    (folder / "token").write_text("the token")
    os.chown(folder, UID, UID)
    os.chown(folder / "token", UID, UID)
    node_file = Path(tempfile.mkstemp(prefix="gq-node-", dir="/tmp")[1])
    node_file.chmod(0o644)
    missing = base / "no-such-folder"  # the identity's folder, gone: its bind over /tmp fails
    try:
        script = f'id -u; readlink /proc/self/ns/mnt; cat {inside}/token; echo; test -e {node_file} && echo node-tmp'
        p = subprocess.run([sys.executable, "-I", "-c", privtmp.EXEC_AS % package_root(), str(missing), "65536",
                            str(UID), str(UID), str(os.getpid()), str(inside), str(folder), "--", "/bin/sh", "-c",
                            script], capture_output=True, text=True, timeout=60, cwd="/")
        assert p.returncode == 0, p.stderr
        assert p.stdout.split("\n")[:4] == [str(UID), os.readlink("/proc/self/ns/mnt"), "the token", "node-tmp"], \
            (p.stdout, p.stderr)
        assert p.stderr.startswith("gpuqueue: the job's processes on this node run with the node's /tmp and /dev/shm, "
                                   "not their own: [Errno 2] mount bind on /tmp: No such file or directory"), p.stderr
        assert os.readlink(inside) == str(folder) and os.lstat(inside).st_uid == 0  # root's link: not the job's to move
        end_ray(folder, UID, None, inside)
        assert not os.path.lexists(folder) and not os.path.lexists(inside)
    finally:
        if os.path.islink(inside):
            inside.unlink()
        node_file.unlink()
        shutil.rmtree(base, ignore_errors=True)


def test_link_instead_refuses_to_link_anything_but_a_rays_folder_in_tmp() -> None:
    with pytest.raises(OSError, match="not a job's Ray folder in /tmp: /etc/gqr-x"):
        privtmp.link_instead({"/etc/gqr-x": "/var/lib/x"})
    with pytest.raises(OSError, match="not a job's Ray folder in /tmp: /tmp/passwd"):
        privtmp.link_instead({"/tmp/passwd": "/var/lib/x"})


def test_root_writes_the_ray_log_of_a_joining_node_only_to_a_plain_file_of_the_owners(tmp_path: Path) -> None:
    """The folder of a job's Ray is its owner's: a job of the owner may put a link named
    ``ray.log`` there, to a file of root's, before the worker (root) starts that node's Ray
    again; the worker neither writes to it nor gives it to the owner."""
    from gpuqueue.attempt.identity import Identity
    from gpuqueue.cluster.rayfiles import open_log

    ident = Identity(uid=UID, gid=UID, user="alice")
    tmp_path.chmod(0o711)
    folder = tmp_path / "gqr-test"
    folder.mkdir(mode=0o700)
    os.chown(folder, UID, UID)
    fd = open_log(folder, "ray.log", ident)  # made: the owner's, mode 600
    os.close(fd)
    st = os.stat(folder / "ray.log")
    assert (st.st_uid, st.st_mode & 0o777) == (UID, 0o600)
    fd = open_log(folder, "ray.log", ident)  # again, for a start that is tried again
    os.write(fd, b"more")
    os.close(fd)
    roots = tmp_path / "root-only"
    roots.write_text("root's")
    roots.chmod(0o600)
    (folder / "ray.log").unlink()
    (folder / "ray.log").symlink_to(roots)
    with pytest.raises(OSError):
        open_log(folder, "ray.log", ident)
    (folder / "ray.log").unlink()
    os.link(roots, folder / "ray.log")  # a hard link (where the kernel lets the owner make one)
    with pytest.raises(PermissionError, match="is not a plain file of uid 67999: not written"):
        open_log(folder, "ray.log", ident)
    st = os.stat(roots)
    assert (st.st_uid, st.st_mode & 0o777, roots.read_text()) == (0, 0o600, "root's")


def test_root_reads_the_ray_log_of_a_joining_node_only_from_a_plain_file_of_the_owners(tmp_path: Path) -> None:
    """When a node's Ray does not start, the worker (root) puts the last lines of its ``ray.log``
    in its log; a job of the owner may have made that name a link (or a hard link) to a file only
    root may read: its content is not read then."""
    from gpuqueue.cluster.rayfiles import log_tail

    tmp_path.chmod(0o711)
    folder = tmp_path / "gqr-test"
    folder.mkdir(mode=0o700)
    os.chown(folder, UID, UID)
    log = folder / "ray.log"
    log.write_text("x" * 5000 + "ConnectionError: the head is not up\n")
    os.chown(log, UID, UID)
    said = log_tail(folder, "ray.log", UID)
    assert said.endswith("ConnectionError: the head is not up\n") and len(said) == 1500
    roots = tmp_path / "root-only"
    roots.write_text("root's secret")
    roots.chmod(0o600)
    log.unlink()
    log.symlink_to(roots)
    assert log_tail(folder, "ray.log", UID) == ""
    log.unlink()
    os.link(roots, log)  # a hard link (where the kernel lets the owner make one)
    assert log_tail(folder, "ray.log", UID) == ""
    log.unlink()
    log.write_text("root's own file")  # root's, not the owner's
    assert log_tail(folder, "ray.log", UID) == ""
    assert log_tail(folder, "absent.log", UID) == ""
