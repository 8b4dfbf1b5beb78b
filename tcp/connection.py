"""One TCP client as the server keeps it: its socket, its reader thread, what waits for it."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

from common.protocol.codec import Error, ServerFull, encode_line
from common.protocol.limits import Limits
from common.room.room import Room
from common.server.core import RECV_BYTES, Client
from common.server.textmode import TextMode

RCVBUF_BYTES = 65536
"""Each connection's receive buffer: what a talker may have on its way that the server has not
read yet. Fixed (not grown by the kernel up to megabytes), so that when the readers stop
reading the talkers are slowed at once, not after a queue nobody sees."""
SNDBUF_BYTES = 131072
"""Each connection's send buffer (the kernel doubles it: 256 KB, about what one pass of the
writer hands a reader at the room's backlog bound). Fixed, not grown by the kernel up to 4 MB:
a client that does not read is seen refusing bytes at once, and the writer does not copy
megabytes into the socket of every client that asked for more than it reads (history)."""
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES = 60, 10, 3
IDLE_RECV_BYTES = 4096
"""What a reader asks for when its last read did not fill its buffer: a ``recv`` holds a buffer
of the size asked for as long as it waits, so thousands of idle clients (or clients that never
read, and never send) would each hold 64 KB of the server's memory; a client that streams fills
its reads, and keeps reading RECV_BYTES at a time."""
DRAIN_SECONDS = 1.0
HANG_UP_SECONDS = 1.0


def tune(sock: socket.socket, nodelay: bool) -> None:
    """A new connection's socket as the server wants it: blocking, keepalive, fixed buffers."""
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(nodelay))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF_BYTES)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


def refuse(sock: socket.socket, why: str) -> None:
    """A socket refused at accept, before it is a connection: told why, then closed."""
    with contextlib.suppress(OSError):
        sock.send(encode_line(Error.of(ServerFull(why))), socket.MSG_DONTWAIT)
    sock.close()


def join_readers(conns: list[Connection], timeout: float) -> None:
    """Wait for the readers of ``conns`` to end, ``timeout`` seconds in all at most."""
    deadline = time.monotonic() + timeout
    for conn in conns:
        if conn.thread is not None:
            conn.thread.join(timeout=max(0.0, deadline - time.monotonic()))


class Connection(Client):
    """A client's socket and the state of its bytes; the room's side is ``Member``'s.

    Its life ends in two steps, each in one place: ``end`` shuts the socket
    down (whoever decides it: a drop, a takeover, a failed send, shutdown),
    which wakes its reader; the reader, once done, hands it to the writer,
    which alone writes what is left and closes it (``Writer.close``).
    """

    def __init__(self, sock: socket.socket, addr: tuple[str, int], limits: Limits, now: float):
        super().__init__(f"{addr[0]}:{addr[1]}", limits, now)
        self.sock = sock
        self.host = addr[0]
        self.text: TextMode | None = None  # text mode's codec, once the first bytes tell
        self.waiting = True  # for a good hello: it holds a stranger's place (``Admission``)
        self.thread: threading.Thread | None = None  # its reader, once started
        # Set once, by its reader or the writer, and read by the writer without a lock (a stale
        # read costs one send at most): its peer is gone, or going (its reader ended, or a send
        # failed). The writer's passes skip it; its close writes what is left for it.
        self.gone = False
        # Owned by the writer thread:
        self.unsent = b""
        self.closed = False  # its socket is closed: nothing is written to it any more

    def take(self, room: Room[Connection]) -> bytes:
        """All this client is behind on, as it is sent (JSON lines, or readable text)."""
        if self.text is None:
            return room.take_lines(self)
        return self.text.write(room.take(self), self.name)

    def hang_up(self, room: Room[Connection]) -> None:
        """A text session that quit: once ``* bye`` is out, end the connection both ways.

        ``nc`` does not stop when the server closes its side alone: it goes on reading the
        keyboard until Ctrl+D. So, its last lines written, the server closes its side (nc
        reads them and the end), and a moment later resets the connection (``SO_LINGER`` 0
        when the writer closes it), which ends nc at once. Only this client's own reader
        thread waits here (``room`` tells what it has yet to be sent).
        """
        deadline = time.monotonic() + HANG_UP_SECONDS
        while (room.lag(self) or self.unsent) and time.monotonic() < deadline:
            time.sleep(HANG_UP_SECONDS / 50)
        time.sleep(HANG_UP_SECONDS / 5)  # the writer's send of what it took ends meanwhile
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
            time.sleep(HANG_UP_SECONDS / 5)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def drain(self) -> None:
        """Read and drop what the client still sends, for a moment, before its socket closes.

        Closing a socket that has unread bytes sends a reset, and a reset can reach the
        client before it has read why it is being closed: so the rest of a line that was
        too long is read first (at most ``DRAIN_SECONDS``), and the close is a plain FIN.
        """
        deadline = time.monotonic() + DRAIN_SECONDS
        with contextlib.suppress(OSError):
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                if not self.sock.recv(RECV_BYTES):
                    return

    def end(self) -> None:
        """Shut the socket down both ways: its reader wakes and finishes, even half open."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
