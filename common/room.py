"""The room: who is online, the chat's rules, and the one ordered log.

Both servers keep one ``Room``. It is sans-IO: it never touches a socket,
it only decides who gets what, in which order, and keeps that in memory
until a transport takes it.

The log. Everything the room says to everyone (``msg``, ``joined``,
``left``, ``renamed``) is encoded once and appended once to one ordered
log, in O(1) however many are online. Each member keeps a cursor: its
place in the log. A transport's writer asks ``take(member)`` for all that
member is behind on and writes it (TCP: one ``send`` of the lot; UDP: one
datagram each, stamped with the member's ``seq``). Frames for one member
only (``welcome``, ``dm``, ``users``, ``error``, ...) wait in its
``private`` queue, each with the log position it was posted at, so they
reach it in their right place relative to the log. The log is trimmed
behind the slowest member; how far a member may fall behind is the
transport's limit (``lag``).

History. The last ``history`` messages (``msg`` only) are kept with their
log position. A member's ``welcome`` is posted at a log position; the
answer to ``history`` is the messages before that position, so history
and live traffic never overlap and never leave a gap.

A member's stage is explicit (``Stage``): ``NEW`` until a good ``hello``,
``JOINED`` while in the room, ``GONE`` once it left, after which it acts
no more (whatever its reader still has in hand is ignored).

Locking rule: one lock (``Room.lock``) guards the room: the members, their
names, stages, cursors and private queues, the log and the history. Every
method takes it; none does I/O under it, and none calls out while holding
it. After a change that gives someone something to read, the room calls
the transport's ``wake`` (outside the lock). A transport may hold its own
lock while calling the room (the UDP server does), never the other way
round.
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from common.codec import (
    MAX_FRAME_BYTES,
    AlreadyRegistered,
    Bye,
    ClientMessage,
    Dm,
    Error,
    Hello,
    History,
    HistoryEnd,
    Joined,
    Left,
    Msg,
    NameTaken,
    Nick,
    NoSuchUser,
    NotRegistered,
    Ping,
    Pong,
    ProtocolError,
    Renamed,
    Say,
    SendDm,
    ServerFull,
    ServerMessage,
    Users,
    Welcome,
    Who,
    encode_checked,
    encode_line,
    name_key,
)

DEFAULT_HISTORY = 1000
WELCOME_NAMES = MAX_FRAME_BYTES // 4
"""Names a welcome can hold at most (one-letter names); it is cut to fit, so a join in a
room of thousands builds no longer a list than that."""
TRIM_EVERY = 1024
"""Log entries read by everyone before the log drops them: trimming is amortised."""


def wall_clock_ms() -> int:
    """The ``ts`` of the protocol: integer milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class Entry:
    """One frame as the room keeps it: the message and its JSON line, encoded once.

    ``message`` is None for a line of plain text that only a text-mode TCP
    session gets (its help, its own prompts): ``line`` is then that text.
    ``start`` is the log's size in bytes before this entry (log entries
    only), which is how a member's lag is measured. ``cache`` is the
    transport's own form of the entry, made once for all who get it (TCP:
    the readable line of text mode; UDP: the frame up to its ``seq``).
    """

    message: ServerMessage | None
    line: bytes
    start: int = 0
    cache: bytes | None = None

    @classmethod
    def of(cls, message: ServerMessage) -> Entry:
        return cls(message, encode_line(message))

    @classmethod
    def checked(cls, message: ServerMessage) -> Entry:
        """A message built from a client's text: refused before anyone gets it if too big."""
        return cls(message, encode_checked(message) + b"\n")


class Stage(enum.Enum):
    NEW = "new"
    JOINED = "joined"
    GONE = "gone"


class Member:
    """One session as the room sees it; a transport subclasses it with its own side.

    Every attribute here belongs to the room and is read or written under
    its lock only.
    """

    def __init__(self) -> None:
        self.stage = Stage.NEW
        self.name = ""
        self.cursor = 0
        self.welcomed_at = 0
        self.private: deque[tuple[int, Entry]] = deque()
        self.private_bytes = 0


M = TypeVar("M", bound=Member)


