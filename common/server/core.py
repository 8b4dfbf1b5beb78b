"""What a chat server does whatever carries its bytes.

A transport (``tcp.server``, ``udp.server``) accepts or receives, frames and
sends. Everything else it asks here: ``Core`` builds the room from the flags
(``open_sharing``), acts on a frame (the rate limit, the room, the answer to
a bad frame: ``room.refuse``), writes the lines the log shows when someone
joins or leaves, and says ``bye`` to everyone at shutdown; ``Admission`` says
whether a stranger (one that has not said a good ``hello`` yet) may come in.
It does no I/O and holds no lock of its own but ``Admission``'s: the room's
lock orders the rest (see ``common.room.room``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from common.protocol.codec import (
    AlreadyRegistered,
    Bye,
    ClientMessage,
    Hello,
    ProtocolError,
    RateLimited,
    ServerFull,
    name_key,
)
from common.protocol.limits import Limits
from common.room.ratelimit import TokenBucket
from common.room.room import Member, Room
from common.room.sharing import Sharing, open_sharing

POLL_INTERVAL = 0.2
"""Seconds a server's main thread waits at most before it looks at ``stopping`` again."""
SHUTDOWN_GRACE = 1.0
"""Seconds a server waits at shutdown for its clients to take their ``bye``."""
RECV_BYTES = 65536
"""Bytes read at once: a whole datagram, or a good share of a TCP socket's buffer."""
MAX_WAITING = 256
"""Strangers (connections that have not said hello yet) at once, at most; each expires after
--hello-timeout."""
DEFAULT_MAX_WAITING_PER_ADDRESS = 64
"""Of those, from one address at most: a class of 30 behind one NAT all typing their names
fits twice over, clients that say hello at once (the benchmark's, thousands on loopback) are
never near it, and one client opening connections in a loop holds a quarter of the places."""
DEFAULT_MAX_REFUSED_BEFORE_HELLO = 20
"""Frames refused from a stranger, at most: past it the connection is closed. A person
retrying names, or a client that sent a frame too early, is far below it; a flood of frames
before any hello (whose answers nobody may read) ends at once."""
JOIN_RATE = 10_000.0
"""Frames a second that new members may cost the server. A join costs its ``welcome`` and a
``joined`` to every member, so this bounds joins x members: at 100 members, about 100 joins a
second; at 5,000, two (200 users joining at once all get in within about a second). A frame
costs 10 to 20 µs of ``send`` on a small machine, so joins take at most a fifth of a core
however many hellos arrive."""
JOIN_BURST = 10_000

log = logging.getLogger("server")


class Client(Member):
    """A member as a server keeps it: who it is in the log, its rate limit, its refusals."""

    def __init__(self, label: str, limits: Limits, now: float) -> None:
        super().__init__()
        self.label = label
        self.bucket = TokenBucket(limits.rate_limit, limits.burst, now)
        self.refused = 0  # frames refused so far; owned by whoever reads this client

    def tally(self) -> tuple[str, int]:
        """Who this is in the log, and how many of its frames were refused."""
        return f"{self.label} ({self.name or '-'})", self.refused


C = TypeVar("C", bound=Client)


