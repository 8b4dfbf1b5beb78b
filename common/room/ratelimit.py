"""A token bucket: how many frames a session may send, sustained and in a burst.

It reads no clock: the caller passes ``now`` (monotonic seconds), so tests
drive time by hand and both servers share it unchanged.
"""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens a second refill a bucket of ``burst``; a frame takes one.

    What costs more than a frame may take more (``cost``).

    A ``rate`` of 0 turns the limit off: every frame is allowed.
    """

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(max(burst, 1))
        self._tokens = self._burst
        self._stamp = now

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if the bucket has them (a cost over ``burst`` takes a full one)."""
        if self._rate <= 0:
            return True
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        cost = min(cost, self._burst)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False
