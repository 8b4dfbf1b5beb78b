"""What a chat server does whatever carries its bytes.

A transport (``tcp.server``, ``udp.server``) accepts or receives, frames and
sends. Everything else it asks here: ``Core`` builds the room from the flags
(``open_sharing``), acts on a frame (the rate limit, the room, the answer to
a bad frame: ``room.refuse``), writes the lines the log shows when someone
joins or leaves, and says ``bye`` to everyone at shutdown; ``Admission`` says
whether a stranger (one that has not said a good ``hello`` yet) may come in,
and whether a join fits the budget of what joins may cost.
It does no I/O and holds no lock of its own but ``Admission``'s: the room's
lock orders the rest (see ``common.room.room``).
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from common.protocol.codec import (
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
from common.room.room import ENDED, Member, Room, Stage, already_registered
from common.room.sharing import Sharing, open_sharing

POLL_INTERVAL = 0.2
"""Seconds a server's main thread waits at most before it looks at ``stopping`` again."""
SHUTDOWN_GRACE = 1.0
"""Seconds a server waits at shutdown for its clients to take their ``bye``."""
RECV_BYTES = 65536
"""Bytes read at once: a whole datagram, or a good share of a TCP socket's buffer."""
MAX_WAITING = 256
"""Strangers (see ``Admission``) at once, at most: a TCP one expires after --hello-timeout, a
UDP one once the room acted on its hello."""
BUSY = "the server is busy, try again later"
"""Why a stranger is refused when the server has no place for it, or a join over the budget."""
DEFAULT_MAX_WAITING_PER_ADDRESS = 64
"""Of those, from one address at most: a class of 30 behind one NAT all typing their names
fits twice over, clients that say hello at once (the benchmark's, thousands on loopback) are
never near it, and one client opening connections in a loop holds a quarter of the places."""
DEFAULT_MAX_REFUSED_BEFORE_HELLO = 20
"""Frames refused from a stranger, at most: past it the connection is closed. A person
retrying names, or a client that sent a frame too early, is far below it; a flood of frames
before any hello (whose answers nobody may read) ends at once."""
JOIN_RATE = 10_000.0
"""Sends a second that new members may cost the server. On UDP a join costs its ``welcome``
and a ``joined`` to every member, a datagram each, so this bounds joins x members: at 100
members, about 100 joins a second; at 5,000, two (200 users joining at once all get in within
about a second). On TCP it costs one send, its ``welcome``: the ``joined`` rides in the sends
the writer makes anyway, so TCP joins are bounded at JOIN_RATE a second. A send costs 10 to
20 µs on a small machine, so joins take at most a fifth of a core however many hellos
arrive."""
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


