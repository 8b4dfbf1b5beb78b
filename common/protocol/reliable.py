"""Sequence accounting and reliable delivery for UDP chat sessions, without I/O.

Nothing here touches a socket or reads a clock. Frames are opaque ``bytes``
that already carry their ``seq``, or, for a sender given ``SharedFrames``,
one frame shared by many senders that each stamp with their own ``seq`` when
they transmit it; every method that depends on time takes
``now``, monotonic seconds supplied by the caller. That keeps the UDP server
(one instance of each class per session) and the UDP client free to choose
their own threads and clocks, and lets the tests drive time by hand. None of
the classes locks: the caller serialises all calls on one instance, e.g. with
one lock per session. Seqs count from 1 in each direction of a session; a seq
below 1 is a caller error (ValueError), so the frame parser must refuse it.

Who calls what:

* Raw sessions: the receive loop feeds every incoming ``seq`` to
  ``SeqCounter.on_seq`` and reports its counters.
* Reliable sessions, sending: take ``seq = sender.next_seq``, build the frame
  bytes with that ``seq``, call ``sender.queue(seq, frame)``, then transmit
  whatever ``sender.due(now)`` returns. The receive loop calls
  ``sender.on_ack(seq, now)`` for each ``ack`` and transmits what it returns:
  frames the ack let into the window, or a fast retransmission. A timer
  thread sleeps until ``next_deadline()`` (``None``: until more is queued),
  transmits ``due(now)``, and ends the session with reason ``timeout`` once
  ``failed`` is true; ``overflowed`` ends it with reason ``too_slow``.
* Reliable sessions, receiving: for each incoming frame with a ``seq``, ask
  ``receiver.acks_for(seq)``, then call ``receiver.on_frame(seq, frame)``.
  Unless it returns ``None``, send that many acks of ``seq`` (duplicates too:
  the previous ack may have been lost) and hand the returned frames to the
  application, in order.

Retry schedule: a frame goes out when it enters the window and again each time
its retransmission timeout expires, the timeout starting at ``INITIAL_RTO``
and doubling after every transmission. With ``MAX_TRIES = 6`` a frame queued at
0 s is transmitted at 0, 0.2, 0.6, 1.4, 3.0 and 6.2 s, and given up at 12.6 s.

Fast retransmission: a timeout is a slow way to learn of a loss when frames
flow steadily, and the receiver holds back everything after a lost frame
until it arrives (head-of-line blocking). So once ``FAST_RETRANSMIT_ACKS``
frames sent after an unacknowledged one have been acked, that one is sent
again at once, as TCP does on three duplicate acks. It happens at most once
per frame and leaves the schedule above as it is: one extra copy, not a try.

Bounds, so that a peer that is slow, gone or hostile costs bounded memory:

* ``SeqCounter`` remembers which of the last ``SEQ_HISTORY`` seqs arrived, as a
  bit mask. Its window is ``SEQ_HISTORY`` either side of the highest seq seen:
  a seq outside it is neither a loss nor a repeat but numbering that started
  again (a peer that restarted, or one wild seq), so the count restarts from
  it. One far-off seq therefore costs nothing and mutes nothing: the next
  seq of the old numbering is outside the window of the new one and restarts
  it again.
* The sender transmits only seqs less than ``WINDOW`` past the oldest
  unacknowledged one, and keeps at most ``MAX_BACKLOG`` more frames queued
  behind the window; past that it sets ``overflowed`` and drops the frame.
  At the 8192-byte frame limit that is at most about 9 MB per session.
  Senders that share their frames (``SharedFrames``) hold one copy of a frame
  however many of them hold it, and ``SharedFrames.held_bytes`` is what they
  hold together, each frame once plus ``HOLD_COST`` per sender holding it:
  the figure a server bounds for all its sessions at once.
* Senders that share a ``Flight`` start at most ``Flight.limit`` frames
  between them that are on their first try: a new frame waits in its
  sender's backlog till there is room, and senders held back take the room
  that frees in turn, one frame each (round robin). What many senders have
  in flight at once is what comes back to their server at once, as acks.
* The receiver holds only seqs less than ``WINDOW`` past the next one it
  expects (at most about 512 KB per session) and drops farther ones unacked,
  so their sender transmits them again. Its window matches the sender's, so a
  conforming sender never has a frame dropped this way. Receivers given the
  senders' ``SharedFrames`` count what they hold early in its ``held_bytes``
  too, so that one figure bounds both for all sessions at once (a peer that
  never fills a gap, kept alive by pings, holds its window for as long as it likes).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

SEQ_HISTORY = 1024
"""How many of the most recent seqs ``SeqCounter`` remembers."""

INITIAL_RTO = 0.2
"""Seconds before the first retransmission of a frame; doubled after every try."""

MAX_TRIES = 6
"""Transmissions of one frame, the first included, before the sender gives up."""

WINDOW = 64
"""Span of seqs in flight: sent but unacknowledged (sender), held early (receiver)."""

MAX_BACKLOG = 1024
"""Frames a sender keeps queued behind a full window before it reports overflow."""

ACK_COPIES = 2
"""Acks sent for a frame that arrives again, both sides alike. Its sender is
still waiting, so the last ack (or the frame) was lost: two copies make a
second loss in a row unlikely. A frame's first arrival gets one ack, since in a
busy room acks are most of what the server receives. At 20 % loss each way a
first try then fails 36 % of the time and a later one 23 %: about 0.02 % of
frames use up all six tries and end their session."""

FAST_RETRANSMIT_ACKS = 3
"""Acks of later frames after which an unacknowledged frame is sent again at once."""

FLIGHT_BUDGET = 512
"""Frames on their first try that the senders of one ``Flight`` (a UDP server's 1.0 reliable
sessions) may have out at once. Each comes back as an ack, and the acks wait in the server's
one socket with everything else its clients send: 512 of them take 426 KB of its buffer (an
ack costs 832 bytes there on loopback) and 35-43 ms of reading (a server busy with 500
reliable sessions reads 12,000-15,000 acks a second), well within the 200 ms after which a
frame is sent again. Without it, 500 sessions joining at once had 32,000 frames in flight
(64 each): their acks waited 0.7 s, every frame was sent again, each copy brought another ack,
and the kernel dropped 195,000-517,000 datagrams at the socket, the other clients' among them."""

