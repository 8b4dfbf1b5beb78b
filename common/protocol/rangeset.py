"""A small set of packet numbers kept as ranges, for acks, without I/O.

A receiver records the packet numbers it got here and lists them in its acks
as ``[[HI, LO], ...]``, largest first. Packet numbers arrive mostly in order,
so the set is a handful of ranges however many packets it covers. It keeps at
most ``limit`` ranges: past that it forgets the lowest one, the oldest news,
which its peer has long since had acked or declared lost. So a peer that sends
scattered or wild packet numbers costs a bounded set and a bounded ack.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator


class RangeSet:
    """Whole numbers as sorted, disjoint, non-adjacent ranges ``[lo, hi]``, at most ``limit``."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a range set holds at least one range")
        self.limit = limit
        # Parallel sorted lists: range i is [_lows[i], _highs[i]].
        self._lows: list[int] = []
        self._highs: list[int] = []

    def __len__(self) -> int:
        """The number of ranges (not of numbers)."""
        return len(self._lows)

    def __contains__(self, number: int) -> bool:
        i = bisect.bisect_right(self._lows, number) - 1
        return i >= 0 and number <= self._highs[i]

    @property
    def largest(self) -> int | None:
        return self._highs[-1] if self._highs else None

    @property
    def smallest(self) -> int | None:
        return self._lows[0] if self._lows else None

    def add(self, number: int) -> bool:
        """Add ``number``; False if it was already in the set."""
        lows, highs = self._lows, self._highs
        if highs and number == highs[-1] + 1:  # the common case: the next in order
            highs[-1] = number
            self._merge(len(lows) - 1)
            return True
        i = bisect.bisect_right(lows, number) - 1
        if i >= 0 and number <= highs[i]:
            return False
        if i >= 0 and number == highs[i] + 1:
            highs[i] = number
            self._merge(i)
        elif i + 1 < len(lows) and number == lows[i + 1] - 1:
            lows[i + 1] = number
        else:
            lows.insert(i + 1, number)
            highs.insert(i + 1, number)
            if len(lows) > self.limit:
                del lows[0], highs[0]
        return True

    def _merge(self, i: int) -> None:
        """Join range ``i`` with the next one if they now touch."""
        if i + 1 < len(self._lows) and self._highs[i] + 1 >= self._lows[i + 1]:
            self._highs[i] = self._highs[i + 1]
            del self._lows[i + 1], self._highs[i + 1]

    def descending(self) -> Iterator[tuple[int, int]]:
        """The ranges as ``(hi, lo)``, largest first: the order of an ack frame."""
        for i in range(len(self._lows) - 1, -1, -1):
            yield self._highs[i], self._lows[i]

    def clear(self) -> None:
        self._lows.clear()
        self._highs.clear()
