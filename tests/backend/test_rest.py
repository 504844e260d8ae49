"""The REST edge (``gpuqueue.rest.handlers``, ``gpuqueue.rest.jsonbody``) against a real embedded Jupyter
server: bad requests are refused with a 400 that names the fix and change nothing, the queue
goes on scheduling, a large payload does not stall the server, and no token reaches its log."""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
import time

import pytest
import requests

from helpers.servers import wait_until

API = "gpuqueue/api/"


def strict_json(text: str):
    """The body as JSON, refusing NaN and Infinity (what a browser's JSON.parse does)."""
    def refuse(name: str):
        raise AssertionError(f"non-standard JSON {name} in {text[:300]}")
    return json.loads(text, parse_constant=refuse)


def command(code: str, **spec) -> dict:
    return {"spec": {"kind": "command", "command": [sys.executable, "-c", code], **spec}}


def test_answers_are_standard_json_and_logged_uris_hold_no_token():
    from gpuqueue.rest.handlers import scrub_uri, standard_json

    assert strict_json(standard_json({"loss": float("nan"), "x": [1.5, float("-inf")]})) == {"loss": None, "x": [1.5, None]}
    assert scrub_uri("/gpuqueue/api/jobs?after=3&token=abc&api_key=k") == "/gpuqueue/api/jobs?after=3&token=[secret]&api_key=[secret]"


BAD_BODIES = [
    (b'{"spec": {"kind": "command", "command": ["true"], "timeout_s": 1e400}}', "spec.timeout_s"),
    (b'{"spec": {"kind": "command", "command": ["true"], "timeout_s": Infinity}}', "366 days"),
    (b'{"spec": {"kind": "command", "command": ["true"], "timeout_s": NaN}}', "spec.timeout_s"),
    (b'{"spec": {"kind": "command", "command": ["true"], "timeout_s": 1' + b"0" * 400 + b"}}", "401-digit"),
    (b"[" * 100_000 + b"]" * 100_000, "nested more than 32 deep"),
    # past Python's bound on an int's digits, json's error told the client to call sys.set_int_max_str_digits()
    (b'{"spec": {"kind": "command", "command": ["true"], "gpus": 1' + b"0" * 5000 + b"}}",
     "holds a number of over 4300 digits: no field takes one"),
    (b'{"spec": {"kind": "command", "command": ["echo", "a\\u0000b"]}}', "spec.command.1: contains a NUL byte"),
    (b'{"spec": {"kind": "command", "command": ["true"], "env": {"A=B": "x"}}}', "not an environment variable name"),
    (b'{"spec": {"kind": "command", "command": ["true"], "name": "\\u001b[2Jgotcha"}}', "spec.name: contains the control character"),
    # a bidi override shows the rest of an admin's listing line reversed (another owner, another
    # state); a line separator is a line break to str.splitlines and many log viewers
    (b'{"spec": {"kind": "command", "command": ["true"], "name": "x\\u202e\\u2066 gnilaets"}}', "control character '\\u202e'"),
    (b'{"spec": {"kind": "command", "command": ["true"], "name": "ok\\u2028{\\"level\\": \\"error\\"}"}}', "control character '\\u2028'"),
    (b'{"spec": {"kind": "command", "command": ["true"], "pool": "gpu\\u2029x"}}', "spec.pool: contains the control character"),
    # half a UTF-16 surrogate pair parses as JSON but is no text: it cannot be stored (was a 500)
    (b'{"spec": {"kind": "command", "command": ["echo", "\\ud800"]}}', "spec.command.1: holds an unpaired surrogate"),
    (b'{"spec": {"kind": "command", "command": ["true"], "env": {"A": "x\\udfff"}}}', "spec.env.A: holds an unpaired surrogate"),
    (b'{"spec": {"kind": "cell", "inputs": ["os.system"]}, "payload_b64": "AA=="}', "not a Python name"),
    # resolved against the runner's folder on the node, not the caller's: the caller means another one
    (b'{"spec": {"kind": "command", "command": ["true"], "cwd": "../alice"}}', "spec.cwd: '../alice' is a relative path"),
    (b'{"spec": {"kind": "cell", "name": "' + b"x" * 300_000 + b'"}}', "spec.name: this string is too long"),
    # each argument within Linux's 128 KB, together more than a process is given (and kept in
    # the record, in Redis for every user, for 30 days)
    (b'{"spec": {"kind": "command", "command": [' + b",".join([b'"' + b"a" * 120_000 + b'"'] * 12) + b"]}}",
     "command and env hold 1.4 MB, more than a process is given (1 MB at most)"),
]


