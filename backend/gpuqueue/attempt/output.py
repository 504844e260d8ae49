"""The job's stdout and stderr as ``log`` records, in the job's own order (the runner's
:class:`OutputPump`): each line once final, the line being written (a progress bar) shown
transient now and then, another torchrun rank's lines marked as theirs."""

from __future__ import annotations

import os
import select
import time
from typing import TYPE_CHECKING, Any, Optional

from .failtext import StderrTail

if TYPE_CHECKING:  # pragma: no cover
    from .runner import EventWriter

PARTIAL_LINE_FLUSH_S = 0.5  # a line with no newline yet (a progress bar) is shown, transient, after this long
TRANSIENT_SLOW_AFTER = 1200  # after this many transient records of a stream (10 min of a bar) ...
TRANSIENT_SLOW_S = 5.0  # ... its line being written is shown this often
TRANSIENT_MAX_SHARE = 8  # transient records take at most this share (1/8) of the attempt's output limit
MAX_OUTPUT_BYTES = 256 * 1024 * 1024  # of a job's records per attempt, unless launch.json says
MAX_LINE = 16_384  # longer lines are cut (with a marker) so one line cannot flood the log
MAX_LINE_BYTES = 4 * MAX_LINE + 4  # what of a line being written is kept (a character is 1 to 4 bytes)
READ_ROUND_BYTES = 1 << 20  # what one wake-up reads of the pipes at most before it writes records
RANK_LINE = b"\x1b]gpuqueue-rank;"  # starts a whole line of another torchrun rank: RANK_LINE N;text\n
# (gpuqueue.job.distributed.run_rank writes them; the runner shows "[rankN] text" as a line of its own)


