"""The room: who is online, the chat's rules, and the one ordered log.

Both servers keep one ``Room``. It is sans-IO: it never touches a socket,
it only decides who gets what, in which order, and keeps that in memory
until a transport takes it.

The log. Everything the room says to everyone (``msg``, ``joined``,
``left``, ``renamed``) is encoded once and appended once to one ordered
log, in O(1) however many are online. Each member keeps a cursor: its
place in the log. A transport's writer asks ``take(member)`` for all that
member is behind on and writes it (TCP: one ``send`` of the lot; UDP: one
datagram each, stamped with the member's ``seq``); ``take_lines`` gives the
same as bytes, joined once for every member at the same place. Frames for
one member only (``welcome``, ``dm``, ``users``, ``error``, ...) wait in its
``private`` queue, each with the log position it was posted at, so they
reach it in their right place relative to the log. The log is trimmed
behind the slowest member; how far a member may fall behind is the
transport's limit (``lag``), which a transport applies only to a member that
does not read: the room never refuses to hand over what a member is behind on.

Backlog. The writer's own delay is bounded here, not charged to the readers.
``pending`` starts a writer's pass and ``caught_up`` ends it: after it, every
member that reads has everything said before that pass began. ``backlog`` is
what was said since: what the fastest reader may still be waiting for only
because the writer is behind. In a room made with ``max_backlog``, a ``say``
or ``dm`` waits, before it is handled, while the backlog is past that bound,
until a pass ends under it: the member's reader stops reading, and TCP slows
the talker, in order, losing nothing. The readers wait on one event,
``_room_for_more`` (cleared when the backlog passes the bound, set when a
pass ends under it or the room closes), with no lock held; those that looked
at the same moment may each add one frame past the bound, no more.

A room with ``max_backlog`` (flow control: the TCP server's) holds a ``say``
or ``dm`` the same way while its backplane is ``busy`` (a shared one with
too many of this server's events on their way): the reader waits in the
backplane's ``wait_while_busy``, no lock held, and if it finds the backplane
busy again once it has the lock (others woken with it got there first), it
waits again: no ``say`` or ``dm`` takes the backplane past its bound. That
wait also ends when the order is lost or the room closes; the message is
then refused (``Unavailable``), so no reader hangs. A room without flow
control (UDP: nothing would slow the sender) refuses a ``say`` or ``dm``
while the backplane is busy (``RateLimited``).

History. The last ``history`` messages (``msg`` only) are kept with their
log position. A member's ``welcome`` is posted at a log position; the
answer to ``history`` is the messages before that position, so history
and live traffic never overlap and never leave a gap. An answer waits in the
member's private queue as the list of messages it holds (``HistoryAnswer``)
and is joined only when taken, one answer per ``take``: it is built as fast
as the member takes it, and counts towards its ``lag`` (at about its size)
before that. Each kept message's copy as history sends it is encoded once,
the first time it is asked for, and shared by every answer and resume.

Leaving. A member that quits still gets what was said before it left. One
whose connection ended (``disconnected``) gets only its own frames already
queued (an ``error``): the room's traffic is not copied for a peer that is
gone, so many leaving at once cost what is really left to do. One dropped
as ``too_slow`` gets nothing more.

Backplane. What the room says to everyone (``joined``, ``left``,
``renamed``, ``msg``) and every ``dm`` goes through the room's
``Backplane``, the one place that orders it. The default, ``LocalBackplane``,
applies it at once, under the lock, in O(1): one server is its own order.
A shared one (``common.room.redisroom``) queues it to be ordered with the other
servers' and hands it back, in that order, through ``receive``: the log is
then a copy of the shared order, and a member's own words reach it only
that way. So joining takes two steps: the name is reserved here and
claimed on the backplane (``claim``, outside the lock: it may do I/O),
then ``joined`` is published and the member is welcomed at the point
where it comes back. ``roster`` is everyone in the room, on any server,
as the ordered events tell it; ``who``, ``count`` and ``welcome`` list it.

A member's stage is explicit (``Stage``) and changes in one function
(``_move``), along ``MOVES``: ``NEW`` until a good ``hello``, ``CLAIMING``
while its name is reserved here and claimed on the backplane (back to
``NEW`` if the claim fails), ``JOINED`` while in the room,
``GONE`` once it left, after which it acts no more (whatever its reader
still has in hand is ignored). Resume (protocol 1.2) adds two: a member
that said ``resumable`` and whose connection broke without ``bye`` is
``AWAY`` for the grace (``resume_grace``): its name stays taken, nobody is
told, and only once the grace is over (``expire``) do the others get its
``left``. A ``hello`` with ``resume`` naming its session token takes over
a member that holds that name (``JOINED``, its connection maybe half open,
or ``AWAY``): the old member is ``TAKEN`` (the transport closes its
connection without a word, through ``on_taken``) and the new one is in the
room under the same name and token, with no ``left`` or ``joined``.

Ids and epoch. Every log entry the room says to everyone gets an ``id``
where it is put in the order (``apply``): the backplane's (a Redis stream
id) or the room's own count, continued from the archive's. The ``epoch``
names this life of the history: new at every start in memory, kept by
the archive or the backplane. ``floor`` is the id of the newest ``msg``
the room no longer has (forgotten past ``--history``, or lost with a
killed process): a resume after an id at or past it gets every message
since; one before it, or in another epoch, gets ``resumed: false``.

Locking rule: one lock (``Room.lock``) guards the room: the members, their
names, stages, cursors and private queues, the log, the history and the
backlog. Every method that reads or changes them takes it, and none does I/O
under it. What it calls out to while holding it is the clock, the
backplane's ``publish`` (and its ``ready`` and ``busy``, read) and the
archive's ``add`` and ``given``: each O(1), none may block. A hello waits
for its ``joined`` to come back on a condition of that lock (``_changed``),
which lets go of it meanwhile; a ``say`` held back waits on the room's event
or in the backplane's ``wait_while_busy``, with no lock held. The
backplane's ``claim``, ``claim_session``, ``take_over`` and ``close``, which
may do I/O, are called outside it. After a change that gives someone
something to read, the room calls the transport's ``wake`` (outside the
lock), and after a takeover its ``on_taken`` (outside the lock too, from
whichever thread brought the resume: a reader's, or a backplane's). A
transport may hold its own lock while calling the room (the UDP server
does), never the other way round.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import hmac
import itertools
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from common.protocol.codec import (
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
    RateLimited,
    Renamed,
    Resume,
    Say,
    SendDm,
    ServerFull,
    ServerMessage,
    Unavailable,
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
JOIN_WAIT = 5.0
"""Seconds a hello waits for its ``joined`` to come back from a shared backplane."""
EARLIER = -1
"""The log position of messages loaded at start: before every member's welcome."""
DEFAULT_RESUME_GRACE = 10.0
"""Seconds a resumable member whose connection broke keeps its place (``--resume-grace``)."""
TOKEN_BYTES = 16
"""A session token's random bytes: 128 bits, written as 32 hex digits."""
RESUME_MAX_BYTES = 256 * 1024
"""Bytes of missed messages a resume is answered with at most; past that it is answered
``resumed: false`` (the client then asks ``history`` as a newcomer does) rather than queue
more than a slow link or a TCP writer's limit would take."""
RESUMABLE_REASONS = frozenset({"disconnected", "timeout"})
"""Ways a connection ends that a resumable member survives for the grace; ``quit``,
``too_slow`` and ``shutdown`` end it at once."""