class Room(Generic[M]):
    """The chat's rules and its log. ``wake`` is called when a member has something to read.

    ``M`` is the transport's member class; the room hands members back as such.
    """

    def __init__(
        self,
        *,
        max_users: int,
        history: int = DEFAULT_HISTORY,
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.lock = threading.Lock()
        self._max_users = max_users
        self._wake = wake
        self._clock = clock
        self._by_key: dict[str, M] = {}
        self._members: dict[M, None] = {}  # insertion-ordered: oldest first
        self._log: list[Entry] = []
        self._base = 0  # log position of self._log[0]
        self._bytes = 0  # bytes ever appended to the log
        self._history: deque[tuple[int, Msg]] = deque(maxlen=history)
        self._dirty: set[M] = set()  # members posted to since the last ``pending``
        self._unread = 0  # log position up to which ``pending`` was asked
        self._closed = False

    # ---- the log (lock held) -------------------------------------------

    @property
    def _end(self) -> int:
        return self._base + len(self._log)

    def _append(self, entry: Entry) -> None:
        entry.start = self._bytes
        self._bytes += len(entry.line)
        self._log.append(entry)

    def _post(self, member: M, entry: Entry) -> None:
        member.private.append((self._end, entry))
        member.private_bytes += len(entry.line)
        self._dirty.add(member)

    # ---- what a transport asks ------------------------------------------

    def handle(self, member: M, message: ClientMessage) -> bool:
        """Act on one message from ``member``; False once its session is over.

        A refusal raises ``ProtocolError``; the transport answers it with
        ``refuse``. A member that is gone acts no more.
        """
        with self.lock:
            if member.stage is Stage.GONE:
                return False
            if isinstance(message, Bye):
                if member.stage is Stage.JOINED:
                    self._leave(member, "quit")
                member.stage = Stage.GONE
            elif member.stage is Stage.NEW:
                if not isinstance(message, Hello):
                    raise NotRegistered('say hello first: {"type":"hello","name":"..."}')
                self._join(member, message.name)
            elif isinstance(message, Hello):
                raise AlreadyRegistered(f"you are already registered as {member.name}")
            else:
                self._act(member, message)
            alive = member.stage is not Stage.GONE
        self._wake()
        return alive

    def refuse(self, member: M, problem: ProtocolError) -> None:
        """Answer ``member`` with ``error``, in its place among what it gets."""
        self.post(member, Error.of(problem))

    def post(self, member: M, message: ServerMessage) -> None:
        """Queue ``message`` to ``member`` alone."""
        self.post_entry(member, Entry.of(message))

    def post_entry(self, member: M, entry: Entry) -> None:
        with self.lock:
            self._post(member, entry)
        self._wake()

    def leave(self, member: M, reason: str) -> str | None:
        """Take ``member`` out of the room (once); the others get ``left``. Its name, or None."""
        with self.lock:
            if member.stage is not Stage.JOINED:
                member.stage = Stage.GONE
                return None
            name = member.name
            self._leave(member, reason)
        self._wake()
        return name

    def close(self) -> None:
        """The server stops: from now on nobody is told ``left`` (everyone had ``bye``)."""
        with self.lock:
            self._closed = True

    def pending(self) -> list[M]:
        """The members that may have something new since the last call: the writer's list."""
        with self.lock:
            if self._end == self._unread:
                found = list(self._dirty)
            else:
                self._unread = self._end
                found = list(self._members)
                found += (m for m in self._dirty if m.stage is not Stage.JOINED)
            self._dirty.clear()
            return found

    def take(self, member: M, limit: int | None = None) -> list[Entry] | None:
        """Everything ``member`` is behind on, in order; its cursor moves past it.

        None, and nothing taken, when that is more than ``limit`` bytes: the
        member is too far behind to be caught up.
        """
        with self.lock:
            if limit is not None and self._lag(member) > limit:
                return None
            return self._collect(member)

    def _collect(self, member: M) -> list[Entry]:
        """Merge the log from the member's cursor with its private frames, by position."""
        entries: list[Entry] = []
        joined = member.stage is Stage.JOINED
        at = member.cursor
        for position, entry in member.private:
            if joined and position > at:
                entries += self._slice(at, position)
                at = position
            entries.append(entry)
        member.private.clear()
        member.private_bytes = 0
        if joined:
            entries += self._slice(at, self._end)
            member.cursor = self._end
        return entries

    def _slice(self, start: int, stop: int) -> list[Entry]:
        return self._log[start - self._base : stop - self._base]

    def lag(self, member: M) -> int:
        """Bytes waiting for ``member`` in the room: its part of the log and its private frames."""
        with self.lock:
            return self._lag(member)

    def _lag(self, member: M) -> int:
        behind = 0
        if member.stage is Stage.JOINED and member.cursor < self._end:
            behind = self._bytes - self._log[member.cursor - self._base].start
        return behind + member.private_bytes

    def trim(self) -> None:
        """Forget the log entries every member has read (amortised: in big steps)."""
        with self.lock:
            oldest = min((m.cursor for m in self._members), default=self._end)
            done = oldest - self._base
            if done >= TRIM_EVERY or (done and done * 2 >= len(self._log)):
                del self._log[:done]
                self._base = oldest

    # ---- what a transport may look up ------------------------------------

    def __len__(self) -> int:
        with self.lock:
            return len(self._members)

    def names(self) -> list[str]:
        """The names online, sorted case-insensitively."""
        with self.lock:
            return self._sorted_names()

    def members(self) -> list[M]:
        with self.lock:
            return list(self._members)

    def log_size(self) -> int:
        """Entries the log holds now (bounded by trimming)."""
        with self.lock:
            return len(self._log)

    # ---- the rules (lock held) -------------------------------------------

    def _join(self, member: M, name: str) -> None:
        key = name_key(name)
        holder = self._by_key.get(key)
        if holder is not None:
            raise NameTaken(f"the name {holder.name} is taken")
        if len(self._members) >= self._max_users:
            raise ServerFull(f"the server is full ({self._max_users} users)")
        self._append(Entry.of(Joined(name=name, ts=self._clock())))
        self._by_key[key] = member
        self._members[member] = None
        member.stage = Stage.JOINED
        member.name = name
        member.cursor = member.welcomed_at = self._end
        names = tuple(m.name for m in itertools.islice(self._members, WELCOME_NAMES))
        self._post(member, Entry.of(Welcome(name=name, users=names, count=len(self._members))))

    def _leave(self, member: M, reason: str) -> None:
        """Out of the room; what the log held for it until now stays its to read."""
        for entry in self._collect(member):
            self._post(member, entry)
        member.stage = Stage.GONE
        del self._members[member]
        del self._by_key[name_key(member.name)]
        if not self._closed:  # at shutdown everyone has had bye: no storm of left
            self._append(Entry.of(Left(name=member.name, reason=reason, ts=self._clock())))

    def _act(self, member: M, message: ClientMessage) -> None:
        if isinstance(message, Say):
            msg = Msg(sender=member.name, text=message.text, ts=self._clock())
            self._append(Entry.checked(msg))
            self._history.append((self._end - 1, msg))
        elif isinstance(message, SendDm):
            self._dm(member, message)
        elif isinstance(message, Who):
            names = self._sorted_names()
            self._post(member, Entry.of(Users(names=tuple(names), count=len(names))))
        elif isinstance(message, Nick):
            self._rename(member, message.name)
        elif isinstance(message, Ping):
            self._post(member, Entry.of(Pong()))
        elif isinstance(message, History):
            self._answer_history(member, message.limit)

    def _dm(self, member: M, message: SendDm) -> None:
        target = self._by_key.get(name_key(message.to))
        if target is None:
            raise NoSuchUser(f"nobody called {message.to[:40]} is online")
        entry = Entry.checked(
            Dm(sender=member.name, to=target.name, text=message.text, ts=self._clock())
        )
        self._post(target, entry)
        if target is not member:
            self._post(member, entry)

    def _rename(self, member: M, new: str) -> None:
        key = name_key(new)
        holder = self._by_key.get(key)
        if holder is not None and holder is not member:
            raise NameTaken(f"the name {holder.name} is taken")
        old = member.name
        del self._by_key[name_key(old)]
        self._by_key[key] = member
        member.name = new
        self._append(Entry.of(Renamed(old=old, new=new, ts=self._clock())))

    def _answer_history(self, member: M, limit: int) -> None:
        """The ``limit`` latest messages from before ``member``'s welcome, oldest first."""
        before = (msg for position, msg in reversed(self._history) if position < member.welcomed_at)
        found = list(itertools.islice(before, limit))
        for msg in reversed(found):
            self._post(
                member, Entry.of(Msg(sender=msg.sender, text=msg.text, ts=msg.ts, history=True))
            )
        self._post(member, Entry.of(HistoryEnd(count=len(found))))

    def _sorted_names(self) -> list[str]:
        return sorted((m.name for m in self._members), key=name_key)
