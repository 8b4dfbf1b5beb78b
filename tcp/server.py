"""The TCP chat server's transport: it accepts connections, frames their lines and moves
their bytes. One reader thread per client, one writer for all (``tcp.writer``); what a line
means, and everything else a server decides, is the core's (``common.server``).

Threads, each named and owned by the server:

* ``MainThread``: accepts connections and starts one reader each (or refuses
  one past ``Admission``'s bounds); every poll interval it lets the room end
  expired graces (``Room.expire``); once a signal set ``stopping``, it runs
  the shutdown: ``bye`` to every client, a short grace, then the remaining
  sockets shut and every thread joined.
* ``client-HOST:PORT``: reads its client's lines and hands them to the core;
  no socket is written here. Past the room's backlog (``BACKLOG_SHARE`` of
  ``--max-outbox``) the room holds a talker's next ``say`` or ``dm`` until
  the writer's pass ends, so its socket fills and TCP slows it.
* ``writer``: sends every byte to a connection and closes it (``tcp.writer``), in
  two steps: ``Connection.end``, ``Writer.close``. A socket refused at accept is
  told why and closed by ``MainThread`` (``refuse``), before it is a connection.

Locks: the room's, the writer's (the set of connections) and
``Admission``'s; none is held during socket I/O (docs/ARCHITECTURE.md). A reader
that ended leaves the room once it holds ``leaving``, one at a time: thousands
of clients closing at once then queue there, asleep, not on the room's lock,
so that the accept loop (``Room.expire``), a newcomer's hello and the writer's
pass wait for one leave at most, not for all of them (3,000 closing at once
held a newcomer's welcome 0.5 to 1 s behind them); nor do they all wait for
the interpreter's lock together, each waking every switch interval to ask.
Nor does the first to hold the turn leave for all who queued behind it: with
3,000 closing at once their sockets then closed in 1.4 s (0.2-2.0) instead of
0.7 (0.5-0.9), and a newcomer waited as long, as that one reader, busy with
the interpreter's lock, starved the writer's pass.
Its connection is ``gone`` from its reader's end on: the writer's passes skip
it (they would write the others' ``left`` to a socket whose peer closed), and
its close writes what is left for it.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from common.cli.serverargs import non_negative_float, raise_open_file_limit
from common.protocol.codec import (
    ClientMessage,
    Hello,
    History,
    LineFramer,
    NotRegistered,
    ServerFull,
    TooLarge,
    decode_client,
)
from common.protocol.limits import Limits
from common.room.room import RESUME_MAX_BYTES
from common.room.sharing import Sharing
from common.server import main as server_main
from common.server.core import (
    BUSY,
    DEFAULT_MAX_REFUSED_BEFORE_HELLO,
    DEFAULT_MAX_WAITING_PER_ADDRESS,
    POLL_INTERVAL,
    RECV_BYTES,
    SHUTDOWN_GRACE,
    Admission,
    Core,
)
from common.server.textmode import GREETING, TEXT_HISTORY, TEXT_SILENCE, TextMode, is_text, plain
from tcp.connection import IDLE_RECV_BYTES, Connection, join_readers, refuse, tune
from tcp.writer import Alarm, Writer

log = logging.getLogger("tcp.server")

THREAD_STACK_BYTES = 256 * 1024
DEFAULT_COALESCE_MS = 7.0
BACKLOG_SHARE = 4
"""The room's backlog (what the writer is behind on) is held under this share of --max-outbox:
past it the readers stop reading from talkers, so that a client that reads is never near the
limit that drops one that does not."""


@dataclass
class ChatServer(server_main.Server):
    """The listening socket and the readers; the writer and the core do the rest."""

    limits: Limits
    host: str = "127.0.0.1"
    port: int = 8080
    nodelay: bool = True
    coalesce: float = DEFAULT_COALESCE_MS / 1000
    history: int = 1000
    sharing: Sharing = field(default_factory=Sharing)
    max_waiting_per_address: int = DEFAULT_MAX_WAITING_PER_ADDRESS
    max_refused_before_hello: int = DEFAULT_MAX_REFUSED_BEFORE_HELLO

    join_with = "nc {host} {port}  (or: make chat-tcp)"  # ``what``: "chat server"

    def __post_init__(self) -> None:
        super().__init__()
        self.admission = Admission(time.monotonic(), self.max_waiting_per_address)
        alarm = Alarm()
        self.core: Core[Connection] = Core(
            self.limits,
            self.history,
            self.sharing,
            log,
            wake=alarm.ring,
            on_taken=self._taken,
            resume_bytes=min(RESUME_MAX_BYTES, self.limits.max_outbox // 2),
            max_backlog=self.limits.max_outbox // BACKLOG_SHARE,
        )
        self.room = self.core.room
        self.writer = Writer(self.core, alarm, self.coalesce)
        self.leaving = threading.Lock()  # readers that ended take turns here (see Locks above)
        self.listener = socket.create_server((self.host, self.port), reuse_port=False, backlog=1024)
        self.listener.settimeout(POLL_INTERVAL)
        self.address = self.listener.getsockname()[:2]

    def connections(self) -> list[Connection]:
        return self.writer.connections()

    # ---- accepting -----------------------------------------------------

    def _start(self) -> None:
        self.writer.thread.start()

    def _turn(self) -> None:
        """Accept one connection, waiting a poll interval at most."""
        self.room.expire()
        try:
            sock, addr = self.listener.accept()
        except TimeoutError:
            return
        except OSError as exc:
            log.warning("accept failed: %s", exc)
            self.stopping.wait(POLL_INTERVAL)
            return
        self._admit(sock, addr)

    def _admit(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        """A new connection, a stranger until it joins (``_settle``), gets its reader."""
        why = self.admission.arrive(addr[0])
        if why is not None:
            log.debug("%s:%d refused: %s", addr[0], addr[1], why)
            refuse(sock, why)
            return
        tune(sock, self.nodelay)
        conn = Connection(sock, addr, self.limits, time.monotonic())
        log.debug("%s connected", conn.label)
        self.writer.add(conn)
        conn.thread = threading.Thread(
            target=self.serve_client, args=(conn,), name=f"client-{conn.label}", daemon=True
        )
        try:
            conn.thread.start()
        except RuntimeError:
            log.warning("%s refused: cannot start another thread", conn.label)
            self._settle(conn)
            self.writer.reader_done(conn)  # the writer closes it, as it closes every connection

    def _settle(self, conn: Connection) -> None:
        """``conn`` no longer waits to say hello: it frees its place among those that do."""
        conn.waiting = False
        self.admission.settle(conn.host)

    # ---- reading (one thread per client) -------------------------------

    def serve_client(self, conn: Connection) -> None:
        """The reader thread: lines in, handed to the core; the writer answers."""
        reason = "disconnected"
        try:
            reason = self._read(conn)
        except TooLarge as exc:
            log.info("%s sent a frame that is too large, closing", conn.label)
            self.room.refuse(conn, exc)
            if conn.text is not None:
                self._say(conn, "* so the server closes this connection")
            conn.drain()
        except OSError as exc:
            log.debug("%s: %s", conn.label, exc)
        finally:
            conn.gone = True
            if conn.waiting:
                self._settle(conn)
            if conn.refused > 1:
                log.info("%s: %d frames refused in all", *conn.tally())
            with self.leaving:
                self.core.left(self.room.leave(conn, reason), reason)
            self.writer.reader_done(conn)

    def _read(self, conn: Connection) -> str:
        """Read lines until the connection ends; return why it did (the ``left`` reason)."""
        deadline = time.monotonic() + self.limits.hello_timeout
        framer = LineFramer()
        mode_known = False  # text or JSON: told by the first byte that is not blank
        current: float | None = -1.0  # the socket's timeout, set only when it changes
        size = IDLE_RECV_BYTES  # what the next recv asks for: see IDLE_RECV_BYTES
        while True:
            timeout = None
            if conn.waiting and (timeout := deadline - time.monotonic()) <= 0:
                log.info("%s sent no hello in time, closing", conn.label)
                return "disconnected"
            unfinished = conn.text is not None and framer.pending > 0
            if unfinished:
                timeout = min(timeout or TEXT_SILENCE, TEXT_SILENCE)
            if timeout != current:
                conn.sock.settimeout(current := timeout)
            try:
                data = conn.sock.recv(size)
                size = RECV_BYTES if len(data) == size else IDLE_RECV_BYTES
            except TimeoutError:
                if not unfinished:
                    continue
                data = b"\n"  # silence ends a text line
            if not data:
                return "disconnected"
            if not mode_known and (start := data.lstrip()):
                conn.text = TextMode() if is_text(start) else None
                mode_known = True
            if (reason := self._lines(conn, framer.feed(data))) is not None:
                return reason

    def _lines(self, conn: Connection, lines: Iterable[bytes]) -> str | None:
        """Hand each line to the core in order; why the session ended, if it did."""
        for line in lines:
            if not line:
                self.core.blank(conn, time.monotonic())
            elif not self.on_line(conn, line):
                if conn.text is not None:
                    conn.hang_up(self.room)
                return "quit"
            if conn.waiting and self.core.in_room(conn):
                self._settle(conn)
            elif conn.waiting and conn.refused > self.max_refused_before_hello:
                log.info("%s refused too many frames before hello, closing", conn.label)
                self.room.refuse(conn, NotRegistered("too many frames before hello"))
                return "disconnected"
        return None

    def on_line(self, conn: Connection, line: bytes) -> bool:
        """Handle one line; False when the session ends (``bye``, or a full server)."""
        was_in = self.core.in_room(conn)
        alive = self.core.act(conn, lambda: self._decode(conn, line), time.monotonic())
        if not was_in and self.core.in_room(conn):
            self.core.joined(conn, "json" if conn.text is None else "text")
            if conn.text is not None:
                self._say(conn, GREETING)
                self.room.handle(conn, History(limit=TEXT_HISTORY))
        elif not alive and was_in:  # the room took it out: the reader's leave
            self.core.left(conn.name, "quit")  # will not, so the log says it here
            if conn.text is not None:
                self._say(conn, "* bye")
        return alive

    def _decode(self, conn: Connection, line: bytes) -> ClientMessage | None:
        """A line's message (None: text mode answered it itself). A hello past the budget of
        joins (``Admission.may_join``: a TCP join costs one send) is refused: ``server_full``."""
        if conn.text is None:
            message: ClientMessage = decode_client(line).message
        else:
            read = conn.text.read(line, joined=self.core.in_room(conn))
            if isinstance(read, str):
                self._say(conn, read)
                return None
            message = read
        joining = isinstance(message, Hello) and conn.waiting
        if joining and not self.admission.may_join(time.monotonic(), 1):
            raise ServerFull(BUSY)
        return message

    def _say(self, conn: Connection, text: str) -> None:
        """A line of text mode's own, in its place among what the client gets."""
        self.room.post_entry(conn, plain(text))

    def _taken(self, conn: Connection) -> None:
        """A resuming client took ``conn``'s session over: its connection ends without a word
        (even half open: shutting it down here wakes its reader at once, no keepalive)."""
        log.info("%s resumed on a new connection; closing %s", conn.name, conn.label)
        conn.end()

    # ---- stopping ------------------------------------------------------

    def _shutdown(self) -> None:
        self.listener.close()
        conns = self.connections()
        self.core.say_bye(conns, "connection")
        self.writer.said_bye = True  # the writer shuts our side of each once its bye is out
        join_readers(conns, SHUTDOWN_GRACE)
        for conn in conns:
            conn.end()
        join_readers(conns, SHUTDOWN_GRACE)
        self.writer.stop(SHUTDOWN_GRACE)
        self.writer.alarm.close()
        log.info("stopped")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The TCP server's own flags."""
    parser.add_argument(
        "--max-outbox",
        type=int,
        default=1048576,
        metavar="BYTES",
        help="bytes waiting for one client that does not read before it is dropped as too "
        "slow (default: %(default)s)",
    )
    parser.add_argument(
        "--coalesce-ms",
        type=non_negative_float,
        default=DEFAULT_COALESCE_MS,
        metavar="MS",
        help="the writer makes at most one pass per this many milliseconds, so that under "
        "load each send carries more frames; 0 writes at once (default: %(default)s)",
    )
    server_main.add_admission_flags(parser)
    parser.add_argument(
        "--nagle",
        action="store_true",
        help="leave Nagle's algorithm on (TCP_NODELAY off), to measure what it costs",
    )


def make(args: argparse.Namespace) -> ChatServer:
    raise_open_file_limit()
    threading.stack_size(THREAD_STACK_BYTES)
    return ChatServer(
        Limits.from_args(args, max_outbox=args.max_outbox),
        host=args.host,
        port=args.port,
        nodelay=not args.nagle,
        coalesce=args.coalesce_ms / 1000,
        history=args.history,
        sharing=Sharing.from_args(args),
        max_waiting_per_address=args.max_waiting_per_address,
        max_refused_before_hello=args.max_refused_before_hello,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tcp.server",
        description="The TCP chat server: one thread per client. JSON clients and plain "
        "text clients (nc, telnet) share one room.",
        epilog="Try it: python -m tcp.server, then in two other terminals: nc 127.0.0.1 8080",
    )
    return server_main.main(argv, parser, add_flags, make)


if __name__ == "__main__":
    sys.exit(main())