IdKey = tuple[int, ...]
"""An id as the room compares it: ``"17"`` is (17,), a Redis ``"1764000000000-3"`` is
(1764000000000, 3). Clients never parse ids; only the room compares them."""


def id_key(entry_id: str) -> IdKey | None:
    """The order of ``entry_id``; None for anything that is not an id of ours."""
    parts = entry_id.split("-")
    if len(parts) > 2 or not all(p.isascii() and p.isdigit() and len(p) <= 20 for p in parts):
        return None
    return tuple(int(p) for p in parts)


def new_epoch() -> str:
    """A name for a new life of the room's history: random, so no two lives share one."""
    return secrets.token_hex(8)


def wall_clock_ms() -> int:
    """The ``ts`` of the protocol: integer milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


HISTORY_FRAME_BYTES = 64
"""About what a ``msg`` frame adds to its sender and text, as a history answer is counted
before it is encoded."""


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

    def stamped(self, entry_id: str) -> Entry:
        """This room frame with its ``id``: the field goes last, so the line is spliced, not
        encoded again (ids are digits and ``-``: nothing to escape). The message is copied
        field by field (``dataclasses.replace`` costs more than the rest of a ``say``)."""
        message = self.message
        assert isinstance(message, (Msg, Joined, Left, Renamed))
        copy = object.__new__(type(message))
        copy.__dict__.update(message.__dict__, id=entry_id)
        return Entry(copy, b'%s,"id":"%s"}\n' % (self.line[:-2], entry_id.encode()))

    @classmethod
    def checked(cls, message: ServerMessage) -> Entry:
        """A message built from a client's text: refused before anyone gets it if too big."""
        return cls(message, encode_checked(message) + b"\n")


@dataclass(slots=True)
class Kept:
    """A message kept for history and resume: the log position it was said at, and its copy
    as history sends it (``history`` true, its id kept), encoded the first time it is asked
    for and shared by every answer after: a thousand answers cost one encoding each. Its
    ``size``, what an answer holding it counts before it is encoded, is reckoned once too:
    reckoned per answer, it was most of what a ``history`` cost under the room's lock."""

    position: int
    msg: Msg
    _copy: Entry | None = None
    size: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.size = len(self.msg.text) + len(self.msg.sender) + HISTORY_FRAME_BYTES

    def copy(self) -> Entry:
        """The history copy's line (lock held: it is made once)."""
        if self._copy is None:
            self._copy = Entry.of(dataclasses.replace(self.msg, history=True))
        return self._copy


@dataclass(slots=True)
class HistoryAnswer:
    """An answer to ``history`` not taken yet: its messages, oldest first, and about its
    size in bytes (what it counts towards its member's ``lag`` until it is taken)."""

    messages: list[Kept]
    size: int

    @classmethod
    def of(cls, messages: list[Kept]) -> HistoryAnswer:
        return cls(messages, sum([kept.size for kept in messages]))

    def entries(self) -> list[Entry]:
        """Its lines, as taken: the kept copies and a ``history_end`` (lock held)."""
        end = Entry.of(HistoryEnd(count=len(self.messages)))
        return [kept.copy() for kept in self.messages] + [end]


Queued = Entry | HistoryAnswer


class Stage(enum.Enum):
    """Where a member stands; it changes in ``Room._move`` only, along ``MOVES``."""

    NEW = "new"  # until a good hello
    CLAIMING = "claiming"  # its hello's name is reserved here and claimed on the backplane
    JOINED = "joined"  # in the room, its connection alive (or half open: nobody knows yet)
    AWAY = "away"  # its connection broke: its place is kept, unannounced, for the grace
    GONE = "gone"  # out of the room; acts no more
    TAKEN = "taken"  # its session went on in a new connection; acts no more, nobody told


