"""How long the tests' cluster (tests/cluster/conftest.py ``Cluster``) takes to start its API service.

Each run starts a ``redis-server``, the scheduler daemon and the workers, then at once the
``gpuqueue api`` (as ``Cluster.start`` does: all of them import at the same time), and prints the
seconds from the API's spawn to its first 200 on ``/healthz``, and to every node up. ``--hogs N``
runs N busy loops meanwhile (a loaded CI machine). The fixture waits 30 s for the API.

    PYTHONPATH=.:backend:tests python benchmarks/cluster_start.py --runs 5 --hogs 2

On the 2-core development VM at load 0.3: API up after 1.13-1.38 s with no hog, 1.46-1.83 s
with 1, 1.68-2.12 s with 2, 4.47-6.76 s with 8 (5 runs each, 4 with 8); at load 5 (other work):
3.75-4.04 s with 2 hogs, 7.74-11.85 s with 8 (3 runs each).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests")]

from cluster.conftest import Cluster, _ok  # noqa: E402
from helpers.servers import RedisServer, wait_until  # noqa: E402


def _hog() -> None:
    while True:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--hogs", type=int, default=0, help="busy loops running meanwhile")
    args = ap.parse_args()
    hogs = [multiprocessing.Process(target=_hog, daemon=True) for _ in range(args.hogs)]
    for h in hogs:
        h.start()
    api_s = []
    try:
        for i in range(args.runs):
            root = Path(tempfile.mkdtemp(prefix="cluster-start-"))
            r = RedisServer(root / "redis").start()
            c = Cluster(root / "c", r, {"n1": 1, "n2": 1})
            try:
                t0 = time.monotonic()
                c.start_daemon()
                for n in c.nodes:
                    c.start_worker(n)
                t1 = time.monotonic()
                p = c._spawn("api", ["api", "--port", str(c.api_port), "--users", str(c.users)], role="api")
                wait_until(lambda: _ok(f"{c.url}healthz") or p.poll() is not None, 120, 0.02, "the API")
                t2 = time.monotonic()
                c.wait_nodes(set(c.nodes), 120)
                t3 = time.monotonic()
                api_s.append(t2 - t1)
                print(f"run {i}: API up {t2 - t1:.2f} s after its spawn (exit code {p.poll()}), "
                      f"nodes up {t3 - t0:.2f} s after the daemon's", flush=True)
            finally:
                c.close()
                r.kill()
    finally:
        for h in hogs:
            h.terminate()
    api_s.sort()
    print(f"API start, {args.hogs} hogs: min {api_s[0]:.2f} s, median {api_s[len(api_s) // 2]:.2f} s, "
          f"max {api_s[-1]:.2f} s")


if __name__ == "__main__":
    main()
