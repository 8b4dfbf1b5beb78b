"""One end of a UDP packet session (protocol v1.2), without I/O.

The server keeps one ``PacketLink`` per packet session, the terminal client
and the benchmark's clients one each: the same rules on both ends. Nothing
here touches a socket or reads a clock (``now`` is the caller's monotonic
seconds), and nothing locks: the caller serialises the calls.

Sending. Frames are queued with their ``seq`` (``queue``, or ``queue_all`` for
several at once); ``datagrams(now)``
returns every packet to write now, each at most ``MAX_PACKET_BYTES``, packed
with as many frames as fit, numbered ``0, 1, 2 ...`` and never renumbered:

* a raw link sends each frame once, and that is all;
* a reliable link keeps each frame until a packet carrying it is
  acknowledged. A packet that ``LossRecovery`` declares lost has its frames
  (those not acknowledged since) sent again in new packets, before anything
  new. New frames go out only while the congestion window (``NewReno``) has
  room, and only seqs less than ``window`` past the oldest unacknowledged one
  (what the peer's receiver holds). A probe timeout sends the oldest frames in
  flight again in one packet, whatever the window says. ``MAX_BACKLOG`` frames
  may wait behind the window; one more and ``overflowed`` is set (the frame
  is dropped); six probe timeouts in a row set ``failed``.
* until ``proven`` (the server's side, before the client's first packet with
  the token arrives) nothing is sent at all: frames wait in the queue.
* ``send_shared`` queues and sends at once the frames of a ``SharedPacking``
  (a server's pass: many sessions get the same frames): the same packets as
  ``queue_all`` then ``datagrams``, made from the layout the sessions share
  whenever the link has nothing else to send.

Acknowledging (reliable links). ``on_packet`` records every packet number
received in a ``RangeSet`` of at most ``MAX_ACK_RANGES`` ranges. An ack is due
once ``ACK_ELICITING_THRESHOLD`` (2) packets that need one arrived, or
``MAX_ACK_DELAY`` (25 ms) after the first, less ``ACK_TIMER_SLACK``; it goes alone only
when due. Before that it rides in a packet ``datagrams`` sends anyway, unless the
peer's packets come closer together than ``MAX_ACK_DELAY``: then the next one soon
makes it due, and an ack sent early would only add one (a client of a busy room
acks the server's packets one in two, not once more for every ``say``; the server
still acks a client's rare ``say`` in its next packet). Its ``delay`` is how long the
largest packet number waited, in ms.

Receiving. The caller parses a packet (``common.protocol.packets.parse``),
checks its token, decodes its frames, then calls ``on_packet`` (False: a
repeat, or a number ``PN_WINDOW`` or more away from the largest received,
which is dropped whole and costs nothing), ``on_ack`` for each ack and
``on_frame`` for each frame with a ``seq``: a reliable link hands frames on
once and in order (``ReliableReceiver``), holding at most ``window`` early.

Timers. ``next_deadline()`` says when ``datagrams`` next has work (-inf: now;
None: only when something is queued or received).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence

from common.protocol.codec import MAX_ACK_RANGES
from common.protocol.packets import MAX_PACKET_BYTES, SharedPacking, header
from common.protocol.rangeset import RangeSet
from common.protocol.recovery import MAX_ACK_DELAY, LossRecovery, SentPacket
from common.protocol.reliable import HOLD_COST, MAX_BACKLOG, ReliableReceiver, SharedFrames

ACK_ELICITING_THRESHOLD = 2
"""Packets needing an ack that make one due at once."""
PN_WINDOW = 1 << 16
"""A packet number this far or farther from the largest received is dropped unread."""
ACK_TIMER_SLACK = 0.010
"""How late a transport's timer may wake: an ack is sent this much before the
``MAX_ACK_DELAY`` its peer counts on, or the peer's probe timeout (which allows
for exactly that delay) fires first and sends again what had arrived."""
BEHIND_FRAMES = 256
"""Frames a reliable link may have waiting behind its full congestion window before it is
``behind``: its peer reads slower than it is given frames (a server whose room talks faster
than it can catch everyone up has every link behind)."""
PACKET_WINDOW = 1024
"""Seqs in flight past the oldest unacknowledged one, and held early by a receiver."""


def _stamped_line(stamp: Callable[[bytes, int], bytes]) -> Callable[[bytes, int], bytes]:
    return lambda frame, seq: stamp(frame, seq) + b"\n"


class PacketLink:
    """Packing, acks, loss recovery and congestion control for one end of a packet session.

    ``session`` goes into every header (a client's link); ``proven`` False
    holds everything back until ``on_packet`` first accepts one (a server's
    link). ``shared`` (server side) makes queued frames prefixes held once for
    all sessions and stamped with this link's ``seq`` as they go out.
    ``first_seq`` is the seq of the first frame queued (the server's welcome,
    seq 1, goes out before the link does).
    """

    def __init__(
        self,
        *,
        reliable: bool,
        session: str | None = None,
        proven: bool = True,
        shared: SharedFrames | None = None,
        first_seq: int = 1,
        window: int = PACKET_WINDOW,
    ) -> None:
        self.reliable = reliable
        self.proven = proven
        self.window = window
        self.held_bytes = 0
        self.overflowed = False
        self.retransmissions = 0
        self.packets_sent = 0
        self.acks_sent = 0
        self.packets_received = 0
        self.far_packets = 0
        self.recovery = LossRecovery()
        self.receiver = ReliableReceiver(shared, window=window)
        self._session = session
        self._shared = shared
        # A frame's line in a packet: stamped with its seq if shared, and its "\n".
        self._line_of = self._plain_line if shared is None else _stamped_line(shared.stamp)
        self._next_seq = first_seq
        # Raw: frames not sent yet. Reliable: every frame not acknowledged, by seq.
        self._queue: deque[tuple[int, bytes]] = deque()
        self._unacked: dict[int, bytes] = {}
        self._unsent = first_seq
        self._oldest = first_seq  # see ``_oldest_unacked``
        # Seqs of lost packets still unacknowledged: sent again before anything new.
        self._resend: dict[int, None] = {}
        self._probe = False
        self._start_receiving()

    def _start_receiving(self) -> None:
        """Receiving: packet numbers seen, and what the next ack owes."""
        self._received = RangeSet(MAX_ACK_RANGES)
        self._largest_received_at = 0.0
        self._eliciting = 0
        # When the last packet needing an ack came, and how long after the one before it.
        self._eliciting_at = -math.inf
        self._eliciting_gap = math.inf
        self._ack_deadline = math.inf

    # ---- sending -------------------------------------------------------

    @property
    def failed(self) -> bool:
        """Six probe timeouts in a row: the peer is gone."""
        return self.recovery.failed

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def pending(self) -> int:
        """Frames queued and not acknowledged (raw: not sent) yet."""
        return len(self._unacked) if self.reliable else len(self._queue)

    @property
    def behind(self) -> bool:
        """More than ``BEHIND_FRAMES`` queued frames wait for the congestion window."""
        return self.reliable and self._next_seq - self._unsent > BEHIND_FRAMES

    def acked(self, seq: int) -> bool:
        """Whether the frame ``seq`` was queued and is held no more (reliable links)."""
        return seq < self._next_seq and seq not in self._unacked

    def queue(self, seq: int, frame: bytes) -> None:
        """Take the frame carrying ``next_seq`` (without its ``\\n``); ``datagrams`` sends it."""
        if seq != self._next_seq:
            raise ValueError(f"expected seq {self._next_seq}, got {seq}")
        if not self.reliable:
            self._next_seq += 1
            if len(self._queue) >= MAX_BACKLOG:
                self.overflowed = True
                return
            self._queue.append((seq, frame))
            return
        oldest = self._oldest_unacked()
        self._next_seq += 1
        if seq >= oldest + self.window + MAX_BACKLOG:
            self.overflowed = True
            return
        self._unacked[seq] = frame
        self.held_bytes += len(frame) + HOLD_COST
        if self._shared is not None:
            self._shared.hold(frame)

    def queue_all(self, frames: Sequence[bytes]) -> None:
        """``queue`` each of ``frames`` in turn, seqs ``next_seq`` on (a writer's pass for one
        session): the same, at a fraction of the cost per frame."""
        seq, count = self._next_seq, len(frames)
        if not self.reliable:
            if len(self._queue) + count > MAX_BACKLOG:
                for frame in frames:
                    self.queue(self._next_seq, frame)
                return
            self._queue.extend(zip(range(seq, seq + count), frames, strict=False))
            self._next_seq += count
            return
        if seq + count > self._oldest_unacked() + self.window + MAX_BACKLOG:
            for frame in frames:
                self.queue(self._next_seq, frame)
            return
        self._hold_all(frames, sum(map(len, frames)))

    def _hold_all(self, frames: Sequence[bytes], size: int) -> None:
        """Hold ``frames`` (``size`` bytes in all) unacknowledged, seqs ``next_seq`` on, where
        none overflows. Not a strict zip: the range is as long as the frames, and a strict zip
        costs a raised StopIteration per call (more than the rest of this method)."""
        seq, count = self._next_seq, len(frames)
        self._unacked.update(zip(range(seq, seq + count), frames, strict=False))
        self._next_seq += count
        self.held_bytes += size + HOLD_COST * count
        if self._shared is not None:
            self._shared.hold_all(frames)

    def send_shared(self, packing: SharedPacking, now: float) -> list[bytes]:
        """``queue_all`` of ``packing``'s frames, then ``datagrams``: the same packets, but
        where a server's link has nothing else to send (no frame waiting or lost, no probe, no
        ack owed, no timer due) they are its sessions' shared layout, one formatting each."""
        if not self.proven or self._shared is None:
            self.queue_all(packing.prefixes)
            return self.datagrams(now)
        if self.reliable:
            return self._send_shared_reliable(packing, now)
        if self._queue:
            self.queue_all(packing.prefixes)
            return self.datagrams(now)
        datagrams = packing.packets(self.recovery.next_pn, self._next_seq)
        self._next_seq += len(packing.prefixes)
        self.recovery.on_unrecorded_sent(len(datagrams))
        self.packets_sent += len(datagrams)
        return datagrams

    def _send_shared_reliable(self, packing: SharedPacking, now: float) -> list[bytes]:
        """``send_shared`` for a reliable link: the new frames packed as ``_pack_reliable``
        packs them (a packet starts only while the congestion window has room), each packet
        recorded in flight with its seqs (a range: a packet's seqs follow each other)."""
        first, count = self._next_seq, len(packing.prefixes)
        recovery = self.recovery
        deadline = recovery.deadline()
        if not (
            count
            and self._unsent == first
            and not (self._resend or self._probe or self._eliciting or recovery.failed)
            and (deadline is None or now < deadline)
            and first + count <= self._oldest_unacked() + self.window
        ):
            self.queue_all(packing.prefixes)
            return self.datagrams(now)
        self._hold_all(packing.prefixes, packing.size)
        congestion = recovery.congestion
        datagrams: list[bytes] = []
        pn, seq = recovery.next_pn, first
        for template, frames in packing.layout(pn, seq):
            if congestion.bytes_in_flight >= congestion.window:
                break
            seqs = range(seq, seq + frames)
            data = template % (pn, *seqs)
            recovery.on_packet_sent(SentPacket(pn, now, len(data), seqs), now)
            datagrams.append(data)
            pn += 1
            seq += frames
        self._unsent = seq
        self.packets_sent += len(datagrams)
        return datagrams

    def datagrams(self, now: float) -> list[bytes]:
        """Every packet to write at ``now``, in order; runs the timers that are due."""
        if not self.proven:
            return []
        if not self.reliable:
            frames = list(self._queue)
            self._queue.clear()
            return self._pack(frames, now)
        deadline = self.recovery.deadline()
        if deadline is not None and now >= deadline:
            self._on_timer(now)
        if self.failed:
            return []
        return self._pack_reliable(now)

    def next_deadline(self) -> float | None:
        """When ``datagrams`` next has work: -inf if now, None if nothing waits."""
        if not self.proven or self.failed:
            return None
        if not self.reliable:
            return -math.inf if self._queue else None
        if self._probe or (self._can_send_new() and (self._resend or self._has_new())):
            return -math.inf
        deadlines = [self._ack_deadline if self._eliciting else math.inf]
        timer = self.recovery.deadline()
        if timer is not None:
            deadlines.append(timer)
        earliest = min(deadlines)
        return None if earliest == math.inf else earliest

    def _on_timer(self, now: float) -> None:
        outcome = self.recovery.on_timeout(now)
        if outcome is not None:
            self._lost(outcome.lost)
            return
        if self.failed:
            return
        oldest = self._in_flight_seqs()
        if not oldest:
            self.recovery.forget()  # nothing in flight awaits an ack any more
            return
        self._probe = True
        for seq in oldest:
            self._resend[seq] = None

    def _in_flight_seqs(self) -> list[int]:
        """The unacknowledged seqs of the oldest packets in flight, a packet's worth at most."""
        seqs: list[int] = []
        size = 0
        for packet in self.recovery.packets():
            for seq in packet.seqs:
                frame = self._unacked.get(seq)
                if frame is not None and seq not in seqs:
                    size += len(frame)
                    if seqs and size > MAX_PACKET_BYTES:
                        return seqs
                    seqs.append(seq)
        return seqs

    def _lost(self, packets: list[SentPacket]) -> None:
        for packet in packets:
            for seq in packet.seqs:
                if seq in self._unacked:
                    self._resend[seq] = None

    def _has_new(self) -> bool:
        return self._unsent < min(self._next_seq, self._window_end())

    def _can_send_new(self) -> bool:
        return self.recovery.congestion.available

    def _pack(self, frames: list[tuple[int, bytes]], now: float) -> list[bytes]:
        """A raw link's frames into as few packets as fit, in order."""
        datagrams: list[bytes] = []
        lines: list[bytes] = []
        size = 0
        for seq, frame in frames:
            line = self._line_of(frame, seq)
            if lines and size + len(line) > MAX_PACKET_BYTES:
                datagrams.append(self._finish(lines, [], now))
                lines = []
            if not lines:
                size = len(header(self.recovery.next_pn, self._session))
            lines.append(line)
            size += len(line)
        if lines:
            datagrams.append(self._finish(lines, [], now))
        return datagrams

    def _pack_reliable(self, now: float) -> list[bytes]:
        """Lost frames again, then new ones, packed, while the window (or a probe) allows; the
        ack owed rides in the first. What the window stops waits, resends first. Run for every
        session many times a second: written for speed (locals, one pass)."""
        if not self._resend and not self._probe and self._unsent >= self._next_seq:
            return self._ack_alone(now)
        resend, end, ack = self._plan(now)
        unacked, unsent, congestion = self._unacked, self._unsent, self.recovery.congestion
        line_of = self._line_of
        datagrams: list[bytes] = []
        lines = [ack] if ack is not None else []
        seqs: list[int] = []
        room = self._room_left() - len(ack or b"")
        count, r = len(resend), 0
        while r < count or unsent < end:
            if not seqs and not self._probe and congestion.bytes_in_flight >= congestion.window:
                break
            seq = resend[r] if r < count else unsent
            frame = unacked.get(seq)
            if frame is None:  # a new seq dropped by an overflow
                unsent += 1
                continue
            line = line_of(frame, seq)
            if lines and len(line) > room:
                datagrams.append(self._finish(lines, seqs, now))
                lines, seqs, room = [], [], self._room_left()
                continue
            lines.append(line)
            seqs.append(seq)
            room -= len(line)
            if r < count:
                r += 1
            else:
                unsent += 1
        self._packed(unsent, resend, r)
        if lines:
            datagrams.append(self._finish(lines, seqs, now))
        return datagrams

    def _plan(self, now: float) -> tuple[list[int], int, bytes | None]:
        """What a pass may send: the lost frames still unacked, the window's end, the ack."""
        unacked = self._unacked
        resend = sorted(seq for seq in self._resend if seq in unacked) if self._resend else []
        self._resend.clear()
        end = min(self._next_seq, self._window_end())
        congestion = self.recovery.congestion
        open_now = self._probe or congestion.bytes_in_flight < congestion.window
        rides = open_now and (resend or self._unsent < end) and self._eliciting_gap >= MAX_ACK_DELAY
        ack = self._ack_line(now, due_only=not rides)
        return resend, end, ack

    def _ack_alone(self, now: float) -> list[bytes]:
        """Nothing to send but the ack: a packet of it alone, if it is due."""
        ack = self._ack_line(now, due_only=True)
        return [] if ack is None else [self._finish([ack], [], now)]

    def _room_left(self) -> int:
        """Bytes of frames the next packet can hold."""
        return MAX_PACKET_BYTES - len(header(self.recovery.next_pn, self._session))

    def _packed(self, unsent: int, resend: list[int], sent_again: int) -> None:
        """After a pass: where new frames resume, and the lost ones the window kept back."""
        self._unsent = unsent
        self.retransmissions += sent_again
        for seq in resend[sent_again:]:
            self._resend[seq] = None

    def _finish(self, lines: list[bytes], seqs: list[int], now: float) -> bytes:
        pn = self.recovery.next_pn
        data = header(pn, self._session) + b"".join(lines)
        packet = None
        if self.reliable and seqs:
            packet = SentPacket(pn, now, len(data), tuple(seqs))
            self._probe = False
        self.recovery.on_packet_sent(packet, now)
        self.packets_sent += 1
        return data

    @staticmethod
    def _plain_line(frame: bytes, seq: int) -> bytes:
        return frame + b"\n"

    def _window_end(self) -> int:
        return self._oldest_unacked() + self.window

    def _oldest_unacked(self) -> int:
        """The oldest seq not acknowledged yet (``next_seq`` if none). Kept as a mark that only
        moves up, not as ``next(iter(_unacked))``: a dict whose oldest keys keep leaving is
        searched from its start past every slot they left, until it next grows."""
        oldest, unacked, end = self._oldest, self._unacked, self._next_seq
        while oldest < end and oldest not in unacked:
            oldest += 1
        self._oldest = oldest
        return oldest

    def close(self) -> None:
        """The session is over: let go of every frame held."""
        for frame in self._unacked.values():
            self._let_go(frame)
        self._unacked.clear()
        self._queue.clear()
        self.receiver.close()

    def _let_go(self, frame: bytes) -> None:
        self.held_bytes -= len(frame) + HOLD_COST
        if self._shared is not None:
            self._shared.release(frame)

    # ---- acknowledging -------------------------------------------------

    def ack_now(self, now: float) -> list[bytes]:
        """The ack owed, at once, in a packet of its own: the last word of an end that leaves."""
        ack = self._ack_line(now, due_only=False)
        if ack is None:
            return []
        return [self._finish([ack], [], now)]

    def _ack_due(self, now: float) -> bool:
        return self._eliciting >= ACK_ELICITING_THRESHOLD or (
            self._eliciting > 0 and now >= self._ack_deadline
        )

    def _ack_line(self, now: float, *, due_only: bool) -> bytes | None:
        """The ack frame owed, if any (only when due if ``due_only``); resets what is owed."""
        if not self.reliable or self._eliciting == 0 or (due_only and not self._ack_due(now)):
            return None
        delay = max(0, int((now - self._largest_received_at) * 1000))
        ranges = ",".join(f"[{hi},{lo}]" for hi, lo in self._received.descending())
        self._eliciting = 0
        self._ack_deadline = math.inf
        self.acks_sent += 1
        return b'{"type":"ack","ranges":[%s],"delay":%d}\n' % (ranges.encode(), delay)

    # ---- receiving -----------------------------------------------------

    def on_packet(self, pn: int, eliciting: bool, now: float) -> bool:
        """Record packet ``pn``; False if it is a repeat or too far off to read."""
        largest = self._received.largest
        if largest is not None and abs(pn - largest) >= PN_WINDOW:
            self.far_packets += 1
            return False
        if not self._received.add(pn):
            return False
        self.packets_received += 1
        self.proven = True
        if largest is None or pn > largest:
            self._largest_received_at = now
        if self.reliable and eliciting:
            self._eliciting_gap = now - self._eliciting_at
            self._eliciting_at = now
            self._eliciting += 1
            self._ack_deadline = min(self._ack_deadline, now + MAX_ACK_DELAY - ACK_TIMER_SLACK)
        return True

    def on_ack(self, ranges: Sequence[tuple[int, int]], delay_ms: int, now: float) -> None:
        """Take the peer's ack of our packets; ignored by a raw link or if it names unsent ones."""
        if not self.reliable:
            return
        outcome = self.recovery.on_ack(ranges, delay_ms / 1000, now)
        if outcome is None:
            return
        pop = self._unacked.pop
        frames = [
            frame
            for packet in outcome.acked
            for seq in packet.seqs
            if (frame := pop(seq, None)) is not None
        ]
        self.held_bytes -= sum(map(len, frames)) + HOLD_COST * len(frames)
        if self._shared is not None:
            self._shared.release_all(frames)
        if outcome.lost:
            self._lost(outcome.lost)

    def on_frame(self, seq: int, frame: bytes) -> list[bytes] | None:
        """A reliable link's frames now deliverable in order (None: beyond the window)."""
        return self.receiver.on_frame(seq, frame)