def test_bad_requests_are_400_change_nothing_and_the_queue_still_schedules(jupyter_server):
    s = jupyter_server
    for body, message in BAD_BODIES:
        r = s.api("POST", API + "jobs", data=body)
        assert r.status_code == 400, (body[:80], r.status_code, r.text[:300])
        assert message in strict_json(r.text)["message"], (message, r.text[:300])
    for after in (str(2**63), "-1", "9" * 400, "1e3"):
        r = s.api("GET", API + "jobs/j-0123456789ab/events", params={"after": after})
        assert r.status_code == 400 and "from 0 to 9223372036854775807" in r.json()["message"], r.text
    r = requests.get(s.url + API + "jobs/j-0123456789ab/events", headers={**s.headers, "Last-Event-ID": str(2**64)})
    assert r.status_code == 400
    assert s.client().list() == []
    # the queue is not stuck: a normal job runs, and every listing is standard JSON
    job = s.client().submit(command("print('still here')")["spec"])
    wait_until(lambda: s.client().get(job["id"])["state"] == "succeeded", 60, 0.1, "the job to succeed")
    for path in ("jobs", f"jobs/{job['id']}", f"jobs/{job['id']}/events", "queue"):
        r = s.api("GET", API + path)
        assert r.status_code == 200 and strict_json(r.text)


def test_no_token_in_the_server_log_whatever_the_error(jupyter_server):
    s = jupyter_server
    before = s.log_path.stat().st_size  # the start banner prints the login URL
    q = {"token": s.token}
    calls = [
        ("POST", "jobs", b"{not json"),
        ("POST", "jobs", b"[" * 50_000),
        ("POST", "jobs", b'{"spec": {"kind": "command", "command": ["true"], "timeout_s": 1e400}}'),
        ("POST", "jobs", b'{"spec": {"kind": "command", "command": ["true"], "gpus": 99}}'),
        ("GET", "jobs/j-0123456789ab", None),
        ("GET", "jobs/not-a-job/result", None),
        ("POST", "jobs/j-0123456789ab/preempt", None),
        ("GET", "jobs/j-0123456789ab/events?after=99999999999999999999", None),
    ]
    for method, path, body in calls:
        r = requests.request(method, s.url + API + path, params=q, data=body, timeout=30)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:200])
    r = requests.get(s.url + API + "jobs", params={"token": "wrong-" + s.token}, timeout=30)
    assert r.status_code == 403
    time.sleep(0.5)  # let the server write its log lines
    log = s.log_path.read_bytes()[before:].decode(errors="replace")
    assert "/gpuqueue/api/jobs" in log, log[-2000:]  # the requests were logged...
    assert s.token not in log, log[-3000:]  # ...without the token


def test_what_held_still_holds_xsrf_origin_and_size_limit(jupyter_server_factory):
    """Bodies are now read in a stream: the login, XSRF and Origin checks still come first."""
    s = jupyter_server_factory(args=["--GPUQueueApp.max_payload_mb=1"])
    job = {"spec": {"kind": "command", "command": ["true"]}}
    assert requests.post(s.url + API + "jobs", json=job, timeout=30).status_code == 403  # not logged in
    browser = requests.Session()
    browser.get(s.url + "lab", params={"token": s.token}, timeout=30)  # the login cookie
    xsrf = {"X-XSRFToken": browser.cookies["_xsrf"]}
    r = browser.post(s.url + API + "jobs", json=job, timeout=30)
    assert r.status_code == 403 and "_xsrf" in r.json()["message"]
    r = browser.post(s.url + API + "jobs", json=job, headers={**xsrf, "Origin": "http://evil.example"}, timeout=30)
    assert r.status_code in (403, 404)
    assert s.client().list() == []
    big = {"spec": {"kind": "cell"}, "payload_b64": base64.b64encode(os.urandom(1_500_000)).decode()}
    r = browser.post(s.url + API + "jobs", json=big, headers=xsrf, timeout=30)
    assert r.status_code == 400 and "over the 1 MB limit" in r.json()["message"]
    assert s.client().list() == []
    assert browser.post(s.url + API + "jobs", json=job, headers=xsrf, timeout=30).status_code == 201