MOVES = {
    Stage.NEW: frozenset({Stage.CLAIMING, Stage.JOINED, Stage.GONE}),
    Stage.CLAIMING: frozenset({Stage.JOINED, Stage.NEW, Stage.GONE}),
    Stage.JOINED: frozenset({Stage.AWAY, Stage.GONE, Stage.TAKEN}),
    Stage.AWAY: frozenset({Stage.GONE, Stage.TAKEN}),
    Stage.GONE: frozenset({Stage.GONE}),
    Stage.TAKEN: frozenset({Stage.TAKEN}),
}
ENDED = frozenset({Stage.AWAY, Stage.GONE, Stage.TAKEN})
"""Stages whose connection acts no more: whatever its reader still has in hand is ignored."""


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
        self.private: deque[tuple[int, Queued]] = deque()
        self.private_bytes = 0
        self.token = secrets.token_hex(TOKEN_BYTES)  # the session, as welcome gives it
        self.hello = Hello(name="")  # the hello that joined it: does it resume, and from where
        self.away_until = 0  # AWAY: when the grace ends (the room's clock)
        self.away_reason = ""  # AWAY: the reason its left will give


M = TypeVar("M", bound=Member)


def already_registered(member: Member) -> AlreadyRegistered:
    """The refusal of a ``hello`` from a member that said one already."""
    return AlreadyRegistered(f"you are already registered as {member.name}")


class _Held(Exception):
    """A ``say`` or ``dm`` in a room with flow control found the backplane busy (lock held):
    nothing was done, and it is handled again once the backplane lets it through."""


class Backplane(Protocol):
    """Where the room's events are put in their one order (see the module's docstring).

    ``ready`` is False while the order cannot be reached: the room then
    refuses what would need it (``Unavailable``).
    """

    @property
    def ready(self) -> bool:
        """False while the order cannot be reached."""

    @property
    def busy(self) -> bool:
        """True while too much of what this server put in the order has not come back yet:
        rather than queue new messages without bound, a room with flow control holds them
        (``wait_while_busy``) and one without refuses them (``RateLimited``)."""

    def wait_while_busy(self) -> None:
        """Return once the backplane is not ``busy``, or once waiting is pointless: the order
        cannot be reached (not ``ready``) or the backplane closes. Called outside the room's
        lock, by a room with flow control, before a ``say`` or ``dm``."""

    def attach(self, room: Room[Any]) -> None:
        """Start feeding ``room``; called once, at the end of its constructor."""

    def claim(self, name: str, old: str | None) -> bool:
        """Claim ``name`` (giving up ``old`` when renaming); False if someone else has it.

        Called outside the room's lock; may do I/O and raise ``Unavailable``.
        """

    def publish(self, entry: Entry) -> None:
        """Put ``entry`` in the order. Called under the room's lock: O(1), no I/O."""

    def close(self) -> None:
        """The server stops: its users leave the shared room (``shutdown``)."""


@runtime_checkable
class SharesSessions(Protocol):
    """A backplane that knows which session holds each name, on every server, so that a
    resume can take over a session held on another server (``common.room.redisroom``)."""

    def claim_session(self, name: str, old: str | None, session: str) -> bool:
        """``claim``, noting that ``session`` holds the name."""

    def take_over(self, name: str, session: str) -> bool:
        """Give ``name`` to this server if ``session`` holds it, wherever; False if not.

        Outside the room's lock; may do I/O. When it is True, the backplane hands
        ``Room.taken_over`` to every server, in the room's order.
        """


class Archive(Protocol):
    """Where messages are kept past the process (``common.room.historyfile``).

    With the messages it keeps the history's ``epoch``, the last id it gave
    (``last_id``: the room counts on from it) and ``floor``, the id of the
    newest message it lost or forgot (None: none).
    """

    earlier: list[Msg]
    epoch: str
    last_id: int
    floor: str | None

    def add(self, msg: Msg) -> None:
        """Keep ``msg``. Called under the room's lock: O(1), no I/O."""

    def given(self, entry_id: int, *, msg: bool) -> None:
        """The room gave ``entry_id`` (to a ``msg`` or not). Under the lock: O(1), no system
        call; it must survive the process being killed (``historyfile``: a mapped page)."""

    def close(self) -> None:
        """Write what is left."""