class _Stream:
    """One of the job's output pipes and the line being written on it (``pending``: its bytes
    since the last ``\\n``, only the part after its last ``\\r`` kept)."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self.open = True
        self.pending = b""
        self.since = 0.0  # when the pending line began, or was last shown
        self.shown: Optional[bytes] = None  # what the last transient record of this line showed
        self.cut = False  # the pending line passed the length limit: the rest of it is dropped
        self.ended = False  # its line was ended for it (the job moved on): a "\n" next is that line's
        self.marked: Optional[bytes] = None  # a rank's line being read (RANK_LINE), up to its "\n"
        self.carry = b""  # the start of RANK_LINE at the end of the last read
        self.transients = 0

    def current(self) -> bytes:
        """The pending line as a terminal shows it: the text after its last ``\\r``."""
        return self.pending.rstrip(b"\r").rsplit(b"\r", 1)[-1]


class OutputPump:
    """Turns the job's stdout and stderr into ``log`` records in the job's own order.

    A record is a *final* line (``{"stream", "line"}``: part of the output for good) or a
    *transient* one (``"transient": true``): the line being written, shown for liveness while a
    progress bar redraws it with ``\\r`` (tqdm) or before its ``\\n`` comes; the next record of
    that stream replaces it, and readers that print the output for good (``%gpuqueue logs``)
    skip it. Every line ends as one final record: at its ``\\n`` (its last ``\\r`` state), when
    the job moves on (a line printed on the other stream ends it, as on a terminal; a ``\\n``
    that follows then is that line's own and is dropped), or when the pipe closes.

    One thread reads both pipes: after each wake-up it reads them in turn until neither has
    more, so everything written before a line is read with it (:meth:`_feed_round` orders
    what one wake-up read): a bar the job ended before printing elsewhere comes before that print.
    Transient records come at most every :data:`PARTIAL_LINE_FLUSH_S` per stream (every
    :data:`TRANSIENT_SLOW_S` after :data:`TRANSIENT_SLOW_AFTER` of them) and take at most
    1/:data:`TRANSIENT_MAX_SHARE` of the attempt's output limit, so a bar redrawn for days
    stores little."""

    def __init__(self, out: EventWriter, fds: list[tuple[int, str]]) -> None:
        self.out = out
        self.streams = [_Stream(fd, name) for fd, name in fds]
        limit = out.max_job_bytes if out.max_job_bytes is not None else MAX_OUTPUT_BYTES
        self.transient_budget = limit // TRANSIENT_MAX_SHARE
        self.stderr_tail = StderrTail()  # the job's own last lines on stderr (not another rank's): its error

    def run(self) -> None:
        """Read until both pipes close; the lines still being written then end as final ones."""
        poller = select.poll()
        for s in self.streams:
            os.set_blocking(s.fd, False)
            poller.register(s.fd, select.POLLIN)
        try:
            while any(s.open for s in self.streams):
                poller.poll(self._timeout_ms())
                self._feed_round(self._read_all())
                for s in self.streams:
                    if not s.open and s.fd >= 0:  # closed: the line it was writing ends
                        self._feed_text(s, s.carry)
                        s.carry = b""
                        if s.pending.strip(b"\r"):
                            self._final(s, s.current(), move_on=False)
                        poller.unregister(s.fd)
                        os.close(s.fd)
                        s.fd = -1
                self._show_pending(time.monotonic())
        finally:
            for s in self.streams:
                if s.pending.strip(b"\r"):
                    self._final(s, s.current(), move_on=False)
                if s.fd >= 0:
                    os.close(s.fd)

    def _read_all(self) -> dict[str, bytes]:
        """What the pipes hold now. Each is read again after the other had something (until a
        pass over both reads nothing), so the bytes written before any byte read are read too;
        a flood is cut at :data:`READ_ROUND_BYTES`."""
        got = {s.name: b"" for s in self.streams}
        total, quiet = 0, 0
        while quiet < len(self.streams) and total < READ_ROUND_BYTES:
            for s in self.streams:
                chunk = b""
                if s.open:
                    try:
                        chunk = os.read(s.fd, 65536)
                        s.open = bool(chunk)
                    except BlockingIOError:
                        pass
                if chunk:
                    got[s.name] += chunk
                    total += len(chunk)
                    quiet = 0
                else:
                    quiet += 1
        return got

    def _feed_round(self, data: dict[str, bytes]) -> None:
        """Records for what one wake-up read. The order of bytes read from the two pipes in
        the same wake-up is unknown (written microseconds apart, or while the runner waited for
        a CPU); it is taken as: the end of a line being written (a bar's ``\\n``) first, as a job
        ends its line before it prints elsewhere; then the other stream's lines; a bar's further
        redraws last, so the job's print ends the bar's line as it was before them."""
        rest = dict(data)
        for s in self.streams:
            nl = rest[s.name].find(b"\n")
            if s.pending and nl >= 0:
                self._feed(s, rest[s.name][: nl + 1])
                rest[s.name] = rest[s.name][nl + 1 :]
        for s in sorted(self.streams, key=lambda s: bool(s.pending) and b"\n" not in rest[s.name]):
            if rest[s.name]:
                self._feed(s, rest[s.name])

    def _feed(self, s: _Stream, data: bytes) -> None:
        """Split out the lines another torchrun rank wrote (:data:`RANK_LINE`): whole lines of
        another process, they do not touch the line being written here (rank 0's bar)."""
        data, s.carry = s.carry + data, b""
        while data:
            if s.marked is not None:
                nl = data.find(b"\n")
                if nl < 0:
                    s.marked = (s.marked + data)[:MAX_LINE_BYTES]
                    return
                rank, _, text = (s.marked + data[:nl]).partition(b";")
                s.marked, data = None, data[nl + 1 :]
                _emit_line(self.out, s.name, b"[rank" + rank[:8] + b"] " + text, False)
                s.shown = None  # readers replaced the line being written: it is shown again
                continue
            i = data.find(RANK_LINE)
            if i < 0:
                for k in range(min(len(RANK_LINE) - 1, len(data)), 0, -1):
                    if data.endswith(RANK_LINE[:k]):  # perhaps a mark cut by the read: the next read tells
                        data, s.carry = data[:-k], data[-k:]
                        break
                self._feed_text(s, data)
                return
            self._feed_text(s, data[:i])
            s.marked, data = b"", data[i + len(RANK_LINE) :]

    def _feed_text(self, s: _Stream, data: bytes) -> None:
        if not data:
            return
        if s.ended:
            s.ended = False
            if data.startswith(b"\n"):
                data = data[1:]
        while data:
            nl = data.find(b"\n")
            part, data = (data, b"") if nl < 0 else (data[:nl], data[nl + 1 :])
            if not s.cut:
                if not s.pending:
                    s.since = time.monotonic()
                s.pending += part
                if b"\r" in s.pending.rstrip(b"\r"):  # only the line's latest state is kept
                    cr = s.pending.rstrip(b"\r").rfind(b"\r")
                    s.pending = s.pending[cr:]
                if len(s.pending) > MAX_LINE_BYTES:
                    s.pending, s.cut = s.pending[:MAX_LINE_BYTES], True
            if nl >= 0:
                self._final(s, s.current(), move_on=True)

    def _final(self, s: _Stream, line: bytes, move_on: bool) -> None:
        """``line`` ends ``s``'s pending line; the other streams' lines being written end first."""
        if move_on:
            for other in self.streams:
                if other is not s and other.current():
                    self._final(other, other.current(), move_on=False)
                    other.ended = True
        s.pending, s.cut, s.shown = b"", False, None
        if s.name == "stderr":
            self.stderr_tail.add(line.decode("utf-8", "replace"))
        _emit_line(self.out, s.name, line, False)

    def _interval(self, s: _Stream) -> float:
        return PARTIAL_LINE_FLUSH_S if s.transients < TRANSIENT_SLOW_AFTER else TRANSIENT_SLOW_S

    def _timeout_ms(self) -> Optional[int]:
        """How long the next wait may last: until the next pending line is due to be shown."""
        due = [s.since + self._interval(s) for s in self.streams if s.current() and s.current() != s.shown]
        if not due:
            return None
        return max(0, int((min(due) - time.monotonic()) * 1000) + 1)

    def _show_pending(self, now: float) -> None:
        for s in self.streams:
            current = s.current()
            if not current or current == s.shown or now < s.since + self._interval(s):
                continue
            s.since, s.shown = now, current
            if self.transient_budget > 0:
                s.transients += 1
                self.transient_budget -= len(current) + 80
                _emit_line(self.out, s.name, current, True)


def _emit_line(out: EventWriter, stream: str, raw: bytes, transient: bool) -> None:
    text = raw.decode("utf-8", "replace")
    if len(text) > MAX_LINE:
        text = text[:MAX_LINE] + " …[line cut]"
    data: dict[str, Any] = {"stream": stream, "line": text}
    if transient:
        data["transient"] = True
    out.write_job("log", data)
