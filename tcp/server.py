"""The TCP chat server: one thread per client connection.

Threads, each named and owned by the server:

* ``MainThread``: accepts connections and starts one reader thread each;
  signals only set a flag, and this thread then runs the shutdown.
* ``client-HOST:PORT``: reads its client's lines, decodes them with the
  shared codec and acts on them. A broadcast is encoded once and queued to
  every recipient's outbox; no socket is written here.
* ``flusher``: writes every outbox that has something new, one ``send``
  each, without blocking. While it writes to one client, frames for the
  others pile up, so under load one ``send`` carries many frames: the
  busier the chat, the cheaper each delivery. One hand-off per message,
  none per delivery.
* ``writer-HOST:PORT``: exists only while its client reads slower than the
  chat talks; it blocks on that one socket, so nobody else ever waits.

Locks: the registry's lock orders broadcasts (see ``common.registry``), so
every client gets the messages in one order. Each connection's ``_lock``
guards its outbox and may be taken inside the registry's, never the other
way round. Bytes are queued under the locks and written outside them.

Past ``--max-outbox`` queued bytes a client is dropped as ``too_slow``.

Shutdown rule: a signal sets ``stopping``; the accept loop sees it within
one poll interval, stops accepting, sends every client ``bye``, waits a
short grace period for them to close, then shuts the remaining sockets and
joins every thread it started.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import queue
import resource
import socket
import sys
import threading
import time
from dataclasses import dataclass

from common.codec import (
    Ack,
    AlreadyRegistered,
    Bye,
    ClientMessage,
    Error,
    Hello,
    Joined,
    Left,
    LineFramer,
    Nick,
    NotRegistered,
    ProtocolError,
    RateLimited,
    ServerFull,
    ServerMessage,
    TooLarge,
    Welcome,
    check_name,
    decode_client,
    encode_checked,
    encode_line,
)
from common.commands import HELP_TEXT, ShowHelp, Usage, parse_command
from common.ratelimit import TokenBucket
from common.registry import Registry
from common.render import describe
from common.room import act
from common.serverargs import (
    Limits,
    add_common_arguments,
    configure_logging,
    now_ms,
    serve_until_signalled,
)

log = logging.getLogger("tcp.server")

POLL_INTERVAL = 0.2
SHUTDOWN_GRACE = 1.0
THREAD_STACK_BYTES = 256 * 1024
RECV_BYTES = 65536
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES = 60, 10, 3
UNREGISTERED_HEADROOM = 64


class Outgoing:
    """One server message, encoded at most once per format however many receive it."""

    def __init__(self, message: ServerMessage) -> None:
        self.message = message
        self._json: bytes | None = None
        self._text: bytes | None = None

    @classmethod
    def checked(cls, message: ServerMessage) -> Outgoing:
        """A message built from a client's text, refused before anyone gets it if too big."""
        outgoing = cls(message)
        outgoing._json = encode_checked(message) + b"\n"
        return outgoing

    def for_session(self, text_mode: bool, me: str = "") -> bytes:
        if not text_mode:
            if self._json is None:
                self._json = encode_line(self.message)
            return self._json
        if self._text is None or me:
            self._text = b""
            if isinstance(self.message, Bye):
                self._text = b"* the server is shutting down\n"
            elif (line := describe(self.message, me)) is not None:
                self._text = (line.plain() + "\n").encode("utf-8")
        return self._text


