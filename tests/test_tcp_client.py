"""The TCP terminal client as a real process: in a pseudo-terminal, and on pipes."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pexpect
import pytest

from benchmarks.servers import free_port
from common.terminal.console import name_colour
from tcp.client import TcpTransport
from tests.conftest import ROOT, WAIT, JsonClient, ServerProcess

Connect = Callable[..., JsonClient]
Start = Callable[..., ServerProcess]
ROWS, COLS = 24, 100
FLOOD = 50


class Screen:
    """Just enough of a VT100 to replay what the client wrote, scrollback kept.

    Anything the client should never send (another escape sequence, a bell)
    fails the test, so the replay also checks the output is harmless.
    """

    CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])")
    KEYPAD = re.compile(r"\x1b[=>]")

    def __init__(self, height: int = ROWS, width: int = COLS) -> None:
        self.height, self.width = height, width
        self.rows: list[list[str]] = [[]]
        self.y = self.x = 0

    def feed(self, text: str) -> Screen:
        i = 0
        while i < len(text):
            if match := self.CSI.match(text, i):
                self._csi(match.group(1), match.group(2))
                i = match.end()
            elif match := self.KEYPAD.match(text, i):
                i = match.end()
            else:
                self._char(text[i])
                i += 1
        return self

    def _char(self, ch: str) -> None:
        if ch == "\r":
            self.x = 0
        elif ch == "\n":
            self._move_to(self.y + 1)
        elif ch == "\b":
            self.x = max(0, self.x - 1)
        elif not ch.isprintable():
            raise AssertionError(f"the client wrote {ch!r}")
        else:
            if self.x >= self.width:
                self.x = 0
                self._move_to(self.y + 1)
            row = self.rows[self.y]
            row.extend(" " * (self.x + 1 - len(row)))
            row[self.x] = ch
            self.x += 1

    def _move_to(self, y: int) -> None:
        top = max(0, len(self.rows) - self.height)
        self.y = max(top, y)
        while len(self.rows) <= self.y:
            self.rows.append([])

    def _csi(self, params: str, command: str) -> None:
        if (params.startswith("?") and command in "hl") or command == "m":
            return
        n = int(params or 0)
        row = self.rows[self.y]
        if command == "A":
            self._move_to(self.y - max(n, 1))
        elif command == "C":
            self.x += max(n, 1)
        elif command == "D":
            self.x = max(0, self.x - max(n, 1))
        elif command == "K" and n in (0, 2):
            del row[0 if n == 2 else self.x :]
            if n == 2:
                row.extend(" " * self.x)
        elif command == "J" and n == 0:
            del row[self.x :]
            del self.rows[self.y + 1 :]
        else:
            raise AssertionError(f"the client wrote ESC[{params}{command}")

    def lines(self) -> list[str]:
        return ["".join(row).rstrip() for row in self.rows]


class Client:
    """The client in a pseudo-terminal, everything it wrote kept for a replay."""

    def __init__(self, port: int, *args: str, colour: bool = False, width: int = COLS) -> None:
        self.width = width
        environ = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
        environ.update(TERM="xterm", LC_ALL="C.UTF-8")
        if not colour:
            environ["NO_COLOR"] = "1"
        self.output = io.StringIO()
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "tcp.client", "--port", str(port), *args],
            cwd=ROOT,
            env=environ,
            dimensions=(ROWS, width),
            encoding="utf-8",
            timeout=WAIT,
        )
        self.child.logfile_read = self.output

    def expect(self, pattern: str) -> None:
        self.child.expect(pattern)

    def send(self, text: str) -> None:
        self.child.send(text)

    def exit_code(self) -> int:
        self.child.expect(pexpect.EOF)
        self.child.close()
        code: int = self.child.exitstatus
        return code

    def screen(self) -> list[str]:
        return Screen(ROWS, self.width).feed(self.output.getvalue()).lines()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Client]]:
    clients: list[Client] = []

    def start(port: int, *args: str, colour: bool = False, width: int = COLS) -> Client:
        client = Client(port, *args, colour=colour, width=width)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.child.close(force=True)


Spawn = Callable[..., Client]


def test_half_typed_line_survives_a_flood(
    tcp_server: ServerProcess, connect: Connect, spawn: Spawn
) -> None:
    alice = spawn(tcp_server.port, "--name", "alice", colour=True)
    alice.expect("alice> ")
    bob = connect(tcp_server.address, "bob")
    alice.expect("bob joined")
    alice.send("hello wor")
    alice.expect("hello wor")
    for i in range(FLOOD):
        bob.send({"type": "say", "text": f"flood {i:02}"})
    alice.expect(f"flood {FLOOD - 1:02}")
    alice.send("ld, all intact\r")

    said = next(
        frame for frame in iter(lambda: bob.expect("msg"), None) if frame["from"] == "alice"
    )
    assert said["text"] == "hello world, all intact"
    alice.expect(r"\(you\)> hello world, all intact")
    assert f"\x1b[{name_colour('bob')}mbob\x1b[0m" in alice.output.getvalue()
    alice.send("\x04")
    assert alice.exit_code() == 0

    screen = alice.screen()
    flood = [row for row in screen if "flood" in row]
    assert [row[9:] for row in flood] == [f"<bob> flood {i:02}" for i in range(FLOOD)]
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d <bob> flood \d\d", row) for row in flood)
    typed = [row for row in screen if "hello wor" in row]
    assert typed[0] == "alice> hello world, all intact"
    assert re.fullmatch(r"\d\d:\d\d:\d\d <alice \(you\)> hello world, all intact", typed[1])
    assert len(typed) == 2


def test_wrapped_line_and_moved_cursor_survive_messages(
    tcp_server: ServerProcess, connect: Connect, spawn: Spawn
) -> None:
    """A half-typed line over two rows, the cursor moved back into it, then more typing."""
    alice = spawn(tcp_server.port, "--name", "alice", width=30)
    alice.expect("alice> ")
    bob = connect(tcp_server.address, "bob")
    alice.expect("bob joined")
    alice.send("a line too long for one row of the screen")
    alice.expect("screen")
    alice.send("\x1b[D" * 6)
    for i in range(5):
        bob.send({"type": "say", "text": f"note {i}"})
    alice.expect("note 4")
    alice.send("narrow \r")

    said = next(
        frame for frame in iter(lambda: bob.expect("msg"), None) if frame["from"] == "alice"
    )
    assert said["text"] == "a line too long for one row of the narrow screen"
    alice.expect(r"\(you\)> ")
    alice.send("\x04")
    assert alice.exit_code() == 0
    screen = alice.screen()
    typed = screen.index("alice> a line too long for one")
    assert screen[typed + 1] == " row of the narrow screen"
    assert [row[9:] for row in screen[typed - 5 : typed]] == [f"<bob> note {i}" for i in range(5)]


def test_commands(tcp_server: ServerProcess, connect: Connect, spawn: Spawn) -> None:
    bob = connect(tcp_server.address, "bob")
    alice = spawn(tcp_server.port, "--name", "alice")
    alice.expect("alice> ")
    bob.expect("joined", name="alice")

    alice.send("/who\r")
    alice.expect(r"online \(2\): ")
    alice.send("/msg bob psst\r")
    dm = bob.expect("dm")
    assert (dm["from"], dm["to"], dm["text"]) == ("alice", "bob", "psst")
    alice.expect(r"\[dm to bob\] psst")
    bob.send({"type": "dm", "to": "alice", "text": "yes?"})
    alice.expect(r"\[dm from bob\] yes\?")
    alice.send("/nick alicia\r")
    alice.expect("you are now alicia")
    assert bob.expect("renamed")["new"] == "alicia"
    alice.send("/frobnicate\r")
    alice.expect("unknown command /frobnicate; /help lists the commands")
    alice.expect("alicia> ")
    alice.send("/help\r")
    alice.expect("/msg NAME TEXT")
    alice.send("выход\r")
    assert alice.exit_code() == 0
    assert bob.expect("left", name="alicia")["reason"] == "quit"


def test_taken_and_invalid_names_are_asked_again(
    tcp_server: ServerProcess, connect: Connect, spawn: Spawn
) -> None:
    bob = connect(tcp_server.address, "bob")
    client = spawn(tcp_server.port)
    client.expect("your name: ")
    client.send("BOB\r")
    client.expect("the name bob is taken; try another")
    client.expect("your name: ")
    client.send("carol smith\r")
    client.expect("a name holds only letters, digits")
    client.expect("your name: ")
    client.send("Кэрол\r")
    client.expect("welcome, Кэрол!")
    assert bob.expect("joined")["name"] == "Кэрол"


@pytest.mark.parametrize(
    ("key", "typed"), [("\x03", "half a li"), ("\x04", "")], ids=["ctrl-c", "ctrl-d"]
)
def test_ctrl_c_and_ctrl_d_quit_cleanly(
    tcp_server: ServerProcess, connect: Connect, spawn: Spawn, key: str, typed: str
) -> None:
    bob = connect(tcp_server.address, "bob")
    alice = spawn(tcp_server.port, "--name", "alice")
    alice.expect("alice> ")
    alice.send(typed)
    if typed:
        alice.expect(typed)
    alice.send(key)
    assert alice.exit_code() == 0
    assert bob.expect("left", name="alice")["reason"] == "quit"
    assert "Traceback" not in alice.output.getvalue()


def test_ctrl_c_in_make_chat_tcp_ends_make_cleanly_too(
    tcp_server: ServerProcess, connect: Connect
) -> None:
    """make shares the client's terminal: Ctrl+C reaches the client alone, so make exits 0
    with it, not 130 as if the client had failed."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    bob = connect(tcp_server.address, "bob")
    child = pexpect.spawn(
        "make",
        ["-s", "chat-tcp", f"PORT={tcp_server.port}", "NAME=alice", f"PYTHON={sys.executable}"],
        cwd=ROOT,
        encoding="utf-8",
        timeout=WAIT,
    )
    try:
        child.expect("alice> ")
        child.sendintr()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert (child.exitstatus, child.signalstatus) == (0, None), child.before
    assert bob.expect("left", name="alice")["reason"] == "quit"


