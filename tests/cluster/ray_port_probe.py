"""What another user's job gets from each listening port of a job's own Ray, without its token
(``tests/cluster/test_ray_own.py`` runs this file as that job).

``python ray_port_probe.py HOST:PORT ...`` prints one ``PORTPROBE {json}`` line per address:
``http`` maps each path of :data:`PATHS` to the status line a plain HTTP GET got (``None``: the
port does not speak HTTP/1), ``grpc`` maps each method of :data:`METHODS` to what a gRPC call
with an empty request and no token got: ``"unauthenticated"`` (Ray refused it for the token),
``"answered"`` (a reply message came: the call went through), ``"error"`` (another gRPC error:
no such method on that server) or ``"none"`` (no gRPC answer at all); ``metrics``, where
``/metrics`` answered, the names of the metrics it lists.

The gRPC calls are spoken over a plain socket (HTTP/2 with literal, unindexed headers), as the
job's Python has no ``grpcio``; Ray's gRPC servers send their error text unencoded, so the
refusal is recognised by Ray's own words (``InvalidAuthToken``, ``authentication``).
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
from typing import Optional

# the HTTP servers of Ray 2.x: job submission and logs (dashboard agent, head), runtime envs,
# Prometheus metrics; and their health checks, which Ray leaves open
PATHS = ["/", "/api/jobs/", "/api/v0/logs", "/api/v0/tasks", "/get_runtime_envs_info", "/metrics", "/api/healthz",
         "/api/local_raylet_healthz", "/api/gcs_healthz"]
HEALTH = {"/api/healthz", "/api/local_raylet_healthz", "/api/gcs_healthz"}
# one cheap method of each gRPC service a Ray process serves (GCS, raylet, object manager, core
# worker and driver, dashboard agent, Ray client server)
METHODS = ["/ray.rpc.NodeInfoGcsService/GetAllNodeInfo", "/ray.rpc.InternalKVGcsService/InternalKVKeys",
           "/ray.rpc.NodeManagerService/GetNodeStats", "/ray.rpc.ObjectManagerService/Pull",
           "/ray.rpc.CoreWorkerService/GetCoreWorkerStats", "/ray.rpc.ReporterService/GetTraceback",
           "/ray.rpc.LogService/ListLogs", "/ray.rpc.RayletDriver/ClusterInfo"]


def http_get(host: str, port: int, path: str) -> Optional[str]:
    """The status line of ``GET path`` (HTTP/1.0), or None where the port does not speak HTTP/1."""
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = s.recv(200)
    except OSError:
        return None
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    return line if line.startswith("HTTP/") else None


def metric_names(host: str, port: int) -> list[str]:
    """The metric names a Prometheus page at ``/metrics`` lists (none where there is none)."""
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(f"GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while len(data) < 1 << 20:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return []
    head, _, body = data.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        return []
    names = {line.split(b"{")[0].split(b" ")[0].decode("latin-1") for line in body.splitlines()
             if line and not line.startswith(b"#")}
    return sorted(names)


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _lit(index: int, value: str) -> bytes:
    """A header with a name of the static table, literal value, not indexed (RFC 7541 6.2.2)."""
    out = bytes([index]) if index < 15 else bytes([15, index - 15])
    return out + bytes([len(value)]) + value.encode()


def grpc_call(host: str, port: int, method: str) -> str:
    """One unary gRPC call with an empty request and no token (see the module docstring)."""
    block = (b"\x83\x86" + _lit(4, method) + _lit(1, f"{host}:{port}") + _lit(31, "application/grpc")
             + b"\x00\x02te\x08trailers")
    try:
        s = socket.create_connection((host, port), timeout=3)
    except OSError:
        return "none"
    got, answered, deadline = b"", False, time.monotonic() + 5
    with s:
        try:
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"") + _frame(1, 4, 1, block)
                      + _frame(0, 1, 1, b"\x00\x00\x00\x00\x00"))
            buf = b""
            while time.monotonic() < deadline:
                while len(buf) >= 9:
                    size = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + size:
                        break
                    kind, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                    payload, buf = buf[9:9 + size], buf[9 + size:]
                    if kind == 4 and not flags & 1:  # the server's settings: acknowledge them
                        s.sendall(_frame(4, 1, 0, b""))
                    if stream == 1 and kind == 0 and payload:
                        answered = True
                    if stream == 1 and kind in (1, 9):
                        got += payload
                    if kind == 7 or (stream == 1 and flags & 1 and kind in (0, 1)):  # GOAWAY, or the call's end
                        deadline = 0
                if time.monotonic() >= deadline:
                    break
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError:
            pass
    if answered:
        return "answered"
    if b"InvalidAuthToken" in got or b"authentication" in got.lower():
        return "unauthenticated"
    return "error" if got else "none"


def probe(address: str) -> dict[str, object]:
    """What each HTTP path and each gRPC method got at ``address`` (``HOST:PORT``)."""
    host, port = address.rsplit(":", 1)
    http = {p: http_get(host, int(port), p) for p in PATHS}
    out: dict[str, object] = {"address": address, "http": http}
    if http["/metrics"] and " 200 " in http["/metrics"]:
        out["metrics"] = metric_names(host, int(port))
    if not any(http.values()):
        out["grpc"] = {m: grpc_call(host, int(port), m) for m in METHODS}
    return out


if __name__ == "__main__":
    for a in sys.argv[1:]:
        print("PORTPROBE " + json.dumps(probe(a)), flush=True)