class Again(enum.Enum):
    """What a ``hello`` again gets when it is not refused (``Core.hello_again``)."""

    UNDER_WAY = "under_way"  # the first is still being acted on: its answer is on its way
    WELCOME = "welcome"  # it names the client's own name: its welcome was lost, it gets it again


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
        """One frame from ``client``, in order: False when its session is over here (``bye``,
        a full server, or the room ended it). ``read`` decodes it once the rate limit let it in
        (None: nothing to do); a frame refused is answered with ``error`` and loses nothing else.

        A frame from a client whose hello is under way (``CLAIMING``: UDP acts on a hello on
        a thread of its own), or whose session went on elsewhere (``TAKEN``, ``AWAY``: its
        transport was told), is not acted on, nor counted against its rate limit.
        """
        if client.stage is Stage.GONE:
            return False
        if client.stage in ENDED or client.stage is Stage.CLAIMING:
            return True
        try:
            if not client.bucket.allow(now):
                raise RateLimited("slow down: too many frames")
            message = read()
            return message is None or self.room.handle(client, message)
        except ProtocolError as exc:
            self.refuse(client, exc)
            return not isinstance(exc, ServerFull)

    @staticmethod
    def blank(client: C, now: float) -> None:
        """An empty line (TCP): ignored, but no cheaper than a frame for the rate limit; past
        it, counted as refused, unanswered (an answer per blank line would be a flood's)."""
        if not client.bucket.allow(now):
            client.refused += 1

    def refuse(self, client: C, problem: ProtocolError) -> None:
        """Answer a bad frame with ``error``; the first is logged, the rest only counted."""
        client.refused += 1
        level = logging.INFO if client.refused == 1 else logging.DEBUG
        self.log.log(
            level, "%s (%s): %s %s", client.label, client.name or "-", problem.code, problem
        )
        self.room.refuse(client, problem)

    @staticmethod
    def in_room(client: C) -> bool:
        """Whether ``client`` is in the room: its hello done, its session not over."""
        return client.stage is Stage.JOINED

    @staticmethod
    def hello_again(
        client: C, hello: Hello | None, problem: ProtocolError | None
    ) -> Again | ProtocolError:
        """A ``hello`` (or a refused one: ``problem``) from a client that said one already
        (UDP, where the answer may be lost): the refusal to answer it with, or ``Again``."""
        if client.stage in (Stage.NEW, Stage.CLAIMING):
            return Again.UNDER_WAY
        if hello is not None and name_key(hello.name) == name_key(client.name):
            return Again.WELCOME
        return problem or already_registered(client)

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
    """Who may come in before a good ``hello``: one rule for both transports.

    A stranger is whoever holds something of the server's before it is in
    the room. It takes a place when it comes (``arrive``) and gives it back
    once it joined or went (``settle``): ``MAX_WAITING`` in all, and
    ``max_per_address`` from one proven address. On TCP a stranger is a
    connection, from accept to its join: it holds a socket and a thread for
    up to --hello-timeout, so one host opening connections in a loop must
    not take the newcomers' places. UDP has no connection before a
    ``hello``: a stranger is a session filed for a hello, from then until
    the room acted on it (it holds a session, a place in the hellos' queue
    and, on a shared room, a claim's round trip to Redis). Its address is
    not proven, so it has no share of one (``host`` None): a share per
    address would let anyone shut an address out by forging its hellos,
    and the place is held only while the room acts, not for a timeout, so
    no host can hoard places; many clients behind one address (thousands on
    loopback) say hello at once.

    A join then costs the server its sends (``JOIN_RATE``): joins are paced
    by what they cost (``may_join``). Past either bound, a TCP stranger is
    told ``server_full`` and closed; a UDP hello is dropped unanswered (its
    client says hello again a second later, and no answer goes to an address
    nobody proved). Thread-safe: its own lock, held for a few dictionary
    operations, never during I/O.
    """

    def __init__(self, now: float, max_per_address: int = DEFAULT_MAX_WAITING_PER_ADDRESS) -> None:
        self.max_per_address = max_per_address
        self._lock = threading.Lock()
        self._waiting = 0
        self._from: dict[str, int] = {}  # address: its strangers
        self._joins = TokenBucket(JOIN_RATE, JOIN_BURST, now)

    def arrive(self, host: str | None) -> str | None:
        """Take a stranger's place (``host`` None: no proven address, counted in all only); or
        why there is none (the text of its ``server_full``)."""
        with self._lock:
            here = 0 if host is None else self._from.get(host, 0)
            if here >= self.max_per_address:
                return "too many connections from your address have yet to say hello"
            if self._waiting >= MAX_WAITING:
                return BUSY
            self._waiting += 1
            if host is not None:
                self._from[host] = here + 1
            return None

    def settle(self, host: str | None) -> None:
        """A stranger joined, or went: its place is free."""
        with self._lock:
            self._waiting -= 1
            if host is not None and (left := self._from.pop(host) - 1):
                self._from[host] = left

    def may_join(self, now: float, sends: int) -> bool:
        """Whether a join that costs the server ``sends`` fits the budget now."""
        with self._lock:
            return self._joins.allow(now, sends)
