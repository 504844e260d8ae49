"""What a launch spends on its folders: the identity layout (a root worker: records apart, the
job's folders created and chowned through O_NOFOLLOW descriptors, the payload copied in) against
the shared layout (embedded mode, a worker that is not root), side by side, on tmpfs and on disk.

    python benchmarks/launch_folders.py [--launches 300]

Run as root for the real chown to another uid (otherwise the files are chowned to yourself).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from gpuqueue.attempt.jobdir import attempt_paths, prepare_owned

PAYLOAD = b"x" * 100_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--launches", type=int, default=300)
    args = ap.parse_args()
    uid = 61990 if os.geteuid() == 0 else os.getuid()
    gid = 61990 if os.geteuid() == 0 else os.getgid()
    for base in ("/dev/shm", tempfile.gettempdir()):
        if not os.path.isdir(base):
            continue
        root = Path(tempfile.mkdtemp(dir=base, prefix="gq-launch-"))
        root.chmod(0o711)
        try:
            t = time.perf_counter()
            for i in range(args.launches):
                prepare_owned(root / "owned", f"j-{i}", 1, uid, gid, payload=PAYLOAD)
            owned = (time.perf_counter() - t) / args.launches * 1e3
            t = time.perf_counter()
            for i in range(args.launches):
                p = attempt_paths(root / "shared", f"j-{i}", 1, split=False)
                p.records.mkdir(parents=True, exist_ok=True)
                (p.job / "payload.pkl").write_bytes(PAYLOAD)
            shared = (time.perf_counter() - t) / args.launches * 1e3
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(f"{base}: identity layout {owned:.3f} ms per launch, shared layout {shared:.3f} ms "
              f"({args.launches} launches each, uid {uid})")


if __name__ == "__main__":
    main()
