"""The client's side of resume: the backoff, the place it keeps, and the session over fakes."""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import threading
from collections.abc import Callable, Iterator

import pytest

from common.protocol.codec import (
    Bye,
    ClientMessage,
    Hello,
    History,
    HistoryEnd,
    Joined,
    Left,
    Msg,
    Resume,
    Say,
    ServerMessage,
    Welcome,
)
from common.terminal.console import ChatError, ChatSession, Console, split_address
from common.terminal.render import Line
from common.terminal.resume import (
    LOST,
    MAYBE_MISSING,
    Place,
    Retry,
    Tracker,
    missed_line,
)
from tests.conftest import wait_until

WAIT = 5.0
STAMP = re.compile(r"^\d\d:\d\d:\d\d ")


# ---- Retry: backoff with full jitter, and the servers in turn ---------------------------


class Clock:
    """A clock that tests move by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_try_goes_at_once_then_backoff_with_full_jitter() -> None:
    clock = Clock()
    draws = iter([0.7, 0.5, 0.999])
    retry = Retry(["a:1"], lambda: next(draws), clock)
    assert retry.lost() == 0.0  # a cut connection is usually back in one round trip
    clock.now += 0.1
    assert retry.failed() == pytest.approx(0.5 * 0.5)  # a ceiling of at least BACKOFF_FIRST
    clock.now += 3.9
    assert retry.failed() == pytest.approx(0.999 * 2.0)  # half the 4 s lost so far
    assert retry.server == "a:1"


def test_the_ceiling_is_half_the_outage_up_to_ten_seconds() -> None:
    clock = Clock()
    retry = Retry(["a:1"], lambda: 1.0, clock)
    retry.lost()
    ceilings = []
    for lost_for in (0.2, 1.0, 2.0, 8.0, 19.0, 30.0, 3600.0):
        clock.now = 100.0 + lost_for
        ceilings.append(retry.failed())
    assert ceilings == [0.5, 0.5, 1.0, 4.0, 9.5, 10.0, 10.0]


def test_the_tries_thin_out_exponentially() -> None:
    """Each wait is at most half the time already lost: over a minute, a few dozen tries."""
    clock = Clock()
    retry = Retry(["a:1"], lambda: 0.5, clock)  # the average draw
    delay = retry.lost()
    tries = 0
    while clock.now - 100.0 < 60.0:
        clock.now += delay
        tries += 1
        delay = retry.failed()
    assert 15 < tries < 40


def test_a_new_loss_starts_from_the_first_try_at_once_again() -> None:
    clock = Clock()
    retry = Retry(["a:1"], lambda: 1.0, clock)
    retry.lost()
    clock.now += 60.0
    assert retry.failed() == 10.0
    retry.back()
    clock.now += 5.0
    assert retry.lost() == 0.0
    assert retry.failed() == 0.5


def test_several_servers_are_tried_in_turn_the_next_at_once() -> None:
    clock = Clock()
    retry = Retry(["a:1", "b:2", "c:3"], lambda: 1.0, clock)
    retry.moved("b:2")
    assert retry.lost() == 0.0 and retry.server == "b:2"  # it may only have restarted
    clock.now += 2.0
    assert retry.failed() == 0.0 and retry.server == "c:3"
    assert retry.failed() == 0.0 and retry.server == "a:1"
    assert retry.failed() == 1.0 and retry.server == "b:2"  # a round done: the next ceiling
    retry.back()
    assert retry.lost() == 0.0 and retry.server == "b:2"


def test_retry_needs_a_server() -> None:
    with pytest.raises(ValueError):
        Retry([], lambda: 0.0, Clock())


def test_split_address() -> None:
    assert split_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert split_address("[::1]:9") == ("::1", 9)
    for bad in ("localhost", ":80", "h:", "h:0", "h:65536", "h:８０"):
        with pytest.raises(ValueError):
            split_address(bad)


# ---- Tracker: the place, and the answers to resumes ------------------------------------


def welcome(last: str | None = None, session: str = "s1", epoch: str = "e1") -> Welcome:
    return Welcome(name="alice", users=("alice",), count=1, session=session, epoch=epoch, last=last)


def msg(id: str, text: str = "", history: bool = False) -> Msg:
    return Msg(sender="bob", text=text or f"m{id}", ts=1, id=id, history=history)


def test_the_place_starts_at_the_welcome_and_follows_live_frames_only() -> None:
    tracker = Tracker()
    tracker.joined(welcome(last="7"))
    assert tracker.place == Place("s1", "e1", "7")
    tracker.on_message(msg("3", history=True))  # the answer to history: older than the welcome
    assert tracker.place.last == "7"
    for frame in (msg("8"), Joined(name="c", ts=1, id="9"), Left(name="c", reason="quit", ts=1)):
        assert tracker.on_message(frame).show == (frame,)
    assert tracker.place.last == "9"  # a frame without id (a 1.1 server) changes nothing
    assert tracker.place.resume() == Resume(session="s1", epoch="e1", after="9")


def test_a_room_where_nothing_was_said_resumes_from_null() -> None:
    tracker = Tracker()
    tracker.joined(welcome(last=None))
    assert tracker.place.resume() == Resume(session="s1", epoch="e1", after=None)


def test_a_server_without_epoch_gives_nothing_to_resume_with() -> None:
    tracker = Tracker()
    tracker.joined(Welcome(name="alice", users=(), count=1))
    assert tracker.place.resume() is None
    step = tracker.rejoined(Welcome(name="alice", users=(), count=1), None)
    assert step.show == (Line("system", MAYBE_MISSING),)
    assert step.ask == History(limit=20)
    assert not tracker.answering


def test_a_resume_shows_what_was_missed_first_then_what_came_live_meanwhile() -> None:
    tracker = Tracker()
    tracker.joined(welcome(last="1"))
    asked = tracker.place.resume()
    assert tracker.rejoined(welcome(last="3", session="s2"), asked).show == ()
    assert tracker.answering
    live = msg("4", "live")
    assert tracker.on_message(msg("2", "missed", history=True)).show == ()
    assert tracker.on_message(live).show == ()
    assert tracker.on_message(msg("3", "also", history=True)).show == ()
    step = tracker.on_message(HistoryEnd(count=2, resumed=True))
    assert step.ask is None
    assert step.show == (Line("system", missed_line(2)), msg("2", "missed"), msg("3", "also"), live)
    assert tracker.place == Place("s2", "e1", "4")
    assert not tracker.answering


def test_a_resume_with_nothing_missed_says_so() -> None:
    tracker = Tracker()
    tracker.joined(welcome(last="1"))
    tracker.rejoined(welcome(last="1"), tracker.place.resume())
    step = tracker.on_message(HistoryEnd(count=0, resumed=True))
    assert step.show == (Line("system", "back; 0 messages you missed"),)
    assert missed_line(1) == "back; 1 message you missed"


def test_a_refused_resume_says_messages_may_be_missing_and_asks_history() -> None:
    tracker = Tracker()
    tracker.joined(welcome(last="1"))
    tracker.rejoined(welcome(last="5", epoch="e2"), tracker.place.resume())
    live = msg("6")
    tracker.on_message(live)
    step = tracker.on_message(HistoryEnd(count=0, resumed=False))
    assert step.show == (Line("system", MAYBE_MISSING), live)
    assert step.ask == History(limit=20)
    assert tracker.place == Place("s1", "e2", "6")


def test_a_loss_during_the_answer_resumes_from_the_old_place_again() -> None:
    tracker = Tracker()
    tracker.joined(welcome(last="1"))
    tracker.rejoined(welcome(last="3", session="s2", epoch="e1"), tracker.place.resume())
    tracker.on_message(msg("2", history=True))
    # the connection breaks before history_end: nothing was shown, nothing is skipped
    assert tracker.place.resume() == Resume(session="s2", epoch="e1", after="1")
    tracker.rejoined(welcome(last="3", session="s2"), tracker.place.resume())
    tracker.on_message(msg("2", history=True))
    tracker.on_message(msg("3", history=True))
    step = tracker.on_message(HistoryEnd(count=2, resumed=True))
    assert step.show == (Line("system", missed_line(2)), msg("2"), msg("3"))


# ---- the session, over scripted transports --------------------------------------------


@pytest.fixture(autouse=True)
def keep_sigint() -> Iterator[None]:
    """A Console takes over SIGINT; give it back to pytest afterwards."""
    saved = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, saved)


class Script:
    """A transport whose server is a function from each message sent to the frames answered."""

    help_text = ""
    failure = None

    def __init__(self, answer: Callable[[ClientMessage], list[ServerMessage | None]]) -> None:
        self.peer = "fake:1"
        self.answer = answer
        self.sent: list[ClientMessage] = []
        self.incoming: queue.Queue[ServerMessage | None] = queue.Queue()

    def send(self, message: ClientMessage) -> None:
        self.sent.append(message)
        for frame in self.answer(message):
            self.incoming.put(frame)

    def receive(self) -> ServerMessage | None:
        return self.incoming.get(timeout=WAIT)

    def close(self) -> None:
        self.incoming.put(None)

    def local_command(self, line: str) -> str | None:
        return None


def first_life(message: ClientMessage) -> list[ServerMessage | None]:
    """Welcome, one live message, then the connection breaks."""
    if isinstance(message, Hello):
        return [welcome(last=None), msg("1", "before"), None]
    return []


def second_life(message: ClientMessage) -> list[ServerMessage | None]:
    """The resume answered: two missed, one live in between, then chat as usual."""
    if isinstance(message, Hello):
        return [
            welcome(last="3", session="s1"),
            msg("2", "missed one", history=True),
            msg("4", "live meanwhile"),
            msg("3", "missed two", history=True),
            HistoryEnd(count=2, resumed=True),
        ]
    if isinstance(message, Say):
        return [Msg(sender="alice", text=message.text, ts=1, id="5")]
    if isinstance(message, Bye):
        return [None]
    return []


class Keyboard:
    """A console on pipes: the test types, the session reads."""

    def __init__(self) -> None:
        read_end, write_end = os.pipe()
        self.stdin = open(read_end, encoding="utf-8")  # noqa: SIM115
        self.keys = open(write_end, "w")  # noqa: SIM115
        self.out, self.err = io.StringIO(), io.StringIO()
        self.console = Console(self.stdin, self.out, self.err)

    def type(self, text: str) -> None:
        self.keys.write(text)
        self.keys.flush()

    def wait_for(self, text: str) -> None:
        assert wait_until(lambda: text in self.out.getvalue(), WAIT), self.out.getvalue()

    def close(self) -> None:
        self.keys.close()
        self.stdin.close()


@pytest.fixture
def keyboard() -> Iterator[Keyboard]:
    board = Keyboard()
    yield board
    board.close()


def test_the_session_resumes_and_shows_what_was_missed_once_in_order(keyboard: Keyboard) -> None:
    lives = [Script(first_life), Script(second_life)]
    made = list(lives)
    release = threading.Event()

    def connect(server: str) -> Script:
        assert server == "fake:1"
        if len(made) == 1:
            assert release.wait(WAIT)  # the test types while the client is away
        return made.pop(0)

    session = ChatSession(connect, keyboard.console, ["fake:1"], random=lambda: 0.0)
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(session.run("alice")))
    runner.start()
    keyboard.wait_for(LOST)
    keyboard.type("typed while away\n")
    keyboard.wait_for("not connected: this goes out once back")
    release.set()
    keyboard.wait_for("<bob> live meanwhile")
    keyboard.type("/quit\n")
    runner.join(WAIT)
    assert result == [0]
    first, second = lives
    assert first.sent == [Hello(name="alice", resumable=True), History(limit=20)]
    resume = Resume(session="s1", epoch="e1", after="1")
    assert second.sent == [
        Hello(name="alice", resumable=True, resume=resume),
        Say(text="typed while away"),
        Bye(),
    ]
    shown = [STAMP.sub("", line) for line in keyboard.out.getvalue().splitlines()]
    start = shown.index("* " + LOST)
    assert shown[start:] == [
        "* " + LOST,
        "* not connected: this goes out once back",
        "* back; 2 messages you missed",
        "<bob> missed one",
        "<bob> missed two",
        "<bob> live meanwhile",
        "<alice (you)> typed while away",
    ]
    assert keyboard.err.getvalue() == ""


def test_ctrl_d_while_reconnecting_quits(keyboard: Keyboard) -> None:
    tries: list[str] = []

    def connect(server: str) -> Script:
        tries.append(server)
        if len(tries) == 1:
            return Script(first_life)
        raise ChatError(f"cannot connect to {server}")

    session = ChatSession(connect, keyboard.console, ["a:1", "b:2"], random=lambda: 0.01)
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(session.run("alice")))
    runner.start()
    keyboard.wait_for(LOST)
    assert wait_until(lambda: len(tries) >= 6, WAIT)
    keyboard.keys.close()  # Ctrl+D
    runner.join(WAIT)
    assert result == [0]
    assert tries[:6] == ["a:1", "a:1", "b:2", "a:1", "b:2", "a:1"]
    assert keyboard.out.getvalue().count(LOST) == 1
    assert keyboard.err.getvalue() == ""
