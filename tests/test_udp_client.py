"""The UDP terminal client in a real pseudo-terminal, against a real or a scripted server."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pexpect
import pytest

import udp.client
from common.protocol.codec import Hello, Joined, Left, Msg, Say, Welcome
from common.terminal.console import Console, run_client
from tests.conftest import ROOT, WAIT, ServerProcess
from udp.client import UdpTransport

Start = Callable[..., ServerProcess]
TOKEN = "ab" * 16


def spawn(port: int, *args: str) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable,
        ["-m", "udp.client", "--port", str(port), *args],
        cwd=str(ROOT),
        env={**os.environ, "NO_COLOR": "1"},
        encoding="utf-8",
        timeout=WAIT,
        dimensions=(40, 200),
    )


@pytest.fixture
def terminals() -> Iterator[Callable[..., pexpect.spawn]]:
    spawned: list[pexpect.spawn] = []

    def open_terminal(port: int, *args: str) -> pexpect.spawn:
        child = spawn(port, *args)
        spawned.append(child)
        return child

    yield open_terminal
    for child in spawned:
        child.close(force=True)


Terminals = Callable[..., pexpect.spawn]


def receive_until(transport: UdpTransport, wanted: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        message = transport.receive()
        if message is None or wanted(message):
            return message
    raise AssertionError("the message did not come")


@pytest.mark.parametrize("mode", [[], ["--reliable"]], ids=["raw", "reliable"])
def test_join_chat_stats_quit(start_server: Start, terminals: Terminals, mode: list[str]) -> None:
    server = start_server("udp.server", "-v")
    bob = UdpTransport.connect(*server.address)
    try:
        bob.send(Hello(name="bob"))
        assert isinstance(receive_until(bob, lambda m: True), Welcome)

        alice = terminals(server.port, "--name", "alice", *mode)
        alice.expect(r"welcome, alice! online: bob \(2 in all\)")
        bob.send(Say(text="hi alice"))
        alice.expect(r"<bob> hi alice")
        alice.sendline("hello bob")
        alice.expect(r"<alice \(you\)> hello bob")
        said = receive_until(bob, lambda m: isinstance(m, Msg) and m.sender == "alice")
        assert said.text == "hello bob"

        alice.sendline("/stats")
        alice.expect(r"from the server: (\d+) datagrams, 0 lost, 0 repeated, 0 reordered")
        assert int(alice.match.group(1)) >= 3
        alice.expect(r"to the server: \d+ datagrams")
        alice.sendline("/quit")
        alice.expect(pexpect.EOF)
        alice.close()
        assert alice.exitstatus == 0
        server.wait_for_log("alice left \\(quit\\)")
    finally:
        bob.close()


def test_a_taken_name_is_asked_again(start_server: Start, terminals: Terminals) -> None:
    server = start_server("udp.server")
    bob = UdpTransport.connect(*server.address)
    try:
        bob.send(Hello(name="bob"))
        assert isinstance(receive_until(bob, lambda m: True), Welcome)
        alice = terminals(server.port, "--reliable")
        alice.expect("your name: ")
        alice.sendline("BOB")
        alice.expect("taken; try another")
        alice.expect("your name: ")
        alice.sendline("alice")
        alice.expect(r"welcome, alice! online: bob \(2 in all\)")
    finally:
        bob.close()


def test_silence_counts_as_a_lost_connection_and_ctrl_c_quits_while_reconnecting(
    start_server: Start, terminals: Terminals
) -> None:
    server = start_server("udp.server")
    alice = terminals(server.port, "--name", "alice", "--give-up-after", "1")
    alice.expect("welcome, alice")
    server.proc.kill()
    alice.expect("connection lost; reconnecting")
    alice.sendintr()
    alice.expect(pexpect.EOF)
    alice.close()
    assert alice.exitstatus == 0
    assert "Traceback" not in alice.before


def test_a_killed_server_is_noticed_at_once_from_port_unreachable(start_server: Start) -> None:
    """The host says nothing listens any more: the session ends now, not after the silence."""
    server = start_server("udp.server")
    alice = UdpTransport.connect(*server.address, reliable=True, give_up_after=30.0)
    try:
        alice.send(Hello(name="alice"))
        assert isinstance(receive_until(alice, lambda m: True), Welcome)
        server.proc.kill()
        server.proc.wait()
        start = time.monotonic()
        alice.send(Say(text="anyone?"))
        assert receive_until(alice, lambda m: False) is None
        assert time.monotonic() - start < 10.0  # the silence alone would take 30 s
        assert alice.failure == f"nothing listens at {server.host}:{server.port} (port unreachable)"
    finally:
        alice.close()


@pytest.mark.parametrize("packets", [False, True], ids=["1.0", "packets"])
def test_frames_left_unacknowledged_by_a_server_that_answers_nothing_end_the_session_soon(
    start_server: Start, monkeypatch: pytest.MonkeyPatch, packets: bool
) -> None:
    """A server that does not know the session (restarted) answers none of its packets, and no
    host says "port unreachable": the session ends once its own frames went unanswered for
    UNANSWERED_AFTER (here 0.5 s), long before the silence (30 s) or the doubling probes."""
    monkeypatch.setattr(udp.client, "UNANSWERED_AFTER", 0.5)
    server = start_server("udp.server")
    alice = UdpTransport.connect(
        *server.address, reliable=True, give_up_after=30.0, packets=packets
    )
    try:
        alice.send(Hello(name="alice"))
        assert isinstance(receive_until(alice, lambda m: True), Welcome)
        server.proc.send_signal(signal.SIGSTOP)  # its socket stays: no "port unreachable"
        start = time.monotonic()
        alice.send(Say(text="anyone?"))
        assert receive_until(alice, lambda m: False) is None
        assert time.monotonic() - start < 10.0
        assert alice.failure is not None and "while frames wait for an ack" in alice.failure
    finally:
        server.proc.send_signal(signal.SIGCONT)
        alice.close()


def test_a_hello_to_a_port_where_nothing_listens_fails_at_once() -> None:
    """So a client resuming while its server restarts tries again on its backoff, not 5 s on."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    alice = UdpTransport.connect("127.0.0.1", port)
    try:
        start = time.monotonic()
        alice.send(Hello(name="alice"))
        assert receive_until(alice, lambda m: False) is None
        assert time.monotonic() - start < udp.client.HELLO_INTERVAL * udp.client.HELLO_TRIES
        assert alice.failure == f"nothing listens at 127.0.0.1:{port} (port unreachable)"
    finally:
        alice.close()


