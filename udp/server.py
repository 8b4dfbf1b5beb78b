"""The UDP chat server's transport: one socket; it receives datagrams and sends them.

What a datagram does is ``udp.inbox``'s; the sessions and every write to
them are ``udp.registry``'s; each session's own state is ``udp.session``'s;
the chat's rules, admission and shutdown's ``bye`` are the core's
(``common.server``).

Threads, each named and owned by the server:

* ``main``: receives every datagram and hands it to the inbox; catches
  SIGINT/SIGTERM (they only set ``stopping``) and runs the shutdown.
* ``udp-timer``: retransmits reliable frames whose timeout expired, sends the
  acks, retransmissions and probes packet sessions owe when due, ends
  sessions silent past ``--session-timeout`` (``left`` reason ``timeout``) and
  forgets addresses that did not complete a ``hello`` within
  ``--hello-timeout``.

Liveness is judged by when datagrams arrived, not when ``main`` got to them:
``_caught_up`` is the last moment ``main`` found the socket empty, so every
datagram that arrived before it has been read. A backlog in the socket (a
flood being worked through) times nobody out. After every ``FLUSH_EVERY``
datagrams, when the socket is found empty, and at each turn of the timer,
every session is caught up on what the room has for it (``Registry.flush``).
Packet sessions are caught up at most once per ``--coalesce-ms`` (``main``
polls no longer than till then), so under load each packet carries what a
few milliseconds gathered; a reliable one far behind on the room
(``PacketLink.behind``) may not talk till it catches up.

* ``udp-hello-N``: act on hellos, each outside the server's lock: on a
  shared room a claim waits for Redis, and nobody else waits with it. Its
  session is filed at once (so the welcome finds it) and holds a stranger's
  place till then (``Admission``); a hello that comes again meanwhile is
  dropped: the answer is on its way.

Lock: one server lock (``_lock``) serialises every change to the sessions,
their sequence numbers and the writes to the socket, so each session's
datagrams leave in seq order. It is taken outside the room's lock, never
inside (docs/ARCHITECTURE.md).

Shutdown: every session gets ``bye``; the server waits up to a second for
reliable sessions to ack it, then stops the timer and closes the socket.
"""

from __future__ import annotations

import argparse
import logging
import select
import socket
import sys
import threading
import time

from common.cli.serverargs import non_negative_float, positive_float, positive_int
from common.protocol.codec import Hello, ProtocolError
from common.protocol.limits import Limits
from common.protocol.reliable import FLIGHT_BUDGET
from common.room.sharing import Sharing
from common.server import main as server_main
from common.server.core import POLL_INTERVAL, RECV_BYTES, SHUTDOWN_GRACE, Admission, Core
from udp.inbox import Inbox
from udp.registry import MAX_HELD_BYTES, PACKET_COALESCE_MS, Registry
from udp.session import Address, Session
from udp.sockets import enlarge_buffers

log = logging.getLogger("udp.server")

RECV_BATCH = 256
FLUSH_EVERY = 32
"""Datagrams read between two catch-ups of the sessions: what they gave the room waits in
memory meanwhile, and a packet session gets it packed into as few packets as fit."""
HELLO_THREADS = 4
"""Hellos acted on at once: on a shared room each waits for Redis (its claim, then its
``joined`` back through the stream), so a few at a time keep a burst of joins moving."""
TIMER_RESOLUTION = 0.01
BUSY_TICK = 0.05
MAX_SWEEP_INTERVAL = 0.5


