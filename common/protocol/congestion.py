"""NewReno congestion control as RFC 9002 (section 7, appendix B) gives it, without I/O.

The window is the bytes a sender may have in flight: sent, ack-eliciting and
neither acknowledged nor declared lost. It starts at ``INITIAL_WINDOW`` and
grows by every byte acknowledged (slow start) until the first loss, then by
about one packet per window acknowledged (congestion avoidance). A loss of a
packet sent after the last reduction halves it (``LOSS_REDUCTION_FACTOR``),
once per round trip: the packets in flight then are the same episode.
Persistent congestion (every packet lost over a long span) takes it down to
``MINIMUM_WINDOW``. A sender that does not fill half its window is limited
by what it has to send, not by the network, and its window does not grow
(RFC 9002, 7.8): a quiet session would otherwise earn a window it never
tested and later burst into it.

Pacing is left out: our senders' bursts are what one pass of the server's
writer finds for a session, a few packets at the window's pace of acks.
"""

from __future__ import annotations

import math

MAX_DATAGRAM_SIZE = 1200
"""The packet size the window is counted in (``MAX_PACKET_BYTES``)."""
INITIAL_WINDOW = 10 * MAX_DATAGRAM_SIZE
MINIMUM_WINDOW = 2 * MAX_DATAGRAM_SIZE
LOSS_REDUCTION_FACTOR = 0.5
PERSISTENT_CONGESTION_THRESHOLD = 3
"""Probe timeouts' worth of loss that makes congestion persistent."""


class NewReno:
    """One sender's congestion window. Times are the caller's monotonic seconds."""

    def __init__(self) -> None:
        self.window = INITIAL_WINDOW
        self.ssthresh = math.inf
        self.bytes_in_flight = 0
        # Packets sent at or before this moment belong to the current recovery.
        self._recovery_start = -math.inf

    @property
    def available(self) -> bool:
        """Whether another packet may go out now: the window is not full."""
        return self.bytes_in_flight < self.window

    def on_sent(self, size: int) -> None:
        self.bytes_in_flight += size

    def on_acked(self, size: int, time_sent: float) -> None:
        """A packet in flight was acknowledged."""
        limited = self.bytes_in_flight * 2 < self.window
        self.bytes_in_flight -= size
        if time_sent <= self._recovery_start or limited:
            return
        if self.window < self.ssthresh:
            self.window += size
        else:
            self.window += MAX_DATAGRAM_SIZE * size // self.window

    def on_lost(self, size: int) -> None:
        """A packet in flight was declared lost (call ``on_congestion`` once per ack)."""
        self.bytes_in_flight -= size

    def on_forgotten(self, size: int) -> None:
        """A packet no longer counts in flight, neither acked nor lost."""
        self.bytes_in_flight -= size

    def on_congestion(self, newest_lost_sent: float, now: float) -> None:
        """Losses were detected, the newest of them sent at ``newest_lost_sent``."""
        if newest_lost_sent <= self._recovery_start:
            return
        self._recovery_start = now
        self.ssthresh = max(int(self.window * LOSS_REDUCTION_FACTOR), MINIMUM_WINDOW)
        self.window = int(self.ssthresh)

    def on_persistent_congestion(self) -> None:
        self.window = MINIMUM_WINDOW
        self._recovery_start = -math.inf
