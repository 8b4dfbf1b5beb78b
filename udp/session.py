"""A UDP session: who it is, what it may be answered, and its sequence numbers.

The server (``udp.server``) owns the socket, the threads and the lock; this
module keeps what each session is, under that lock.

Who gets an answer:

* An address without a session gets one only to a ``hello``, and at most
  ``max(3 x the hello's bytes, 256)`` bytes (a ``welcome`` lists fewer users
  to fit). Its answers carry no ``seq``: there is no session to count in.
  Anything else from it is dropped unanswered and counted. New sessions
  are admitted as ``common.server.core``'s ``Admission`` says: a hello being
  acted on holds a stranger's place, and joins fit a budget of what they
  cost (a ``welcome`` plus a ``joined`` to every member). A ``hello`` past
  either is dropped unanswered; its client says ``hello`` again a second later.
* A frame of a session must carry its ``session`` token; a missing or wrong
  one (also a right one sent from another address) is dropped, counted and
  never acted on, acks included.
* Anyone can send from a session's address, so what carries no token to
  check (a datagram that cannot be parsed, a ``hello`` again) is answered
  from a bucket of its own, ``UNTRUSTED_BURST`` at once and
  ``UNTRUSTED_RATE`` a second after that, whatever arrives: ``bad_frame``,
  ``too_large``, ``already_registered`` or the same ``welcome`` again. The
  answer is one raw datagram without ``seq`` (the welcome again is the
  first one, seq and all), never queued for retransmission, and it touches
  nothing of the session: not its rate limit, not its liveness.

Sequence numbers: every datagram to a session carries the session's next
``seq``; a frame is encoded once for everyone and the ``seq`` spliced into
each copy. Incoming ``seq`` go to a ``SeqCounter`` (lost, repeated,
reordered; logged when the session ends); a raw session's repeated frame is
not acted on twice. Its window is ``SEQ_HISTORY`` (1024) either side of the
highest seq seen: a seq outside it (10^18, or 1 again from a client that
restarted) is acted on and the count starts again from it, so no seq can
mute a session; a ``hello`` again from the session's address (its client
starting over) starts the count again too. A reliable session's window is
the receiver's: seqs from ``WINDOW`` (64) past the next expected one are
dropped unacked, and seqs before it are repeats, acked again.

A reliable session (``"reliable": true``) also has a ``ReliableSender``
and ``ReliableReceiver`` (``common.protocol.reliable``): every frame with a ``seq``
is acked (twice if it came again) and handed on once and in order, every
frame sent is retransmitted until acked; a sender that gives up ends the
session (``timeout``), one whose backlog overflows ends it as ``too_slow``.
Their senders share frames (``SharedFrames``): a frame held by many
sessions is one object, stamped with each one's ``seq`` as it goes out.
What they hold together, frames sent and not acked and frames received
ahead of a gap, is bounded (``--max-held-bytes``, 32 MiB): past it, the
session holding most is ended as ``too_slow``, so sessions that never ack,
or never fill a gap, cost bounded memory however many there are. Their senders
share one ``Flight`` too: at most ``--max-in-flight`` (512) frames on their first
try between them, so that the acks coming back fit the socket and are read well
within the 200 ms after which a frame goes again; a frame waits its turn in its
sender's backlog meanwhile.

A packet session (``"packets": true``, v1.2) has a ``PacketLink`` instead of
a sender and a receiver (``link``): packets, acks of packet numbers, RFC 9002
loss recovery and NewReno, for raw and reliable sessions alike. Its welcome
is still one datagram (seq 1, ``"packets": true`` added, within the hello's
budget); the link starts at seq 2 and sends nothing until the first packet
with the token proves the address. Its reliable frames are shared and
bounded the same way (``held_bytes``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from common.protocol.codec import MAX_FRAME_BYTES, Welcome, encode
from common.protocol.limits import Limits
from common.protocol.packetlink import PacketLink
from common.protocol.reliable import (
    Flight,
    ReliableReceiver,
    ReliableSender,
    SeqCounter,
    SharedFrames,
)
from common.room.ratelimit import TokenBucket
from common.room.room import Entry
from common.server.core import Client

Address = tuple[str, int]

TOKEN_BYTES = 16
AMPLIFICATION = 3
MIN_ANSWER_BYTES = 256
UNTRUSTED_BURST = 8
"""Answers at once to datagrams from a session's address that carry no token."""
UNTRUSTED_RATE = 1.0
"""Answers a second to them after the burst: a client that retries its hello is served."""
FIRST_SEQ_BYTES = len(b',"seq":1')
PACKETS_GRANTED = b',"packets":true'
"""In the welcome of a packet session: a client falls back to 1.0 without it."""


def answer_budget(received: int) -> int:
    """Bytes the server may send in answer to a datagram of ``received`` bytes."""
    return min(MAX_FRAME_BYTES, max(AMPLIFICATION * received, MIN_ANSWER_BYTES))


