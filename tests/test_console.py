"""The console: rendering, colours, sanitising, and the session loop over a fake transport."""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import threading
from collections.abc import Iterator

import pytest

from common.protocol.codec import (
    Bye,
    ClientMessage,
    Dm,
    Error,
    Hello,
    History,
    Joined,
    Left,
    Msg,
    Renamed,
    Say,
    ServerMessage,
    Welcome,
)
from common.terminal.commands import MESSAGE_HELP
from common.terminal.console import (
    NAME_COLOURS,
    RECEIVER_THREAD,
    Console,
    display_width,
    format_line,
    name_colour,
    paint,
    run_client,
    wants_colour,
)
from common.terminal.render import Line, describe

SGR = re.compile(r"\x1b\[[0-9;]*m")
HOSTILE = "\x1b[2J\x1b[H\x1b]0;pwned\x07\u202eevil\r\n\x08\x9b31m\x00"
WAIT = 5.0


@pytest.fixture(autouse=True)
def keep_sigint() -> Iterator[None]:
    """A Console takes over SIGINT; give it back to pytest afterwards."""
    saved = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, saved)


def plain_console(stdin: str = "") -> tuple[Console, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Console(io.StringIO(stdin), out, err), out, err


# ---- rendering ---------------------------------------------------------------


def test_plain_lines() -> None:
    chat = describe(Msg(sender="bob", text="hi", ts=0), me="alice")
    own = describe(Msg(sender="alice", text="hi", ts=0), me="alice")
    dm_in = describe(Dm(sender="bob", to="alice", text="psst", ts=0), me="alice")
    dm_out = describe(Dm(sender="alice", to="bob", text="psst", ts=0), me="alice")
    joined = describe(Joined(name="carol", ts=0))
    assert chat is not None and own is not None and dm_in is not None and dm_out is not None
    assert joined is not None
    stamp = chat.time
    assert re.fullmatch(r"\d\d:\d\d:\d\d", stamp)
    assert format_line(chat) == f"{stamp} <bob> hi"
    assert format_line(own) == f"{stamp} <alice (you)> hi"
    assert format_line(dm_in) == f"{stamp} [dm from bob] psst"
    assert format_line(dm_out) == f"{stamp} [dm to bob] psst"
    assert format_line(joined) == f"{stamp} * carol joined"
    assert format_line(Line("error", "no such user")) == "! no such user"
    assert format_line(Line("note", "  /who   who is online")) == "  /who   who is online"


def test_colours_wrap_the_plain_text() -> None:
    lines = [
        describe(Msg(sender="bob", text="hi", ts=0), me="alice"),
        describe(Msg(sender="alice", text="hi", ts=0), me="alice"),
        describe(Dm(sender="bob", to="alice", text="psst", ts=0), me="alice"),
        describe(Left(name="bob", reason="quit", ts=0)),
        describe(Renamed(old="bob", new="rob", ts=0)),
        Line("error", "nope"),
    ]
    for line in lines:
        assert line is not None
        coloured = format_line(line, colour=True)
        assert coloured != format_line(line)
        assert SGR.sub("", coloured) == format_line(line)


def test_names_have_stable_colours() -> None:
    assert name_colour("bob") == name_colour("BOB") == name_colour("Ｂｏｂ")
    assert all(name_colour(f"user{i}") in NAME_COLOURS for i in range(100))
    assert len({name_colour(f"user{i}") for i in range(100)}) > len(NAME_COLOURS) // 2
    assert "31" not in NAME_COLOURS
    chat = format_line(Line("chat", "hi", "12:00:00", "bob"), colour=True)
    assert paint("bob", name_colour("bob")) in chat
    system = format_line(Line("system", "bob joined", "12:00:00"), colour=True)
    assert system == paint("12:00:00 * bob joined", "2")


def test_paint_without_codes_is_the_text() -> None:
    assert paint("x") == "x"
    assert paint("x", "1", "31") == "\x1b[1;31mx\x1b[0m"


@pytest.mark.parametrize(
    "message",
    [
        Msg(sender=HOSTILE, text=HOSTILE, ts=1),
        Dm(sender=HOSTILE, to="alice", text=HOSTILE, ts=1),
        Dm(sender="alice", to=HOSTILE, text=HOSTILE, ts=1),
        Joined(name=HOSTILE, ts=1),
        Left(name=HOSTILE, reason=HOSTILE, ts=1),
        Renamed(old=HOSTILE, new=HOSTILE, ts=1),
        Welcome(name=HOSTILE, users=(HOSTILE,), count=1),
        Error(code=HOSTILE, text=HOSTILE),
    ],
    ids=lambda message: type(message).__name__,
)
def test_hostile_messages_are_shown_inert(message: ServerMessage) -> None:
    line = describe(message, me="alice")
    assert line is not None
    for colour in (False, True):
        text = SGR.sub("", format_line(line, colour))
        assert text.isprintable(), repr(text)
        assert "\\x1b[2J" in text


def test_lines_made_anywhere_are_sanitised() -> None:
    """The console does not trust a Line: one built without describe is cleaned too."""
    raw = Line("chat", HOSTILE, HOSTILE, HOSTILE, own=True)
    for kind in ("chat", "dm", "system", "error", "note"):
        line = Line(kind, raw.text, raw.time, raw.who)
        assert SGR.sub("", format_line(line, colour=True)).isprintable()
        assert format_line(line).isprintable()


def test_display_width() -> None:
    assert display_width("alice> ") == 7
    assert display_width("日本語") == 6
    assert display_width("e\u0301") == 1
    assert display_width("Алиса") == 5
    assert display_width("नमस्ते> ") == 6


def test_colour_follows_no_color_and_term() -> None:
    assert wants_colour({"TERM": "xterm"})
    assert not wants_colour({"TERM": "xterm", "NO_COLOR": "1"})
    assert wants_colour({"TERM": "xterm", "NO_COLOR": ""})
    assert not wants_colour({"TERM": "dumb"})


# ---- the console in plain mode -----------------------------------------------


def test_plain_console_writes_no_escape_sequences() -> None:
    console, out, err = plain_console("first\nsecond\r\n")
    assert not console.interactive and not console.colour
    console.show(Line("chat", HOSTILE, "12:00:00", "bob"))
    console.note("a\nb")
    console.warn("careful")
    assert console.ask("your name: ") == "first"
    assert console.read_line("> ") == "second"
    assert console.read_line("> ") is None
    console.fatal(f"bye {HOSTILE}")
    assert "\x1b" not in out.getvalue() and "\x1b" not in err.getvalue()
    assert out.getvalue().splitlines()[1:] == ["a", "b", "! careful", "your name:"]
    assert err.getvalue().startswith("bye \\x1b[2J")


# ---- the session over a fake transport -----------------------------------------


class FakeTransport:
    """A server in a queue: answers hello, echoes says, ends on bye or on demand."""

    help_text = "  /stats           what the fake counted"
    failure = None

    def __init__(self, taken: frozenset[str] = frozenset(), hang_up: bool = False) -> None:
        self.peer = "fake:1"
        self.sent: list[ClientMessage] = []
        self.receivers: set[str] = set()
        self.incoming: queue.Queue[ServerMessage | None] = queue.Queue()
        self.taken = taken
        self.hang_up = hang_up
        self.name = ""

    def send(self, message: ClientMessage) -> None:
        self.sent.append(message)
        if isinstance(message, Hello) and message.name in self.taken:
            self.incoming.put(Error(code="name_taken", text=f"the name {message.name} is taken"))
        elif isinstance(message, Hello):
            self.name = message.name
            self.incoming.put(Welcome(name=message.name, users=(message.name,), count=1))
            if self.hang_up:
                self.incoming.put(Msg(sender="bob", text="going down", ts=1))
                self.incoming.put(None)
        elif isinstance(message, Say):
            self.incoming.put(Msg(sender=self.name, text=message.text, ts=1))
        elif isinstance(message, Bye):
            self.incoming.put(None)

    def receive(self) -> ServerMessage | None:
        if threading.current_thread() is not threading.main_thread():
            self.receivers.add(threading.current_thread().name)
        return self.incoming.get(timeout=WAIT)

    def close(self) -> None:
        self.incoming.put(None)

    def local_command(self, line: str) -> str | None:
        return f"sent {len(self.sent)}" if line.strip() == "/stats" else None


def test_session_chats_and_quits() -> None:
    transport = FakeTransport()
    console, out, err = plain_console("hello\n/stats\n/help\n/nope\n/quit\nnot read\n")
    assert run_client(lambda server: transport, console, "alice", ["fake:1"]) == 0
    assert transport.sent[1] == History(limit=20)
    assert [type(m) for m in transport.sent] == [Hello, History, Say, Bye]
    assert transport.receivers == {RECEIVER_THREAD}
    shown = out.getvalue()
    assert "* welcome, alice! online: nobody else yet (1 in all)" in shown
    assert "<alice (you)> hello" in shown
    assert "sent 3" in shown
    assert f"  /help            this help\n{transport.help_text}\n{MESSAGE_HELP}\n" in shown
    assert "! unknown command /nope; /help lists the commands" in shown
    assert err.getvalue() == ""


def test_session_asks_again_for_a_taken_name() -> None:
    made: list[FakeTransport] = []

    def connect(server: str) -> FakeTransport:
        made.append(FakeTransport(taken=frozenset({"bob"})))
        return made[-1]

    console, out, _ = plain_console("bad name\nbob\ncarol\n")
    assert run_client(connect, console, None, ["fake:1"]) == 0
    assert [m.name for t in made for m in t.sent if isinstance(m, Hello)] == ["bob", "carol"]
    lines = out.getvalue().splitlines()
    assert lines[0] == "your name:"
    assert lines[1].startswith("! a name holds only letters") and lines[1].endswith("try another")
    assert "! the name bob is taken; try another" in lines
    assert lines.count("your name:") == 3


def test_session_ends_with_exit_code_1_when_a_rejoin_is_refused() -> None:
    """The server goes, the client comes back, its name is taken by then.

    The receiver thread sees the end and wakes the main thread, blocked reading stdin.
    """
    made = [FakeTransport(hang_up=True), FakeTransport(taken=frozenset({"alice"}))]
    read_end, write_end = os.pipe()
    with open(read_end, encoding="utf-8") as stdin, open(write_end, "w") as keyboard:
        out, err = io.StringIO(), io.StringIO()
        console = Console(stdin, out, err)
        assert run_client(lambda server: made.pop(0), console, "alice", ["fake:1"]) == 1
        keyboard.write("never read\n")
    assert "<bob> going down" in out.getvalue()
    assert "* connection lost; reconnecting" in out.getvalue()
    assert err.getvalue() == "cannot rejoin as alice: the name alice is taken\n"
    assert made == []
