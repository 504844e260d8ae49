"""Waiting in a cell while the kernel keeps handling widget (comm) messages.

While a cell runs, ipykernel handles no other message of its shell: a click on a widget that the
cell shows arrives as a ``comm_msg`` and would wait until the cell ends. A cell that only waits
(the foreground ``%%train``) uses ``CommWaiter`` instead of a plain sleep: it sleeps in a
``zmq`` poll on the socket the kernel reads its shell messages from (and on a wake-up pipe), so
it costs no CPU, and when messages arrive it takes them itself, through the stream's own
``flush``:

* ``comm_open`` / ``comm_msg`` / ``comm_close`` are handled at once by the kernel's comm
  manager, under the waiting cell's parent header, so whatever a button's handler prints lands
  in this cell, in order;
* every other request (the next cell's ``execute_request``, a completion, ``kernel_info``) is
  held, in arrival order, and handed back to the kernel's own handler when the wait ends: it
  runs after this cell, exactly as it would have.

Where the shell's messages come from differs by ipykernel version:

* ipykernel 7: a shell-channel thread forwards the main shell's messages over an inproc socket
  pair (``SubshellManager.get_shell_channel_to_subshell_pair(None)``); its ``to_stream`` is read
  by the main thread's event loop, which is blocked while the cell runs.
* ipykernel 6: the shell ``ZMQStream`` (``kernel.shell_stream``) feeds ``kernel.msg_queue``.

Any other kernel, or an ipykernel whose internals differ, gets ``None`` from ``CommWaiter.open``:
the caller then waits as before (Kernel > Interrupt still works) and says so on its buttons.
Frontends that send comm messages on a kernel subshell of their own (JupyterLab 4.4+ with
ipykernel 7 routes a comm there once the kernel last spoke on it from that subshell) have them
handled on the subshell's thread instead, so comm callbacks must be thread-safe either way.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
from typing import Any, Callable, Optional

log = logging.getLogger("jupyter_gpuqueue.commwait")

COMM_TYPES = frozenset({"comm_open", "comm_msg", "comm_close"})


class CommWaiter:
    """Sleep until ``wake()`` (any thread) or a timeout, handling comm messages meanwhile.

    Use as a context manager from the cell's own (main) thread; leaving it hands the held
    requests back to the kernel in order::

        with CommWaiter.open() as waiter:   # None: not possible in this kernel
            while not done.is_set():
                waiter.wait(1.0)
    """

    def __init__(self, kernel: Any, stream: Any, reply_stream: Any, hand_back: Callable[[list[Any]], None]):
        self.kernel = kernel
        self.stream = stream  # the ZMQStream the main thread's shell messages arrive on
        self.reply_stream = reply_stream  # what the kernel's own handlers are given as ``stream``
        self._hand_back = hand_back
        self._held: list[Any] = []  # raw multipart messages, in arrival order
        self._original: Any = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller: Any = None
        self._fd_lock = threading.Lock()  # wake() never writes to a closed (reused) descriptor
        self.handled = 0  # comm messages handled while waiting (tests and debugging read it)
        self._closed = False

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def open(cls) -> Optional["CommWaiter"]:
        """A waiter for this kernel, or None where it is not possible (not ipykernel, not its
        main thread, unknown internals)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        try:
            from IPython import get_ipython
        except ImportError:
            return None
        shell = get_ipython()
        kernel = getattr(shell, "kernel", None)
        if kernel is None or getattr(kernel, "session", None) is None:
            return None
        try:
            waiter = cls._for_ipykernel7(kernel) or cls._for_ipykernel6(kernel)
        except Exception:  # noqa: BLE001 - internals we do not recognise: wait the plain way
            log.debug("cannot take comm messages while waiting", exc_info=True)
            return None
        if waiter is not None:
            waiter._install()
        return waiter

    @classmethod
    def _for_ipykernel7(cls, kernel: Any) -> Optional["CommWaiter"]:
        thread = getattr(kernel, "shell_channel_thread", None)
        if thread is None:
            return None
        manager = thread.manager
        pair = manager.get_shell_channel_to_subshell_pair(None)
        stream = getattr(pair, "to_stream", None)
        if stream is None:
            return None
        callback = stream._recv_callback
        if callback is None:
            return None

        def hand_back(held: list[Any]) -> None:
            # as ZMQStream would have: each message to the kernel's (async) shell handler;
            # tasks made now queue on the shell's lock ahead of any message read later
            for msg in held:
                res = callback(msg)
                if inspect.isawaitable(res):
                    asyncio.ensure_future(res)

        return cls(kernel, stream, manager.get_subshell_to_shell_channel_socket(None), hand_back)

    @classmethod
    def _for_ipykernel6(cls, kernel: Any) -> Optional["CommWaiter"]:
        stream = getattr(kernel, "shell_stream", None)
        queue = getattr(kernel, "msg_queue", None)
        if stream is None or queue is None or not hasattr(kernel, "schedule_dispatch"):
            return None
        callback = stream._recv_callback
        if callback is None:
            return None
        waiter: Optional[CommWaiter] = None
        queued: list[Any] = []  # (idx, dispatch, args) already in msg_queue, put back first

        def hand_back(held: list[Any]) -> None:
            for item in queued:
                queue.put_nowait(item)
            for msg in held:
                callback(msg)  # schedule_dispatch(dispatch_shell, msg): back on msg_queue

        waiter = cls(kernel, stream, stream, hand_back)
        # messages the stream read before this cell blocked the loop: comm ones now, others kept
        while True:
            try:
                item = queue.get_nowait()
            except Exception:  # noqa: BLE001 - QueueEmpty (tornado or asyncio)
                break
            _, dispatch, args = item
            if getattr(dispatch, "__name__", "") == "dispatch_shell" and args and waiter._is_comm(args[0]):
                waiter._handle(args[0])
            else:
                queued.append(item)
        return waiter

    # -- the wait -------------------------------------------------------------------------
    def _install(self) -> None:
        import zmq

        self._original = self.stream._recv_callback
        self.stream.on_recv(self._on_message, copy=False)
        self._poller = zmq.Poller()
        self._poller.register(self.stream.socket, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)

    def wake(self) -> None:
        """Make ``wait`` return now (thread-safe)."""
        with self._fd_lock:
            if self._closed:
                return
            try:
                os.write(self._wake_w, b"x")
            except OSError:  # the pipe is full: a wake-up is pending anyway
                pass

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds or until ``wake()``; comm messages that arrive are
        handled meanwhile. KeyboardInterrupt (Kernel > Interrupt) passes through."""
        import zmq

        for sock, _ in self._poller.poll(int(timeout * 1000)):
            if sock == self._wake_r:
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            else:
                self.stream.flush(zmq.POLLIN)  # calls _on_message for each waiting message
        return None

    def _on_message(self, msg: list[Any]) -> None:
        if self._is_comm(msg):
            self._handle(msg)
        else:
            self._held.append(msg)

    def _is_comm(self, msg: list[Any]) -> bool:
        """Whether a raw shell message is a comm message (its header only: no signature
        check is recorded, so the kernel can still read a held message later)."""
        session = self.kernel.session
        try:
            _, parts = session.feed_identities(msg, copy=False)
            header = session.deserialize(parts, content=False, copy=False)["header"]
        except Exception:  # noqa: BLE001 - let the kernel's own handler deal with it later
            return False
        return header.get("msg_type") in COMM_TYPES

    def _handle(self, raw: list[Any]) -> None:
        """Run the kernel's own handler of one comm message, under this cell's parent."""
        session = self.kernel.session
        try:
            idents, parts = session.feed_identities(raw, copy=False)
            msg = session.deserialize(parts, content=True, copy=False)
            handler = self.kernel.shell_handlers.get(msg["header"]["msg_type"])
            if handler is not None:
                handler(self.reply_stream, idents, msg)
                self.handled += 1
        except Exception:  # noqa: BLE001 - as the kernel does: log, never break the cell
            log.error("exception handling a comm message while waiting", exc_info=True)

    # -- the end --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop taking messages; hand every held request back to the kernel, in order."""
        with self._fd_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.stream.on_recv(self._original, copy=False)
            self._hand_back(self._held)
        finally:
            self._held = []
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __enter__(self) -> "CommWaiter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
