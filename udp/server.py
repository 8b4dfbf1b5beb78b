"""The UDP chat server: one socket, sessions keyed by the client's address.

Threads, each named and owned by the server:

* ``main``: receives every datagram, decodes it with the shared codec and
  answers; broadcasts go out from here too. It also catches SIGINT/SIGTERM
  and runs the shutdown.
* ``udp-timer``: retransmits reliable frames whose timeout expired, sends
  the acks, retransmissions and probes packet sessions owe when due, ends
  sessions silent past ``--session-timeout`` (``left`` reason ``timeout``)
  and forgets addresses that did not complete a ``hello`` within
  ``--hello-timeout``.

Liveness is judged by when datagrams arrived, not when ``main`` got to them:
``_caught_up`` is the last moment ``main`` found the socket empty, so every
datagram that arrived before it has been read, and a session is silent when
its last one was read more than ``--session-timeout`` before that. A backlog
in the socket (a flood being worked through) times nobody out.

The chat's rules and its one ordered log are the room's (``common.room.room``),
shared with the TCP server. After every ``FLUSH_EVERY`` datagrams, when the
socket is found empty, and at each turn of the timer, the server catches
every session up on what the room has for it (``_flush``): a 1.0 session
gets one datagram per frame, stamped with its next ``seq``; a packet
session (v1.2) gets its frames queued on its ``PacketLink``
(``common.protocol.packetlink``), which packs them into as few packets as
fit, one ``sendto`` each, as its congestion window allows, and nothing at
all until the session's address is proven. Packet sessions are caught up at
most once per ``--coalesce-ms`` (``main`` polls no longer than till then), so
under load each packet carries what a few milliseconds gathered; a reliable
one far behind on the room (``PacketLink.behind``) may not talk till it
catches up. A packet from a packet session
is parsed once (``common.protocol.packets``), its token checked once, then
its frames are read one by one, each bad one answered on its own.

Lock: one server lock serialises every change to the sessions, their
sequence numbers and the writes to the socket, so each session's datagrams
leave in seq order. It is taken outside the room's lock, never inside.
A ``hello`` is acted on by one of the ``udp-hello`` threads, outside that
lock: on a shared room its claim waits for Redis, and nobody else waits with
it. Its session is filed at once (so the welcome finds it), and a hello that
comes again meanwhile is dropped: the answer is on its way.
Writes never block (the socket is non-blocking): a full kernel buffer
loses the datagram, as a network would. ``main`` waits in ``poll`` and then
drains every datagram that is ready.

Who gets an answer, sequence numbers and reliable sessions: see
``udp.session``, which keeps each session's side of them.

Shutdown: ``stop()`` may be called from any thread (a signal handler sets
the event; ``main`` acts on it). Every session gets ``bye``; the server
waits up to a second for reliable sessions to ack it, then stops the timer
and closes the socket.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import math
import queue
import select
import socket
import sys
import threading
import time
from collections import Counter, deque

from common.cli.serverargs import (
    Limits,
    add_common_arguments,
    announce,
    configure_logging,
    non_negative_float,
    positive_float,
    positive_int,
    serve_until_signalled,
)
from common.protocol.codec import (
    Ack,
    AckRanges,
    AlreadyRegistered,
    BadFrame,
    Bye,
    ClientMessage,
    Error,
    Hello,
    ProtocolError,
    RateLimited,
    Say,
    SendDm,
    ServerFull,
    TooLarge,
    Welcome,
    decode_client,
    encode,
    name_key,
)
from common.protocol.packets import BadPacket, Packet, parse
from common.protocol.reliable import (
    SeqKind,
    SharedFrames,
)
from common.room.ratelimit import TokenBucket
from common.room.room import Entry, Room, Stage
from common.room.sharing import Sharing, open_sharing
from udp.session import Address, Session, Stranger, answer_budget, envelope_of, stamp
from udp.sockets import enlarge_buffers

log = logging.getLogger("udp.server")

POLL_INTERVAL = 0.2
SHUTDOWN_GRACE = 1.0
RECV_BYTES = 65536
RECV_BATCH = 256
FLUSH_EVERY = 32
"""Datagrams read between two catch-ups of the sessions: what they gave the room waits in
memory meanwhile, and a packet session gets it packed into as few packets as fit."""
MAX_STRANGERS = 4096
ADMISSION_RATE = 10_000.0
"""Datagrams a second that new sessions may cost the server. A join costs its
``welcome`` and a ``joined`` to every member, so this bounds joins x members:
at 100 members, about 100 joins a second; at 5,000, two (200 users joining
at once all get in within about a second). A datagram costs 10 to 20 µs of
``sendto`` on a small machine, so joins take at most a fifth of a core
however many hellos arrive."""
ADMISSION_BURST = 10_000
MAX_HELD_BYTES = 32 << 20
"""Bytes all reliable sessions may hold together (``--max-held-bytes``): frames
sent and not acked yet, each counted once however many hold it, and frames
received ahead of a gap; past it the one holding most is ended."""
HELLO_THREADS = 4
"""Hellos acted on at once: on a shared room each waits for Redis (its claim, then its
``joined`` back through the stream), so a few at a time keep a burst of joins moving."""
TIMER_RESOLUTION = 0.01
PACKET_COALESCE_MS = 7.0
"""The least time between two catch-ups of the packet sessions (``--coalesce-ms``): what the
room says meanwhile gathers, so each packet carries several frames, as TCP's writer gathers
them per ``send``. A catch-up after a quiet spell is not delayed."""
BUSY_TICK = 0.05
MAX_SWEEP_INTERVAL = 0.5


class UdpChatServer:
    """The socket, the registry, the sessions and the timer thread."""

    def __init__(
        self,
        limits: Limits,
        host: str = "127.0.0.1",
        port: int = 8080,
        history: int = 1000,
        sharing: Sharing | None = None,
        max_held_bytes: int = MAX_HELD_BYTES,
        coalesce: float = PACKET_COALESCE_MS / 1000,
    ) -> None:
        self.limits = limits
        self.max_held_bytes = max_held_bytes
        self.coalesce = coalesce
        self._wake = threading.Event()
        backplane, archive = open_sharing(sharing or Sharing(), history)
        # What a backplane brings arrives on its own thread: the timer flushes it.
        self.room: Room[Session] = Room(
            max_users=limits.max_users,
            history=history,
            backplane=backplane,
            archive=archive,
            wake_remote=self._wake.set,
            resume_grace=limits.resume_grace,
            on_taken=self._taken,
        )
        self.stopping = threading.Event()
        self.closing = False
        self.dropped: Counter[str] = Counter()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            enlarge_buffers(self.sock)
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self._poller = select.poll()
        self._poller.register(self.sock, select.POLLIN)
        self.address: Address = self.sock.getsockname()[:2]
        self._lock = threading.Lock()
        self._sessions: dict[Address, Session] = {}
        self._by_token: dict[str, Session] = {}
        self._strangers: dict[Address, Stranger] = {}
        self._busy: set[Session] = set()
        # Packet sessions the room has news for, waiting for their next catch-up (``_flush``).
        self._deferred: dict[Session, None] = {}
        self._packets_due = -math.inf
        self._taken_sessions: deque[Session] = deque()  # taken over by a resume: to forget
        self._held = SharedFrames(stamp)
        self._caught_up = time.monotonic()
        self._admission = TokenBucket(ADMISSION_RATE, ADMISSION_BURST, self._caught_up)
        self._timer_stop = threading.Event()
        self._timer = threading.Thread(target=self._run_timer, name="udp-timer", daemon=True)
        self._hellos: queue.SimpleQueue[tuple[Session, Hello, int] | None] = queue.SimpleQueue()
        self._hello_threads = [
            threading.Thread(target=self._run_hellos, name=f"udp-hello-{n}", daemon=True)
            for n in range(1, HELLO_THREADS + 1)
        ]
        self._sweep_interval = min(
            MAX_SWEEP_INTERVAL, limits.session_timeout / 5, limits.hello_timeout / 5
        )

    # ---- receiving -----------------------------------------------------

    def serve_forever(self) -> None:
        """Receive until ``stopping`` is set, re-checking it every poll interval."""
        announce("UDP chat server", self.address, "make chat-udp PORT={port} NAME=alice")
        self._timer.start()
        for thread in self._hello_threads:
            thread.start()
        while not self.stopping.is_set():
            self._receive()
        self._shutdown()

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
            if self._deferred:  # their catch-up is due then
                wait = min(wait, max(0.0, self._packets_due - before))
        if not self._poller.poll(wait * 1000):
            with self._lock:
                self._caught_up = before
                if self._deferred:
                    self._flush(time.monotonic())
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
                with self._lock:
                    try:
                        self._on_datagram(data, address, now)
                        if count % FLUSH_EVERY == 0:
                            self._flush(time.monotonic())
                    except Exception:
                        # One socket serves everyone: a fault in one datagram must not end the chat.
                        log.exception("failed on a datagram from %s:%d", *address)
        finally:
            with self._lock:
                try:
                    self._flush(time.monotonic())
                except Exception:
                    log.exception("failed to catch the sessions up")

    def _caught_up_at(self, now: float) -> None:
        """The socket was empty at ``now``: every datagram that arrived before it has been read."""
        with self._lock:
            self._caught_up = now

    def _on_datagram(self, data: bytes, address: Address, now: float) -> None:
        session = self._sessions.get(address)
        if session is None:
            self._from_stranger(data, address, now)
            return
        if session.link is not None:
            try:
                packet = parse(data)
            except BadPacket:
                self._not_a_packet(session, data, now)
                return
            self._on_packet(session, packet, now)
            return
        try:
            decoded = decode_client(data)
        except (BadFrame, TooLarge) as exc:
            if not self.closing:
                self._answer_untrusted(session, encode(Error.of(exc)), now)
            return
        except ProtocolError as exc:
            kind, seq, token = envelope_of(data)
            if kind == "hello":
                self._hello_again(session, None, exc, now)
            else:
                self._on_frame(session, data, None, seq, token, now)
            return
        if isinstance(decoded.message, Hello):
            self._hello_again(session, decoded.message, None, now)
        else:
            self._on_frame(session, data, decoded.message, decoded.seq, decoded.session, now)

    def _from_stranger(self, data: bytes, address: Address, now: float) -> None:
        """Only a ``hello`` from an address without a session gets an answer."""
        if self.closing:
            return
        try:
            decoded = decode_client(data)
        except (BadFrame, TooLarge):
            self._drop("stranger", address)
            return
        except ProtocolError as exc:
            if envelope_of(data)[0] == "hello":
                self._hello_from_stranger(address, None, exc, len(data), now)
            else:
                self._drop("stranger", address)
            return
        message = decoded.message
        if isinstance(message, Hello):
            self._hello_from_stranger(address, message, None, len(data), now)
        elif decoded.session is not None and decoded.session in self._by_token:
            self._drop("foreign_token", address)
        else:
            self._drop("stranger", address)

    def _drop(self, why: str, address: Address) -> None:
        self.dropped[why] += 1
        log.debug("dropped a datagram from %s:%d (%s)", address[0], address[1], why)

    def _token_ok(self, session: Session, token: str | None) -> bool:
        if token is None:
            self._drop("no_token", session.address)
            return False
        if hmac.compare_digest(token.encode(), session.token.encode()):
            return True
        self._drop("foreign_token" if token in self._by_token else "wrong_token", session.address)
        return False

    def _on_frame(
        self,
        session: Session,
        data: bytes,
        message: ClientMessage | None,
        seq: int | None,
        token: str | None,
        now: float,
    ) -> None:
        """A frame from a session's address; ``message`` None means the codec refused it."""
        if not self._token_ok(session, token):
            return
        session.last_heard = now
        if session.held is not None:
            # Its address proved itself: what waited goes out now, and before what the room
            # said since the last pass (earlier in this batch), which would otherwise pass it.
            held, session.held = session.held, None
            for entry in held + self.room.take(session):
                self.room.post_entry(session, entry)
        if isinstance(message, Ack):
            if session.sender is not None:
                self._on_ack(session, message.seq, now)
            return
        if self.closing:
            return
        if seq is None:
            self._apply(session, data, message, now)
            return
        kind = session.counter.on_seq(seq).kind
        if session.receiver is None:
            if kind is not SeqKind.DUPLICATE:
                self._apply(session, data, message, now)
            return
        acks = session.receiver.acks_for(seq)
        frames = session.receiver.on_frame(seq, data)
        if frames is None:
            return
        if not frames:
            self._bound_held()  # it may hold one more, early
            if self._sessions.get(session.address) is not session:
                return
        ack = encode(Ack(seq=seq))
        for _ in range(acks):
            self._write(ack, session.address)
        for frame in frames:
            if self._sessions.get(session.address) is not session:
                return
            self._apply(session, frame, message if frame is data else None, now)

    # ---- packet sessions (v1.2) ----------------------------------------

    def _not_a_packet(self, session: Session, data: bytes, now: float) -> None:
        """From a packet session's address, only a ``hello`` again may come outside a packet."""
        try:
            decoded = decode_client(data)
        except ProtocolError:
            decoded = None
        if decoded is not None and isinstance(decoded.message, Hello):
            self._hello_again(session, decoded.message, None, now)
        else:
            self._drop("bad_packet", session.address)

    def _on_packet(self, session: Session, packet: Packet, now: float) -> None:
        """One packet: its token checked once, then each frame in turn, each error its own."""
        link = session.link
        assert link is not None
        if not self._token_ok(session, packet.session):
            return
        frames: list[tuple[bytes, ClientMessage | ProtocolError, int | None]] = []
        eliciting = False
        for line in packet.frames:
            try:
                decoded = decode_client(line)
                frames.append((line, decoded.message, decoded.seq))
            except ProtocolError as exc:
                frames.append((line, exc, envelope_of(line)[1]))
            eliciting = eliciting or not isinstance(frames[-1][1], AckRanges)
        if link.behind and any(isinstance(m, (Say, SendDm)) for _, m, _ in frames):
            # Behind on what the room says, it may not add to it: unacknowledged, the packet
            # comes again later, and slower (its sender's window), as a TCP talker waits for
            # the writer. An overloaded room sheds talk at the door instead of ending sessions.
            self._drop("behind", session.address)
            return
        if not link.on_packet(packet.pn, eliciting, now):
            self._drop("packet_repeated_or_far", session.address)
            return
        session.last_heard = now
        for line, message, seq in frames:
            if self._sessions.get(session.address) is not session:
                return
            if isinstance(message, AckRanges):
                link.on_ack(message.ranges, message.delay, now)
            elif self.closing:
                continue
            elif isinstance(message, (Ack, Hello)) or (
                isinstance(message, ProtocolError) and seq is None
            ):
                self._refuse_in_packet(session, message)
            else:
                self._packet_frame(session, line, message, seq, now)
        self._send_link(session, now)

    def _refuse_in_packet(self, session: Session, problem: ClientMessage | ProtocolError) -> None:
        if isinstance(problem, Hello):
            problem = AlreadyRegistered(f"you are already registered as {session.name}")
        elif isinstance(problem, Ack):
            problem = BadFrame("a packet session acknowledges packets: ack with ranges")
        assert isinstance(problem, ProtocolError)
        log.debug("%s (%s): %s %s", session.label, session.name, problem.code, problem)
        self.room.refuse(session, problem)

    def _packet_frame(
        self,
        session: Session,
        line: bytes,
        message: ClientMessage | ProtocolError,
        seq: int | None,
        now: float,
    ) -> None:
        """A chat frame of a packet session, acted on by ``seq``: once, and in order if reliable."""
        decoded = None if isinstance(message, ProtocolError) else message
        if seq is None:
            self._apply(session, line, decoded, now)
            return
        kind = session.counter.on_seq(seq).kind
        link = session.link
        assert link is not None
        if not link.reliable:
            if kind is not SeqKind.DUPLICATE:
                self._apply(session, line, decoded, now)
            return
        for frame in link.on_frame(seq, line) or ():
            if self._sessions.get(session.address) is not session:
                return
            self._apply(session, frame, decoded if frame is line else None, now)

    def _send_link(self, session: Session, now: float) -> None:
        """Write what a packet session's link has to send; watch its timers from now on."""
        link = session.link
        assert link is not None
        if self._sessions.get(session.address) is not session:
            return
        datagrams = link.datagrams(now)
        session.sent += len(datagrams)
        for datagram in datagrams:
            self._write(datagram, session.address)
        if link.failed:
            self._end(session, "timeout")
        elif link.overflowed:
            self._end(session, "too_slow")
        elif session not in self._busy and link.next_deadline() is not None:
            if not self._busy:
                self._wake.set()
            self._busy.add(session)

    def _on_ack(self, session: Session, seq: int, now: float) -> None:
        assert session.sender is not None
        frames = session.sender.on_ack(seq, now)
        if frames:
            self._deliver(session, frames)

    def _apply(
        self, session: Session, data: bytes, message: ClientMessage | None, now: float
    ) -> None:
        """Act on one frame in order, answering a refusal with ``error``."""
        if session.stage is not Stage.JOINED:
            return
        try:
            if not session.bucket.allow(now):
                raise RateLimited("slow down: too many frames")
            if message is None:
                message = decode_client(data).message
            if not self.room.handle(session, message):
                self._end(session, "quit")
        except ProtocolError as exc:
            log.debug("%s (%s): %s %s", session.label, session.name, exc.code, exc)
            self.room.refuse(session, exc)

    def _answer_untrusted(self, session: Session, datagram: bytes, now: float) -> None:
        """Answer what came from ``session``'s address without a token: raw, and rarely."""
        if session.untrusted.allow(now):
            self._write(datagram, session.address)
        else:
            self._drop("unanswered", session.address)

    # ---- hello ---------------------------------------------------------

    def _hello_from_stranger(
        self,
        address: Address,
        hello: Hello | None,
        problem: ProtocolError | None,
        size: int,
        now: float,
    ) -> None:
        """Register a new session, or refuse within the amplification budget."""
        stranger = self._strangers.get(address)
        if stranger is not None and not stranger.bucket.allow(now):
            self._drop("rate_limited", address)
            return
        budget = answer_budget(size)
        if hello is not None:
            if not self._admission.allow(now, len(self.room) + 1):
                self._drop("admission", address)
                return
            self._register(address, hello, budget, now)
            return
        assert problem is not None
        self._refuse_hello(address, problem, budget, now)

    def _refuse_hello(
        self, address: Address, problem: ProtocolError, budget: int, now: float
    ) -> None:
        """Answer a refused hello within its budget; its address is rate limited from now on."""
        stranger = self._strangers.get(address)
        log.debug("%s:%d hello refused: %s", address[0], address[1], problem.code)
        try:
            self._write(encode(Error.of(problem), limit=budget), address)
        except TooLarge:
            self._drop("no_room_to_answer", address)
        if isinstance(problem, ServerFull):
            self._strangers.pop(address, None)
        elif stranger is None:
            if len(self._strangers) >= MAX_STRANGERS:
                del self._strangers[next(iter(self._strangers))]
            bucket = TokenBucket(self.limits.rate_limit, self.limits.burst, now)
            bucket.allow(now)
            self._strangers[address] = Stranger(since=now, bucket=bucket)

    def _register(self, address: Address, hello: Hello, budget: int, now: float) -> None:
        """File a new session and hand its hello to a ``udp-hello`` thread (lock held)."""
        session = Session(
            address, hello.reliable, self.limits, now, budget, self._held, packets=hello.packets
        )
        if hello.resume is not None and not hello.packets:
            session.held = []  # a packet session's link holds all but the welcome itself
        self._sessions[address] = session
        self._by_token[session.token] = session
        self._hellos.put((session, hello, budget))

    def _run_hellos(self) -> None:
        """Act on hellos, each outside the server's lock: the room may wait for its backplane."""
        while (item := self._hellos.get()) is not None:
            session, hello, budget = item
            try:
                self.room.handle(session, hello)
                problem = None
            except ProtocolError as exc:
                problem = exc
            except Exception:
                log.exception("failed on a hello from %s", session.label)
                problem = None
            with self._lock:
                if self._sessions.get(session.address) is not session:
                    continue  # ended meanwhile (timeout, shutdown)
                if problem is not None or session.stage is not Stage.JOINED:
                    self._forget(session)
                    if problem is not None:
                        self._refuse_hello(session.address, problem, budget, time.monotonic())
                    continue
                self._strangers.pop(session.address, None)
                log.info(
                    "%s joined from %s (%s%s)",
                    hello.name,
                    session.label,
                    "reliable" if hello.reliable else "raw",
                    ", packets" if hello.packets else "",
                )
            self._wake.set()  # the timer sends the welcome

    def _hello_again(
        self, session: Session, hello: Hello | None, problem: ProtocolError | None, now: float
    ) -> None:
        """The first welcome may have been lost: the same name gets it again.

        A hello carries no token, so it is answered as anything untrusted is.
        """
        if self.closing:
            return
        if session.stage is Stage.NEW:
            self._drop("hello_under_way", session.address)
            return
        if hello is not None and name_key(hello.name) == name_key(session.name):
            session.counter.restart()
            self._answer_untrusted(session, session.welcome, now)
            return
        if problem is None:
            problem = AlreadyRegistered(f"you are already registered as {session.name}")
        self._answer_untrusted(session, encode(Error.of(problem)), now)

    # ---- writing -------------------------------------------------------

    def _flush(self, now: float, *, at_once: bool = False) -> None:
        """Catch every session up on what the room has for it, in its own ``seq``.

        Raw sessions, the bulk of a busy room, are written here with no call
        per datagram but ``sendto``. Ending a session (a reliable one that
        gave up, or held too much) adds ``left`` to the room, so this runs
        until nothing is new. Packet sessions are caught up at most once per
        ``coalesce`` (and per as long as their last catch-up took): until
        then they wait in ``_deferred`` (``at_once`` does not wait).
        """
        self._forget_taken()
        sendto = self.sock.sendto
        packets_due = at_once or now >= self._packets_due
        started = time.monotonic()
        deferred, self._deferred = (self._deferred, {}) if packets_due else ({}, self._deferred)
        caught = False
        while pending := list(dict.fromkeys([*deferred, *self.room.pending()])):
            deferred = {}
            for member in pending:
                if member.link is not None and not packets_due:
                    self._deferred[member] = None
                    continue
                entries = self.room.take(member)
                if entries is None or self._sessions.get(member.address) is not member:
                    continue
                if member.link is not None:
                    self._queue_packets(member, entries, now)
                    caught = True
                    continue
                if member.held is not None:
                    entries = self._hold(member, entries)
                if member.sender is not None:
                    for entry in entries:
                        self._deliver(member, member.push(entry, now))
                    continue
                for entry in entries:
                    member.sent += 1
                    datagram = b"%s%d}" % (entry.cache or member.prefix(entry), member.sent)
                    if isinstance(entry.message, Welcome):
                        member.welcome = datagram
                    try:
                        sendto(datagram, member.address)
                    except OSError:
                        self.dropped["send_failed"] += 1
            self._bound_held()
        if caught:
            took = time.monotonic() - started
            self._packets_due = started + max(self.coalesce, took)

    @staticmethod
    def _hold(session: Session, entries: list[Entry]) -> list[Entry]:
        """What a session whose address is not proven yet may get now: its welcome alone."""
        assert session.held is not None
        session.held += [e for e in entries if not isinstance(e.message, Welcome)]
        return [e for e in entries if isinstance(e.message, Welcome)]

    def _queue_packets(self, session: Session, entries: list[Entry], now: float) -> None:
        """Queue a packet session's entries on its link, then send what it lets out.

        The welcome goes alone as in 1.0, within the hello's budget: the
        address is not proven yet, and the link sends nothing until it is.
        """
        link = session.link
        assert link is not None
        frames: list[bytes] = []
        for entry in entries:
            if isinstance(entry.message, Welcome):
                session.welcome = stamp(session.prefix(entry), 1)
                session.sent += 1
                self._write(session.welcome, session.address)
            else:
                frames.append(entry.cache or session.prefix(entry))
        link.queue_all(frames)
        self._send_link(session, now)

    def _bound_held(self) -> None:
        """Past ``max_held_bytes`` held for all reliable sessions, end the one holding most."""
        while self._held.held_bytes > self.max_held_bytes:
            heaviest = max(self._sessions.values(), key=lambda s: s.held_bytes)
            self._end(heaviest, "too_slow")

    def _deliver(self, session: Session, frames: list[bytes]) -> None:
        """Write what ``push`` returned; a reliable session is watched until all is acked."""
        if self._sessions.get(session.address) is not session:
            return
        self._transmit(session, frames)
        sender = session.sender
        if sender is None:
            return
        if sender.failed:
            self._end(session, "timeout")
        elif sender.overflowed:
            self._end(session, "too_slow")
        elif sender.pending and session not in self._busy:
            if not self._busy:
                self._wake.set()
            self._busy.add(session)

    def _transmit(self, session: Session, frames: list[bytes]) -> None:
        if session.sender is not None:
            session.sent += len(frames)
        for frame in frames:
            self._write(frame, session.address)

    def _write(self, data: bytes, address: Address) -> None:
        try:
            self.sock.sendto(data, address)
        except OSError as exc:
            self.dropped["send_failed"] += 1
            log.debug("send to %s:%d failed: %s", address[0], address[1], exc)

    def _end(self, session: Session, reason: str) -> None:
        """Take ``session`` out of the chat (once); the room tells the others why."""
        if self._sessions.get(session.address) is not session:
            return
        self._forget(session)
        self.room.leave(session, reason)
        log.info(
            "%s %s (%s); %s",
            session.name,
            "is away, its place kept" if session.stage is Stage.AWAY else "left",
            reason,
            session.summary(),
        )

    def _taken(self, session: Session) -> None:
        """A resume took ``session`` over: it ends without a word, at the next flush (a resume
        here calls this under the server's lock, one on another server from Redis's thread)."""
        self._taken_sessions.append(session)
        self._wake.set()

    def _forget_taken(self) -> None:
        """The sessions taken over: out of the registry, nobody told (lock held)."""
        while self._taken_sessions:
            session = self._taken_sessions.popleft()
            self._forget(session)
            log.info("%s resumed from a new address; %s", session.name, session.summary())

    def _forget(self, session: Session) -> None:
        """Out of the registry, and every frame it held let go (lock held)."""
        if self._sessions.get(session.address) is session:
            del self._sessions[session.address]
        if self._by_token.get(session.token) is session:
            del self._by_token[session.token]
        self._busy.discard(session)
        self._deferred.pop(session, None)
        session.close()

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
                deadline = self._retransmit(now)
                self._flush(now)
            wake_at = next_sweep
            if deadline is not None:
                # Sessions that became busy meanwhile do not wake the timer: the tick does.
                wake_at = min(wake_at, deadline, now + BUSY_TICK)
            self._wake.wait(max(TIMER_RESOLUTION, wake_at - time.monotonic()))

    def _retransmit(self, now: float) -> float | None:
        """Write what is due for every busy reliable session; return the next deadline."""
        earliest: float | None = None
        for session in list(self._busy):
            if session.link is not None:
                deadline = session.link.next_deadline()
                if deadline is not None and deadline <= now:
                    self._busy.discard(session)
                    self._send_link(session, now)
                    deadline = session.link.next_deadline() if session in self._busy else None
                if deadline is None:
                    self._busy.discard(session)
                elif earliest is None or deadline < earliest:
                    earliest = deadline
                continue
            sender = session.sender
            assert sender is not None
            self._deliver(session, sender.due(now))
            if session not in self._busy:
                continue
            deadline = sender.next_deadline()
            if deadline is None:
                self._busy.discard(session)
            elif earliest is None or deadline < earliest:
                earliest = deadline
        return earliest

    def _sweep(self, now: float) -> None:
        """End the sessions silent past the timeout, judged as of ``_caught_up``.

        The room forgets here what everyone has read (every session is
        caught up on the log at each flush, so all of it but the last sweep's).
        """
        self.room.trim()
        if self.closing:
            return
        self.room.expire()
        for session in list(self._sessions.values()):
            if self._caught_up - session.last_heard > self.limits.session_timeout:
                self._end(session, "timeout")
        while self._strangers:
            address, stranger = next(iter(self._strangers.items()))
            if now - stranger.since <= self.limits.hello_timeout:
                break
            del self._strangers[address]

    # ---- stopping ------------------------------------------------------

    def stop(self) -> None:
        self.stopping.set()

    def _shutdown(self) -> None:
        now = time.monotonic()
        with self._lock:
            self.closing = True
            self.room.close()
            sessions = list(self._sessions.values())
            log.info("shutting down: saying bye to %d session(s)", len(sessions))
            for session in sessions:
                self.room.post(session, Bye(reason="shutdown"))
            self._flush(now, at_once=True)
        deadline = now + SHUTDOWN_GRACE
        while time.monotonic() < deadline and self._awaiting_acks():
            self._receive()
        self._timer_stop.set()
        self._wake.set()
        self._timer.join()
        for _ in self._hello_threads:
            self._hellos.put(None)
        for thread in self._hello_threads:
            thread.join(SHUTDOWN_GRACE)
        with self._lock:
            for session in sessions:
                self._end(session, "shutdown")
        if self.dropped:
            counts = ", ".join(f"{why} {n}" for why, n in sorted(self.dropped.items()))
            log.warning("datagrams dropped: %s", counts)
        self.sock.close()
        log.info("stopped")

    def _awaiting_acks(self) -> bool:
        with self._lock:
            return any(s.awaiting_acks for s in self._sessions.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m udp.server",
        description="The UDP chat server: one socket, sessions keyed by the client's "
        "address, optional reliable delivery per session.",
        epilog="Try it: python -m udp.server, then in two other terminals: "
        "python -m udp.client --name alice (and --name bob)",
    )
    add_common_arguments(parser)
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
        "--coalesce-ms",
        type=non_negative_float,
        default=PACKET_COALESCE_MS,
        metavar="MS",
        help="packet sessions are caught up at most once per this many milliseconds, so that "
        "under load each packet carries more frames; 0 sends at once (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    configure_logging(args.quiet, args.verbose)
    return serve_until_signalled(
        lambda: UdpChatServer(
            Limits.from_args(args, session_timeout=args.session_timeout),
            host=args.host,
            port=args.port,
            history=args.history,
            sharing=Sharing.from_args(args),
            max_held_bytes=args.max_held_bytes,
            coalesce=args.coalesce_ms / 1000,
        ),
        args,
    )


if __name__ == "__main__":
    sys.exit(main())
