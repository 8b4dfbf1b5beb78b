"""What each datagram to the UDP server does: the server receives it, this acts on it.

Who gets an answer is ``udp.session``'s account: only a ``hello`` from an
address without a session, within the amplification budget; a frame of a
session only with its token; what carries no token, from the session's own
bucket of untrusted answers. A packet from a packet session (v1.2) is parsed
once (``common.protocol.packets``), its token checked once, then its frames
are read one by one, each bad one answered on its own. Every method is
called with the server's lock held.
"""

from __future__ import annotations

import hmac
import logging
import queue
import time

from common.protocol.codec import (
    Ack,
    AckRanges,
    BadFrame,
    ClientMessage,
    Error,
    Hello,
    ProtocolError,
    Say,
    SendDm,
    ServerFull,
    TooLarge,
    decode_client,
    encode,
)
from common.protocol.envelope import Datagram, envelope_of, read_datagram
from common.protocol.packets import Acks, BadPacket, Packet, ack_only, parse
from common.protocol.reliable import SeqKind
from common.room.ratelimit import TokenBucket
from common.room.room import already_registered
from common.server.core import Admission, Again, Core
from udp.registry import Registry
from udp.session import Address, Session, Stranger, answer_budget

log = logging.getLogger("udp.server")

MAX_STRANGERS = 4096
"""Addresses whose hello was refused, remembered at most (each with its own rate limit)."""


