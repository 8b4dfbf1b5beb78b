"""The TCP chat server: one reader thread per client, one writer for all.

Threads, each named and owned by the server:

* ``MainThread``: accepts connections and starts one reader thread each;
  signals only set a flag, and this thread then runs the shutdown. Every
  poll interval it also lets the room end the grace of resumable clients
  whose connection broke (``Room.expire``).
* ``client-HOST:PORT``: reads its client's lines, decodes them and hands
  them to the room (``common.room.room``), which appends what everyone gets to
  its one log and queues the rest to the member. No socket is written here.
* ``writer``: wakes when the room has something new and catches every
  connection up with one non-blocking ``send`` of all it is behind on. Between
  two passes it rests at least ``--coalesce-ms`` and at least as long as the
  last pass took, so that frames gather: the busier the room, the more frames
  each ``send`` carries, and the writer never takes more than about half a
  core from the readers. Within a pass it yields the CPU every
  ``YIELD_EVERY`` connections, so that nobody it wakes waits for the pass.
  A client whose socket is full keeps its place in the log and is polled
  until it can take more (no ``send`` is tried meanwhile); once its socket
  refuses bytes and what waits for it passes ``--max-outbox``, it is dropped
  as ``too_slow``: only a client that does not read gets there. The writer's
  own delay is bounded instead by the room's backlog (a quarter of
  ``--max-outbox``, ``BACKLOG_SHARE``): past it the readers hold the talkers'
  next ``say`` or ``dm`` until the writer's pass ends, so the talkers' sockets
  fill and TCP slows them. Nobody ever waits for a client that does not read.
  The writer also closes every socket, once its reader is done with it.

Locks: the room's lock (see ``common.room.room``) orders everything the room
says; ``_connections_lock`` guards the set of connections and the count of
those that have not said hello. Neither is held during socket I/O.

Shutdown rule: a signal sets ``stopping``; the accept loop sees it within
one poll interval, stops accepting, queues ``bye`` to every client, waits
a short grace period for them to close, then shuts the remaining sockets
and joins every thread it started.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

from common.cli.serverargs import (
    Limits,
    add_common_arguments,
    announce,
    configure_logging,
    non_negative_float,
    positive_int,
    raise_open_file_limit,
    serve_until_signalled,
)
from common.protocol.codec import (
    Bye,
    ClientMessage,
    Dm,
    Error,
    Hello,
    History,
    HistoryEnd,
    LineFramer,
    Msg,
    NotRegistered,
    ProtocolError,
    RateLimited,
    Renamed,
    ServerFull,
    TooLarge,
    check_name,
    decode_client,
    encode_line,
)
from common.room.ratelimit import TokenBucket
from common.room.room import RESUME_MAX_BYTES, Entry, Member, Room, Stage
from common.room.sharing import Sharing, open_sharing
from common.terminal.commands import HELP_TEXT, ShowHelp, Usage, parse_command
from common.terminal.render import NOTHING_EARLIER, text_mode_line

log = logging.getLogger("tcp.server")

POLL_INTERVAL = 0.2
SHUTDOWN_GRACE = 1.0
THREAD_STACK_BYTES = 256 * 1024
RECV_BYTES = 65536
IDLE_RECV_BYTES = 4096
"""What a reader asks for when its last read did not fill its buffer: a ``recv`` holds a buffer
of the size asked for as long as it waits, so thousands of idle clients (or clients that never
read, and never send) would each hold 64 KB of the server's memory; a client that streams fills
its reads, and keeps reading RECV_BYTES at a time."""
RCVBUF_BYTES = 65536
"""Each connection's receive buffer: what a talker may have on its way that the server has not
read yet. Fixed (not grown by the kernel up to megabytes), so that when the readers stop
reading the talkers are slowed at once, not after a queue nobody sees."""
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES = 60, 10, 3
MAX_UNREGISTERED = 256
"""Connections that have not said hello yet, at most; each expires after --hello-timeout."""
DEFAULT_MAX_WAITING_PER_ADDRESS = 64
"""Of those, from one address at most: a class of 30 behind one NAT all typing their names
fits twice over, clients that say hello at once (the benchmark's, thousands on loopback) are
never near it, and one client opening connections in a loop holds a quarter of the places."""
DEFAULT_COALESCE_MS = 7.0
YIELD_EVERY = 16
"""Connections the writer catches up before it offers its CPU to whoever waits for it: a pass
over a big room takes milliseconds, and a process woken by the writer's own sends (a client on
the same machine) must not wait for the whole pass to end."""
BACKLOG_SHARE = 4
"""The room's backlog (what the writer is behind on) is held under this share of --max-outbox:
past it the readers stop reading from talkers, so that a client that reads is never near the
limit that drops one that does not."""
TEXT_HISTORY = 10
"""Earlier messages a text-mode session is shown right after its greeting."""
DRAIN_SECONDS = 1.0
HANG_UP_SECONDS = 1.0
TEXT_SILENCE = 0.1
"""Seconds of silence after which a text-mode session's unfinished line counts as a line: the
assignment's own client sends its user's name and each message with no line end."""
DEFAULT_MAX_REFUSED_BEFORE_HELLO = 20
"""Frames refused from a connection that has not said hello yet, at most: past it the
connection is closed. A person retrying names, or a client that sent a frame too early, is far
below it; a flood of frames before any hello (whose answers nobody may read) ends at once."""


class Connection(Member):
    """One client: its socket, its reader thread, and what the writer has not sent yet."""

    def __init__(self, server: ChatServer, sock: socket.socket, addr: tuple[str, int]) -> None:
        super().__init__()
        self.sock = sock
        self.host = addr[0]
        self.label = f"{addr[0]}:{addr[1]}"
        self.text_mode = False
        self.refused = 0  # frames refused so far; owned by the reader thread
        self.bucket = TokenBucket(server.limits.rate_limit, server.limits.burst, time.monotonic())
        self.thread = threading.Thread(
            target=server.serve_client, args=(self,), name=f"client-{self.label}", daemon=True
        )
        # Owned by the writer thread:
        self.unsent = b""
        self.finished = False  # the reader is done: write what is left once, then close
        self.history_answers = 0  # text mode: the first is the greeting's

    def tally(self) -> tuple[str, int]:
        """Who this is in the log, and how many of its frames were refused."""
        return f"{self.label} ({self.name or '-'})", self.refused

    def take(self, room: Room[Connection]) -> bytes:
        """All this client is behind on, as it is sent (JSON lines, or readable text)."""
        if not self.text_mode:
            return room.take_lines(self)
        return b"".join([self._text(e) for e in room.take(self)])

    def _text(self, entry: Entry) -> bytes:
        """``text_line``; but an empty answer to a ``/history`` the user typed says so."""
        if isinstance(entry.message, HistoryEnd):
            self.history_answers += 1
            if self.history_answers > 1 and entry.message.count == 0:
                return NOTHING_EARLIER.plain().encode() + b"\n"
        return text_line(entry, self.name)


def text_line(entry: Entry, me: str) -> bytes:
    """An entry as a text-mode session shows it; made once unless it speaks of ``me``."""
    message = entry.message
    if message is None:
        return entry.line
    personal = (
        isinstance(message, Dm)
        or (isinstance(message, Msg) and message.sender == me)
        or (isinstance(message, Renamed) and me in (message.old, message.new))
    )
    if personal:
        return text_mode_line(message, me)
    if entry.cache is None:
        entry.cache = text_mode_line(message, "")
    return entry.cache


@dataclass
class ChatServer:
    """The listening socket, the room, the connections and the writer."""

    limits: Limits
    host: str = "127.0.0.1"
    port: int = 8080
    nodelay: bool = True
    coalesce: float = DEFAULT_COALESCE_MS / 1000
    history: int = 1000
    sharing: Sharing = field(default_factory=Sharing)
    max_waiting_per_address: int = DEFAULT_MAX_WAITING_PER_ADDRESS
    max_refused_before_hello: int = DEFAULT_MAX_REFUSED_BEFORE_HELLO

    def __post_init__(self) -> None:
        self.stopping = threading.Event()
        self._connections: set[Connection] = set()
        self._unregistered = 0
        self._waiting_from: dict[str, int] = {}  # address: its connections yet to say hello
        self._connections_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._woken = False
        backplane, archive = open_sharing(self.sharing, self.history)
        self.room: Room[Connection] = Room(
            max_users=self.limits.max_users,
            history=self.history,
            wake=self._wake,
            backplane=backplane,
            archive=archive,
            resume_grace=self.limits.resume_grace,
            on_taken=self._taken,
            resume_bytes=min(RESUME_MAX_BYTES, self.limits.max_outbox // 2),
            max_backlog=self.limits.max_outbox // BACKLOG_SHARE,
        )
        self._writer_stop = False
        self._said_bye = False
        self._finished: list[Connection] = []
        self.writer = threading.Thread(target=self._write_loop, name="writer", daemon=True)
        self.listener = socket.create_server((self.host, self.port), reuse_port=False, backlog=1024)
        self.listener.settimeout(POLL_INTERVAL)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]

    # ---- accepting -----------------------------------------------------

    def serve_forever(self) -> None:
        """Accept until ``stopping`` is set, re-checking it every poll interval."""
        self.writer.start()
        announce("chat server", self.address, "nc {host} {port}  (or: make chat-tcp)")
        while not self.stopping.is_set():
            self.room.expire()
            try:
                sock, addr = self.listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                self.stopping.wait(POLL_INTERVAL)
                continue
            self._admit(sock, addr)
        self._shutdown()

    def _admit(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(self.nodelay))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
        conn = Connection(self, sock, addr)
        with self._connections_lock:
            waiting_here = self._waiting_from.get(conn.host, 0)
            crowded = self._unregistered >= MAX_UNREGISTERED
            crowded_here = waiting_here >= self.max_waiting_per_address
            if not (crowded or crowded_here):
                self._connections.add(conn)
                self._unregistered += 1
                self._waiting_from[conn.host] = waiting_here + 1
        if crowded or crowded_here:
            if crowded_here:
                why = "too many connections from your address have yet to say hello"
            else:
                why = "the server is busy, try again later"
            log.debug("%s refused: %s", conn.label, why)
            refusal = encode_line(Error.of(ServerFull(why)))
            with contextlib.suppress(OSError):
                sock.send(refusal, socket.MSG_DONTWAIT)
            sock.close()
            return
        log.debug("%s connected", conn.label)
        try:
            conn.thread.start()
        except RuntimeError:
            log.warning("%s refused: cannot start another thread", conn.label)
            self._registered_or_gone(conn)
            with self._connections_lock:
                self._connections.discard(conn)
            sock.close()

    def _registered_or_gone(self, conn: Connection) -> None:
        """``conn`` no longer waits to say hello: it frees its place among those that do."""
        with self._connections_lock:
            self._unregistered -= 1
            left = self._waiting_from.pop(conn.host) - 1
            if left:
                self._waiting_from[conn.host] = left

    def connections(self) -> list[Connection]:
        with self._connections_lock:
            return list(self._connections)

    # ---- reading (one thread per client) -------------------------------

    def serve_client(self, conn: Connection) -> None:
        """The reader thread: lines in, handed to the room; the writer answers."""
        reason = "disconnected"
        deadline = time.monotonic() + self.limits.hello_timeout
        framer = LineFramer()
        mode_known = False  # text or JSON: told by the first byte that is not blank
        waiting = True  # for a good hello
        current: float | None = -1.0  # the socket's timeout, set only when it changes
        size = IDLE_RECV_BYTES  # what the next recv asks for: see IDLE_RECV_BYTES
        try:
            while True:
                timeout = None
                if waiting:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        log.info("%s sent no hello in time, closing", conn.label)
                        break
                unfinished = conn.text_mode and framer.pending > 0
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
                    break
                if not mode_known and (start := data.lstrip()):
                    conn.text_mode = not start.startswith(b"{")
                    mode_known = True
                for line in framer.feed(data):
                    if not line:  # ignored, but no cheaper than a frame for the rate limit
                        if not conn.bucket.allow(time.monotonic()):
                            conn.refused += 1
                    else:
                        if not self.on_line(conn, line):
                            reason = "quit"
                            if conn.text_mode:
                                self._hang_up(conn)
                            return
                    if waiting and conn.stage is Stage.JOINED:
                        waiting = False
                        self._registered_or_gone(conn)
                    elif waiting and conn.refused > self.max_refused_before_hello:
                        log.info("%s refused too many frames before hello, closing", conn.label)
                        self.room.refuse(conn, NotRegistered("too many frames before hello"))
                        return
        except TooLarge as exc:
            log.info("%s sent a frame that is too large, closing", conn.label)
            self.room.refuse(conn, exc)
            if conn.text_mode:
                self.say_plain(conn, "* so the server closes this connection")
            self._drain(conn)
        except OSError as exc:
            log.debug("%s: %s", conn.label, exc)
        finally:
            if waiting:
                self._registered_or_gone(conn)
            if conn.refused > 1:
                log.info("%s: %d frames refused in all", *conn.tally())
            name = self.room.leave(conn, reason)
            if name is not None:
                log.info("%s left (%s)", name, reason)
            self._finish(conn)

    def _hang_up(self, conn: Connection) -> None:
        """A text session that quit: once ``* bye`` is out, end the connection both ways.

        ``nc`` does not stop when the server closes its side alone: it goes on reading the
        keyboard until Ctrl+D. So, its last lines written, the server closes its side (nc
        reads them and the end), and a moment later resets the connection (``SO_LINGER`` 0
        when the writer closes it), which ends nc at once. Only this client's own reader
        thread waits here.
        """
        deadline = time.monotonic() + HANG_UP_SECONDS
        while (self.room.lag(conn) or conn.unsent) and time.monotonic() < deadline:
            time.sleep(HANG_UP_SECONDS / 50)
        time.sleep(HANG_UP_SECONDS / 5)  # the writer's send of what it took ends meanwhile
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
            time.sleep(HANG_UP_SECONDS / 5)
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _drain(self, conn: Connection) -> None:
        """Read and drop what the client still sends, for a moment, before its socket closes.

        Closing a socket that has unread bytes sends a reset, and a reset can reach the
        client before it has read why it is being closed: so the rest of a line that was
        too long is read first (at most ``DRAIN_SECONDS``), and the close is a plain FIN.
        """
        deadline = time.monotonic() + DRAIN_SECONDS
        with contextlib.suppress(OSError):
            while (left := deadline - time.monotonic()) > 0:
                conn.sock.settimeout(left)
                if not conn.sock.recv(RECV_BYTES):
                    return

    def on_line(self, conn: Connection, line: bytes) -> bool:
        """Handle one line; False when the session ends (``bye``, or a full server)."""
        try:
            if not conn.bucket.allow(time.monotonic()):
                raise RateLimited("slow down: too many frames")
            if conn.text_mode:
                message = self.parse_text(conn, line)
                if message is None:
                    return True
            else:
                message = decode_client(line).message
            stage = conn.stage
            alive = self.room.handle(conn, message)
            if stage is Stage.NEW and conn.stage is Stage.JOINED:
                self._greet(conn)
            elif not alive:
                if stage is Stage.JOINED:  # the room took it out: the reader's leave will not
                    log.info("%s left (quit)", conn.name)
                if conn.text_mode:
                    self.say_plain(conn, "* bye")
            return alive
        except ProtocolError as exc:
            conn.refused += 1  # the first is logged; the rest are counted, for the last line
            level = logging.INFO if conn.refused == 1 else logging.DEBUG
            log.log(level, "%s (%s): %s %s", conn.label, conn.name or "-", exc.code, exc)
            self.room.refuse(conn, exc)
            return not isinstance(exc, ServerFull)

    def _greet(self, conn: Connection) -> None:
        log.info(
            "%s %s from %s (%s)",
            conn.name,
            "resumed" if conn.hello.resume is not None else "joined",
            conn.label,
            "text" if conn.text_mode else "json",
        )
        if conn.text_mode:
            self.say_plain(conn, "* type a message and press Enter; /help lists the commands")
            self.room.handle(conn, History(limit=TEXT_HISTORY))

    def parse_text(self, conn: Connection, line: bytes) -> ClientMessage | None:
        """A text-mode line: the name first, then messages and commands."""
        try:
            text = line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            self.say_plain(conn, "! that line is not UTF-8")
            return None
        if conn.stage is Stage.NEW:
            return Hello(name=check_name(text.strip()))
        try:
            command = parse_command(text)
        except Usage as exc:
            self.say_plain(conn, f"! {exc}")
            return None
        if isinstance(command, ShowHelp):
            self.say_plain(conn, HELP_TEXT)
            return None
        return command

    def say_plain(self, conn: Connection, text: str) -> None:
        """A line of text mode's own, in its place among what the client gets."""
        self.room.post_entry(conn, Entry(None, (text + "\n").encode("utf-8")))

    # ---- writing (the writer thread) ------------------------------------

    def _wake(self) -> None:
        """Make sure the writer runs a pass soon; one byte in its pipe, only if asleep."""
        if not self._woken:
            self._woken = True
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"!")

    def _finish(self, conn: Connection) -> None:
        """The reader is done: the writer writes what is left, then closes the socket."""
        with self._connections_lock:
            self._finished.append(conn)
        self._wake()

    def _write_loop(self) -> None:
        """Wait for the room or a full socket that drained; catch everyone up in one pass."""
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        blocked: dict[int, Connection] = {}
        last_pass = took = 0.0
        while not self._writer_stop:
            ready: list[Connection] = []
            for fd, _ in poller.poll():
                if fd == self._wake_r:
                    os.read(self._wake_r, 4096)
                    self._woken = False
                elif (conn := blocked.pop(fd, None)) is not None:
                    poller.unregister(fd)
                    ready.append(conn)
            pause = last_pass + max(self.coalesce, took) - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            last_pass = time.monotonic()
            for i, conn in enumerate(dict.fromkeys(self.room.pending() + ready)):
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    os.sched_yield()
                fd = conn.sock.fileno()
                if blocked.get(fd) is conn:  # still full: no send, only its limit
                    self._keep_or_drop(conn)
                elif self._write(conn):
                    blocked[fd] = conn
                    poller.register(fd, select.POLLOUT)
            self.room.trim()
            self.room.caught_up()
            took = time.monotonic() - last_pass
            with self._connections_lock:
                finished, self._finished = self._finished, []
            for conn in finished:
                fd = conn.sock.fileno()
                if blocked.get(fd) is conn:
                    poller.unregister(fd)
                    del blocked[fd]
                self._close(conn)
        for conn in self.connections():
            self._close(conn)

    def _write(self, conn: Connection) -> bool:
        """One non-blocking ``send`` of all ``conn`` is behind on; True if its socket is full.

        What its socket refused last time goes first; only once that is all
        sent does the room hand over more.
        """
        if conn.finished:
            return False
        if conn.unsent and not self._send(conn, conn.unsent):
            return self._keep_or_drop(conn)
        said_bye = self._said_bye  # read before taking: then what is taken holds the bye
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
        if self.room.lag(conn) + len(conn.unsent) <= self.limits.max_outbox:
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
            conn.unsent = b""
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
            return True
        conn.unsent = data[sent:]
        return not conn.unsent

    def _close(self, conn: Connection) -> None:
        """Write the last of what ``conn`` has (once, never waiting), then close it."""
        if conn.finished:
            return
        self._write(conn)
        conn.finished = True
        conn.sock.close()
        with self._connections_lock:
            self._connections.discard(conn)

    def _taken(self, conn: Connection) -> None:
        """A resuming client took ``conn``'s session over: its connection ends without a word
        (even half open: shutting it down here wakes its reader at once, no keepalive)."""
        log.info("%s resumed on a new connection; closing %s", conn.name, conn.label)
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)

    def drop(self, conn: Connection, reason: str) -> None:
        """Take ``conn`` out of the room and end its connection; its reader then finishes."""
        conn.unsent = b""
        name = self.room.leave(conn, reason)
        if name is not None:
            log.info("%s left (%s)", name, reason)
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)

    # ---- stopping ------------------------------------------------------

    def stop(self) -> None:
        self.stopping.set()

    def _shutdown(self) -> None:
        self.listener.close()
        self.room.close()
        conns = self.connections()
        log.info("shutting down: saying bye to %d connection(s)", len(conns))
        for conn in conns:
            self.room.post(conn, Bye(reason="shutdown"))
        self._said_bye = True  # the writer shuts our side of each once its bye is written
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for conn in conns:
            conn.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for conn in conns:
            conn.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._writer_stop = True
        self._wake()
        self.writer.join(timeout=SHUTDOWN_GRACE)
        os.close(self._wake_r)
        os.close(self._wake_w)
        log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tcp.server",
        description="The TCP chat server: one thread per client. JSON clients and plain "
        "text clients (nc, telnet) share one room.",
        epilog="Try it: python -m tcp.server, then in two other terminals: nc 127.0.0.1 8080",
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--max-outbox",
        type=int,
        default=1048576,
        metavar="BYTES",
        help="bytes waiting to be written to one client before it is dropped as too slow "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--coalesce-ms",
        type=non_negative_float,
        default=DEFAULT_COALESCE_MS,
        metavar="MS",
        help="the writer makes at most one pass per this many milliseconds, so that under "
        "load each send carries more frames; 0 writes at once (default: %(default)s)",
    )
    parser.add_argument(
        "--max-waiting-per-address",
        type=positive_int,
        default=DEFAULT_MAX_WAITING_PER_ADDRESS,
        metavar="N",
        help="connections from one address that have yet to say hello, at most; past it a "
        f"new one gets server_full (default: %(default)s; {MAX_UNREGISTERED} from all addresses)",
    )
    parser.add_argument(
        "--max-refused-before-hello",
        type=positive_int,
        default=DEFAULT_MAX_REFUSED_BEFORE_HELLO,
        metavar="N",
        help="frames refused from a connection that has not said hello yet before it is "
        "closed (default: %(default)s)",
    )
    parser.add_argument(
        "--nagle",
        action="store_true",
        help="leave Nagle's algorithm on (TCP_NODELAY off), to measure what it costs",
    )
    args = parser.parse_args(argv)
    configure_logging(args.quiet, args.verbose)
    raise_open_file_limit()
    threading.stack_size(THREAD_STACK_BYTES)
    return serve_until_signalled(
        lambda: ChatServer(
            Limits.from_args(args, max_outbox=args.max_outbox),
            host=args.host,
            port=args.port,
            nodelay=not args.nagle,
            coalesce=args.coalesce_ms / 1000,
            history=args.history,
            sharing=Sharing.from_args(args),
            max_waiting_per_address=args.max_waiting_per_address,
            max_refused_before_hello=args.max_refused_before_hello,
        ),
        args,
    )


if __name__ == "__main__":
    sys.exit(main())
