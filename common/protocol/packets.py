"""The packet format of UDP packet sessions (protocol v1.2), without I/O.

A packet is one datagram: a header line ``{"pn":N}`` (a client's adds
``"session"``), then one frame per line, as on TCP::

    {"pn":7,"session":"9f2c..."}
    {"type":"say","text":"hi","seq":3}
    {"type":"ack","ranges":[[41,30],[28,0]],"delay":3}

Every line ends with ``\\n`` when we write it; a reader also takes a last line
without one, ignores a trailing ``\\r`` and blank lines. A sender fills
packets of at most ``MAX_PACKET_BYTES`` with as many frames as fit, in order
(``common.protocol.packetlink``); a frame too big for any packet goes alone in
its own (frames are at most ``MAX_FRAME_BYTES``, so a datagram never exceeds
``MAX_DATAGRAM_BYTES``).

``parse`` refuses a packet whole (``BadPacket``) when its header is not a
JSON object with a whole ``pn`` from 0 up (and a string ``session`` if any),
when it holds no frame, or when it is bigger than any packet can be. It does
not look inside the frames: each is the codec's, one at a time, so one bad
frame costs only itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from common.protocol.codec import MAX_ACK_RANGES, MAX_FRAME_BYTES

MAX_PACKET_BYTES = 1200
"""A packet's size unless one frame alone is bigger: QUIC's smallest datagram, which
crosses any path without IP fragmentation."""

MAX_HEADER_BYTES = 128
"""Room for the longest header: a packet number and a session token."""

MAX_DATAGRAM_BYTES = MAX_FRAME_BYTES + MAX_HEADER_BYTES
"""The biggest packet: a header and one frame as big as a frame may be."""

_HEADER = re.compile(rb'\{"pn":(0|[1-9][0-9]{0,17})(?:,"session":"([0-9a-f]{1,64})")?\}')
"""The header as we write it, read without the JSON parser; any other spelling
takes the general path."""

_PN = rb"(?:0|[1-9][0-9]{0,17})"
_ACK = re.compile(
    rb'\{"type":"ack","ranges":\[(\[%s,%s\](?:,\[%s,%s\]){0,%d})\],"delay":(%s)\}'
    % (_PN, _PN, _PN, _PN, MAX_ACK_RANGES - 1, _PN)
)
"""An ack of a packet session as we write it, its ranges within the bound."""
_RANGE = re.compile(rb"\[([0-9]+),([0-9]+)\]")
_ONE_RANGE = re.compile(
    rb'\{"type":"ack","ranges":\[\[(%s),(%s)\]\],"delay":(%s)\}' % (_PN, _PN, _PN)
)
"""The ack of one range, as most acks are: read without looking for more."""

Acks = list[tuple[tuple[tuple[int, int], ...], int]]
"""The acks of a packet: each one's ``(hi, lo)`` ranges, largest first, and its delay (ms)."""


class BadPacket(Exception):
    """A datagram that is not a packet: dropped whole, unanswered."""


@dataclass(slots=True)
class Packet:
    """One parsed packet: its number, the sender's token (clients only) and its frames.

    Not frozen: one is made per packet received, and a frozen one costs twice as much."""

    pn: int
    session: str | None
    frames: list[bytes]


def header(pn: int, session: str | None = None) -> bytes:
    """The header line of packet ``pn``, ``\\n`` included."""
    if session is None:
        return b'{"pn":%d}\n' % pn
    return b'{"pn":%d,"session":"%s"}\n' % (pn, session.encode("ascii"))


