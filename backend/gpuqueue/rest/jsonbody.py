"""JSON request bodies read at the edge: bounded, and without stalling the server.

:func:`read_submit` turns the body of ``POST /jobs`` into a validated ``SubmitRequest`` with
its cell payload decoded. It is meant to run in a worker thread, and it never holds the GIL
for long, so the event loop keeps answering other requests while a 200 MB payload is read:

- the body is scanned in slices for its structure: nesting deeper than :data:`MAX_DEPTH`, more
  than :data:`MAX_VALUES` strings and containers, or more than :data:`MAX_REST` bytes besides
  the payload are refused (400) before anything is parsed;
- strings longer than :data:`BIG` are cut out of the text, so ``json.loads`` (which holds the
  GIL for its whole run) only ever parses the small rest; only ``payload_b64`` may be that long;
- the payload's base64 is decoded slice by slice, and after each slice the thread lets the
  event loop's thread take the GIL (``time.sleep(0)``) rather than make it wait its 5 ms turn;
- a large body and its decoded payload live in anonymous memory maps, not ``bytes``: freeing
  200 MB of ``bytes`` holds the GIL for tens of milliseconds (the pages are unmapped under it),
  while :func:`release` unmaps them from a thread without it.
"""

from __future__ import annotations

import json
import mmap
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from pydantic import ValidationError

from ..queue.config import format_validation_error
from ..queue.errors import BadRequest
from ..queue.lifecycle import b64decode
from ..queue.models import EDGE, Buffer, SubmitRequest

MAX_DEPTH = 32  # a submit body is 3 deep
MAX_VALUES = 100_000  # strings, arrays and objects (escaped quotes count too)
_INT_DIGITS = getattr(sys, "get_int_max_str_digits", lambda: 4300)()  # Python's bound on an int's digits
BIG = 256 * 1024  # strings longer than this are cut out of the text before parsing
MAX_REST = 8 * 1024 * 1024  # the body apart from its long strings
SLICE = 1 << 18  # bytes handled while holding the GIL, at most (~2 ms of base64)
MAPPED = 1 << 20  # bodies and payloads from this size on are kept in memory maps


_STRUCTURE = re.compile(rb'["\[\]{}]')
_BACKSLASH = re.compile(rb"\\")
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")  # a \uD800-\uDFFF escape (maybe half a pair)


def join_chunks(chunks: list[bytes]) -> Buffer:
    """The body from the chunks it arrived in (the list is emptied as they are copied). Meant
    for a thread: a large body is copied a chunk at a time into a memory map."""
    total = sum(map(len, chunks))
    if total < MAPPED:
        body = b"".join(chunks)
        chunks.clear()
        return body
    m = mmap.mmap(-1, total)
    chunks.reverse()
    pos = 0
    while chunks:
        c = chunks.pop()
        m[pos:pos + len(c)] = c
        pos += len(c)
        if len(chunks) % 4 == 0:
            time.sleep(0)  # let the event loop's thread take the GIL now
    return m


def release(req: SubmitRequest) -> None:
    """Let go of the request's body and payload, unmapping those that are memory maps (which
    ``mmap.close`` does without holding the GIL). Meant for a thread, once the job is stored."""
    for buf in (req._raw, req._payload):
        if isinstance(buf, mmap.mmap) and not buf.closed:
            try:
                if hasattr(mmap, "MADV_DONTNEED"):  # free the pages a few MB at a time: one
                    for i in range(0, len(buf), 4 << 20):  # big munmap stalls the process's mmaps
                        buf.madvise(mmap.MADV_DONTNEED, i, min(4 << 20, len(buf) - i))
                        time.sleep(0)
                buf.close()
            except BufferError:  # still exported somewhere: freed with its last reference
                pass
    req._raw = req._payload = None


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, never by the body
class _Span:
    """A long JSON string left in the body: its content is ``body[start:end]``."""

    body: Buffer = field(repr=False)
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