class Connection:
    """One client: its socket, its reader thread and its outbox."""

    def __init__(self, server: ChatServer, sock: socket.socket, addr: tuple[str, int]) -> None:
        self.server = server
        self.sock = sock
        self.label = f"{addr[0]}:{addr[1]}"
        self.text_mode = False
        self.name: str | None = None  # kept by this client's reader; others ask the registry
        self.bucket = TokenBucket(server.limits.rate_limit, server.limits.burst, time.monotonic())
        self.thread = threading.Thread(target=self.serve, name=f"client-{self.label}", daemon=True)
        self._lock = threading.Lock()
        self._max_outbox = server.limits.max_outbox
        self._out = bytearray()
        self._flushing = False
        self._idle = threading.Condition(self._lock)
        self._closing = False
        self._too_slow = False
        self._writer: threading.Thread | None = None
        self._after_flush_shutdown = False

    # ---- writing -------------------------------------------------------

    def queue(self, data: bytes) -> None:
        """Append ``data`` to the outbox and, if it was idle, hand it to the flusher.

        Safe under the registry lock: no I/O, and ``SimpleQueue.put`` never blocks.
        """
        with self._lock:
            if self._closing:
                return
            if len(self._out) + len(data) > self._max_outbox:
                self._closing = self._too_slow = True
            else:
                self._out += data
                if self._flushing:
                    return
                self._flushing = True
        self.server.dirty.put(self)

    def attend(self) -> None:
        """The flusher's turn with this client: drop it if it overflowed, else write."""
        if self._too_slow:
            self.server.drop(self, "too_slow")
        else:
            self._flush()

    def send(self, outgoing: Outgoing) -> None:
        """Queue one message for this client alone."""
        self.queue(outgoing.for_session(self.text_mode, self.name or ""))

    def _take(self) -> bytearray | None:
        """The bytes to write next, or None: the outbox is empty and writing ends."""
        with self._lock:
            if not self._closing and self._out:
                data, self._out = self._out, bytearray()
                return data
            self._flushing = False
            self._idle.notify_all()
            finished = self._after_flush_shutdown and not self._closing
        if finished:
            self.shut(socket.SHUT_WR)
        return None

    def _flush(self) -> None:
        """Write the outbox without blocking; hand a backlog to a writer thread."""
        while (data := self._take()) is not None:
            try:
                sent = self.sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.shut(socket.SHUT_RDWR)
                sent = len(data)
            if sent < len(data):
                writer = threading.Thread(
                    target=self._write_backlog, name=f"writer-{self.label}", daemon=True
                )
                with self._lock:
                    del data[:sent]
                    data += self._out
                    self._out = data
                    self._writer = writer
                writer.start()
                return

    def _write_backlog(self) -> None:
        """Block on a client that reads slowly, so that nobody else has to."""
        try:
            while (data := self._take()) is not None:
                self.sock.sendall(data)
        except OSError:
            self.shut(socket.SHUT_RDWR)
            self._take()

    def wait_written(self, timeout: float) -> None:
        """Wait (bounded) until everything queued so far has been handed to the kernel."""
        with self._lock:
            self._idle.wait_for(lambda: not self._flushing, timeout)

    def goodbye(self) -> None:
        """Send ``bye`` (shutdown), then end our side of the stream once it is written."""
        with self._lock:
            self._after_flush_shutdown = True
        self.queue(Outgoing(Bye(reason="shutdown")).for_session(self.text_mode))

    def shut(self, how: int) -> None:
        with self._lock:
            if how == socket.SHUT_RDWR:
                self._closing = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(how)

    # ---- reading -------------------------------------------------------

    def serve(self) -> None:
        """The reader thread: lines in, answers and broadcasts out."""
        reason = "disconnected"
        deadline = time.monotonic() + self.server.limits.hello_timeout
        framer = LineFramer()
        first_line = True
        try:
            while True:
                if self.name is None:
                    self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                elif self.sock.gettimeout() is not None:
                    self.sock.settimeout(None)
                try:
                    data = self.sock.recv(RECV_BYTES)
                except TimeoutError:
                    log.info("%s sent no hello in time, closing", self.label)
                    break
                if not data:
                    break
                for line in framer.feed(data):
                    if first_line:
                        self.text_mode = not line.lstrip().startswith(b"{")
                        first_line = False
                    if not self.on_line(line):
                        reason = "quit"
                        return
        except TooLarge as exc:
            log.info("%s sent a frame that is too large, closing", self.label)
            self.send(Outgoing(Error.of(exc)))
        except OSError as exc:
            log.debug("%s: %s", self.label, exc)
        finally:
            self.server.drop(self, reason)
            self.wait_written(SHUTDOWN_GRACE)
            self.shut(socket.SHUT_RDWR)
            writer = self._writer
            if writer is not None:
                writer.join(timeout=SHUTDOWN_GRACE)
            self.sock.close()
            self.server.forget(self)

    def on_line(self, line: bytes) -> bool:
        """Handle one line; False when the session ends (``bye``, or a full server)."""
        name = self.name
        try:
            if not self.bucket.allow(time.monotonic()):
                raise RateLimited("slow down: too many frames")
            if self.text_mode:
                message = self.parse_text(line, registered=name is not None)
                if message is None:
                    return True
            else:
                message = decode_client(line).message
            return self.server.handle(self, name, message)
        except ProtocolError as exc:
            log.info("%s (%s): %s %s", self.label, name or "-", exc.code, exc)
            self.send(Outgoing(Error.of(exc)))
            return not isinstance(exc, ServerFull)

    def parse_text(self, line: bytes, registered: bool) -> ClientMessage | None:
        """A text-mode line: the name first, then messages and commands."""
        try:
            text = line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            self.say_plain("! that line is not UTF-8")
            return None
        if not registered:
            return Hello(name=check_name(text.strip()))
        try:
            command = parse_command(text)
        except Usage as exc:
            self.say_plain(f"! {exc}")
            return None
        if isinstance(command, ShowHelp):
            self.say_plain(HELP_TEXT)
            return None
        return command

    def say_plain(self, text: str) -> None:
        self.queue((text + "\n").encode("utf-8"))


