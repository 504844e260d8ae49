"""Redis high availability: the whole cluster reaches Redis through Sentinel
(``redis+sentinel://``) and rides out a failover of the primary mid-job."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from gpuqueue.cluster import redis_url
from helpers.servers import RedisServer, free_port, wait_until


class Replica:
    """A ``redis-server`` replicating a primary."""

    def __init__(self, root: Path, primary_port: int):
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(root),
             "--replicaof", "127.0.0.1", str(primary_port), "--appendonly", "yes", "--save", "",
             "--logfile", str(root / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        r = redis.Redis(port=self.port)
        wait_until(lambda: r.info("replication").get("master_link_status") == "up", 20, 0.05, "the replica to sync")


class Sentinel:
    """One ``redis-server --sentinel`` watching the primary as service ``gq``."""

    def __init__(self, root: Path, primary_port: int):
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = root / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {root}\n"
            f"sentinel monitor gq 127.0.0.1 {primary_port} 1\n"
            "sentinel down-after-milliseconds gq 1000\nsentinel failover-timeout gq 5000\n"
            "sentinel parallel-syncs gq 1\n"
        )
        self.proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.r = redis.Redis(port=self.port, decode_responses=True)
        wait_until(lambda: self.primary() == primary_port, 20, 0.05, "the sentinel to see the primary")

    def primary(self) -> int | None:
        try:
            addr = self.r.execute_command("SENTINEL", "get-master-addr-by-name", "gq")
        except redis.RedisError:
            return None
        return int(addr[1]) if addr else None


class _ViaSentinel:
    """Stands in for the RedisServer a Cluster talks to: only its URL is used."""

    def __init__(self, url: str):
        self.url = url


def test_sentinel_urls_are_parsed_and_bad_ones_named():
    s = redis_url.parse_sentinel("redis+sentinel://:pw@h1:26379,h2:26380/gq/2")
    assert s is not None and s.sentinels == (("h1", 26379), ("h2", 26380)) and (s.service, s.db, s.password) == ("gq", 2, "pw")
    assert redis_url.parse_sentinel("redis://127.0.0.1:6379/0") is None
    assert redis_url.celery_broker("redis+sentinel://h1:1,h2:2/gq") == ("sentinel://h1:1/0;sentinel://h2:2/0", {"master_name": "gq"})
    for bad, words in (("redis+sentinel://h1/gq", "host:port"), ("redis+sentinel://h1:1/", "service name"),
                       ("redis+sentinel://h1:1/gq/x", "not a number"), ("http://h:1", "redis://host:6379/0")):
        assert words in (redis_url.check(bad) or ""), bad


def test_cluster_through_sentinel_survives_a_failover(tmp_path, cluster_factory):
    primary = RedisServer(tmp_path / "primary").start()
    replica = Replica(tmp_path / "replica", primary.port)
    sentinel = Sentinel(tmp_path / "sentinel", primary.port)
    c = cluster_factory(nodes={"a": 2}, start=False)
    c.redis = _ViaSentinel(f"redis+sentinel://127.0.0.1:{sentinel.port}/gq/0")
    try:
        c.start()
        job = c.submit("alice", ticks=80)  # 8 s
        cli = c.client("alice")
        wait_until(lambda: cli.get(job)["state"] == "running", 60, 0.1, "the job to run")
        time.sleep(0.5)
        primary.kill()  # SIGKILL: the sentinel promotes the replica
        wait_until(lambda: sentinel.primary() == replica.port, 60, 0.1, "the failover")
        done = c.wait_done([job], timeout=180)
        assert done[job]["state"] == "succeeded"
        c.assert_once([job])
        after = c.submit("bob", ticks=5)  # submissions, dispatch and results go on
        assert c.wait_done([after], timeout=120)[after]["state"] == "succeeded"
        assert any(e["type"] == "log" and "hello from" in e["data"].get("line", "")
                   for e in c.client("bob").events(after))
    except Exception:
        for key in c.procs:
            print(f"--- {key} ---\n{c.log(key)[-3000:]}")
        raise
    finally:
        c.close()
        for p in (sentinel.proc, replica.proc):
            p.kill()
        primary.stop()
