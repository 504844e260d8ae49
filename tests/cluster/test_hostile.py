"""A hostile user (or no user at all) against the edges the queue exposes: what each may add to
the metrics, whose results an admin's kernel may load, how much of the shared store one job's
output may take. Real processes: redis-server, the API service, the scheduler daemon, a Celery
worker, and a Jupyter server with the embedded queue."""

from __future__ import annotations

import os
import subprocess
import sys

import requests
from prometheus_client.parser import text_string_to_metric_families

from gpuqueue.job.payload import build_payload, unpack_results
from gpuqueue.queue.errors import Forbidden, NotFound
from helpers.servers import wait_until

API_LATENCY = "gpuqueue_api_request_duration_seconds_count"
INVENTED = [f"PWN{i}" for i in range(20)]  # valid HTTP method tokens, each a label value before
HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called ``name`` in a Prometheus scrape."""
    return [(dict(s.labels), s.value) for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == name]


def methods_counted(text: str) -> dict[str, float]:
    """Requests counted in the API latency histogram, by ``method`` label."""
    out: dict[str, float] = {}
    for labels, v in samples(text, API_LATENCY):
        out[labels["method"]] = out.get(labels["method"], 0) + v
    return out


def test_invented_http_methods_add_no_metric_series(cluster_factory, jupyter_server) -> None:
    """HTTP lets a client send any method token; tornado answers it 405 before any login check,
    and the request was counted under its own ``method`` label: anyone who could reach the port
    added series at will (memory of the process, size of every scrape)."""
    c = cluster_factory(nodes={"n1": 1}, start=False)
    c.start_api()
    s = jupyter_server
    for m in INVENTED:  # no token
        assert requests.request(m, c.url + "gpuqueue/api/jobs", timeout=10).status_code == 405
        assert requests.request(m, s.url + "gpuqueue/api/jobs", timeout=10).status_code == 405
    assert requests.get(c.url + "gpuqueue/api/jobs", timeout=10).status_code == 401
    for text in (requests.get(c.url + "metrics", timeout=10).text,
                 requests.get(s.url + "gpuqueue/metrics", headers=s.headers, timeout=10).text):
        counted = methods_counted(text)
        assert set(counted) <= HTTP_METHODS | {"other"}, sorted(counted)
        assert counted["other"] == len(INVENTED), counted


def test_a_pool_named_before_any_config_is_no_metric_series(cluster_factory) -> None:
    """The API takes a job before any scheduler has published its config without checking its
    pool (the scheduler does, and fails it). Its made-up pool name became the ``pool`` label of
    ``gpuqueue_jobs_finished_total`` on the scheduler, one series per name, for good."""
    c = cluster_factory(nodes={"n1": 1}, start=False)
    c.start_api()
    bob = c.client("bob")
    made_up = ["../../etc/passwd", "x" * 200, "pool-\u00e9-1"]
    ids = [bob.submit({"kind": "command", "command": ["true"], "pool": p})["id"] for p in made_up]
    c.start_daemon()
    wait_until(lambda: all(bob.get(i)["state"] == "failed" for i in ids), 30, 0.1, "the made-up pools' jobs to fail")

    def scrape() -> str | None:
        try:
            text = requests.get(f"http://127.0.0.1:{c.metrics_port}/metrics", timeout=5).text
        except requests.RequestException:
            return None
        return text if samples(text, "gpuqueue_jobs_finished_total") else None

    text = wait_until(scrape, 30, 0.2, "the scheduler's metrics")
    pools = {labels["pool"] for fam in text_string_to_metric_families(text)
             for s in fam.samples for labels in [dict(s.labels)] if "pool" in labels}
    assert pools <= {"gpu", "unknown"}, sorted(pools)
    failed = dict((lb["pool"], v) for lb, v in samples(text, "gpuqueue_jobs_finished_total") if lb["outcome"] == "failed")
    assert failed.get("unknown") == len(made_up), failed


def test_an_admin_gets_no_pickle_of_another_users_job(cluster_factory) -> None:
    """A cell job's results are a pickle its own code wrote; the kernel that fetches them
    unpickles them. An admin sees every job, and ``%gpuqueue attach ID`` / ``result ID`` fetched
    another user's results too: that user's code then ran in the admin's kernel."""
    c = cluster_factory(nodes={"n1": 1})
    payload, inputs, outputs = build_payload("x = 41 + 1", {}, inputs=[], outputs=["x"])
    job = c.client("alice").submit({"kind": "cell", "gpus": 0, "retries": 0, "inputs": inputs, "outputs": outputs},
                                   payload)["id"]
    assert c.wait_done([job])[job]["state"] == "succeeded"
    assert unpack_results(c.client("alice").result(job))[0] == {"x": 42}  # its owner: as before
    try:
        c.client("root").result(job)
        raise AssertionError("an admin fetched another user's pickle")
    except Forbidden as e:
        assert f"the results of job {job} are alice's" in str(e) and "gpuqueue logs" in str(e), str(e)
    try:
        c.client("bob").result(job)
        raise AssertionError("bob fetched alice's results")
    except NotFound:
        pass
    # the admin still sees the job, its events and its logs
    assert c.client("root").get(job)["owner"] == "alice"
    assert c.client("root").events(job)
    r = c.cli("root", "logs", job)
    assert r.returncode == 0, r.stderr