HOLD_COST = 160
"""Bytes a sender spends holding one frame besides the frame itself: its entry,
its seq and its place in the queue (``tracemalloc`` measures about 135, and 24
more for a deadline once the frame was sent)."""


def _check_seq(seq: int) -> None:
    if seq < 1:
        raise ValueError(f"seq must be 1 or more, not {seq}")


class SeqKind(enum.Enum):
    """How an incoming seq relates to the ones seen before."""

    NEW = "new"
    """The next seq after the highest so far."""
    GAP = "gap"
    """Beyond the next seq: the ones in between are missing so far."""
    LATE = "late"
    """Below the highest seen, filling an earlier gap: reordered."""
    DUPLICATE = "duplicate"
    """Seen before: repeated."""
    RESTART = "restart"
    """``SEQ_HISTORY`` or more away from the highest seen, either way: numbering starts again."""


@dataclass(frozen=True)
class SeqEvent:
    """The outcome of one ``SeqCounter.on_seq`` call."""

    kind: SeqKind
    missing: int = 0
    """For ``GAP``: how many seqs were skipped."""


class SeqCounter:
    """Counts lost, repeated and reordered datagrams of a raw session.

    ``received`` counts distinct seqs, ``lost`` the seqs below the highest one
    that have not arrived (yet), ``repeated`` the datagrams seen before,
    ``reordered`` the late arrivals that filled a gap (each also takes one off
    ``lost``), ``restarts`` the seqs outside the window, from which the
    numbering starts again (the seqs before one are taken as seen).
    """

    def __init__(self) -> None:
        self.highest = 0
        self.received = 0
        self.lost = 0
        self.repeated = 0
        self.reordered = 0
        self.restarts = 0
        # Bit i set: seq ``highest - i`` has arrived.
        self._seen = 0

    def restart(self) -> None:
        """The peer numbers from 1 again (it said ``hello`` again): forget the old numbering."""
        self.highest = self._seen = 0
        self.restarts += 1

    def on_seq(self, seq: int) -> SeqEvent:
        """Account for one datagram; seq must be 1 or more (ValueError otherwise)."""
        _check_seq(seq)
        if not self.highest - SEQ_HISTORY < seq < self.highest + SEQ_HISTORY:
            self.highest = seq
            self._seen = (1 << SEQ_HISTORY) - 1
            self.received += 1
            self.restarts += 1
            return SeqEvent(SeqKind.RESTART)
        if seq > self.highest:
            jump = seq - self.highest
            self._seen = ((self._seen << jump) | 1) & ((1 << SEQ_HISTORY) - 1)
            self.highest = seq
            self.received += 1
            self.lost += jump - 1
            if jump == 1:
                return SeqEvent(SeqKind.NEW)
            return SeqEvent(SeqKind.GAP, missing=jump - 1)
        age = self.highest - seq
        if (self._seen >> age) & 1:
            self.repeated += 1
            return SeqEvent(SeqKind.DUPLICATE)
        self._seen |= 1 << age
        self.received += 1
        self.lost -= 1
        self.reordered += 1
        return SeqEvent(SeqKind.LATE)