def test_ctrl_c_at_the_name_prompt(tcp_server: ServerProcess, spawn: Spawn) -> None:
    client = spawn(tcp_server.port)
    client.expect("your name: ")
    client.send("\x03")
    assert client.exit_code() == 0


def test_hostile_text_goes_nowhere(
    tcp_server: ServerProcess, connect: Connect, spawn: Spawn
) -> None:
    alice = spawn(tcp_server.port, "--name", "alice")
    alice.expect("alice> ")
    mallory = connect(tcp_server.address, "mallory")
    mallory.send({"type": "say", "text": "\x1b[2J\x1b]0;pwned\x07 gotcha"})
    assert mallory.expect("error")["code"] == "text_invalid"
    mallory.send({"type": "say", "text": "plain"})
    alice.expect("<mallory> plain")
    assert "gotcha" not in alice.output.getvalue()


INVISIBLE = "\u202eevil\u200b\u2066\u200f\ufeff"
INVISIBLE_SHOWN = "\\u202eevil\\u200b\\u2066\\u200f\\ufeff"


def test_bidi_and_zero_width_characters_are_shown_escaped(
    tcp_server: ServerProcess, connect: Connect, spawn: Spawn
) -> None:
    """A text may hold them: the terminal and text mode show them, never apply them."""
    alice = spawn(tcp_server.port, "--name", "alice")
    alice.expect("alice> ")
    nc = socket.create_connection(tcp_server.address, timeout=WAIT)
    lines = nc.makefile("rb")
    nc.sendall(b"carol\n")
    assert b"welcome, carol" in lines.readline()
    mallory = connect(tcp_server.address, "mallory")
    mallory.send({"type": "say", "text": INVISIBLE})
    assert mallory.expect("msg")["text"] == INVISIBLE
    alice.expect(f"<mallory> {re.escape(INVISIBLE_SHOWN)}")
    shown = next(line for line in iter(lines.readline, b"") if b"<mallory>" in line)
    assert shown.decode().endswith(f"<mallory> {INVISIBLE_SHOWN}\n")
    nc.close()
    for raw in INVISIBLE.replace("evil", ""):
        assert raw not in alice.output.getvalue()


