"""The UDP server's sessions and everything written to them, under the server's lock.

The registry finds a session by address or token, catches every session up
on what the room has for it (``flush``), retransmits what is due, and ends a
session (``end``) in one place. Every method here is called with the
server's lock held (``udp.server``); the socket is non-blocking, so no write
waits: a full kernel buffer loses the datagram, as a network would.

Catching up: a 1.0 session gets one datagram per frame, stamped with its
next ``seq``; a packet session (v1.2) gets its frames queued on its
``PacketLink`` (``common.protocol.packetlink``), which packs them into as
few packets as fit, one ``sendto`` each, as its congestion window allows,
and nothing at all until the session's address is proven. The 1.0 reliable
sessions' senders share one ``Flight``: a frame it holds back goes out in
its sender's turn, when a flush hands out the room acks freed (``_take_turns``). Sessions at the
same place in the log share the packing of what they are given
(``SharedPacking``): laid out once a pass, numbered per session.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence

from common.protocol.codec import Welcome
from common.protocol.packetlink import PacketLink
from common.protocol.packets import SharedPacking
from common.protocol.reliable import FLIGHT_BUDGET, Flight, ReliableSender, SharedFrames
from common.room.room import Entry, Stage
from common.server.core import Core
from udp.session import Address, Session, Stranger, stamp

log = logging.getLogger("udp.server")

PACKET_COALESCE_MS = 7.0
"""The least time between two catch-ups of the packet sessions (``--coalesce-ms``): what the
room says meanwhile gathers, so each packet carries several frames, as TCP's writer gathers
them per ``send``. A catch-up after a quiet spell is not delayed."""
MAX_HELD_BYTES = 32 << 20
"""Bytes all reliable sessions may hold together (``--max-held-bytes``): frames
sent and not acked yet, each counted once however many hold it, and frames
received ahead of a gap; past it the one holding most is ended."""


class Registry:
    """Who is in session, by address and token; what is owed to them; how they end."""

    def __init__(
        self,
        core: Core[Session],
        sock: socket.socket,
        wake: Callable[[], None],
        max_held: int,
        coalesce: float,
        max_in_flight: int = FLIGHT_BUDGET,
    ) -> None:
        self.core = core
        self.room = core.room
        self.sock = sock
        self.wake = wake  # the timer's: a session just became busy
        self.max_held = max_held
        self.coalesce = coalesce
        self.closing = False  # shutting down: nothing is acted on but acks
        self.dropped: Counter[str] = Counter()
        self.by_address: dict[Address, Session] = {}
        self.by_token: dict[str, Session] = {}
        self.strangers: dict[Address, Stranger] = {}
        self.held = SharedFrames(stamp)
        self.flight = Flight(max_in_flight)
        self._senders: dict[ReliableSender, Session] = {}  # whose turn it is, in ``flight``
        self._busy: set[Session] = set()  # reliable sessions with frames in flight
        self._taken: deque[Session] = deque()  # taken over by a resume: to forget
        # Packet sessions the room has news for, waiting for their next catch-up (``flush``);
        # ``owed``: where every session is one, the room was not even asked who has news.
        self.deferred: dict[Session, None] = {}
        self.owed = False
        self._plain = 0  # sessions without packets (1.0): caught up at once, every flush
        self.packets_due = -math.inf
        # The packings of one flush, by the entries they pack (see ``_queue_packets``).
        self._packings: dict[tuple[int, ...], tuple[list[Entry], SharedPacking]] = {}
        self._last_packing: tuple[list[Entry], SharedPacking] | None = None

    def current(self, session: Session) -> bool:
        """Whether ``session`` is still the one at its address (it may have ended meanwhile)."""
        return self.by_address.get(session.address) is session

    def add(self, session: Session) -> None:
        self.by_address[session.address] = session
        self.by_token[session.token] = session
        self._plain += session.link is None
        if session.sender is not None:
            self._senders[session.sender] = session

    @property
    def waiting(self) -> bool:
        """Whether packet sessions wait for a catch-up, due at ``packets_due``."""
        return self.owed or bool(self.deferred)

    def drop(self, why: str, address: Address) -> None:
        """A datagram not acted on: counted by why, and logged when verbose."""
        self.dropped[why] += 1
        log.debug("dropped a datagram from %s:%d (%s)", address[0], address[1], why)

    # ---- writing -------------------------------------------------------

    def write(self, data: bytes, address: Address) -> None:
        self.write_all((data,), address)

    def write_all(self, datagrams: Sequence[bytes], address: Address) -> None:
        """One ``sendto`` each; one that fails is counted and logged, the rest still go."""
        sendto = self.sock.sendto
        for datagram in datagrams:
            try:
                sendto(datagram, address)
            except OSError as exc:
                self.dropped["send_failed"] += 1
                log.debug("send to %s:%d failed: %s", address[0], address[1], exc)

    def flush(self, now: float, *, at_once: bool = False) -> None:
        """Catch every session up on what the room has for it, in its own ``seq``.

        Ending a session (a reliable one that gave up, or held too much) adds
        ``left`` to the room, so this runs until nothing is new. Packet sessions
        are caught up at most once per ``coalesce`` (and per as long as their
        last catch-up took): until then they wait in ``deferred`` (``at_once``
        does not wait).
        """
        self._forget_taken()
        packets_due = at_once or now >= self.packets_due
        if not packets_due and not self._plain:
            # Nobody to catch up before then: the room keeps who has news till it is due
            # (asking it now would defer every member once per datagram read).
            self.owed = True
            return
        self.owed = self.owed and not packets_due
        self._packings.clear()
        started = time.monotonic()
        deferred, self.deferred = (self.deferred, {}) if packets_due else ({}, self.deferred)
        caught = False
        self._take_turns(now)
        while pending := list(dict.fromkeys([*deferred, *self.room.pending()])):
            deferred = {}
            for member in pending:
                if member.link is not None and not packets_due:
                    self.deferred[member] = None
                    continue
                caught = self._catch_up(member, now) or caught
            self.bound_held()
            self._take_turns(now)
        self._packings.clear()
        self._last_packing = None
        if caught:
            self.packets_due = started + max(self.coalesce, time.monotonic() - started)

    def _catch_up(self, member: Session, now: float) -> bool:
        """Send ``member`` what the room has for it; True if it is a packet session."""
        if member.link is not None:
            entries = self.room.take_shared(member)
            if not self.current(member):
                return False
            self._queue_packets(member, entries, now)
            return True
        entries = self.room.take(member)
        if not self.current(member):
            return False
        if member.held is not None:
            entries = self._hold(member, entries)
        if member.sender is not None:
            for entry in entries:
                self.deliver(member, member.push(entry, now))
        else:
            self._send_raw(member, entries)
        return False

    def _send_raw(self, member: Session, entries: list[Entry]) -> None:
        """A raw session's entries, one datagram each: no call per datagram but ``sendto``."""
        sendto = self.sock.sendto
        for entry in entries:
            member.sent += 1
            datagram = b"%s%d}" % (entry.cache or member.prefix(entry), member.sent)
            if isinstance(entry.message, Welcome):
                member.welcome = datagram
            try:
                sendto(datagram, member.address)
            except OSError:
                self.dropped["send_failed"] += 1

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
        Sessions at the same place in the log (every member of a busy room,
        in a pass) share one ``SharedPacking`` of the same entries, made by
        the first of them in the pass (``_packings``); most share the very
        list of them too (``Room.take_shared``), which finds it at once.
        """
        link = session.link
        assert link is not None
        shared = self._last_packing
        if shared is None or shared[0] is not entries:
            key = tuple(map(id, entries))
            shared = self._packings.get(key) or self._packing(session, entries, key, now)
            if shared is None:
                return
            self._last_packing = shared
        self._written(session, link, link.send_shared(shared[1], now))

    def _packing(
        self, session: Session, entries: list[Entry], key: tuple[int, ...], now: float
    ) -> tuple[list[Entry], SharedPacking] | None:
        """The packing of ``entries`` for every session given them in this pass; None if they
        hold ``session``'s welcome, which is its own: then they are queued and sent."""
        link = session.link
        assert link is not None
        frames: list[bytes] = []
        for entry in entries:
            if isinstance(entry.message, Welcome):
                session.welcome = stamp(session.prefix(entry), 1)
                session.sent += 1
                self.write(session.welcome, session.address)
            else:
                frames.append(entry.cache or session.prefix(entry))
        if len(frames) < len(entries):
            link.queue_all(frames)
            self.send_link(session, now)
            return None
        # The entries are kept with it: no id in the key is reused while it is.
        shared = self._packings[key] = (entries, SharedPacking(frames))
        return shared

    def send_link(self, session: Session, now: float) -> None:
        """Write what a packet session's link has to send; watch its timers from now on."""
        link = session.link
        assert link is not None
        if self.current(session):
            self._written(session, link, link.datagrams(now))

    def _written(self, session: Session, link: PacketLink, datagrams: list[bytes]) -> None:
        """Write a current packet session's ``datagrams``; end it, or watch its timers."""
        session.sent += len(datagrams)
        self.write_all(datagrams, session.address)
        if link.failed:
            self.end(session, "timeout")
        elif link.overflowed:
            self.end(session, "too_slow")
        elif session not in self._busy and link.next_deadline() is not None:
            self._watch(session)

    def deliver(self, session: Session, frames: list[bytes]) -> None:
        """Write what ``push`` returned; a reliable session is watched until all is acked."""
        if not self.current(session):
            return
        if session.sender is not None:
            session.sent += len(frames)
        for frame in frames:
            self.write(frame, session.address)
        sender = session.sender
        if sender is None:
            return
        if sender.failed:
            self.end(session, "timeout")
        elif sender.overflowed:
            self.end(session, "too_slow")
        elif sender.pending and session not in self._busy:
            self._watch(session)

    def _take_turns(self, now: float) -> None:
        """What the flight held back, one frame a sender in turn, while it has room (acks
        freed it since the last flush, or senders closed): ending a session here adds
        ``left`` to the room, which the flush then sends."""
        for sender in self.flight.turns():
            self.deliver(self._senders[sender], sender.due(now))

    def _watch(self, session: Session) -> None:
        """``session`` has timers to keep: the timer wakes for the first busy one."""
        if not self._busy:
            self.wake()
        self._busy.add(session)

    def bound_held(self) -> None:
        """Past ``max_held`` bytes held for all reliable sessions, end the one holding most."""
        while self.held.held_bytes > self.max_held:
            heaviest = max(self.by_address.values(), key=lambda s: s.held_bytes)
            self.end(heaviest, "too_slow")

    # ---- the timer's work ----------------------------------------------

    def retransmit(self, now: float) -> float | None:
        """Write what is due for every busy reliable session; return the next deadline."""
        earliest: float | None = None
        for session in list(self._busy):
            if session.link is not None:
                deadline = session.link.next_deadline()
                if deadline is not None and deadline <= now:
                    self._busy.discard(session)
                    self.send_link(session, now)
                    deadline = session.link.next_deadline() if session in self._busy else None
            else:
                assert session.sender is not None
                self.deliver(session, session.sender.due(now))
                if session not in self._busy:
                    continue
                deadline = session.sender.next_deadline()
            if deadline is None:
                self._busy.discard(session)
            elif earliest is None or deadline < earliest:
                earliest = deadline
        return earliest

    def sweep(self, now: float, caught_up: float) -> None:
        """End the sessions silent past the timeout as of ``caught_up``; forget old strangers."""
        limits = self.core.limits
        for session in list(self.by_address.values()):
            if caught_up - session.last_heard > limits.session_timeout:
                self.end(session, "timeout")
        while self.strangers:
            address, stranger = next(iter(self.strangers.items()))
            if now - stranger.since <= limits.hello_timeout:
                break
            del self.strangers[address]

    # ---- ending --------------------------------------------------------

    def end(self, session: Session, reason: str) -> None:
        """Take ``session`` out of the chat (once); the room tells the others why."""
        if not self.current(session):
            return
        self.forget(session)
        self.room.leave(session, reason)
        away = session.stage is Stage.AWAY
        self.core.left(session.name, reason, session.summary(), away=away)

    def taken(self, session: Session) -> None:
        """A resume took ``session`` over: it ends without a word, at the next flush (a resume
        here calls this under the server's lock, one on another server from Redis's thread)."""
        self._taken.append(session)
        self.wake()

    def _forget_taken(self) -> None:
        """The sessions taken over: out of the registry, nobody told."""
        while self._taken:
            session = self._taken.popleft()
            self.forget(session)
            log.info("%s resumed from a new address; %s", session.name, session.summary())

    def forget(self, session: Session) -> None:
        """Out of the registry, and every frame it held let go."""
        if self.by_address.get(session.address) is session:
            del self.by_address[session.address]
            self._plain -= session.link is None
        if self.by_token.get(session.token) is session:
            del self.by_token[session.token]
        if session.sender is not None and self._senders.get(session.sender) is session:
            del self._senders[session.sender]
        self._busy.discard(session)
        self.deferred.pop(session, None)
        session.close()

    def awaiting_acks(self) -> bool:
        return any(s.awaiting_acks for s in self.by_address.values())