class SharedFrames:
    """Frames held by many senders: one object each, counted once in ``held_bytes``.

    ``stamp(frame, seq)`` makes the datagram a sender transmits, from the shared
    frame and that sender's ``seq``. A frame is known by its identity while some
    sender holds it (so it stays alive and its ``id`` is its own).
    """

    def __init__(self, stamp: Callable[[bytes, int], bytes]) -> None:
        self.stamp = stamp
        self.held_bytes = 0
        self._holders: dict[int, int] = {}

    def hold(self, frame: bytes) -> None:
        key = id(frame)
        holders = self._holders.get(key, 0)
        if not holders:
            self.held_bytes += len(frame)
        self._holders[key] = holders + 1
        self.held_bytes += HOLD_COST

    def release(self, frame: bytes) -> None:
        key = id(frame)
        holders = self._holders[key] - 1
        self.held_bytes -= HOLD_COST
        if holders:
            self._holders[key] = holders
        else:
            del self._holders[key]
            self.held_bytes -= len(frame)

    def hold_all(self, frames: Iterable[bytes]) -> None:
        """``hold`` each of ``frames``: a writer's pass hands a session several at once."""
        holders, added, count = self._holders, 0, 0
        for frame in frames:
            key = id(frame)
            held = holders.get(key, 0)
            if not held:
                added += len(frame)
            holders[key] = held + 1
            count += 1
        self.held_bytes += added + HOLD_COST * count

    def release_all(self, frames: Iterable[bytes]) -> None:
        """``release`` each of ``frames``: an ack lets go of a packet's worth at once."""
        holders, freed, count = self._holders, 0, 0
        for frame in frames:
            key = id(frame)
            held = holders[key] - 1
            if held:
                holders[key] = held
            else:
                del holders[key]
                freed += len(frame)
            count += 1
        self.held_bytes -= freed + HOLD_COST * count