def read_json(body: Buffer) -> Any:
    """``json.loads(body)`` within the bounds above; strings longer than :data:`BIG` come back
    as spans of the body, not parsed. Raises BadRequest naming the problem."""
    if b"\x00" in body[:4]:
        raise BadRequest("the body is not UTF-8 JSON: send it as UTF-8")
    rest: list[bytes] = []
    spans: list[_Span] = []
    nonce = secrets.token_hex(8)
    depth = values = pos = last = cut = 0
    while True:
        at = _search(_STRUCTURE, body, pos)
        if at < 0:
            break
        c = body[at]
        if c == 0x22:  # '"'
            end, quotes = _string_end(body, at + 1)
            values += quotes
            if end - at - 1 > BIG:
                rest += [body[last:at], f'"\\u0000{nonce}:{len(spans)}"'.encode()]
                spans.append(_Span(body, at + 1, end))
                cut += end - at - 1
                last = end + 1
            pos = end + 1
        else:
            pos = at + 1
            if c in b"[{":
                depth += 1
                values += 1
                if depth > MAX_DEPTH:
                    raise BadRequest(f"the JSON body is nested more than {MAX_DEPTH} deep")
            else:
                depth -= 1
        if values > MAX_VALUES:
            raise BadRequest(f"the JSON body holds more than {MAX_VALUES} values")
        if pos - cut > MAX_REST:
            raise BadRequest(f"the JSON body is over {MAX_REST // 2**20} MB besides payload_b64")
    rest.append(body[last:])
    small = b"".join(rest)
    if len(small) > MAX_REST:
        raise BadRequest(f"the JSON body is over {MAX_REST // 2**20} MB besides payload_b64")
    try:
        data = json.loads(small)
    except (ValueError, RecursionError) as e:
        if "integer string conversion" in str(e):  # Python's advice (set_int_max_str_digits) is the server's
            raise BadRequest(f"the JSON body holds a number of over {_INT_DIGITS} digits: no field takes one, send "
                             f"a number in the field's range") from None
        raise BadRequest(f"the body is not valid JSON: {e}") from None
    if _SURROGATE.search(small):  # rare: only then walk the values
        _no_lone_surrogate(data)
    if spans:
        data = _put_back(data, f"\x00{nonce}:", spans)
    return data


def read_submit(body: Buffer) -> SubmitRequest:
    """The ``POST /jobs`` body as a SubmitRequest, its payload decoded (``req._payload``) and
    the body kept as received (``req._raw``). Raises BadRequest naming the field and the fix."""
    data = read_json(body)
    span = data.pop("payload_b64") if isinstance(data, dict) and isinstance(data.get("payload_b64"), _Span) else None
    where = _find_span(data)
    if where is not None:
        raise BadRequest(f"{where}: this string is too long ({BIG // 1024} KB at most; "
                         f"only payload_b64 may be longer)")
    try:
        req = SubmitRequest.model_validate(data, context=EDGE)
    except ValidationError as e:
        raise BadRequest(format_validation_error(e)) from None
    if span is not None:
        req._payload = _b64decode_span(span)
    elif req.payload_b64 is not None:
        req._payload = b64decode(req.payload_b64)
        req.payload_b64 = None
    req._raw = body
    return req


def read_submit_chunks(chunks: list[bytes]) -> SubmitRequest:
    """:func:`read_submit` of the body that arrived in ``chunks``; a refused body is unmapped
    at once."""
    body = join_chunks(chunks)
    try:
        return read_submit(body)
    except BaseException:
        if isinstance(body, mmap.mmap):
            body.close()
        raise


# -- helpers ------------------------------------------------------------------------------
def _search(pattern: re.Pattern[bytes], body: Buffer, pos: int, end: Optional[int] = None) -> int:
    """Where ``pattern`` next matches in ``body[pos:end]`` (-1: nowhere), a slice at a time."""
    n = len(body) if end is None else end
    while pos < n:
        m = pattern.search(body, pos, min(n, pos + SLICE))
        if m:
            return m.start()
        pos += SLICE
        time.sleep(0)  # let the event loop's thread take the GIL now
    return -1