class Core(Generic[C]):
    """The room, and the rules every frame meets on its way in, for both transports."""

    def __init__(
        self, limits: Limits, history: int, sharing: Sharing, logger: logging.Logger, **room: Any
    ) -> None:
        self.limits = limits
        self.log = logger
        backplane, archive = open_sharing(sharing, history)
        self.room: Room[C] = Room(
            max_users=limits.max_users,
            history=history,
            backplane=backplane,
            archive=archive,
            resume_grace=limits.resume_grace,
            **room,
        )

    def act(self, client: C, read: Callable[[], ClientMessage | None], now: float) -> bool:
        """One frame from ``client``, in order: False when its session ends here (``bye``, or a
        full server). ``read`` decodes it once the rate limit let it in (None: nothing to do);
        a frame refused is answered with ``error`` and loses nothing else."""
        try:
            if not client.bucket.allow(now):
                raise RateLimited("slow down: too many frames")
            message = read()
            return message is None or self.room.handle(client, message)
        except ProtocolError as exc:
            self.refuse(client, exc)
            return not isinstance(exc, ServerFull)

    def refuse(self, client: C, problem: ProtocolError) -> None:
        """Answer a bad frame with ``error``; the first is logged, the rest only counted."""
        client.refused += 1
        level = logging.INFO if client.refused == 1 else logging.DEBUG
        self.log.log(
            level, "%s (%s): %s %s", client.label, client.name or "-", problem.code, problem
        )
        self.room.refuse(client, problem)

    @staticmethod
    def hello_again(
        client: C, hello: Hello | None, problem: ProtocolError | None
    ) -> ProtocolError | None:
        """A ``hello`` (or a refused one: ``problem``) from a client already in the room: None
        when it names the client's own name (its welcome was lost: it gets it again), else
        the refusal to answer it with."""
        if hello is not None and name_key(hello.name) == name_key(client.name):
            return None
        return problem or Core.already(client)

    @staticmethod
    def already(client: C) -> AlreadyRegistered:
        """The refusal of a ``hello`` from a client that is in the room already."""
        return AlreadyRegistered(f"you are already registered as {client.name}")

    def joined(self, client: C, how: str) -> None:
        """The log line of a good hello."""
        verb = "resumed" if client.hello.resume is not None else "joined"
        self.log.info("%s %s from %s (%s)", client.name, verb, client.label, how)

    def left(self, name: str | None, reason: str, detail: str = "", *, away: bool = False) -> None:
        """The log line of a member that left (``name`` None: it had not joined)."""
        if name is None:
            return
        what = "is away, its place kept" if away else "left"
        self.log.info("%s %s (%s)%s", name, what, reason, f"; {detail}" if detail else "")

    def say_bye(self, clients: Iterable[C], what: str) -> None:
        """Shutdown: the room takes no more, and every client gets ``bye`` in its place."""
        clients = list(clients)
        self.room.close()
        self.log.info("shutting down: saying bye to %d %s(s)", len(clients), what)
        for client in clients:
            self.room.post(client, Bye(reason="shutdown"))


class Admission:
    """Who may come in before a good ``hello``, for both transports.

    A stranger holds a place while it has not said hello (``arrive`` ...
    ``settle``): ``MAX_WAITING`` in all, ``max_per_address`` from one
    address. A join then costs the server a frame to every member: joins
    are paced by what they cost (``may_join``). Thread-safe: its own lock,
    held for a few dictionary operations, never during I/O.
    """

    def __init__(self, now: float, max_per_address: int = DEFAULT_MAX_WAITING_PER_ADDRESS) -> None:
        self.max_per_address = max_per_address
        self._lock = threading.Lock()
        self._waiting = 0
        self._from: dict[str, int] = {}  # address: its strangers
        self._joins = TokenBucket(JOIN_RATE, JOIN_BURST, now)

    def arrive(self, host: str) -> str | None:
        """Take a stranger's place; or why there is none (the text of its ``server_full``)."""
        with self._lock:
            here = self._from.get(host, 0)
            if here >= self.max_per_address:
                return "too many connections from your address have yet to say hello"
            if self._waiting >= MAX_WAITING:
                return "the server is busy, try again later"
            self._waiting += 1
            self._from[host] = here + 1
            return None

    def settle(self, host: str) -> None:
        """A stranger joined, or went: its place is free."""
        with self._lock:
            self._waiting -= 1
            left = self._from.pop(host) - 1
            if left:
                self._from[host] = left

    def may_join(self, now: float, members: int) -> bool:
        """Whether a join into a room of ``members`` fits the budget now."""
        with self._lock:
            return self._joins.allow(now, members + 1)