class Flight:
    """The frames on their first try of the senders that share it: at most ``limit``, in turn.

    A sender starts a frame only while fewer than ``limit`` are out and no sender waits in
    line before it; otherwise it waits in line, once, and ``turns`` hands the room that frees
    (an ack, a sender closed, a frame past its first timeout) to the line, one frame a turn,
    oldest first: a sender with a long backlog waits no longer for its next frame than one
    with a short backlog. A frame leaves the flight when acked, or at its first timeout: it is
    taken as lost then, as TCP and QUIC take a packet declared lost out of flight, so a peer
    that never acks holds its share for 200 ms at a time, not the whole budget for the 12.6 s
    before it is given up. Its sender starts no new frame till that one is acked, though: a
    server too busy to read acks in time would otherwise start more frames just when it reads
    fewer acks. Retransmissions go on as the protocol says, whatever the flight.
    Calls are serialised by the caller across all its senders (a server's lock).
    """

    def __init__(self, limit: int = FLIGHT_BUDGET) -> None:
        self.limit = limit
        self.frames = 0
        self._line: deque[ReliableSender] = deque()
        self._waiting: set[ReliableSender] = set()  # in ``_line`` (a closed one is not)
        self._turn: ReliableSender | None = None

    def start(self, sender: ReliableSender) -> bool:
        """Whether ``sender`` may start a frame now (counted if so); if not, it waits in line."""
        if self.frames < self.limit and (sender is self._turn or not self._waiting):
            self.frames += 1
            self._turn = None
            return True
        if sender not in self._waiting:
            self._waiting.add(sender)
            self._line.append(sender)
        return False

    def waits(self, sender: ReliableSender) -> bool:
        return sender in self._waiting

    def turns(self) -> Iterator[ReliableSender]:
        """The senders in line, oldest first, while there is room: each may start one frame
        (in its ``due``) and, if it has more, waits in line again, at its end."""
        while self.frames < self.limit and self._line:
            sender = self._line.popleft()
            if sender in self._waiting:
                self._waiting.discard(sender)
                self._turn = sender
                yield sender
                self._turn = None

    def leave(self, sender: ReliableSender, frames: int) -> None:
        """``sender`` closed with ``frames`` on their first try: out of the flight and the line."""
        self.frames -= frames
        self._waiting.discard(sender)


@dataclass(slots=True)
class _Unacked:
    frame: bytes
    seq: int
    tries: int = 0
    # When the next transmission is due; -inf until the first one.
    deadline: float = -math.inf
    # Frames sent after this one and acked; FAST_RETRANSMIT_ACKS: resend it now,
    # past that: it has been (a fast retransmission happens once).
    later_acks: int = 0


