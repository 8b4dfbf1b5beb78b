"""The TCP server's writer thread: it sends every byte and closes every socket.

It wakes when the room has something new (``Alarm``) or a full socket
drained, and catches every connection up with one non-blocking ``send`` of
all it is behind on. Between two passes it rests at least ``--coalesce-ms``
and at least as long as the last pass took, so that frames gather: the
busier the room, the more frames each ``send`` carries, and the writer never
takes more than about half a core from the readers. Within a pass it yields
the CPU every ``YIELD_EVERY`` connections, so that nobody it wakes waits for
the pass. A client whose socket is full keeps its place in the log and is
polled until it can take more (no ``send`` is tried meanwhile); once its
socket refuses bytes and what waits for it passes ``--max-outbox``, it is
dropped as ``too_slow``: only a client that does not read gets there. The
writer's own delay is bounded instead by the room's backlog (see
``tcp.server``'s ``BACKLOG_SHARE``). Nobody ever waits for a client that
does not read.

Lock: ``_lock`` guards the set of connections and the list of those whose
reader is done; it is never held during socket I/O.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time

from common.server.core import Core
from tcp import memory
from tcp.connection import Connection

YIELD_EVERY = 16
"""Connections the writer catches up before it offers its CPU to whoever waits for it: a pass
over a big room takes milliseconds, and a process woken by the writer's own sends (a client on
the same machine) must not wait for the whole pass to end."""


GIVE_BACK_AFTER = 256
GIVE_BACK_QUIET = 0.25
"""After ``GIVE_BACK_AFTER`` connections or more closed, once none has closed for
``GIVE_BACK_QUIET`` seconds, the writer gives the memory they freed back to the system
(``tcp.memory.trim``): thousands of readers leave free memory in glibc's arenas, most of it not
at the top where ``free`` would give it back."""


class Alarm:
    """How the room wakes the writer: one byte in a pipe, written only if it sleeps."""

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._rung = False

    def ring(self) -> None:
        if not self._rung:
            self._rung = True
            with contextlib.suppress(BlockingIOError):
                os.write(self._w, b"!")

    def heard(self) -> None:
        os.read(self.fd, 4096)
        self._rung = False

    def close(self) -> None:
        os.close(self.fd)
        os.close(self._w)


class Writer:
    """The connections, and the one thread that writes to them and closes them."""

    def __init__(self, core: Core[Connection], alarm: Alarm, coalesce: float) -> None:
        self.core = core
        self.room = core.room
        self.alarm = alarm
        self.coalesce = coalesce
        self.said_bye = False  # set at shutdown: each socket's side shuts once its bye is out
        self._stop = False
        self._lock = threading.Lock()
        self._connections: set[Connection] = set()
        self._done: list[Connection] = []  # their reader is done: close them
        self._owed = 0  # connections closed since memory was last given back (writer's own)
        self._last_close = 0.0
        self.thread = threading.Thread(target=self._loop, name="writer", daemon=True)

    def add(self, conn: Connection) -> None:
        with self._lock:
            self._connections.add(conn)

    def connections(self) -> list[Connection]:
        with self._lock:
            return list(self._connections)

    def reader_done(self, conn: Connection) -> None:
        """``conn``'s reader is done: the writer writes what is left, then closes the socket."""
        with self._lock:
            self._done.append(conn)
        self.alarm.ring()

    def stop(self, timeout: float) -> None:
        """Close every connection left and end the thread."""
        self._stop = True
        self.alarm.ring()
        self.thread.join(timeout=timeout)

    def _loop(self) -> None:
        """Wait for the room or a full socket that drained; catch everyone up in one pass."""
        poller = select.poll()
        poller.register(self.alarm.fd, select.POLLIN)
        blocked: dict[int, Connection] = {}
        last_pass = took = 0.0
        while not self._stop:
            ready: list[Connection] = []
            for fd, _ in poller.poll(self._give_back()):
                if fd == self.alarm.fd:
                    self.alarm.heard()
                elif (conn := blocked.pop(fd, None)) is not None:
                    poller.unregister(fd)
                    ready.append(conn)
            pause = last_pass + max(self.coalesce, took) - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            last_pass = time.monotonic()
            self._pass(ready, poller, blocked)
            took = time.monotonic() - last_pass
            self._close_done(poller, blocked)
        for conn in self.connections():
            self.close(conn)

    def _pass(
        self, ready: list[Connection], poller: select.poll, blocked: dict[int, Connection]
    ) -> None:
        """Catch up everyone the room has something for, and every socket that drained."""
        for i, conn in enumerate(dict.fromkeys(self.room.pending() + ready)):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                os.sched_yield()
            if conn.gone:  # its reader ended or a send failed: its close writes what is left
                continue
            fd = conn.sock.fileno()
            if blocked.get(fd) is conn:  # still full: no send, only its limit
                self._keep_or_drop(conn)
            elif self._write(conn):
                blocked[fd] = conn
                poller.register(fd, select.POLLOUT)
        self.room.trim()
        self.room.caught_up()

    def _close_done(self, poller: select.poll, blocked: dict[int, Connection]) -> None:
        with self._lock:
            done, self._done = self._done, []
        for conn in done:
            fd = conn.sock.fileno()
            if blocked.get(fd) is conn:
                poller.unregister(fd)
                del blocked[fd]
            self.close(conn)
        if done:
            self._owed += len(done)
            self._last_close = time.monotonic()

    def _give_back(self) -> int | None:
        """Give the memory freed by many closes back once they stopped (``GIVE_BACK_QUIET``);
        how long ``poll`` may wait before it is due (milliseconds; None: nothing owed)."""
        if self._owed < GIVE_BACK_AFTER:
            return None
        due = self._last_close + GIVE_BACK_QUIET - time.monotonic()
        if due > 0:
            return int(due * 1000) + 1
        self._owed = 0
        memory.trim()
        return None

    def _write(self, conn: Connection) -> bool:
        """One non-blocking ``send`` of all ``conn`` is behind on; True if its socket is full.

        What its socket refused last time goes first; only once that is all
        sent does the room hand over more.
        """
        if conn.closed:
            return False
        if conn.unsent and not self._send(conn, conn.unsent):
            return self._keep_or_drop(conn)
        said_bye = self.said_bye  # read before taking: then what is taken holds the bye
        data = conn.take(self.room)
        if data and not self._send(conn, data):
            return self._keep_or_drop(conn)
        if said_bye:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
        return False

    def _keep_or_drop(self, conn: Connection) -> bool:
        """``conn``'s socket refused bytes: it waits for room (True) unless what waits for it
        passes ``--max-outbox``. Only a client that does not read gets there: the writer's own
        delay is bounded well below it (the room's ``max_backlog``)."""
        if self.room.lag(conn) + len(conn.unsent) <= self.core.limits.max_outbox:
            return True
        self.drop(conn, "too_slow")
        return False

    def _send(self, conn: Connection, data: bytes) -> bool:
        """Send what the socket takes now; keep the rest. True when all was sent."""
        try:
            sent = conn.sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            conn.gone = True
            conn.unsent = b""
            conn.end()
            return True
        conn.unsent = data[sent:]
        return not conn.unsent

    def close(self, conn: Connection) -> None:
        """Write the last of what ``conn`` has (once, never waiting), then close it: the one
        place a connection's socket closes."""
        if conn.closed:
            return
        self._write(conn)
        conn.closed = True
        conn.sock.close()
        with self._lock:
            self._connections.discard(conn)

    def drop(self, conn: Connection, reason: str) -> None:
        """Take ``conn`` out of the room and end its connection; its reader then finishes."""
        conn.unsent = b""
        self.core.left(self.room.leave(conn, reason), reason)
        conn.end()
