"""Coming back after a lost connection (protocol v1.2 resume), without any I/O.

Two small machines that a client drives, with time and chance as parameters
so that tests can drive them by hand:

* ``Retry`` says which server to try next and how long to wait first: the
  first try at once (a cut connection is usually back in one round trip),
  then backoff with full jitter (a delay drawn uniformly below a ceiling, so
  that a room's clients, all cut at once by a restart, do not all come back
  at once) whose ceiling is half the time lost so far, from ``BACKOFF_FIRST``
  to ``BACKOFF_CAP`` seconds. Each wait is then at most half of the time
  already waited, so the tries thin out exponentially (by 1.25 a try on
  average) and a server that is back is found within half the outage: a
  restart of one second costs at most half a second more; a ceiling that
  doubled per try would already be 2 s by then. A client given several
  servers of one room moves to the next one when a try fails, at once within
  a round; the delay comes before each round.
* ``Tracker`` keeps the client's place in the room, the ``session``,
  ``epoch`` and last ``id`` it will send back in ``hello``'s ``resume``,
  and turns the answer to a resume into what the person sees: one line
  "back; N messages you missed" and the messages, or "back; some messages
  may be missing" and a ``history`` request, as a newcomer makes.

What the room said during a resume's answer (its history, and live frames
that arrive before ``history_end``) is held back until ``history_end``, so
that the missed messages come first and everything shows in the room's one
order. ``last`` moves only on frames that are newer than the place already
held: live frames, and the answer to a resume once it is complete; never on
the answer to a plain ``history`` (older than the welcome).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from common.protocol.codec import (
    History,
    HistoryEnd,
    Joined,
    Left,
    Msg,
    Renamed,
    Resume,
    ServerMessage,
    Welcome,
)
from common.terminal.render import Line

BACKOFF_FIRST = 0.5
BACKOFF_CAP = 10.0
BACKOFF_SHARE = 0.5
"""The backoff's ceiling, as a share of the time since the connection was lost."""
REJOIN_HISTORY = 20
"""Earlier messages asked for when a resume could not say what was missed, as on joining."""

LOST = "connection lost; reconnecting"
MAYBE_MISSING = "back; some messages may be missing"


def missed_line(count: int) -> str:
    """The line that says a resume worked and how much it brought back."""
    return f"back; {count} message{'' if count == 1 else 's'} you missed"


class Retry:
    """The schedule of tries after a lost connection: which server, and after how long.

    ``lost()`` starts a new series (the server that was lost is tried first,
    at once: it may only have restarted), ``failed()`` moves on after a try
    that did not get in, ``back()`` ends the series. ``random()`` gives a
    float in [0, 1) and ``clock()`` the time in seconds: ``random.random``
    and ``time.monotonic`` in a client, scripts in tests.
    """

    def __init__(
        self,
        servers: Sequence[str],
        random: Callable[[], float],
        clock: Callable[[], float],
        first: float = BACKOFF_FIRST,
        cap: float = BACKOFF_CAP,
    ) -> None:
        if not servers:
            raise ValueError("at least one server")
        self.servers = tuple(servers)
        self._random = random
        self._clock = clock
        self._first = first
        self._cap = cap
        self._index = 0
        self._tries = 0
        self._lost_at = clock()

    @property
    def server(self) -> str:
        """The server the next try goes to."""
        return self.servers[self._index]

    def ceiling(self) -> float:
        """The longest the wait before the next try can be.

        0 for the first try after a loss and within a round; else half the
        time lost so far, within ``first`` and ``cap``.
        """
        if self._tries % len(self.servers) or not self._tries:
            return 0.0
        lost_for = self._clock() - self._lost_at
        return min(self._cap, max(self._first, BACKOFF_SHARE * lost_for))

    def lost(self) -> float:
        """The connection broke: the delay before the first try, at the same server (none)."""
        self._tries = 0
        self._lost_at = self._clock()
        return self._random() * self.ceiling()

    def failed(self) -> float:
        """A try did not get in: the delay before the next, at the next server."""
        self._index = (self._index + 1) % len(self.servers)
        self._tries += 1
        return self._random() * self.ceiling()

    def moved(self, server: str) -> None:
        """The client joined through ``server`` (the first join may skip dead ones)."""
        self._index = self.servers.index(server)

    def back(self) -> None:
        """A try got in: the next loss starts a new series."""
        self._tries = 0


