"""The UDP envelope as a codec: a datagram's bytes in, what the server must know of it out.

Over UDP every frame travels in an envelope: its ``seq`` (reliable sessions number their
frames) and its ``session`` token (the proof that it comes from the session's client). A
server must read the envelope even of a frame the codec refuses: a refused ``hello`` is
answered as a hello is, and a refused frame with a ``seq`` is still acked and counted in
order. ``read_datagram`` does that once per datagram, sans-IO.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from common.protocol.codec import (
    BadFrame,
    ClientMessage,
    Hello,
    ProtocolError,
    TooLarge,
    decode_client,
)


@dataclass(frozen=True, slots=True)
class Datagram:
    """One frame as a UDP server reads it: its message, or why the codec refused it.

    ``unreadable`` is a refusal of the bytes themselves (not a JSON object, or too large):
    such a frame has no envelope. Otherwise ``seq`` and ``token`` are the envelope's, where
    it has them, and ``hello`` says whether it is a ``hello`` (good or refused).
    """

    data: bytes
    message: ClientMessage | None
    problem: ProtocolError | None = None
    seq: int | None = None
    token: str | None = None
    hello: bool = False
    unreadable: bool = False


def read_datagram(data: bytes) -> Datagram:
    """Decode ``data``; a refusal is part of what comes out, never an exception."""
    try:
        decoded = decode_client(data)
    except (BadFrame, TooLarge) as exc:
        return Datagram(data, None, exc, unreadable=True)
    except ProtocolError as exc:
        kind, seq, token = envelope_of(data)
        return Datagram(data, None, exc, seq, token, hello=kind == "hello")
    message: ClientMessage = decoded.message
    return Datagram(data, message, None, decoded.seq, decoded.session, isinstance(message, Hello))


def envelope_of(data: bytes) -> tuple[str | None, int | None, str | None]:
    """The type, ``seq`` and ``session`` of a frame the codec refused, where it has them."""
    try:
        obj: Any = json.loads(data)
    except (ValueError, RecursionError):
        return None, None, None
    if not isinstance(obj, dict):
        return None, None, None
    kind, seq, token = obj.get("type"), obj.get("seq"), obj.get("session")
    return (
        kind if isinstance(kind, str) else None,
        seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1 else None,
        token if isinstance(token, str) else None,
    )