class Inbox:
    """Datagrams in, acted on: strangers' hellos, sessions' frames, packets, acks."""

    def __init__(self, core: Core[Session], registry: Registry, admission: Admission) -> None:
        self.core = core
        self.room = core.room
        self.limits = core.limits
        self.registry = registry
        self.admission = admission
        # Hellos filed, for the ``udp-hello`` threads to act on (None: stop).
        self.hellos: queue.SimpleQueue[tuple[Session, Hello, int] | None] = queue.SimpleQueue()

    def on_datagram(self, data: bytes, address: Address, now: float) -> None:
        session = self.registry.by_address.get(address)
        if session is None:
            self._from_stranger(data, address, now)
        elif session.link is not None:
            try:
                packet = parse(data)
            except BadPacket:
                self._not_a_packet(session, data, now)
                return
            if not self._token_ok(session, packet.session):  # once per packet, dropped whole
                return
            if (acks := ack_only(packet.frames)) is not None:
                self._on_acks(session, packet, acks, now)
            else:
                self._on_packet(session, packet, now)
        else:
            datagram = read_datagram(data)
            if datagram.unreadable:
                assert datagram.problem is not None
                if not self.registry.closing:
                    self._answer_untrusted(session, encode(Error.of(datagram.problem)), now)
            elif datagram.hello:
                self._hello_again(session, datagram, now)
            else:
                self._on_frame(session, datagram, now)

    def _from_stranger(self, data: bytes, address: Address, now: float) -> None:
        """Only a ``hello`` from an address without a session gets an answer."""
        if self.registry.closing:
            return
        datagram = read_datagram(data)
        if datagram.unreadable:
            self.registry.drop("stranger", address)
        elif datagram.hello:
            self._hello_from_stranger(address, datagram, now)
        elif datagram.problem is None and datagram.token in self.registry.by_token:
            self.registry.drop("foreign_token", address)
        else:
            self.registry.drop("stranger", address)

    def _token_ok(self, session: Session, token: str | None) -> bool:
        if token is None:
            self.registry.drop("no_token", session.address)
            return False
        if hmac.compare_digest(token.encode(), session.token.encode()):
            return True
        foreign = token in self.registry.by_token
        self.registry.drop("foreign_token" if foreign else "wrong_token", session.address)
        return False

    def _on_frame(self, session: Session, datagram: Datagram, now: float) -> None:
        """A frame from a session's address; its ``message`` None means the codec refused it."""
        if not self._token_ok(session, datagram.token):
            return
        session.last_heard = now
        if session.held is not None:
            # Its address proved itself: what waited goes out now, and before what the room
            # said since the last pass (earlier in this batch), which would otherwise pass it.
            held, session.held = session.held, None
            for entry in held + self.room.take(session):
                self.room.post_entry(session, entry)
        message, seq = datagram.message, datagram.seq
        if isinstance(message, Ack):
            if session.sender is not None:
                self._on_ack(session, message.seq, now)
        elif self.registry.closing:
            return
        elif seq is None:
            self._apply(session, datagram.data, message, now)
        elif session.receiver is None:
            if session.counter.on_seq(seq).kind is not SeqKind.DUPLICATE:
                self._apply(session, datagram.data, message, now)
        else:
            session.counter.on_seq(seq)
            self._in_order(session, datagram, seq, now)

    def _in_order(self, session: Session, datagram: Datagram, seq: int, now: float) -> None:
        """A reliable 1.0 session's frame: acked, then acted on once and in order."""
        assert session.receiver is not None
        data = datagram.data
        acks = session.receiver.acks_for(seq)
        frames = session.receiver.on_frame(seq, data)
        if frames is None:
            return
        if not frames:
            self.registry.bound_held()  # it may hold one more, early
            if not self.registry.current(session):
                return
        ack = encode(Ack(seq=seq))
        for _ in range(acks):
            self.registry.write(ack, session.address)
        for frame in frames:
            if not self.registry.current(session):
                return
            self._apply(session, frame, datagram.message if frame is data else None, now)

    # ---- packet sessions (v1.2) ----------------------------------------

    def _not_a_packet(self, session: Session, data: bytes, now: float) -> None:
        """From a packet session's address, only a ``hello`` again may come outside a packet."""
        datagram = read_datagram(data)
        if isinstance(datagram.message, Hello):
            self._hello_again(session, datagram, now)
        else:
            self.registry.drop("bad_packet", session.address)

    def _on_packet(self, session: Session, packet: Packet, now: float) -> None:
        """One packet (its token checked): each frame in turn, each error its own."""
        link = session.link
        assert link is not None
        frames: list[tuple[bytes, ClientMessage | ProtocolError, int | None]] = []
        for line in packet.frames:
            d = read_datagram(line)
            if d.problem is not None:
                frames.append((line, d.problem, envelope_of(line)[1] if d.unreadable else d.seq))
            else:
                assert d.message is not None
                frames.append((line, d.message, d.seq))
        eliciting = any(not isinstance(message, AckRanges) for _, message, _ in frames)
        if link.behind and any(isinstance(m, (Say, SendDm)) for _, m, _ in frames):
            # Behind on what the room says, it may not add to it: unacknowledged, the packet
            # comes again later, and slower (its sender's window), as a TCP talker waits for
            # the writer. An overloaded room sheds talk at the door instead of ending sessions.
            self.registry.drop("behind", session.address)
            return
        if not link.on_packet(packet.pn, eliciting, now):
            self.registry.drop("packet_repeated_or_far", session.address)
            return
        session.last_heard = now
        for line, message, seq in frames:
            if not self.registry.current(session):
                return
            if isinstance(message, AckRanges):
                link.on_ack(message.ranges, message.delay, now)
            elif self.registry.closing:
                continue
            elif isinstance(message, (Ack, Hello)) or (
                isinstance(message, ProtocolError) and seq is None
            ):
                self._refuse_in_packet(session, message)
            else:
                self._packet_frame(session, line, message, seq, now)
        self.registry.send_link(session, now)

    def _on_acks(self, session: Session, packet: Packet, acks: Acks, now: float) -> None:
        """A packet of acks alone, as ``_on_packet`` would take it, at a fraction of the cost:
        no frame decoded, nothing to act on but the link (acks are read even while closing,
        count against no rate limit, and a behind session may send them)."""
        link = session.link
        assert link is not None
        if not link.on_packet(packet.pn, False, now):
            self.registry.drop("packet_repeated_or_far", session.address)
            return
        session.last_heard = now
        for ranges, delay in acks:
            link.on_ack(ranges, delay, now)
        self.registry.send_link(session, now)

    def _refuse_in_packet(self, session: Session, problem: ClientMessage | ProtocolError) -> None:
        if isinstance(problem, Hello):
            problem = already_registered(session)
        elif isinstance(problem, Ack):
            problem = BadFrame("a packet session acknowledges packets: ack with ranges")
        assert isinstance(problem, ProtocolError)
        self.core.refuse(session, problem)

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
            if not self.registry.current(session):
                return
            self._apply(session, frame, decoded if frame is line else None, now)

    # ---- acting --------------------------------------------------------

    def _on_ack(self, session: Session, seq: int, now: float) -> None:
        assert session.sender is not None
        frames = session.sender.on_ack(seq, now)
        if frames:
            self.registry.deliver(session, frames)

    def _apply(
        self, session: Session, data: bytes, message: ClientMessage | None, now: float
    ) -> None:
        """Act on one frame in order (the codec's refusal is answered when it is acted on)."""
        read = (lambda: message) if message is not None else (lambda: _decode(data))
        if not self.core.act(session, read, now):
            self.registry.end(session, "quit")

    def _answer_untrusted(self, session: Session, datagram: bytes, now: float) -> None:
        """Answer what came from ``session``'s address without a token: raw, and rarely."""
        if session.untrusted.allow(now):
            self.registry.write(datagram, session.address)
        else:
            self.registry.drop("unanswered", session.address)

    # ---- hello ---------------------------------------------------------

    def _hello_from_stranger(self, address: Address, datagram: Datagram, now: float) -> None:
        """Register a new session, or refuse within the amplification budget."""
        stranger = self.registry.strangers.get(address)
        if stranger is not None and not stranger.bucket.allow(now):
            self.registry.drop("rate_limited", address)
            return
        budget = answer_budget(len(datagram.data))
        problem = datagram.problem
        if isinstance(hello := datagram.message, Hello):
            self._admit(address, hello, budget, now)
            return
        assert problem is not None
        self._refuse_hello(address, problem, budget, now)

    def _refuse_hello(
        self, address: Address, problem: ProtocolError, budget: int, now: float
    ) -> None:
        """Answer a refused hello within its budget; its address is rate limited from now on."""
        stranger = self.registry.strangers.get(address)
        log.debug("%s:%d hello refused: %s", address[0], address[1], problem.code)
        try:
            self.registry.write(encode(Error.of(problem), limit=budget), address)
        except TooLarge:
            self.registry.drop("no_room_to_answer", address)
        strangers = self.registry.strangers
        if isinstance(problem, ServerFull):
            strangers.pop(address, None)
        elif stranger is None:
            if len(strangers) >= MAX_STRANGERS:
                del strangers[next(iter(strangers))]
            bucket = TokenBucket(self.limits.rate_limit, self.limits.burst, now)
            bucket.allow(now)
            strangers[address] = Stranger(since=now, bucket=bucket)

    def _admit(self, address: Address, hello: Hello, budget: int, now: float) -> None:
        """A stranger's hello, within ``Admission``'s bounds, is filed; past them it is dropped
        unanswered: its client says hello again a second later."""
        admission = self.admission
        if admission.arrive(None) is not None:  # its address is not proven: no share of one
            self.registry.drop("admission", address)
        elif not admission.may_join(now, len(self.room) + 1):  # a datagram to each, and it
            admission.settle(None)
            self.registry.drop("admission", address)
        else:
            self._register(address, hello, budget, now)

    def _register(self, address: Address, hello: Hello, budget: int, now: float) -> None:
        """File a new session and hand its hello to a ``udp-hello`` thread; it holds a
        stranger's place until the room acted on its hello (``hello_acted_on``)."""
        registry = self.registry
        session = Session(
            address,
            hello.reliable,
            self.limits,
            now,
            budget,
            registry.held,
            packets=hello.packets,
            flight=registry.flight,
        )
        if hello.resume is not None and not hello.packets:
            session.held = []  # a packet session's link holds all but the welcome itself
        registry.add(session)
        self.hellos.put((session, hello, budget))

    def hello_acted_on(
        self, session: Session, hello: Hello, budget: int, problem: ProtocolError | None
    ) -> None:
        """The room acted on ``session``'s hello (a ``udp-hello`` thread, outside the lock):
        in the room, it is no stranger any more; refused, it is forgotten and told why."""
        self.admission.settle(None)
        if not self.registry.current(session):
            return  # ended meanwhile (timeout, shutdown)
        if problem is not None or not self.core.in_room(session):
            self.registry.forget(session)
            if problem is not None:
                self._refuse_hello(session.address, problem, budget, time.monotonic())
            return
        self.registry.strangers.pop(session.address, None)
        how = "reliable" if hello.reliable else "raw"
        self.core.joined(session, how + (", packets" if hello.packets else ""))

    def _hello_again(self, session: Session, datagram: Datagram, now: float) -> None:
        """The first welcome may have been lost: the same name gets it again.

        A hello carries no token, so it is answered as anything untrusted is.
        """
        if self.registry.closing:
            return
        hello = datagram.message if isinstance(datagram.message, Hello) else None
        again = self.core.hello_again(session, hello, datagram.problem)
        if again is Again.UNDER_WAY:
            self.registry.drop("hello_under_way", session.address)
        elif again is Again.WELCOME:
            session.counter.restart()
            self._answer_untrusted(session, session.welcome, now)
        else:
            self._answer_untrusted(session, encode(Error.of(again)), now)


def _decode(data: bytes) -> ClientMessage:
    message: ClientMessage = decode_client(data).message
    return message
