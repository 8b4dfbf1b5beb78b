"""Where the room lives besides this process: the flags ``--history-file`` and ``--redis``.

Without them the room is in memory only and nothing here touches the disk
or imports anything outside the standard library. ``open_sharing`` turns
the flags into what ``Room`` takes: a ``Backplane`` (None: the local one)
and an ``Archive`` (None: no file).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from common.room.room import Archive, Backplane
from common.room.starterror import StartError

DEFAULT_LEASE = 10.0
"""Seconds a server's lease in a shared room lasts unless renewed."""


@dataclass(frozen=True, kw_only=True)
class Sharing:
    """The flags that say where the room is kept and with whom it is shared."""

    history_file: str | None = None
    redis: str | None = None
    room: str = "lobby"
    lease: float = DEFAULT_LEASE

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Sharing:
        return cls(
            history_file=args.history_file, redis=args.redis, room=args.room, lease=args.lease
        )


def open_sharing(sharing: Sharing, history: int) -> tuple[Backplane | None, Archive | None]:
    """The backplane and archive the flags ask for; ``StartError`` when one cannot be had."""
    archive: Archive | None = None
    if sharing.history_file is not None:
        from common.room.historyfile import HistoryFile

        archive = HistoryFile(sharing.history_file, history)
    if sharing.redis is None:
        return None, archive
    try:
        from common.room.redisroom import RedisBackplane
    except ImportError as exc:
        raise StartError(
            f"--redis needs the redis package ({exc.name} is missing): "
            "pip install -r requirements-redis.txt"
        ) from None
    backplane = RedisBackplane(sharing.redis, sharing.room, history=history, lease=sharing.lease)
    return backplane, archive
