"""``Client.follow`` reads the server-sent events as UTF-8, as SSE is always encoded: the
server's ``Content-Type: text/event-stream`` names no charset, which requests alone reads as
ISO-8859-1, so a job's non-ASCII output (tqdm's bars, accents) came back garbled."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from gpuqueue.rest.client import Client, ServerInfo

TEXT = "epoch 1 █████ 100% — café ✓"


class _SSE(BaseHTTPRequestHandler):
    """The stream the events handler sends: ``data:`` lines of JSON with non-ASCII kept as is
    (pydantic's ``model_dump_json``), under a charset-less event-stream Content-Type."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        ev = {"seq": 1, "type": "stdout", "data": {"text": TEXT}}
        body = (f"id: 1\nevent: stdout\ndata: {json.dumps(ev, ensure_ascii=False)}\n\n"
                "event: end\ndata: {}\n\n").encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _SSE)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_follow_decodes_events_as_utf8(server: str) -> None:
    events = list(Client(ServerInfo(server)).follow("j-0123abcd"))
    assert [e["data"]["text"] for e in events] == [TEXT]