def _string_end(body: Buffer, start: int) -> tuple[int, int]:
    """The index of the quote that closes the string opened before ``start``, and how many
    quotes were looked at (escaped quotes count against MAX_VALUES)."""
    n, pos, quotes = len(body), start, 1
    while True:
        q = body.find(b'"', pos, min(n, pos + SLICE))
        if q < 0:
            if pos + SLICE >= n:
                raise BadRequest("the body is not valid JSON: a string is not closed")
            pos += SLICE
            continue
        if _backslashes_before(body, q, start) % 2 == 0:
            return q, quotes
        quotes += 1
        if quotes > MAX_VALUES:
            raise BadRequest(f"the JSON body holds more than {MAX_VALUES} values")
        pos = q + 1


def _backslashes_before(body: Buffer, q: int, start: int) -> int:
    k = q
    while k > start:
        lo = max(start, k - 65536)
        kept = len(body[lo:k].rstrip(b"\\"))
        if kept:
            return q - lo - kept
        k = lo
    return q - start


def _put_back(value: Any, marker: str, spans: list[_Span]) -> Any:
    """The parsed value with each placeholder string replaced by its span."""
    if isinstance(value, str) and value.startswith(marker):
        return spans[int(value[len(marker):])]
    if isinstance(value, dict):
        return {_put_back(k, marker, spans) if k.startswith(marker) else k: _put_back(v, marker, spans)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_put_back(v, marker, spans) for v in value]
    return value


def _no_lone_surrogate(value: Any, path: str = "") -> None:
    """BadRequest naming the first string in ``value`` (a key, or a value at ``path``) that holds
    half of a UTF-16 surrogate pair (``"\\ud800"``): JSON parses it, but it is no text, so it could
    be neither stored nor passed to a program (it was a 500). A whole pair is one character."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise BadRequest(f"{path or '(body)'}: holds an unpaired surrogate {value[e.start]!r} at position "
                             f"{e.start}: send text as UTF-8, or a \\uD8xx\\uDCxx pair as a whole") from None
        return
    items: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        if isinstance(k, str):
            _no_lone_surrogate(k, f"{path}.(key)" if path else "(key)")
        _no_lone_surrogate(v, f"{path}.{k}" if path else str(k))


def _find_span(value: Any, path: str = "") -> Optional[str]:
    """The dotted path of a span left in ``value`` (None: there is none)."""
    if isinstance(value, _Span):
        return path or "(body)"
    items: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        if isinstance(k, _Span):
            return f"{path}.(key)" if path else "(key)"
        found = _find_span(v, f"{path}.{k}" if path else str(k))
        if found:
            return found
    return None


def _b64decode_span(span: _Span) -> Buffer:
    """The bytes a long base64 string holds, decoded a slice at a time (into a memory map when
    they are many)."""
    body, start, end = span.body, span.start, span.end
    if _search(_BACKSLASH, body, start, end) >= 0:  # escaped (e.g. "\/"): rare, one go
        try:
            return b64decode(json.loads(body[start - 1:end + 1]))
        except ValueError:
            raise BadRequest("the body is not valid JSON: payload_b64 has a bad escape") from None
    size = (end - start) // 4 * 3 - body[max(start, end - 2):end].count(b"=")
    if (end - start) % 4 or size < MAPPED:
        return b64decode(body[start:end])
    out = mmap.mmap(-1, size)
    pos = 0
    try:
        for i in range(start, end, SLICE):
            part = b64decode(body[i:min(i + SLICE, end)])
            out[pos:pos + len(part)] = part
            pos += len(part)
            time.sleep(0)  # let the event loop's thread take the GIL now
    except (ValueError, IndexError, BadRequest):  # not base64, or padding in the middle
        pos = -1
    if pos != size:
        out.close()
        raise BadRequest("payload_b64 is not valid base64")
    return out