def test_no_server_is_one_line_and_exit_code_1(
    scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five hellos unanswered (a second apart; here 50 ms, to keep the suite fast)."""
    monkeypatch.setattr(udp.client, "HELLO_INTERVAL", 0.05)
    out, err = io.StringIO(), io.StringIO()
    console = Console(io.StringIO(), out, err)
    connect = partial(UdpTransport.connect, "127.0.0.1", scripted.port)
    assert run_client(lambda server: connect(), console, "alice", ["scripted:1"]) == 1
    assert err.getvalue() == (
        f"no answer from 127.0.0.1:{scripted.port} to 5 hellos 0.05 s apart: "
        "is the server running?\n"
    )
    assert out.getvalue() == ""
    assert [scripted.next_frame()[0]["type"] for _ in range(5)] == ["hello"] * 5
    scripted.sock.settimeout(0)
    with pytest.raises(BlockingIOError):
        scripted.next_frame()  # no sixth: the client gave up after five


def test_the_demo_shows_what_each_one_typed_and_the_servers_address() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "udp.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=WAIT * 3,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    server = re.match(r"server on (\S+);", lines[0])
    assert server is not None
    assert " alice > hi all, this is the UDP chat" in lines
    assert " carol > /stats" in lines
    stats = [line for line in lines if "session with" in line]
    assert stats == [
        f"{name:>6} | {mode} session with {server[1]}"
        for name, mode in (("alice", "raw"), ("bob", "reliable"), ("carol", "raw"))
    ]


class ScriptedServer:
    """A socket the test answers by hand, to play a server that loses and repeats."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(WAIT)
        self.port: int = self.sock.getsockname()[1]
        self.client: tuple[str, int] | None = None

    def next_frame(self) -> tuple[dict[str, Any], float]:
        data, self.client = self.sock.recvfrom(65536)
        frame: dict[str, Any] = json.loads(data)
        return frame, time.monotonic()

    def send(self, frame: dict[str, Any]) -> None:
        assert self.client is not None
        self.sock.sendto(json.dumps(frame).encode(), self.client)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.close()


def test_hello_is_sent_again_each_second(scripted: ScriptedServer) -> None:
    transport = UdpTransport.connect("127.0.0.1", scripted.port)
    try:
        transport.send(Hello(name="alice"))
        first, at_first = scripted.next_frame()
        second, at_second = scripted.next_frame()
        assert first == second == {"type": "hello", "name": "alice"}
        assert 0.8 < at_second - at_first < 1.5
        welcome = {"type": "welcome", "name": "alice", "users": ["alice"], "count": 1}
        scripted.send({**welcome, "session": TOKEN, "seq": 1})
        assert isinstance(transport.receive(), Welcome)
        transport.send(Say(text="hi"))
        frame, _ = scripted.next_frame()
        assert frame == {"type": "say", "text": "hi", "session": TOKEN, "seq": 1}
    finally:
        transport.close()


def test_shows_lost_repeated_and_late_datagrams(
    scripted: ScriptedServer, terminals: Terminals
) -> None:
    alice = terminals(scripted.port, "--name", "alice")
    hello, _ = scripted.next_frame()
    assert hello["type"] == "hello"
    scripted.send({"type": "welcome", "name": "alice", "users": ["alice"], "count": 1,
                   "session": TOKEN, "seq": 1})  # fmt: skip
    alice.expect("welcome, alice")

    def msg(seq: int) -> dict[str, Any]:
        return {"type": "msg", "from": "bob", "text": f"number {seq}", "ts": 0, "seq": seq}

    for seq in (2, 5, 5, 4):
        scripted.send(msg(seq))
    alice.expect("<bob> number 2")
    alice.expect(r"lost 2 datagram\(s\) from the server \(seq 3-4\)")
    alice.expect("<bob> number 5")
    alice.expect("datagram seq 5 came again; shown once")
    alice.expect("datagram seq 4 came late, out of order")
    alice.expect("<bob> number 4")
    alice.sendline("/stats")
    alice.expect("from the server: 4 datagrams, 1 lost, 1 repeated, 1 reordered")
    alice.sendline("/quit")
    alice.expect(pexpect.EOF)


def test_history_and_escaped_text_over_udp(scripted: ScriptedServer, terminals: Terminals) -> None:
    """The request carries the token; earlier messages are marked, live ones and their
    bidi controls shown as they are sent, escaped."""
    alice = terminals(scripted.port, "--name", "alice")
    alice.logfile_read = shown = io.StringIO()
    scripted.next_frame()
    scripted.send({"type": "welcome", "name": "alice", "users": ["alice"], "count": 1,
                   "session": TOKEN, "seq": 1})  # fmt: skip
    request, _ = scripted.next_frame()
    assert request == {"type": "history", "limit": 20, "session": TOKEN, "seq": 1}
    scripted.send({"type": "msg", "from": "bob", "text": "before", "ts": 1, "history": True,
                   "seq": 2})  # fmt: skip
    scripted.send({"type": "msg", "from": "bob", "text": "\u202elive\u200b", "ts": 2, "seq": 3})
    scripted.send({"type": "history_end", "count": 1, "seq": 4})
    alice.expect(r"\d\d:\d\d:\d\d earlier <bob> before")
    alice.expect(r"\d\d:\d\d:\d\d <bob> \\u202elive\\u200b")
    alice.expect(r"\* 1 earlier message above")
    alice.sendline("/help")
    alice.expect("/stats")
    alice.expect("anything else is a message")
    alice.sendline("/quit")
    alice.expect(pexpect.EOF)
    assert "\u202e" not in shown.getvalue() and "\u200b" not in shown.getvalue()


def said(transport: UdpTransport, text: str) -> None:
    """Say ``text`` and wait until it comes back: the room has it."""
    transport.send(Say(text=text))
    receive_until(transport, lambda m: isinstance(m, Msg) and m.text == text)


def test_restarted_server_resumes_from_a_new_port_and_shows_what_was_missed(
    start_server: Start, terminals: Terminals, tmp_path: Path
) -> None:
    """As over TCP: while the server is away the client is paused, so the messages said after
    the restart are certainly said before it is back."""
    history = str(tmp_path / "history.jsonl")
    server = start_server("udp.server", "--history-file", history)
    alice = terminals(server.port, "--name", "alice", "--reliable", "--give-up-after", "1")
    alice.expect("alice> ")
    bob = UdpTransport.connect(*server.address, reliable=True)
    try:
        bob.send(Hello(name="bob"))
        receive_until(bob, lambda m: isinstance(m, Welcome))
        said(bob, "said before")
        alice.expect("<bob> said before")
    finally:
        bob.close()
    server.proc.kill()
    alice.expect("connection lost; reconnecting")
    alice.kill(signal.SIGSTOP)
    again = start_server("udp.server", "--history-file", history, "--port", str(server.port))
    carol = UdpTransport.connect(*again.address, reliable=True)
    try:
        carol.send(Hello(name="carol"))
        receive_until(carol, lambda m: isinstance(m, Welcome))
        said(carol, "missed one")
        said(carol, "missed two")
        alice.kill(signal.SIGCONT)
        alice.expect("back; 2 messages you missed")
        alice.expect("<carol> missed one")
        alice.expect("<carol> missed two")
        alice.sendline("/quit")
        alice.expect(pexpect.EOF)
    finally:
        carol.close()
    assert alice.before.count("said before") == 0  # shown once, before the loss


def test_a_silent_server_is_resumed_from_a_new_port_and_nobody_sees_it(
    start_server: Start, terminals: Terminals
) -> None:
    """The server stops answering for a while (paused) but keeps the session: the client
    gives up on its port, resumes from a new one, and takes its own session over."""
    server = start_server("udp.server", "-v")
    alice = terminals(server.port, "--name", "alice", "--reliable", "--give-up-after", "1")
    alice.expect("alice> ")
    bob = UdpTransport.connect(*server.address, reliable=True)
    try:
        bob.send(Hello(name="bob"))
        receive_until(bob, lambda m: isinstance(m, Welcome))
        alice.expect("bob joined")
        server.proc.send_signal(signal.SIGSTOP)
        alice.expect("connection lost; reconnecting")
        server.proc.send_signal(signal.SIGCONT)
        alice.expect(r"back; \d+ messages? you missed")
        bob.send(Say(text="still here?"))
        alice.expect("<bob> still here")
        alice.sendline("yes")
        seen: list[object] = []

        def collect(message: object) -> bool:
            seen.append(message)
            return isinstance(message, Msg) and message.sender == "alice"

        assert receive_until(bob, collect).text == "yes"
        assert not [m for m in seen if isinstance(m, Joined | Left)]
        alice.sendline("/quit")
        alice.expect(pexpect.EOF)
    finally:
        bob.close()
