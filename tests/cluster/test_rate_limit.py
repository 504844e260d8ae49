"""Per-user submit rate limits in the cluster: one token bucket per user in Redis, shared by
every API process (docs/config.md, submit_rate / submit_burst)."""

from __future__ import annotations

import threading
import time

import requests

from helpers.servers import free_port, wait_until

from .conftest import PY, TOKENS, _ok

RATE = 'exempt_admins_from_submit_rate = true\n[defaults]\nsubmit_rate = "30/min"\nsubmit_burst = 3\n'


def _post(url: str, user: str, **spec: object) -> requests.Response:
    body = {"kind": "command", "gpus": 0, "command": [PY, "-c", "pass"], **spec}
    return requests.post(f"{url}gpuqueue/api/jobs", headers={"Authorization": f"token {TOKENS[user]}"},
                         json={"spec": body}, timeout=10)


def test_bucket_holds_across_two_api_processes(cluster_factory) -> None:
    c = cluster_factory(nodes={"n1": 1}, config_extra=RATE)
    port2 = free_port()
    c._spawn("api2", ["api", "--port", str(port2), "--users", str(c.users)], role="api")
    url2 = f"http://127.0.0.1:{port2}/"
    wait_until(lambda: _ok(f"{url2}healthz"), 30, 0.1, "the second API service")
    time.sleep(2.1)  # both have read the daemon's config (cached 2 s)
    urls = [c.url, url2]

    # a request refused as one that can never run, and a cell joining its live job, take no token
    assert _post(urls[0], "alice", gpus=5).status_code == 400
    cell = {"command": ["sleep", "30"], "notebook": "a.ipynb", "cell_id": "c1", "source_hash": "h1"}
    assert _post(urls[0], "alice", **cell).status_code == 201
    assert _post(urls[1], "alice", **cell).status_code == 200
    # burst 3 (one went to the cell), taken through both processes in turn; the next is refused by either
    for i in range(2):
        r = _post(urls[i % 2], "alice")
        assert r.status_code == 201, r.text
    refused = _post(urls[1], "alice")
    empty_since = time.monotonic()  # her bucket is empty from here on, refilled 1 token / 2 s
    assert refused.status_code == 429, refused.text
    wait_s = int(refused.headers["Retry-After"])
    assert 1 <= wait_s <= 2  # 30/min: a token every 2 s
    assert refused.json()["message"].startswith("you are submitting faster than your limit of 30/min (bursts of 3): try again in ")
    assert _post(urls[0], "alice").status_code == 429

    # the CLI says so, in words (the CLI talks to the first process)
    r = c.cli("alice", "submit", "--gpus", "0", "--", PY, "-c", "pass")
    assert r.returncode == 1 and r.stderr.startswith("gpuqueue: you are submitting faster than your limit of 30/min"), r.stderr

    # alice hammering her empty bucket does not slow bob (his own bucket) or hold up the admin
    stop = threading.Event()
    hammered: list[int] = []

    def hammer() -> None:
        while not stop.is_set():
            hammered.append(_post(urls[len(hammered) % 2], "alice").status_code)

    t = threading.Thread(target=hammer)
    t.start()
    try:
        bob = []
        for i in range(3):
            t0 = time.monotonic()
            r = _post(urls[i % 2], "bob")
            bob.append(time.monotonic() - t0)
            assert r.status_code == 201, r.text
        for i in range(5):  # exempt_admins_from_submit_rate
            assert _post(urls[i % 2], "root").status_code == 201
    finally:
        stop.set()
        t.join()
    # her tries through both processes are refused, but for the refill since the bucket emptied
    # (a loaded machine may take over 2 s for the CLI and bob's and root's submits)
    accepted = hammered.count(201)
    assert accepted <= (time.monotonic() - empty_since) / 2 + 1, (accepted, len(hammered))
    assert 429 in hammered and set(hammered) <= {201, 429}, hammered
    assert max(bob) < 1.0, bob  # no wait behind alice's bucket (a submit is milliseconds)

    # accepted again once Retry-After has passed
    time.sleep(wait_s)
    assert _post(urls[1], "alice").status_code == 201


def test_the_limit_reaches_percent_train_through_the_server_extension(cluster_factory, jupyter_server_factory) -> None:
    """Cluster mode through the extension (c.GPUQueueApp.api_url): the API's 429 and its
    Retry-After reach the REST caller and the %%train cell as they are."""
    c = cluster_factory(nodes={"n1": 1}, config_extra='[defaults]\nsubmit_rate = "6/min"\nsubmit_burst = 1\n')
    server = jupyter_server_factory(
        gpus=0, args=[f"--GPUQueueApp.api_url={c.url}"], env={"GPUQUEUE_API_TOKEN": TOKENS["alice"]})
    time.sleep(2.1)  # the API has read the daemon's config (cached 2 s)
    body = {"spec": {"kind": "command", "gpus": 0, "command": ["true"]}}
    assert server.api("POST", "gpuqueue/api/jobs", json=body).status_code == 201
    r = server.api("POST", "gpuqueue/api/jobs", json=body)
    assert r.status_code == 429 and r.headers["Retry-After"] in ("9", "10"), (r.status_code, r.headers, r.text)
    k = server.start_kernel()
    assert k.run("%load_ext jupyter_gpuqueue").error is None
    res = k.run("%%train --gpus 0\nx = 1")
    assert "the job was not queued: you are submitting faster than your limit of 6/min (bursts of 1): " \
           "try again in " in res.text, res.text


def test_a_submit_refused_for_a_full_queue_gives_its_token_back(cluster_factory) -> None:
    """Burst 3 at 1/h (no refill in the test) and one queued job at most: submits refused because
    alice's queue is full cost nothing, so once it has room her burst is still there."""
    c = cluster_factory(nodes={"n1": 1}, config_extra='[defaults]\nsubmit_rate = "1/h"\nsubmit_burst = 3\nmax_queued = 1\n')
    time.sleep(2.1)  # the API has read the daemon's config (cached 2 s)
    sleeper = {"gpus": 1, "command": [PY, "-c", "import time; time.sleep(60)"]}
    running = _post(c.url, "alice", **sleeper).json()["id"]  # token 1
    wait_until(lambda: c.client("alice").get(running)["state"] == "running", 30, 0.2, "the first job to run")
    queued = _post(c.url, "alice", **sleeper)  # token 2: it waits for the GPU
    assert queued.status_code == 201, queued.text
    for _ in range(4):
        full = _post(c.url, "alice", **sleeper)
        assert full.status_code != 429 and "the limit (max_queued) is 1" in full.json()["message"], full.text
    c.client("alice").cancel(queued.json()["id"])
    assert _post(c.url, "alice", **sleeper).status_code == 201  # token 3, still there
    assert _post(c.url, "alice", **sleeper).status_code == 429  # now the burst is spent
