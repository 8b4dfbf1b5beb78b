"""Loss detection and the probe timeout of RFC 9002 (sections 5 and 6), without I/O.

The sender of a packet session records every ack-eliciting packet it sends
(``on_packet_sent``); acks of packet numbers (``on_ack``) and the timer
(``on_timeout``) tell it which were received and which are lost. The names
follow the RFC:

* RTT (``RttEstimator``, 5.3): ``latest`` is the time from sending the
  largest newly acknowledged packet to its ack; ``min`` the smallest seen;
  ``smoothed`` and ``variance`` the weighted averages, the peer's ack delay
  (at most ``MAX_ACK_DELAY``) taken off a sample when that leaves it at
  least ``min``. Before the first sample, ``smoothed`` is ``INITIAL_RTT``.
* Loss (6.1): a packet is lost once one sent ``PACKET_THRESHOLD`` or more
  later is acknowledged, or once it was sent ``TIME_THRESHOLD`` (9/8) of
  max(smoothed, latest), at least ``GRANULARITY``, before an acknowledged
  one. The loss timer fires when the next of those times comes without an ack.
* Probe timeout (6.2): smoothed + max(4 x variance, ``GRANULARITY``) +
  ``MAX_ACK_DELAY`` after the last ack-eliciting packet, doubled on every
  expiry in a row; an ack resets the count. An expiry asks the caller to send
  a probe: a packet that elicits an ack. ``MAX_PROBE_TIMEOUTS`` in a row and
  ``failed`` is set: the session is over.
* Persistent congestion (7.6): the lost packets span more than
  ``PERSISTENT_CONGESTION_THRESHOLD`` probe timeouts and no packet sent within
  that span was acknowledged.

Packet numbers are never reused, so every ack names one transmission and
every RTT sample is clean (Karn's problem does not arise). Only ack-eliciting
packets are recorded: a packet holding only acks is not acknowledged, counts
nothing in flight, and is never sent again.

An ack that names a packet number never sent is refused whole
(``on_ack`` returns None): it changes nothing. Numbers already acknowledged
or declared lost are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from common.protocol.congestion import PERSISTENT_CONGESTION_THRESHOLD, NewReno

PACKET_THRESHOLD = 3
TIME_THRESHOLD = 9 / 8
GRANULARITY = 0.001
INITIAL_RTT = 0.1
MAX_ACK_DELAY = 0.025
"""The longest a receiver holds an ack back (fixed by the protocol: 25 ms)."""
MAX_PROBE_TIMEOUTS = 6
"""Probe timeouts in a row that end the session."""


class RttEstimator:
    """The RTT of a path as RFC 9002, 5.3, estimates it (seconds)."""

    def __init__(self) -> None:
        self.latest = 0.0
        self.min = math.inf
        self.smoothed = INITIAL_RTT
        self.variance = INITIAL_RTT / 2
        self.samples = 0
        self._pto = self._probe_timeout()

    def on_sample(self, latest: float, ack_delay: float) -> None:
        """One RTT sample; ``ack_delay`` is what the peer says it held the ack."""
        self.latest = latest
        self.samples += 1
        if self.samples == 1:
            self.min = self.smoothed = latest
            self.variance = latest / 2
            self._pto = self._probe_timeout()
            return
        self.min = min(self.min, latest)
        adjusted = latest
        ack_delay = min(ack_delay, MAX_ACK_DELAY)
        if latest >= self.min + ack_delay:
            adjusted = latest - ack_delay
        self.variance = 0.75 * self.variance + 0.25 * abs(self.smoothed - adjusted)
        self.smoothed = 0.875 * self.smoothed + 0.125 * adjusted
        self._pto = self._probe_timeout()

    def probe_timeout(self) -> float:
        """The probe timeout before any backoff: kept from the last sample, as a sender asks
        for it (its deadline) at every send and every ack, far more often than it changes."""
        return self._pto

    def _probe_timeout(self) -> float:
        return self.smoothed + max(4 * self.variance, GRANULARITY) + MAX_ACK_DELAY

    def loss_delay(self) -> float:
        """How long before an acknowledged packet one must have been sent to be lost."""
        return max(TIME_THRESHOLD * max(self.latest, self.smoothed), GRANULARITY)


@dataclass(slots=True)
class SentPacket:
    """One ack-eliciting packet in flight, and the frames (by ``seq``) it carried."""

    pn: int
    time_sent: float
    size: int
    seqs: Sequence[int] = field(default=())


@dataclass(slots=True)  # not frozen: one is made per ack, and a frozen one costs twice
class AckOutcome:
    """What an ack or a timer found: packets newly acknowledged, and packets lost."""

    acked: list[SentPacket]
    lost: list[SentPacket]


class LossRecovery:
    """The packets one sender has in flight, its RTT, its timers and its window.

    ``next_pn`` is the number the next packet must carry (the caller reports
    every packet through ``on_packet_sent``, ack-only ones as ``None``).
    """

    def __init__(self) -> None:
        self.rtt = RttEstimator()
        self.congestion = NewReno()
        self.next_pn = 0
        self.probe_timeouts = 0
        self.lost_packets = 0
        self.failed = False
        # Ack-eliciting packets in flight, by pn, oldest first.
        self._sent: dict[int, SentPacket] = {}
        self._largest_acked = -1
        # The time_sent of the newest-sent packet ever acknowledged (for persistent congestion).
        self._newest_acked_sent = -math.inf
        self._last_eliciting_sent = -math.inf
        self._loss_time: float | None = None

    @property
    def in_flight(self) -> int:
        """Ack-eliciting packets sent and neither acknowledged nor lost."""
        return len(self._sent)

    def packets(self) -> list[SentPacket]:
        """The packets in flight, oldest first."""
        return list(self._sent.values())

    def on_packet_sent(self, packet: SentPacket | None, now: float) -> int:
        """Take the next pn for a packet; ``None`` for one holding only acks. Returns the pn."""
        pn = self.next_pn
        self.next_pn += 1
        if packet is not None:
            assert packet.pn == pn, "packets are numbered by next_pn"
            self._sent[pn] = packet
            self._last_eliciting_sent = now
            self.congestion.on_sent(packet.size)
        return pn

    def on_unrecorded_sent(self, count: int) -> None:
        """``count`` packets that need no ack were sent: their pns are taken, nothing else."""
        self.next_pn += count

    def on_ack(
        self, ranges: Sequence[tuple[int, int]], ack_delay: float, now: float
    ) -> AckOutcome | None:
        """Take an ack of ``(hi, lo)`` ranges, largest first; None if it names an unsent pn."""
        if not ranges or ranges[0][0] >= self.next_pn:
            return None
        sent = self._sent
        top, bottom = ranges[0]
        found: list[int] = []
        for pn in sent:  # oldest first: only the packets up to the ack's largest are looked at
            if pn > top:
                break
            # Most acks are one range: that case without a loop over the ranges.
            if bottom <= pn or any(lo <= pn <= hi for hi, lo in ranges[1:]):
                found.append(pn)
        acked = [sent.pop(pn) for pn in found]
        if not acked:
            return AckOutcome([], [])
        largest = ranges[0][0]
        self._largest_acked = max(self._largest_acked, largest)
        if acked[-1].pn == largest:
            self.rtt.on_sample(now - acked[-1].time_sent, ack_delay)
        previous_newest = newest = self._newest_acked_sent
        on_acked = self.congestion.on_acked
        for packet in acked:
            on_acked(packet.size, packet.time_sent)
            newest = max(newest, packet.time_sent)
        self._newest_acked_sent = newest
        lost = self._detect_lost(now)
        self._on_lost(lost, acked, previous_newest, now)
        self.probe_timeouts = 0
        return AckOutcome(acked, lost)

    def _detect_lost(self, now: float) -> list[SentPacket]:
        """Declare lost what the thresholds say; arm the loss timer for the rest."""
        self._loss_time = None
        if not self._sent or next(iter(self._sent)) > self._largest_acked:
            return []  # nothing in flight is older than the largest acknowledged: most acks
        delay = self.rtt.loss_delay()
        found: list[int] = []
        for pn, packet in self._sent.items():  # oldest first, up to the largest acknowledged
            if pn > self._largest_acked:
                break
            if packet.time_sent <= now - delay or self._largest_acked >= pn + PACKET_THRESHOLD:
                found.append(pn)
            elif self._loss_time is None:
                self._loss_time = packet.time_sent + delay
        return [self._sent.pop(pn) for pn in found]

    def _on_lost(
        self,
        lost: list[SentPacket],
        acked: list[SentPacket],
        previous_newest: float,
        now: float,
    ) -> None:
        if not lost:
            return
        self.lost_packets += len(lost)
        for packet in lost:
            self.congestion.on_lost(packet.size)
        self.congestion.on_congestion(lost[-1].time_sent, now)
        first, last = lost[0].time_sent, lost[-1].time_sent
        span = self.rtt.probe_timeout() * PERSISTENT_CONGESTION_THRESHOLD
        if (
            self.rtt.samples
            and last - first > span
            and previous_newest < first
            and not any(first < p.time_sent < last for p in acked)
        ):
            self.congestion.on_persistent_congestion()

    def deadline(self) -> float | None:
        """When ``on_timeout`` is next due: the loss timer, else the probe timeout."""
        if self.failed:
            return None
        if self._loss_time is not None:
            return self._loss_time
        if not self._sent:
            return None
        backoff: int = 2**self.probe_timeouts
        return self._last_eliciting_sent + self.rtt.probe_timeout() * backoff

    def on_timeout(self, now: float) -> AckOutcome | None:
        """The timer expired: packets lost by time, or None for a probe timeout.

        After a probe timeout the caller sends a probe (one ack-eliciting
        packet, whatever the window says); ``failed`` is set on the
        ``MAX_PROBE_TIMEOUTS``-th in a row.
        """
        if self._loss_time is not None:
            lost = self._detect_lost(now)
            self._on_lost(lost, [], self._newest_acked_sent, now)
            return AckOutcome([], lost)
        self.probe_timeouts += 1
        if self.probe_timeouts >= MAX_PROBE_TIMEOUTS:
            self.failed = True
        # The next probe timeout counts from the probe, which the caller sends now.
        self._last_eliciting_sent = now
        return None

    def forget(self) -> None:
        """Stop waiting for the packets in flight: nothing they carry needs an answer."""
        for packet in self._sent.values():
            self.congestion.on_forgotten(packet.size)
        self._sent.clear()
        self._loss_time = None
        self.probe_timeouts = 0