@dataclass
class ChatServer:
    """The listening socket, the registry and the live connections."""

    limits: Limits
    host: str = "127.0.0.1"
    port: int = 8080
    nodelay: bool = True

    def __post_init__(self) -> None:
        self.registry: Registry[Connection] = Registry(self.limits.max_users)
        self.stopping = threading.Event()
        self._connections: set[Connection] = set()
        self._connections_lock = threading.Lock()
        self.dirty: queue.SimpleQueue[Connection | None] = queue.SimpleQueue()
        self.flusher = threading.Thread(target=self._flush_loop, name="flusher", daemon=True)
        self.listener = socket.create_server((self.host, self.port), reuse_port=False, backlog=1024)
        self.listener.settimeout(POLL_INTERVAL)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]

    # ---- accepting -----------------------------------------------------

    def serve_forever(self) -> None:
        """Accept until ``stopping`` is set, re-checking it every poll interval."""
        self.flusher.start()
        log.warning("chat server listening on %s:%d", *self.address)
        while not self.stopping.is_set():
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
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
        conn = Connection(self, sock, addr)
        with self._connections_lock:
            crowded = len(self._connections) >= self.limits.max_users + UNREGISTERED_HEADROOM
            if not crowded:
                self._connections.add(conn)
        if crowded:
            log.info("%s refused: too many connections", conn.label)
            refusal = encode_line(Error.of(ServerFull("the server is full")))
            with contextlib.suppress(OSError):
                sock.send(refusal, socket.MSG_DONTWAIT)
            sock.close()
            return
        log.debug("%s connected", conn.label)
        try:
            conn.thread.start()
        except RuntimeError:
            log.warning("%s refused: cannot start another thread", conn.label)
            self.forget(conn)
            sock.close()

    def forget(self, conn: Connection) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def connections(self) -> list[Connection]:
        with self._connections_lock:
            return list(self._connections)

    # ---- the chat ------------------------------------------------------

    def broadcast(self, message: ServerMessage, exclude: Connection | None = None) -> None:
        """Queue ``message`` to every user, in one total order; the flusher writes it."""
        outgoing = Outgoing.checked(message)
        as_json = outgoing.for_session(text_mode=False)

        def deliver(conn: Connection) -> None:
            conn.queue(outgoing.for_session(True) if conn.text_mode else as_json)

        self.registry.fan_out(deliver, exclude=exclude)

    def send_to(self, member: Connection, message: ServerMessage) -> None:
        member.send(Outgoing(message))

    def handle(self, conn: Connection, name: str | None, message: ClientMessage) -> bool:
        """Act on one decoded message; False when the client leaves."""
        if isinstance(message, Bye):
            return False
        if name is None:
            if not isinstance(message, Hello):
                raise NotRegistered('say hello first: {"type":"hello","name":"..."}')
            self.register(conn, message.name)
        elif isinstance(message, Hello):
            raise AlreadyRegistered(f"you are already registered as {name}")
        elif not isinstance(message, Ack):
            act(self, conn, name, message)
            if isinstance(message, Nick):
                conn.name = message.name
        return True

    def register(self, conn: Connection, name: str) -> None:
        def greet(names: list[str]) -> None:
            welcome = Outgoing(Welcome(name=name, users=tuple(names), count=len(names)))
            conn.queue(welcome.for_session(conn.text_mode, name))

        self.registry.join(name, conn, greet)
        conn.name = name
        if conn.text_mode:
            conn.say_plain("* type a message and press Enter; /help lists the commands")
        log.info("%s joined from %s (%s)", name, conn.label, "text" if conn.text_mode else "json")
        self.broadcast(Joined(name=name, ts=now_ms()), exclude=conn)

    def drop(self, conn: Connection, reason: str) -> None:
        """Take ``conn`` out of the chat (once) and tell the others why."""
        name = self.registry.leave(conn)
        if reason == "too_slow":
            conn.shut(socket.SHUT_RDWR)  # after leaving: the woken reader must find it gone
        if name is None:
            return
        log.info("%s left (%s)", name, reason)
        if not self.stopping.is_set():  # at shutdown everyone has had bye: no left storm
            self.broadcast(Left(name=name, reason=reason, ts=now_ms()))

    # ---- stopping ------------------------------------------------------

    def stop(self) -> None:
        self.stopping.set()

    def _shutdown(self) -> None:
        self.listener.close()
        conns = self.connections()
        log.warning("shutting down: saying bye to %d connection(s)", len(conns))
        for conn in conns:
            conn.goodbye()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for conn in conns:
            conn.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for conn in conns:
            conn.shut(socket.SHUT_RDWR)
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for conn in conns:
            conn.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.dirty.put(None)
        self.flusher.join(timeout=SHUTDOWN_GRACE)
        log.warning("stopped")

    def _flush_loop(self) -> None:
        """The flusher thread: write each outbox that has something new, in turn.

        While it writes to one client, frames for the others pile up in their
        outboxes, so the busier the chat, the more frames each ``send`` carries.
        """
        while (conn := self.dirty.get()) is not None:
            try:
                conn.attend()
            except Exception:
                log.exception("writing to %s failed", conn.label)


def raise_open_file_limit() -> None:
    """Thousands of clients need thousands of descriptors: take all we may."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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
        ),
        args,
    )


if __name__ == "__main__":
    sys.exit(main())