@pytest.mark.slow
def test_a_large_payload_submit_leaves_the_server_answering(jupyter_server):
    """A 199 MB cell payload is streamed, parsed, decoded and written off the event loop: other
    requests are answered all along, none slower than half a second (before: the server froze
    for seconds; quiet, the slowest is ~25 ms, but a loaded 2-core machine adds ~100 ms)."""
    s = jupyter_server
    payload = os.urandom(199_000_000)
    body = json.dumps({"spec": {"kind": "cell", "python": sys.executable, "name": "big"},
                       "payload_b64": base64.b64encode(payload).decode()}).encode()
    done: dict = {}

    def submit() -> None:
        t = time.monotonic()
        done["response"] = requests.post(s.url + API + "jobs", data=body, headers=s.headers, timeout=300)
        done["seconds"] = time.monotonic() - t

    ping = requests.Session()
    ping.headers.update(s.headers)
    ping.get(s.url + API + "queue", timeout=10)  # a warm connection
    worker = threading.Thread(target=submit)
    worker.start()
    latencies = []
    while worker.is_alive():
        t = time.monotonic()
        assert ping.get(s.url + API + "queue", timeout=10).status_code == 200
        latencies.append(time.monotonic() - t)
        time.sleep(0.02)
    worker.join()
    r = done["response"]
    assert r.status_code == 201, r.text[:500]
    latencies.sort()
    print(f"199 MB submit: {done['seconds']:.2f} s; {len(latencies)} requests meanwhile, "
          f"median {latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    assert len(latencies) >= 10 and latencies[-1] < 0.5, latencies[-5:]
    stored = s.state_dir / "jobs" / r.json()["id"] / "payload.pkl"
    assert stored.stat().st_size == len(payload)


def test_one_user_cannot_hold_streams_without_end(jupyter_server):
    """Each live stream holds a connection (in a cluster, from the Redis pool every user shares)
    and wakes on every event: one user gets at most MAX_STREAMS_PER_USER at once, then a 429
    that says what to close; a stream that ends frees its place."""
    from gpuqueue.rest.handlers import MAX_STREAMS_PER_USER

    s = jupyter_server
    job = s.client().submit(command("import time; time.sleep(120)")["spec"])
    url = s.url + API + f"jobs/{job['id']}/events"
    opened = []
    try:
        for _ in range(MAX_STREAMS_PER_USER):
            r = requests.get(url, params={"follow": 1}, headers=s.headers, stream=True, timeout=30)
            assert r.status_code == 200, r.text
            opened.append(r)
        r = requests.get(url, params={"follow": 1}, headers=s.headers, stream=True, timeout=30)
        assert r.status_code == 429 and r.headers.get("Retry-After") == "10", r.status_code
        assert r.json()["message"].startswith(f"you follow {MAX_STREAMS_PER_USER} jobs live through this server already")
        assert s.api("GET", API + f"jobs/{job['id']}/events").status_code == 200  # reading without following works
        opened.pop().close()

        def one_more() -> bool:
            r = requests.get(url, params={"follow": 1}, headers=s.headers, stream=True, timeout=30)
            if r.status_code == 200:
                opened.append(r)
            return r.status_code == 200

        wait_until(one_more, 30, 0.5, "a place freed by a closed stream")
    finally:
        for r in opened:
            r.close()
        s.client().cancel(job["id"])