class ReliableSender:
    """The sending half of a reliable session: windowing and retransmission.

    Frames are queued in seq order, counting from 1; the sender keeps each one
    until it is acknowledged. ``due`` returns everything to put on the wire,
    first transmissions and retransmissions alike, so the caller has a single
    path to the socket.

    Every call costs a constant amount of work in the common case (a new frame
    goes out, an ack comes in order): frames are first sent in seq order, so a
    pointer tells which are unsent, and the earliest timeout is kept, so the
    frames in flight are looked through only when one of them is due.
    """

    def __init__(self, shared: SharedFrames | None = None, flight: Flight | None = None) -> None:
        # Frames are shared with other senders, and stamped with their seq here.
        self._shared = shared
        # New frames start only as this flight, shared with other senders, has room.
        self._flight = flight
        # What this sender holds: its frames in full, plus HOLD_COST each.
        self.held_bytes = 0
        # A frame went unacknowledged after MAX_TRIES: the session is over.
        self.failed = False
        # The backlog was full and a frame was dropped: the session is over.
        self.overflowed = False
        self.retransmissions = 0
        self._next_seq = 1
        # Every queued, unacknowledged frame by seq, in seq order; those within
        # ``WINDOW`` of the oldest are in flight, the rest are the backlog.
        self._unacked: dict[int, _Unacked] = {}
        # The lowest seq not transmitted yet: the ones below it all were.
        self._unsent = 1
        # The earliest timeout of a frame in flight (inf: none); after an ack
        # it may be too early (``_earliest_exact`` False), never too late.
        self._earliest = math.inf
        self._earliest_exact = True
        # Some frame's FAST_RETRANSMIT_ACKS-th later ack came in: resend it.
        self._fast = False
        # Frames past their first timeout, not acked: with a flight, no new frame starts.
        self._lost = 0

    @property
    def next_seq(self) -> int:
        """The seq the next queued frame must carry."""
        return self._next_seq

    @property
    def can_send(self) -> bool:
        """Whether a frame queued now would go out at once rather than wait."""
        return self._next_seq < self._window_end()

    @property
    def pending(self) -> int:
        """Frames queued and not acknowledged yet, in flight or in the backlog."""
        return len(self._unacked)

    def queue(self, seq: int, frame: bytes) -> None:
        """Take the frame carrying ``next_seq``; transmit what ``due`` returns next.

        A frame that would make the backlog exceed ``MAX_BACKLOG`` is dropped
        and sets ``overflowed``; its seq is used up all the same.
        """
        if seq != self._next_seq:
            raise ValueError(f"expected seq {self._next_seq}, got {seq}")
        self._next_seq += 1
        if seq >= self._window_end() + MAX_BACKLOG:
            self.overflowed = True
            return
        self._unacked[seq] = _Unacked(frame, seq)
        self.held_bytes += len(frame) + HOLD_COST
        if self._shared is not None:
            self._shared.hold(frame)

    def on_ack(self, seq: int, now: float) -> list[bytes]:
        """Forget an acknowledged frame; return the frames to transmit now.

        Those are the frames the ack let into the window and any earlier frame
        it made due for a fast retransmission. An ack of a frame that is not
        awaiting one (unknown, acked already, not sent yet) changes nothing.
        """
        entry = self._unacked.get(seq)
        if entry is None or entry.tries == 0:
            return []
        del self._unacked[seq]
        self._let_go(entry)
        if entry.tries > 1:
            self._lost -= 1
        elif self._flight is not None:
            self._flight.frames -= 1
        if entry.deadline <= self._earliest:
            self._earliest_exact = False
        for older, waiting in self._unacked.items():
            if older > seq:
                break
            if waiting.tries and waiting.later_acks < FAST_RETRANSMIT_ACKS:
                waiting.later_acks += 1
                self._fast = self._fast or waiting.later_acks == FAST_RETRANSMIT_ACKS
        return self.due(now)

    def due(self, now: float) -> list[bytes]:
        """Frames to transmit at ``now``, in seq order; re-arms their timeouts.

        A fast retransmission is among them, but its timeout stays as it was.

        Returns nothing once ``failed``, which this call sets when a frame's
        last timeout has expired.
        """
        if self.failed:
            return []
        frames = self._resend(now) if self._fast or now >= self._earliest else []
        if self.failed:
            return []
        end = self._sendable_end()
        flight = self._flight
        while self._unsent < end:
            entry = self._unacked.get(self._unsent)
            if entry is not None:  # None: dropped by an overflow
                if flight is not None and (self._lost or not flight.start(self)):
                    break  # a frame lost, or in line for the flight (``Flight.turns``)
                self._transmit(entry, now)
                frames.append(self._datagram(entry))
            self._unsent += 1
        return frames

    def next_deadline(self) -> float | None:
        """When ``due`` next has work: -inf if right away, None if nothing waits."""
        if self.failed:
            return None
        held = self._flight is not None and (self._lost > 0 or self.waiting)
        if self._fast or (self._unsent < self._sendable_end() and not held):
            return -math.inf
        if not self._earliest_exact:
            self._earliest = min((e.deadline for e in self._in_flight()), default=math.inf)
            self._earliest_exact = True
        return None if self._earliest == math.inf else self._earliest

    def _resend(self, now: float) -> list[bytes]:
        """The frames in flight whose timeout expired or whose fast retransmission is due."""
        frames: list[bytes] = []
        earliest = math.inf
        for entry in self._in_flight():
            fast = entry.later_acks == FAST_RETRANSMIT_ACKS
            if fast:
                entry.later_acks += 1  # once only, whether now or by its timeout
            if entry.deadline > now:
                if fast:
                    self.retransmissions += 1
                    frames.append(self._datagram(entry))
            elif entry.tries == MAX_TRIES:
                self.failed = True
                return []
            else:
                if entry.tries == 1:
                    self._lost += 1
                    if self._flight is not None:
                        self._flight.frames -= 1  # taken as lost: out of the flight
                self.retransmissions += 1
                self._transmit(entry, now)
                frames.append(self._datagram(entry))
            earliest = min(earliest, entry.deadline)
        self._earliest, self._earliest_exact, self._fast = earliest, True, False
        return frames

    @property
    def waiting(self) -> bool:
        """Frames the window lets out wait in line for the flight (``Flight.turns``)."""
        return self._flight is not None and self._flight.waits(self)

    def close(self) -> None:
        """The session is over: let go of every frame held, and of its place in the flight."""
        if self._flight is not None:
            first_tries = sum(entry.tries == 1 for entry in self._in_flight())
            self._flight.leave(self, first_tries)
        for entry in self._unacked.values():
            self._let_go(entry)
        self._unacked.clear()
        self._lost = 0

    def _let_go(self, entry: _Unacked) -> None:
        self.held_bytes -= len(entry.frame) + HOLD_COST
        if self._shared is not None:
            self._shared.release(entry.frame)

    def _datagram(self, entry: _Unacked) -> bytes:
        if self._shared is None:
            return entry.frame
        return self._shared.stamp(entry.frame, entry.seq)

    def _transmit(self, entry: _Unacked, now: float) -> None:
        entry.tries += 1
        entry.deadline = now + INITIAL_RTO * 2 ** (entry.tries - 1)
        self._earliest = min(self._earliest, entry.deadline)

    def _in_flight(self) -> Iterator[_Unacked]:
        """The frames transmitted and not acknowledged, in seq order."""
        for seq, entry in self._unacked.items():
            if seq >= self._unsent:
                return
            yield entry

    def _sendable_end(self) -> int:
        """The first seq that may not be transmitted yet: beyond the window or not queued."""
        return min(self._window_end(), self._next_seq)

    def _window_end(self) -> int:
        """The first seq beyond the window."""
        oldest = next(iter(self._unacked), self._next_seq)
        return oldest + WINDOW