@dataclass(frozen=True)
class Place:
    """Where a client is in the room: what ``resume`` sends back."""

    session: str = ""
    epoch: str = ""
    last: str | None = None

    def resume(self) -> Resume | None:
        """The ``resume`` to send, or None when the server gave nothing to resume with (v1.1)."""
        if not (self.session and self.epoch):
            return None
        return Resume(session=self.session, epoch=self.epoch, after=self.last)


@dataclass(frozen=True)
class Step:
    """What one server message comes to: lines or messages to show, and a request to send."""

    show: tuple[ServerMessage | Line, ...] = ()
    ask: History | None = None


@dataclass
class _Answer:
    """A resume's answer being gathered, until its ``history_end``."""

    welcome: Welcome
    missed: list[Msg] = field(default_factory=list)
    live: list[ServerMessage] = field(default_factory=list)


class Tracker:
    """The client's place in the room, kept from every frame, and the answers to resumes."""

    def __init__(self) -> None:
        self.place = Place()
        self._answer: _Answer | None = None

    def joined(self, welcome: Welcome) -> None:
        """The first welcome: the place starts there (the client greets the person itself)."""
        self._answer = None
        self.place = Place(welcome.session, welcome.epoch, welcome.last)

    def rejoined(self, welcome: Welcome, asked: Resume | None) -> Step:
        """A welcome after a lost connection, to a ``hello`` that sent ``asked``.

        When the client asked to resume and the server can answer (its
        welcome has an ``epoch``), the answer is gathered until
        ``history_end``; otherwise nothing can say what was missed, and the
        client says so at once.
        """
        if asked is not None and welcome.epoch:
            self._answer = _Answer(welcome)
            self.place = replace(self.place, session=welcome.session)
            return Step()
        self.joined(welcome)
        return Step(show=(Line("system", MAYBE_MISSING),), ask=History(limit=REJOIN_HISTORY))

    @property
    def answering(self) -> bool:
        """A resume's answer is being gathered: its ``history_end`` has not come yet."""
        return self._answer is not None

    def on_message(self, message: ServerMessage) -> Step:
        """One message from the server: what to show now, and whether to ask for history."""
        answer = self._answer
        if answer is None:
            self._advance(message)
            return Step(show=(message,))
        if isinstance(message, HistoryEnd):
            return self._answered(answer, message)
        if isinstance(message, Msg) and message.history:
            answer.missed.append(message)
        else:
            answer.live.append(message)
        return Step()

    def _answered(self, answer: _Answer, end: HistoryEnd) -> Step:
        """The resume's ``history_end``: the place moves to the welcome, then past live frames."""
        self._answer = None
        welcome = answer.welcome
        self.place = Place(welcome.session, welcome.epoch, welcome.last)
        for message in answer.live:
            self._advance(message)
        if end.resumed:
            missed = tuple(replace(m, history=False) for m in answer.missed)
            head: tuple[ServerMessage | Line, ...] = (Line("system", missed_line(len(missed))),)
            return Step(show=head + missed + tuple(answer.live))
        return Step(
            show=(Line("system", MAYBE_MISSING), *answer.live),
            ask=History(limit=REJOIN_HISTORY),
        )

    def _advance(self, message: ServerMessage) -> None:
        """A live frame the room said to everyone moves the place to its ``id``."""
        earlier = isinstance(message, Msg) and message.history
        if isinstance(message, Joined | Left | Renamed | Msg) and message.id and not earlier:
            self.place = replace(self.place, last=message.id)
