"""Who is online: the one shared table of both servers.

A member is whatever object a transport uses for a session (a TCP
connection, a UDP session); the registry maps case-folded names to members
and back, and nothing else in a server keeps such a table.

Locking rule: one lock guards the table. Callbacks given to ``join``,
``rename`` and ``fan_out`` run while it is held, so that what they do is
ordered with every other change to the table and every other fan-out: two
broadcasts reach all members in one and the same order, and a newcomer's
``welcome`` is queued before any broadcast can reach it. Those callbacks
must therefore be quick and must not do socket I/O; they queue bytes, and
the transport writes them after the lock is released. A member's own lock
may be taken inside this one, never the other way round.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from common.codec import AlreadyRegistered, NameTaken, ServerFull, name_key

M = TypeVar("M", bound=Hashable)


class Registry(Generic[M]):
    """Thread-safe map of unique (case-insensitive) names to members."""

    def __init__(self, max_users: int) -> None:
        self._max_users = max_users
        self._lock = threading.Lock()
        self._by_key: dict[str, M] = {}
        self._names: dict[M, str] = {}

    def join(
        self, name: str, member: M, greet: Callable[[list[str]], None] | None = None
    ) -> list[str]:
        """Register ``member`` as ``name``; return the names online, oldest first.

        ``greet`` gets those names under the lock, so the welcome it queues
        comes before anything broadcast after the join. They are not sorted:
        a join must cost little even with thousands online.
        """
        key = name_key(name)
        with self._lock:
            if member in self._names:
                raise AlreadyRegistered(f"you are already registered as {self._names[member]}")
            if key in self._by_key:
                raise NameTaken(f"the name {self._names[self._by_key[key]]} is taken")
            if len(self._names) >= self._max_users:
                raise ServerFull(f"the server is full ({self._max_users} users)")
            self._by_key[key] = member
            self._names[member] = name
            names = list(self._names.values())
            if greet is not None:
                greet(names)
            return names

    def leave(self, member: M) -> str | None:
        """Unregister ``member``; return the name it had, or None if it had none."""
        with self._lock:
            name = self._names.pop(member, None)
            if name is not None:
                del self._by_key[name_key(name)]
            return name

    def rename(self, member: M, new: str) -> str:
        """Give ``member`` the name ``new``; return its old name.

        A change of case only (``bob`` to ``Bob``) is allowed: the name is
        taken by the member itself.
        """
        key = name_key(new)
        with self._lock:
            old = self._names[member]
            holder = self._by_key.get(key)
            if holder is not None and holder is not member:
                raise NameTaken(f"the name {self._names[holder]} is taken")
            del self._by_key[name_key(old)]
            self._by_key[key] = member
            self._names[member] = new
            return old

    def find(self, name: str) -> tuple[M, str] | None:
        """The member called ``name`` (any case) and its name as registered."""
        with self._lock:
            member = self._by_key.get(name_key(name))
            return None if member is None else (member, self._names[member])

    def name_of(self, member: M) -> str | None:
        with self._lock:
            return self._names.get(member)

    def names(self) -> list[str]:
        """The names online, sorted case-insensitively."""
        with self._lock:
            return sorted(self._names.values(), key=name_key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._names)

    def members(self) -> list[M]:
        """A snapshot of the members, to work through without the lock."""
        with self._lock:
            return list(self._names)

    def fan_out(self, deliver: Callable[[M], object], *, exclude: M | None = None) -> None:
        """Call ``deliver`` for every member (but ``exclude``) under the lock.

        Holding the lock across the whole loop is what gives every member
        the broadcasts in the same order; ``deliver`` only queues bytes.
        """
        with self._lock:
            for member in self._names:
                if member is not exclude:
                    deliver(member)