class SharedPacking:
    """The same frames packed for many sessions of a server: built once, numbered per session.

    ``prefixes`` are frames cut just before their ``seq``'s digits (``"...,\"seq\":"``). The
    packets are laid out once as ``%``-templates, a header and every frame's line with their
    numbers left out, and ``packets(pn, seq)`` fills in one session's packet numbers and seqs:
    one formatting per packet, whatever it carries. Where a packet ends depends on how many
    digits its numbers have, so a layout is kept per count of digits (and made afresh where
    they change within the packets); it is the one ``PacketLink`` would pack, packet for packet.
    """

    __slots__ = ("_last", "_layouts", "prefixes", "size")

    def __init__(self, prefixes: Sequence[bytes]) -> None:
        self.prefixes = prefixes
        self.size = sum(map(len, prefixes))  # what a session holding them all holds of them
        self._layouts: dict[tuple[int, int], list[tuple[bytes, int]]] = {}
        # The last layout kept, and the first pns and seqs it holds for: (pn from, pn to,
        # seq from, seq to, layout), "to" excluded. Most sessions of a pass fall in it.
        self._last: tuple[int, int, int, int, list[tuple[bytes, int]]] = (0, 0, 0, 0, [])

    def packets(self, pn: int, seq: int) -> list[bytes]:
        """The packets of these frames, numbered from ``pn``, their seqs from ``seq``."""
        datagrams = []
        for template, frames in self.layout(pn, seq):
            datagrams.append(template % (pn, *range(seq, seq + frames)))
            pn += 1
            seq += frames
        return datagrams

    def layout(self, pn: int, seq: int) -> list[tuple[bytes, int]]:
        """Each packet's template and how many frames it holds, numbered from ``pn`` and
        ``seq``: a packet is its template ``%`` its pn, then its frames' seqs."""
        pn_from, pn_to, seq_from, seq_to, last = self._last
        if pn_from <= pn < pn_to and seq_from <= seq < seq_to:
            return last
        count = len(self.prefixes)
        pn_digits, seq_digits = len(str(pn)), len(str(seq))
        if len(str(pn + count)) != pn_digits or len(str(seq + count - 1)) != seq_digits:
            return self._layout(pn, seq)
        key = (pn_digits, seq_digits)
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._layouts[key] = self._layout(pn, seq)
        # Where the same digits hold: pn + count and seq + count - 1 keep them too.
        self._last = (
            _low(pn_digits),
            10**pn_digits - count,
            _low(seq_digits),
            10**seq_digits - count + 1,
            layout,
        )
        return layout

    def _layout(self, pn: int, seq: int) -> list[tuple[bytes, int]]:
        """Where each packet ends for numbers from ``pn`` and ``seq``: (template, frames)."""
        layout: list[tuple[bytes, int]] = []
        parts: list[bytes] = []
        size = 0
        for prefix in self.prefixes:
            line = len(prefix) + len(str(seq)) + 2  # its digits, "}" and "\n"
            if parts and size + line > MAX_PACKET_BYTES:
                layout.append((b"".join(parts), len(parts) - 1))
                parts = []
                pn += 1
            if not parts:
                parts.append(b'{"pn":%d}\n')
                size = len(header(pn))
            parts.append(prefix.replace(b"%", b"%%") + b"%d}\n")
            size += line
            seq += 1
        if parts:
            layout.append((b"".join(parts), len(parts) - 1))
        return layout


def _low(digits: int) -> int:
    """The least number written with ``digits`` digits."""
    return 0 if digits == 1 else 10 ** (digits - 1)


def parse(data: bytes) -> Packet:
    """Split a datagram into its header and frame lines; ``BadPacket`` if it is none."""
    if len(data) > MAX_DATAGRAM_BYTES:
        raise BadPacket(f"a packet is at most {MAX_DATAGRAM_BYTES} bytes")
    lines = data.split(b"\n")
    first = lines[0].rstrip(b"\r")
    if (fast := _HEADER.fullmatch(first)) is not None:
        pn = int(fast[1])
        session = fast[2].decode("ascii") if fast[2] is not None else None
    else:
        pn, session = _header(first)
    frames = [line.rstrip(b"\r") for line in lines[1:] if line.strip()]
    if not frames:
        raise BadPacket("a packet holds at least one frame")
    return Packet(pn, session, frames)


def ack_only(frames: Sequence[bytes]) -> Acks | None:
    """The acks of a packet that holds nothing else, each as the codec reads it; None if a
    frame is anything else, or not spelled as we write it (the codec then reads it, and
    refuses what it must). Most of what a busy reliable room sends a server is such packets:
    this reads them without the JSON parser and without a message object per frame."""
    acks: Acks = []
    for frame in frames:
        if (one := _ONE_RANGE.fullmatch(frame)) is not None:
            hi, lo = int(one[1]), int(one[2])
            if hi < lo:
                return None
            acks.append((((hi, lo),), int(one[3])))
            continue
        match = _ACK.fullmatch(frame)
        if match is None:
            return None
        ranges = tuple((int(hi), int(lo)) for hi, lo in _RANGE.findall(match[1]))
        below = None
        for hi, lo in ranges:
            if hi < lo or (below is not None and hi >= below):
                return None
            below = lo
        acks.append((ranges, int(match[2])))
    return acks


def _header(line: bytes) -> tuple[int, str | None]:
    try:
        obj: Any = json.loads(line)
    except (ValueError, RecursionError):
        raise BadPacket("a packet starts with a JSON header line") from None
    if not isinstance(obj, dict):
        raise BadPacket("a packet header is a JSON object")
    pn, session = obj.get("pn"), obj.get("session")
    if not (isinstance(pn, int) and not isinstance(pn, bool) and pn >= 0):
        raise BadPacket("a packet header has a whole 'pn' from 0 up")
    if session is not None and not isinstance(session, str):
        raise BadPacket("a packet header's 'session' is a string")
    return pn, session