class UdpChatServer(server_main.Server):
    """The socket, the lock, the timer thread; the inbox and the registry do the rest."""

    what = "UDP chat server"
    join_with = "make chat-udp PORT={port} NAME=alice"

    def __init__(
        self,
        limits: Limits,
        host: str = "127.0.0.1",
        port: int = 8080,
        history: int = 1000,
        sharing: Sharing | None = None,
        max_held_bytes: int = MAX_HELD_BYTES,
        coalesce: float = PACKET_COALESCE_MS / 1000,
        max_in_flight: int = FLIGHT_BUDGET,
    ) -> None:
        super().__init__()
        self.limits = limits
        self._wake = threading.Event()
        wake = self._wake.set
        # What a backplane brings arrives on its own thread: the timer flushes it.
        self.core: Core[Session] = Core(
            limits, history, sharing or Sharing(), log, wake_remote=wake, on_taken=self._taken
        )
        self.room = self.core.room
        self.sock = _bind(host, port)
        self._poller = select.poll()
        self._poller.register(self.sock, select.POLLIN)
        self.address: Address = self.sock.getsockname()[:2]
        self._lock = threading.Lock()
        self.registry = Registry(
            self.core, self.sock, wake, max_held_bytes, coalesce, max_in_flight
        )
        self._caught_up = time.monotonic()
        self.inbox = Inbox(self.core, self.registry, Admission(self._caught_up))
        self._timer_stop = threading.Event()
        self._timer = threading.Thread(target=self._run_timer, name="udp-timer", daemon=True)
        self._hello_threads = [
            threading.Thread(target=self._run_hellos, name=f"udp-hello-{n}", daemon=True)
            for n in range(1, HELLO_THREADS + 1)
        ]
        self._sweep_interval = min(
            MAX_SWEEP_INTERVAL, limits.session_timeout / 5, limits.hello_timeout / 5
        )

    def _taken(self, session: Session) -> None:
        """A resume took ``session`` over (see ``Registry.taken``)."""
        self.registry.taken(session)

    # ---- receiving -----------------------------------------------------

    def _start(self) -> None:
        self._timer.start()
        for thread in self._hello_threads:
            thread.start()

    def _turn(self) -> None:
        self._receive()

    def _receive(self) -> None:
        """Wait up to a poll interval, then handle the datagrams waiting, a batch at most.

        Under a flood the socket is never empty: the bound is what lets ``main``
        see ``stopping`` in time. Finding it empty moves ``_caught_up``. What a
        datagram gives the room is written before the next is read, so what
        waits in memory is one datagram's worth (one ``history`` answer).
        """
        before = time.monotonic()
        with self._lock:
            wait = POLL_INTERVAL
            if self.registry.waiting:  # their catch-up is due then
                wait = min(wait, max(0.0, self.registry.packets_due - before))
        if not self._poller.poll(wait * 1000):
            with self._lock:
                self._caught_up = before
                if self.registry.waiting:
                    self.registry.flush(time.monotonic())
            return
        try:
            for count in range(1, RECV_BATCH + 1):
                now = time.monotonic()
                try:
                    data, address = self.sock.recvfrom(RECV_BYTES)
                except BlockingIOError:
                    self._caught_up_at(now)
                    return
                except OSError as exc:
                    log.debug("receive failed: %s", exc)
                    return
                self._on_datagram(data, address, now, flush=count % FLUSH_EVERY == 0)
        finally:
            with self._lock:
                try:
                    self.registry.flush(time.monotonic())
                except Exception:
                    log.exception("failed to catch the sessions up")

    def _on_datagram(self, data: bytes, address: Address, now: float, *, flush: bool) -> None:
        with self._lock:
            try:
                self.inbox.on_datagram(data, address, now)
                if flush:
                    self.registry.flush(time.monotonic())
            except Exception:
                # One socket serves everyone: a fault in one datagram must not end the chat.
                log.exception("failed on a datagram from %s:%d", *address)

    def _caught_up_at(self, now: float) -> None:
        """The socket was empty at ``now``: every datagram that arrived before it has been read."""
        with self._lock:
            self._caught_up = now

    def _run_hellos(self) -> None:
        """Act on hellos, each outside the server's lock: the room may wait for its backplane."""
        while (item := self.inbox.hellos.get()) is not None:
            self._act_on_hello(*item)

    def _act_on_hello(self, session: Session, hello: Hello, budget: int) -> None:
        problem: ProtocolError | None = None
        try:
            self.room.handle(session, hello)
        except ProtocolError as exc:
            problem = exc
        except Exception:
            log.exception("failed on a hello from %s", session.label)
        with self._lock:
            self.inbox.hello_acted_on(session, hello, budget, problem)
        self._wake.set()  # the timer sends the welcome

    # ---- the timer -----------------------------------------------------

    def _run_timer(self) -> None:
        """Retransmit when due; sweep out silent sessions and stale strangers."""
        next_sweep = time.monotonic() + self._sweep_interval
        while not self._timer_stop.is_set():
            self._wake.clear()
            now = time.monotonic()
            with self._lock:
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + self._sweep_interval
                deadline = self.registry.retransmit(now)
                self.registry.flush(now)
            wake_at = next_sweep
            if deadline is not None:
                # Sessions that became busy meanwhile do not wake the timer: the tick does.
                wake_at = min(wake_at, deadline, now + BUSY_TICK)
            self._wake.wait(max(TIMER_RESOLUTION, wake_at - time.monotonic()))

    def _sweep(self, now: float) -> None:
        """End the sessions silent past the timeout, judged as of ``_caught_up``.

        The room forgets here what everyone has read (every session is
        caught up on the log at each flush, so all of it but the last sweep's).
        """
        self.room.trim()
        if self.registry.closing:
            return
        self.room.expire()
        self.registry.sweep(now, self._caught_up)

    # ---- stopping ------------------------------------------------------

    def _shutdown(self) -> None:
        now = time.monotonic()
        with self._lock:
            self.registry.closing = True
            sessions = list(self.registry.by_address.values())
            self.core.say_bye(sessions, "session")
            self.registry.flush(now, at_once=True)
        deadline = now + SHUTDOWN_GRACE
        while time.monotonic() < deadline and self._awaiting_acks():
            self._receive()
        self._timer_stop.set()
        self._wake.set()
        self._timer.join()
        for _ in self._hello_threads:
            self.inbox.hellos.put(None)
        for thread in self._hello_threads:
            thread.join(SHUTDOWN_GRACE)
        with self._lock:
            for session in sessions:
                self.registry.end(session, "shutdown")
        if dropped := self.registry.dropped:
            counts = ", ".join(f"{why} {n}" for why, n in sorted(dropped.items()))
            log.warning("datagrams dropped: %s", counts)
        self.sock.close()
        log.info("stopped")

    def _awaiting_acks(self) -> bool:
        with self._lock:
            return self.registry.awaiting_acks()