class ReliableReceiver:
    """The receiving half of a reliable session: in-order, exactly-once delivery.

    The transport acks every frame for which ``on_frame`` does not return
    ``None``, duplicates included, because the ack of the first copy may have
    been lost and the sender keeps retransmitting until one arrives.
    """

    def __init__(self, shared: SharedFrames | None = None, *, window: int = WINDOW) -> None:
        # Seqs from ``next_expected + window`` on are dropped (packet sessions hold more).
        self.window = window
        self.next_expected = 1
        self.delivered = 0
        self.duplicates = 0
        # Frames too far ahead of next_expected to hold.
        self.dropped = 0
        self.held_bytes = 0  # the frames held early, and HOLD_COST for each
        self._held: dict[int, bytes] = {}
        self._shared = shared

    @property
    def held(self) -> int:
        """Frames received early, waiting for a gap before them to be filled."""
        return len(self._held)

    def acks_for(self, seq: int) -> int:
        """How many acks to send for an incoming ``seq``; ask before ``on_frame``.

        One for a frame seen the first time, ``ACK_COPIES`` for a repeat.
        """
        return ACK_COPIES if seq < self.next_expected or seq in self._held else 1

    def on_frame(self, seq: int, frame: bytes) -> list[bytes] | None:
        """Frames now deliverable in order; ``None`` if dropped unacked.

        Returns ``[]`` for a duplicate (ack it all the same) or an early frame
        that is held. seq must be 1 or more (ValueError otherwise).
        """
        _check_seq(seq)
        if seq < self.next_expected or seq in self._held:
            self.duplicates += 1
            return []
        if seq >= self.next_expected + self.window:
            self.dropped += 1
            return None
        if seq > self.next_expected:
            self._hold(frame, +1)
        self._held[seq] = frame
        frames: list[bytes] = []
        while self.next_expected in self._held:
            frames.append(self._held.pop(self.next_expected))
            if frames[-1] is not frame:
                self._hold(frames[-1], -1)
            self.next_expected += 1
        self.delivered += len(frames)
        return frames

    def close(self) -> None:
        """The session is over: let go of every frame held early."""
        for frame in self._held.values():
            self._hold(frame, -1)
        self._held.clear()

    def _hold(self, frame: bytes, sign: int) -> None:
        """Count ``frame`` in (+1) or out (-1) of what is held early, here and in ``shared``."""
        self.held_bytes += sign * (len(frame) + HOLD_COST)
        if self._shared is None:
            return
        if sign > 0:
            self._shared.hold(frame)
        else:
            self._shared.release(frame)
