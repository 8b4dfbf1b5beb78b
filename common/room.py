"""What a registered user's message does: the chat itself, once for both servers.

A server hands ``act`` every message from a registered user that is not
about the session itself (``hello``, ``bye``, ``ack`` stay with the
transport). ``act`` decides who gets what and says so through the server's
``broadcast`` and ``send_to``; how the bytes travel (a TCP outbox, a UDP
datagram with its ``seq``) is the server's business. Refusals are raised
as ``ProtocolError``: the server answers them with ``error``.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Protocol, TypeVar

from common.codec import (
    ClientMessage,
    Dm,
    Msg,
    Nick,
    NoSuchUser,
    Ping,
    Pong,
    Renamed,
    Say,
    SendDm,
    ServerMessage,
    Users,
    Who,
    encode_checked,
)
from common.registry import Registry
from common.serverargs import now_ms

log = logging.getLogger("chat")

M = TypeVar("M", bound=Hashable)


class Room(Protocol[M]):
    """What ``act`` needs of a server."""

    @property
    def registry(self) -> Registry[M]: ...

    def broadcast(self, message: ServerMessage, exclude: M | None = None) -> None:
        """Queue ``message`` to every registered user, in one order for all."""

    def send_to(self, member: M, message: ServerMessage) -> None:
        """Queue ``message`` to one user."""


def act(room: Room[M], member: M, name: str, message: ClientMessage) -> None:
    """Carry out ``say``, ``dm``, ``who``, ``nick`` or ``ping`` from ``member``, called ``name``."""
    if isinstance(message, Say):
        room.broadcast(Msg(sender=name, text=message.text, ts=now_ms()))
    elif isinstance(message, SendDm):
        found = room.registry.find(message.to)
        if found is None:
            raise NoSuchUser(f"nobody called {message.to[:40]} is online")
        target, target_name = found
        dm = Dm(sender=name, to=target_name, text=message.text, ts=now_ms())
        encode_checked(dm)
        room.send_to(target, dm)
        if target is not member:
            room.send_to(member, dm)
    elif isinstance(message, Who):
        names = room.registry.names()
        room.send_to(member, Users(names=tuple(names), count=len(names)))
    elif isinstance(message, Nick):
        old = room.registry.rename(member, message.name)
        log.info("%s renamed to %s", old, message.name)
        room.broadcast(Renamed(old=old, new=message.name, ts=now_ms()))
    elif isinstance(message, Ping):
        room.send_to(member, Pong())