class HostileServer:
    """Says welcome, then messages full of control characters, then hangs up."""

    def __init__(self, frames: list[dict[str, object]]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frames = frames
        self.thread = threading.Thread(target=self._serve, name="hostile-server", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.recv(65536)
            for frame in self.frames:
                conn.sendall(json.dumps(frame).encode() + b"\n")
            conn.shutdown(socket.SHUT_WR)
            conn.recv(65536)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(WAIT)


def test_hostile_server_cannot_drive_the_terminal(spawn: Spawn) -> None:
    evil = "\x1b[2J\x1b[H\x1b]0;pwned\x07\u202eevil\r\x08\x9b31m"
    server = HostileServer(
        [
            {"type": "welcome", "name": "alice", "users": ["alice", evil], "count": 2},
            {"type": "msg", "from": evil, "text": evil, "ts": 1},
            {"type": "dm", "from": evil, "to": "alice", "text": evil, "ts": 1},
            {"type": "joined", "name": evil, "ts": 1},
            {"type": "renamed", "old": evil, "new": "x", "ts": 1},
            {"type": "error", "code": evil, "text": evil},
            {"type": "msg", "from": "bob", "text": "the end", "ts": 1},
        ]
    )
    alice = spawn(server.port, "--name", "alice")
    alice.expect("the end")
    alice.expect("connection lost; reconnecting")
    alice.send("\x03")
    assert alice.exit_code() == 0
    server.close()
    out = alice.output.getvalue()
    for bad in ("\x1b[2J", "\x1b[H", "\x1b]", "\x07", "\u202e", "\x08", "\x9b"):
        assert bad not in out
    assert "\\x1b[2J\\x1b[H\\x1b]0;pwned\\x07\\u202eevil\\x0d\\x08\\x9b31m" in out
    Screen().feed(out)


class HistoryServer:
    """A server on a loopback socket that answers the client's history requests by script.

    The first request gets two earlier messages with a live one between
    them, the way live traffic may arrive; each later one gets its limit
    back as the text of one earlier message.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[dict[str, object]] = []
        self.thread = threading.Thread(target=self._serve, name="history-server", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, conn.makefile("rb") as lines:
            json.loads(lines.readline())
            send = partial(self._send, conn)
            send({"type": "welcome", "name": "alice", "users": ["alice", "bob"], "count": 2})
            for line in lines:
                frame = json.loads(line)
                if frame["type"] == "bye":
                    return
                self.requests.append(frame)
                if len(self.requests) == 1:
                    send({"type": "msg", "from": "bob", "text": "first", "ts": 1, "history": True})
                    send({"type": "msg", "from": "carol", "text": "live", "ts": 3})
                    send({"type": "msg", "from": "alice", "text": "mine", "ts": 2, "history": True})
                    send({"type": "history_end", "count": 2})
                else:
                    text = f"limit {frame['limit']}"
                    send({"type": "msg", "from": "bob", "text": text, "ts": 1, "history": True})
                    send({"type": "history_end", "count": 1})

    @staticmethod
    def _send(conn: socket.socket, frame: dict[str, object]) -> None:
        conn.sendall(json.dumps(frame).encode() + b"\n")

    def close(self) -> None:
        self.listener.close()
        self.thread.join(WAIT)


def test_history_is_shown_above_the_live_chat_marked_as_earlier(spawn: Spawn) -> None:
    server = HistoryServer()
    alice = spawn(server.port, "--name", "alice", colour=True)
    alice.expect(r"2 earlier messages above")
    alice.expect("alice> ")
    alice.send("/history 50\r")
    alice.expect("limit 50")
    alice.expect(r"1 earlier message above")
    alice.send("/history 0\r")
    alice.expect(r"usage: /history \[N\], N from 1 to 100")
    alice.send("/help\r")
    alice.expect(r"/history \[N\]")
    alice.send("/quit\r")
    assert alice.exit_code() == 0
    server.close()
    assert server.requests == [{"type": "history", "limit": 20}, {"type": "history", "limit": 50}]
    rows = [row[9:] for row in alice.screen() if re.match(r"\d\d:\d\d:\d\d ", row)]
    assert rows == [
        "earlier <bob> first",
        "<carol> live",
        "earlier <alice> mine",
        "earlier <bob> limit 50",
    ]
    assert "* 2 earlier messages above" in alice.screen()
    out = alice.output.getvalue()
    assert re.search(r"\x1b\[2m\d\d:\d\d:\d\d earlier <bob> first\x1b\[0m", out)
    assert "(you)> mine" not in out


def test_server_killed_under_the_client_then_ctrl_c_while_reconnecting(
    start_server: Start, spawn: Spawn
) -> None:
    server = start_server("tcp.server")
    alice = spawn(server.port, "--name", "alice")
    alice.expect("alice> ")
    alice.send("typing")
    alice.expect("typing")
    server.stop(signal.SIGKILL)
    alice.expect("connection lost; reconnecting")
    alice.expect("alice> typing")  # the line being typed survives
    alice.send("\x03")
    assert alice.exit_code() == 0
    assert "Traceback" not in alice.output.getvalue()
    assert alice.output.getvalue().count("connection lost; reconnecting") == 1


def test_server_shutdown_ends_the_client(start_server: Start, spawn: Spawn) -> None:
    server = start_server("tcp.server")
    alice = spawn(server.port, "--name", "alice")
    alice.expect("alice> ")
    server.stop(signal.SIGTERM)
    alice.expect(r"the server ended the session \(shutdown\)")
    assert alice.exit_code() == 0
    assert "lost" not in alice.output.getvalue()
    shown = [row for row in alice.screen() if row]
    assert shown[-2:] == ["alice>", "* the server ended the session (shutdown)"]


def run_piped(port: int, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["TERM"] = "xterm"
    return subprocess.run(
        [sys.executable, "-m", "tcp.client", "--port", str(port), *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=WAIT * 2,
    )


def test_cannot_connect() -> None:
    port = free_port()
    result = run_piped(port, "--name", "alice")
    assert result.returncode == 1
    assert result.stderr == f"cannot connect to 127.0.0.1:{port}: Connection refused\n"


def test_piped_mode_writes_plain_lines(tcp_server: ServerProcess, connect: Connect) -> None:
    bob = connect(tcp_server.address, "bob")
    script = "hello\n/who\n/msg bob psst\n/nick carl\n/frobnicate\nbye now\n"
    result = run_piped(tcp_server.port, stdin=script)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == "your name:"
    assert lines[1] == "* welcome, hello! online: bob (2 in all)"
    assert "! unknown command /frobnicate; /help lists the commands" in lines
    assert any(re.fullmatch(r"\d\d:\d\d:\d\d \[dm to bob\] psst", line) for line in lines)
    assert any(line.endswith("* you are now carl") for line in lines)
    assert any(line.endswith("<carl (you)> bye now") for line in lines)
    assert bob.expect("dm")["text"] == "psst"
    assert bob.expect("left", name="carl")["reason"] == "quit"


def test_history_with_nothing_before_says_so_but_joining_says_nothing(
    tcp_server: ServerProcess,
) -> None:
    result = run_piped(tcp_server.port, "--name", "first", stdin="/history\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines.count("* nothing was said before you joined") == 1, lines
    assert lines[-1] == "* nothing was said before you joined", lines


def test_a_refused_name_from_the_command_line_ends_the_client(
    tcp_server: ServerProcess, connect: Connect, spawn: Spawn
) -> None:
    """Never the next input line as a name: a script would join under its first message."""
    piped = run_piped(tcp_server.port, "--name", "bad name", stdin="hi\n")
    assert piped.returncode == 1
    assert piped.stderr.startswith("cannot join as bad name: a name holds only letters")
    assert "welcome" not in piped.stdout
    connect(tcp_server.address, "bob")
    taken = spawn(tcp_server.port, "--name", "BOB")
    taken.expect("cannot join as BOB: the name bob is taken")
    assert taken.exit_code() == 1
    assert "your name" not in taken.output.getvalue()


def test_help_shows_options_and_commands() -> None:
    result = run_piped(free_port(), "--help")
    assert result.returncode == 0
    for word in ("--host", "--port", "--name", "/who", "/msg NAME TEXT", "/nick", "/quit"):
        assert word in result.stdout


def test_demo_runs_the_whole_story() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tcp.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=15,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for seen in ("carol | ", "[dm from bob] lunch at noon?", "carol is now caroline", "alice left"):
        assert seen in result.stdout


def test_restarted_server_resumes_and_shows_what_was_missed_once(
    start_server: Start, connect: Connect, spawn: Spawn, tmp_path: Path
) -> None:
    """Killed, started again on its history file: the client comes back by itself.

    While the server is away the client is paused (SIGSTOP), so the messages said after the
    restart are certainly said before it is back: then they are what it missed.
    """
    history = str(tmp_path / "history.jsonl")
    server = start_server("tcp.server", "--history-file", history)
    alice = spawn(server.port, "--name", "alice")
    alice.expect("alice> ")
    bob = connect(server.address, "bob")
    bob.send({"type": "say", "text": "said before"})
    alice.expect("<bob> said before")
    alice.send("half typ")
    alice.expect("half typ")
    server.stop(signal.SIGKILL)
    alice.expect("connection lost; reconnecting")
    alice.child.kill(signal.SIGSTOP)
    again = start_server("tcp.server", "--history-file", history, "--port", str(server.port))
    carol = connect(again.address, "carol")
    for text in ("missed one", "missed two"):
        carol.send({"type": "say", "text": text})
        carol.expect("msg", text=text)
    alice.child.kill(signal.SIGCONT)
    alice.expect("back; 2 messages you missed")
    alice.expect("<carol> missed two")
    alice.send("ed\r")
    carol.expect("msg", text="half typed")
    alice.expect(r"<alice \(you\)> half typed")
    alice.send("/quit\r")
    assert alice.exit_code() == 0
    rows = [row[9:] for row in alice.screen() if re.match(r"\d\d:\d\d:\d\d <", row)]
    assert rows == [
        "<bob> said before",
        "<carol> missed one",
        "<carol> missed two",
        "<alice (you)> half typed",
    ]
    shown = alice.screen()
    assert shown.count("* connection lost; reconnecting") == 1
    assert shown.count("* back; 2 messages you missed") == 1


def test_the_next_server_is_tried_when_one_is_gone(start_server: Start, spawn: Spawn) -> None:
    """Two servers given: the first is down at the start, then the second dies and the first
    is back. Two separate rooms here, so the resume says that messages may be missing."""
    first_port = free_port()
    second = start_server("tcp.server")
    alice = spawn(
        first_port,
        "--name",
        "alice",
        "--server",
        f"127.0.0.1:{first_port}",
        "--server",
        f"127.0.0.1:{second.port}",
    )
    alice.expect("alice> ")
    first = start_server("tcp.server", "--port", str(first_port))
    second.stop(signal.SIGKILL)
    alice.expect("connection lost; reconnecting")
    alice.expect("back; some messages may be missing")
    probe = JsonClient(first.address, "probe")
    probe.send({"type": "who"})
    assert "alice" in probe.expect("users")["names"]
    alice.send("/quit\r")
    assert alice.exit_code() == 0


def test_a_vanished_server_is_noticed_without_traffic() -> None:
    """Keepalive and a limit on unacknowledged data: a dead connection ends, then resumes."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        transport = TcpTransport.connect(f"127.0.0.1:{listener.getsockname()[1]}")
        try:
            sock = transport._sock
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30_000
        finally:
            transport.close()