def _bind(host: str, port: int) -> socket.socket:
    """The server's one socket: bound, its buffers enlarged, non-blocking."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        enlarge_buffers(sock)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The UDP server's own flags."""
    parser.add_argument(
        "--session-timeout",
        type=positive_float,
        default=15.0,
        metavar="SECONDS",
        help="silence after which a session ends with reason timeout (default: %(default)s)",
    )
    parser.add_argument(
        "--max-held-bytes",
        type=positive_int,
        default=MAX_HELD_BYTES,
        metavar="BYTES",
        help="what reliable sessions hold in all (sent and not acked, or received ahead of a "
        "gap); past it the one holding most ends as too_slow (default: %(default)s)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=positive_int,
        default=FLIGHT_BUDGET,
        metavar="FRAMES",
        help="frames on their first try that 1.0 reliable sessions may have out in all, "
        "so that their acks are read within the 200 ms after which a frame goes again; "
        "more lets them deliver more per round trip on a long path (default: %(default)s)",
    )
    parser.add_argument(
        "--coalesce-ms",
        type=non_negative_float,
        default=PACKET_COALESCE_MS,
        metavar="MS",
        help="packet sessions are caught up at most once per this many milliseconds, so that "
        "under load each packet carries more frames; 0 sends at once (default: %(default)s)",
    )


def make(args: argparse.Namespace) -> UdpChatServer:
    return UdpChatServer(
        Limits.from_args(args, session_timeout=args.session_timeout),
        host=args.host,
        port=args.port,
        history=args.history,
        sharing=Sharing.from_args(args),
        max_held_bytes=args.max_held_bytes,
        coalesce=args.coalesce_ms / 1000,
        max_in_flight=args.max_in_flight,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m udp.server",
        description="The UDP chat server: one socket, sessions keyed by the client's "
        "address, optional reliable delivery per session.",
        epilog="Try it: python -m udp.server, then in two other terminals: "
        "python -m udp.client --name alice (and --name bob)",
    )
    return server_main.main(argv, parser, add_flags, make)


if __name__ == "__main__":
    sys.exit(main())