def stamp(prefix: bytes, seq: int) -> bytes:
    """The datagram: ``prefix`` (a frame cut just before its seq's digits) and ``seq``."""
    return b"%s%d}" % (prefix, seq)


@dataclass
class Stranger:
    """An address whose ``hello`` was refused: rate limited, forgotten after the hello timeout."""

    since: float
    bucket: TokenBucket


class Session(Client):
    """One client's session: its token, sequence numbers, rate limit and reliability state.

    ``sent`` counts the datagrams written to it; a raw session's ``seq`` is
    that count (a reliable one's sender numbers its own). ``budget`` is what
    its first answer, the ``welcome``, may weigh (see ``answer_budget``);
    ``welcome`` is that datagram as sent, for a ``hello`` that comes again.
    ``untrusted`` limits the answers to what comes from its address without
    a token.
    """

    def __init__(
        self,
        address: Address,
        reliable: bool,
        limits: Limits,
        now: float,
        budget: int,
        shared: SharedFrames,
        packets: bool = False,
        flight: Flight | None = None,
    ) -> None:
        super().__init__(f"{address[0]}:{address[1]}", limits, now)
        self.address = address
        self.token = secrets.token_hex(TOKEN_BYTES)
        self.untrusted = TokenBucket(UNTRUSTED_RATE, UNTRUSTED_BURST, now)
        self.counter = SeqCounter()
        self.reliable = reliable
        # A packet session (v1.2) has a link, which does all a 1.0 reliable session's
        # sender and receiver do; its welcome (seq 1) goes out before it, as in 1.0.
        self.link = (
            PacketLink(reliable=reliable, proven=False, shared=shared, first_seq=2)
            if packets
            else None
        )
        one_oh = reliable and not packets
        self.sender = ReliableSender(shared, flight) if one_oh else None
        self.receiver = ReliableReceiver(shared) if one_oh else None
        self.last_heard = now
        self.budget = budget
        self.welcome = b""
        self.sent = 0
        # A resume's answer (and what follows it) waits here until a frame with the token
        # comes from this address: till then it gets its welcome only (no amplification).
        self.held: list[Entry] | None = None

    def prefix(self, entry: Entry) -> bytes:
        """``entry`` as this session's datagram up to its seq's digits (see ``stamp``).

        A frame is cut once for all who get it (``entry.cache``): reliable
        sessions hold that one object, not a copy each. The ``welcome`` is
        this session's own (its token, its budget).
        """
        if isinstance(entry.message, Welcome):
            granted = PACKETS_GRANTED if self.link is not None else b""
            limit = self.budget - FIRST_SEQ_BYTES - len(granted)
            frame = encode(entry.message, session=self.token, limit=limit)
            return frame[:-1] + granted + b',"seq":'
        if entry.cache is None:
            entry.cache = entry.line[:-2] + b',"seq":'
        return entry.cache

    def push(self, entry: Entry, now: float) -> list[bytes]:
        """Queue ``entry`` to a reliable session under its next ``seq``; return what to write now.

        The frame is kept until acked; it goes out now only if the window has room.
        """
        assert self.sender is not None
        window_open = self.sender.can_send
        seq = self.sender.next_seq
        prefix = self.prefix(entry)
        if isinstance(entry.message, Welcome):
            self.welcome = stamp(prefix, seq)
        self.sender.queue(seq, prefix)
        return self.sender.due(now) if window_open else []

    def close(self) -> None:
        """The session is over here: let go of every frame it holds."""
        for part in (self.sender, self.receiver, self.link):
            if part is not None:
                part.close()

    @property
    def held_bytes(self) -> int:
        """What this session holds: frames not acked yet, and frames received ahead of a gap
        (see ``SharedFrames``)."""
        if self.sender is not None and self.receiver is not None:
            return self.sender.held_bytes + self.receiver.held_bytes
        if self.link is not None:
            return self.link.held_bytes + self.link.receiver.held_bytes
        return 0

    @property
    def awaiting_acks(self) -> bool:
        """Frames sent reliably and not acknowledged yet."""
        if self.sender is not None:
            return self.sender.pending > 0
        link = self.link
        return link is not None and link.reliable and link.proven and link.pending > 0

    def summary(self) -> str:
        c = self.counter
        text = (
            f"from client: {c.received} received, {c.lost} lost, {c.repeated} repeated, "
            f"{c.reordered} reordered, {c.restarts} restarted; to client: {self.sent} sent"
        )
        if self.sender is not None:
            text += f", {self.sender.retransmissions} retransmitted"
        if self.link is not None:
            link = self.link
            text += (
                f" in {link.packets_sent} packets, {link.retransmissions} retransmitted, "
                f"{link.recovery.lost_packets} packets lost, {link.acks_sent} acks sent"
            )
        return text