FLOOD = "import sys\nfor i in range(400):\n    print(f'{i} ' + 'x' * 10_000, flush=True)\nprint('the end')\n"


def test_a_job_that_prints_without_end_cannot_fill_redis(cluster_factory, monkeypatch) -> None:
    """Every line a job prints goes into its event stream in Redis, which every user's jobs share:
    one job printing without end filled it (maxmemory: every submit, and the workers' reports,
    refused). Now an attempt keeps ``GPUQUEUE_MAX_OUTPUT_MB`` (of the worker) of the job's output,
    then drops the rest after one line that says so."""
    monkeypatch.setenv("GPUQUEUE_MAX_OUTPUT_MB", "1")  # the cluster's processes inherit it
    c = cluster_factory(nodes={"n1": 1})
    job = c.submit("bob", gpus=0, command=[sys.executable, "-c", FLOOD], retries=0)
    assert c.wait_done([job])[job]["state"] == "succeeded"
    r = c.redis_client()
    stream = f"gq:ev:{job}"
    kept = r.memory_usage(stream)
    assert kept is not None and kept < 1.5 * 2**20, kept  # ~4 MB printed
    lines = [e["data"].get("line", "") for e in c.client("bob").events(job) if e["type"] == "log"]
    assert "the end" not in lines and any("output passed 1 MB" in x for x in lines), lines[-2:]


def test_the_schedulers_metrics_can_be_kept_off_the_jobs_network(cluster_factory) -> None:
    """The scheduler's /metrics names every running job, its user, pool, node and GPUs,
    with no login, and listened on every interface: a job of any user on a GPU node could read
    what the others run (the sidebar shows them only "busy"). ``--metrics-address`` puts it on
    the monitoring network only."""
    c = cluster_factory(nodes={"n1": 1}, start=False, daemon_args=("--metrics-address", "127.0.0.2"))
    c.start()
    job = c.submit("alice", ticks=100, gpus=1)
    wait_until(lambda: c.client("alice").get(job)["state"] == "running", 30, 0.1, "alice's job to run")
    text = wait_until(lambda: _get(f"http://127.0.0.2:{c.metrics_port}/metrics"), 30, 0.2, "the scheduler's metrics")
    assert f'job_id="{job}"' in text and 'user="alice"' in text  # what it tells the monitoring network
    assert _get(f"http://127.0.0.1:{c.metrics_port}/metrics") is None  # and no one else
    r = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "scheduler", "--redis", c.redis.url, "--metrics-port",
                        str(c.metrics_port + 1 if c.metrics_port < 65535 else 1024), "--metrics-address", "no.such.host.invalid"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "give --metrics-address an address of this host" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def _get(url: str) -> str | None:
    try:
        r = requests.get(url, timeout=5)
    except requests.RequestException:
        return None
    return r.text if r.ok else None


def test_a_cancelled_cells_payload_does_not_stay_in_redis(cluster_factory) -> None:
    """A cell's payload (up to --max-payload-mb, 64 MB) stayed in Redis until the finished job was
    deleted (--keep-finished, 30 days): submitting large cells and cancelling them filled the
    store that every user shares. A finished job's payload is deleted as it ends."""
    c = cluster_factory(nodes={"n1": 1})
    bob, r = c.client("bob"), c.redis_client()
    blocker = c.submit("alice", ticks=100, gpus=1)  # holds the only GPU: bob's cells wait
    wait_until(lambda: c.client("alice").get(blocker)["state"] == "running", 30, 0.1, "alice's job to run")
    payload, inputs, outputs = build_payload("y = len(x)", {"x": os.urandom(4_000_000)})
    ids = [bob.submit({"kind": "cell", "gpus": 1, "inputs": inputs, "outputs": outputs}, payload)["id"] for _ in range(3)]
    assert all(r.exists(f"gq:payload:{i}") for i in ids)  # needed while they wait
    for i in ids:
        assert bob.cancel(i)["state"] == "cancelled"
    wait_until(lambda: not any(r.exists(f"gq:payload:{i}") for i in ids), 10, 0.1, "the cancelled cells' payloads to go")
    assert bob.get(ids[0])["state"] == "cancelled"  # the record stays (--keep-finished)
    c.client("root").cancel(blocker)