class LocalBackplane:
    """One server is its own order: everything is applied at once, nothing is claimed."""

    ready = True
    busy = False

    def __init__(self) -> None:
        self._room: Room[Any] | None = None

    def attach(self, room: Room[Any]) -> None:
        self._room = room

    def claim(self, name: str, old: str | None) -> bool:
        return True

    def wait_while_busy(self) -> None:
        """Never busy: the room applies what it publishes at once."""

    def publish(self, entry: Entry) -> None:
        assert self._room is not None
        self._room.apply(entry, mine=True)

    def close(self) -> None:
        pass


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
        backplane: Backplane | None = None,
        archive: Archive | None = None,
        wake_remote: Callable[[], None] | None = None,
        resume_grace: float = DEFAULT_RESUME_GRACE,
        on_taken: Callable[[M], None] = lambda member: None,
        resume_bytes: int = RESUME_MAX_BYTES,
        max_backlog: int | None = None,
    ) -> None:
        """``wake_remote`` is called when a backplane's thread brought something (else
        ``wake``); ``max_backlog`` bytes, if given, bounds the writer's backlog (see the
        module's docstring). ``on_taken`` is called (outside the lock) with a member whose
        session a new connection took over: the transport closes it without a word.
        """
        self.lock = threading.Lock()
        self._changed = threading.Condition(self.lock)
        self._room_for_more = threading.Event()
        self._room_for_more.set()
        self._max_backlog = max_backlog
        self._max_users = max_users
        self._wake = wake
        self._wake_remote = wake if wake_remote is None else wake_remote
        self._clock = clock
        self._backplane: Backplane = LocalBackplane() if backplane is None else backplane
        self._archive = archive
        self._start_members()
        self._start_log(history)
        self._closed = False
        self._grace = int(resume_grace * 1000)
        self._resume_bytes = resume_bytes
        self._on_taken = on_taken
        self._continue(archive)
        self._backplane.attach(self)

    def _start_members(self) -> None:
        """Nobody in the room yet."""
        self._by_key: dict[str, M] = {}  # the members on this server
        self._claims: dict[str, M] = {}  # names reserved by a hello or nick under way
        self._roster: dict[str, str] = {}  # everyone in the room, on any server, by key
        self._order: list[str] = []  # the roster's keys, sorted: who and welcome list them so
        self._members: dict[M, None] = {}  # insertion-ordered: oldest first
        self._away: dict[M, None] = {}  # members AWAY, in the order their grace ends

    def _start_log(self, history: int) -> None:
        """An empty log, and no writer's pass yet."""
        self._dirty: set[M] = set()  # members posted to since the last ``pending``
        self._more: set[M] = set()  # answers wait for them: on the list after this pass
        self._unread = 0  # log position up to which ``pending`` was asked
        self._log: list[Entry] = []
        self._base = 0  # log position of self._log[0]
        self._bytes = 0  # bytes ever appended to the log
        self._posted = 0  # bytes ever queued to anyone: the log's and the private frames
        self._pass_start = 0  # self._posted when the writer's pass under way began
        self._pass_end = 0  # the log's end then
        self._caught_up = 0  # self._posted when the writer's last finished pass began
        self._last_entries: tuple[int, int, list[Entry]] = (0, 0, [])  # take_shared's
        self._last_join: tuple[list[Entry], bytes] = ([], b"")  # take_lines': its lines joined
        self._history: deque[Kept] = deque(maxlen=history)

    def _continue(self, archive: Archive | None) -> None:
        """The ids and the history: new, or the archive's, where the last life left them."""
        self.epoch = new_epoch()
        self._last_id = 0  # the last id this room gave (ids of its own count)
        self._newest: str | None = None  # the newest log entry's id: a welcome's ``last``
        self._before_newest: str | None = None  # the one before: a joiner's ``last``
        self._floor: str | None = None  # the id of the newest msg no longer kept (None: none)
        if archive is not None:
            self._history.extend(Kept(EARLIER, msg) for msg in archive.earlier)
            self.epoch, self._last_id = archive.epoch, archive.last_id
            self._newest = str(archive.last_id) if archive.last_id else None
            self._floor = archive.floor

    # ---- the log (lock held) -------------------------------------------

    @property
    def _end(self) -> int:
        return self._base + len(self._log)

    def _count(self, size: int) -> None:
        """``size`` more bytes queued to someone: past the bound, the readers stop reading."""
        self._posted += size
        limit = self._max_backlog
        over = limit is not None and self._posted - self._caught_up > limit
        if over and self._room_for_more.is_set():
            self._room_for_more.clear()

    def _append(self, entry: Entry) -> None:
        entry.start = self._bytes
        self._bytes += len(entry.line)
        self._count(len(entry.line))
        self._log.append(entry)

    def _post(self, member: M, item: Queued) -> None:
        """Queue ``item`` to ``member``. An answer to ``history`` counts towards its lag, not
        towards the backlog: it is built only as fast as the member takes it."""
        if isinstance(item, HistoryAnswer):
            member.private_bytes += item.size
        else:
            member.private_bytes += len(item.line)
            self._count(len(item.line))
        member.private.append((self._end, item))
        self._dirty.add(member)

    def _numbered(self, entry: Entry) -> Entry:
        """A room frame with its id: the backplane's, or the next of the room's own count."""
        message = entry.message
        assert isinstance(message, (Msg, Joined, Left, Renamed))
        if not message.id:
            self._last_id += 1
            entry = entry.stamped(str(self._last_id))
            if self._archive is not None:
                self._archive.given(self._last_id, msg=isinstance(message, Msg))
        assert isinstance(entry.message, (Msg, Joined, Left, Renamed))
        self._before_newest, self._newest = self._newest, entry.message.id
        return entry

    def _remember(self, msg: Msg) -> None:
        """Keep ``msg`` for history and resume; the one it pushes out raises the floor.

        Only raises it: a floor from the archive (messages lost with a killed process) may be
        newer than the oldest message kept, and a resume from before it must still be refused.
        """
        kept = self._history
        if len(kept) == kept.maxlen:
            pushed = kept[0].msg.id if kept else msg.id
            if self._floor is None or (id_key(pushed) or ()) > (id_key(self._floor) or ()):
                self._floor = pushed
        kept.append(Kept(self._end - 1, msg))
        if self._archive is not None:
            self._archive.add(msg)

    # ---- what a transport asks ------------------------------------------

    def handle(self, member: M, message: ClientMessage) -> bool:
        """Act on one message from ``member``; False once its session is over.

        A refusal raises ``ProtocolError``; the transport answers it with
        ``refuse``. A member that is gone acts no more. In a room with flow control
        (``max_backlog``), a ``say`` or ``dm`` first waits while the writer is behind or the
        backplane busy, and again each time it finds the backplane busy once more (see the
        module's docstring): its reader waits, no lock held.
        """
        held = self._max_backlog is not None and isinstance(message, (Say, SendDm))
        while True:
            if held:
                self._room_for_more.wait()
                self._backplane.wait_while_busy()
            try:
                return self._handle(member, message)
            except _Held:
                continue

    def _handle(self, member: M, message: ClientMessage) -> bool:
        taken: M | None = None
        elsewhere = False  # the hello resumes a session another server holds
        with self.lock:
            if member.stage in ENDED:
                return False
            if isinstance(message, Bye):
                if member.stage is Stage.JOINED:
                    self._leave(member, "quit")
                else:
                    self._move(member, Stage.GONE)
            elif member.stage in (Stage.NEW, Stage.CLAIMING):
                if not isinstance(message, Hello):
                    raise NotRegistered('say hello first: {"type":"hello","name":"..."}')
                taken = self._take_over(member, message)
                if taken is None:
                    elsewhere = self._reserve(
                        member, message.name, joining=True, resuming=message.resume is not None
                    )
                    member.hello = message
            elif isinstance(message, Hello):
                raise already_registered(member)
            elif isinstance(message, Nick):
                self._reserve(member, message.name, joining=False)
            else:
                self._act(member, message)
            alive = member.stage not in ENDED
        if taken is not None:
            self._on_taken(taken)
        elif isinstance(message, (Hello, Nick)):
            self._claim(member, message.name, take_over=elsewhere)
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
        """``member``'s connection ended: out of the room (once), and the others get ``left``;
        its name, or None. A resumable member whose connection broke (``disconnected``,
        ``timeout``) is only ``AWAY``: it keeps its place, unannounced, for the grace."""
        with self.lock:
            if member.stage is not Stage.JOINED:
                if member.stage in (Stage.NEW, Stage.CLAIMING):
                    self._move(member, Stage.GONE)
                return None
            if (
                member.hello.resumable
                and reason in RESUMABLE_REASONS
                and self._grace > 0
                and not self._closed
            ):
                member.away_reason = reason
                self._move(member, Stage.AWAY)
                return None
            name = member.name
            self._leave(member, reason)
        self._wake()
        return name

    def expire(self) -> None:
        """Members whose grace is over leave now (the others get ``left``, only now).

        The transport calls it every so often (a fraction of a second): the room reads its
        clock here and nowhere else for it.
        """
        with self.lock:
            now = self._clock()
            over = [member for member in self._away if member.away_until <= now]
            for member in over:
                self._leave(member, member.away_reason)
        if over:
            self._wake()

    def close(self) -> None:
        """The server stops: from now on nobody is told ``left`` (everyone had ``bye``).

        The backplane then says ``left`` (``shutdown``) for them to the other
        servers, and the archive writes what it has not written yet.
        """
        with self.lock:
            self._closed = True
            self._room_for_more.set()
        self._backplane.close()
        if self._archive is not None:
            self._archive.close()

    # ---- what a backplane asks -------------------------------------------

    def receive(self, entries: list[tuple[Entry, bool]]) -> None:
        """Entries in the shared order, each marked True if this server published it.

        Once the room is closed its members have had ``bye``: what still comes is not theirs.
        """
        with self.lock:
            if self._closed:
                return
            for entry, mine in entries:
                self.apply(entry, mine=mine)
        self._wake_remote()

    def preload(
        self,
        earlier: list[Msg],
        names: list[str],
        *,
        epoch: str | None = None,
        floor: str | None = None,
        newest: str | None = None,
    ) -> None:
        """Start from a shared room's state: its latest messages (those before them up to
        ``floor`` no longer kept), who is in it, its history's ``epoch`` and newest id."""
        with self.lock:
            self._history.clear()
            self._history.extend(Kept(EARLIER, msg) for msg in earlier)
            self._roster = {name_key(name): name for name in names}
            if epoch is not None:
                self.epoch = epoch
            self._floor = floor
            self._before_newest = self._newest = newest
            self._order = sorted(self._roster)

    def taken_over(self, key: str, *, mine: bool) -> None:
        """A resume took over the session holding the name ``key``, on the server that
        published it (``mine``: this one). There, the resuming member is in the room from
        here on, nobody told; on the server that held the session, its member is ``TAKEN``."""
        taken: M | None = None
        with self.lock:
            if self._closed:
                return
            member = self._claims.get(key) if mine else self._by_key.get(key)
            if mine and member is not None and member.hello.resume is not None:
                del self._claims[key]
                member.token = member.hello.resume.session
                self._greet(member, self._newest)
                self._changed.notify_all()
            elif mine:  # its hello gave up waiting: the session it took over is gone
                name = self._roster.get(key, key)
                left = Left(name=name, reason="disconnected", ts=self._clock())
                self._backplane.publish(Entry.of(left))
            elif member is not None and member.stage in (Stage.JOINED, Stage.AWAY):
                self._move(member, Stage.TAKEN)
                member.private.clear()
                member.private_bytes = 0
                taken = member
        if taken is not None:
            self._on_taken(taken)
        self._wake_remote()

    def tell_everyone(self, message: ServerMessage) -> None:
        """Queue ``message`` to every member in the room (the backplane's news)."""
        with self.lock:
            entry = Entry.of(message)
            for member in self._members:
                self._post(member, entry)
        self._wake_remote()

    def apply(self, entry: Entry, *, mine: bool) -> None:
        """One event in the shared order (lock held): into the log, the roster, the history."""
        message = entry.message
        if isinstance(message, Msg):  # the common case first
            entry = self._numbered(entry)
            self._append(entry)
            assert isinstance(entry.message, Msg)
            self._remember(entry.message)
            return
        if isinstance(message, Dm):
            for key in dict.fromkeys((name_key(message.to), name_key(message.sender))):
                if (end := self._by_key.get(key)) is not None and end.stage is Stage.JOINED:
                    self._post(end, entry)
            return
        if not mine and isinstance(message, (Joined, Renamed)):
            self._lose(message.name if isinstance(message, Joined) else message.new)
        if isinstance(message, Joined) and self._roster.get(name_key(message.name)) == message.name:
            return  # said again for someone already here (a server claiming its names back)
        entry = self._numbered(entry)
        self._append(entry)
        if isinstance(message, Joined):
            self._enrol(message.name)
            if mine:
                self._welcome(name_key(message.name), message.name)
        elif isinstance(message, Left):
            self._strike(message.name)
        elif isinstance(message, Renamed):
            self._strike(message.old)
            self._enrol(message.new)

    def pending(self) -> list[M]:
        """The members that may have something new since the last call: the writer's list.

        A writer's pass starts here (see ``caught_up``)."""
        with self.lock:
            self._pass_start, self._pass_end = self._posted, self._end
            if self._end == self._unread:
                found = list(self._dirty)
            else:
                self._unread = self._end
                found = list(self._members)
                found += (m for m in self._dirty if m.stage is not Stage.JOINED)
            self._dirty.clear()
            return found

    def caught_up(self) -> None:
        """A writer's pass ends: everyone who reads has all that was said before it began.

        Under the bound again, the readers that wait for room go on."""
        with self.lock:
            self._caught_up = self._pass_start
            self._dirty |= self._more
            self._more.clear()
            limit = self._max_backlog
            if limit is None or self._posted - self._caught_up <= limit:
                self._room_for_more.set()

    def backlog(self) -> int:
        """Bytes said since the writer's last finished pass began: what a member that reads
        may be waiting for because the writer is behind."""
        with self.lock:
            return self._posted - self._caught_up

    def take(self, member: M) -> list[Entry]:
        """What ``member`` is behind on, in order; its cursor moves past it.

        At most one answer to ``history`` is taken per call: if more wait, the
        writer is woken, and once its pass ends (``caught_up``) the member is on
        its next list, even in a room where nothing else happens.
        """
        with self.lock:
            entries = self._collect(member)
            more = bool(member.private)
            if more:
                self._more.add(member)
        if more:
            self._wake()
        return entries

    def take_lines(self, member: M) -> bytes:
        """``take``, as the JSON lines it is sent in. Members at the same place in the log (all
        of them, in a writer's pass over a busy room) share one join of the same span, which
        holds at least all that was said before the pass began (``pending``): what is said
        during the pass comes in the next one, so that it is joined once, not once each. The
        span is ``take_shared``'s; its join is kept with it, by the writer that calls this."""
        entries = self.take_shared(member)
        last = self._last_join
        if last[0] is not entries:
            last = self._last_join = (entries, b"".join([entry.line for entry in entries]))
        return last[1]

    def take_shared(self, member: M) -> list[Entry]:
        """``take``, for a writer that packs a span once for all it reaches: members at the same
        place in the log share one list of the same span, as ``take_lines`` shares one join
        (the caller must not change it)."""
        with self.lock:
            if not member.private and member.stage is Stage.JOINED:
                start, stop, entries = self._last_entries
                if start != member.cursor or stop < self._pass_end:
                    start, stop = member.cursor, self._end
                    entries = self._slice(start, stop)
                    self._last_entries = (start, stop, entries)
                member.cursor = stop
                return entries
        return self.take(member)

    def _collect(self, member: M, *, every_answer: bool = False) -> list[Entry]:
        """Merge the log from the member's cursor with its private frames, by position.

        An answer to ``history`` is encoded here, one per call unless ``every_answer``:
        the rest of the private queue, and the log past it, wait for the next call.
        """
        entries: list[Entry] = []
        joined = member.stage is Stage.JOINED
        at = member.cursor
        answered = False
        private = member.private
        while private:
            position, item = private[0]
            if isinstance(item, HistoryAnswer) and answered and not every_answer:
                break
            if joined and position > at:
                entries += self._slice(at, position)
                at = position
            private.popleft()
            if isinstance(item, HistoryAnswer):
                answered = True
                member.private_bytes -= item.size
                entries += item.entries()
            else:
                member.private_bytes -= len(item.line)
                entries.append(item)
        else:
            if joined:
                entries += self._slice(at, self._end)
                at = self._end
        if joined:
            member.cursor = at
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
        """The members on this server."""
        with self.lock:
            return len(self._members)

    def names(self) -> list[str]:
        """The names in the room, on any server, sorted case-insensitively."""
        with self.lock:
            return self._sorted_names()

    def local_names(self) -> list[str]:
        """The names held by members on this server (away ones too)."""
        with self.lock:
            return [m.name for m in self._by_key.values()]

    def log_size(self) -> int:
        """Entries the log holds now (bounded by trimming)."""
        with self.lock:
            return len(self._log)

    # ---- the rules (lock held) -------------------------------------------

    def _reserve(self, member: M, name: str, *, joining: bool, resuming: bool = False) -> bool:
        """Hold ``name`` for ``member`` while the backplane is asked for it (lock held).

        True when another server holds it and the hello resumes: the backplane is then
        asked whether it is that session's, to take it over.
        """
        if not self._backplane.ready:
            raise Unavailable("the room cannot be reached just now; try again in a moment")
        key = name_key(name)
        holder = self._claims.get(key) or self._by_key.get(key)
        elsewhere = holder is None and key in self._roster
        if (holder is not None and holder is not member) or (
            elsewhere and not (resuming and isinstance(self._backplane, SharesSessions))
        ):
            raise NameTaken(f"the name {self._roster.get(key, name)} is taken")
        if joining and len(self._by_key) + len(self._claims) >= self._max_users:
            raise ServerFull(f"the server is full ({self._max_users} users)")
        self._claims[key] = member
        if joining:
            member.name = name
            if member.stage is Stage.NEW:
                self._move(member, Stage.CLAIMING)
        return elsewhere

    def _release(self, member: M, key: str) -> None:
        """The claim of ``key`` by ``member`` is over without a join (lock held): the name is
        free again, and a member that was claiming it is ``NEW`` again (it may say hello)."""
        if self._claims.get(key) is member:
            del self._claims[key]
        if member.stage is Stage.CLAIMING:
            self._move(member, Stage.NEW)

    def _claim(self, member: M, name: str, *, take_over: bool = False) -> None:
        """Claim ``name`` on the backplane (or take over the session that holds it on another
        server), then join or rename; the reservation ends here."""
        key = name_key(name)
        joining = member.stage is Stage.CLAIMING
        old = None if joining else member.name
        backplane = self._backplane
        try:
            if take_over:
                assert isinstance(backplane, SharesSessions) and member.hello.resume is not None
                won = backplane.take_over(name, member.hello.resume.session)
            elif isinstance(backplane, SharesSessions):
                won = backplane.claim_session(name, old, member.token)
            else:
                won = backplane.claim(name, old)
        except Unavailable:
            with self.lock:
                self._release(member, key)
            raise
        with self.lock:
            if not won:
                self._release(member, key)
                raise NameTaken(f"the name {name} is taken")
            if not joining:
                del self._claims[key]
                if member.stage is Stage.JOINED:
                    self._rename(member, name)
                return
            if not take_over:  # a takeover is in the order already (``taken_over``)
                self._backplane.publish(Entry.of(Joined(name=name, ts=self._clock())))
            self._changed.wait_for(lambda: member.stage is not Stage.CLAIMING, JOIN_WAIT)
            if self._claims.get(key) is member:
                self._release(member, key)
                raise Unavailable("the room did not answer in time; try again in a moment")

    def _welcome(self, key: str, name: str) -> None:
        """``joined`` of a hello of ours came back: the member is in the room from here on."""
        member = self._claims.pop(key, None)
        if member is None and key in self._by_key:
            return  # the backplane said so again for a member already here
        if member is None or member.stage is not Stage.CLAIMING:
            # Its hello gave up waiting: whoever else was told it joined is told it left.
            left = Left(name=name, reason="disconnected", ts=self._clock())
            self._backplane.publish(Entry.of(left))
            return
        self._greet(member, self._before_newest)  # its own joined is the newest
        self._changed.notify_all()

    def _greet(self, member: M, last: str | None) -> None:
        """In the room from here on: its welcome, and the messages it missed if it resumes.

        The welcome's ``last`` is the newest entry before the member came in: for a join,
        the one before its own ``joined`` (``null`` for the first to speak in a new room);
        for a takeover, which adds no entry, the newest."""
        self._move(member, Stage.JOINED)
        member.cursor = member.welcomed_at = self._end
        names = tuple(self._roster[key] for key in itertools.islice(self._order, WELCOME_NAMES))
        welcome = Welcome(
            name=member.name,
            users=names,
            count=len(self._roster),
            session=member.token,
            epoch=self.epoch,
            last=last,
        )
        self._post(member, Entry.of(welcome))
        if member.hello.resume is not None:
            self._answer_resume(member, member.hello.resume)

    def _take_over(self, member: M, hello: Hello) -> M | None:
        """If ``hello`` resumes the session of the member holding its name here, ``member``
        takes its place (same name, same token) and the old one is ``TAKEN``; that one, or
        None for an ordinary join. Nobody else is told anything."""
        resume = hello.resume
        if resume is None:
            return None
        old = self._by_key.get(name_key(hello.name))
        if (
            old is None
            or old.stage not in (Stage.JOINED, Stage.AWAY)
            or not hmac.compare_digest(old.token.encode(), resume.session.encode())
        ):
            return None
        self._move(old, Stage.TAKEN)
        old.private.clear()
        old.private_bytes = 0
        member.name, member.token, member.hello = old.name, old.token, hello
        self._greet(member, self._newest)
        return old

    def _move(self, member: M, stage: Stage) -> None:
        """The one place a member's stage changes, and with it where the room files it:
        ``_members`` (those who read the log) holds the JOINED, ``_away`` the AWAY, and
        ``_by_key`` (the names held here) both."""
        if stage not in MOVES[member.stage]:
            raise AssertionError(f"a member cannot go from {member.stage} to {stage}")
        before, member.stage = member.stage, stage
        self._members.pop(member, None)
        self._more.discard(member)
        self._away.pop(member, None)
        key = name_key(member.name)
        if stage is Stage.JOINED:
            self._members[member] = None
            self._by_key[key] = member
        elif stage is Stage.AWAY:
            self._away[member] = None
            member.away_until = self._clock() + self._grace
            member.private.clear()  # its connection is gone: nothing of it will be written
            member.private_bytes = 0
        elif before in (Stage.JOINED, Stage.AWAY) and self._by_key.get(key) is member:
            del self._by_key[key]

    def _answer_resume(self, member: M, resume: Resume) -> None:
        """Every ``msg`` after ``resume.after`` as history, then ``history_end`` ``resumed``
        true; or, if the room cannot vouch that it has them all, ``resumed`` false at once."""
        after = None if resume.after is None else id_key(resume.after)
        floor = None if self._floor is None else id_key(self._floor)
        complete = (
            hmac.compare_digest(resume.epoch.encode(), self.epoch.encode())
            and (resume.after is None or after is not None)
            and (
                self._floor is None or (after is not None and floor is not None and after >= floor)
            )
        )
        if not complete:
            self._post(member, Entry.of(HistoryEnd(count=0, resumed=False)))
            return
        missed: list[Entry] = []
        size = 0
        for kept in reversed(self._history):
            if after is not None and (id_key(kept.msg.id) or ()) <= after:
                break
            missed.append(kept.copy())
            size += len(missed[-1].line)
            if size > self._resume_bytes:
                self._post(member, Entry.of(HistoryEnd(count=0, resumed=False)))
                return
        for entry in reversed(missed):
            self._post(member, entry)
        self._post(member, Entry.of(HistoryEnd(count=len(missed), resumed=True)))

    def _leave(self, member: M, reason: str) -> None:
        """Out of the room; what the log held for it until now stays its to read.

        Not for a member dropped as too slow (it could not read what it had), nor
        one whose grace ended (its connection is long gone), nor, but for its own
        frames, one whose connection ended (nobody reads it).
        """
        if reason == "too_slow" or member.stage is not Stage.JOINED:
            member.private.clear()
            member.private_bytes = 0
        elif reason != "disconnected":
            kept = self._collect(member, every_answer=True)
            member.private.extend((self._end, entry) for entry in kept)
            member.private_bytes = sum(len(entry.line) for entry in kept)
            if kept:
                self._dirty.add(member)
        self._move(member, Stage.GONE)
        if not self._closed:  # at shutdown everyone has had bye: no storm of left
            left = Left(name=member.name, reason=reason, ts=self._clock())
            self._backplane.publish(Entry.of(left))

    def _act(self, member: M, message: ClientMessage) -> None:
        if isinstance(message, Say):
            self._check_ready()
            msg = Msg(sender=member.name, text=message.text, ts=self._clock())
            self._backplane.publish(Entry.checked(msg))
        elif isinstance(message, SendDm):
            self._check_ready()
            self._dm(member, message)
        elif isinstance(message, Who):
            names = self._sorted_names()
            self._post(member, Entry.of(Users(names=tuple(names), count=len(names))))
        elif isinstance(message, Ping):
            self._post(member, Entry.of(Pong()))
        elif isinstance(message, History):
            self._answer_history(member, message.limit)

    def _check_ready(self) -> None:
        """A ``say`` or ``dm`` needs the order. While the backplane is busy, a room with flow
        control holds it (``_Held``: it waits outside the lock and is handled again), one
        without refuses it; a closed room, whose held readers were woken to end, refuses it."""
        backplane = self._backplane
        if not backplane.ready:
            raise Unavailable("the room cannot be reached just now: your message was not sent")
        if not backplane.busy:
            return
        if self._max_backlog is None:
            raise RateLimited("the room is busy: your message was not sent; try again in a moment")
        if self._closed:
            raise Unavailable("the server is stopping: your message was not sent")
        raise _Held

    def _dm(self, member: M, message: SendDm) -> None:
        to = self._roster.get(name_key(message.to))
        if to is None:
            raise NoSuchUser(f"nobody called {message.to[:40]} is online")
        dm = Dm(sender=member.name, to=to, text=message.text, ts=self._clock())
        self._backplane.publish(Entry.checked(dm))

    def _rename(self, member: M, new: str) -> None:
        old = member.name
        del self._by_key[name_key(old)]
        self._by_key[name_key(new)] = member
        member.name = new
        self._backplane.publish(Entry.of(Renamed(old=old, new=new, ts=self._clock())))

    def _lose(self, name: str) -> None:
        """Another server's user now has ``name``, held by a member here (lock held): the
        backplane gave it out while this server could not reach it (longer than its lease,
        or a restart that lost the names, for longer than the hold). The name is theirs: the
        member here is told and its session ends, without a ``left`` (nobody else saw it go).
        """
        member = self._by_key.get(name_key(name))
        if member is None:
            return
        if member.stage is Stage.JOINED:
            text = f"the name {member.name} was given to someone else while the room was away"
            self._post(member, Entry.of(Error(code=NameTaken.code, text=text)))
            self._post(member, Entry.of(Bye(reason="name_taken")))
        self._move(member, Stage.GONE)

    def _enrol(self, name: str) -> None:
        """``name`` into the roster, its key in its sorted place (O(log n) plus a move)."""
        key = name_key(name)
        if key not in self._roster:
            bisect.insort(self._order, key)
        self._roster[key] = name

    def _strike(self, name: str) -> None:
        """``name`` out of the roster, if it is there."""
        key = name_key(name)
        if self._roster.pop(key, None) is not None:
            del self._order[bisect.bisect_left(self._order, key)]

    def _answer_history(self, member: M, limit: int) -> None:
        """The ``limit`` latest messages from before ``member``'s welcome, oldest first."""
        welcomed_at = member.welcomed_at
        before = itertools.dropwhile(lambda k: k.position >= welcomed_at, reversed(self._history))
        found = list(itertools.islice(before, limit))
        found.reverse()
        self._post(member, HistoryAnswer.of(found))

    def _sorted_names(self) -> list[str]:
        return [self._roster[key] for key in self._order]
